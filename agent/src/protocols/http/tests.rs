//! Golden tests on bytes recorded from curl, nginx and Python's http.server
//! (captures/, see record.py there), fed whole, byte by
//! byte, split at every point, and cut by a capture size.
use super::*;
use crate::protocols::Segment;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/protocols/http/captures/",
            $name
        ))
        .as_slice()
    };
}

/// Feeds `parts` as consecutive segments, then closes.
fn frame(
    kind: Kind,
    methods: &[&str],
    parts: &[&[u8]],
) -> Result<Vec<Message>, stream::StreamError> {
    let mut s = MessageStream::new(kind);
    for m in methods {
        s.expect(m);
    }
    let mut out = vec![];
    for (i, p) in parts.iter().enumerate() {
        s.push(
            Segment::whole(p, i as u64 * 10, i as u64 * 10 + 5),
            &mut out,
        )?;
    }
    s.close(&mut out);
    Ok(out.into_iter().map(|m| *m).collect())
}

/// What a message says, without timing.
fn summary(m: &Message) -> (String, String, u16, u64, bool) {
    (
        m.head.method.clone(),
        m.head.target.clone(),
        m.head.status,
        m.body_bytes,
        m.complete,
    )
}

/// Whole, byte by byte, and at every split point: the same messages.
fn check_all_splits(kind: Kind, methods: &[&str], data: &[u8]) -> Vec<Message> {
    let whole = frame(kind, methods, &[data]).expect("whole");
    let want: Vec<_> = whole.iter().map(summary).collect();
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    let got: Vec<_> = frame(kind, methods, &bytes)
        .expect("bytewise")
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, want, "byte by byte");
    for i in 0..=data.len() {
        let got: Vec<_> = frame(kind, methods, &[&data[..i], &data[i..]])
            .expect("split")
            .iter()
            .map(summary)
            .collect();
        assert_eq!(got, want, "split at {i}");
    }
    whole
}

#[test]
fn curl_get() {
    let m = check_all_splits(Kind::Request, &[], fixture!("curl_get.req"));
    assert_eq!(m.len(), 1);
    let h = &m[0].head;
    assert_eq!(
        (h.method.as_str(), h.target.as_str(), h.minor),
        ("GET", "/api/items/42?sort=asc", 1)
    );
    assert!(h.user_agent.as_deref().unwrap().starts_with("curl/"));
    assert!(h.host.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(m[0].body_bytes, 0);
    assert!(m[0].complete);
}

#[test]
fn curl_post_with_body() {
    let m = check_all_splits(Kind::Request, &[], fixture!("curl_post.req"));
    assert_eq!(summary(&m[0]).3, 17);
    assert_eq!(m[0].head.method, "POST");
}

#[test]
fn curl_expect_continue_and_chunked_upload() {
    let m = check_all_splits(Kind::Request, &[], fixture!("curl_expect_continue.req"));
    assert!(m[0].head.expect_continue);
    assert_eq!(m[0].body_bytes, 2048);
    let data = fixture!("curl_chunked_upload.req");
    let m = check_all_splits(Kind::Request, &[], data);
    assert!(m[0].head.chunked && m[0].complete);
    assert_eq!(
        m[0].body_bytes as usize,
        data.len() - m[0].head.len,
        "chunk framing counted as wire bytes"
    );
}

#[test]
fn nginx_responses() {
    let get = fixture!("nginx_get.resp");
    let m = check_all_splits(Kind::Response, &["GET"], get);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].head.status, 200);
    assert_eq!(Some(m[0].body_bytes), m[0].head.content_length);
    let m = check_all_splits(Kind::Response, &["GET"], fixture!("nginx_404.resp"));
    assert_eq!(m[0].head.status, 404);
    // HEAD: Content-Length describes the GET body that is not sent.
    let m = check_all_splits(Kind::Response, &["HEAD"], fixture!("nginx_head.resp"));
    assert_eq!(m.len(), 1);
    assert!(m[0].head.content_length.unwrap() > 0);
    assert_eq!(m[0].body_bytes, 0);
}

#[test]
fn nginx_pipelined_responses() {
    let m = check_all_splits(
        Kind::Response,
        &["GET", "GET"],
        fixture!("nginx_pipelined.resp"),
    );
    assert_eq!(
        m.iter().map(|m| m.head.status).collect::<Vec<_>>(),
        vec![200, 404]
    );
}

#[test]
fn python_framings() {
    let m = check_all_splits(Kind::Response, &["GET"], fixture!("python_chunked.resp"));
    assert!(m[0].head.chunked && m[0].complete);
    let m = check_all_splits(Kind::Response, &["GET"], fixture!("python_204.resp"));
    assert_eq!((m[0].head.status, m[0].body_bytes), (204, 0));
    let m = check_all_splits(Kind::Response, &["GET"], fixture!("python_500.resp"));
    assert_eq!(m[0].head.status, 500);
    // Delimited by the close: nothing until then.
    let data = fixture!("python_close.resp");
    let mut s = MessageStream::new(Kind::Response);
    s.expect("GET");
    let mut out = vec![];
    s.push(Segment::whole(data, 0, 1), &mut out).unwrap();
    assert!(out.is_empty());
    s.close(&mut out);
    assert_eq!(out[0].body_bytes, b"body delimited by close".len() as u64);
}

#[test]
fn continue_pairs_the_final_response() {
    let resp = fixture!("python_continue.resp");
    let m = check_all_splits(Kind::Response, &["POST"], resp);
    assert_eq!(
        m.iter().map(|m| m.head.status).collect::<Vec<_>>(),
        vec![100, 201]
    );
    let mut c = HttpConnection::default();
    let mut out = vec![];
    let req =
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody";
    c.push(Kind::Request, Segment::whole(req, 0, 1), &mut out)
        .unwrap();
    c.push(Kind::Response, Segment::whole(resp, 2, 3), &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response.head.status, 201);
    assert_eq!(out[0].request.head.method, "POST");
}

#[test]
fn timing_spans_first_to_last_segment() {
    let data = fixture!("nginx_get.resp");
    let (a, b) = data.split_at(100);
    let m = frame(Kind::Response, &["GET"], &[a, b]).unwrap();
    assert_eq!((m[0].first.enter_ns, m[0].last.exit_ns), (0, 15));
}

#[test]
fn body_beyond_capture_is_skipped_by_count() {
    let data = fixture!("nginx_get.resp");
    let mut s = MessageStream::new(Kind::Response);
    s.expect("GET");
    s.expect("GET");
    let mut out = vec![];
    // Only 300 bytes captured of the whole response, then a second response whole.
    s.push(
        Segment {
            data: &data[..300],
            total: data.len() as u64,
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
    s.push(Segment::whole(fixture!("nginx_404.resp"), 2, 3), &mut out)
        .unwrap();
    assert_eq!(
        out.iter()
            .map(|m| (m.head.status, m.complete))
            .collect::<Vec<_>>(),
        vec![(200, true), (404, true)]
    );
    assert_eq!(Some(out[0].body_bytes), out[0].head.content_length);
}

#[test]
fn head_cut_by_capture_keeps_the_start_line() {
    let data = fixture!("curl_get.req");
    // 20 bytes end inside the request line: nothing usable, no message.
    // 40 and 60 keep the request line and some headers.
    for (cut, usable) in [(20usize, false), (40, true), (60, true)] {
        let mut s = MessageStream::new(Kind::Request);
        let mut out = vec![];
        s.push(
            Segment {
                data: &data[..cut],
                total: data.len() as u64,
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
        assert_eq!(out.len(), usize::from(usable), "cut at {cut}");
        if usable {
            assert!(out[0].head.truncated && !out[0].complete);
            assert_eq!(
                (out[0].head.method.as_str(), out[0].head.target.as_str()),
                ("GET", "/api/items/42?sort=asc")
            );
        }
        // The next request parses normally.
        s.push(Segment::whole(data, 2, 3), &mut out).unwrap();
        let last = out.last().unwrap();
        assert!(last.complete && !last.head.truncated, "cut at {cut}");
    }
}

#[test]
fn gap_inside_chunked_body_resyncs_on_the_next_message() {
    let data = fixture!("python_chunked.resp");
    let mut s = MessageStream::new(Kind::Response);
    s.expect("GET");
    s.expect("GET");
    let mut out = vec![];
    s.push(
        Segment {
            data: &data[..110],
            total: data.len() as u64,
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
    assert_eq!(out.len(), 1);
    assert!(!out[0].complete);
    s.push(Segment::whole(fixture!("python_500.resp"), 2, 3), &mut out)
        .unwrap();
    assert_eq!(out[1].head.status, 500);
}

#[test]
fn not_http_is_rejected_up_front() {
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\0\0\0\x08\x04\xd2\x16\x2f",
    ] {
        assert_eq!(
            frame(Kind::Request, &[], &[junk]).unwrap_err(),
            stream::StreamError::NotHttp
        );
        assert_eq!(detect(Kind::Request, junk), crate::protocols::Detect::No);
    }
    assert_eq!(
        detect(Kind::Request, b"GE"),
        crate::protocols::Detect::NeedMore
    );
    assert_eq!(
        detect(Kind::Response, b"HTTP/1.1 200"),
        crate::protocols::Detect::Yes
    );
}

#[test]
fn garbage_after_http_counts_and_recovers() {
    let mut c = HttpConnection::default();
    let mut out = vec![];
    let req = fixture!("curl_get.req");
    c.push(Kind::Request, Segment::whole(req, 0, 1), &mut out)
        .unwrap();
    c.push(
        Kind::Request,
        Segment::whole(b"GET \x00\x01 garbage\r\n\r\n", 2, 3),
        &mut out,
    )
    .unwrap();
    c.push(
        Kind::Request,
        Segment::whole(b"\xff\xfe not http", 2, 3),
        &mut out,
    )
    .unwrap();
    c.push(Kind::Request, Segment::whole(req, 4, 5), &mut out)
        .unwrap();
    assert!(c.parse_errors() >= 1);
    c.push(
        Kind::Response,
        Segment::whole(fixture!("nginx_pipelined.resp"), 6, 7),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 2, "both good requests answered");
}

/// A deterministic xorshift so the sweep is reproducible.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn hostile_bytes_never_panic() {
    let fixtures: [&[u8]; 6] = [
        fixture!("curl_post.req"),
        fixture!("curl_chunked_upload.req"),
        fixture!("nginx_pipelined.resp"),
        fixture!("python_chunked.resp"),
        fixture!("python_continue.resp"),
        fixture!("python_close.resp"),
    ];
    let mut seed = 0x5eed_u64;
    for f in fixtures {
        for _ in 0..300 {
            let mut v = f.to_vec();
            for _ in 0..1 + rng(&mut seed) % 8 {
                let i = (rng(&mut seed) as usize) % v.len();
                v[i] = rng(&mut seed) as u8;
            }
            let cut = (rng(&mut seed) as usize) % (v.len() + 1);
            let gap = rng(&mut seed) % 5000;
            for kind in [Kind::Request, Kind::Response] {
                let mut c = HttpConnection::default();
                let mut out = vec![];
                let seg = Segment {
                    data: &v[..cut],
                    total: cut as u64 + gap,
                    enter_ns: 0,
                    exit_ns: 1,
                    tid: 0,
                    tick: 0,
                    lineage: Default::default(),
                    py_task: 0,
                };
                let _ = c.push(kind, seg, &mut out);
                let _ = c.push(kind, Segment::whole(&v[cut..], 2, 3), &mut out);
                c.close(&mut out);
            }
        }
    }
}

#[test]
fn token_lists_are_read_in_any_case_and_spacing() {
    let h = head::parse(
        Kind::Request,
        b"GET / HTTP/1.1\r\nConnection: Keep-Alive ,\tUPGRADE\r\nTransfer-Encoding: gzip,Chunked\r\nExpect:  100-Continue \r\nHost:  shop:8080 \r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert!(h.upgrade && !h.connection_close);
    assert!(h.chunked && h.expect_continue);
    assert_eq!(h.host.as_deref(), Some("shop:8080"));
    // A token inside another is not the token; bytes that are not UTF-8
    // are kept as replacement characters.
    let h = head::parse(
        Kind::Response,
        b"HTTP/1.1 200 OK\r\nConnection: closed, x-close\r\nTransfer-Encoding: chunkedx\r\nUser-Agent: a\xffb\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert!(!h.connection_close && !h.chunked && !h.upgrade);
    assert_eq!(h.user_agent.as_deref(), Some("a\u{fffd}b"));
    let h = head::parse(
        Kind::Response,
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert!(h.connection_close);
}
