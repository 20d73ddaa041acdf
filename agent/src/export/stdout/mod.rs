//! Spans on stdout, the default output when no OTLP endpoint is set:
//! whole traces as indented trees (`tree`, the default on a terminal), one
//! line per span (`lines`), or one OTLP-JSON-like object per span (`json`,
//! for piping).
mod json;
mod lines;
mod tree;

use std::{io::Write, time::Instant};

pub use self::{
    json::json,
    lines::line,
    tree::{detail, millis, render, tree_order},
};
use super::assemble::{Assembler, Finished};
use crate::spans::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Each finished trace as one indented tree.
    Tree,
    /// One line per span, as spans finish.
    Lines,
    /// One JSON object per span and line (OTLP JSON field names).
    Json,
}

impl Format {
    /// `tree` for a person at a terminal, `lines` for a pipe or a file.
    pub fn default_for_stdout() -> Format {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            Format::Tree
        } else {
            Format::Lines
        }
    }
}

/// Writes finished spans in one format. Trees wait for their trace to end
/// (see [`Assembler`]); `poll` prints those that are due.
pub struct Printer<W: Write> {
    format: Format,
    trees: Assembler,
    out: W,
}

impl Printer<std::io::Stdout> {
    pub fn stdout(format: Format) -> Self {
        Printer::new(format, std::io::stdout())
    }
}

impl<W: Write> Printer<W> {
    pub fn new(format: Format, out: W) -> Self {
        Printer {
            format,
            trees: Assembler::default(),
            out,
        }
    }

    pub fn span(&mut self, s: Span, now: Instant) {
        // A closed stdout (the reader went away) must not stop the agent:
        // write errors are ignored, as `println!` would panic on them.
        match self.format {
            Format::Lines => {
                let _ = writeln!(self.out, "{}", line(&s));
            }
            Format::Json => {
                let _ = writeln!(self.out, "{}", json(&s));
            }
            Format::Tree => {
                if let Some(t) = self.trees.push(s, now) {
                    let _ = self.out.write_all(text(t).as_bytes());
                }
            }
        }
    }

    /// Prints the trees that are due at `now` (all of them with `None`, at
    /// shutdown).
    pub fn poll(&mut self, now: Option<Instant>) {
        for t in self.trees.due(now) {
            let _ = self.out.write_all(text(t).as_bytes());
        }
        let _ = self.out.flush();
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn text(t: Finished) -> String {
    render(&t.id, t.spans, t.late)
}

#[cfg(test)]
mod tests;
