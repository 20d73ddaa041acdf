//! Stage 2: the ring-buffer reader. Drains `EVENTS` when the kernel wakes us
//! (enough data queued) and on a short timer (the kernel batches wakeups, so
//! a trickle of events would otherwise wait), decodes each record and hands
//! it on. A full channel drops the record and counts it: the reader never
//! blocks, since a blocked reader turns into kernel-side drops.
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    event::{decode, KernelEvent},
    stats::Stats,
};

pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<KernelEvent>,
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

/// Reads everything queued. Returns false once the consumer is gone.
fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<KernelEvent>, stats: &Stats) -> bool {
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
        match tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => Stats::inc(&stats.reader_channel_drops),
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    true
}
