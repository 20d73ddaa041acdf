use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/protocols/mysql/captures/",
            $name
        ))
        .as_slice()
    };
}

/// Replays a recording packet by packet in conversation order: MySQL is
/// strictly request/response, so the server's packets are fed after the
/// client packet they answer, split where the sequence number restarts.
fn replay(c2s: &[u8], s2c: &[u8], split: usize) -> (MysqlConnection, Vec<DbCall>) {
    let packets = |d: &[u8]| -> Vec<(u8, Vec<u8>)> {
        let mut v = vec![];
        let mut i = 0;
        while i + 4 <= d.len() {
            let n = d[i] as usize | (d[i + 1] as usize) << 8 | (d[i + 2] as usize) << 16;
            v.push((d[i + 3], d[i..(i + 4 + n).min(d.len())].to_vec()));
            i += 4 + n;
        }
        v
    };
    let (cp, sp) = (packets(c2s), packets(s2c));
    // Group server packets into responses: a new one starts at seq 0 or 1
    // (after a client command) or the handshake's 0 and 2.
    let mut responses: Vec<Vec<u8>> = vec![];
    for (seq, bytes) in sp {
        let new = responses.is_empty() || seq <= 1 || (responses.len() == 1 && seq == 2);
        if new {
            responses.push(vec![]);
        }
        responses.last_mut().unwrap().extend(bytes);
    }
    let mut c = MysqlConnection::new();
    let mut out = vec![];
    let feed = |c: &mut MysqlConnection, client: bool, data: &[u8], out: &mut Vec<DbCall>| {
        let k = split.min(data.len());
        for part in [&data[..k], &data[k..]] {
            c.push(client, Segment::whole(part, 0, 1), out).unwrap();
        }
    };
    let mut r = responses.into_iter();
    feed(&mut c, false, &r.next().unwrap(), &mut out); // greeting
    for (seq, bytes) in cp {
        feed(&mut c, true, &bytes, &mut out);
        let answered = !(seq == 0 && matches!(bytes.get(4), Some(0x19) | Some(0x01)));
        if answered {
            if let Some(resp) = r.next() {
                feed(&mut c, false, &resp, &mut out);
            }
        }
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
fn recorded_pymysql_session() {
    let (c, calls) = replay(fixture!("session.c2s"), fixture!("session.s2c"), usize::MAX);
    let got = summary(&calls);
    let ops: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        ops,
        vec!["SET", "CREATE", "INSERT", "SELECT", "SELECT", "USE", "PING"],
        "{got:#?}"
    );
    assert!(calls.iter().all(|c| c.system == DbSystem::Mariadb));
    assert!(
        calls
            .iter()
            .all(|c| c.namespace.as_deref() == Some("sonde")),
        "schema from the handshake"
    );
    assert_eq!(
        got[2].2, "INSERT INTO items VALUES (?, ?), (?, ?)",
        "literals sanitized"
    );
    assert_eq!(got[2].3, Some(2), "affected rows");
    assert_eq!(
        (got[3].1.as_deref(), got[3].3),
        (Some("items"), Some(2)),
        "rows of the result set"
    );
    assert_eq!(got[4].4.as_deref(), Some("42S02"), "SQLSTATE of ERR");
    assert!(calls[4]
        .error
        .as_ref()
        .unwrap()
        .message
        .starts_with("1146: "));
    assert_eq!((c.parse_errors, c.unmatched), (0, 0));
}

#[test]
fn recorded_prepared_statements() {
    let (c, calls) = replay(
        fixture!("prepared.c2s"),
        fixture!("prepared.s2c"),
        usize::MAX,
    );
    let got = summary(&calls);
    let execs: Vec<_> = got.iter().filter(|g| g.2.contains("items")).collect();
    assert_eq!(
        execs.len(),
        2,
        "two COM_STMT_EXECUTE of one COM_STMT_PREPARE: {got:#?}"
    );
    for e in execs {
        assert_eq!(
            e.2, "SELECT id, name FROM items WHERE id = ?",
            "SQL from the statement id"
        );
        assert_eq!(e.1.as_deref(), Some("items"));
        assert_eq!(e.3, Some(1), "binary result set rows");
    }
    assert!(got.iter().any(|g| g.0 == "PING"));
    assert_eq!((c.parse_errors, c.unmatched), (0, 0));
}

#[test]
fn packets_split_across_syscalls() {
    for (c2s, s2c) in [
        (fixture!("session.c2s"), fixture!("session.s2c")),
        (fixture!("prepared.c2s"), fixture!("prepared.s2c")),
    ] {
        let want = summary(&replay(c2s, s2c, usize::MAX).1);
        for split in 0..40 {
            assert_eq!(
                summary(&replay(c2s, s2c, split).1),
                want,
                "split at {split}"
            );
        }
    }
}

#[test]
fn greeting_detection_and_ssl() {
    let s2c = fixture!("session.s2c");
    assert_eq!(detect_greeting(s2c), Detect::Yes);
    assert_eq!(detect_greeting(b"GET / HTTP/1.1\r\n"), Detect::No);
    let mut c = MysqlConnection::new();
    let mut out = vec![];
    c.push(false, Segment::whole(&s2c[..104], 0, 1), &mut out)
        .unwrap();
    // An SSLRequest: 32-byte payload with CLIENT_SSL.
    let mut ssl = vec![32, 0, 0, 1];
    ssl.extend_from_slice(&(CLIENT_SSL | CLIENT_SECURE_CONNECTION).to_le_bytes());
    ssl.resize(36, 0);
    assert_eq!(
        c.push(true, Segment::whole(&ssl, 2, 3), &mut out),
        Err(MysqlError::Encrypted)
    );
}

#[test]
fn hostile_bytes_never_panic() {
    let mut seed = 3u64;
    for n in 0..600 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut c2s = fixture!("session.c2s").to_vec();
        let mut s2c = fixture!("prepared.s2c").to_vec();
        let v = if n % 2 == 0 { &mut c2s } else { &mut s2c };
        let i = (seed as usize) % v.len();
        v[i] = (seed >> 8) as u8;
        let mut c = MysqlConnection::new();
        let mut out = vec![];
        let cut = (seed as usize >> 5) % s2c.len();
        let _ = c.push(
            false,
            Segment {
                data: &s2c[..cut],
                total: s2c.len() as u64 + seed % 5,
                enter_ns: 0,
                exit_ns: 1,
                tid: 0,
                tick: 0,
                lineage: Default::default(),
                py_task: 0,
            },
            &mut out,
        );
        let _ = c.push(true, Segment::whole(&c2s, 2, 3), &mut out);
        let _ = c.push(false, Segment::whole(&s2c[cut..], 4, 5), &mut out);
    }
}

fn pkt(seq: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![
        body.len() as u8,
        (body.len() >> 8) as u8,
        (body.len() >> 16) as u8,
        seq,
    ];
    v.extend_from_slice(body);
    v
}

fn push(c: &mut MysqlConnection, client: bool, bytes: &[u8], out: &mut Vec<DbCall>) {
    c.push(client, Segment::whole(bytes, 0, 1), out).unwrap();
}

/// A MySQL 8 handshake with CLIENT_DEPRECATE_EOF on both sides, the auth
/// response as given (lenenc-prefixed), up to the auth OK.
fn mysql8_handshake(auth: &[u8]) -> MysqlConnection {
    let caps: u32 = CLIENT_DEPRECATE_EOF
        | CLIENT_SECURE_CONNECTION
        | CLIENT_CONNECT_WITH_DB
        | CLIENT_PLUGIN_AUTH_LENENC;
    let mut greeting = vec![0x0a];
    greeting.extend_from_slice(b"8.0.36\0");
    greeting.extend_from_slice(&[1, 0, 0, 0]); // connection id
    greeting.extend_from_slice(b"abcdefgh\0"); // auth data 1 + filler
    greeting.extend_from_slice(&(caps as u16).to_le_bytes());
    greeting.push(0x21);
    greeting.extend_from_slice(&[2, 0]);
    greeting.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    let mut hello = caps.to_le_bytes().to_vec();
    hello.extend_from_slice(&[0, 0, 0, 1, 0x21]);
    hello.extend_from_slice(&[0; 23]);
    hello.extend_from_slice(b"app\0");
    hello.extend_from_slice(auth);
    hello.extend_from_slice(b"shop\0");
    let mut c = MysqlConnection::new();
    let mut out = vec![];
    push(&mut c, false, &pkt(0, &greeting), &mut out);
    push(&mut c, true, &pkt(1, &hello), &mut out);
    push(&mut c, false, &pkt(2, &[0, 0, 0, 2, 0, 0, 0]), &mut out);
    assert!(out.is_empty());
    c
}

/// Column count, two column definitions and two rows, without the
/// terminator (no EOF after the definitions with DEPRECATE_EOF).
fn two_rows() -> Vec<u8> {
    let mut resp = pkt(1, &[2]);
    resp.extend(pkt(
        2,
        b"\x03def\x04shop\x01t\x01t\x01a\x01a\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00",
    ));
    resp.extend(pkt(
        3,
        b"\x03def\x04shop\x01t\x01t\x01b\x01b\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00",
    ));
    resp.extend(pkt(4, b"\x015\x011"));
    resp.extend(pkt(5, b"\x015\x012"));
    resp
}

/// A MySQL 8 style exchange with CLIENT_DEPRECATE_EOF on both sides: no EOF
/// after column definitions, and the result set ends with an OK (0xfe).
#[test]
fn deprecate_eof_result_sets() {
    let mut c = mysql8_handshake(&[1, b'x']);
    let mut out = vec![];
    push(
        &mut c,
        true,
        &pkt(0, b"\x03SELECT a, b FROM t WHERE a = 5"),
        &mut out,
    );
    let mut resp = two_rows();
    resp.extend(pkt(6, &[0xfe, 0, 0, 2, 0, 0, 0])); // OK terminator
    push(&mut c, false, &resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].rows, out[0].namespace.as_deref(), out[0].system),
        (Some(2), Some("shop"), DbSystem::Mysql)
    );
    assert_eq!(out[0].query_text, "SELECT a, b FROM t WHERE a = ?");
}

/// Issue #13: with DEPRECATE_EOF, an OK terminator long enough to carry
/// session state, captured only to its 0xfe header, made the status read
/// slice past the end of the body.
#[test]
fn ok_terminator_cut_after_its_header() {
    let mut c = mysql8_handshake(&[1, b'x']);
    let mut out = vec![];
    push(&mut c, true, &pkt(0, b"\x03SELECT a, b FROM t"), &mut out);
    push(&mut c, false, &two_rows(), &mut out);
    let ok = pkt(6, &[0xfe, 0, 0, 2, 0, 0, 0, 4, b'i', b'n', b'f', b'o']);
    c.push(
        false,
        Segment {
            data: &ok[..5],
            total: ok.len() as u64,
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
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].rows, out[0].last.exit_ns), (Some(2), 3));
    // The next command pairs with its own answer.
    push(&mut c, true, &pkt(0, b"\x0e"), &mut out);
    push(&mut c, false, &pkt(1, &[0, 0, 0, 2, 0, 0, 0]), &mut out);
    assert_eq!(out.last().map(|c| c.operation.as_str()), Some("PING"));
}

/// OK and EOF packets cut anywhere: never a panic, and the call still ends.
#[test]
fn truncated_terminators_end_the_call() {
    let ok = [0xfe, 0xfc, 0x10, 0x27, 0xfd, 1, 2, 3, 2, 0, 0, 0];
    for cut in 1..ok.len() {
        let mut c = mysql8_handshake(&[1, b'x']);
        let mut out = vec![];
        push(&mut c, true, &pkt(0, b"\x03SELECT a, b FROM t"), &mut out);
        push(&mut c, false, &two_rows(), &mut out);
        let p = pkt(6, &ok);
        c.push(
            false,
            Segment {
                data: &p[..4 + cut],
                total: p.len() as u64,
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
        assert_eq!(
            out.iter().map(|c| c.rows).collect::<Vec<_>>(),
            vec![Some(2)],
            "cut at {cut}"
        );
    }
}

/// A lenenc auth-response length near u64::MAX must not overflow the
/// offset of the schema name (a debug-build panic, a wrong slice in release).
#[test]
fn hostile_auth_length_is_skipped() {
    let c = mysql8_handshake(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(c.schema, None);
}

/// Server packets with an empty or one-byte body (whole, or cut after the
/// header) after a prepare and a result set cut at various points.
#[test]
fn one_byte_bodies_in_every_state() {
    for first in [
        None,
        Some(0x00),
        Some(0xfe),
        Some(0xff),
        Some(0xfb),
        Some(0xfc),
        Some(0x02),
    ] {
        let body: Vec<u8> = first.into_iter().collect();
        for prefix in 0..4 {
            let mut c = mysql8_handshake(&[1, b'x']);
            let mut out = vec![];
            push(&mut c, true, &pkt(0, b"\x16SELECT ?"), &mut out);
            push(&mut c, true, &pkt(0, b"\x03SELECT a, b FROM t"), &mut out);
            push(
                &mut c,
                false,
                &pkt(1, &[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
                &mut out,
            );
            let mut rows = two_rows();
            rows.truncate([0, 5, 44, rows.len()][prefix]);
            push(&mut c, false, &rows, &mut out);
            push(&mut c, false, &pkt(6, &body), &mut out);
            let long = pkt(6, &[body.first().copied().unwrap_or(0); 20]);
            c.push(
                false,
                Segment {
                    data: &long[..4 + body.len()],
                    total: long.len() as u64,
                    enter_ns: 0,
                    exit_ns: 1,
                    tid: 0,
                    tick: 0,
                    lineage: Default::default(),
                    py_task: 0,
                },
                &mut out,
            )
            .unwrap();
        }
    }
}

/// An OK packet with the given status flags.
fn ok(seq: u8, status: u16) -> Vec<u8> {
    let [lo, hi] = status.to_le_bytes();
    pkt(seq, &[0, 0, 0, lo, hi, 0, 0])
}

/// One command and its answer; the call it made.
fn call(c: &mut MysqlConnection, command: &[u8], answer: &[u8]) -> DbCall {
    let mut out = vec![];
    push(c, true, &pkt(0, command), &mut out);
    push(c, false, answer, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

/// Issue #13: "..." is a string in MySQL's default sql_mode, and a
/// backslash escapes in both quotes.
#[test]
fn double_quoted_strings_are_literals() {
    let mut c = mysql8_handshake(&[1, b'x']);
    let q = br#"SELECT * FROM users WHERE name = "hunter2" AND note = 'it\'s' AND v = "a\"b""#;
    assert_eq!(
        call(&mut c, &[&[3][..], q].concat(), &ok(1, 2)).query_text,
        "SELECT * FROM users WHERE name = ? AND note = ? AND v = ?"
    );
}

/// NO_BACKSLASH_ESCAPES is read from the status flags of each OK.
#[test]
fn no_backslash_escapes_from_status_flags() {
    let mut c = mysql8_handshake(&[1, b'x']);
    let set = call(
        &mut c,
        b"\x03SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        &ok(1, 0x0202),
    );
    assert_eq!(set.query_text, "SET sql_mode = ?");
    let q = call(
        &mut c,
        b"\x03INSERT INTO t VALUES ('C:\\', 'hunter2')",
        &ok(1, 0x0202),
    );
    assert_eq!(q.query_text, "INSERT INTO t VALUES (?, ?)");
    // Back to the default: the flag is gone from the next OK.
    call(&mut c, b"\x03SET sql_mode = DEFAULT", &ok(1, 0x0002));
    let q = call(
        &mut c,
        b"\x03INSERT INTO t VALUES ('it\\'s', 'hunter2')",
        &ok(1, 0x0002),
    );
    assert_eq!(q.query_text, "INSERT INTO t VALUES (?, ?)");
}

/// ANSI_QUOTES is followed from the connection's own successful SETs.
#[test]
fn ansi_quotes_from_set_sql_mode() {
    let mut c = mysql8_handshake(&[1, b'x']);
    let select = b"\x03SELECT \"name\" FROM t WHERE a = 'x'";
    assert_eq!(
        call(&mut c, select, &ok(1, 2)).query_text,
        "SELECT ? FROM t WHERE a = ?"
    );
    call(
        &mut c,
        b"\x03SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_TRANS_TABLES'",
        &ok(1, 2),
    );
    assert_eq!(
        call(&mut c, select, &ok(1, 2)).query_text,
        "SELECT \"name\" FROM t WHERE a = ?"
    );
    // A failed SET changes nothing.
    let err = pkt(1, b"\xff\x05\x04#42000bad mode");
    assert!(call(&mut c, b"\x03SET sql_mode = 'NOPE'", &err)
        .error
        .is_some());
    assert_eq!(
        call(&mut c, select, &ok(1, 2)).query_text,
        "SELECT \"name\" FROM t WHERE a = ?"
    );
    // A text that changes the mode part way is read with "..." as strings.
    let multi = call(
        &mut c,
        b"\x03SET sql_mode = ''; SELECT \"hunter2\"",
        &ok(1, 2),
    );
    assert_eq!(multi.query_text, "SET sql_mode = ?; SELECT ?");
    assert_eq!(
        call(&mut c, select, &ok(1, 2)).query_text,
        "SELECT ? FROM t WHERE a = ?"
    );
    // COM_RESET_CONNECTION brings back the global mode.
    call(&mut c, b"\x03SET sql_mode = 'ANSI'", &ok(1, 2));
    push(&mut c, true, &pkt(0, b"\x1f"), &mut vec![]);
    push(&mut c, false, &ok(1, 2), &mut vec![]);
    assert_eq!(
        call(&mut c, select, &ok(1, 2)).query_text,
        "SELECT ? FROM t WHERE a = ?"
    );
}

/// A prepared statement is sanitized once, at COM_STMT_PREPARE, as the
/// server read it then; every COM_STMT_EXECUTE shares that result.
#[test]
fn prepared_statements_are_sanitized_once() {
    let mut c = mysql8_handshake(&[1, b'x']);
    let mut out = vec![];
    push(
        &mut c,
        true,
        &pkt(0, b"\x16SELECT a FROM t WHERE note = 'it\\'s' AND id = ?"),
        &mut out,
    );
    let mut prepare_ok = pkt(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    prepare_ok.extend(pkt(
        2,
        b"\x03def\x00\x00\x00\x01?\x00\x0c?\x00\x00\x00\x00\x00\xfd\x80\x00\x00\x00\x00",
    ));
    prepare_ok.extend(pkt(
        3,
        b"\x03def\x04shop\x01t\x01t\x01a\x01a\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00",
    ));
    push(&mut c, false, &prepare_ok, &mut out);
    assert!(out.is_empty(), "a prepare is not a call: {out:?}");
    // The mode changes before the executes: the prepare's reading stays.
    call(
        &mut c,
        b"\x03SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
        &ok(1, 0x0202),
    );
    for _ in 0..2 {
        let mut rows = pkt(1, &[1]);
        rows.extend(pkt(
            2,
            b"\x03def\x04shop\x01t\x01t\x01a\x01a\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00",
        ));
        rows.extend(pkt(3, b"\x00\x00\x015"));
        rows.extend(pkt(4, &[0xfe, 0, 0, 2, 2, 0, 0]));
        push(&mut c, true, &pkt(0, b"\x17\x07\x00\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x05\x00\x00\x00\x00\x00\x00\x00"), &mut out);
        let Some((Cmd::Execute(Some(st)), _)) = c.pending.front() else {
            panic!("{:?}", c.pending)
        };
        assert!(
            Arc::ptr_eq(st, &c.statements[&7]),
            "the prepare's result, not a new one"
        );
        push(&mut c, false, &rows, &mut out);
        let exec = out.pop().unwrap();
        assert_eq!(
            (
                exec.query_text.as_str(),
                exec.collection.as_deref(),
                exec.rows
            ),
            (
                "SELECT a FROM t WHERE note = ? AND id = ?",
                Some("t"),
                Some(1)
            )
        );
    }
    // An execute of an id never prepared still ends its call.
    let unknown = call(
        &mut c,
        b"\x17\x09\x00\x00\x00\x00\x01\x00\x00\x00",
        &ok(1, 2),
    );
    assert_eq!(
        (unknown.operation.as_str(), unknown.query_text.as_str()),
        ("", "")
    );
}
