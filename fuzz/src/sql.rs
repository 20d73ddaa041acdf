//! The `sql` target: the sanitizer that decides what query text leaves the
//! node, on any UTF-8.
use sonde::protocols::sql::{sanitize, statement, Dialect};

/// Every dialect the sanitizer knows, in each of its modes.
const DIALECTS: [Dialect; 6] = [
    Dialect::Postgres { standard_conforming_strings: true },
    Dialect::Postgres { standard_conforming_strings: false },
    Dialect::MySql { ansi_quotes: false, no_backslash_escapes: false },
    Dialect::MySql { ansi_quotes: true, no_backslash_escapes: false },
    Dialect::MySql { ansi_quotes: false, no_backslash_escapes: true },
    Dialect::MySql { ansi_quotes: true, no_backslash_escapes: true },
];

pub fn check(sql: &str) {
    for dialect in DIALECTS {
        check_in(sql, dialect);
    }
}

fn check_in(sql: &str, dialect: Dialect) {
    let clean = sanitize(sql, dialect);
    // Literals shrink to `?`, the rest is copied: only a trailing `...`
    // (the text was cut) may make the result longer than the input.
    assert!(clean.len() <= sql.len() + 3, "sanitize grew {} bytes to {}", sql.len(), clean.len());
    // Text with nothing that can start a literal (or an unterminated quote
    // or comment, which becomes `?`) is kept whole.
    let literal_free = !sql.bytes().any(|b| b"'$\"`#/-".contains(&b) || b.is_ascii_digit());
    if literal_free && sql.len() < 4096 {
        assert_eq!(clean, sql, "text without literals was changed");
    }
    let st = statement(sql, dialect);
    assert_eq!(st.sanitized, sanitize(sql.trim(), dialect), "statement sanitizes as sanitize does");
    assert!(!st.operation.bytes().any(|b| b.is_ascii_lowercase()), "operation {:?} is upper case", st.operation);
    if let Some(c) = &st.collection {
        assert!(!c.is_empty() && c != "?", "collection {c:?}");
    }
}

/// Statements as applications send them, with the literals the sanitizer
/// must remove; the captures add the ones real clients sent.
pub const STATEMENTS: &[&str] = &[
    "SELECT id, name FROM users WHERE email = 'a@example.com' AND age > 42",
    "select * from public.orders o where o.id = 1 and o.total >= 3.5e2",
    "INSERT INTO \"Items\"(a, b) VALUES (1, 'it''s'), (2, E'a\\'b')",
    "UPDATE accounts SET balance = balance - 10.25 WHERE id = $1",
    "DELETE FROM sessions WHERE expires < now() - interval '1 day'",
    "CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v bytea DEFAULT '\\x00')",
    "COPY items FROM STDIN WITH (FORMAT csv)",
    "SELECT $$body with 'quotes'$$, $tag$x$$y$tag$ FROM t2",
    "/* app:checkout */ SELECT count(*) FROM `cart items` -- trailing 'note'\nWHERE user_id = 0x1F",
    "REPLACE INTO settings (k, v) VALUES ('theme', 'dark')",
    "TRUNCATE TABLE audit_log",
    "WITH recent AS (SELECT * FROM events WHERE ts > '2024-01-01') SELECT * FROM recent",
    "SELECT N'unicode', X'0fa1', B'0101', .5, 1e-3, -7 FROM dual",
    "SELECT \u{e9}l\u{e8}ve, '\u{1F600}' FROM cours WHERE nom = 'caf\u{e9}'",
    "BEGIN",
    "COMMIT",
    "SET NAMES utf8mb4",
];
