//! Writes the seed corpora, `<dir>/<target>/<name>`, from the protocols'
//! recorded captures, and replays every seed through its target's checks
//! so a seed that already fails is caught here, not by the fuzzer.
//!
//! Usage: seeds <corpus dir>   (`cargo xtask fuzz` runs it)
use std::{collections::BTreeMap, path::Path};

use sonde::protocols::{registry::REGISTRY, Record, Side};
use sonde_common as common;
use sonde_fuzz::{
    amqp,
    conversation::{self, Input},
    ring, sql,
};

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let mut corpora: BTreeMap<&str, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut statements: Vec<String> = sql::STATEMENTS.iter().map(|s| s.to_string()).collect();
    let mut first_turns = vec![];
    for (i, spec) in REGISTRY.iter().enumerate() {
        for cap in (spec.captures)() {
            let whole = Input::from_capture(i, &cap);
            let outcome = conversation::replay(&whole);
            assert!(outcome.records > 0 && outcome.gave_up.is_none(), "{}/{}: {outcome:?}", spec.name, cap.name);
            // The same conversation with every syscall split in two, so
            // the fuzzer starts from reassembly, not only from whole turns.
            let mut cut = whole.clone();
            for s in &mut cut.steps {
                s.cut = Some((s.bytes.len() / 2) as u16);
            }
            conversation::replay(&cut);
            let seeds = corpora.entry("protocols").or_default();
            seeds.push((format!("{}-{}", spec.name, cap.name), whole.encode()));
            seeds.push((format!("{}-{}-cut", spec.name, cap.name), cut.encode()));
            statements.extend(db_statements(i, &cap));
            if let Some((side, bytes)) = cap.turns.first() {
                first_turns.push((format!("{}-{}", spec.name, cap.name), *side, *bytes));
            }
            if spec.name == "amqp" {
                for side in [Side::Request, Side::Response] {
                    let stream: Vec<u8> = cap.turns.iter().filter(|(s, _)| *s == side).flat_map(|(_, b)| b.iter().copied()).collect();
                    for t in amqp::tables_in(&stream) {
                        let n = corpora.entry("amqp_table").or_default().len();
                        corpora.entry("amqp_table").or_default().push((format!("{}-{n}", cap.name), t));
                    }
                }
            }
        }
    }
    statements.sort();
    statements.dedup();
    corpora.insert("sql", statements.iter().enumerate().map(|(i, s)| (format!("stmt-{i}"), s.as_bytes().to_vec())).collect());
    corpora.insert("ring_record", ring_records(&first_turns));

    for (target, seeds) in &corpora {
        assert!(!seeds.is_empty(), "no seeds for {target}");
        let d = Path::new(&dir).join(target);
        // Rewritten whole, so seeds of a removed capture do not linger.
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        for (name, bytes) in seeds {
            match *target {
                "sql" => sql::check(std::str::from_utf8(bytes).expect("statements are UTF-8")),
                "amqp_table" => amqp::check(bytes),
                "ring_record" => ring::check(bytes),
                _ => {}
            }
            std::fs::write(d.join(name), bytes).unwrap_or_else(|e| panic!("writing {}/{name}: {e}", d.display()));
        }
        println!("seeds: {target}: {} files, {} bytes", seeds.len(), seeds.iter().map(|(_, b)| b.len()).sum::<usize>());
    }
}

/// The query texts a capture's database calls carried (already sanitized,
/// so realistic statement shapes with `?` where literals were).
fn db_statements(protocol: usize, cap: &sonde::protocols::Capture) -> Vec<String> {
    let mut p = (REGISTRY[protocol].new)();
    let mut out = vec![];
    for (i, (side, bytes)) in cap.turns.iter().enumerate() {
        let t = i as u64 * 10;
        let _ = p.feed(*side, sonde::protocols::Segment::whole(bytes, t, t + 1), &mut out);
    }
    out.into_iter()
        .filter_map(|r| match r {
            Record::Db(call) if !call.query_text.is_empty() => Some(call.query_text),
            _ => None,
        })
        .collect()
}

/// Records of every kind: each capture's first payload as a data record
/// (whole and cut short), and connection records with v4 and v6 tuples.
fn ring_records(first_turns: &[(String, Side, &[u8])]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    for (name, side, bytes) in first_turns {
        let (sc, dir) = if *side == Side::Request {
            (common::syscall::WRITE, common::direction::EGRESS)
        } else {
            (common::syscall::READ, common::direction::INGRESS)
        };
        let head = &bytes[..bytes.len().min(256)];
        out.push((format!("data-{name}"), ring::data_record(sc, dir, common::role::CLIENT, head, head.len() as i64)));
        let cut = &head[..head.len().min(16)];
        out.push((format!("data-{name}-cut"), ring::data_record(common::syscall::RECVMSG, dir, common::role::SERVER, cut, 1 << 20)));
    }
    for kind in common::kind::CONNECT..=common::kind::SERVER_ESTAB {
        let flags = common::conn_flags::HAS_TUPLE | common::conn_flags::TCP_CONFIRMED;
        out.push((format!("conn-{kind}-v4"), ring::conn_record(kind, false, flags)));
        out.push((format!("conn-{kind}-v6"), ring::conn_record(kind, true, common::conn_flags::HAS_REMOTE)));
    }
    out
}
