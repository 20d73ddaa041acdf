//! PostgreSQL behind the [`Protocol`] interface.
use super::{detect_client, PgConnection};
use crate::{
    event::{Direction, Role},
    protocols::{
        client_first_write,
        db::{DbCall, DbParser, DbProtocol},
        Capture, Detect, GiveUp, Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec {
    name: "postgresql",
    detect,
    new: || DbProtocol::boxed(PgConnection::new()),
    captures,
    whole_frames: false,
    answered: true,
};

/// A client's first write: a startup, SSL or GSS request.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    if !client_first_write(role, dir) {
        return Detect::No;
    }
    detect_client(data)
}

impl DbParser for PgConnection {
    fn push(
        &mut self,
        requests: bool,
        seg: Segment<'_>,
        out: &mut Vec<DbCall>,
    ) -> Result<(), GiveUp> {
        PgConnection::push(self, requests, seg, out).map_err(|_| GiveUp("encrypted (SSL/GSS)"))
    }

    fn counters(&self) -> (u64, u64) {
        (self.parse_errors, self.unmatched)
    }

    fn heap_bytes(&self) -> usize {
        let named =
            |m: &foldhash::HashMap<String, std::sync::Arc<crate::protocols::sql::Statement>>| {
                m.iter()
                    .map(|(k, v)| k.len() + v.sanitized.len() + 48)
                    .sum::<usize>()
            };
        let framer = |f: &super::Framer| {
            f.hdr.capacity()
                + f.cur
                    .as_ref()
                    .map_or(0, |m| crate::protocols::held_bytes(&m.body))
        };
        named(&self.statements)
            + named(&self.portals)
            + self.pending.len() * std::mem::size_of::<super::Pending>()
            + framer(&self.client)
            + framer(&self.server)
    }
}

/// psycopg against PostgreSQL: startup, simple and extended queries, an
/// error, DML.
fn captures() -> Vec<Capture> {
    let turns = vec![
        (Side::Request, crate::capture!("postgres", "session.c2s")),
        (Side::Response, crate::capture!("postgres", "session.s2c")),
    ];
    vec![Capture {
        name: "session",
        role: Role::Client,
        turns,
    }]
}
