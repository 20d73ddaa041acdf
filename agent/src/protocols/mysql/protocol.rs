//! MySQL and MariaDB behind the [`Protocol`] interface.
use super::{detect_greeting, MysqlConnection};
use crate::{
    event::{Direction, Role},
    protocols::{
        db::{DbCall, DbParser, DbProtocol},
        Capture, Detect, GiveUp, Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec {
    name: "mysql",
    detect,
    new: || DbProtocol::boxed(MysqlConnection::new()),
    captures,
    whole_frames: false,
    answered: true,
};

/// The server speaks first: a client's first read is the greeting.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    if role == Role::Server || dir == Direction::Egress {
        return Detect::No;
    }
    detect_greeting(data)
}

impl DbParser for MysqlConnection {
    fn push(
        &mut self,
        requests: bool,
        seg: Segment<'_>,
        out: &mut Vec<DbCall>,
    ) -> Result<(), GiveUp> {
        MysqlConnection::push(self, requests, seg, out).map_err(|_| GiveUp("encrypted (TLS)"))
    }

    fn counters(&self) -> (u64, u64) {
        (self.parse_errors, self.unmatched)
    }

    fn heap_bytes(&self) -> usize {
        let framer = |f: &super::Framer| {
            f.hdr.capacity()
                + f.cur
                    .as_ref()
                    .map_or(0, |p| crate::protocols::held_bytes(&p.body))
        };
        self.statements
            .values()
            .map(|s| s.sanitized.len() + 40)
            .sum::<usize>()
            + self.pending.len() * std::mem::size_of::<(super::Cmd, crate::protocols::SegTime)>()
            + framer(&self.client)
            + framer(&self.server)
    }
}

/// One packet's length (3-byte little-endian header) plus its header.
fn packet_len(b: &[u8]) -> usize {
    match b {
        [a, c, d, ..] => 4 + (*a as usize | (*c as usize) << 8 | (*d as usize) << 16),
        _ => b.len(),
    }
}

/// The handshake in its real order (greeting, response, auth OK), then all
/// commands, then all answers: they pair in order.
fn session(name: &'static str, c2s: &'static [u8], s2c: &'static [u8]) -> Capture {
    let hello = packet_len(c2s).min(c2s.len());
    let greet = packet_len(s2c).min(s2c.len());
    let auth_ok = (greet + packet_len(&s2c[greet..])).min(s2c.len());
    let turns = vec![
        (Side::Response, &s2c[..greet]),
        (Side::Request, &c2s[..hello]),
        (Side::Response, &s2c[greet..auth_ok]),
        (Side::Request, &c2s[hello..]),
        (Side::Response, &s2c[auth_ok..]),
    ];
    Capture {
        name,
        role: Role::Client,
        turns,
    }
}

/// PyMySQL and mysql-connector against MariaDB: text queries, an error,
/// server-side prepared statements.
fn captures() -> Vec<Capture> {
    vec![
        session(
            "session",
            crate::capture!("mysql", "session.c2s"),
            crate::capture!("mysql", "session.s2c"),
        ),
        session(
            "prepared",
            crate::capture!("mysql", "prepared.c2s"),
            crate::capture!("mysql", "prepared.s2c"),
        ),
    ]
}
