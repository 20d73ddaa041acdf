//! Property tests: whatever literals a statement holds, none of them
//! reaches the sanitized text. Every literal carries a marker the templates
//! cannot contain ("zq" + letters and digits, or eight and more digits,
//! where templates have neither), rendered with the quoting and escaping
//! the dialect requires, between template pieces that stress the lexer:
//! comments and quoted identifiers holding quotes, casts, placeholders.
use proptest::{prelude::*, sample::select, strategy::Union, test_runner::Config};

use super::*;

const PG_OFF: Dialect = Dialect::Postgres {
    standard_conforming_strings: false,
};
const MY_ANSI: Dialect = Dialect::MySql {
    ansi_quotes: true,
    no_backslash_escapes: false,
};
const MY_NBE: Dialect = Dialect::MySql {
    ansi_quotes: false,
    no_backslash_escapes: true,
};
const ALL: [Dialect; 5] = [Dialect::POSTGRES, PG_OFF, Dialect::MYSQL, MY_ANSI, MY_NBE];

/// A rendered literal and the marker it holds.
type Lit = (String, String);

fn config() -> Config {
    // Failures print their minimal case; no regression files in the tree.
    Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    }
}

fn marker() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]{6,10}".prop_map(|m| format!("zq{m}"))
}

/// Text for inside a string: quotes of all kinds, backslashes, comment and
/// dollar-quote openers, line ends, JSON, non-ASCII; the marker somewhere.
fn body() -> impl Strategy<Value = (String, String)> {
    let piece = prop_oneof![
        select(vec![
            "'",
            "\"",
            "\\",
            "\\'",
            "''",
            "`",
            "$",
            "$$",
            "$a$",
            "--",
            "/*",
            "*/",
            "#",
            "\n",
            "\r",
            " ",
            "?",
            ";",
            "\u{e9}",
            "\u{1F600}"
        ])
        .prop_map(String::from),
        Just(r#"{"a": "b"}"#.to_string()),
        "[a-z0-9]{1,4}",
    ];
    (
        proptest::collection::vec(piece, 0..8),
        any::<prop::sample::Index>(),
        marker(),
    )
        .prop_map(|(mut pieces, at, m)| {
            pieces.insert(at.index(pieces.len() + 1), m.clone());
            (pieces.concat(), m)
        })
}

/// `q` + body + `q`, quotes doubled or backslash-escaped, backslashes
/// escaped when the dialect reads them as escapes.
fn quote(body: &str, q: char, backslash: bool, doubled: bool) -> String {
    let mut s = String::from(q);
    for c in body.chars() {
        match c {
            '\\' if backslash => s.push_str("\\\\"),
            c if c == q && (doubled || !backslash) => s.extend([q, q]),
            c if c == q => s.extend(['\\', q]),
            c => s.push(c),
        }
    }
    s.push(q);
    s
}

fn strings(d: Dialect) -> BoxedStrategy<Lit> {
    let backslash = d.backslash_in_strings();
    let plain =
        (body(), any::<bool>()).prop_map(move |((b, m), dbl)| (quote(&b, '\'', backslash, dbl), m));
    let mut all = vec![plain.boxed()];
    // A JSON document, as applications store them.
    all.push(
        marker()
            .prop_map(move |m| {
                (
                    quote(
                        &format!(r#"{{"k": "{m}", "n": [1, "x\\y"]}}"#),
                        '\'',
                        backslash,
                        true,
                    ),
                    m,
                )
            })
            .boxed(),
    );
    match d {
        Dialect::Postgres { .. } => {
            all.push(
                (body(), any::<bool>())
                    .prop_map(|((b, m), dbl)| (format!("E{}", quote(&b, '\'', true, dbl)), m))
                    .boxed(),
            );
            all.push(
                body()
                    .prop_map(|(b, m)| {
                        (
                            format!("U&{}", quote(&b.replace('\\', "\\\\"), '\'', false, true)),
                            m,
                        )
                    })
                    .boxed(),
            );
            all.push(
                body()
                    .prop_map(move |(b, m)| (format!("N{}", quote(&b, '\'', backslash, true)), m))
                    .boxed(),
            );
            let tag = select(vec!["", "a", "tag", "x_1", "\u{e9}"]);
            all.push(
                (body(), tag)
                    .prop_map(|((b, m), tag)| (dollar(&b, tag), m))
                    .boxed(),
            );
        }
        Dialect::MySql { ansi_quotes, .. } => {
            if !ansi_quotes {
                all.push(
                    (body(), any::<bool>())
                        .prop_map(move |((b, m), dbl)| (quote(&b, '"', backslash, dbl), m))
                        .boxed(),
                );
            }
            let intro = select(vec!["_utf8mb4", "_latin1", "_binary", "N"]);
            all.push(
                (body(), intro)
                    .prop_map(move |((b, m), i)| {
                        (format!("{i}{}", quote(&b, '\'', backslash, false)), m)
                    })
                    .boxed(),
            );
        }
    }
    Union::new(all).boxed()
}

/// $tag$ + body + $tag$; a body that would close the quote early loses
/// its dollar signs (a client picks a tag the body does not hold).
fn dollar(body: &str, tag: &str) -> String {
    let delim = format!("${tag}$");
    let mut b = body.to_string();
    if format!("{b}{delim}").find(&delim) != Some(b.len()) {
        b = b.replace('$', "");
    }
    format!("{delim}{b}{delim}")
}

fn numbers(d: Dialect) -> BoxedStrategy<Lit> {
    let digits = "[1-9][0-9]{7,11}";
    let forms = select(vec![
        "{}", "-{}", "{}.5", "0.{}", ".{}", "{}e5", "{}.0e-3", "{}E+2", "- {}",
    ]);
    let decimal = (digits, forms).prop_map(|(n, f)| (f.replace("{}", &n), n));
    let hex = "[0-9][0-9a-f]{7,11}".prop_map(|h| (format!("0x{h}"), h));
    let hex_string =
        ("[0-9][0-9A-F]{7,11}", select(vec!["X", "x"])).prop_map(|(h, x)| (format!("{x}'{h}'"), h));
    let bits = ("[01]{16,24}", select(vec!["B", "b"])).prop_map(|(h, b)| (format!("{b}'{h}'"), h));
    let mut all = vec![
        decimal.boxed(),
        hex.boxed(),
        hex_string.boxed(),
        bits.boxed(),
    ];
    if matches!(d, Dialect::MySql { .. }) {
        all.push("[01]{16,24}".prop_map(|b| (format!("0b{b}"), b)).boxed());
    }
    Union::new(all).boxed()
}

/// Template pieces: SQL around the literals, never holding a marker.
fn pieces(d: Dialect) -> Vec<&'static str> {
    let mut p = vec![
        "SELECT",
        "a",
        "t.b",
        "FROM t",
        "WHERE",
        "AND",
        "OR",
        "=",
        "<>",
        "IN (",
        ")",
        "(",
        ",",
        "-",
        "+",
        "?",
        "LIMIT",
        ";",
        "\n",
        "-- it's \"quoted\"\n",
        "/* don't 'x */",
        "/* \"y\" */",
        "E",
        "N",
        "X",
    ];
    match d {
        Dialect::Postgres { .. } => p.extend([
            "\"My \"\"Col\"\"\"",
            "::text",
            "::jsonb @>",
            "$1",
            "$2",
            "/* a /* it's */ \"b */",
            "# ",
            "U&\"d\\0061t\"",
            "--it's\r",
        ]),
        Dialect::MySql { ansi_quotes, .. } => {
            p.extend([
                "`my ``col`` it's`",
                "# it's \"x\n",
                "-- it's\r\n",
                "/*!40101",
                "*/",
                "_utf8mb4",
                "@v",
                "@@sql_mode",
                "a--b",
            ]);
            if ansi_quotes {
                p.push("\"My \"\"Col\"\"\"");
            }
        }
    }
    p
}

/// A statement of template pieces and literals, with the literals' markers.
fn statement_with(d: Dialect) -> impl Strategy<Value = (String, Vec<String>)> {
    let lit = prop_oneof![3 => strings(d), 1 => numbers(d)];
    let part = prop_oneof![
        select(pieces(d)).prop_map(|p| (p.to_string(), None)),
        lit.prop_map(|(s, m)| (s, Some(m)))
    ];
    proptest::collection::vec(part, 1..24).prop_map(|parts| {
        let sql = parts
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        (sql, parts.into_iter().filter_map(|p| p.1).collect())
    })
}

fn dialect() -> impl Strategy<Value = Dialect> {
    select(ALL.to_vec())
}

fn check(sql: &str, markers: &[String], d: Dialect) -> Result<(), TestCaseError> {
    let out = sanitize(sql, d);
    for m in markers {
        prop_assert!(
            !out.contains(m.as_str()),
            "{m} leaked under {d:?}\n  sql: {sql:?}\n  out: {out:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_literal_reaches_the_text((d, (sql, markers)) in dialect().prop_flat_map(|d| (Just(d), statement_with(d)))) {
        check(&sql, &markers, d)?;
        let st = statement(&sql, d);
        for m in &markers {
            prop_assert!(!st.operation.contains(m.as_str()) && !st.collection.as_deref().unwrap_or("").contains(m.as_str()));
        }
    }

    /// A capture cut anywhere (the parsers keep 16 KiB of a message) leaves
    /// an unterminated literal at worst, which becomes `?`.
    #[test]
    fn cut_statements_leak_nothing((d, (sql, markers)) in dialect().prop_flat_map(|d| (Just(d), statement_with(d))), cut in any::<prop::sample::Index>()) {
        let mut at = cut.index(sql.len() + 1);
        while !sql.is_char_boundary(at) {
            at -= 1;
        }
        check(&sql[..at], &markers, d)?;
    }

    /// An IN list of any literals keeps its shape: one `?` per element.
    #[test]
    fn in_lists_keep_their_shape((d, lits) in dialect().prop_flat_map(|d| (Just(d), proptest::collection::vec(prop_oneof![strings(d), numbers(d)], 1..12)))) {
        let list: Vec<&str> = lits.iter().map(|l| l.0.as_str()).collect();
        let sql = format!("SELECT * FROM t WHERE a IN ({})", list.join(", "));
        let want: Vec<&str> = lits.iter().map(|l| if l.0.starts_with("- ") { "- ?" } else if l.0.starts_with('-') { "-?" } else { "?" }).collect();
        prop_assert_eq!(sanitize(&sql, d), format!("SELECT * FROM t WHERE a IN ({})", want.join(", ")));
    }

    #[test]
    fn any_text_is_safe(text in any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()), d in dialect()) {
        let out = sanitize(&text, d);
        prop_assert!(out.len() <= MAX_TEXT + 3);
        let _ = statement(&text, d);
        let _ = mysql_sets_ansi_quotes(&text, d);
    }

    #[test]
    fn any_sql_like_text_is_safe(text in "[ -~\n\r\t\u{e9}]{0,200}", d in dialect()) {
        let _ = statement(&text, d);
        let _ = mysql_sets_ansi_quotes(&text, d);
    }
}

/// The two leaks of issue #13, as fixed cases.
#[test]
fn documented_regressions() {
    let out = sanitize(
        r"INSERT INTO creds VALUES ('C:\', 'hunter2')",
        Dialect::POSTGRES,
    );
    assert!(!out.contains("hunter2"), "{out}");
    let out = sanitize(
        r#"SELECT * FROM users WHERE password = "hunter2""#,
        Dialect::MYSQL,
    );
    assert!(!out.contains("hunter2"), "{out}");
}
