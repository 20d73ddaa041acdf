//! MySQL / MariaDB client/server protocol, client connections.
//!
//! The server speaks first (handshake v10: version, capabilities); the
//! client's handshake response names the schema. Then each command packet
//! (sequence 0) is answered by OK, ERR, or a result set (column count,
//! column definitions, [EOF], rows, EOF or OK with CLIENT_DEPRECATE_EOF).
//! Prepared statements map their id (from COM_STMT_PREPARE_OK) to the SQL,
//! sanitized once, at COM_STMT_PREPARE.
//!
//! SQL is sanitized when the client sends it, under the connection's modes
//! as known then. NO_BACKSLASH_ESCAPES is on the wire: the server's status
//! flags in every OK and EOF. ANSI_QUOTES is not: it is taken from a
//! successful SET of the session sql_mode the connection itself sent, and
//! otherwise assumed off (the default), so a server configured with it
//! globally gets its "identifiers" hidden as ? - never the reverse, a
//! string let through.
pub mod protocol;
pub use protocol::SPEC;

use foldhash::{HashMap, HashMapExt};
use smallvec::SmallVec;
use std::{borrow::Cow, collections::VecDeque, sync::Arc};

use super::{
    db::{DbCall, DbError, DbSystem},
    sql::{self, Dialect, Statement},
    Detect, SegTime, Segment,
};

const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;
const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x200;
const KEEP: usize = 16 * 1024;

/// Whether a client connection's first inbound bytes are a server greeting.
pub fn detect_greeting(data: &[u8]) -> Detect {
    if data.len() < 6 {
        return if data.len() > 3 && data[3] != 0 {
            Detect::No
        } else {
            Detect::NeedMore
        };
    }
    let len = data[0] as usize | (data[1] as usize) << 8 | (data[2] as usize) << 16;
    let ok =
        data[3] == 0 && data[4] == 0x0a && (20..1024).contains(&len) && data[5].is_ascii_digit();
    if ok {
        Detect::Yes
    } else {
        Detect::No
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MysqlError {
    #[error("the connection switched to TLS")]
    Encrypted,
}

/// One packet. Its body is borrowed from the segment when the whole packet
/// arrived in it (most do: rows, column definitions, OKs), and copied only
/// when it spans segments.
struct Packet<'a> {
    seq: u8,
    body: Cow<'a, [u8]>,
    /// Full payload length (body may hold less).
    len: usize,
    first: SegTime,
    last: SegTime,
}

/// The packets one segment completes, on the stack when they are few (see
/// `Msgs` in the PostgreSQL parser).
type Packets<'a> = SmallVec<[Packet<'a>; 8]>;

#[derive(Default)]
struct Framer {
    hdr: Vec<u8>,
    remaining: u64,
    /// A packet that continues in the next segment.
    cur: Option<Packet<'static>>,
    lost: bool,
}

impl Framer {
    fn feed<'a>(&mut self, mut data: &'a [u8], t: SegTime, out: &mut Packets<'a>) {
        while !data.is_empty() {
            if let Some(p) = self.cur.as_mut() {
                let n = self.remaining.min(data.len() as u64) as usize;
                let room = KEEP.saturating_sub(p.body.len());
                p.body.to_mut().extend_from_slice(&data[..n.min(room)]);
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
            let len =
                self.hdr[0] as usize | (self.hdr[1] as usize) << 8 | (self.hdr[2] as usize) << 16;
            let seq = self.hdr[3];
            self.hdr.clear();
            if len <= data.len() {
                // Whole in this segment: borrowed, no copy.
                out.push(Packet {
                    seq,
                    body: Cow::Borrowed(&data[..len.min(KEEP)]),
                    len,
                    first: t,
                    last: t,
                });
                data = &data[len..];
                continue;
            }
            self.remaining = len as u64;
            self.cur = Some(Packet {
                seq,
                body: Cow::Owned(vec![]),
                len,
                first: t,
                last: t,
            });
        }
    }

    fn skip(&mut self, gap: u64, out: &mut Packets<'_>) -> bool {
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
    let le = |n: usize| -> Option<u64> {
        Some(
            r.get(..n)?
                .iter()
                .rev()
                .fold(0u64, |a, &x| a << 8 | x as u64),
        )
    };
    match f {
        0..=0xfa => Some((f as u64, 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

/// Little-endian integers at `at`; None when the body was cut short.
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(*b.get(at..)?.first_chunk()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(at..)?.first_chunk()?))
}

fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// The status flags of an OK packet (header, affected rows, last insert
/// id, status); None when the capture ends before them.
fn ok_status(b: &[u8]) -> Option<u16> {
    let (_, a) = lenenc(b.get(1..)?)?;
    let (_, c) = lenenc(b.get(1 + a..)?)?;
    le16(b, 1 + a + c)
}

#[derive(Debug, Clone)]
enum Cmd {
    /// With what a successful run does to ANSI_QUOTES, if it sets sql_mode.
    Query(Statement, Option<bool>),
    Prepare(Arc<Statement>),
    /// None when the statement's prepare was not seen.
    Execute(Option<Arc<Statement>>),
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
    PrepareDefs {
        params: u64,
        columns: u64,
        eofs: u8,
    },
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
    ansi_quotes: bool,
    no_backslash_escapes: bool,
    statements: HashMap<u32, Arc<Statement>>,
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
            ansi_quotes: false,
            no_backslash_escapes: false,
            statements: HashMap::new(),
            pending: VecDeque::new(),
            resp: Resp::Start,
            rows: 0,
            parse_errors: 0,
            unmatched: 0,
        }
    }

    pub fn push(
        &mut self,
        client: bool,
        seg: Segment<'_>,
        out: &mut Vec<DbCall>,
    ) -> Result<(), MysqlError> {
        let t = seg.time();
        let framer = if client {
            &mut self.client
        } else {
            &mut self.server
        };
        if framer.lost {
            // Resync on a segment that starts a sequence-0/1 packet.
            if seg.data.len() < 5 || seg.data[3] > 1 {
                return Ok(());
            }
            *framer = Framer::default();
        }
        let mut packets = Packets::new();
        framer.feed(seg.data, t, &mut packets);
        if !framer.skip(seg.gap(), &mut packets) {
            *framer = Framer {
                lost: true,
                ..Default::default()
            };
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

    fn on_client(&mut self, p: Packet<'_>) -> Result<(), MysqlError> {
        match self.phase {
            Phase::Greeting | Phase::Auth if p.seq == 1 && p.body.len() >= 32 => {
                let caps = le32(&p.body, 0).unwrap_or(0);
                if caps & CLIENT_SSL != 0 && p.len == 32 {
                    return Err(MysqlError::Encrypted);
                }
                self.deprecate_eof = caps & self.server_caps & CLIENT_DEPRECATE_EOF != 0;
                let (_user, rest) = cstr(p.body.get(32..).unwrap_or(&[]));
                let rest = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
                    // A hostile length must not overflow the offset.
                    let skip = |(n, used): (u64, usize)| usize::try_from(n).ok()?.checked_add(used);
                    lenenc(rest)
                        .and_then(skip)
                        .and_then(|at| rest.get(at..))
                        .unwrap_or(&[])
                } else if caps & CLIENT_SECURE_CONNECTION != 0 {
                    rest.split_first()
                        .and_then(|(&n, r)| r.get(n as usize..))
                        .unwrap_or(&[])
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
                let Some((&cmd, arg)) = p.body.split_first() else {
                    return Ok(());
                };
                let text = || String::from_utf8_lossy(arg);
                let c = match cmd {
                    0x03 => {
                        let q = text();
                        let sets_ansi = sql::mysql_sets_ansi_quotes(&q, self.dialect());
                        // A multi-statement text may change ANSI_QUOTES part
                        // way: "..." read as strings is the safe reading.
                        let dialect = if sets_ansi.is_some() {
                            self.dialect_with(false)
                        } else {
                            self.dialect()
                        };
                        Cmd::Query(sql::statement(&q, dialect), sets_ansi)
                    }
                    0x16 => Cmd::Prepare(Arc::new(sql::statement(&text(), self.dialect()))),
                    0x17 => Cmd::Execute(
                        le32(arg, 0)
                            .and_then(|id| self.statements.get(&id))
                            .cloned(),
                    ),
                    0x19 => {
                        if let Some(id) = le32(arg, 0) {
                            self.statements.remove(&id);
                        }
                        return Ok(()); // COM_STMT_CLOSE has no response
                    }
                    0x01 | 0x18 => return Ok(()), // COM_QUIT, COM_STMT_SEND_LONG_DATA
                    0x02 => Cmd::InitDb(text().into_owned()),
                    // COM_CHANGE_USER, COM_RESET_CONNECTION: the session's
                    // sql_mode is the global one again.
                    0x11 | 0x1f => {
                        self.ansi_quotes = false;
                        Cmd::Silent
                    }
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

    fn on_server(&mut self, p: Packet<'_>, out: &mut Vec<DbCall>) {
        let b = &p.body;
        match self.phase {
            Phase::Greeting => {
                if b.first() == Some(&0x0a) {
                    let (version, rest) = cstr(b.get(1..).unwrap_or(&[]));
                    if String::from_utf8_lossy(version).contains("MariaDB") {
                        self.system = DbSystem::Mariadb;
                    }
                    // conn id (4), auth data 1 (8), filler (1), caps low (2),
                    // charset (1), status (2), caps high (2).
                    let lo = le16(rest, 13).map_or(0, u32::from);
                    let hi = le16(rest, 18).map_or(0, u32::from);
                    self.server_caps = lo | hi << 16;
                    self.server_status(le16(rest, 16));
                }
                self.phase = Phase::Auth;
            }
            Phase::Auth => {
                // OK ends authentication (ERR too: the connection is over).
                if matches!(b.first(), Some(0x00) | Some(0xff)) {
                    if b.first() == Some(&0x00) {
                        self.server_status(ok_status(b));
                    }
                    self.phase = Phase::Command;
                }
            }
            Phase::Command => self.on_response(p, out),
        }
    }

    fn dialect(&self) -> Dialect {
        self.dialect_with(self.ansi_quotes)
    }

    fn dialect_with(&self, ansi_quotes: bool) -> Dialect {
        Dialect::MySql {
            ansi_quotes,
            no_backslash_escapes: self.no_backslash_escapes,
        }
    }

    /// Status flags from an OK, EOF or the greeting, when captured.
    fn server_status(&mut self, status: Option<u16>) {
        if let Some(s) = status {
            self.no_backslash_escapes = s & SERVER_STATUS_NO_BACKSLASH_ESCAPES != 0;
        }
    }

    fn finish(
        &mut self,
        rows: Option<u64>,
        error: Option<DbError>,
        last: SegTime,
        out: &mut Vec<DbCall>,
    ) {
        self.resp = Resp::Start;
        self.rows = 0;
        let Some((cmd, first)) = self.pending.pop_front() else {
            self.unmatched += 1;
            return;
        };
        let (operation, collection, text) = match cmd {
            Cmd::Query(st, sets_ansi) => {
                if let Some(ansi) = sets_ansi.filter(|_| error.is_none()) {
                    self.ansi_quotes = ansi;
                }
                (st.operation, st.collection, st.sanitized)
            }
            Cmd::Execute(st) => {
                let st = st.unwrap_or_default();
                (
                    st.operation.clone(),
                    st.collection.clone(),
                    st.sanitized.clone(),
                )
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

    fn on_response(&mut self, p: Packet<'_>, out: &mut Vec<DbCall>) {
        let b = &p.body;
        let first = b.first().copied();
        // A short 0xfe packet is an EOF; a 0xfe OK terminator (DEPRECATE_EOF) is longer.
        let eof = first == Some(0xfe) && p.len < 0xff_ffff && (p.len < 9 || self.deprecate_eof);
        match self.resp.clone() {
            Resp::Start => match first {
                Some(0x00) if matches!(self.pending.front(), Some((Cmd::Prepare(_), _))) => {
                    let id = le32(b, 1).unwrap_or(0);
                    let columns = le16(b, 5).map_or(0, u64::from);
                    let params = le16(b, 7).map_or(0, u64::from);
                    if let Some((Cmd::Prepare(st), _)) = self.pending.front() {
                        if self.statements.len() < 4096 {
                            self.statements.insert(id, st.clone());
                        }
                    }
                    let eofs = if self.deprecate_eof {
                        0
                    } else {
                        u8::from(params > 0) + u8::from(columns > 0)
                    };
                    if params + columns == 0 {
                        self.finish(None, None, p.last, out);
                    } else {
                        self.resp = Resp::PrepareDefs {
                            params,
                            columns,
                            eofs,
                        };
                    }
                }
                Some(0x00) => {
                    self.server_status(ok_status(b));
                    let affected = b.get(1..).and_then(lenenc).map(|(n, _)| n);
                    self.finish(affected, None, p.last, out);
                }
                Some(0xff) => {
                    let code = le16(b, 1).unwrap_or(0);
                    let (state, msg) = if b.get(3) == Some(&b'#') {
                        (
                            b.get(4..9).map(|s| String::from_utf8_lossy(s).into_owned()),
                            b.get(9..).unwrap_or(&[]),
                        )
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
                let status = if p.len < 9 { le16(b, 3) } else { ok_status(b) };
                self.server_status(status);
                let status = status.unwrap_or(0);
                if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                    // Another result set of the same call follows.
                    self.resp = Resp::Start;
                    return;
                }
                let rows = self.rows;
                self.finish(Some(rows), None, p.last, out);
            }
            Resp::Rows => self.rows += 1,
            Resp::PrepareDefs {
                params,
                columns,
                eofs,
            } => {
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
                    self.resp = Resp::PrepareDefs {
                        params,
                        columns,
                        eofs,
                    };
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
