//! Seeing through destination NAT on this node (Docker's published ports on
//! a non-loopback address, Kubernetes Service IPs): the client connected
//! to one address and the server accepted on another, so the two ends of
//! the connection disagree on its tuple. The kernel's connection tracking
//! table (`/proc/net/nf_conntrack`) holds both views: the original
//! direction (as the client sent) and the reply direction (as the server
//! answers).
//!
//! A lookup happens only for a server request that found no partner while
//! a client end with the same source endpoint has one waiting, so the
//! table is read rarely, not per request. Source NAT (MASQUERADE) hides the
//! client's endpoint from the server and is not resolved.
use std::net::SocketAddr;

use super::relay::ClientKey;

/// Through pid 1, the host's network namespace even when the agent runs in
/// a container of its own (it needs the host's pid namespace anyway).
pub const CONNTRACK: &str = "/proc/1/net/nf_conntrack";

/// The client's view of a server connection (server's remote, server's
/// local), from conntrack's text: the original tuple of the entry whose
/// reply tuple is (server local -> server remote).
pub fn original(
    table: &str,
    server_local: SocketAddr,
    server_remote: SocketAddr,
) -> Option<ClientKey> {
    table
        .lines()
        .filter(|l| l.contains(" tcp "))
        .find_map(|line| {
            let (orig, reply) = tuples(line)?;
            (reply == (server_local, server_remote)).then_some(orig)
        })
}

/// (original src -> dst, reply src -> dst) of one conntrack line.
fn tuples(line: &str) -> Option<(ClientKey, ClientKey)> {
    let mut src = vec![];
    let mut dst = vec![];
    let mut sport = vec![];
    let mut dport = vec![];
    for field in line.split_ascii_whitespace() {
        let Some((k, v)) = field.split_once('=') else {
            continue;
        };
        match k {
            "src" => src.push(v.parse().ok()?),
            "dst" => dst.push(v.parse().ok()?),
            "sport" => sport.push(v.parse().ok()?),
            "dport" => dport.push(v.parse().ok()?),
            _ => {}
        }
    }
    if src.len() < 2 || dst.len() < 2 || sport.len() < 2 || dport.len() < 2 {
        return None;
    }
    let at = |ip: std::net::IpAddr, port: u16| SocketAddr::new(ip, port);
    Some((
        (at(src[0], sport[0]), at(dst[0], dport[0])),
        (at(src[1], sport[1]), at(dst[1], dport[1])),
    ))
}

/// Reads the table and resolves; None when it is unreadable (no
/// nf_conntrack module, or another network namespace).
pub fn lookup(server_local: SocketAddr, server_remote: SocketAddr) -> Option<ClientKey> {
    let table = std::fs::read_to_string(CONNTRACK).ok()?;
    original(&table, server_local, server_remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
ipv4     2 udp      17 29 src=10.0.0.5 dst=10.0.0.1 sport=5353 dport=53 src=10.0.0.1 dst=10.0.0.5 sport=53 dport=5353 mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=172.30.0.1 dst=172.30.0.1 sport=40112 dport=41235 src=172.30.0.17 dst=172.30.0.1 sport=8080 dport=40112 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 86399 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=5000 dport=6000 src=127.0.0.1 dst=127.0.0.1 sport=6000 dport=5000 [ASSURED] mark=0 zone=0 use=2
garbage src=1 dst=
";

    #[test]
    fn the_reply_tuple_names_the_clients_view() {
        let server_local: SocketAddr = "172.30.0.17:8080".parse().unwrap();
        let server_remote: SocketAddr = "172.30.0.1:40112".parse().unwrap();
        assert_eq!(
            original(TABLE, server_local, server_remote),
            Some((server_remote, "172.30.0.1:41235".parse().unwrap()))
        );
        assert_eq!(
            original(TABLE, server_local, "172.30.0.1:1".parse().unwrap()),
            None
        );
        assert_eq!(original("", server_local, server_remote), None);
    }
}
