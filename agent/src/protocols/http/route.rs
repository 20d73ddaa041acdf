//! Low-cardinality routes from request targets: the query is dropped and
//! path segments that are identifiers (numbers, UUIDs, hex ids) become
//! `{id}`, so `/users/42/orders/9f1c...` is `/users/{id}/orders/{id}`.

/// The path of a request target, without query or fragment.
pub fn path(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

/// The query of a request target, if any.
pub fn query(target: &str) -> Option<&str> {
    let q = target.split_once('?')?.1;
    Some(q.split('#').next().unwrap_or(q))
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
    // Absolute-form targets (proxies): keep only the path.
    let p = match p.find("://") {
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
