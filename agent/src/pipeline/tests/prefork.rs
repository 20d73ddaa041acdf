//! A pre-fork pool through dispatch, correlation and telemetry: a front
//! process hands two concurrent requests' tasks to two workers over pipes;
//! each worker's call nests under its own task's request, with evidence
//! `pipe`, and the results come back.
use super::*;
use crate::spans::{SpanKind, Value};

const FRONT: u32 = 100;
const WORKERS: [u32; 2] = [200, 201];
const TASK_PIPES: [u64; 2] = [7001, 7002];
const RESULT_PIPES: [u64; 2] = [8001, 8002];

fn pipe_end(id: u64, pid: u32, inode: u64) -> ConnInfo {
    let mut c = conn(id, pid, Role::Pipe, "0.0.0.0:0", "0.0.0.0:0", "pool");
    c.tuple = None;
    c.pipe = Some(inode);
    c
}

fn framed(body: &str) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

#[test]
fn each_worker_call_nests_under_the_request_its_task_came_from() {
    let mut l7 = l7();
    let server = |id, port| {
        conn(
            id,
            FRONT,
            Role::Server,
            "127.0.0.1:80",
            &format!("127.0.0.1:{port}"),
            "pool",
        )
    };
    let (s1, s2) = (server(1, 5001), server(2, 5002));
    let client = |id, pid| {
        conn(
            id,
            pid,
            Role::Client,
            "127.0.0.1:6000",
            "10.9.9.9:8080",
            "pool",
        )
    };
    let (c1, c2) = (client(3, WORKERS[0]), client(4, WORKERS[1]));
    // Front ends (task write ends, result read ends) and worker ends.
    let ft = [
        pipe_end(10, FRONT, TASK_PIPES[0]),
        pipe_end(11, FRONT, TASK_PIPES[1]),
    ];
    let fr = [
        pipe_end(12, FRONT, RESULT_PIPES[0]),
        pipe_end(13, FRONT, RESULT_PIPES[1]),
    ];
    let wt = [
        pipe_end(20, WORKERS[0], TASK_PIPES[0]),
        pipe_end(21, WORKERS[1], TASK_PIPES[1]),
    ];
    let wr = [
        pipe_end(22, WORKERS[0], RESULT_PIPES[0]),
        pipe_end(23, WORKERS[1], RESULT_PIPES[1]),
    ];
    let opens = [&s1, &s2, &c1, &c2]
        .into_iter()
        .chain(&ft)
        .chain(&fr)
        .chain(&wt)
        .chain(&wr)
        .map(|c| StreamEvent::Open(c.clone()));
    let (t1, t2) = (framed(r#"{"id": "one"}"#), framed(r#"{"id": "two"}"#));
    let down = |p: &str| request(p);
    let mut spans = feed(
        &mut l7,
        vec![],
        opens.chain([
            // Two front threads read their requests, then write their tasks.
            data_on(&s1, Direction::Ingress, 1_000, (101, 1), &request("/r/one")),
            data_on(&s2, Direction::Ingress, 1_100, (102, 1), &request("/r/two")),
            data_on(&ft[1], Direction::Egress, 1_200, (102, 1), &t2),
            data_on(&ft[0], Direction::Egress, 1_300, (101, 1), &t1),
            // The workers read them (a length, then the body) and call out.
            data_on(&wt[0], Direction::Ingress, 1_400, (WORKERS[0], 5), &t1[..4]),
            data_on(&wt[1], Direction::Ingress, 1_400, (WORKERS[1], 5), &t2[..4]),
            data_on(&wt[0], Direction::Ingress, 1_410, (WORKERS[0], 6), &t1[4..]),
            data_on(&wt[1], Direction::Ingress, 1_410, (WORKERS[1], 6), &t2[4..]),
            data_on(
                &c2,
                Direction::Egress,
                1_500,
                (WORKERS[1], 6),
                &down("/down/two"),
            ),
            data_on(
                &c1,
                Direction::Egress,
                1_600,
                (WORKERS[0], 6),
                &down("/down/one"),
            ),
            data_on(&c1, Direction::Ingress, 1_700, (WORKERS[0], 7), RESP),
            data_on(&c2, Direction::Ingress, 1_800, (WORKERS[1], 7), RESP),
            // Their results go back; the front answers.
            data_on(
                &wr[0],
                Direction::Egress,
                1_900,
                (WORKERS[0], 7),
                &framed("one"),
            ),
            data_on(
                &wr[1],
                Direction::Egress,
                1_950,
                (WORKERS[1], 7),
                &framed("two"),
            ),
            data_on(&fr[0], Direction::Ingress, 2_000, (101, 2), &framed("one")),
            data_on(&fr[1], Direction::Ingress, 2_100, (102, 2), &framed("two")),
            data_on(&s1, Direction::Egress, 2_200, (101, 2), RESP),
            data_on(&s2, Direction::Egress, 2_300, (102, 2), RESP),
        ]),
    );
    // The front's clients are on this node: their traces were held for
    // their client records, which never come here.
    l7.release_held(None, &mut spans);
    let server_of = |path: &str| {
        spans
            .iter()
            .find(|s| s.kind == SpanKind::Server && s.attr("url.path") == Some(&Value::from(path)))
            .unwrap_or_else(|| panic!("{path}: {spans:#?}"))
    };
    let call_of = |full: &str| {
        spans
            .iter()
            .find(|s| {
                s.kind == SpanKind::Client
                    && matches!(s.attr("url.full"), Some(Value::Str(u)) if u.ends_with(full))
            })
            .unwrap_or_else(|| panic!("{full}: {spans:#?}"))
    };
    for id in ["one", "two"] {
        let (srv, call) = (
            server_of(&format!("/r/{id}")),
            call_of(&format!("/down/{id}")),
        );
        assert_eq!(call.parent_span_id, Some(srv.span_id), "{id}");
        assert_eq!(call.trace_id, srv.trace_id, "{id}");
        assert_eq!(
            call.attr("sonde.link.evidence"),
            Some(&Value::Str("pipe".into())),
            "{id}"
        );
    }
    assert_eq!(l7.counts().handoffs_unmatched, 0);
    assert_eq!(l7.counts().calls_ambiguous(), 0);
    // Closing every end forgets the pipes' state.
    let mut spans = vec![];
    for c in ft.iter().chain(&fr).chain(&wt).chain(&wr) {
        l7.on_event(StreamEvent::Close(c.clone(), 3_000), &mut spans);
    }
    assert_eq!(l7.drops().handoffs, 0, "every write was read");
}
