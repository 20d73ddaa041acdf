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
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut(), &tx, &stats) {
                    return Ok(());
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if !drain(fd.get_mut(), &tx, &stats) {
                    return Ok(());
                }
            }
        }
    }
}

/// Records sent per batch, at most.
const BATCH: usize = 256;

/// Reads everything queued. Returns false once the consumer is gone.
fn drain(ring: &mut RingBuf<MapData>, tx: &channel::Sender<KernelEvent>, stats: &Stats) -> bool {
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
        batch.push(ev);
        if batch.len() == BATCH && !send(tx, &mut batch, stats) {
            return false;
        }
    }
    send(tx, &mut batch, stats)
}

/// Sends `batch` (left empty), counting what did not fit.
fn send(tx: &channel::Sender<KernelEvent>, batch: &mut Vec<KernelEvent>, stats: &Stats) -> bool {
    if batch.is_empty() {
        return true;
    }
    // The next batch is sized like this one: a trickle allocates little.
    let room = batch.len().clamp(16, BATCH);
    let full = std::mem::replace(batch, Vec::with_capacity(room));
    match tx.try_send(full) {
        Ok(rest) => {
            stats
                .reader_channel_drops
                .fetch_add(rest.len() as u64, std::sync::atomic::Ordering::Relaxed);
            true
        }
        Err(channel::Closed) => false,
    }
}
