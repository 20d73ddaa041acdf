//! TLS connections whose first records reach user space as ciphertext.
use super::*;

/// A server whose TLS library uses a memory BIO (Node.js): its first
/// record, the ClientHello, is read before the library's calls name the
/// socket, so it reaches user space as ciphertext; the plaintext follows.
/// The handshake record must not end the connection's parsing.
#[test]
fn a_handshake_read_before_the_library_names_the_socket_leaves_it_parsed() {
    const HELLO: &[u8] = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03";
    let mut l7 = l7();
    let (_, server) = loopback_pair();
    let tls = ConnInfo {
        tls: true,
        ..server.clone()
    };
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(server.clone()),
            data(&server, Direction::Ingress, 500, HELLO),
            data(&tls, Direction::Ingress, 1_000, REQ),
            data(&tls, Direction::Egress, 2_000, RESP),
        ],
    );
    assert!(l7.commands.is_empty(), "not released: {:?}", l7.commands);
    // Held for a client on this node that never comes.
    l7.release_held(Some(NOW + HOLD_NS), &mut spans);
    let [srv] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert!(
        srv.attributes
            .iter()
            .any(|(k, v)| *k == "url.scheme" && format!("{v:?}") == r#"Str("https")"#),
        "{srv:?}"
    );
    let d = l7.p.stats.dispatch.clone();
    assert_eq!(
        d.tls_decrypted.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(d.tls_opaque.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Application data with no plaintext before it: opaque, released.
    let (client, _) = loopback_pair();
    feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            data(&client, Direction::Egress, 3_000, HELLO),
            data(&client, Direction::Ingress, 4_000, HELLO),
            data(
                &client,
                Direction::Egress,
                5_000,
                b"\x17\x03\x03\x00\x02\xaa\xbb",
            ),
        ],
    );
    assert_eq!(d.tls_opaque.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(
        l7.commands
            == [
                Command::FindTls { pid: 100 },
                Command::Release {
                    conn: 1,
                    pid: 100,
                    fd: 3
                }
            ],
        "{:?}",
        l7.commands
    );
}
