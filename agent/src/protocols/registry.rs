//! The one list of protocols. Adding a protocol is a folder under
//! `protocols/` plus one line here; dispatch, the fuzz targets and the
//! parser bench all iterate this list.
use super::{amqp, http, http2, mysql, postgres, redis, Detect, Spec};
use crate::event::{Direction, Role};

/// In detection order: the first whose `detect` does not say `No` wins.
pub static REGISTRY: &[Spec] = &[
    http::SPEC,
    http2::SPEC,
    redis::SPEC,
    postgres::SPEC,
    amqp::SPEC,
    mysql::SPEC,
];

/// The protocol a connection's first payload speaks, if any: its index.
pub fn detect(role: Role, dir: Direction, data: &[u8]) -> Option<usize> {
    REGISTRY
        .iter()
        .position(|s| (s.detect)(role, dir, data) != Detect::No)
}

/// A protocol by its name.
pub fn by_name(name: &str) -> Option<&'static Spec> {
    REGISTRY.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::{ParserStats, Record, Segment};

    /// Every capture is detected as its own protocol from its first turn,
    /// and replays whole, in order, into records with no parse errors.
    #[test]
    fn every_capture_detects_and_replays_cleanly() {
        for spec in REGISTRY {
            let caps = (spec.captures)();
            assert!(!caps.is_empty(), "{} has recorded captures", spec.name);
            for cap in caps {
                let (side, first) = cap.turns[0];
                let dir = match (cap.role, side) {
                    (Role::Server, crate::protocols::Side::Request)
                    | (Role::Client, crate::protocols::Side::Response) => Direction::Ingress,
                    _ => Direction::Egress,
                };
                let found = detect(cap.role, dir, first).map(|i| REGISTRY[i].name);
                assert_eq!(
                    found,
                    Some(spec.name),
                    "{}/{} detected",
                    spec.name,
                    cap.name
                );
                let mut p = (spec.new)();
                let mut out: Vec<Record> = vec![];
                for (i, (side, bytes)) in cap.turns.iter().enumerate() {
                    let t = i as u64 * 10;
                    p.feed(*side, Segment::whole(bytes, t, t + 1), &mut out)
                        .unwrap_or_else(|e| panic!("{}/{}: {e}", spec.name, cap.name));
                }
                p.close(Default::default(), &mut out);
                assert!(!out.is_empty(), "{}/{} made records", spec.name, cap.name);
                let stats = p.take_stats();
                assert_eq!(stats.parse_errors, 0, "{}/{}", spec.name, cap.name);
                assert_eq!(
                    p.take_stats(),
                    ParserStats::default(),
                    "stats are handed out once"
                );
                assert!(
                    p.heap_bytes() < 1 << 20,
                    "{}/{} holds {} bytes",
                    spec.name,
                    cap.name,
                    p.heap_bytes()
                );
            }
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, s) in REGISTRY.iter().enumerate() {
            assert!(
                REGISTRY[i + 1..].iter().all(|o| o.name != s.name),
                "{}",
                s.name
            );
            assert!(by_name(s.name).is_some());
        }
    }
}
