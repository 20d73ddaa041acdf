//! What `sonde top` shows and how keys change it. No terminal here: the
//! state and its key handling are plain data, tested as such.
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::view::model::{EdgeRow, ServiceRow, Snapshot, TraceDetail, TraceSummary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Services,
    Edges,
    Traces,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Rate,
    Errors,
    P99,
    SelfTime,
    Downstream,
    Name,
}

impl Sort {
    pub fn label(self) -> &'static str {
        match self {
            Sort::Rate => "req/s",
            Sort::Errors => "err%",
            Sort::P99 => "p99",
            Sort::SelfTime => "self",
            Sort::Downstream => "down",
            Sort::Name => "name",
        }
    }

    fn next(self) -> Sort {
        match self {
            Sort::Rate => Sort::Errors,
            Sort::Errors => Sort::P99,
            Sort::P99 => Sort::SelfTime,
            Sort::SelfTime => Sort::Downstream,
            Sort::Downstream => Sort::Name,
            Sort::Name => Sort::Rate,
        }
    }
}

/// What the loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Fetch this trace and show it.
    Open(String),
}

pub struct App {
    /// Where the data comes from, for the header: "local" or the address.
    pub source: String,
    pub tab: Tab,
    pub sort: Sort,
    pub filter: String,
    /// Typing a filter.
    pub editing: bool,
    /// The selected row of the current table.
    pub selected: usize,
    /// The service whose traces the Traces tab lists (all when `None`).
    pub service: Option<String>,
    pub snapshot: Snapshot,
    /// The trace shown as a waterfall, over the current tab.
    pub opened: Option<TraceDetail>,
    /// The last fetch's failure, shown in the footer.
    pub error: Option<String>,
    pub colour: bool,
}

impl App {
    pub fn new(source: String, colour: bool) -> App {
        App {
            source,
            tab: Tab::Services,
            sort: Sort::Rate,
            filter: String::new(),
            editing: false,
            selected: 0,
            service: None,
            snapshot: Snapshot::default(),
            opened: None,
            error: None,
            colour,
        }
    }

    fn matches(&self, s: &str) -> bool {
        self.filter.is_empty() || s.to_lowercase().contains(&self.filter.to_lowercase())
    }

    pub fn services(&self) -> Vec<&ServiceRow> {
        let mut v: Vec<&ServiceRow> = self
            .snapshot
            .services
            .iter()
            .filter(|s| self.matches(&s.name))
            .collect();
        let key = |s: &ServiceRow| match self.sort {
            Sort::Rate => s.rate,
            Sort::Errors => s.error_ratio,
            Sort::P99 => s.p99_ms,
            Sort::SelfTime => s.self_ms,
            Sort::Downstream => s.downstream_ms,
            Sort::Name => 0.0,
        };
        v.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
        v
    }

    pub fn edges(&self) -> Vec<&EdgeRow> {
        let mut v: Vec<&EdgeRow> = self
            .snapshot
            .edges
            .iter()
            .filter(|e| self.matches(&e.client) || self.matches(&e.server))
            .collect();
        let key = |e: &EdgeRow| match self.sort {
            Sort::Rate => e.rate,
            Sort::Errors => e.error_ratio,
            Sort::P99 | Sort::SelfTime | Sort::Downstream => e.p99_ms,
            Sort::Name => 0.0,
        };
        v.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then_with(|| (&a.client, &a.server).cmp(&(&b.client, &b.server)))
        });
        v
    }

    pub fn traces(&self) -> Vec<&TraceSummary> {
        self.snapshot
            .traces
            .iter()
            .filter(|t| self.service.as_ref().is_none_or(|s| *s == t.service))
            .filter(|t| self.matches(&t.service) || self.matches(&t.name))
            .collect()
    }

    fn rows(&self) -> usize {
        match self.tab {
            Tab::Services => self.services().len(),
            Tab::Edges => self.edges().len(),
            Tab::Traces => self.traces().len(),
        }
    }

    /// New data: keep the selection in range.
    pub fn update(&mut self, s: Snapshot) {
        self.snapshot = s;
        self.error = None;
        self.selected = self.selected.min(self.rows().saturating_sub(1));
    }

    fn switch(&mut self, tab: Tab) {
        self.tab = tab;
        self.selected = 0;
        self.opened = None;
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return Action::None;
        }
        let rows = self.rows();
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.opened.is_some() => self.opened = None,
            KeyCode::Esc if self.tab == Tab::Traces && self.service.is_some() => {
                self.service = None;
                self.selected = 0;
            }
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Tab => self.switch(match self.tab {
                Tab::Services => Tab::Edges,
                Tab::Edges => Tab::Traces,
                Tab::Traces => Tab::Services,
            }),
            KeyCode::BackTab => self.switch(match self.tab {
                Tab::Services => Tab::Traces,
                Tab::Edges => Tab::Services,
                Tab::Traces => Tab::Edges,
            }),
            KeyCode::Char('1') => self.switch(Tab::Services),
            KeyCode::Char('2') => self.switch(Tab::Edges),
            KeyCode::Char('3') => self.switch(Tab::Traces),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(rows.saturating_sub(1))
            }
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(10),
            KeyCode::PageDown => self.selected = (self.selected + 10).min(rows.saturating_sub(1)),
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = rows.saturating_sub(1),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Enter => match self.tab {
                Tab::Services => {
                    if let Some(s) = self.services().get(self.selected) {
                        let name = s.name.clone();
                        self.switch(Tab::Traces);
                        self.filter.clear();
                        self.service = Some(name);
                    }
                }
                Tab::Edges => {
                    if let Some(e) = self.edges().get(self.selected) {
                        let name = e.client.clone();
                        self.switch(Tab::Traces);
                        self.filter.clear();
                        self.service = Some(name);
                    }
                }
                Tab::Traces => {
                    if let Some(t) = self.traces().get(self.selected) {
                        return Action::Open(t.trace_id.clone());
                    }
                }
            },
            _ => {}
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEvent;

    use super::*;
    use crate::view::model::TraceSummary;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn app() -> App {
        let mut a = App::new("local".into(), false);
        let svc = |name: &str, rate: f64, p99_ms: f64| ServiceRow {
            name: name.into(),
            rate,
            p99_ms,
            ..ServiceRow::default()
        };
        let trace = |service: &str, id: &str| TraceSummary {
            trace_id: id.into(),
            service: service.into(),
            ..TraceSummary::default()
        };
        a.update(Snapshot {
            services: vec![svc("api", 5.0, 80.0), svc("web", 9.0, 20.0)],
            traces: vec![trace("api", "aa"), trace("web", "bb"), trace("web", "cc")],
            ..Snapshot::default()
        });
        a
    }

    #[test]
    fn sorting_filtering_and_opening_a_services_traces() {
        let mut a = app();
        let names = |a: &App| {
            a.services()
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), ["web", "api"], "busiest first");
        a.key(key(KeyCode::Char('s')));
        a.key(key(KeyCode::Char('s')));
        assert_eq!(a.sort, Sort::P99);
        assert_eq!(names(&a), ["api", "web"], "slowest first");
        for c in ['/', 'w', 'e', 'b'] {
            a.key(key(KeyCode::Char(c)));
        }
        assert_eq!(a.key(key(KeyCode::Char('q'))), Action::None, "typed");
        a.key(key(KeyCode::Backspace));
        a.key(key(KeyCode::Enter));
        assert_eq!(a.filter, "web");
        assert_eq!(names(&a), ["web"]);
        a.key(key(KeyCode::Enter));
        assert_eq!((a.tab, a.service.as_deref()), (Tab::Traces, Some("web")));
        assert_eq!(a.traces().len(), 2);
        a.key(key(KeyCode::Down));
        a.key(key(KeyCode::Down));
        assert_eq!(a.key(key(KeyCode::Enter)), Action::Open("cc".into()));
        a.key(key(KeyCode::Esc));
        assert_eq!(a.service, None, "Esc widens to every service");
        assert_eq!(a.traces().len(), 3);
        assert_eq!(a.key(key(KeyCode::Char('q'))), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        a.editing = true;
        assert_eq!(a.key(ctrl_c), Action::Quit, "even while typing");
    }

    #[test]
    fn the_selection_stays_in_range_when_rows_go() {
        let mut a = app();
        a.key(key(KeyCode::End));
        assert_eq!(a.selected, 1);
        a.update(Snapshot::default());
        assert_eq!(a.selected, 0);
        assert_eq!(a.key(key(KeyCode::Enter)), Action::None, "nothing to open");
    }
}
