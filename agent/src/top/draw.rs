//! Drawing `sonde top`: a header, the tabs, one table (or a trace's
//! waterfall) and a line of keys. Fits 80x24; colour only when asked.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::app::{App, Tab};
use crate::view::model::TraceDetail;

/// A duration in at most 6 characters: `0.42ms`, `12.3ms`, `123ms`, `1.23s`.
pub fn dur(ms: f64) -> String {
    if ms <= 0.0 {
        "-".into()
    } else if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 100_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{:.0}s", ms / 1000.0)
    }
}

fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn pct(ratio: f64) -> String {
    format!("{:.1}", ratio * 100.0)
}

pub fn draw(f: &mut Frame, app: &App) {
    let [header, tabs, body, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let style = |s: Style| if app.colour { s } else { Style::new() };
    let snap = &app.snapshot;
    let mut title = format!(
        " sonde top · {} · {} services · {} edges · last {:.0}s · {} spans",
        app.source,
        snap.services.len(),
        snap.edges.len(),
        snap.window_secs,
        snap.spans_seen
    );
    if snap.refused > 0 {
        title.push_str(&format!(" · {} not shown (bounds)", snap.refused));
    }
    f.render_widget(
        Paragraph::new(title).style(style(Style::new().add_modifier(Modifier::BOLD))),
        header,
    );
    let mut t = vec![];
    for (tab, label) in [
        (Tab::Services, "1 Services"),
        (Tab::Edges, "2 Edges"),
        (Tab::Traces, "3 Traces"),
    ] {
        let on = tab == app.tab;
        t.push(if on {
            // Without colour, brackets show the current tab.
            Span::styled(
                if app.colour {
                    format!(" {label} ")
                } else {
                    format!("[{label}]")
                },
                style(Style::new().add_modifier(Modifier::REVERSED)),
            )
        } else {
            Span::raw(format!(" {label} "))
        });
        t.push(Span::raw(" "));
    }
    if let (Tab::Traces, Some(s)) = (app.tab, &app.service) {
        t.push(Span::raw(format!("service: {s}  ")));
    }
    if app.editing || !app.filter.is_empty() {
        t.push(Span::raw(format!(
            "filter: {}{}",
            app.filter,
            if app.editing { "_" } else { "" }
        )));
    }
    f.render_widget(Paragraph::new(Line::from(t)), tabs);
    match &app.opened {
        Some(trace) => waterfall(f, app, trace, body),
        None => match app.tab {
            Tab::Services => services(f, app, body),
            Tab::Edges => edges(f, app, body),
            Tab::Traces => traces(f, app, body),
        },
    }
    let help = match (&app.opened, app.tab, app.editing) {
        (_, _, true) => "type a filter · enter keep · esc clear".to_string(),
        (Some(_), _, _) => "esc back · q quit".to_string(),
        (None, Tab::Traces, _) => {
            "q quit · tab view · ↑↓ select · enter open · / filter · esc all services".to_string()
        }
        (None, _, _) => format!(
            "q quit · tab view · ↑↓ select · enter traces · s sort:{} · / filter",
            app.sort.label()
        ),
    };
    let line = match &app.error {
        Some(e) => Line::from(vec![
            Span::styled(format!(" {e} "), style(Style::new().fg(Color::Red))),
            Span::raw(help),
        ]),
        None => Line::from(format!(" {help}")),
    };
    f.render_widget(Paragraph::new(line), keys);
}

fn table<'a>(
    f: &mut Frame,
    app: &App,
    area: Rect,
    head: &'a [&'a str],
    widths: Vec<Constraint>,
    rows: Vec<Row<'a>>,
) {
    let highlight = if app.colour {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new()
    };
    let empty = rows.is_empty();
    let t = Table::new(rows, widths)
        .header(
            Row::new(head.iter().map(|h| Cell::from(*h))).style(if app.colour {
                Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
            } else {
                Style::new()
            }),
        )
        .column_spacing(1)
        .row_highlight_style(highlight)
        .highlight_symbol(">");
    let mut state = TableState::default().with_selected((!empty).then_some(app.selected));
    f.render_stateful_widget(t, area, &mut state);
    if empty {
        let msg = if app.snapshot.spans_seen == 0 {
            "  waiting for traffic: nothing traced has finished a request yet"
        } else {
            "  nothing in the last window (or nothing matches the filter)"
        };
        let y = area.y + 2;
        if y < area.y + area.height {
            f.render_widget(Paragraph::new(msg), Rect::new(area.x, y, area.width, 1));
        }
    }
}

fn services(f: &mut Frame, app: &App, area: Rect) {
    let red = |bad: bool| {
        if bad && app.colour {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        }
    };
    let rows = app
        .services()
        .into_iter()
        .map(|s| {
            let top = match &s.top_peer {
                Some(p) => format!("{:.0}% {p}", s.top_peer_share * 100.0),
                None => "-".into(),
            };
            Row::new(vec![
                Cell::from(s.name.clone()),
                Cell::from(rate(s.rate)),
                Cell::from(pct(s.error_ratio)).style(red(s.error_ratio > 0.0)),
                Cell::from(dur(s.p50_ms)),
                Cell::from(dur(s.p95_ms)),
                Cell::from(dur(s.p99_ms)),
                Cell::from(dur(s.self_ms)),
                Cell::from(dur(s.downstream_ms)),
                Cell::from(top),
            ])
        })
        .collect();
    let w = |n| Constraint::Length(n);
    table(
        f,
        app,
        area,
        &[
            "SERVICE",
            "REQ/S",
            "ERR%",
            "P50",
            "P95",
            "P99",
            "SELF",
            "DOWN",
            "MOST DOWNSTREAM",
        ],
        vec![
            Constraint::Fill(2),
            w(6),
            w(5),
            w(6),
            w(6),
            w(6),
            w(6),
            w(6),
            Constraint::Fill(3),
        ],
        rows,
    );
}

fn edges(f: &mut Frame, app: &App, area: Rect) {
    let rows = app
        .edges()
        .into_iter()
        .map(|e| {
            Row::new(vec![
                Cell::from(e.client.clone()),
                Cell::from(e.server.clone()),
                Cell::from(rate(e.rate)),
                Cell::from(pct(e.error_ratio)),
                Cell::from(dur(e.p50_ms)),
                Cell::from(dur(e.p99_ms)),
            ])
        })
        .collect();
    let w = |n| Constraint::Length(n);
    table(
        f,
        app,
        area,
        &["CLIENT", "SERVER / PEER", "REQ/S", "ERR%", "P50", "P99"],
        vec![
            Constraint::Fill(2),
            Constraint::Fill(3),
            w(6),
            w(5),
            w(6),
            w(6),
        ],
        rows,
    );
}

fn traces(f: &mut Frame, app: &App, area: Rect) {
    let rows = app
        .traces()
        .into_iter()
        .map(|t| {
            let why = match (t.slow, t.failed) {
                (true, true) => "slow,failed",
                (false, true) => "failed",
                _ => "slow",
            };
            Row::new(vec![
                Cell::from(t.service.clone()),
                Cell::from(t.name.clone()),
                Cell::from(dur(t.duration_ms)),
                Cell::from(t.spans.to_string()),
                Cell::from(why),
                Cell::from(format!("{:.0}s", t.age_secs)),
                Cell::from(t.trace_id.get(..8).unwrap_or(&t.trace_id).to_string()),
            ])
        })
        .collect();
    let w = |n| Constraint::Length(n);
    table(
        f,
        app,
        area,
        &[
            "SERVICE", "REQUEST", "DURATION", "SPANS", "LISTED", "AGO", "TRACE",
        ],
        vec![
            Constraint::Fill(2),
            Constraint::Fill(3),
            w(8),
            w(5),
            w(11),
            w(4),
            w(8),
        ],
        rows,
    );
}

/// Where a span sits on the trace's time line, as a bar of `width` cells.
fn bar(start_ms: f64, dur_ms: f64, total_ms: f64, width: usize) -> String {
    if total_ms <= 0.0 || width == 0 {
        return String::new();
    }
    let scale = width as f64 / total_ms;
    let from = ((start_ms * scale).floor() as usize).min(width - 1);
    let to = (((start_ms + dur_ms) * scale).ceil() as usize).clamp(from + 1, width);
    format!("{}{}", " ".repeat(from), "█".repeat(to - from))
}

fn waterfall(f: &mut Frame, app: &App, t: &TraceDetail, area: Rect) {
    let [title, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let errors = t.spans.iter().filter(|s| s.error.is_some()).count();
    f.render_widget(
        Paragraph::new(format!(
            " trace {} · {} spans · {} · {} error{}",
            t.trace_id,
            t.spans.len(),
            dur(t.duration_ms),
            errors,
            if errors == 1 { "" } else { "s" }
        )),
        title,
    );
    const BAR: u16 = 12;
    let rows = t
        .spans
        .iter()
        .map(|s| {
            let mut name = format!("{}{} {}", "  ".repeat(s.depth), s.service, s.name);
            if !s.detail.is_empty() {
                name.push(' ');
                name.push_str(&s.detail);
            }
            let status = match &s.error {
                None => "ok".to_string(),
                Some(m) if m.is_empty() => "ERROR".into(),
                Some(m) => format!("ERROR {m}"),
            };
            let bad = s.error.is_some() && app.colour;
            Row::new(vec![
                Cell::from(name),
                Cell::from(s.kind.to_lowercase()),
                Cell::from(if s.start_ms > 0.0 {
                    format!("+{}", dur(s.start_ms))
                } else {
                    "+0".into()
                }),
                Cell::from(dur(s.duration_ms)),
                Cell::from(status).style(if bad {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                }),
                Cell::from(bar(s.start_ms, s.duration_ms, t.duration_ms, BAR as usize)),
            ])
        })
        .collect();
    let w = |n| Constraint::Length(n);
    table(
        f,
        app,
        rest,
        &["SPAN", "KIND", "START", "DURATION", "STATUS", "TIME LINE"],
        vec![Constraint::Fill(1), w(6), w(7), w(8), w(14), w(BAR)],
        rows,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::view::model::{EdgeRow, ServiceRow, Snapshot, WaterfallRow};

    fn screen(app: &App) -> String {
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn durations_fit_six_characters() {
        for (ms, s) in [
            (0.0, "-"),
            (0.4213, "0.42ms"),
            (12.345, "12.3ms"),
            (123.4, "123ms"),
            (1234.0, "1.23s"),
            (12_345_678.0, "12346s"),
        ] {
            assert_eq!(dur(ms), s);
        }
        assert_eq!(bar(0.0, 50.0, 100.0, 10), "█████");
        assert_eq!(bar(90.0, 0.001, 100.0, 10), "         █");
    }

    #[test]
    fn services_edges_and_a_waterfall_at_80_by_24_without_colour() {
        let mut app = App::new("127.0.0.1:9465".into(), false);
        app.update(Snapshot {
            window_secs: 10.0,
            spans_seen: 1234,
            services: vec![ServiceRow {
                name: "frontend".into(),
                rate: 12.5,
                error_ratio: 0.02,
                p50_ms: 101.0,
                p95_ms: 130.0,
                p99_ms: 180.0,
                self_ms: 2.1,
                downstream_ms: 99.0,
                top_peer: Some("postgresql 127.0.0.1:5432".into()),
                top_peer_share: 0.93,
            }],
            edges: vec![EdgeRow {
                client: "frontend".into(),
                server: "postgresql 127.0.0.1:5432".into(),
                rate: 12.5,
                error_ratio: 0.0,
                p50_ms: 95.0,
                p99_ms: 170.0,
            }],
            traces: vec![],
            refused: 0,
        });
        let s = screen(&app);
        let lines: Vec<&str> = s.lines().collect();
        assert!(
            lines[0].contains("sonde top · 127.0.0.1:9465 · 1 services · 1 edges"),
            "{s}"
        );
        assert!(lines[1].contains("[1 Services]"), "{s}");
        assert!(lines[2].starts_with(" SERVICE"), "{s}");
        let row = lines[3];
        for want in [
            "frontend",
            "12.5",
            "2.0",
            "101ms",
            "180ms",
            "2.10ms",
            "99.0ms",
            "93% postgres",
        ] {
            assert!(row.contains(want), "{want:?} in {row:?}\n{s}");
        }
        assert!(lines[23].contains("q quit"), "{s}");
        assert!(s.chars().all(|c| !c.is_control() || c == '\n'));
        app.key(ratatui::crossterm::event::KeyEvent::from(
            ratatui::crossterm::event::KeyCode::Char('2'),
        ));
        let s = screen(&app);
        assert!(s.lines().nth(3).unwrap().contains("frontend  "), "{s}");
        assert!(s.contains("postgresql 127.0.0.1:5432"), "{s}");
        app.opened = Some(TraceDetail {
            trace_id: "0f".repeat(16),
            duration_ms: 100.0,
            spans: vec![
                WaterfallRow {
                    depth: 0,
                    service: "frontend".into(),
                    kind: "SERVER".into(),
                    name: "GET /".into(),
                    start_ms: 0.0,
                    duration_ms: 100.0,
                    error: None,
                    detail: "200".into(),
                },
                WaterfallRow {
                    depth: 1,
                    service: "frontend".into(),
                    kind: "CLIENT".into(),
                    name: "SELECT".into(),
                    start_ms: 50.0,
                    duration_ms: 50.0,
                    error: Some("timeout".into()),
                    detail: String::new(),
                },
            ],
        });
        let s = screen(&app);
        let lines: Vec<&str> = s.lines().collect();
        assert!(
            lines[2].contains("1 errors") || lines[2].contains("1 error"),
            "{s}"
        );
        assert!(
            lines[4].contains("frontend GET / 200") && lines[4].contains("server"),
            "{s}"
        );
        assert!(
            lines[5].contains("  frontend SELECT") && lines[5].contains("+50.0ms"),
            "{s}"
        );
        assert!(lines[5].contains("ERROR timeout"), "{s}");
        assert_eq!(lines[5].matches('█').count(), 6, "half the time line: {s}");
        assert!(lines[4].contains("+0 "), "{s}");
    }
}
