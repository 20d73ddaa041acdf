use super::*;

const C2S: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/postgres/captures/session.c2s"
));
const S2C: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/postgres/captures/session.s2c"
));

/// Replays a recording in conversation order: the client's bytes up to each
/// Sync/Query boundary, then the server's up to the matching ReadyForQuery.
fn replay(client_parts: &[&[u8]], server_parts: &[&[u8]]) -> (PgConnection, Vec<DbCall>) {
    let mut c = PgConnection::new();
    let mut out = vec![];
    for p in client_parts {
        c.push(true, Segment::whole(p, 0, 1), &mut out).unwrap();
    }
    for p in server_parts {
        c.push(false, Segment::whole(p, 2, 3), &mut out).unwrap();
    }
    (c, out)
}

type Summary = Vec<(String, Option<String>, String, Option<u64>, Option<String>)>;

fn summary(calls: &[DbCall]) -> Summary {
    calls
        .iter()
        .map(|c| {
            (
                c.operation.clone(),
                c.collection.clone(),
                c.query_text.clone(),
                c.rows,
                c.error.as_ref().map(|e| e.code.clone()),
            )
        })
        .collect()
}

#[test]
fn recorded_psycopg_session() {
    let (c, calls) = replay(&[C2S], &[S2C]);
    let got = summary(&calls);
    let ops: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        ops,
        vec![
            "CREATE", "INSERT", "SELECT", "INSERT", "SELECT", "SELECT", "SELECT", "SELECT",
            "UPDATE", "DELETE", "SELECT", "COPY"
        ],
        "{got:#?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.namespace.as_deref() == Some("sonde")),
        "db.namespace from the startup message"
    );
    // Simple protocol: literals sanitized.
    assert_eq!(got[1].2, "INSERT INTO items VALUES (?, ?)");
    assert_eq!(got[2].2, "SELECT * FROM items WHERE name = ?");
    assert_eq!(got[2].3, Some(1));
    // Extended: SQL comes from Parse, via Bind, to Execute.
    assert_eq!(got[3].2, "INSERT INTO items VALUES ($1, $2)");
    assert_eq!(got[3].3, Some(1));
    // A named prepared statement, parsed once, executed three times.
    for g in &got[4..7] {
        assert_eq!(
            (g.1.as_deref(), g.2.as_str()),
            (Some("items"), "SELECT name FROM items WHERE id = $1")
        );
    }
    // The failing statement: SQLSTATE 42P01 undefined_table.
    assert_eq!(got[7].4.as_deref(), Some("42P01"));
    assert!(calls[7]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("missing_table"));
    // Pipelined extended queries answered in order.
    assert_eq!((got[8].1.as_deref(), got[8].3), (Some("items"), Some(1)));
    assert_eq!(got[9].3, Some(0));
    // COPY FROM STDIN: the CopyData is not mistaken for calls.
    assert_eq!((got[11].1.as_deref(), got[11].3), (Some("items"), Some(2)));
    assert_eq!((c.parse_errors, c.unmatched), (0, 0));
}

#[test]
fn every_split_point_gives_the_same_calls() {
    let want = summary(&replay(&[C2S], &[S2C]).1);
    for i in 0..=C2S.len() {
        assert_eq!(
            summary(&replay(&[&C2S[..i], &C2S[i..]], &[S2C]).1),
            want,
            "client split at {i}"
        );
    }
    for i in 0..=S2C.len() {
        assert_eq!(
            summary(&replay(&[C2S], &[&S2C[..i], &S2C[i..]]).1),
            want,
            "server split at {i}"
        );
    }
}

#[test]
fn byte_by_byte() {
    let want = summary(&replay(&[C2S], &[S2C]).1);
    let c: Vec<&[u8]> = C2S.chunks(1).collect();
    let s: Vec<&[u8]> = S2C.chunks(1).collect();
    assert_eq!(summary(&replay(&c, &s).1), want);
}

#[test]
fn large_rows_beyond_the_capture_are_skipped_by_count() {
    // A DataRow of 100 kB captured to 64 bytes, then CommandComplete, Z.
    let mut c = PgConnection::mid_stream();
    let mut out = vec![];
    let q = b"Q\0\0\0\x15SELECT big FROM t\0";
    c.push(true, Segment::whole(q, 0, 1), &mut out).unwrap();
    let mut row = vec![b'D'];
    row.extend_from_slice(&(100_004u32).to_be_bytes());
    row.resize(100_005, b'x');
    c.push(
        false,
        Segment {
            data: &row[..64],
            total: row.len() as u64,
            enter_ns: 2,
            exit_ns: 3,
            tid: 0,
            tick: 0,
            lineage: Default::default(),
            py_task: 0,
        },
        &mut out,
    )
    .unwrap();
    c.push(
        false,
        Segment::whole(b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I", 4, 5),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].operation.as_str(), out[0].rows, out[0].last.exit_ns),
        ("SELECT", Some(1), 5)
    );
}

/// A connection whose client sent an SSLRequest.
fn ssl_requested(out: &mut Vec<DbCall>) -> PgConnection {
    let mut c = PgConnection::new();
    c.push(
        true,
        Segment::whole(b"\0\0\0\x08\x04\xd2\x16\x2f", 0, 1),
        out,
    )
    .unwrap();
    c
}

#[test]
fn ssl_accepted_means_encrypted() {
    let mut c = PgConnection::new();
    let mut out = vec![];
    assert_eq!(
        detect_client(b"\0\0\0\x08\x04\xd2\x16\x2f"),
        crate::protocols::Detect::Yes
    );
    c.push(
        true,
        Segment::whole(b"\0\0\0\x08\x04\xd2\x16\x2f", 0, 1),
        &mut out,
    )
    .unwrap();
    // Accepted: what follows is either the ciphertext (no hooked library:
    // give up) or, from the TLS library's calls, the startup in plaintext.
    assert_eq!(c.push(false, Segment::whole(b"S", 2, 3), &mut out), Ok(()));
    assert_eq!(
        c.push(
            true,
            Segment::whole(b"\x16\x03\x01\x01\x00\x01", 4, 5),
            &mut out
        ),
        Err(PgError::Encrypted)
    );
    let mut c = ssl_requested(&mut out);
    c.push(false, Segment::whole(b"S", 2, 3), &mut out).unwrap();
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0postgres\0database\0shop\0\0");
    let n = startup.len() as u32;
    startup[..4].copy_from_slice(&n.to_be_bytes());
    c.push(true, Segment::whole(&startup, 4, 5), &mut out)
        .unwrap();
    assert_eq!(c.database.as_deref(), Some("shop"));
    // Refused SSL: the startup follows in the clear.
    let mut c = ssl_requested(&mut out);
    assert_eq!(c.push(false, Segment::whole(b"N", 2, 3), &mut out), Ok(()));
}

#[test]
fn hostile_bytes_never_panic() {
    let mut seed = 11u64;
    for n in 0..600 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut c2s = C2S.to_vec();
        let mut s2c = S2C.to_vec();
        let v = if n % 2 == 0 { &mut c2s } else { &mut s2c };
        let i = (seed as usize) % v.len();
        v[i] = (seed >> 8) as u8;
        let cut = (seed as usize >> 4) % s2c.len();
        let mut c = PgConnection::new();
        let mut out = vec![];
        let _ = c.push(true, Segment::whole(&c2s, 0, 1), &mut out);
        let _ = c.push(
            false,
            Segment {
                data: &s2c[..cut],
                total: s2c.len() as u64 + seed % 7,
                enter_ns: 2,
                exit_ns: 3,
                tid: 0,
                tick: 0,
                lineage: Default::default(),
                py_task: 0,
            },
            &mut out,
        );
        let _ = c.push(false, Segment::whole(&s2c[cut..], 4, 5), &mut out);
    }
}

/// Every message type with an empty body, one cut after a byte, and one
/// whose length runs past the capture: never a panic, framing kept.
#[test]
fn empty_and_cut_bodies_of_every_type() {
    for kind in 0..=255u8 {
        for body in [&b""[..], b"x", b"S\0", b"standard_conforming_strings\0"] {
            let mut c = PgConnection::mid_stream();
            let mut out = vec![];
            let mut m = vec![kind];
            m.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
            m.extend_from_slice(body);
            let _ = c.push(
                true,
                Segment::whole(b"Q\0\0\0\x0dSELECT 1\0", 0, 1),
                &mut out,
            );
            let _ = c.push(true, Segment::whole(&m, 0, 1), &mut out);
            let _ = c.push(false, Segment::whole(&m, 2, 3), &mut out);
            let mut long = m.clone();
            long[1..5].copy_from_slice(&(4 + 64 + body.len() as u32).to_be_bytes());
            let _ = c.push(
                false,
                Segment {
                    data: &long,
                    total: long.len() as u64 + 64,
                    enter_ns: 4,
                    exit_ns: 5,
                    tid: 0,
                    tick: 0,
                    lineage: Default::default(),
                    py_task: 0,
                },
                &mut out,
            );
            let _ = c.push(false, Segment::whole(b"Z\0\0\0\x05I", 6, 7), &mut out);
        }
    }
    // Startup packets shorter than their protocol code.
    for body in [&b""[..], b"\0\x03", b"\0\x03\0\0user"] {
        let mut c = PgConnection::new();
        let mut m = (4 + body.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        let _ = c.push(true, Segment::whole(&m, 0, 1), &mut vec![]);
    }
}

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    msg(b'S', format!("{name}\0{value}\0").as_bytes())
}

/// One simple query and its answer; the sanitized text.
fn simple(c: &mut PgConnection, q: &str, before_answer: &[u8]) -> String {
    let mut out = vec![];
    c.push(
        true,
        Segment::whole(&msg(b'Q', format!("{q}\0").as_bytes()), 0, 1),
        &mut out,
    )
    .unwrap();
    let mut answer = before_answer.to_vec();
    answer.extend(msg(b'C', b"SELECT 1\0"));
    answer.extend(msg(b'Z', b"I"));
    c.push(false, Segment::whole(&answer, 2, 3), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0).query_text
}

/// Issue #13: under standard_conforming_strings (the default) a backslash
/// does not escape the quote, so 'C:\' ends there; the setting is followed
/// from the server's ParameterStatus, at startup and after a SET.
#[test]
fn standard_conforming_strings_from_parameter_status() {
    let mut c = PgConnection::mid_stream();
    assert_eq!(
        simple(&mut c, r"INSERT INTO t VALUES ('C:\', 'hunter2')", &[]),
        "INSERT INTO t VALUES (?, ?)"
    );
    // A startup that reports it off.
    let mut c = PgConnection::new();
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0app\0\0");
    let n = startup.len() as u32;
    startup[..4].copy_from_slice(&n.to_be_bytes());
    c.push(true, Segment::whole(&startup, 0, 1), &mut vec![])
        .unwrap();
    let mut hello = msg(b'R', &[0, 0, 0, 0]);
    hello.extend(parameter_status("standard_conforming_strings", "off"));
    hello.extend(msg(b'Z', b"I"));
    c.push(false, Segment::whole(&hello, 2, 3), &mut vec![])
        .unwrap();
    assert_eq!(
        simple(&mut c, r"INSERT INTO t VALUES ('it\'s', 'hunter2')", &[]),
        "INSERT INTO t VALUES (?, ?)"
    );
    // SET turns it back on: the SET itself was read the old way, the next
    // statement the new way.
    let set = parameter_status("standard_conforming_strings", "on");
    assert_eq!(
        simple(&mut c, "SET standard_conforming_strings = on", &set),
        "SET standard_conforming_strings = on"
    );
    assert_eq!(
        simple(&mut c, r"INSERT INTO t VALUES ('C:\', 'hunter2')", &[]),
        "INSERT INTO t VALUES (?, ?)"
    );
    assert_eq!(simple(&mut c, r"SELECT E'it\'s', 'x'", &[]), "SELECT ?, ?");
}

/// A named statement is sanitized once, at Parse, as the server read it
/// then; each Execute of it shares that result.
#[test]
fn parsed_statements_are_sanitized_once() {
    let mut c = PgConnection::mid_stream();
    let mut out = vec![];
    let mut parse = msg(
        b'P',
        b"s1\0SELECT name FROM items WHERE note = 'C:\\' AND id = $1\0\0\0",
    );
    parse.extend(msg(b'S', b""));
    c.push(true, Segment::whole(&parse, 0, 1), &mut out)
        .unwrap();
    c.push(
        false,
        Segment::whole(&[msg(b'1', b""), msg(b'Z', b"I")].concat(), 2, 3),
        &mut out,
    )
    .unwrap();
    // The setting changes between Parse and Execute: the Parse's reading stays.
    c.push(
        false,
        Segment::whole(
            &parameter_status("standard_conforming_strings", "off"),
            4,
            5,
        ),
        &mut out,
    )
    .unwrap();
    for i in 0..3u64 {
        let mut exec = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
        exec.extend(msg(b'E', b"\0\0\0\0\0"));
        exec.extend(msg(b'S', b""));
        c.push(true, Segment::whole(&exec, 10 * i, 10 * i + 1), &mut out)
            .unwrap();
        let answer = [msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat();
        c.push(
            false,
            Segment::whole(&answer, 10 * i + 2, 10 * i + 3),
            &mut out,
        )
        .unwrap();
    }
    assert_eq!(out.len(), 3, "{out:?}");
    for call in &out {
        assert_eq!(
            (call.operation.as_str(), call.collection.as_deref()),
            ("SELECT", Some("items"))
        );
        assert_eq!(
            call.query_text,
            "SELECT name FROM items WHERE note = ? AND id = $1"
        );
    }
    // The statement and the unnamed portal bound to it share one result.
    assert!(Arc::ptr_eq(&c.statements["s1"], &c.portals[""]));
    // Executing a portal whose statement was never seen still ends the call.
    let exec = [
        msg(b'B', b"p\0unknown\0\0\0\0\0\0\0"),
        msg(b'E', b"p\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    c.push(true, Segment::whole(&exec, 50, 51), &mut out)
        .unwrap();
    c.push(
        false,
        Segment::whole(
            &[msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")].concat(),
            52,
            53,
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        (out.len(), out[3].query_text.as_str(), out[3].rows),
        (4, "", Some(0))
    );
}
