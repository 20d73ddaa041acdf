use super::*;

const PG: Dialect = Dialect::POSTGRES;
const PG_OFF: Dialect = Dialect::Postgres {
    standard_conforming_strings: false,
};
const MY: Dialect = Dialect::MYSQL;
const MY_ANSI: Dialect = Dialect::MySql {
    ansi_quotes: true,
    no_backslash_escapes: false,
};
const MY_NBE: Dialect = Dialect::MySql {
    ansi_quotes: false,
    no_backslash_escapes: true,
};
const ALL: [Dialect; 5] = [PG, PG_OFF, MY, MY_ANSI, MY_NBE];

#[test]
fn literals_become_placeholders() {
    for d in ALL {
        assert_eq!(
            sanitize(
                "SELECT * FROM users WHERE name = 'O''Brien' AND age > 42 AND score < 3.5e2",
                d
            ),
            "SELECT * FROM users WHERE name = ? AND age > ? AND score < ?"
        );
        assert_eq!(
            sanitize("SELECT col1, t2.c3 FROM t2 WHERE a IN (1, 2, -3)", d),
            "SELECT col1, t2.c3 FROM t2 WHERE a IN (?, ?, -?)"
        );
        assert_eq!(
            sanitize("INSERT INTO t VALUES (?, ?)", d),
            "INSERT INTO t VALUES (?, ?)"
        );
    }
    assert_eq!(
        sanitize("UPDATE t SET v = E'a\\'b', x = X'0f' WHERE id = $1", PG),
        "UPDATE t SET v = ?, x = ? WHERE id = $1"
    );
    assert_eq!(
        sanitize("SELECT $$secret$$, $tag$x$$y$tag$ FROM t2", PG),
        "SELECT ?, ? FROM t2"
    );
    assert_eq!(
        sanitize(
            "SELECT \"it's\" FROM `my table` -- 'note'\nWHERE x = .5",
            PG
        ),
        "SELECT \"it's\" FROM `my table` -- 'note'\nWHERE x = ?"
    );
    assert_eq!(
        sanitize(
            "SELECT \"it's\" FROM `my table` -- 'note'\nWHERE x = .5",
            MY
        ),
        "SELECT ? FROM `my table` -- 'note'\nWHERE x = ?"
    );
}

/// Issue #13: standard strings end at the second quote, backslash or not.
#[test]
fn backslash_is_plain_in_standard_postgres_strings() {
    let q = r"INSERT INTO creds VALUES ('C:\', 'hunter2')";
    assert_eq!(sanitize(q, PG), "INSERT INTO creds VALUES (?, ?)");
    assert!(!sanitize(q, PG).contains("hunter2"));
    // With the setting off, and in E'' strings, it escapes the quote.
    assert_eq!(
        sanitize(r"VALUES ('it\'s', 'hunter2')", PG_OFF),
        "VALUES (?, ?)"
    );
    assert_eq!(
        sanitize(r"VALUES (E'it\'s', 'hunter2')", PG),
        "VALUES (?, ?)"
    );
    assert_eq!(
        sanitize(r"VALUES (E'C:\\', 'hunter2')", PG),
        "VALUES (?, ?)"
    );
    assert_eq!(
        sanitize(r"VALUES ('C:\\', 'x\'y')", PG_OFF),
        "VALUES (?, ?)"
    );
    // Bit and hex strings never take escapes.
    assert_eq!(
        sanitize(r"VALUES (X'\', 'hunter2')", PG_OFF),
        "VALUES (?, ?)"
    );
    assert_eq!(
        sanitize(r"SELECT U&'d\0061t\+000061', U&'\', 'hunter2'", PG),
        "SELECT ?, ?, ?"
    );
}

/// Issue #13: MySQL's "..." is a string (with backslash escapes) unless
/// ANSI_QUOTES is on.
#[test]
fn mysql_double_quotes() {
    let q = r#"SELECT * FROM users WHERE name = "hunter2" AND note = "a\"b" AND c = 'x\'y'"#;
    assert_eq!(
        sanitize(q, MY),
        "SELECT * FROM users WHERE name = ? AND note = ? AND c = ?"
    );
    assert_eq!(
        sanitize(r#"SELECT "a""b", `c``d` FROM t"#, MY),
        "SELECT ?, `c``d` FROM t"
    );
    assert_eq!(
        sanitize(r#"SELECT "col" FROM t WHERE a = 'x'"#, MY_ANSI),
        r#"SELECT "col" FROM t WHERE a = ?"#
    );
    // NO_BACKSLASH_ESCAPES: MySQL's own 'C:\' case.
    assert_eq!(
        sanitize(r"VALUES ('C:\', 'hunter2')", MY_NBE),
        "VALUES (?, ?)"
    );
    assert_eq!(sanitize(r"VALUES ('C:\\', 'it\'s')", MY), "VALUES (?, ?)");
}

#[test]
fn mysql_literal_forms() {
    assert_eq!(
        sanitize("SELECT _utf8mb4'sec', _latin1\"x\", N'n', X'0F', x'ab', 0x1F, b'101', 0b101, 1e-3, .5 FROM t", MY),
        "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM t"
    );
    // # comments; -- only before a space or control character.
    assert_eq!(
        sanitize("SELECT 1 # it's\nFROM t", MY),
        "SELECT ? # it's\nFROM t"
    );
    assert_eq!(sanitize("SELECT 1--'x'\n", MY), "SELECT ?--?\n");
    assert_eq!(
        sanitize("SELECT 1 -- it's\nFROM t", MY),
        "SELECT ? -- it's\nFROM t"
    );
    // Comments do not nest in MySQL; the inside of /*!...*/ is SQL.
    assert_eq!(
        sanitize("SELECT /* a /* b */ 'c' */ 1", MY),
        "SELECT /* a /* b */ ? */ ?"
    );
    assert_eq!(
        sanitize("/*!40101 SET NAMES 'utf8' */", MY),
        "/*!40101 SET NAMES ? */"
    );
    assert_eq!(
        sanitize("SELECT /*M!100100 'x', */ 1", MY),
        "SELECT /*M!100100 ?, */ ?"
    );
    assert_eq!(
        sanitize("SELECT $a, a$b FROM t", MY),
        "SELECT $a, a$b FROM t"
    );
}

#[test]
fn postgres_literal_forms() {
    assert_eq!(
        sanitize(
            "SELECT B'0101', x'FF', N'n', e'\\n', 0x1F, 0o17, 0b101, 1_000, 1.5e+3, 5. FROM t",
            PG
        ),
        "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM t"
    );
    // Comments nest; a line comment ends at CR too; # is an operator.
    assert_eq!(
        sanitize("SELECT /* a /* it's */ 'b' */ 1", PG),
        "SELECT /* a /* it's */ 'b' */ ?"
    );
    assert_eq!(sanitize("SELECT 1 -- x\r'y'", PG), "SELECT ? -- x\r?");
    assert_eq!(sanitize("SELECT 1 # 2", PG), "SELECT ? # ?");
    assert_eq!(
        sanitize("SELECT U&\"d\\0061t\" FROM t", PG),
        "SELECT U&\"d\\0061t\" FROM t"
    );
    // Dollar quotes: tags, quotes inside, $n placeholders, $ inside words.
    assert_eq!(
        sanitize("SELECT $a$it's $$ $b$ 'x'$a$, $1, a$b$c, $$", PG),
        "SELECT ?, $1, a$b$c, ?"
    );
    assert_eq!(
        sanitize("SELECT $_1$x$_1$::text, $ 1", PG),
        "SELECT ?::text, $ ?"
    );
    assert_eq!(
        sanitize("SELECT '{\"a\": \"secret\"}'::jsonb @> $1, c ? 'k'", PG),
        "SELECT ?::jsonb @> $1, c ? ?"
    );
    assert_eq!(
        sanitize("SELECT \u{e9}t\u{e9}, 'caf\u{e9}' FROM \"t\u{e9}\"", PG),
        "SELECT \u{e9}t\u{e9}, ? FROM \"t\u{e9}\""
    );
}

#[test]
fn unterminated_text_becomes_one_placeholder() {
    for d in ALL {
        assert_eq!(sanitize("SELECT 'unterminated", d), "SELECT ?");
        assert_eq!(sanitize("SELECT a /* unterminated 'x", d), "SELECT a ?");
    }
    assert_eq!(sanitize("SELECT \"col", PG), "SELECT ?");
    assert_eq!(sanitize("SELECT `col", MY), "SELECT ?");
    assert_eq!(sanitize("SELECT $x$ body", PG), "SELECT ?");
    assert_eq!(sanitize("SELECT E'\\", PG), "SELECT ?");
}

#[test]
fn long_text_is_cut() {
    for d in ALL {
        let long = "SELECT ".to_string() + &"a, ".repeat(5000);
        let s = sanitize(&long, d);
        assert!(s.ends_with("...") && s.len() <= MAX_TEXT + 3, "{}", s.len());
        let comment = "SELECT /*".to_string() + &"\u{e9}".repeat(5000) + "*/ 1";
        let s = sanitize(&comment, d);
        assert!(s.ends_with("...") && s.len() <= MAX_TEXT + 3, "{}", s.len());
        let exact = "a".repeat(MAX_TEXT);
        assert_eq!(sanitize(&exact, d), exact);
    }
}

#[test]
fn operations_and_collections() {
    let s = |q, d| {
        let st = statement(q, d);
        (st.operation, st.collection)
    };
    for d in ALL {
        assert_eq!(
            s("select * from public.orders o where o.id = 1", d),
            ("SELECT".into(), Some("public.orders".into()))
        );
        assert_eq!(
            s("update accounts set x=1", d),
            ("UPDATE".into(), Some("accounts".into()))
        );
        assert_eq!(
            s("DELETE FROM sessions WHERE t < now()", d),
            ("DELETE".into(), Some("sessions".into()))
        );
        assert_eq!(
            s("CREATE TABLE IF NOT EXISTS kv (k text)", d),
            ("CREATE".into(), Some("kv".into()))
        );
        assert_eq!(
            s("COPY items FROM STDIN", d),
            ("COPY".into(), Some("items".into()))
        );
        assert_eq!(s("/* app */ SELECT 1", d), ("SELECT".into(), None));
        assert_eq!(s("SELECT (SELECT 1)", d), ("SELECT".into(), None));
        assert_eq!(s("BEGIN", d), ("BEGIN".into(), None));
        assert_eq!(s("", d), (String::new(), None));
    }
    assert_eq!(
        s("INSERT INTO \"Items\"(a) VALUES (1)", PG),
        ("INSERT".into(), Some("Items".into()))
    );
    assert_eq!(
        s("INSERT INTO `Items`(a) VALUES (1)", MY),
        ("INSERT".into(), Some("Items".into()))
    );
    assert_eq!(
        s("# app\nSELECT * FROM t", MY),
        ("SELECT".into(), Some("t".into()))
    );
    assert_eq!(s("/*!40101 SET NAMES utf8 */", MY), ("SET".into(), None));
}

#[test]
fn hostile_text_never_panics() {
    let qs = [
        "'",
        "$",
        "$$",
        "$a",
        "$a$",
        "E'",
        "U&'",
        "U&",
        "--",
        "/*",
        "/*!",
        "/*M",
        "\u{e9}'\u{1F600}",
        "1e",
        "1e+",
        "\"",
        "`",
        "x'0",
        "_a'",
    ];
    for q in qs.iter().chain(&[
        "SELECT 'unterminated",
        ".",
        "\\",
        "-",
        "#",
        "_",
        "N",
        "0x",
        ".5e",
    ]) {
        for d in ALL {
            let _ = statement(q, d);
            let _ = mysql_sets_ansi_quotes(q, d);
        }
    }
}

#[test]
fn sql_mode_tracking() {
    let m = |q| mysql_sets_ansi_quotes(q, MY);
    assert_eq!(m("SELECT 1"), None);
    assert_eq!(
        m("SET sql_mode = 'ANSI_QUOTES,STRICT_TRANS_TABLES'"),
        Some(true)
    );
    assert_eq!(m("set session sql_mode='ansi'"), Some(true));
    assert_eq!(m("SET @@SESSION.sql_mode := \"TRADITIONAL\""), Some(false));
    assert_eq!(
        m("SET NAMES utf8mb4, @@sql_mode = 'POSTGRESQL'"),
        Some(true)
    );
    assert_eq!(m("SET sql_mode = ''"), Some(false));
    assert_eq!(m("SET sql_mode = ANSI"), Some(true));
    assert_eq!(m("SET sql_mode = DEFAULT"), Some(false));
    assert_eq!(
        mysql_sets_ansi_quotes("SET sql_mode = \"TRADITIONAL\"", MY_ANSI),
        Some(false)
    );
    assert_eq!(
        mysql_sets_ansi_quotes("SET sql_mode = \"ANSI\"", MY_ANSI),
        Some(true)
    );
    assert_eq!(
        m("SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')"),
        Some(false),
        "unreadable counts as without"
    );
    assert_eq!(m("SET GLOBAL sql_mode = 'ANSI'"), None, "not this session");
    assert_eq!(m("SET @@global.sql_mode = 'ANSI'"), None);
    assert_eq!(m("SET @sql_mode = 'ANSI'"), None, "a user variable");
    assert_eq!(m("SELECT * FROM t WHERE sql_mode = 'ANSI'"), None);
    assert_eq!(m("SELECT 'SET sql_mode = ANSI'"), None);
    assert_eq!(
        m("SET sql_mode = 'ANSI'; SET sql_mode = ''"),
        Some(false),
        "the last one wins"
    );
    assert_eq!(m("/* x */ SET sql_mode = 'ANSI_QUOTES'"), Some(true));
}
