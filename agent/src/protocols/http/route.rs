//! Low-cardinality routes from request targets: the query is dropped and
//! path segments that are identifiers (numbers, UUIDs, hex ids) become
//! `{id}`, so `/users/42/orders/9f1c...` is `/users/{id}/orders/{id}`.

/// The path of a request target, without query or fragment.
pub fn path(target: &str) -> &str {
    // A byte scan: both are ASCII, so the cut is a char boundary (a
    // char-set `find` cost as much as the rest of the route).
    let end = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    &target[..end]
}

/// The query of a request target, if any.
pub fn query(target: &str) -> Option<&str> {
    let start = target.bytes().position(|b| b == b'?')? + 1;
    let q = &target[start..];
    let end = q.bytes().position(|b| b == b'#').unwrap_or(q.len());
    Some(&q[..end])
}

/// 8-4-4-4-12 hex digits: hyphens at these places and only there.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    if seg.bytes().all(|b| b.is_ascii_digit()) || is_uuid(seg) {
        return true;
    }
    // Hex ids (object ids, hashes): long enough not to be a word like "cafe".
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit());
    hex && (seg.len() >= 16 || (seg.len() >= 8 && seg.bytes().any(|b| b.is_ascii_digit())))
}

/// The route template of a request target.
pub fn route(target: &str) -> String {
    let p = path(target);
    // Absolute-form targets (proxies): keep only the path. An origin-form
    // target (the usual kind) starts with '/' and is not searched.
    let scheme_end = if p.starts_with('/') {
        None
    } else {
        p.find("://")
    };
    let p = match scheme_end {
        Some(i) => p[i + 3..].find('/').map_or("/", |j| &p[i + 3 + j..]),
        None => p,
    };
    if p.is_empty() {
        return "/".into();
    }
    let mut route = String::with_capacity(p.len() + 4);
    for (i, seg) in p.split('/').enumerate() {
        if i > 0 {
            route.push('/');
        }
        route.push_str(if is_id(seg) { "{id}" } else { seg });
    }
    route
}

/// A query with every value replaced by `REDACTED`: keys are kept, values
/// may carry tokens or personal data.
pub fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) => format!("{k}=REDACTED"),
            None => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_split_at_the_first_delimiter() {
        assert_eq!(path("/a/b?x=1&y=2#top"), "/a/b");
        assert_eq!(query("/a/b?x=1&y=2#top"), Some("x=1&y=2"));
        assert_eq!(path("/a#frag?not-a-query"), "/a");
        assert_eq!(path("/é/ü?q=ä"), "/é/ü");
        assert_eq!(query("/é/ü?q=ä"), Some("q=ä"));
        assert_eq!(query("/plain"), None);
        assert_eq!(query("/empty?"), Some(""));
        assert_eq!(path(""), "");
    }

    #[test]
    fn collapses_identifiers() {
        assert_eq!(route("/users/42/orders/7?x=1"), "/users/{id}/orders/{id}");
        assert_eq!(
            route("/items/3f2b8c1e-9d4a-4b6f-8e2a-1c5d7e9f0a3b"),
            "/items/{id}"
        );
        assert_eq!(
            route("/objects/507f1f77bcf86cd799439011/raw"),
            "/objects/{id}/raw"
        );
        assert_eq!(route("/commits/deadbeefdeadbeef"), "/commits/{id}");
        assert_eq!(route("/a1b2c3d4"), "/{id}");
    }

    #[test]
    fn keeps_words_and_shapes() {
        assert_eq!(route("/cafe/bed/add"), "/cafe/bed/add");
        assert_eq!(route("/"), "/");
        assert_eq!(route(""), "/");
        assert_eq!(route("/api/v2/users/"), "/api/v2/users/");
        assert_eq!(route("http://example.com/users/12?q"), "/users/{id}");
        assert_eq!(route("http://example.com"), "/");
        assert_eq!(route("*"), "*");
    }

    #[test]
    fn splits_and_redacts_queries() {
        assert_eq!(path("/a/b?c=d#e"), "/a/b");
        assert_eq!(query("/a?c=d&e#f"), Some("c=d&e"));
        assert_eq!(query("/a"), None);
        assert_eq!(
            redact_query("token=abc&page=2&flag"),
            "token=REDACTED&page=REDACTED&flag"
        );
    }
}
