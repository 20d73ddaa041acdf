//! MySQL / MariaDB client/server protocol, client connections.
//!
//! The server speaks first (handshake v10: version, capabilities); the
//! client's handshake response names the schema. Then each command packet
//! (sequence 0) is answered by OK, ERR, or a result set (column count,
//! column definitions, [EOF], rows, EOF or OK with CLIENT_DEPRECATE_EOF).
//! Prepared statements map their id (from COM_STMT_PREPARE_OK) to the SQL.
pub mod protocol;
pub use protocol::SPEC;

use std::collections::{HashMap, VecDeque};

use super::{
    db::{DbCall, DbError, DbSystem},
    sql, Detect, SegTime, Segment,
};

const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;
const KEEP: usize = 16 * 1024;

/// Whether a client connection's first inbound bytes are a server greeting.
pub fn detect_greeting(data: &[u8]) -> Detect {
    if data.len() < 6 {
        return if data.len() > 3 && data[3] != 0 { Detect::No } else { Detect::NeedMore };
    }
    let len = data[0] as usize | (data[1] as usize) << 8 | (data[2] as usize) << 16;
    let ok = data[3] == 0 && data[4] == 0x0a && (20..1024).contains(&len) && data[5].is_ascii_digit();
    if ok { Detect::Yes } else { Detect::No }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MysqlError {
    #[error("the connection switched to TLS")]
    Encrypted,
}

struct Packet {
    seq: u8,
    body: Vec<u8>,
    /// Full payload length (body may hold less).
    len: usize,
    first: SegTime,
    last: SegTime,
}

#[derive(Default)]
struct Framer {
    hdr: Vec<u8>,
    remaining: u64,
    cur: Option<Packet>,
    lost: bool,
}

impl Framer {
    fn feed(&mut self, mut data: &[u8], t: SegTime, out: &mut Vec<Packet>) {
        while !data.is_empty() {
            if let Some(p) = self.cur.as_mut() {
                let n = self.remaining.min(data.len() as u64) as usize;
                let room = KEEP.saturating_sub(p.body.len());
                p.body.extend_from_slice(&data[..n.min(room)]);
                p.last = t;
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    out.extend(self.cur.take());
                }
                continue;
            }
            let n = (4 - self.hdr.len()).min(data.len());
            self.hdr.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.hdr.len() < 4 {
                return;
            }
            let len = self.hdr[0] as usize | (self.hdr[1] as usize) << 8 | (self.hdr[2] as usize) << 16;
            let p = Packet { seq: self.hdr[3], body: vec![], len, first: t, last: t };
            self.hdr.clear();
            self.remaining = len as u64;
            if len == 0 {
                out.push(p);
            } else {
                self.cur = Some(p);
            }
        }
    }

    fn skip(&mut self, gap: u64, out: &mut Vec<Packet>) -> bool {
        if gap == 0 {
            return true;
        }
        if self.cur.is_some() && self.remaining >= gap {
            self.remaining -= gap;
            if self.remaining == 0 {
                out.extend(self.cur.take());
            }
            return true;
        }
        false
    }
}

/// A length-encoded integer at the start of `b`: (value, bytes used).
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let (&f, r) = b.split_first()?;
    let le = |n: usize| -> Option<u64> { Some(r.get(..n)?.iter().rev().fold(0u64, |a, &x| a << 8 | x as u64)) };
    match f {
        0..=0xfa => Some((f as u64, 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

#[derive(Debug, Clone)]
enum Cmd {
    Query(String),
    Prepare(String),
    Execute(String),
    InitDb(String),
    Ping,
    /// Answered but not a span (reset, change user, ...).
    Silent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Start,
    Columns(u64),
    /// The EOF after column definitions (without DEPRECATE_EOF).
    ColumnsEof,
    Rows,
    /// COM_STMT_PREPARE_OK is followed by parameter and column definitions.
    PrepareDefs { params: u64, columns: u64, eofs: u8 },
}

#[derive(PartialEq, Eq)]
enum Phase {
    Greeting,
    Auth,
    Command,
}

pub struct MysqlConnection {
    client: Framer,
    server: Framer,
    phase: Phase,
    system: DbSystem,
    server_caps: u32,
    deprecate_eof: bool,
    schema: Option<String>,
    statements: HashMap<u32, String>,
    pending: VecDeque<(Cmd, SegTime)>,
    resp: Resp,
    rows: u64,
    pub parse_errors: u64,
    pub unmatched: u64,
}

impl MysqlConnection {
    pub fn new() -> Self {
        MysqlConnection {
            client: Framer::default(),
            server: Framer::default(),
            phase: Phase::Greeting,
            system: DbSystem::Mysql,
            server_caps: 0,
            deprecate_eof: false,
            schema: None,
            statements: HashMap::new(),
            pending: VecDeque::new(),
            resp: Resp::Start,
            rows: 0,
            parse_errors: 0,
            unmatched: 0,
        }
    }

    pub fn push(&mut self, client: bool, seg: Segment<'_>, out: &mut Vec<DbCall>) -> Result<(), MysqlError> {
        let t = seg.time();
        let framer = if client { &mut self.client } else { &mut self.server };
        if framer.lost {
            // Resync on a segment that starts a sequence-0/1 packet.
            if seg.data.len() < 5 || seg.data[3] > 1 {
                return Ok(());
            }
            *framer = Framer::default();
        }
        let mut packets = vec![];
        framer.feed(seg.data, t, &mut packets);
        if !framer.skip(seg.gap(), &mut packets) {
            *framer = Framer { lost: true, ..Default::default() };
            self.parse_errors += 1;
            self.unmatched += self.pending.len() as u64;
            self.pending.clear();
            self.resp = Resp::Start;
        }
        for p in packets {
            if client {
                self.on_client(p)?;
            } else {
                self.on_server(p, out);
            }
        }
        Ok(())
    }

    fn on_client(&mut self, p: Packet) -> Result<(), MysqlError> {
        match self.phase {
            Phase::Greeting | Phase::Auth if p.seq == 1 && p.body.len() >= 32 => {
                let caps = u32::from_le_bytes(p.body[0..4].try_into().expect("4"));
                if caps & CLIENT_SSL != 0 && p.len == 32 {
                    return Err(MysqlError::Encrypted);
                }
                self.deprecate_eof = caps & self.server_caps & CLIENT_DEPRECATE_EOF != 0;
                let (_user, rest) = cstr(&p.body[32..]);
                let rest = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
                    // The length is the peer's word: checked, it may claim 2^64-1.
                    lenenc(rest).and_then(|(n, used)| rest.get(used.checked_add(usize::try_from(n).ok()?)?..)).unwrap_or(&[])
                } else if caps & CLIENT_SECURE_CONNECTION != 0 {
                    rest.split_first().and_then(|(&n, r)| r.get(n as usize..)).unwrap_or(&[])
                } else {
                    cstr(rest).1
                };
                if caps & CLIENT_CONNECT_WITH_DB != 0 {
                    let (db, _) = cstr(rest);
                    if !db.is_empty() {
                        self.schema = Some(String::from_utf8_lossy(db).into_owned());
                    }
                }
                self.phase = Phase::Auth;
            }
            Phase::Command if p.seq == 0 => {
                let Some((&cmd, arg)) = p.body.split_first() else { return Ok(()) };
                let text = || String::from_utf8_lossy(arg).into_owned();
                let c = match cmd {
                    0x03 => Cmd::Query(text()),
                    0x16 => Cmd::Prepare(text()),
                    0x17 => {
                        let id = arg.get(0..4).map(|b| u32::from_le_bytes(b.try_into().expect("4"))).unwrap_or(0);
                        Cmd::Execute(self.statements.get(&id).cloned().unwrap_or_default())
                    }
                    0x19 => {
                        if let Some(b) = arg.get(0..4) {
                            self.statements.remove(&u32::from_le_bytes(b.try_into().expect("4")));
                        }
                        return Ok(()); // COM_STMT_CLOSE has no response
                    }
                    0x01 | 0x18 => return Ok(()), // COM_QUIT, COM_STMT_SEND_LONG_DATA
                    0x02 => Cmd::InitDb(text()),
                    0x0e => Cmd::Ping,
                    _ => Cmd::Silent,
                };
                if self.pending.len() >= 1024 {
                    self.pending.pop_front();
                    self.unmatched += 1;
                }
                self.pending.push_back((c, p.first));
            }
            // Auth switch responses and continuation packets.
            _ => {}
        }
        Ok(())
    }

    fn on_server(&mut self, p: Packet, out: &mut Vec<DbCall>) {
        let b = &p.body;
        match self.phase {
            Phase::Greeting => {
                if b.first() == Some(&0x0a) {
                    let (version, rest) = cstr(&b[1..]);
                    if String::from_utf8_lossy(version).contains("MariaDB") {
                        self.system = DbSystem::Mariadb;
                    }
                    // conn id (4), auth data 1 (8), filler (1), caps low (2),
                    // charset (1), status (2), caps high (2).
                    let lo = rest.get(13..15).map(|x| u16::from_le_bytes(x.try_into().expect("2")) as u32).unwrap_or(0);
                    let hi = rest.get(18..20).map(|x| u16::from_le_bytes(x.try_into().expect("2")) as u32).unwrap_or(0);
                    self.server_caps = lo | hi << 16;
                }
                self.phase = Phase::Auth;
            }
            Phase::Auth => {
                // OK ends authentication (ERR too: the connection is over).
                if matches!(b.first(), Some(0x00) | Some(0xff)) {
                    self.phase = Phase::Command;
                }
            }
            Phase::Command => self.on_response(p, out),
        }
    }

    fn finish(&mut self, rows: Option<u64>, error: Option<DbError>, last: SegTime, out: &mut Vec<DbCall>) {
        self.resp = Resp::Start;
        self.rows = 0;
        let Some((cmd, first)) = self.pending.pop_front() else {
            self.unmatched += 1;
            return;
        };
        let (operation, collection, text) = match &cmd {
            Cmd::Query(q) | Cmd::Execute(q) => {
                let st = sql::statement(q);
                (st.operation, st.collection, st.sanitized)
            }
            Cmd::InitDb(db) => {
                if error.is_none() {
                    self.schema = Some(db.clone());
                }
                ("USE".to_string(), None, format!("USE {db}"))
            }
            Cmd::Ping => ("PING".to_string(), None, "PING".to_string()),
            Cmd::Prepare(_) | Cmd::Silent => return,
        };
        out.push(DbCall {
            system: self.system,
            namespace: self.schema.clone(),
            operation,
            collection,
            query_text: text,
            rows,
            error,
            first,
            last,
        });
    }

    fn on_response(&mut self, p: Packet, out: &mut Vec<DbCall>) {
        let b = &p.body;
        let first = b.first().copied();
        // A short 0xfe packet is an EOF; a 0xfe OK terminator (DEPRECATE_EOF) is longer.
        let eof = first == Some(0xfe) && p.len < 0xff_ffff && (p.len < 9 || self.deprecate_eof);
        match self.resp.clone() {
            Resp::Start => match first {
                Some(0x00) if matches!(self.pending.front(), Some((Cmd::Prepare(_), _))) => {
                    let id = b.get(1..5).map(|x| u32::from_le_bytes(x.try_into().expect("4"))).unwrap_or(0);
                    let columns = b.get(5..7).map(|x| u16::from_le_bytes(x.try_into().expect("2")) as u64).unwrap_or(0);
                    let params = b.get(7..9).map(|x| u16::from_le_bytes(x.try_into().expect("2")) as u64).unwrap_or(0);
                    if let Some((Cmd::Prepare(q), _)) = self.pending.front() {
                        if self.statements.len() < 4096 {
                            self.statements.insert(id, q.clone());
                        }
                    }
                    let eofs = if self.deprecate_eof { 0 } else { u8::from(params > 0) + u8::from(columns > 0) };
                    if params + columns == 0 {
                        self.finish(None, None, p.last, out);
                    } else {
                        self.resp = Resp::PrepareDefs { params, columns, eofs };
                    }
                }
                Some(0x00) => {
                    let affected = lenenc(&b[1..]).map(|(n, _)| n);
                    self.finish(affected, None, p.last, out);
                }
                Some(0xff) => {
                    let code = b.get(1..3).map(|x| u16::from_le_bytes(x.try_into().expect("2"))).unwrap_or(0);
                    let (state, msg) = if b.get(3) == Some(&b'#') {
                        (b.get(4..9).map(|s| String::from_utf8_lossy(s).into_owned()), b.get(9..).unwrap_or(&[]))
                    } else {
                        (None, b.get(3..).unwrap_or(&[]))
                    };
                    let error = DbError {
                        code: state.clone().unwrap_or_else(|| code.to_string()),
                        message: format!("{code}: {}", String::from_utf8_lossy(msg)),
                    };
                    self.finish(None, Some(error), p.last, out);
                }
                Some(0xfb) => {} // LOCAL INFILE request: the final OK follows
                _ => match lenenc(b) {
                    Some((n, _)) if n > 0 => self.resp = Resp::Columns(n),
                    _ => {
                        self.parse_errors += 1;
                        self.finish(None, None, p.last, out);
                    }
                },
            },
            Resp::Columns(n) => {
                self.resp = if n > 1 {
                    Resp::Columns(n - 1)
                } else if self.deprecate_eof {
                    Resp::Rows
                } else {
                    Resp::ColumnsEof
                };
            }
            Resp::ColumnsEof => {
                self.resp = Resp::Rows;
                if !eof {
                    // No EOF after all: this is already a row.
                    self.rows += 1;
                }
            }
            Resp::Rows if first == Some(0xff) => {
                self.resp = Resp::Start;
                self.on_response(p, out);
            }
            Resp::Rows if eof => {
                // EOF: warnings (2), status (2); OK terminator: lenenc x2, status.
                let status = if p.len < 9 {
                    b.get(3..5).map(|x| u16::from_le_bytes(x.try_into().expect("2"))).unwrap_or(0)
                } else {
                    let (_, a) = lenenc(&b[1..]).unwrap_or((0, 1));
                    let (_, c) = lenenc(&b[1 + a..]).unwrap_or((0, 1));
                    b.get(1 + a + c..3 + a + c).map(|x| u16::from_le_bytes(x.try_into().expect("2"))).unwrap_or(0)
                };
                if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                    // Another result set of the same call follows.
                    self.resp = Resp::Start;
                    return;
                }
                let rows = self.rows;
                self.finish(Some(rows), None, p.last, out);
            }
            Resp::Rows => self.rows += 1,
            Resp::PrepareDefs { params, columns, eofs } => {
                let (params, columns, eofs) = if eof && eofs > 0 && params == 0 {
                    (0, columns, eofs - 1)
                } else if params > 0 {
                    (params - 1, columns, eofs)
                } else {
                    (0, columns.saturating_sub(1), eofs)
                };
                if params + columns + eofs as u64 == 0 {
                    self.finish(None, None, p.last, out);
                } else {
                    self.resp = Resp::PrepareDefs { params, columns, eofs };
                }
            }
        }
    }
}

impl Default for MysqlConnection {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
