//! The `protocols` target's input: one connection's conversation, as a
//! protocol index and a list of steps, and the replay that checks what
//! every parser promises whatever the bytes.
//!
//! The input is decoded with `arbitrary` but by hand, not derived: derived
//! `Vec`s take their lengths from the end of the data in a way that depends
//! on how much is left, so recorded captures could not be written as seeds.
//! This format is one byte per choice, so [`Input::encode`] is exact and
//! libFuzzer's mutations map to small, local changes of the conversation.
use std::collections::HashSet;

use arbitrary::{Arbitrary, Unstructured};
use sonde::protocols::{registry::REGISTRY, Capture, Record, SegTime, Segment, Side};

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub side: Side,
    /// Where to split `bytes` into two syscalls (taken modulo `len + 1`).
    pub cut: Option<u16>,
    /// Bytes the last syscall moved beyond what was captured.
    pub gap: Option<u32>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Index into the registry, modulo its length: a new protocol is
    /// fuzzed without touching this crate.
    pub protocol: u8,
    pub steps: Vec<Step>,
}

const RESPONSE: u8 = 1;
const HAS_CUT: u8 = 2;
const HAS_GAP: u8 = 4;

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let head = u8::arbitrary(u)?;
        let side = if head & RESPONSE != 0 { Side::Response } else { Side::Request };
        let cut = if head & HAS_CUT != 0 { Some(u16::from_le_bytes(take::<2>(u))) } else { None };
        let gap = if head & HAS_GAP != 0 { Some(u32::from_le_bytes(take::<4>(u))) } else { None };
        let len = u16::from_le_bytes(take::<2>(u)) as usize;
        // A short input ends the last step early rather than failing it.
        let bytes = u.bytes(len.min(u.len()))?.to_vec();
        Ok(Step { side, cut, gap, bytes })
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let protocol = u8::arbitrary(u)?;
        let mut steps = vec![];
        while !u.is_empty() {
            steps.push(Step::arbitrary(u)?);
        }
        Ok(Input { protocol, steps })
    }
}

/// `N` bytes, zero-padded when the input runs out (never an error, so every
/// byte string is some conversation).
fn take<const N: usize>(u: &mut Unstructured<'_>) -> [u8; N] {
    let mut b = [0u8; N];
    let n = N.min(u.len());
    if let Ok(src) = u.bytes(n) {
        b[..n].copy_from_slice(src);
    }
    b
}

impl Input {
    pub fn decode(data: &[u8]) -> Input {
        Input::arbitrary(&mut Unstructured::new(data)).expect("every byte string decodes")
    }

    /// The bytes that [`Input::decode`] reads back as `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.protocol];
        for s in &self.steps {
            let mut head = if s.side == Side::Response { RESPONSE } else { 0 };
            head |= if s.cut.is_some() { HAS_CUT } else { 0 };
            head |= if s.gap.is_some() { HAS_GAP } else { 0 };
            out.push(head);
            if let Some(c) = s.cut {
                out.extend(c.to_le_bytes());
            }
            if let Some(g) = s.gap {
                out.extend(g.to_le_bytes());
            }
            let len = u16::try_from(s.bytes.len()).expect("a step carries at most 64 KiB");
            out.extend(len.to_le_bytes());
            out.extend(&s.bytes);
        }
        out
    }

    /// A recorded capture as a conversation: one step per turn, uncut.
    /// Turns longer than a step can hold are split into several.
    pub fn from_capture(protocol: usize, cap: &Capture) -> Input {
        let mut steps = vec![];
        for (side, bytes) in &cap.turns {
            for chunk in bytes.chunks(u16::MAX as usize) {
                steps.push(Step { side: *side, cut: None, gap: None, bytes: chunk.to_vec() });
            }
        }
        Input { protocol: u8::try_from(protocol).expect("fewer than 256 protocols"), steps }
    }
}

/// Heap a parser may hold: a fixed allowance plus a multiple of the bytes
/// it was given. Gaps are skipped by count and must cost nothing, so they
/// do not count; the multiple covers per-message bookkeeping of tiny
/// messages (a 20-byte request becomes a few hundred bytes of state).
pub const HEAP_FIXED: usize = 256 << 10;
pub const HEAP_PER_BYTE: usize = 64;

/// What a replay saw, for the seed checks.
#[derive(Debug, Default)]
pub struct Outcome {
    pub records: usize,
    pub gave_up: Option<&'static str>,
    pub parse_errors: u64,
    pub max_heap: usize,
}

/// Feeds `input` to its protocol as the dispatcher would (stopping at the
/// first give-up), closes, and panics if a promise is broken.
pub fn replay(input: &Input) -> Outcome {
    let spec = &REGISTRY[input.protocol as usize % REGISTRY.len()];
    let mut parser = (spec.new)();
    let mut out: Vec<Record> = vec![];
    // Every syscall gets a distinct time and thread, so a record's times
    // can be traced back to the segments that were really given.
    let mut given: HashSet<Key> = HashSet::new();
    let mut n = 0u64;
    let mut next_time = |given: &mut HashSet<Key>| {
        n += 1;
        let t = SegTime { enter_ns: n * 1_000, exit_ns: n * 1_000 + 7, tid: n as u32, tick: 3 * n as u32, lineage: Default::default(), py_task: 0 };
        given.insert(key(&t));
        t
    };
    let mut fed = 0usize;
    let mut outcome = Outcome::default();
    let mut checked = 0;
    'steps: for step in &input.steps {
        let at = step.cut.map_or(step.bytes.len(), |c| c as usize % (step.bytes.len() + 1));
        let pieces = [&step.bytes[..at], &step.bytes[at..]];
        let last = if pieces[1].is_empty() { 0 } else { 1 };
        for (i, data) in pieces.into_iter().enumerate().take(last + 1) {
            let gap = if i == last { step.gap.unwrap_or(0) as u64 } else { 0 };
            if data.is_empty() && gap == 0 {
                continue;
            }
            let t = next_time(&mut given);
            let seg = Segment { data, total: data.len() as u64 + gap, enter_ns: t.enter_ns, exit_ns: t.exit_ns, tid: t.tid, tick: t.tick, lineage: t.lineage, py_task: t.py_task };
            fed += data.len();
            let res = parser.feed(step.side, seg, &mut out);
            let stats = parser.take_stats();
            outcome.parse_errors += stats.parse_errors;
            check_heap(spec.name, parser.heap_bytes(), fed, &mut outcome);
            checked = check_times(spec.name, &out, checked, &given);
            if let Err(e) = res {
                outcome.gave_up = Some(e.0);
                break 'steps;
            }
        }
    }
    let at = next_time(&mut given);
    parser.close(at, &mut out);
    check_times(spec.name, &out, checked, &given);
    outcome.parse_errors += parser.take_stats().parse_errors;
    assert_eq!(parser.take_stats(), Default::default(), "{}: stats are handed out once", spec.name);
    check_heap(spec.name, parser.heap_bytes(), fed, &mut outcome);
    outcome.records = out.len();
    outcome
}

/// `SegTime` is not `Hash`; its fields are.
type Key = (u64, u64, u32, u32);

fn key(t: &SegTime) -> Key {
    (t.enter_ns, t.exit_ns, t.tid, t.tick)
}

fn check_heap(name: &str, heap: usize, fed: usize, outcome: &mut Outcome) {
    let limit = HEAP_FIXED + HEAP_PER_BYTE * fed;
    assert!(heap <= limit, "{name}: holds {heap} heap bytes after {fed} captured bytes (limit {limit})");
    outcome.max_heap = outcome.max_heap.max(heap);
}

/// Every time in the records from `from` on is one we gave. Records are
/// read through their `Debug` form so that a new record type, or a new
/// time field, is checked without an edit here.
fn check_times(name: &str, out: &[Record], from: usize, given: &HashSet<Key>) -> usize {
    for r in &out[from..] {
        let text = format!("{r:?}");
        for t in seg_times(&text) {
            assert!(given.contains(&key(&t)), "{name}: record carries {t:?}, which no segment had: {text}");
        }
    }
    out.len()
}

/// The `SegTime { enter_ns: A, exit_ns: B, tid: C, tick: D }` values in a `Debug` text.
pub fn seg_times(text: &str) -> Vec<SegTime> {
    const OPEN: &str = "SegTime { enter_ns: ";
    let mut found = vec![];
    let mut rest = text;
    while let Some(p) = rest.find(OPEN) {
        rest = &rest[p + OPEN.len()..];
        let num = |s: &str| s.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse::<u64>().ok());
        let enter = num(rest);
        let exit = rest.find("exit_ns: ").and_then(|q| num(&rest[q + 9..]));
        let tid = rest.find("tid: ").and_then(|q| num(&rest[q + 5..]));
        let tick = rest.find("tick: ").and_then(|q| num(&rest[q + 6..]));
        match (enter, exit, tid, tick) {
            (Some(enter_ns), Some(exit_ns), Some(tid), Some(tick)) => {
                found.push(SegTime { enter_ns, exit_ns, tid: tid as u32, tick: tick as u32, lineage: Default::default(), py_task: 0 })
            }
            _ => panic!("unreadable SegTime in {text}"),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decodes_back() {
        let input = Input {
            protocol: 3,
            steps: vec![
                Step { side: Side::Request, cut: None, gap: None, bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec() },
                Step { side: Side::Response, cut: Some(5), gap: Some(1 << 20), bytes: vec![] },
                Step { side: Side::Response, cut: Some(0), gap: None, bytes: vec![0xfe; 300] },
            ],
        };
        assert_eq!(Input::decode(&input.encode()), input);
    }

    #[test]
    fn any_bytes_decode() {
        for data in [&b""[..], b"\x01", b"\x00\x07", b"\x02\x06\xff\xff\x01"] {
            let _ = Input::decode(data);
        }
    }

    #[test]
    fn reads_seg_times_from_debug() {
        let t = SegTime { enter_ns: 12, exit_ns: 34, tid: 5, tick: 6, lineage: Default::default(), py_task: 0 };
        let text = format!("{:?}", (t, "x", Some(t)));
        assert_eq!(seg_times(&text), vec![t, t]);
    }
}
