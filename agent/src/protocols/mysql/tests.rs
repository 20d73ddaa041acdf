use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/protocols/mysql/captures/", $name)).as_slice()
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
    let mut cp = cp.into_iter().peekable();
    while let Some((seq, bytes)) = cp.next() {
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

fn summary(calls: &[DbCall]) -> Vec<(String, Option<String>, String, Option<u64>, Option<String>)> {
    calls
        .iter()
        .map(|c| (c.operation.clone(), c.collection.clone(), c.query_text.clone(), c.rows, c.error.as_ref().map(|e| e.code.clone())))
        .collect()
}

#[test]
fn recorded_pymysql_session() {
    let (c, calls) = replay(fixture!("session.c2s"), fixture!("session.s2c"), usize::MAX);
    let got = summary(&calls);
    let ops: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(ops, vec!["SET", "CREATE", "INSERT", "SELECT", "SELECT", "USE", "PING"], "{got:#?}");
    assert!(calls.iter().all(|c| c.system == DbSystem::Mariadb));
    assert!(calls.iter().all(|c| c.namespace.as_deref() == Some("sonde")), "schema from the handshake");
    assert_eq!(got[2].2, "INSERT INTO items VALUES (?, ?), (?, ?)", "literals sanitized");
    assert_eq!(got[2].3, Some(2), "affected rows");
    assert_eq!((got[3].1.as_deref(), got[3].3), (Some("items"), Some(2)), "rows of the result set");
    assert_eq!(got[4].4.as_deref(), Some("42S02"), "SQLSTATE of ERR");
    assert!(calls[4].error.as_ref().unwrap().message.starts_with("1146: "));
    assert_eq!((c.parse_errors, c.unmatched), (0, 0));
}

#[test]
fn recorded_prepared_statements() {
    let (c, calls) = replay(fixture!("prepared.c2s"), fixture!("prepared.s2c"), usize::MAX);
    let got = summary(&calls);
    let execs: Vec<_> = got.iter().filter(|g| g.2.contains("items")).collect();
    assert_eq!(execs.len(), 2, "two COM_STMT_EXECUTE of one COM_STMT_PREPARE: {got:#?}");
    for e in execs {
        assert_eq!(e.2, "SELECT id, name FROM items WHERE id = ?", "SQL from the statement id");
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
            assert_eq!(summary(&replay(c2s, s2c, split).1), want, "split at {split}");
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
    c.push(false, Segment::whole(&s2c[..104], 0, 1), &mut out).unwrap();
    // An SSLRequest: 32-byte payload with CLIENT_SSL.
    let mut ssl = vec![32, 0, 0, 1];
    ssl.extend_from_slice(&(CLIENT_SSL | CLIENT_SECURE_CONNECTION).to_le_bytes());
    ssl.resize(36, 0);
    assert_eq!(c.push(true, Segment::whole(&ssl, 2, 3), &mut out), Err(MysqlError::Encrypted));
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
        let _ = c.push(false, Segment { data: &s2c[..cut], total: s2c.len() as u64 + seed % 5, enter_ns: 0, exit_ns: 1, tid: 0 }, &mut out);
        let _ = c.push(true, Segment::whole(&c2s, 2, 3), &mut out);
        let _ = c.push(false, Segment::whole(&s2c[cut..], 4, 5), &mut out);
    }
}

/// A MySQL 8 style exchange with CLIENT_DEPRECATE_EOF on both sides: no EOF
/// after column definitions, and the result set ends with an OK (0xfe).
#[test]
fn deprecate_eof_result_sets() {
    fn pkt(seq: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![body.len() as u8, (body.len() >> 8) as u8, 0, seq];
        v.extend_from_slice(body);
        v
    }
    let caps: u32 = CLIENT_DEPRECATE_EOF | CLIENT_SECURE_CONNECTION | CLIENT_CONNECT_WITH_DB | CLIENT_PLUGIN_AUTH_LENENC;
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
    hello.extend_from_slice(&[1, b'x']); // lenenc auth response
    hello.extend_from_slice(b"shop\0");
    let mut c = MysqlConnection::new();
    let mut out = vec![];
    let mut push = |c: &mut MysqlConnection, client: bool, bytes: Vec<u8>| c.push(client, Segment::whole(&bytes, 0, 1), &mut out).unwrap();
    push(&mut c, false, pkt(0, &greeting));
    push(&mut c, true, pkt(1, &hello));
    push(&mut c, false, pkt(2, &[0, 0, 0, 2, 0, 0, 0]));
    push(&mut c, true, pkt(0, b"\x03SELECT a, b FROM t WHERE a = 5"));
    let mut resp = pkt(1, &[2]); // two columns
    resp.extend(pkt(2, b"\x03def\x04shop\x01t\x01t\x01a\x01a\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00"));
    resp.extend(pkt(3, b"\x03def\x04shop\x01t\x01t\x01b\x01b\x0c?\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00"));
    resp.extend(pkt(4, b"\x015\x011")); // row (no EOF before it)
    resp.extend(pkt(5, b"\x015\x012"));
    resp.extend(pkt(6, &[0xfe, 0, 0, 2, 0, 0, 0])); // OK terminator
    push(&mut c, false, resp);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].rows, out[0].namespace.as_deref(), out[0].system), (Some(2), Some("shop"), DbSystem::Mysql));
    assert_eq!(out[0].query_text, "SELECT a, b FROM t WHERE a = ?");
}

/// Found by the `protocols` fuzz target: a handshake response whose
/// length-encoded auth data claims 2^64-1 bytes overflowed `used + n`.
#[test]
fn huge_lenenc_auth_length_does_not_overflow() {
    let mut body = (CLIENT_PLUGIN_AUTH_LENENC | CLIENT_CONNECT_WITH_DB).to_le_bytes().to_vec();
    body.extend([0u8; 28]); // max packet size, charset, filler
    body.extend(b"root\0");
    body.push(0xfe); // an 8-byte length follows
    body.extend([0xff; 8]);
    body.extend(b"db\0");
    let mut packet = vec![body.len() as u8, 0, 0, 1];
    packet.extend(&body);
    let mut c = MysqlConnection::new();
    let mut out = vec![];
    c.push(true, Segment::whole(&packet, 0, 1), &mut out).unwrap();
    assert_eq!(c.schema, None, "the database name lies beyond the bytes");
}
