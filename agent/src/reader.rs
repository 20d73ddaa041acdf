//! Stage 2: the ring-buffer reader. Drains `EVENTS` when the kernel wakes us
//! (enough data queued) and on a short timer (the kernel batches wakeups, so
//! a trickle of events would otherwise wait), decodes each record and hands
//! it on, a batch per drain. A full channel drops the records that do not
//! fit and counts them: the reader never blocks, since a blocked reader
//! turns into kernel-side drops.
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    channel,
    event::{decode, KernelEvent},
    stats::Stats,
};

pub async fn run(
    ring: RingBuf<MapData>,
    tx: channel::Sender<KernelEvent>,
    stats: Arc<Stats>,
    poll: Duration,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open for as long as
    // the AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hint = MIN_BATCH;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut(), &tx, &stats, &mut hint) {
                    return Ok(());
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if !drain(fd.get_mut(), &tx, &stats, &mut hint) {
                    return Ok(());
                }
            }
        }
    }
}

/// Records sent per batch, at most.
const BATCH: usize = 256;
/// The smallest batch allocated: a trickle allocates little.
const MIN_BATCH: usize = 16;

/// Reads everything queued. Returns false once the consumer is gone.
///
/// A batch is allocated at its first record, at the size of the one before
/// it (`hint`). Grown record by record from empty, a drain of a few hundred
/// records reallocated and copied its batch seven times (about 2% of the
/// agent's CPU under the `db` bench).
fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &channel::Sender<KernelEvent>,
    stats: &Stats,
    hint: &mut usize,
) -> bool {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        Stats::inc(&stats.ringbuf_records);
        let ev = match decode(&item) {
            Ok(ev) => ev,
            Err(e) => {
                Stats::inc(&stats.decode_errors);
                tracing::debug!("undecodable ring buffer record: {e}");
                continue;
            }
        };
        drop(item);
        if batch.capacity() == 0 {
            batch.reserve_exact(*hint);
        }
        batch.push(ev);
        if batch.len() == BATCH {
            *hint = BATCH;
            if !send(tx, std::mem::take(&mut batch), stats) {
                return false;
            }
        }
    }
    if batch.is_empty() {
        return true;
    }
    *hint = batch.len().clamp(MIN_BATCH, BATCH);
    send(tx, batch, stats)
}

/// Sends `batch`, counting what did not fit.
fn send(tx: &channel::Sender<KernelEvent>, batch: Vec<KernelEvent>, stats: &Stats) -> bool {
    match tx.try_send(batch) {
        Ok(rest) => {
            stats
                .reader_channel_drops
                .fetch_add(rest.len() as u64, std::sync::atomic::Ordering::Relaxed);
            true
        }
        Err(channel::Closed) => false,
    }
}
