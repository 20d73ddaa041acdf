//! SQL text for spans: literals replaced by `?` (they carry user data), the
//! operation (first keyword) and the collection (the table the statement
//! is about, when one is plain to see). Works on any bytes, never panics.

/// The result of reading one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statement {
    /// Upper-case first keyword: SELECT, INSERT, ...
    pub operation: String,
    pub collection: Option<String>,
    /// The text with every literal replaced by `?`.
    pub sanitized: String,
}

/// Longest sanitized text kept; longer statements are cut (with `...`).
const MAX_TEXT: usize = 4096;

/// Replaces string, numeric, hex and dollar-quoted literals with `?`.
/// Identifiers (also quoted ones), keywords, placeholders and comments stay.
pub fn sanitize(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_TEXT));
    let mut i = 0;
    let prev_ident = |out: &String| out.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    while i < b.len() && out.len() < MAX_TEXT {
        let c = b[i];
        match c {
            b'\'' => {
                // 'it''s' and E'\'' forms; an E/N/X/B prefix was already copied.
                if out.ends_with(['E', 'e', 'N', 'n', 'X', 'x', 'B', 'b']) && !prev_ident(&out[..out.len() - 1].to_string()) {
                    out.pop();
                }
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push('?');
            }
            b'"' | b'`' => {
                // Quoted identifier: copy as is.
                let q = c;
                let start = i;
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&String::from_utf8_lossy(&b[start..i]));
            }
            b'$' if i + 1 < b.len() && (b[i + 1] == b'$' || b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_') => {
                // $$...$$ or $tag$...$tag$ (PostgreSQL); $1 placeholders fall through.
                let tag_end = b[i + 1..].iter().position(|&x| x == b'$').map(|p| i + 1 + p);
                match tag_end {
                    Some(te) if b[i + 1..te].iter().all(|x| x.is_ascii_alphanumeric() || *x == b'_') => {
                        let tag = &b[i..=te];
                        let body = te + 1;
                        let close = b[body..].windows(tag.len()).position(|w| w == tag);
                        i = match close {
                            Some(p) => body + p + tag.len(),
                            None => b.len(),
                        };
                        out.push('?');
                    }
                    _ => {
                        out.push('$');
                        i += 1;
                    }
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p);
                out.push_str(&String::from_utf8_lossy(&b[i..end]));
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = b[i + 2..].windows(2).position(|w| w == b"*/").map_or(b.len(), |p| i + 2 + p + 2);
                out.push_str(&String::from_utf8_lossy(&b[i..end]));
                i = end;
            }
            b'0'..=b'9' if !prev_ident(&out) => {
                // 42, 3.14, 1e10, 0x1F
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E'))) {
                    i += 1;
                }
                out.push('?');
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !prev_ident(&out) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push('?');
            }
            _ => {
                // Copy one UTF-8 character.
                let len = match c {
                    0..=0x7f => 1,
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    _ => 4,
                };
                let end = (i + len).min(b.len());
                out.push_str(&String::from_utf8_lossy(&b[i..end]));
                i = end;
            }
        }
    }
    if i < b.len() {
        out.push_str("...");
    }
    out
}

fn words(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty() && !w.starts_with("--") && !w.starts_with("/*"))
}

fn clean_ident(w: &str) -> Option<String> {
    let w = w.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']');
    let ok = !w.is_empty() && w.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '"' | '`' | '$'));
    ok.then(|| w.replace(['"', '`'], ""))
}

/// Strips leading comments so the first keyword is found.
fn skip_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

/// Reads a statement: its operation, collection and sanitized text.
pub fn statement(sql: &str) -> Statement {
    let sanitized = sanitize(sql.trim());
    let (operation, collection) = keywords(skip_comments(&sanitized));
    Statement { operation, collection, sanitized }
}

fn keywords(body: &str) -> (String, Option<String>) {
    let mut w = words(body);
    let operation = w.next().map(|s| s.to_ascii_uppercase()).unwrap_or_default();
    let up: Vec<String> = words(body).take(64).map(|s| s.to_ascii_uppercase()).collect();
    let raw: Vec<&str> = words(body).take(64).collect();
    let after = |kw: &str, skip: &[&str]| -> Option<String> {
        let mut i = up.iter().position(|x| x == kw)? + 1;
        while i < up.len() && skip.contains(&up[i].as_str()) {
            i += 1;
        }
        raw.get(i).and_then(|w| clean_ident(w))
    };
    let collection = match operation.as_str() {
        "SELECT" => after("FROM", &["ONLY", "LATERAL"]),
        "INSERT" | "REPLACE" => after("INTO", &[]),
        "UPDATE" => raw.get(1).and_then(|w| if w.eq_ignore_ascii_case("ONLY") { raw.get(2) } else { Some(w) }).and_then(|w| clean_ident(w)),
        "DELETE" => after("FROM", &["ONLY"]),
        "CREATE" | "DROP" | "ALTER" => after("TABLE", &["IF", "NOT", "EXISTS", "ONLY"]),
        "TRUNCATE" => raw.get(1).and_then(|w| if w.eq_ignore_ascii_case("TABLE") { raw.get(2) } else { Some(w) }).and_then(|w| clean_ident(w)),
        "COPY" => raw.get(1).and_then(|w| clean_ident(w)),
        _ => None,
    }
    .filter(|c| !c.is_empty() && c != "?" && !c.eq_ignore_ascii_case("select"));
    (operation, collection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            sanitize("SELECT * FROM users WHERE name = 'O''Brien' AND age > 42 AND score < 3.5e2"),
            "SELECT * FROM users WHERE name = ? AND age > ? AND score < ?"
        );
        assert_eq!(sanitize("UPDATE t SET v = E'a\\'b', x = X'0f' WHERE id = $1"), "UPDATE t SET v = ?, x = ? WHERE id = $1");
        assert_eq!(sanitize("SELECT $$secret$$, $tag$x$$y$tag$ FROM t2"), "SELECT ?, ? FROM t2");
        assert_eq!(sanitize("SELECT col1, t2.c3 FROM t2 WHERE a IN (1, 2, -3)"), "SELECT col1, t2.c3 FROM t2 WHERE a IN (?, ?, -?)");
        assert_eq!(sanitize("SELECT \"it's\" FROM `my table` -- 'note'\nWHERE x = .5"), "SELECT \"it's\" FROM `my table` -- 'note'\nWHERE x = ?");
        assert_eq!(sanitize("INSERT INTO t VALUES (?, ?)"), "INSERT INTO t VALUES (?, ?)");
    }

    #[test]
    fn operations_and_collections() {
        let s = |q| {
            let st = statement(q);
            (st.operation, st.collection)
        };
        assert_eq!(s("select * from public.orders o where o.id = 1"), ("SELECT".into(), Some("public.orders".into())));
        assert_eq!(s("INSERT INTO \"Items\"(a) VALUES (1)"), ("INSERT".into(), Some("Items".into())));
        assert_eq!(s("update accounts set x=1"), ("UPDATE".into(), Some("accounts".into())));
        assert_eq!(s("DELETE FROM sessions WHERE t < now()"), ("DELETE".into(), Some("sessions".into())));
        assert_eq!(s("CREATE TABLE IF NOT EXISTS kv (k text)"), ("CREATE".into(), Some("kv".into())));
        assert_eq!(s("COPY items FROM STDIN"), ("COPY".into(), Some("items".into())));
        assert_eq!(s("/* app */ SELECT 1"), ("SELECT".into(), None));
        assert_eq!(s("SELECT (SELECT 1)"), ("SELECT".into(), None));
        assert_eq!(s("BEGIN"), ("BEGIN".into(), None));
        assert_eq!(s(""), (String::new(), None));
    }

    #[test]
    fn hostile_text_never_panics() {
        for q in ["'", "$", "$$", "$a", "E'", "--", "/*", "\u{e9}'\u{1F600}", "1e", "\"", "SELECT 'unterminated", "x'0"] {
            let _ = statement(q);
        }
        let long = "SELECT ".to_string() + &"a, ".repeat(5000);
        assert!(sanitize(&long).ends_with("..."));
    }
}
