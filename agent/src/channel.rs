//! A channel between stages that carries records in batches and is bounded
//! in records.
//!
//! Why: the reader and the connection table hand on every ring record, four
//! per HTTP request. A bounded tokio channel per record paid a semaphore
//! acquire, a slot write and a waker per record on each side (about 7% of
//! the agent's CPU under nginx). A batch pays them once. The bound stays
//! in records (`SessionConfig::channel_capacity`): a batch is refused, in
//! whole or in part, only when the records queued and its own would pass it.
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::{mpsc, Notify};

struct Room {
    /// Records sent and not yet received.
    queued: AtomicUsize,
    capacity: usize,
    /// Wakes a sender waiting for room ([`Sender::send`]).
    freed: Notify,
}

impl Room {
    /// Takes room for `n` records, all or none. An empty channel takes any
    /// batch, so that one larger than the capacity still goes through.
    fn take(&self, n: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q + n <= self.capacity).then_some(q + n)
            })
            .is_ok()
    }

    /// How many more records fit now.
    fn left(&self) -> usize {
        self.capacity
            .saturating_sub(self.queued.load(Ordering::Acquire))
    }
}

/// A channel for at most `capacity` records in flight.
pub fn batched<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Room {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
        freed: Notify::new(),
    });
    (
        Sender {
            tx,
            room: room.clone(),
        },
        Receiver {
            rx,
            room,
            spare: None,
        },
    )
}

pub struct Sender<T> {
    tx: mpsc::UnboundedSender<Vec<T>>,
    room: Arc<Room>,
}

/// The receiver is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

impl<T> Sender<T> {
    /// Sends the records of `batch` that fit now, in order, and gives back
    /// the rest (empty when all went). `Err`: the receiver is gone.
    pub fn try_send(&self, mut batch: Vec<T>) -> Result<Vec<T>, Closed> {
        if batch.is_empty() {
            return Ok(batch);
        }
        let rest = if self.room.take(batch.len()) {
            vec![]
        } else {
            let fit = self.room.left().min(batch.len());
            if fit == 0 || !self.room.take(fit) {
                return Ok(batch);
            }
            batch.split_off(fit)
        };
        self.push(batch)?;
        Ok(rest)
    }

    /// Sends all of `batch`, waiting for room.
    pub async fn send(&self, batch: Vec<T>) -> Result<(), Closed> {
        if batch.is_empty() {
            return Ok(());
        }
        loop {
            let freed = self.room.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a receive between the two wakes it.
            freed.as_mut().enable();
            if self.room.take(batch.len()) {
                break;
            }
            if self.tx.is_closed() {
                return Err(Closed);
            }
            freed.await;
        }
        self.push(batch)
    }

    /// Sends `batch`, whose room is taken; gives the room back if the
    /// receiver is gone.
    fn push(&self, batch: Vec<T>) -> Result<(), Closed> {
        let n = batch.len();
        self.tx.send(batch).map_err(|_| {
            self.room.queued.fetch_sub(n, Ordering::AcqRel);
            Closed
        })
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub struct Receiver<T> {
    rx: mpsc::UnboundedReceiver<Vec<T>>,
    room: Arc<Room>,
    /// What is left of a batch [`Receiver::recv`] began.
    spare: Option<std::vec::IntoIter<T>>,
}

impl<T> Receiver<T> {
    /// Waits for records, then appends all that are queued to `out`, whole
    /// batches, until about `limit` (a batch is never split). Returns how
    /// many were appended: 0 once every sender is gone and all is received.
    pub async fn recv_many(&mut self, out: &mut Vec<T>, limit: usize) -> usize {
        let before = out.len();
        out.extend(self.spare.take().into_iter().flatten());
        if out.len() == before {
            let Some(b) = self.rx.recv().await else {
                return 0;
            };
            self.take(b, out);
        }
        while out.len() - before < limit {
            match self.rx.try_recv() {
                Ok(b) => self.take(b, out),
                Err(_) => break,
            }
        }
        out.len() - before
    }

    /// One record; `None` once every sender is gone and all is received.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(x) = self.spare.as_mut().and_then(Iterator::next) {
                return Some(x);
            }
            let b = self.rx.recv().await?;
            self.freed(b.len());
            self.spare = Some(b.into_iter());
        }
    }

    fn take(&self, b: Vec<T>, out: &mut Vec<T>) {
        self.freed(b.len());
        out.extend(b);
    }

    fn freed(&self, n: usize) {
        self.room.queued.fetch_sub(n, Ordering::AcqRel);
        self.room.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_arrive_in_order_across_batches() {
        let (tx, mut rx) = batched(100);
        assert!(tx.try_send(vec![1, 2, 3]).unwrap().is_empty());
        assert!(tx.try_send(vec![4]).unwrap().is_empty());
        tx.send(vec![5, 6]).await.unwrap();
        let mut out = vec![];
        assert_eq!(rx.recv_many(&mut out, 1000).await, 6);
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        assert!(tx.try_send(vec![7, 8]).unwrap().is_empty());
        assert_eq!(rx.recv().await, Some(7));
        assert!(tx.try_send(vec![9]).unwrap().is_empty());
        let mut out = vec![];
        // What `recv` left of its batch comes first.
        assert_eq!(rx.recv_many(&mut out, 1000).await, 2);
        assert_eq!(out, [8, 9]);
        drop(tx);
        assert_eq!(rx.recv_many(&mut out, 1000).await, 0);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn the_bound_is_in_records_and_a_full_channel_gives_back_the_rest() {
        let (tx, mut rx) = batched(5);
        assert!(tx.try_send(vec![1, 2, 3]).unwrap().is_empty());
        // Two fit; three come back, in order.
        assert_eq!(tx.try_send(vec![4, 5, 6, 7, 8]).unwrap(), [6, 7, 8]);
        assert_eq!(tx.try_send(vec![9]).unwrap(), [9]);
        let mut out = vec![];
        assert_eq!(rx.recv_many(&mut out, 1000).await, 5);
        assert_eq!(out, [1, 2, 3, 4, 5]);
        // Received records free their room.
        assert!(tx.try_send(vec![6, 7, 8, 9, 10]).unwrap().is_empty());
        // An empty channel takes a batch larger than the bound.
        let (big, mut big_rx) = batched(2);
        assert!(big.try_send(vec![1, 2, 3]).unwrap().is_empty());
        assert_eq!(big.try_send(vec![4]).unwrap(), [4]);
        assert_eq!(big_rx.recv().await, Some(1));
    }

    #[tokio::test]
    async fn a_sender_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = batched(2);
        tx.send(vec![1, 2]).await.unwrap();
        let tx = Arc::new(tx);
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(vec![3, 4]).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut out = vec![];
        rx.recv_many(&mut out, 10).await;
        waiting.await.unwrap().unwrap();
        out.clear();
        rx.recv_many(&mut out, 10).await;
        assert_eq!(out, [3, 4]);
        drop(rx);
        assert_eq!(tx.try_send(vec![5]), Err(Closed));
        assert_eq!(tx.send(vec![5]).await, Err(Closed));
    }
}
