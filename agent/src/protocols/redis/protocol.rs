//! Redis (RESP2/3) behind the [`Protocol`] interface.
use super::{detect_request, RedisConnection};
use crate::{
    event::{Direction, Role},
    protocols::{
        client_first_write,
        db::{DbCall, DbParser, DbProtocol},
        Capture, Detect, GiveUp, Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec {
    name: "redis",
    detect,
    new: || DbProtocol::boxed(RedisConnection::default()),
    captures,
    whole_frames: false,
    answered: true,
};

/// A client's first write: a RESP command array.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    if !client_first_write(role, dir) {
        return Detect::No;
    }
    detect_request(data)
}

impl DbParser for RedisConnection {
    fn push(
        &mut self,
        requests: bool,
        seg: Segment<'_>,
        out: &mut Vec<DbCall>,
    ) -> Result<(), GiveUp> {
        RedisConnection::push(self, requests, seg, out);
        Ok(())
    }

    fn counters(&self) -> (u64, u64) {
        (self.parse_errors, self.unmatched)
    }

    fn heap_bytes(&self) -> usize {
        let reader = |r: &super::Reader| r.line.capacity() + r.stack.capacity() * 8;
        reader(&self.requests)
            + reader(&self.replies)
            + self.pending.len() * std::mem::size_of::<super::Pending>()
    }
}

/// redis-py against Redis: HELLO, strings, hashes, lists, a pipeline, errors.
fn captures() -> Vec<Capture> {
    let turns = vec![
        (Side::Request, crate::capture!("redis", "session.c2s")),
        (Side::Response, crate::capture!("redis", "session.s2c")),
    ];
    vec![Capture {
        name: "session",
        role: Role::Client,
        turns,
    }]
}
