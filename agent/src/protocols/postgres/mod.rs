//! PostgreSQL frontend/backend protocol v3, client connections.
//!
//! A call is a simple Query (answered when ReadyForQuery arrives) or one
//! Execute of the extended protocol (answered by its CommandComplete,
//! EmptyQueryResponse, PortalSuspended or ErrorResponse). Statements and
//! portals are tracked so an Execute knows the SQL its Parse carried, across
//! messages and syscalls. After an error the server skips to the next Sync:
//! Executes it skipped are dropped at ReadyForQuery.
//!
//! SQL is sanitized when the client sends it, under the
//! standard_conforming_strings the server last reported (ParameterStatus),
//! which is how the server reads it; a Parse's result is kept for every
//! Execute of the statement.
pub mod protocol;
pub use protocol::SPEC;

use foldhash::HashMap;
use smallvec::SmallVec;
use std::{borrow::Cow, collections::VecDeque, sync::Arc};

use super::{
    db::{DbCall, DbError, DbSystem},
    sql::{self, Dialect, Statement},
    Detect, SegTime, Segment,
};

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Message bodies kept for parsing (SQL text, error fields); the rest of a
/// longer body is skipped by count.
const KEEP: usize = 16 * 1024;

/// How much of a message of type `kind` to keep: the messages read below
/// (startup packets, Query, Parse, Bind, Execute, Close; CommandComplete,
/// ErrorResponse, ParameterStatus) up to `KEEP`, the others (rows, row
/// descriptions, copy data, passwords) none: only counted past.
fn keep(kind: u8) -> usize {
    match kind {
        0 | b'Q' | b'P' | b'B' | b'E' | b'C' | b'S' => KEEP,
        _ => 0,
    }
}
const MAX_LEN: u32 = 1 << 30;

/// Whether a client's first bytes are a startup, SSL or GSS request.
pub fn detect_client(data: &[u8]) -> Detect {
    if data.len() < 8 {
        return if data.is_empty() || data[0] == 0 {
            Detect::NeedMore
        } else {
            Detect::No
        };
    }
    let (Some(len), Some(code)) = (be32(data, 0), be32(data, 4)) else {
        return Detect::NeedMore;
    };
    let ok = (8..=10_000).contains(&len)
        && matches!(
            code,
            PROTOCOL_3 | SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST
        );
    if ok {
        Detect::Yes
    } else {
        Detect::No
    }
}

/// A big-endian u32 at `at`; None when the bytes were cut short.
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(*b.get(at..)?.first_chunk()?))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PgError {
    #[error("the connection switched to TLS/GSS encryption")]
    Encrypted,
}

/// One message: type (0 for untyped startup packets), body prefix, timing.
/// The body is borrowed from the segment when the whole message arrived in
/// it (most do), and copied only when it spans segments.
#[derive(Debug)]
struct Msg<'a> {
    kind: u8,
    body: Cow<'a, [u8]>,
    /// Part of the body was not captured.
    truncated: bool,
    first: SegTime,
    last: SegTime,
}

/// The messages one segment completes, on the stack when they are few (a
/// query's whole answer usually is): a `Vec` grown per segment was about
/// 1% of the agent's CPU under the `db` bench.
type Msgs<'a> = SmallVec<[Msg<'a>; 8]>;

#[derive(Debug, Default)]
struct Framer {
    /// Untyped packets expected next (client before startup completes).
    untyped: bool,
    hdr: Vec<u8>,
    remaining: u64,
    /// A message that continues in the next segment.
    cur: Option<Msg<'static>>,
    lost: bool,
}

impl Framer {
    fn hdr_len(&self) -> usize {
        if self.untyped {
            4
        } else {
            5
        }
    }

    fn feed<'a>(&mut self, mut data: &'a [u8], t: SegTime, out: &mut Msgs<'a>) -> Result<(), ()> {
        while !data.is_empty() {
            if let Some(m) = self.cur.as_mut() {
                let n = self.remaining.min(data.len() as u64) as usize;
                let room = keep(m.kind).saturating_sub(m.body.len());
                m.body.to_mut().extend_from_slice(&data[..n.min(room)]);
                m.truncated |= n > room;
                m.last = t;
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    self.complete(out);
                }
                continue;
            }
            let need = self.hdr_len().saturating_sub(self.hdr.len());
            let n = need.min(data.len());
            self.hdr.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.hdr.len() < self.hdr_len() {
                return Ok(());
            }
            let (kind, len) = if self.untyped {
                (0, be32(&self.hdr, 0))
            } else {
                (self.hdr[0], be32(&self.hdr, 1))
            };
            let Some(len) = len.filter(|l| (4..=MAX_LEN).contains(l)) else {
                return Err(());
            };
            self.hdr.clear();
            let body = (len - 4) as usize;
            if body <= data.len() {
                // Whole in this segment: borrowed, no copy.
                let kept = body.min(keep(kind));
                let m = Msg {
                    kind,
                    body: Cow::Borrowed(&data[..kept]),
                    truncated: kept < body,
                    first: t,
                    last: t,
                };
                data = &data[body..];
                self.done(m, out);
                continue;
            }
            self.remaining = body as u64;
            self.cur = Some(Msg {
                kind,
                body: Cow::Owned(vec![]),
                truncated: false,
                first: t,
                last: t,
            });
        }
        Ok(())
    }

    fn complete(&mut self, out: &mut Msgs<'_>) {
        if let Some(m) = self.cur.take() {
            self.done(m, out);
        }
    }

    fn done<'a>(&mut self, m: Msg<'a>, out: &mut Msgs<'a>) {
        // After the StartupMessage every packet is typed, from the very
        // next byte of this same segment.
        if self.untyped && m.body.get(0..4) == Some(&PROTOCOL_3.to_be_bytes()[..]) {
            self.untyped = false;
        }
        out.push(m);
    }

    /// Skips `gap` uncaptured bytes; false if that loses the framing.
    fn skip(&mut self, gap: u64, out: &mut Msgs<'_>) -> bool {
        if gap == 0 {
            return true;
        }
        match self.cur.as_mut() {
            Some(m) if self.remaining >= gap => {
                m.truncated = true;
                self.remaining -= gap;
                if self.remaining == 0 {
                    self.complete(out);
                }
                true
            }
            _ => false,
        }
    }
}

fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A statement's or portal's name, to look it up: borrowed when it is
/// UTF-8, as names are.
fn name(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

#[derive(Debug)]
enum Pending {
    /// A simple Query: rows and error gathered until ReadyForQuery.
    Simple {
        st: Statement,
        first: SegTime,
        rows: Option<u64>,
        error: Option<DbError>,
    },
    /// None when the statement's Parse was not seen.
    Execute {
        st: Option<Arc<Statement>>,
        first: SegTime,
    },
    Sync,
}

#[derive(Default)]
pub struct PgConnection {
    client: Framer,
    server: Framer,
    /// The client asked for SSL/GSS: the server's next byte answers.
    encryption_asked: bool,
    /// The server accepted SSL: the startup follows inside TLS. Its
    /// plaintext arrives if the client's TLS library is hooked; TLS records
    /// mean it is not.
    tls_started: bool,
    /// The startup's ReadyForQuery was seen (or the stream began mid-way):
    /// from now on each ReadyForQuery ends a query or a Sync.
    ready: bool,
    database: Option<String>,
    /// standard_conforming_strings=off was reported: backslashes escape in
    /// '...' strings. Off by default, as the setting is on since 9.1.
    escape_strings: bool,
    statements: HashMap<String, Arc<Statement>>,
    portals: HashMap<String, Arc<Statement>>,
    pending: VecDeque<Pending>,
    pub parse_errors: u64,
    pub unmatched: u64,
}

/// Rows from a CommandComplete tag: the last number ("INSERT 0 5" -> 5).
fn tag_rows(tag: &str) -> Option<u64> {
    let mut words = tag.split_whitespace();
    let verb = words.next()?;
    if !matches!(
        verb,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE"
    ) {
        return None;
    }
    words.last()?.parse().ok()
}

fn error_fields(body: &[u8]) -> DbError {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&f, r)) = rest.split_first() {
        if f == 0 {
            break;
        }
        let (v, r) = cstr(r);
        match f {
            b'C' => code = text(v),
            b'M' => message = text(v),
            _ => {}
        }
        rest = r;
    }
    DbError { code, message }
}

const MAX_STATEMENTS: usize = 4096;

impl PgConnection {
    pub fn new() -> Self {
        PgConnection {
            client: Framer {
                untyped: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A connection first seen mid-stream (the agent started later): typed
    /// messages only, database unknown.
    pub fn mid_stream() -> Self {
        PgConnection {
            ready: true,
            ..Default::default()
        }
    }

    /// Feeds the client side (true) or the server side (false).
    pub fn push(
        &mut self,
        client: bool,
        seg: Segment<'_>,
        out: &mut Vec<DbCall>,
    ) -> Result<(), PgError> {
        let t = seg.time();
        let mut data = seg.data;
        if !client
            && self.encryption_asked
            && self.server.cur.is_none()
            && self.server.hdr.is_empty()
        {
            // The one-byte answer to SSLRequest/GSSENCRequest.
            match data.first() {
                Some(b'S') => {
                    self.encryption_asked = false;
                    self.tls_started = true;
                    data = &data[1..];
                }
                Some(b'G') => return Err(PgError::Encrypted),
                Some(b'N') => {
                    self.encryption_asked = false;
                    data = &data[1..];
                }
                _ => {}
            }
        }
        if self.tls_started && !data.is_empty() {
            if super::tls_record(data) {
                return Err(PgError::Encrypted);
            }
            // Plaintext after the SSL answer: the hooked library's.
            self.tls_started = false;
        }
        let framer = if client {
            &mut self.client
        } else {
            &mut self.server
        };
        if framer.lost {
            // Resynchronise on a segment that starts with a plausible message.
            let ok = data.first().is_some_and(u8::is_ascii_alphabetic)
                && be32(data, 1).is_some_and(|l| (4..1 << 24).contains(&l));
            if !ok {
                return Ok(());
            }
            *framer = Framer::default();
        }
        let mut msgs = Msgs::new();
        let ok = framer.feed(data, t, &mut msgs).is_ok() && framer.skip(seg.gap(), &mut msgs);
        if !ok {
            *framer = Framer {
                lost: true,
                ..Default::default()
            };
            self.parse_errors += 1;
            self.unmatched += self
                .pending
                .iter()
                .filter(|p| !matches!(p, Pending::Sync))
                .count() as u64;
            self.pending.clear();
        }
        for m in msgs {
            if client {
                self.on_client(m);
            } else {
                self.on_server(m, out);
            }
        }
        Ok(())
    }

    fn on_client(&mut self, m: Msg<'_>) {
        if m.kind == 0 {
            if let Some(code) = be32(&m.body, 0) {
                match code {
                    SSL_REQUEST | GSSENC_REQUEST => self.encryption_asked = true,
                    PROTOCOL_3 => {
                        let mut rest = m.body.get(4..).unwrap_or(&[]);
                        let mut user = None;
                        while rest.first().is_some_and(|&c| c != 0) {
                            let (k, r) = cstr(rest);
                            let (v, r) = cstr(r);
                            match k {
                                b"database" => self.database = Some(text(v)),
                                b"user" => user = Some(text(v)),
                                _ => {}
                            }
                            rest = r;
                        }
                        // The database defaults to the user name.
                        if self.database.is_none() {
                            self.database = user;
                        }
                    }
                    _ => {}
                }
            }
            return;
        }
        match m.kind {
            b'Q' => {
                let (q, _) = cstr(&m.body);
                let st = sql::statement(&String::from_utf8_lossy(q), self.dialect());
                self.queue(Pending::Simple {
                    st,
                    first: m.first,
                    rows: None,
                    error: None,
                });
            }
            b'P' => {
                let (stmt, rest) = cstr(&m.body);
                let (q, _) = cstr(rest);
                let stmt = name(stmt);
                if self.statements.len() < MAX_STATEMENTS
                    || self.statements.contains_key(stmt.as_ref())
                {
                    let st = sql::statement(&String::from_utf8_lossy(q), self.dialect());
                    self.statements.insert(stmt.into_owned(), Arc::new(st));
                }
            }
            b'B' => {
                let (portal, rest) = cstr(&m.body);
                let (stmt, _) = cstr(rest);
                let st = self
                    .statements
                    .get(name(stmt).as_ref())
                    .cloned()
                    .unwrap_or_default();
                let portal = name(portal);
                if let Some(p) = self.portals.get_mut(portal.as_ref()) {
                    *p = st;
                } else if self.portals.len() < MAX_STATEMENTS {
                    self.portals.insert(portal.into_owned(), st);
                }
            }
            b'E' => {
                let (portal, _) = cstr(&m.body);
                let st = self.portals.get(name(portal).as_ref()).cloned();
                self.queue(Pending::Execute { st, first: m.first });
            }
            b'S' => self.queue(Pending::Sync),
            b'C' => {
                let (&what, rest) = m.body.split_first().unwrap_or((&0, &[]));
                let (name, _) = cstr(rest);
                match what {
                    b'S' => {
                        self.statements.remove(&text(name));
                    }
                    b'P' => {
                        self.portals.remove(&text(name));
                    }
                    _ => {}
                }
            }
            // Describe, Flush, CopyData/Done/Fail, Terminate, password: no call.
            _ => {}
        }
    }

    fn queue(&mut self, p: Pending) {
        if self.pending.len() >= 1024 {
            self.pending.pop_front();
            self.unmatched += 1;
        }
        self.pending.push_back(p);
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres {
            standard_conforming_strings: !self.escape_strings,
        }
    }

    fn call(
        &self,
        st: &Statement,
        rows: Option<u64>,
        error: Option<DbError>,
        first: SegTime,
        last: SegTime,
    ) -> DbCall {
        DbCall {
            system: DbSystem::Postgresql,
            namespace: self.database.clone(),
            operation: st.operation.clone(),
            collection: st.collection.clone(),
            query_text: st.sanitized.clone(),
            rows,
            error,
            first,
            last,
        }
    }

    fn on_server(&mut self, m: Msg<'_>, out: &mut Vec<DbCall>) {
        match m.kind {
            b'C' | b'I' | b's' | b'E' => {
                let rows = (m.kind == b'C')
                    .then(|| tag_rows(&text(cstr(&m.body).0)))
                    .flatten();
                let error = (m.kind == b'E').then(|| error_fields(&m.body));
                match self.pending.front_mut() {
                    Some(Pending::Simple {
                        rows: r, error: e, ..
                    }) => {
                        // A multi-statement query: the last tag, the first error.
                        if rows.is_some() {
                            *r = rows;
                        }
                        if e.is_none() {
                            *e = error;
                        }
                    }
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute { st, first }) = self.pending.pop_front() {
                            out.push(self.call(
                                &st.unwrap_or_default(),
                                rows,
                                error,
                                first,
                                m.last,
                            ));
                        }
                    }
                    Some(Pending::Sync) | None => {
                        // An error outside any call (e.g. failed Parse before
                        // Execute was sent): nothing to attach it to.
                        if m.kind != b'E' {
                            self.unmatched += 1;
                        }
                    }
                }
            }
            b'S' => {
                // ParameterStatus: at startup, and whenever a SET changes a
                // reported setting.
                let (name, rest) = cstr(&m.body);
                let (value, _) = cstr(rest);
                if name == b"standard_conforming_strings" {
                    self.escape_strings = value == b"off";
                }
            }
            b'Z' if !self.ready => self.ready = true,
            b'Z' => {
                // ReadyForQuery ends a simple query, or a Sync: Executes the
                // server skipped after an error are dropped.
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Simple {
                            st,
                            first,
                            rows,
                            error,
                        } => {
                            out.push(self.call(&st, rows, error, first, m.last));
                            break;
                        }
                        Pending::Sync => break,
                        Pending::Execute { .. } => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
