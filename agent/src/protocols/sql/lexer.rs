//! Where each literal, comment and quoted identifier of a statement begins
//! and ends, by the rules of the server that will read it.
//!
//! Hand-written rather than sqlparser's tokenizer, which was tried: its
//! backslash and double-quote rules are fixed per dialect type, so
//! standard_conforming_strings=off, ANSI_QUOTES and NO_BACKSLASH_ESCAPES
//! would each need a wrapper dialect forwarding dozens of trait methods
//! (and faking its TypeId for the checks it makes by type); it stops at the
//! first error, and cut captures end in unterminated strings; the tokens of
//! a MySQL `/*!...*/` comment carry positions relative to the comment, so
//! the text around them cannot be copied; `0b101` comes out as a word; and
//! it allocates a String per token on a path taken for every call.
//!
//! A literal must end exactly where the server ends it: ending early turns
//! the rest of the literal into "SQL" that is copied out, and ending late
//! swallows the next opening quote, which turns the next literal inside out.
//! Every token boundary is at an ASCII byte or the end, so slicing the text
//! there never splits a character.
use std::ops::Range;

use super::Dialect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Space,
    /// `--` (MySQL: followed by a space or control character), `#` (MySQL)
    /// and `/* */` (nested in PostgreSQL).
    Comment,
    /// Keywords and unquoted identifiers.
    Word,
    /// `"..."` (PostgreSQL, MySQL with ANSI_QUOTES), `` `...` `` (MySQL).
    Quoted,
    /// Strings, numbers, bit and hex strings, dollar quotes; also anything
    /// left unterminated, since what it holds is unknown.
    Literal,
    /// Operators, punctuation, placeholders, the opener of a MySQL
    /// executable comment.
    Other,
}

pub(super) struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
    d: Dialect,
}

/// Bytes of unquoted identifiers in both dialects; every non-ASCII byte
/// counts, so a word never ends inside a character.
fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn space(c: u8) -> bool {
    c.is_ascii_whitespace() || c == 0x0b
}

impl<'a> Lexer<'a> {
    pub(super) fn new(sql: &'a str, d: Dialect) -> Self {
        Lexer {
            b: sql.as_bytes(),
            i: 0,
            d,
        }
    }

    fn pg(&self) -> bool {
        matches!(self.d, Dialect::Postgres { .. })
    }

    fn at(&self, j: usize) -> Option<u8> {
        self.b.get(j).copied()
    }

    fn scan_while(&self, mut j: usize, f: impl Fn(u8) -> bool) -> usize {
        while self.at(j).is_some_and(&f) {
            j += 1;
        }
        j
    }

    /// Past the quote `q` closing a literal whose body starts at `j` (a
    /// doubled quote stands for itself, and so does the byte after an
    /// escaping backslash); the end when it is unterminated.
    fn close(&self, mut j: usize, q: u8, backslash: bool) -> (usize, bool) {
        while let Some(c) = self.at(j) {
            if (c == b'\\' && backslash) || (c == q && self.at(j + 1) == Some(q)) {
                j += 2;
            } else if c == q {
                return (j + 1, true);
            } else {
                j += 1;
            }
        }
        (self.b.len(), false)
    }

    /// A literal or quoted identifier opened by the quote at `j`.
    fn quoted(&mut self, j: usize, backslash: bool, kind: Kind) -> Kind {
        let q = self.b[j];
        let (end, closed) = self.close(j + 1, q, backslash);
        self.i = end;
        if closed {
            kind
        } else {
            Kind::Literal
        }
    }

    fn line_comment(&mut self, j: usize) -> Kind {
        // PostgreSQL ends a line comment at CR too, MySQL only at LF.
        let pg = self.pg();
        self.i = self.scan_while(j, |c| c != b'\n' && !(pg && c == b'\r'));
        Kind::Comment
    }

    fn block_comment(&mut self, j: usize) -> Kind {
        let nested = self.pg();
        if !nested {
            // MySQL runs the inside of /*!ver ... */ (MariaDB: /*M!ver): it
            // is SQL, lexed as such; the closing */ is copied as operators.
            let bang = match (self.at(j + 2), self.at(j + 3)) {
                (Some(b'!'), _) => Some(j + 3),
                (Some(b'M'), Some(b'!')) => Some(j + 4),
                _ => None,
            };
            if let Some(k) = bang {
                self.i = self.scan_while(k, |c| c.is_ascii_digit());
                return Kind::Other;
            }
        }
        let mut depth = 1u32;
        let mut k = j + 2;
        while k < self.b.len() {
            match (self.b[k], self.at(k + 1)) {
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        self.i = k;
                        return Kind::Comment;
                    }
                }
                (b'/', Some(b'*')) if nested => {
                    depth += 1;
                    k += 2;
                }
                _ => k += 1,
            }
        }
        self.i = self.b.len();
        Kind::Literal
    }

    /// `$1`, or a `$tag$ ... $tag$` string (PostgreSQL).
    fn dollar(&mut self, j: usize) -> Kind {
        if self.at(j + 1).is_some_and(|c| c.is_ascii_digit()) {
            self.i = self.scan_while(j + 1, |c| c.is_ascii_digit());
            return Kind::Other;
        }
        let tag_end = if self
            .at(j + 1)
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80)
        {
            self.scan_while(j + 1, |c| ident_byte(c) && c != b'$')
        } else {
            j + 1
        };
        if self.at(tag_end) != Some(b'$') {
            self.i = j + 1;
            return Kind::Other;
        }
        let delim = &self.b[j..=tag_end];
        let body = tag_end + 1;
        self.i = match self.b[body..].windows(delim.len()).position(|w| w == delim) {
            Some(p) => body + p + delim.len(),
            None => self.b.len(),
        };
        Kind::Literal
    }

    /// 42, 3.14, .5, 1e-10, 0x1F, 0b101, 1_000: letters and dots are taken
    /// along, so nothing of a malformed number is left as a word.
    fn number(&mut self, j: usize) -> Kind {
        let mut k = j;
        while let Some(c) = self.at(k) {
            let sign = k > j
                && matches!(c, b'+' | b'-')
                && matches!(self.b[k - 1], b'e' | b'E')
                && self.at(k + 1).is_some_and(|n| n.is_ascii_digit());
            if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || sign) {
                break;
            }
            k += 1;
        }
        self.i = k;
        Kind::Literal
    }

    /// A word, or a literal behind a prefix: E'' B'' X'' N'' U&'' (and the
    /// U&"" identifier) in PostgreSQL; B'' X'' N'' and _charset'' in MySQL.
    fn word(&mut self, j: usize) -> Kind {
        let end = self.scan_while(j, ident_byte);
        let w = &self.b[j..end];
        let plain = self.d.backslash_in_strings();
        let next = self.at(end);
        let pg = self.pg();
        match (w, next) {
            ([b'E' | b'e'], Some(b'\'')) if pg => self.quoted(end, true, Kind::Literal),
            ([b'B' | b'b' | b'X' | b'x'], Some(b'\'')) => self.quoted(end, false, Kind::Literal),
            ([b'N' | b'n'], Some(b'\'')) => self.quoted(end, plain, Kind::Literal),
            ([b'U' | b'u'], Some(b'&')) if pg && matches!(self.at(end + 1), Some(b'\'' | b'"')) => {
                let kind = if self.at(end + 1) == Some(b'"') {
                    Kind::Quoted
                } else {
                    Kind::Literal
                };
                self.quoted(end + 1, false, kind)
            }
            ([b'_', _, ..], Some(q))
                if !pg && (q == b'\'' || (q == b'"' && self.d.double_quoted_strings())) =>
            {
                self.quoted(end, plain, Kind::Literal)
            }
            _ => {
                self.i = end;
                Kind::Word
            }
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = (Kind, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let j = self.i;
        let c = self.at(j)?;
        let pg = self.pg();
        let next = self.at(j + 1);
        let kind = match c {
            c if space(c) => {
                self.i = self.scan_while(j, space);
                Kind::Space
            }
            b'-' if next == Some(b'-')
                && (pg
                    || self
                        .at(j + 2)
                        .is_none_or(|c| space(c) || c.is_ascii_control())) =>
            {
                self.line_comment(j)
            }
            b'#' if !pg => self.line_comment(j),
            b'/' if next == Some(b'*') => self.block_comment(j),
            b'\'' => self.quoted(j, self.d.backslash_in_strings(), Kind::Literal),
            b'"' if self.d.double_quoted_strings() => {
                self.quoted(j, self.d.backslash_in_strings(), Kind::Literal)
            }
            b'"' => self.quoted(j, false, Kind::Quoted),
            b'`' if !pg => self.quoted(j, false, Kind::Quoted),
            b'$' if pg => self.dollar(j),
            b'0'..=b'9' => self.number(j),
            b'.' if next.is_some_and(|n| n.is_ascii_digit())
                && !(j > 0 && ident_byte(self.b[j - 1])) =>
            {
                self.number(j)
            }
            c if ident_byte(c) && !c.is_ascii_digit() => self.word(j),
            _ => {
                self.i = j + 1;
                Kind::Other
            }
        };
        // Always forward, never past the end, whatever a branch did.
        self.i = self.i.max(j + 1).min(self.b.len());
        Some((kind, j..self.i))
    }
}
