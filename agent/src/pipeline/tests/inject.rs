//! `traceparent` injection: the ids the kernel named are the spans' ids.
use super::*;
use crate::event::ContextRecord;

const TRACE: [u8; 16] = [7; 16];
const SERVER: [u8; 8] = [1; 8];
const CLIENT: [u8; 8] = [2; 8];

fn named(c: &ConnInfo, enter_ns: u64, span: [u8; 8], parent: Option<[u8; 8]>) -> StreamEvent {
    StreamEvent::Context(
        c.clone(),
        ContextRecord {
            pid: c.pid,
            tid: c.pid,
            fd: c.fd,
            enter_ns,
            trace_id: TRACE,
            span_id: span,
            parent_id: parent,
            sampled: true,
            injected: c.role == Role::Client,
        },
    )
}

/// A service (pid 200) serves a request from another node and calls a
/// service on another node; the kernel named both.
fn run(incoming: &str, kernel_parent: [u8; 8]) -> (Vec<Span>, crate::correlation::Counts) {
    let mut l7 = l7();
    let s = conn(1, 200, Role::Server, "10.0.0.2:80", "10.0.0.9:4000", "mid");
    let d = conn(2, 200, Role::Client, "10.0.0.2:5000", "10.0.0.7:80", "mid");
    let req = format!("GET /in HTTP/1.1\r\nHost: x\r\n{incoming}\r\n");
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(s.clone()),
            StreamEvent::Open(d.clone()),
            named(&s, 1_000, SERVER, None),
            data(&s, Direction::Ingress, 1_000, req.as_bytes()),
            named(&d, 1_100, CLIENT, Some(kernel_parent)),
            data(
                &d,
                Direction::Egress,
                1_100,
                b"GET /out HTTP/1.1\r\nHost: y\r\n\r\n",
            ),
            data(&d, Direction::Ingress, 1_200, RESP),
            data(&s, Direction::Egress, 1_300, RESP),
        ],
    );
    (spans, l7.counts())
}

fn kind<'a>(spans: &'a [Span], k: &str) -> &'a Span {
    spans.iter().find(|s| s.kind.as_str() == k).unwrap()
}

#[test]
fn the_kernels_ids_name_the_server_and_the_injected_call() {
    let (spans, counts) = run("", SERVER);
    let (srv, cli) = (kind(&spans, "SERVER"), kind(&spans, "CLIENT"));
    assert_eq!(
        (srv.trace_id, srv.span_id, srv.parent_span_id),
        (TRACE, SERVER, None)
    );
    assert_eq!(
        (cli.trace_id, cli.span_id, cli.parent_span_id),
        (TRACE, CLIENT, Some(SERVER))
    );
    assert_eq!((counts.injected_agreed, counts.injected_disagreed), (1, 0));
}

#[test]
fn an_incoming_traceparent_names_the_trace_and_the_kernel_the_span() {
    let tp = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n";
    let trace = *b"\x0a\xf7\x65\x19\x16\xcd\x43\xdd\x84\x48\xeb\x21\x1c\x80\x31\x9c";
    let (spans, counts) = run(tp, SERVER);
    let (srv, cli) = (kind(&spans, "SERVER"), kind(&spans, "CLIENT"));
    assert_eq!((srv.trace_id, srv.span_id), (trace, SERVER));
    assert_eq!(
        srv.parent_span_id,
        Some(*b"\xb7\xad\x6b\x71\x69\x20\x33\x31")
    );
    // The kernel's injected trace is its provisional one here (the record
    // says TRACE): causality keeps the request's trace, the span keeps the
    // injected id, and the difference is counted.
    assert_eq!(
        (cli.trace_id, cli.span_id, cli.parent_span_id),
        (trace, CLIENT, Some(SERVER))
    );
    assert_eq!(counts.injected_disagreed, 1);
}

#[test]
fn a_kernel_parent_causality_does_not_confirm_is_counted_never_adopted() {
    let (spans, counts) = run("", [9; 8]);
    let cli = kind(&spans, "CLIENT");
    assert_eq!(
        (cli.trace_id, cli.span_id, cli.parent_span_id),
        (TRACE, CLIENT, Some(SERVER))
    );
    assert_eq!((counts.injected_agreed, counts.injected_disagreed), (0, 1));
}
