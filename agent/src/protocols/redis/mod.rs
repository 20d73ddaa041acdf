//! Redis (RESP2 and RESP3) client connections: commands paired with replies
//! in order (pipelining), pub/sub pushes set aside, bulk payloads beyond the
//! capture skipped by count.
pub mod protocol;
pub use protocol::SPEC;

use std::collections::VecDeque;

use smallvec::SmallVec;

use super::{
    db::{DbCall, DbError, DbSystem},
    Detect, SegTime, Segment,
};

/// Lines longer than this, or aggregates nested deeper, are garbage.
const MAX_LINE: usize = 64 * 1024;
const MAX_DEPTH: usize = 64;
/// Bytes kept of the first bulk elements (command name, key, push kind).
const KEEP: usize = 256;

/// Whether `data` starts a RESP command array (`*<n>\r\n`).
pub fn detect_request(data: &[u8]) -> Detect {
    match data {
        [] | [b'*'] => Detect::NeedMore,
        [b'*', d, ..] if d.is_ascii_digit() => Detect::Yes,
        _ => Detect::No,
    }
}

/// One kept element: a command's name or key, or a reply's text; on the
/// stack when short, as they mostly are (their heap buffers were most of
/// the Redis parser's allocations).
type Item = SmallVec<[u8; 32]>;

/// A complete top-level value, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Value {
    kind: u8,
    /// Element count of a top-level aggregate.
    len: i64,
    /// The first bulk elements of an aggregate (up to three), truncated.
    items: SmallVec<[Item; 3]>,
    /// Simple string or error text (first line).
    text: Item,
    first: SegTime,
    last: SegTime,
}

/// The values one segment completes, on the stack when they are few.
type Values = SmallVec<[Value; 2]>;

#[derive(Debug, Default)]
struct Reader {
    line: Vec<u8>,
    /// Bulk bytes (payload + CRLF) still to consume.
    skip: u64,
    /// Keep the current bulk's bytes into `cur.items`.
    keeping: bool,
    /// Elements still expected per open aggregate.
    stack: Vec<i64>,
    cur: Option<Value>,
    /// Framing lost: wait for a segment that starts a value.
    lost: bool,
    inline: bool,
}

// Large by design: a `Value` keeps its short items inline, and a step is
// returned and consumed at once, never stored.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Done(Value),
}

impl Reader {
    fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Consumes one byte slice; completed values go to `out`.
    fn feed(
        &mut self,
        mut data: &[u8],
        t: SegTime,
        requests: bool,
        out: &mut Values,
    ) -> Result<(), ()> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip).min(data.len() as u64) as usize;
                if self.keeping {
                    if let Some(item) = self.cur.as_mut().and_then(|v| v.items.last_mut()) {
                        let room = KEEP.saturating_sub(item.len());
                        item.extend_from_slice(&data[..n.min(room)]);
                    }
                }
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0 {
                    if let Some(item) = self.cur.as_mut().and_then(|v| v.items.last_mut()) {
                        if self.keeping && item.ends_with(b"\r\n") {
                            item.truncate(item.len() - 2);
                        }
                    }
                    self.keeping = false;
                    if let Step::Done(v) = self.element_done(t) {
                        out.push(v);
                    }
                }
                continue;
            }
            match data.iter().position(|&b| b == b'\n') {
                None => {
                    self.line.extend_from_slice(data);
                    if self.line.len() > MAX_LINE {
                        return Err(());
                    }
                    return Ok(());
                }
                Some(p) => {
                    let step = if self.line.is_empty() {
                        // Whole in this segment: read in place.
                        let line = &data[..=p];
                        data = &data[p + 1..];
                        self.on_line(line, t, requests)
                    } else {
                        self.line.extend_from_slice(&data[..=p]);
                        data = &data[p + 1..];
                        let mut line = std::mem::take(&mut self.line);
                        let step = self.on_line(&line, t, requests);
                        // Its buffer serves the next line cut by a segment.
                        line.clear();
                        self.line = line;
                        step
                    };
                    if let Step::Done(v) = step? {
                        out.push(v);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_line(&mut self, raw: &[u8], t: SegTime, requests: bool) -> Result<Step, ()> {
        let line = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(raw);
        if self.cur.is_none() {
            self.cur = Some(Value {
                kind: 0,
                first: t,
                last: t,
                ..Default::default()
            });
        }
        let Some((&kind, rest)) = line.split_first() else {
            return if self.depth() == 0 && self.inline {
                Ok(Step::Continue)
            } else {
                Err(())
            };
        };
        let top = self.depth() == 0;
        if top {
            if let Some(v) = self.cur.as_mut() {
                v.kind = kind;
            }
        }
        let num = || {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
                if top {
                    if let Some(v) = self.cur.as_mut() {
                        v.text = Item::from_slice(&rest[..rest.len().min(KEEP)]);
                    }
                } else if self.depth() == 1 {
                    self.keep_item(rest);
                }
                Ok(self.element_done(t))
            }
            b'$' | b'!' | b'=' => {
                let n = num().ok_or(())?;
                if n < 0 {
                    return Ok(self.element_done(t));
                }
                self.skip = n as u64 + 2;
                // Keep the first elements of a top-level aggregate, or a
                // top-level blob error's text.
                let keep = (self.depth() == 1
                    && self.cur.as_ref().is_some_and(|v| v.items.len() < 3))
                    || top;
                if keep {
                    if let Some(v) = self.cur.as_mut() {
                        v.items.push(Item::new());
                    }
                }
                self.keeping = keep;
                Ok(Step::Continue)
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = num().ok_or(())?;
                if top {
                    if let Some(v) = self.cur.as_mut() {
                        v.len = n;
                    }
                }
                let n = if matches!(kind, b'%' | b'|') {
                    n.saturating_mul(2)
                } else {
                    n
                };
                if n <= 0 {
                    return Ok(self.element_done(t));
                }
                if self.depth() >= MAX_DEPTH {
                    return Err(());
                }
                self.stack.push(n);
                Ok(Step::Continue)
            }
            _ if top && requests => {
                // Inline command: `PING`, `SET k v` typed by hand.
                let words: SmallVec<[Item; 3]> = line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                    .take(3)
                    .map(Item::from_slice)
                    .collect();
                if words.is_empty() || !words[0].iter().all(|b| b.is_ascii_alphabetic()) {
                    return Err(());
                }
                let v = self.cur.as_mut().expect("set above");
                v.kind = b'*';
                v.len = words.len() as i64;
                v.items = words;
                Ok(self.element_done(t))
            }
            _ => Err(()),
        }
    }

    fn keep_item(&mut self, bytes: &[u8]) {
        if let Some(v) = self.cur.as_mut() {
            if v.items.len() < 3 {
                v.items
                    .push(Item::from_slice(&bytes[..bytes.len().min(KEEP)]));
            }
        }
    }

    /// An element ended; close finished aggregates; a finished top-level
    /// value is returned. A `|` attribute map precedes the real value.
    fn element_done(&mut self, t: SegTime) -> Step {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return Step::Continue;
            }
            self.stack.pop();
        }
        let mut v = self.cur.take().unwrap_or_default();
        v.last = t;
        if v.kind == b'|' {
            // Attributes only: the value they describe comes next.
            self.cur = Some(Value {
                first: v.first,
                ..Default::default()
            });
            return Step::Continue;
        }
        Step::Done(v)
    }

    fn reset(&mut self) {
        *self = Reader {
            lost: true,
            inline: self.inline,
            ..Default::default()
        };
    }
}

struct Pending {
    name: String,
    key: Option<String>,
    first: SegTime,
    /// SELECT's argument: the db becomes the namespace once it succeeds.
    select: Option<String>,
}

/// Parser state of one Redis client connection.
pub struct RedisConnection {
    requests: Reader,
    replies: Reader,
    pending: VecDeque<Pending>,
    db: String,
    subscribed: bool,
    pub parse_errors: u64,
    /// Replies with no command to pair (or commands lost with framing).
    pub unmatched: u64,
}

impl Default for RedisConnection {
    fn default() -> Self {
        RedisConnection {
            requests: Reader {
                inline: true,
                ..Default::default()
            },
            replies: Reader::default(),
            pending: VecDeque::new(),
            db: "0".into(),
            subscribed: false,
            parse_errors: 0,
            unmatched: 0,
        }
    }
}

/// Commands whose arguments are never shown (credentials, settings).
const NO_ARGS: [&str; 7] = ["AUTH", "HELLO", "CLIENT", "CONFIG", "ACL", "ECHO", "SELECT"];
/// Commands without a key.
const KEYLESS: [&str; 14] = [
    "PING", "INFO", "MULTI", "EXEC", "DISCARD", "DBSIZE", "FLUSHDB", "FLUSHALL", "TIME", "QUIT",
    "RESET", "WATCH", "UNWATCH", "SCAN",
];

impl RedisConnection {
    /// Feeds the command side (true) or the reply side (false).
    pub fn push(&mut self, requests: bool, seg: Segment<'_>, out: &mut Vec<DbCall>) {
        let t = seg.time();
        let reader = if requests {
            &mut self.requests
        } else {
            &mut self.replies
        };
        if reader.lost {
            let starts = seg
                .data
                .first()
                .is_some_and(|b| b"*+-:$_#,(!=~>%|".contains(b));
            if !starts {
                return;
            }
            reader.lost = false;
        }
        let mut values = Values::new();
        let ok = reader.feed(seg.data, t, requests, &mut values).is_ok();
        // A gap is skippable only inside a bulk payload; elsewhere it loses
        // the framing.
        let gap = seg.gap();
        let lost = !ok || (gap > 0 && (reader.skip < gap || !reader.line.is_empty()));
        if lost {
            reader.reset();
        } else if gap > 0 {
            reader.skip -= gap;
            if reader.skip == 0 {
                reader.keeping = false;
                if let Step::Done(v) = reader.element_done(t) {
                    values.push(v);
                }
            }
        }
        if lost {
            self.parse_errors += 1;
            // Pairing by order is unreliable from here: start over.
            self.unmatched += self.pending.len() as u64;
            self.pending.clear();
        }
        for v in values {
            if requests {
                self.on_command(v);
            } else {
                self.on_reply(v, out);
            }
        }
    }

    fn on_command(&mut self, v: Value) {
        let word = |i: usize| v.items.get(i).map(|b| String::from_utf8_lossy(b));
        let Some(name) = word(0).map(|n| n.to_ascii_uppercase()) else {
            return;
        };
        if matches!(name.as_str(), "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE") {
            self.subscribed = true;
        }
        let key = if NO_ARGS.contains(&name.as_str()) || KEYLESS.contains(&name.as_str()) {
            None
        } else {
            word(1).map(|k| k.into_owned())
        };
        let select = (name == "SELECT")
            .then(|| word(1).map(|k| k.into_owned()))
            .flatten();
        if self.pending.len() >= 1024 {
            self.pending.pop_front();
            self.unmatched += 1;
        }
        self.pending.push_back(Pending {
            name,
            key,
            first: v.first,
            select,
        });
    }

    fn on_reply(&mut self, v: Value, out: &mut Vec<DbCall>) {
        if v.kind == b'>' {
            return; // RESP3 push: pub/sub message or invalidation, no command
        }
        if self.subscribed && v.kind == b'*' {
            let first = v.items.first().map(|b| b.to_ascii_lowercase());
            if matches!(
                first.as_deref(),
                Some(b"message" | b"pmessage" | b"smessage")
            ) {
                return;
            }
        }
        let Some(p) = self.pending.pop_front() else {
            // Multi-channel SUBSCRIBE confirms each channel: only the first pairs.
            self.unmatched += u64::from(!self.subscribed);
            return;
        };
        let error = matches!(v.kind, b'-' | b'!').then(|| {
            let text = if v.kind == b'!' {
                v.items.first().cloned().unwrap_or_default()
            } else {
                v.text.clone()
            };
            let text = String::from_utf8_lossy(&text).into_owned();
            DbError {
                code: text.split_whitespace().next().unwrap_or("ERR").to_string(),
                message: text,
            }
        });
        if error.is_none() {
            if let Some(db) = p.select {
                self.db = db;
            }
            if matches!(p.name.as_str(), "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "RESET") {
                self.subscribed = false;
            }
        }
        let rows = matches!(v.kind, b'*' | b'~' | b'%').then_some(v.len.max(0) as u64);
        let query_text = match &p.key {
            Some(k) => format!("{} {k}", p.name),
            None => p.name.clone(),
        };
        out.push(DbCall {
            system: DbSystem::Redis,
            namespace: Some(self.db.clone()),
            operation: p.name,
            collection: None,
            query_text,
            rows,
            error,
            first: p.first,
            last: v.last,
        });
    }
}

#[cfg(test)]
mod tests;
