//! `sonde-otlp-receiver [--discard] [GRPC_ADDR] [HTTP_ADDR]`: prints each
//! received span as one line; with `--discard`, only counts them (once a
//! second, on stderr: a benchmark's sink). Defaults: 127.0.0.1:4317 and
//! 127.0.0.1:4318.
use std::{sync::Arc, time::Duration};

use sonde_otlp_receiver::{Receiver, Store};

#[tokio::main]
async fn main() {
    const USAGE: &str = "usage: sonde-otlp-receiver [--discard] [GRPC_ADDR] [HTTP_ADDR] \
                         (defaults 127.0.0.1:4317 127.0.0.1:4318)";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let discard = args.iter().any(|a| a == "--discard");
    args.retain(|a| a != "--discard");
    if args.len() > 2 {
        eprintln!("sonde-otlp-receiver: too many arguments\n{USAGE}");
        std::process::exit(2);
    }
    let mut args = args.into_iter();
    let grpc = args.next().unwrap_or_else(|| "127.0.0.1:4317".into());
    let http = args.next().unwrap_or_else(|| "127.0.0.1:4318".into());
    let parse = |s: &str| -> std::net::SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("sonde-otlp-receiver: {s:?} is not an address (IP:PORT): {e}\n{USAGE}");
            std::process::exit(2)
        })
    };
    let store = Arc::new(if discard {
        Store::discarding()
    } else {
        Store::default()
    });
    let r = match Receiver::start(parse(&grpc), parse(&http), store.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sonde-otlp-receiver: cannot listen on {grpc} and {http}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "OTLP receiver: gRPC on {}, HTTP on {}",
        r.grpc_addr, r.http_addr
    );
    if discard {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!("spans received: {}", store.spans_received());
        }
    }
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans = store.spans();
        for s in &spans[seen..] {
            println!(
                "{} {} {:?} trace={} parent={} {}ms",
                s.service(),
                s.span.name,
                s.span.kind,
                hex(&s.span.trace_id),
                hex(&s.span.parent_span_id),
                s.duration_ns() / 1_000_000
            );
        }
        seen = spans.len();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
