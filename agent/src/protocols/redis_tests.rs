use super::*;

fn call_all(c2s: &[&[u8]], s2c: &[&[u8]]) -> (RedisConnection, Vec<DbCall>) {
    let mut c = RedisConnection::default();
    let mut out = vec![];
    for p in c2s {
        c.push(true, Segment::whole(p, 0, 1), &mut out);
    }
    for p in s2c {
        c.push(false, Segment::whole(p, 2, 3), &mut out);
    }
    (c, out)
}

#[test]
fn pipelined_commands_pair_in_order() {
    let req = b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$5\r\nalice\r\n*2\r\n$3\r\nGET\r\n$6\r\nuser:1\r\n*1\r\n$4\r\nPING\r\n";
    let rep = b"+OK\r\n$5\r\nalice\r\n+PONG\r\n";
    let (_, calls) = call_all(&[req], &[rep]);
    let texts: Vec<_> = calls.iter().map(|c| c.query_text.as_str()).collect();
    assert_eq!(texts, vec!["SET user:1", "GET user:1", "PING"], "arguments after the key are dropped");
}
