//! Privileged integration tests: the real probes on the running kernel,
//! observing real child processes that exchange known payloads over loopback.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE). Run through
//! `cargo xtask test`, which explains what is missing otherwise.
mod peer;
mod support;

use libtest_mimic::{Arguments, Trial};
use sonde::{
    connections::StreamEvent,
    event::{Direction, Role, Syscall},
    session::SessionConfig,
};
use support::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("peer") {
        peer::main(&args[2..]);
        return;
    }
    let mut args = Arguments::from_args();
    // Tests load their own probes and watch the whole machine: run one at a time.
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "capture tests need root to load eBPF programs (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE).\n\
             Run `sudo -E cargo xtask test`, or `cargo xtask test --unit` for the unprivileged tests."
        );
        std::process::exit(1);
    }
    let trials = vec![
        Trial::test("write_read", || {
            exchange("write", Syscall::Write, Syscall::Read)
        }),
        Trial::test("writev_readv_three_iovecs", || {
            exchange("writev", Syscall::Writev, Syscall::Readv)
        }),
        Trial::test("sendto_recvfrom", || {
            exchange("sendto", Syscall::Sendto, Syscall::Recvfrom)
        }),
        Trial::test("sendmsg_recvmsg_three_iovecs", || {
            exchange("sendmsg", Syscall::Sendmsg, Syscall::Recvmsg)
        }),
        Trial::test("sendmmsg_recvmmsg_two_messages", || {
            exchange("mmsg", Syscall::Sendmmsg, Syscall::Recvmmsg)
        }),
        Trial::test("io_uring_send_recv", || {
            uring("uring");
            Ok(())
        }),
        Trial::test("io_uring_sendmsg_recvmsg_three_iovecs", || {
            uring("uring-msg");
            Ok(())
        }),
        Trial::test("sendfile_reports_bytes_and_timing", || {
            sendfile();
            Ok(())
        }),
        Trial::test("quiet_connection_reports_nothing_it_need_not", || {
            quiet();
            Ok(())
        }),
        Trial::test("quiet_write_after_a_reported_read_keeps_its_count", || {
            quiet_write_after_reported_read();
            Ok(())
        }),
        Trial::test("accept_without_sockaddr_still_gets_its_tuple", || {
            exchange("null-accept", Syscall::Write, Syscall::Read)
        }),
        Trial::test("whole_frames_socket_copies_up_to_the_ceiling", || {
            whole_frames_socket();
            Ok(())
        }),
        Trial::test("payload_larger_than_capture_size", || {
            payload_larger_than_capture();
            Ok(())
        }),
        Trial::test("connection_opened_before_agent", || {
            preexisting_connection();
            Ok(())
        }),
        Trial::test("agent_traffic_is_not_reported", || {
            own_traffic_is_filtered();
            Ok(())
        }),
        Trial::test("pid_filter_limits_capture", || {
            pid_filter();
            Ok(())
        }),
        Trial::test(
            "flood_counts_drops_and_keeps_delivered_events_intact",
            || {
                flood();
                Ok(())
            },
        ),
        Trial::test("capture_cli_shows_curl_against_python_http_server", || {
            cli_curl();
            Ok(())
        }),
        Trial::test("doctor_reports_this_kernel", || {
            doctor();
            Ok(())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// One request/response through `mode`'s syscall family, checked field by
/// field on both ends.
fn exchange(mode: &str, send: Syscall, recv: Syscall) -> Result<(), libtest_mimic::Failed> {
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    exchange_in(&rt, &mut session, mode, send, recv);
    Ok(())
}

fn exchange_in(
    rt: &tokio::runtime::Runtime,
    session: &mut sonde::session::Session,
    mode: &str,
    send: Syscall,
    recv: Syscall,
) {
    let (server, client) = pair(mode, &[]);
    let (s, c) = (server.key(), client.key());
    let (s_local, c_local) = (server.local, client.local);
    assert_eq!(client.remote, s_local);
    let events = complete(rt, session, server, client);

    let req = peer::request(mode);
    let resp = peer::response(mode);
    for (pid, fd, role, local, remote, sent, received) in [
        (c.0, c.1, Role::Client, c_local, s_local, &req, &resp),
        (s.0, s.1, Role::Server, s_local, c_local, &resp, &req),
    ] {
        let data = data_of(&events, pid);
        assert!(!data.is_empty(), "no data events for {role:?} pid {pid}");
        let mut egress = vec![];
        let mut ingress = vec![];
        for (conn, d) in &data {
            // Only the socket: the peer's file writes and stdout pipe are not reported.
            assert_eq!(d.fd, fd, "event on a non-socket fd: {d:?}");
            assert!(
                !d.payload.windows(9).any(|w| w == b"FILE-DATA"),
                "file write captured"
            );
            assert_eq!(conn.role, role);
            let tuple = conn.tuple.expect("tuple known");
            assert_eq!(
                (tuple.local, tuple.remote),
                (local, remote),
                "tuple of {role:?}"
            );
            assert!(
                d.enter_ns <= d.exit_ns,
                "enter {} > exit {}",
                d.enter_ns,
                d.exit_ns
            );
            assert_eq!(
                d.bytes as usize,
                d.payload.len(),
                "small payloads are captured whole"
            );
            match d.direction {
                Direction::Egress => {
                    assert_eq!(d.syscall, send);
                    egress.extend_from_slice(&d.payload);
                }
                Direction::Ingress => {
                    assert_eq!(d.syscall, recv);
                    ingress.extend_from_slice(&d.payload);
                }
            }
        }
        assert_eq!(&egress, sent, "{role:?} egress bytes");
        assert_eq!(&ingress, received, "{role:?} ingress bytes");
    }
    // Exactly one connection per side, opened and closed.
    for (pid, fd) in [s, c] {
        let opens = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Open(i) if (i.pid, i.fd) == (pid, fd)))
            .count();
        assert_eq!(opens, 1, "open events for pid {pid} fd {fd}");
    }
}

/// Whether this kernel has kprobes, by its own interfaces (not sonde's).
fn kernel_has_kprobes() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

/// io_uring I/O: captured through the kprobe path where the kernel has
/// kprobes, with the same checks as the syscall families; invisible (and
/// so reported by doctor) where it has none.
fn uring(mode: &str) {
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    if kernel_has_kprobes() {
        assert!(
            !session.kernel_io_attached(),
            "the kprobes wait until io_uring is used"
        );
        // The first io_uring request on a traced socket makes the agent
        // attach them; this exchange may be missed in part.
        let (server, client) = pair(mode, &[]);
        complete(&rt, &mut session, server, client);
        let mut waited = 0;
        while !session.kernel_io_attached() {
            waited += 1;
            assert!(waited < 200, "no kprobes attached after io_uring was used");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        exchange_in(
            &rt,
            &mut session,
            mode,
            Syscall::TcpSendmsg,
            Syscall::TcpRecvmsg,
        );
        return;
    }
    let (server, client) = pair(mode, &[]);
    let (s, c) = (server.key(), client.key());
    let events = complete(&rt, &mut session, server, client);
    for (pid, fd) in [s, c] {
        let opens = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Open(i) if (i.pid, i.fd) == (pid, fd)))
            .count();
        assert_eq!(
            opens, 1,
            "the connection itself is still seen (pid {pid} fd {fd})"
        );
        assert!(
            data_of(&events, pid).is_empty(),
            "no syscall carried payload, and there are no kprobes here"
        );
    }
}

fn sendfile() {
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    let (server, client) = pair("sendfile", &[]);
    let (s, c) = (server.key(), client.key());
    let events = complete(&rt, &mut session, server, client);
    let out: Vec<_> = data_of(&events, s.0)
        .into_iter()
        .filter(|(_, d)| d.direction == Direction::Egress)
        .collect();
    assert!(!out.is_empty(), "no server egress");
    let total: u64 = out.iter().map(|(_, d)| d.bytes).sum();
    assert_eq!(total as usize, peer::response("sendfile").len());
    for (conn, d) in out {
        assert_eq!(d.syscall, Syscall::Sendfile);
        assert_eq!(conn.role, Role::Server);
        assert!(d.payload.is_empty(), "sendfile has no user buffer to copy");
        assert_ne!(d.flags & sonde_common::data_flags::NO_PAYLOAD_SOURCE, 0);
        assert!(d.enter_ns <= d.exit_ns);
    }
    // The client read it with read(2), payload and all.
    assert_eq!(
        bytes_of(&events, c.0, Direction::Ingress),
        peer::response("sendfile")
    );
}

/// A released socket whose thread read no reported input: neither its
/// write nor its read is reported, and both are counted.
fn quiet() {
    let (server, client) = pair("write", &["--wait"]);
    let (s, c) = (server.key(), client.key());
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    session
        .set_quiet(c.0, c.1)
        .expect("client socket is tracked");
    assert!(
        session.set_quiet(c.0, 9999).is_err(),
        "an untracked fd is refused"
    );
    let before = session.kernel_counters().quiet_skipped;
    let events = complete(&rt, &mut session, server, client);
    let quiet = data_of(&events, c.0);
    assert!(
        quiet.is_empty(),
        "a released socket's calls reported: {quiet:?}"
    );
    // Its write and its read, at least (a read may take several calls).
    let skipped = session.kernel_counters().quiet_skipped - before;
    assert!(skipped >= 2, "{skipped} calls counted as skipped");
    // The other end of the same connection is unaffected.
    assert_eq!(
        bytes_of(&events, s.0, Direction::Ingress),
        peer::request("write")
    );
    assert_eq!(
        bytes_of(&events, s.0, Direction::Egress),
        peer::response("write")
    );
}

/// A write on a released socket right after a reported read, in the tick
/// that read's record carries: reported, with its count and timing but no
/// payload (user space learns that the input wrote something).
fn quiet_write_after_reported_read() {
    let (mut server, mut client) = pair("two", &["--wait"]);
    let (s, c) = (server.key(), client.key());
    let (s_side, c_side) = (server.side_fd(), client.side_fd());
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    session
        .set_quiet(s.0, s_side)
        .expect("the server's second socket is tracked");
    let events = complete(&rt, &mut session, server, client);
    let on_side: Vec<_> = data_of(&events, s.0)
        .into_iter()
        .filter(|(conn, _)| conn.fd == s_side)
        .collect();
    assert!(
        !on_side.is_empty(),
        "the write after the read was not reported"
    );
    let mut sent = 0;
    for (_, d) in &on_side {
        assert_eq!(d.direction, Direction::Egress, "{d:?}");
        assert!(
            d.payload.is_empty(),
            "payload copied for a quiet socket: {d:?}"
        );
        assert_ne!(d.flags & sonde_common::data_flags::PAYLOAD_SKIPPED, 0);
        assert!(d.enter_ns <= d.exit_ns);
        sent += d.bytes;
    }
    assert_eq!(
        sent as usize,
        peer::response("two").len(),
        "byte count kept"
    );
    // The read it followed, and the write's tick is that read's.
    let read = data_of(&events, s.0)
        .into_iter()
        .rfind(|(conn, d)| conn.fd == s.1 && d.direction == Direction::Ingress)
        .expect("the request's read")
        .1;
    assert_eq!(
        bytes_of(&events, s.0, Direction::Ingress),
        peer::request("two")
    );
    assert_ne!(read.tick, 0);
    assert!(
        on_side.iter().all(|(_, d)| d.tick == read.tick),
        "{on_side:?} after {read:?}"
    );
    // The client's ends are not released: all reported, payload and all.
    assert_eq!(
        bytes_of(&events, c.0, Direction::Egress),
        peer::request("two")
    );
    let side_in: Vec<u8> = data_of(&events, c.0)
        .into_iter()
        .filter(|(conn, d)| conn.fd == c_side && d.direction == Direction::Ingress)
        .flat_map(|(_, d)| d.payload.clone())
        .collect();
    assert_eq!(side_in, peer::response("two"));
}

fn payload_larger_than_capture() {
    let rt = runtime();
    let mut cfg = SessionConfig::default();
    cfg.probes.capture_size = 1024;
    let mut session = start(&rt, cfg);
    let (server, client) = pair("big", &[]);
    let (s, c) = (server.key(), client.key());
    let events = complete(&rt, &mut session, server, client);
    for (pid, tag) in [(c.0, b'Q'), (s.0, b'R')] {
        let sent: Vec<_> = data_of(&events, pid)
            .into_iter()
            .filter(|(_, d)| d.direction == Direction::Egress)
            .collect();
        let total: u64 = sent.iter().map(|(_, d)| d.bytes).sum();
        assert_eq!(
            total as usize,
            peer::BIG,
            "byte counts cover the whole payload"
        );
        let (_, first) = sent[0];
        assert_eq!(first.payload.len(), 1024, "capture stops at --capture-size");
        assert!(first.truncated());
        assert_eq!(
            first.payload[..],
            peer::big_payload(tag)[..1024],
            "captured prefix"
        );
    }
}

/// A socket user space marked as carrying a framed protocol (AMQP) is
/// copied up to the ceiling, whatever `--capture-size` says; others are not.
fn whole_frames_socket() {
    let rt = runtime();
    let mut cfg = SessionConfig::default();
    cfg.probes.capture_size = 1024;
    let mut session = start(&rt, cfg);
    let (server, client) = pair("big", &["--wait"]);
    let (s, c) = (server.key(), client.key());
    session
        .set_whole(c.0, c.1)
        .expect("client socket is tracked");
    assert!(
        session.set_whole(c.0, 9999).is_err(),
        "an untracked fd is refused"
    );
    let events = complete(&rt, &mut session, server, client);
    for (pid, tag, want) in [(c.0, b'Q', sonde_common::MAX_CAPTURE), (s.0, b'R', 1024)] {
        let sent: Vec<_> = data_of(&events, pid)
            .into_iter()
            .filter(|(_, d)| d.direction == Direction::Egress)
            .collect();
        let total: u64 = sent.iter().map(|(_, d)| d.bytes).sum();
        assert_eq!(total as usize, peer::BIG);
        let (_, first) = sent[0];
        assert!(first.bytes as usize > want, "{}", first.bytes);
        assert_eq!(first.payload.len(), want);
        assert_eq!(first.payload[..], peer::big_payload(tag)[..want]);
    }
}

fn preexisting_connection() {
    let (server, client) = pair("write", &["--wait"]);
    let (s, c) = (server.key(), client.key());
    let (s_local, c_local) = (server.local, client.local);
    // The connection exists before the agent starts.
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    assert!(
        session.stats().preexisting_connections >= 2,
        "scan found {:?}",
        session.stats()
    );
    let events = complete(&rt, &mut session, server, client);
    let cdata = data_of(&events, c.0);
    let (conn, d) = cdata
        .iter()
        .find(|(_, d)| d.direction == Direction::Egress)
        .expect("client egress");
    assert!(conn.preexisting);
    assert_eq!(conn.role, Role::Client);
    assert_eq!(
        conn.tuple.map(|t| (t.local, t.remote)),
        Some((c_local, s_local))
    );
    assert_eq!(d.payload, peer::request("write"));
    let sdata = data_of(&events, s.0);
    let (conn, d) = sdata
        .iter()
        .find(|(_, d)| d.direction == Direction::Egress)
        .expect("server egress");
    assert_eq!(conn.role, Role::Server, "role from the listening socket");
    assert_eq!(d.payload, peer::response("write"));
}

fn own_traffic_is_filtered() {
    use std::io::{Read, Write};
    let rt = runtime();
    let mut session = start(&rt, SessionConfig::default());
    // The agent's own process talks to itself over TCP...
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, _) = l.accept().unwrap();
    a.write_all(b"SELF-TRAFFIC").unwrap();
    let mut buf = [0u8; 12];
    b.read_exact(&mut buf).unwrap();
    drop((a, b));
    // ...while a peer pair, traced as usual, proves the probes are live.
    let (server, client) = pair("write", &[]);
    let c = client.pid;
    let events = complete(&rt, &mut session, server, client);
    assert!(!data_of(&events, c).is_empty(), "peer traffic seen");
    let me = std::process::id();
    for e in &events {
        assert_ne!(e.conn().pid, me, "agent's own socket reported: {e:?}");
        if let StreamEvent::Data(_, d) = e {
            assert!(!d.payload.windows(12).any(|w| w == b"SELF-TRAFFIC"));
        }
    }
}

fn pid_filter() {
    let (server, client) = pair("write", &["--wait"]);
    let (s, c) = (server.key(), client.key());
    let rt = runtime();
    let mut cfg = SessionConfig::default();
    cfg.probes.pids = vec![c.0];
    let mut session = start(&rt, cfg);
    // The server answers before the client's close, so its events, had the
    // kernel let them through, would be in the stream by then. (Its own
    // close is never reported: that is the point.)
    let (mut server, mut client) = (server, client);
    server.go();
    client.go();
    client.finish();
    server.finish();
    let events = collect(&rt, &mut session, |ev| closed(ev, c));
    assert!(
        !data_of(&events, c.0).is_empty(),
        "the filtered-in pid is traced"
    );
    let pids: Vec<u32> = events.iter().map(|e| e.conn().pid).collect();
    assert!(
        !pids.contains(&s.0),
        "server pid {} leaked through the filter: {pids:?}",
        s.0
    );
    assert!(
        pids.iter().all(|&p| p == c.0),
        "only pid {} expected: {pids:?}",
        c.0
    );
}

fn flood() {
    let rt = runtime();
    let mut cfg = SessionConfig::default();
    // A ring far smaller than the burst, drained only by the timer.
    cfg.probes.ringbuf_bytes = 16 * 1024;
    cfg.probes.capture_size = 1024;
    cfg.probes.wakeup_bytes = u64::MAX;
    cfg.poll_interval = std::time::Duration::from_millis(50);
    let mut session = start(&rt, cfg);
    let (server, client) = pair("flood", &[]);
    let c = client.key();
    let events = complete(&rt, &mut session, server, client);
    let k = session.kernel_counters();
    assert!(
        k.ringbuf_drops > 0,
        "expected ring buffer drops, counters: {k:?}"
    );
    // Every delivered client write is intact: its payload is exactly the
    // message its own sequence number names.
    let sent: Vec<_> = data_of(&events, c.0)
        .into_iter()
        .filter(|(_, d)| d.direction == Direction::Egress)
        .collect();
    assert!(!sent.is_empty(), "some flood events delivered");
    assert!(
        sent.len() < peer::FLOOD_COUNT,
        "not all delivered, yet drops counted: {}",
        sent.len()
    );
    let mut last = None;
    for (_, d) in &sent {
        assert_eq!(d.bytes as usize, peer::FLOOD_MSG);
        let seq: u32 = std::str::from_utf8(&d.payload[4..12])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(d.payload, peer::flood_message(seq), "payload of seq {seq}");
        assert!(last < Some(seq), "in order");
        last = Some(seq);
    }
    // The agent is still alive and capturing after the flood.
    let (server, client) = pair("write", &[]);
    let c2 = client.pid;
    let after = complete(&rt, &mut session, server, client);
    assert_eq!(
        bytes_of(&after, c2, Direction::Egress),
        peer::request("write")
    );
}

fn cli_curl() {
    use std::{
        io::BufRead,
        process::{Command, Stdio},
    };
    let sonde = env!("CARGO_BIN_EXE_sonde");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = Killed(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    // python prints "Serving HTTP" once it listens.
    let mut err = std::io::BufReader::new(http.0.stderr.take().unwrap());
    let mut capture = Killed(
        Command::new(sonde)
            .args(["capture", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sonde capture"),
    );
    // Startup logs what it attached, then "capturing".
    let mut cerr = std::io::BufReader::new(capture.0.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.lines().last().is_some_and(|l| l.contains("capturing")) {
        let mut line = String::new();
        if cerr.read_line(&mut line).unwrap() == 0 {
            panic!("sonde capture did not start:\n{seen}");
        }
        seen.push_str(&line);
    }
    // Wait until the HTTP server is accepting.
    let mut ready = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ready, "http.server never listened");
    let out = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Read JSON lines until both sides of curl's exchange are seen.
    let mut lines = std::io::BufReader::new(capture.0.stdout.take().unwrap()).lines();
    let (mut request, mut response) = (false, false);
    let deadline = std::time::Instant::now() + DEADLINE;
    while !(request && response) {
        assert!(
            std::time::Instant::now() < deadline,
            "curl exchange not captured"
        );
        let Some(Ok(l)) = lines.next() else {
            panic!("sonde capture ended")
        };
        let v: serde_json::Value = serde_json::from_str(&l).expect("JSON line");
        let payload = v["data"]["payload"].as_str().unwrap_or("");
        let egress = v["data"]["direction"] == "egress";
        if v["comm"] == "curl" && egress && payload.starts_with("GET / HTTP/1.1\\r\\n") {
            assert_eq!(v["role"], "client");
            assert_eq!(v["remote"], format!("127.0.0.1:{port}"));
            request = true;
        }
        if v["comm"] == "python3" && egress && payload.starts_with("HTTP/1.0 200 OK\\r\\n") {
            assert_eq!(v["role"], "server");
            assert_eq!(v["local"], format!("127.0.0.1:{port}"));
            response = true;
        }
    }
    unsafe { libc::kill(capture.0.id() as i32, libc::SIGINT) };
    let status = capture.0.wait().unwrap();
    assert!(status.success(), "sonde capture exit: {status}");
    drop(http);
    drop(err.fill_buf());
}

/// `bpf_prog_info.verified_insns` exists since Linux 5.16.
fn kernel_reports_verified_insns() -> bool {
    sonde::probes::compat::running().is_some_and(|v| v >= (5, 16))
}

fn doctor() {
    let sonde = env!("CARGO_BIN_EXE_sonde");
    let out = std::process::Command::new(sonde)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor says capture is impossible: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let check = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check"))
            .clone()
    };
    assert_eq!(check("tracepoints")["available"], true);
    // Every program of the compat table loads here, or is skipped with its
    // reason; none is refused (the VM matrix runs this on each kernel).
    for tp in v["tracepoints"].as_array().unwrap() {
        if tp["required"] == true {
            assert_eq!(tp["state"], "attached", "{tp}");
        }
        assert!(
            tp["state"] == "attached" || tp["state"] == "skipped",
            "refused by this kernel: {tp}"
        );
        if tp["state"] == "skipped" {
            assert!(
                !tp["detail"].as_str().unwrap().is_empty(),
                "skipped without a reason: {tp}"
            );
        }
        // Headroom under the verifier's million-instruction limit, where the
        // kernel reports the count (5.16+): older verifiers explore several
        // times more states for the same program (6.1 refused at the limit
        // a `sys_exit_writev` that 6.18 verified in 122,545).
        if let Some(n) = tp["verified_insns"].as_u64() {
            assert!(n < 100_000, "verifier cost near the limit: {tp}");
        } else if tp["state"] == "attached" && kernel_reports_verified_insns() {
            panic!("no verifier count for a loaded program: {tp}");
        }
    }
    // Accepted sockets' tuples come from the kernel wherever it has BTF.
    assert_eq!(
        check("accepts")["available"],
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "{}",
        check("accepts")
    );
    // kprobes: compare with the kernel's own interfaces.
    let kprobes_exist = kernel_has_kprobes();
    assert_eq!(
        check("kprobes")["available"],
        kprobes_exist,
        "{}",
        check("kprobes")
    );
    if !kprobes_exist {
        assert!(check("kprobes")["detail"]
            .as_str()
            .unwrap()
            .contains("CONFIG_KPROBES=n"));
    }
    // The probe strategy: the io_uring path runs on kprobes exactly where
    // they exist, and says why not elsewhere.
    let strategy = v["strategy"].as_str().unwrap();
    let hook = |name: &str| {
        v["tracepoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["hook"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))
            .clone()
    };
    for h in [
        "kprobe/tcp_sendmsg",
        "kretprobe/tcp_sendmsg",
        "kprobe/tcp_recvmsg",
        "kretprobe/tcp_recvmsg",
        "tracepoint/io_uring/io_uring_file_get",
    ] {
        let row = hook(h);
        if kprobes_exist {
            assert_eq!(row["state"], "attached", "{row}");
        } else {
            assert_eq!(row["state"], "skipped", "{row}");
            assert!(
                row["detail"].as_str().unwrap().contains("CONFIG_KPROBES=n"),
                "{row}"
            );
        }
    }
    if kprobes_exist {
        assert!(
            strategy.contains("io_uring socket payload: kprobes on tcp_sendmsg/tcp_recvmsg"),
            "{strategy}"
        );
    } else {
        assert!(
            strategy.contains("io_uring socket payload: not captured (this kernel has no kprobes"),
            "{strategy}"
        );
    }
    // fentry: whichever way it goes, an unavailable verdict carries its reason.
    let fentry = check("fentry");
    if fentry["available"] == false {
        assert!(
            fentry["detail"]
                .as_str()
                .unwrap()
                .starts_with("unavailable: "),
            "{fentry}"
        );
    }
    let human = std::process::Command::new(sonde)
        .arg("doctor")
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("capture: possible"), "{human}");
}
