//! The traffic peer: this test binary re-executed as a child process, so its
//! traffic is not the agent's own. It speaks one syscall family, chosen on
//! the command line, and reports its socket's fd and tuple on stdout.
//!
//! `peer server <mode> [--wait] [--null-accept]` listens on 127.0.0.1:0 and
//! prints `LISTEN <port>`; `peer client <mode> <port> [--wait]` connects.
//! Both print `SOCKET fd=<fd> local=<addr> remote=<addr>`, then (with
//! `--wait`) `READY` and wait for a line on stdin, then exchange one request
//! and one response, print `DONE` and close. In mode `two` the client opens
//! a second connection (`SIDE fd=<fd>`, printed by both) and the response
//! comes back on it: the server writes it right after reading the request
//! on the first.
use std::{
    io::{BufRead, Write},
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, IntoRawFd},
};

pub const FLOOD_MSG: usize = 512;
pub const FLOOD_COUNT: usize = 20_000;

/// The request a client of `mode` sends.
pub fn request(mode: &str) -> Vec<u8> {
    let mut v = format!("PING:{mode}:").into_bytes();
    v.extend((0..40u8).map(|i| b'a' + i % 26));
    v
}

/// The response a server of `mode` sends.
pub fn response(mode: &str) -> Vec<u8> {
    let mut v = format!("PONG:{mode}:").into_bytes();
    v.extend((0..40u8).map(|i| b'A' + i % 26));
    v
}

/// The large-payload mode sends this many bytes each way.
pub const BIG: usize = 64 * 1024;

pub fn big_payload(tag: u8) -> Vec<u8> {
    let mut v = vec![tag; 8];
    v.extend((0..BIG - 8).map(|i| (i % 251) as u8));
    v
}

/// Flood message `seq`: a header carrying the sequence number, then bytes
/// derived from it, so every delivered copy can be checked on its own.
pub fn flood_message(seq: u32) -> Vec<u8> {
    let mut v = format!("SEQ:{seq:08}:").into_bytes();
    while v.len() < FLOOD_MSG {
        v.push(b'0' + ((seq as usize + v.len()) % 10) as u8);
    }
    v
}

fn out(line: String) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn check(rc: isize, what: &str) -> usize {
    if rc < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    rc as usize
}

/// Sends all of `data` with the syscall family of `mode`.
fn send(fd: i32, mode: &str, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        let n = unsafe {
            match mode {
                "write" | "big" | "null-accept" | "sendfile" => {
                    check(libc::write(fd, rest.as_ptr().cast(), rest.len()), "write")
                }
                "mmsg" => {
                    // Two messages: the first 10 bytes, then the rest in
                    // three segments (each message's iovecs are walked too).
                    let a = rest.len().min(10);
                    let first = [libc::iovec {
                        iov_base: rest.as_ptr() as *mut _,
                        iov_len: a,
                    }];
                    let second = three_iovecs(rest[a..].as_ptr() as *mut u8, rest.len() - a);
                    let mut msgs: [libc::mmsghdr; 2] = std::mem::zeroed();
                    msgs[0].msg_hdr.msg_iov = first.as_ptr() as *mut _;
                    msgs[0].msg_hdr.msg_iovlen = 1;
                    msgs[1].msg_hdr.msg_iov = second.as_ptr() as *mut _;
                    msgs[1].msg_hdr.msg_iovlen = 3;
                    let vlen = if rest.len() > a { 2 } else { 1 };
                    let sent = check(
                        libc::sendmmsg(fd, msgs.as_mut_ptr(), vlen, 0) as isize,
                        "sendmmsg",
                    );
                    msgs[..sent].iter().map(|m| m.msg_len as usize).sum()
                }
                "sendto" => check(
                    libc::sendto(fd, rest.as_ptr().cast(), rest.len(), 0, std::ptr::null(), 0),
                    "sendto",
                ),
                "writev" | "sendmsg" => {
                    let iov = three_iovecs(rest.as_ptr() as *mut u8, rest.len());
                    if mode == "writev" {
                        check(libc::writev(fd, iov.as_ptr(), 3), "writev")
                    } else {
                        let mut msg: libc::msghdr = std::mem::zeroed();
                        msg.msg_iov = iov.as_ptr() as *mut _;
                        msg.msg_iovlen = 3;
                        check(libc::sendmsg(fd, &msg, 0), "sendmsg")
                    }
                }
                "uring" | "uring-msg" => uring::send(fd, mode, rest),
                m => panic!("unknown mode {m}"),
            }
        };
        off += n;
    }
}

/// Receives exactly `len` bytes with the syscall family of `mode`.
fn recv(fd: i32, mode: &str, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        let want = len - got.len();
        let mut buf = vec![0u8; want];
        let n = unsafe {
            match mode {
                "write" | "big" | "null-accept" | "sendfile" => {
                    check(libc::read(fd, buf.as_mut_ptr().cast(), want), "read")
                }
                "mmsg" => {
                    // Two buffers: the first message takes up to 10 bytes,
                    // the second the rest, in three segments.
                    let a = want.min(10);
                    let (x, y) = buf.split_at_mut(a);
                    let first = [libc::iovec {
                        iov_base: x.as_mut_ptr().cast(),
                        iov_len: x.len(),
                    }];
                    let second = three_iovecs(y.as_mut_ptr(), y.len());
                    let mut msgs: [libc::mmsghdr; 2] = std::mem::zeroed();
                    msgs[0].msg_hdr.msg_iov = first.as_ptr() as *mut _;
                    msgs[0].msg_hdr.msg_iovlen = 1;
                    msgs[1].msg_hdr.msg_iov = second.as_ptr() as *mut _;
                    msgs[1].msg_hdr.msg_iovlen = 3;
                    let vlen = if y.is_empty() { 1 } else { 2 };
                    let n = check(
                        libc::recvmmsg(
                            fd,
                            msgs.as_mut_ptr(),
                            vlen,
                            libc::MSG_WAITFORONE,
                            std::ptr::null_mut(),
                        ) as isize,
                        "recvmmsg",
                    );
                    // Bytes of a short first message and the second are not
                    // contiguous in `buf`: compact them.
                    let l0 = msgs[0].msg_len as usize;
                    let l1 = if n > 1 { msgs[1].msg_len as usize } else { 0 };
                    buf.copy_within(a..a + l1, l0);
                    l0 + l1
                }
                "sendto" => check(
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        want,
                        0,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    ),
                    "recvfrom",
                ),
                "writev" | "sendmsg" => {
                    let iov = three_iovecs(buf.as_mut_ptr(), want);
                    if mode == "writev" {
                        check(libc::readv(fd, iov.as_ptr(), 3), "readv")
                    } else {
                        let mut msg: libc::msghdr = std::mem::zeroed();
                        msg.msg_iov = iov.as_ptr() as *mut _;
                        msg.msg_iovlen = 3;
                        check(libc::recvmsg(fd, &mut msg, 0), "recvmsg")
                    }
                }
                "uring" | "uring-msg" => uring::recv(fd, mode, &mut buf),
                m => panic!("unknown mode {m}"),
            }
        };
        if n == 0 {
            panic!("peer closed after {} of {len} bytes", got.len());
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// `len` bytes at `p` as three iovecs: 5 bytes, 7 bytes and the rest (empty
/// segments for a short tail).
fn three_iovecs(p: *mut u8, len: usize) -> [libc::iovec; 3] {
    let a = len.min(5);
    let b = (len - a).min(7);
    let at = |off: usize| p.wrapping_add(off).cast();
    [
        libc::iovec {
            iov_base: at(0),
            iov_len: a,
        },
        libc::iovec {
            iov_base: at(a),
            iov_len: b,
        },
        libc::iovec {
            iov_base: at(a + b),
            iov_len: len - a - b,
        },
    ]
}

/// Sends and receives through io_uring: no read/write/send/recv syscall
/// carries the payload, only io_uring_enter.
mod uring {
    use io_uring::{opcode, types::Fd, IoUring};

    fn run(entry: io_uring::squeue::Entry) -> usize {
        thread_local! {
            static RING: std::cell::RefCell<IoUring> = std::cell::RefCell::new(
                IoUring::new(4).unwrap_or_else(|e| panic!("io_uring_setup: {e} (io_uring disabled on this kernel?)")),
            );
        }
        RING.with(|r| {
            let mut ring = r.borrow_mut();
            unsafe { ring.submission().push(&entry.user_data(1)) }
                .expect("submission queue has room");
            ring.submit_and_wait(1).expect("io_uring_enter");
            let cqe = ring.completion().next().expect("a completion");
            if cqe.result() < 0 {
                panic!(
                    "io_uring op: {}",
                    std::io::Error::from_raw_os_error(-cqe.result())
                );
            }
            cqe.result() as usize
        })
    }

    /// `uring`: one flat buffer (IORING_OP_SEND); `uring-msg`: three iovecs
    /// (IORING_OP_SENDMSG).
    pub fn send(fd: i32, mode: &str, data: &[u8]) -> usize {
        if mode == "uring" {
            return run(opcode::Send::new(Fd(fd), data.as_ptr(), data.len() as u32).build());
        }
        let iov = super::three_iovecs(data.as_ptr() as *mut u8, data.len());
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut _;
        msg.msg_iovlen = 3;
        run(opcode::SendMsg::new(Fd(fd), &msg).build())
    }

    pub fn recv(fd: i32, mode: &str, buf: &mut [u8]) -> usize {
        if mode == "uring" {
            return run(opcode::Recv::new(Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build());
        }
        let iov = super::three_iovecs(buf.as_mut_ptr(), buf.len());
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut _;
        msg.msg_iovlen = 3;
        run(opcode::RecvMsg::new(Fd(fd), &mut msg).build())
    }
}

fn wait_for_go(wait: bool) {
    if wait {
        out("READY".into());
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}

fn report(fd: i32) {
    let (local, remote) = unsafe { names(fd) };
    out(format!("SOCKET fd={fd} local={local} remote={remote}"));
}

unsafe fn names(fd: i32) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let s = std::mem::ManuallyDrop::new(unsafe {
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    (s.local_addr().unwrap(), s.peer_addr().unwrap())
}

/// Sends `data` from a temporary file with sendfile(2).
fn send_file(fd: i32, data: &[u8]) {
    let path = std::env::temp_dir().join(format!("sonde-sendfile-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut off: libc::off_t = 0;
    while (off as usize) < data.len() {
        let left = data.len() - off as usize;
        check(
            unsafe { libc::sendfile(fd, f.as_raw_fd(), &mut off, left) },
            "sendfile",
        );
    }
    let _ = std::fs::remove_file(path);
}

/// A file write between socket calls: it must never show up in capture.
fn write_a_file() {
    let path = std::env::temp_dir().join(format!("sonde-peer-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    let data = b"FILE-DATA-MUST-NOT-BE-CAPTURED";
    unsafe { libc::write(f.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    drop(f);
    let _ = std::fs::remove_file(path);
}

pub fn main(args: &[String]) {
    let role = args[0].as_str();
    let mode = args[1].as_str();
    let wait = args.iter().any(|a| a == "--wait");
    match role {
        "server" => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            out(format!("LISTEN {}", l.local_addr().unwrap().port()));
            let fd = if mode == "null-accept" {
                // Like libuv: no sockaddr, so the kernel cannot tell the tuple.
                check(
                    unsafe {
                        libc::accept4(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), 0)
                    } as isize,
                    "accept4",
                ) as i32
            } else {
                l.accept().unwrap().0.into_raw_fd()
            };
            report(fd);
            let side = (mode == "two").then(|| {
                let side = l.accept().unwrap().0.into_raw_fd();
                out(format!("SIDE fd={side}"));
                side
            });
            wait_for_go(wait);
            match mode {
                "two" => {
                    let side = side.unwrap();
                    assert_eq!(recv(fd, "write", request(mode).len()), request(mode));
                    send(side, "write", &response(mode));
                    unsafe { libc::close(side) };
                }
                "flood" => {
                    let mut total = 0;
                    let mut buf = vec![0u8; 65536];
                    while total < FLOOD_MSG * FLOOD_COUNT {
                        let n = check(
                            unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) },
                            "read",
                        );
                        assert!(n > 0, "flood client went away");
                        total += n;
                    }
                    send(fd, "write", b"FLOOD-OVER");
                }
                "big" => {
                    let req = recv(fd, mode, BIG);
                    assert_eq!(req, big_payload(b'Q'));
                    send(fd, mode, &big_payload(b'R'));
                }
                "sendfile" => {
                    let req = recv(fd, mode, request(mode).len());
                    assert_eq!(req, request(mode));
                    send_file(fd, &response(mode));
                }
                _ => {
                    let req = recv(fd, mode, request(mode).len());
                    assert_eq!(req, request(mode));
                    send(fd, mode, &response(mode));
                }
            }
            unsafe { libc::close(fd) };
            out("DONE".into());
            drop(l);
        }
        "client" => {
            let port: u16 = args[2].parse().unwrap();
            let fd = TcpStream::connect(("127.0.0.1", port))
                .unwrap()
                .into_raw_fd();
            report(fd);
            let side = (mode == "two").then(|| {
                let side = TcpStream::connect(("127.0.0.1", port))
                    .unwrap()
                    .into_raw_fd();
                out(format!("SIDE fd={side}"));
                side
            });
            wait_for_go(wait);
            match mode {
                "two" => {
                    let side = side.unwrap();
                    send(fd, "write", &request(mode));
                    let got = recv(side, "write", response(mode).len());
                    assert_eq!(got, response(mode));
                    unsafe { libc::close(side) };
                }
                "flood" => {
                    for seq in 0..FLOOD_COUNT as u32 {
                        send(fd, "write", &flood_message(seq));
                    }
                    assert_eq!(recv(fd, "write", 10), b"FLOOD-OVER");
                }
                "big" => {
                    send(fd, mode, &big_payload(b'Q'));
                    assert_eq!(recv(fd, mode, BIG), big_payload(b'R'));
                }
                _ => {
                    write_a_file();
                    send(fd, mode, &request(mode));
                    write_a_file();
                    assert_eq!(recv(fd, mode, response(mode).len()), response(mode));
                }
            }
            unsafe { libc::close(fd) };
            out("DONE".into());
        }
        r => panic!("unknown peer role {r}"),
    }
}
