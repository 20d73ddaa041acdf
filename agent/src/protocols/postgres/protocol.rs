//! PostgreSQL behind the [`Protocol`] interface.
use super::{detect_client, PgConnection};
use crate::{
    event::{Direction, Role},
    protocols::{
        db::{DbCall, DbParser, DbProtocol},
        Capture, Detect, GiveUp, Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec { name: "postgresql", detect, new: || DbProtocol::boxed(PgConnection::new()), captures };

/// A client's first write: a startup, SSL or GSS request.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    if role == Role::Server || dir == Direction::Ingress {
        return Detect::No;
    }
    detect_client(data)
}

impl DbParser for PgConnection {
    fn push(&mut self, requests: bool, seg: Segment<'_>, out: &mut Vec<DbCall>) -> Result<(), GiveUp> {
        PgConnection::push(self, requests, seg, out).map_err(|_| GiveUp("encrypted (SSL/GSS)"))
    }

    fn counters(&self) -> (u64, u64) {
        (self.parse_errors, self.unmatched)
    }

    fn heap_bytes(&self) -> usize {
        let named = |m: &std::collections::HashMap<String, std::sync::Arc<crate::protocols::sql::Statement>>| {
            m.iter().map(|(k, v)| k.len() + v.sanitized.len() + 48).sum::<usize>()
        };
        let framer = |f: &super::Framer| f.hdr.capacity() + f.cur.as_ref().map_or(0, |m| m.body.capacity());
        named(&self.statements)
            + named(&self.portals)
            + self.pending.len() * std::mem::size_of::<super::Pending>()
            + framer(&self.client)
            + framer(&self.server)
    }
}

macro_rules! capture {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/protocols/postgres/captures/", $name)).as_slice()
    };
}

/// psycopg against PostgreSQL: startup, simple and extended queries, an
/// error, DML.
fn captures() -> Vec<Capture> {
    let turns = vec![(Side::Request, capture!("session.c2s")), (Side::Response, capture!("session.s2c"))];
    vec![Capture { name: "session", role: Role::Client, turns }]
}
