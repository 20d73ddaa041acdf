//! Hand-offs over pipes between the processes of a service (a pre-fork
//! pool): which write put the bytes a read returns.
//!
//! A pipe is a byte stream in FIFO order, so offsets match its reads to its
//! writes: the n-th byte read is the n-th byte written, whichever process
//! wrote or read it. Each write is kept with what it carried (a task, for
//! the request its writer was working on; or a task's result) until its
//! bytes are read. Offsets alone would go wrong after a lost record, so
//! every read's first bytes are checked against the write they fall in; a
//! mismatch realigns on the queued write whose first bytes the read starts
//! with (only one may), or gives the read up. A read that cannot be matched
//! is counted (`unmatched`) and carries nothing: its worker's calls stay
//! roots.
//!
//! A writer's record can reach user space after its reader's (the writer
//! was preempted before its syscall-exit probe). That read comes before its
//! write is known and is counted as unmatched; the offset stays where it
//! was, so the reads that follow meet their writes (by offset, or by
//! content past the late write).
use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;

use crate::spans::SpanCtx;

/// Pipes with state (a pool has two or three per worker).
const MAX_PIPES: usize = 4096;
/// Writes kept per pipe until read (a backlog of tasks no worker took).
const MAX_WRITES: usize = 1024;
/// Bytes a read and a write must share to realign on that write.
const REALIGN_MIN: usize = 8;

/// What a write on a pipe carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// A task, handed over for a request (None: no confident parent).
    Task(Option<SpanCtx>),
    /// A worker's result for its task's request (None: not known).
    Result(Option<SpanCtx>),
}

#[derive(Debug)]
struct Write {
    start: u64,
    end: u64,
    pid: u32,
    carried: Carried,
    head: Vec<u8>,
}

#[derive(Debug, Default)]
struct PipeState {
    written: u64,
    read: u64,
    writes: VecDeque<Write>,
    /// The followed ends (connections) that moved bytes, until they close.
    ends: HashSet<u64>,
}

impl PipeState {
    /// Whether the read of `len` bytes at offset `r0` is of writes known,
    /// and its first bytes are theirs.
    fn fits(&self, r0: u64, len: u64, head: &[u8]) -> bool {
        if r0.saturating_add(len) > self.written {
            return false;
        }
        let Some(w) = self.writes.iter().find(|w| w.end > r0) else {
            return false;
        };
        if w.start > r0 {
            return false;
        }
        let off = (r0 - w.start) as usize;
        let n = head.len().min(w.head.len().saturating_sub(off));
        head[..n] == w.head[off..off + n]
    }

    /// Where the read of `len` bytes that did not fit at the current offset
    /// is: the one place in the queued writes with its first bytes (at
    /// least `REALIGN_MIN` of them compared); else, for a read too short
    /// to tell that way (a 4-byte length), the next write after the
    /// current offset, if it starts with the read's bytes (a read before
    /// it was lost: the thread was blocked in it when the pipe began to be
    /// followed). Only where the whole read was written.
    fn realign(&self, len: u64, head: &[u8]) -> Option<u64> {
        let written = |at: u64| at.saturating_add(len) <= self.written;
        if head.len() < REALIGN_MIN {
            let next = self.writes.iter().find(|w| w.start > self.read)?;
            let n = head.len().min(next.head.len());
            return (n > 0 && head[..n] == next.head[..n] && written(next.start))
                .then_some(next.start);
        }
        let mut found = None;
        for w in &self.writes {
            for off in 0..w.head.len() {
                let n = head.len().min(w.head.len() - off);
                if n >= REALIGN_MIN && head[..n] == w.head[off..off + n] {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(w.start + off as u64);
                }
            }
        }
        found.filter(|&at| written(at))
    }
}

/// What a read matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The write (or writes, all alike) whose bytes it returned.
    Carried(Carried),
    /// Bytes its own process wrote: no hand-off.
    Own,
    /// No write known, or several unlike ones: nothing can be said.
    Unknown,
}

#[derive(Default)]
pub struct Handoffs {
    pipes: HashMap<u64, PipeState>,
    /// Writes or pipes forgotten at a bound before being read.
    pub dropped: u64,
    /// Reads matched to no write (a lost or late record).
    pub unmatched: u64,
}

impl Handoffs {
    /// Entries held: each pipe, or its writes waiting to be read.
    pub fn entries(&self) -> usize {
        self.pipes.values().map(|p| p.writes.len().max(1)).sum()
    }

    fn pipe(&mut self, inode: u64, end: u64) -> &mut PipeState {
        if self.pipes.len() >= MAX_PIPES && !self.pipes.contains_key(&inode) {
            self.dropped += self.pipes.len() as u64;
            self.pipes.clear();
        }
        let p = self.pipes.entry(inode).or_default();
        p.ends.insert(end);
        p
    }

    /// Process `pid` wrote `len` bytes (`head` their first) to pipe `inode`
    /// through its end `end`.
    pub fn wrote(
        &mut self,
        (inode, end): (u64, u64),
        pid: u32,
        len: u64,
        head: Vec<u8>,
        carried: Carried,
    ) {
        let p = self.pipe(inode, end);
        let start = p.written;
        p.written = p.written.saturating_add(len);
        let full = p.writes.len() >= MAX_WRITES;
        if full {
            p.writes.pop_front();
        }
        p.writes.push_back(Write {
            start,
            end: p.written,
            pid,
            carried,
            head,
        });
        self.dropped += u64::from(full);
    }

    /// Process `pid` read `len` bytes (`head` their first) from pipe
    /// `inode` through its end `end`.
    pub fn read(&mut self, (inode, end): (u64, u64), pid: u32, len: u64, head: &[u8]) -> Matched {
        let p = self.pipe(inode, end);
        let r0 = if p.fits(p.read, len, head) {
            p.read
        } else {
            // A record was lost, or this read's write has not come yet:
            // realign on the one place a queued write has these bytes.
            match p.realign(len, head) {
                Some(at) => at,
                None => {
                    // Bytes of no known write: the offset stays, so the
                    // next read can still meet its write there.
                    self.unmatched += 1;
                    return Matched::Unknown;
                }
            }
        };
        let r1 = r0 + len;
        p.read = r1;
        while p.writes.front().is_some_and(|w| w.end <= r0) {
            p.writes.pop_front();
        }
        let mut covering = p.writes.iter().take_while(|w| w.start < r1);
        let Some(first) = covering.next() else {
            self.unmatched += 1;
            return Matched::Unknown;
        };
        let (own, carried) = (first.pid == pid, first.carried);
        let alike = covering.all(|w| w.carried == carried && (w.pid == pid) == own);
        while p.writes.front().is_some_and(|w| w.end <= r1) {
            p.writes.pop_front();
        }
        match (own, alike) {
            (true, _) => Matched::Own,
            (false, true) => Matched::Carried(carried),
            (false, false) => Matched::Unknown,
        }
    }

    /// A followed end of pipe `inode` closed; the pipe's state goes with
    /// its last end.
    pub fn closed(&mut self, inode: u64, end: u64) {
        if let Some(p) = self.pipes.get_mut(&inode) {
            p.ends.remove(&end);
            if p.ends.is_empty() {
                self.dropped += p.writes.len() as u64;
                self.pipes.remove(&inode);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPE: u64 = 7;

    fn ctx(n: u8) -> SpanCtx {
        SpanCtx::filled(n)
    }

    fn task(n: u8) -> Carried {
        Carried::Task(Some(ctx(n)))
    }

    /// A framed message, as multiprocessing writes one: a 4-byte length,
    /// then the body, in one write.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn write(h: &mut Handoffs, bytes: &[u8], c: Carried) {
        h.wrote((PIPE, 1), 100, bytes.len() as u64, bytes.to_vec(), c);
    }

    fn read(h: &mut Handoffs, bytes: &[u8]) -> Matched {
        h.read((PIPE, 2), 200, bytes.len() as u64, bytes)
    }

    #[test]
    fn reads_match_writes_by_offset_whatever_their_split() {
        let mut h = Handoffs::default();
        let (a, b) = (
            framed(b"task for request one"),
            framed(b"task for request two"),
        );
        write(&mut h, &a, task(1));
        write(&mut h, &b, task(2));
        // The length, then the body: both are the first write's.
        assert_eq!(read(&mut h, &a[..4]), Matched::Carried(task(1)));
        assert_eq!(read(&mut h, &a[4..]), Matched::Carried(task(1)));
        assert_eq!(read(&mut h, &b), Matched::Carried(task(2)));
        assert_eq!(h.unmatched, 0);
        assert_eq!(h.entries(), 1, "read writes are gone");
    }

    #[test]
    fn one_read_of_two_unlike_writes_says_nothing() {
        let mut h = Handoffs::default();
        let (a, b) = (framed(b"first task body"), framed(b"second task body"));
        write(&mut h, &a, task(1));
        write(&mut h, &b, task(2));
        let both: Vec<u8> = a.iter().chain(&b).copied().collect();
        assert_eq!(read(&mut h, &both), Matched::Unknown);
    }

    #[test]
    fn a_lost_write_record_is_found_by_content_never_taken_for_the_next() {
        let mut h = Handoffs::default();
        let (a, b, c) = (
            framed(b"task one, its record lost"),
            framed(b"task two, seen"),
            framed(b"task three, seen"),
        );
        // a's record never comes; b and c are queued at offsets 0 and |b|.
        write(&mut h, &b, task(2));
        write(&mut h, &c, task(3));
        // The worker reads a's bytes: they are not b's.
        assert_eq!(read(&mut h, &a), Matched::Unknown);
        assert_eq!(h.unmatched, 1);
        // Then b's and c's, found by their first bytes.
        assert_eq!(read(&mut h, &b), Matched::Carried(task(2)));
        assert_eq!(read(&mut h, &c), Matched::Carried(task(3)));
    }

    #[test]
    fn a_lost_read_record_realigns_on_the_next_write() {
        let mut h = Handoffs::default();
        let (a, b) = (framed(b"task one, read unseen"), framed(b"task two"));
        write(&mut h, &a, task(1));
        write(&mut h, &b, task(2));
        // a's read was lost: b's bytes arrive where a's were expected.
        assert_eq!(read(&mut h, &b), Matched::Carried(task(2)));
    }

    #[test]
    fn a_late_write_record_leaves_its_read_unmatched_and_the_rest_in_step() {
        let mut h = Handoffs::default();
        let (a, b) = (
            framed(b"task one, written late"),
            framed(b"task two, in order"),
        );
        assert_eq!(read(&mut h, &a), Matched::Unknown);
        write(&mut h, &a, task(1));
        write(&mut h, &b, task(2));
        assert_eq!(read(&mut h, &b), Matched::Carried(task(2)));
        assert_eq!(h.unmatched, 1);
        assert_eq!(h.entries(), 1, "the late write is passed");
    }

    /// A worker blocked in its read when its pipe began to be followed:
    /// that read's record never comes, and the next, too short to find by
    /// content, is the next write's.
    #[test]
    fn a_short_read_after_a_lost_one_takes_the_next_write() {
        let mut h = Handoffs::default();
        for (i, t) in [b"T000", b"T001", b"T002"].into_iter().enumerate() {
            write(&mut h, t, task(i as u8));
        }
        // T000 was read unseen.
        assert_eq!(read(&mut h, b"T001"), Matched::Carried(task(1)));
        assert_eq!(read(&mut h, b"T002"), Matched::Carried(task(2)));
        assert_eq!(h.unmatched, 0);
    }

    /// The same with framed tasks of one length: the lost task's length
    /// matches where it stands, so the next length is taken for it (a
    /// length alone cannot tell), and the body, which can, sets it right
    /// before the worker can act on the task.
    #[test]
    fn a_body_after_a_lost_task_finds_its_own_write() {
        let mut h = Handoffs::default();
        let (a, b, c) = (
            framed(b"task one"),
            framed(b"task two"),
            framed(b"task six"),
        );
        write(&mut h, &a, task(1));
        write(&mut h, &b, task(2));
        write(&mut h, &c, task(3));
        // a's length and body were read unseen.
        let _ = read(&mut h, &b[..4]);
        assert_eq!(read(&mut h, &b[4..]), Matched::Carried(task(2)));
        assert_eq!(read(&mut h, &c[..4]), Matched::Carried(task(3)));
        assert_eq!(read(&mut h, &c[4..]), Matched::Carried(task(3)));
    }

    #[test]
    fn a_late_write_between_a_length_and_its_body() {
        let mut h = Handoffs::default();
        let a = framed(b"task one, its body read after its record");
        assert_eq!(read(&mut h, &a[..4]), Matched::Unknown);
        write(&mut h, &a, task(1));
        assert_eq!(read(&mut h, &a[4..]), Matched::Carried(task(1)));
    }

    #[test]
    fn like_tasks_never_realign_on_a_guess() {
        let mut h = Handoffs::default();
        let same = framed(b"the very same task bytes");
        write(&mut h, b"something else entirely", task(1));
        write(&mut h, &same, task(2));
        write(&mut h, &same, task(3));
        // Neither the first write's bytes, nor one place for these.
        assert_eq!(read(&mut h, &same), Matched::Unknown);
    }

    #[test]
    fn a_process_reading_its_own_bytes_is_no_hand_off() {
        let mut h = Handoffs::default();
        write(&mut h, b"wake up, loop", task(1));
        assert_eq!(h.read((PIPE, 1), 100, 13, b"wake up, loop"), Matched::Own);
    }

    #[test]
    fn bounded_and_cleaned_with_the_last_end() {
        let mut h = Handoffs::default();
        for i in 0..MAX_WRITES + 5 {
            write(&mut h, format!("task number {i:08}").as_bytes(), task(1));
        }
        assert_eq!(h.dropped, 5);
        assert_eq!(h.entries(), MAX_WRITES);
        // The first five were forgotten: their bytes match nothing.
        assert_eq!(read(&mut h, b"task number 00000000"), Matched::Unknown);
        h.closed(PIPE, 1);
        assert_eq!(h.entries(), MAX_WRITES, "the writer's end closed, not all");
        h.closed(PIPE, 2);
        assert_eq!(h.entries(), 0);
        assert_eq!(h.dropped, 5 + MAX_WRITES as u64, "unread writes counted");
    }

    #[test]
    fn garbage_never_panics() {
        let mut h = Handoffs::default();
        write(&mut h, b"", task(1));
        assert_eq!(read(&mut h, b""), Matched::Unknown);
        h.wrote((PIPE, 1), 1, u64::MAX / 2, vec![1, 2, 3], task(1));
        let _ = h.read((PIPE, 2), 2, u64::MAX / 4, &[9; 64]);
        let _ = h.read((PIPE, 2), 2, 10, &[]);
    }
}
