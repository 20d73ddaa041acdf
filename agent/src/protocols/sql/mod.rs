//! SQL text for spans: literals replaced by `?` (they carry user data), the
//! operation (first keyword) and the collection (the table the statement
//! is about, when one is plain to see). Works on any text, never panics.
//!
//! Where a literal ends depends on the server and its settings (a
//! backslash escapes a quote in MySQL, not in standard PostgreSQL), so
//! every entry point takes the connection's [`Dialect`].
mod lexer;

use lexer::{Kind, Lexer};

/// The result of reading one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statement {
    /// Upper-case first keyword: SELECT, INSERT, ...
    pub operation: String,
    pub collection: Option<String>,
    /// The text with every literal replaced by `?`.
    pub sanitized: String,
}

/// How the server that reads a statement lexes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: with standard_conforming_strings on (the default since
    /// 9.1), a backslash in '...' is an ordinary character; E'...' always
    /// takes backslash escapes.
    Postgres { standard_conforming_strings: bool },
    /// MySQL and MariaDB: "..." is a string unless sql_mode has ANSI_QUOTES;
    /// a backslash escapes in both quotes unless it has NO_BACKSLASH_ESCAPES.
    MySql {
        ansi_quotes: bool,
        no_backslash_escapes: bool,
    },
}

impl Dialect {
    /// The servers' defaults.
    pub const POSTGRES: Dialect = Dialect::Postgres {
        standard_conforming_strings: true,
    };
    pub const MYSQL: Dialect = Dialect::MySql {
        ansi_quotes: false,
        no_backslash_escapes: false,
    };

    /// Whether a backslash escapes the next character in '...' (and, in
    /// MySQL, "...") strings.
    fn backslash_in_strings(self) -> bool {
        match self {
            Dialect::Postgres {
                standard_conforming_strings,
            } => !standard_conforming_strings,
            Dialect::MySql {
                no_backslash_escapes,
                ..
            } => !no_backslash_escapes,
        }
    }

    /// Whether "..." is a string rather than an identifier.
    fn double_quoted_strings(self) -> bool {
        matches!(
            self,
            Dialect::MySql {
                ansi_quotes: false,
                ..
            }
        )
    }
}

/// Longest sanitized text kept; longer statements are cut (with `...`).
const MAX_TEXT: usize = 4096;

/// Replaces string, numeric, bit/hex and dollar-quoted literals with `?`.
/// Identifiers (also quoted ones), keywords, placeholders and comments stay.
/// Whatever is left unterminated (a cut capture) becomes one `?`.
pub fn sanitize(sql: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(sql.len().min(MAX_TEXT) + 3);
    let lexer = Lexer::new(sql, dialect);
    for (kind, range) in lexer {
        let room = MAX_TEXT.saturating_sub(out.len());
        if room == 0 {
            out.push_str("...");
            break;
        }
        if kind == Kind::Literal {
            out.push('?');
            continue;
        }
        let text = sql.get(range).unwrap_or_default();
        if text.len() <= room {
            out.push_str(text);
            continue;
        }
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&text[..cut]);
        out.push_str("...");
        break;
    }
    out
}

fn words(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty() && !w.starts_with("--") && !w.starts_with("/*"))
}

fn clean_ident(w: &str) -> Option<String> {
    let w = w.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']');
    let ok = !w.is_empty()
        && w.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '"' | '`' | '$'));
    ok.then(|| w.replace(['"', '`'], ""))
}

/// Strips leading comments so the first keyword is found; MySQL's
/// executable comments only lose their opener.
fn skip_comments(mut s: &str, dialect: Dialect) -> &str {
    let mysql = matches!(dialect, Dialect::MySql { .. });
    loop {
        s = s.trim_start();
        let exec = s
            .strip_prefix("/*!")
            .or_else(|| s.strip_prefix("/*M!"))
            .filter(|_| mysql);
        if let Some(rest) = exec {
            s = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        } else if let Some(rest) = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('#').filter(|_| mysql))
        {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

/// Reads a statement: its operation, collection and sanitized text.
pub fn statement(sql: &str, dialect: Dialect) -> Statement {
    let sanitized = sanitize(sql.trim(), dialect);
    let (operation, collection) = keywords(skip_comments(&sanitized, dialect));
    Statement {
        operation,
        collection,
        sanitized,
    }
}

fn keywords(body: &str) -> (String, Option<String>) {
    // The words as they are, compared without regard to ASCII case: one
    // allocation per statement, where upper-casing each took one per word.
    let raw: Vec<&str> = words(body).take(64).collect();
    let operation = raw
        .first()
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    let after = |kw: &str, skip: &[&str]| -> Option<String> {
        let mut i = raw.iter().position(|x| x.eq_ignore_ascii_case(kw))? + 1;
        while i < raw.len() && skip.iter().any(|s| raw[i].eq_ignore_ascii_case(s)) {
            i += 1;
        }
        raw.get(i).and_then(|w| clean_ident(w))
    };
    let collection = match operation.as_str() {
        "SELECT" => after("FROM", &["ONLY", "LATERAL"]),
        "INSERT" | "REPLACE" => after("INTO", &[]),
        "UPDATE" => raw
            .get(1)
            .and_then(|w| {
                if w.eq_ignore_ascii_case("ONLY") {
                    raw.get(2)
                } else {
                    Some(w)
                }
            })
            .and_then(|w| clean_ident(w)),
        "DELETE" => after("FROM", &["ONLY"]),
        "CREATE" | "DROP" | "ALTER" => after("TABLE", &["IF", "NOT", "EXISTS", "ONLY"]),
        "TRUNCATE" => raw
            .get(1)
            .and_then(|w| {
                if w.eq_ignore_ascii_case("TABLE") {
                    raw.get(2)
                } else {
                    Some(w)
                }
            })
            .and_then(|w| clean_ident(w)),
        "COPY" => raw.get(1).and_then(|w| clean_ident(w)),
        _ => None,
    }
    .filter(|c| !c.is_empty() && c != "?" && !c.eq_ignore_ascii_case("select"));
    (operation, collection)
}

/// Session sql_modes that include ANSI_QUOTES (the combined ones are
/// MariaDB's, and MySQL's before 8.0).
const ANSI_QUOTES_MODES: [&str; 7] = [
    "ANSI_QUOTES",
    "ANSI",
    "DB2",
    "MAXDB",
    "MSSQL",
    "ORACLE",
    "POSTGRESQL",
];

/// The ways a SET names the session's sql_mode, as tokens joined by spaces.
const SESSION_SQL_MODE: [&str; 6] = [
    "SQL_MODE",
    "SESSION SQL_MODE",
    "LOCAL SQL_MODE",
    "@ @ SQL_MODE",
    "@ @ SESSION . SQL_MODE",
    "@ @ LOCAL . SQL_MODE",
];

/// Whether a MySQL statement sets the session's sql_mode and, if so,
/// whether the new mode has ANSI_QUOTES. Only a plain string or word value
/// can be read: any other (CONCAT(@@sql_mode, ...), DEFAULT, a variable)
/// counts as without, since taking "..." for a string when it is an
/// identifier hides a name, while the opposite mistake lets a string through.
pub fn mysql_sets_ansi_quotes(sql: &str, dialect: Dialect) -> Option<bool> {
    if !sql
        .as_bytes()
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"sql_mode"))
    {
        return None;
    }
    let tokens: Vec<(Kind, &str)> = Lexer::new(sql, dialect)
        .filter(|(k, _)| !matches!(k, Kind::Space | Kind::Comment))
        .map(|(k, r)| (k, sql.get(r).unwrap_or_default()))
        .collect();
    let mut found = None;
    for stmt in tokens.split(|t| t.1 == ";") {
        let Some((&(Kind::Word, set), rest)) = stmt.split_first() else {
            continue;
        };
        if !set.eq_ignore_ascii_case("SET") {
            continue;
        }
        let mut depth = 0i32;
        let assignments = rest.split(|t| {
            depth += i32::from(t.1 == "(") - i32::from(t.1 == ")");
            depth == 0 && t.1 == ","
        });
        for a in assignments {
            let Some(eq) = a.iter().position(|t| t.1 == "=") else {
                continue;
            };
            let target = a[..eq]
                .strip_suffix(&[(Kind::Other, ":")])
                .unwrap_or(&a[..eq]);
            let target = target
                .iter()
                .map(|t| t.1.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(" ");
            if !SESSION_SQL_MODE.contains(&target.as_str()) {
                continue;
            }
            // A bare word names a mode too (SET sql_mode = ANSI).
            let modes = match &a[eq + 1..] {
                [(Kind::Word, v)] => *v,
                [(Kind::Literal | Kind::Quoted, v)] => v
                    .find(['\'', '"', '`'])
                    .and_then(|q| v.get(q + 1..v.len() - 1))
                    .unwrap_or_default(),
                _ => "",
            };
            found = Some(modes.split(',').any(|m| {
                ANSI_QUOTES_MODES
                    .iter()
                    .any(|a| m.trim().eq_ignore_ascii_case(a))
            }));
        }
    }
    found
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
