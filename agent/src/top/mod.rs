//! `sonde top`: a live terminal view of the node (services, edges, slow and
//! failed traces), refreshed every second. It runs the capture pipeline
//! itself, as `sonde run` does, or with `--connect` reads a running agent's
//! view endpoint (`view/serve.rs`).
pub mod app;
pub mod draw;

use std::{
    io::IsTerminal,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event, KeyEventKind};

use self::app::{Action, App};
use crate::view::{
    model::{Snapshot, TraceDetail},
    serve::{SNAPSHOT_PATH, TRACE_PATH},
    Shared,
};

/// Set while the screen is up: logs then go to [`log_path`].
pub static SCREEN: AtomicBool = AtomicBool::new(false);

/// Where logs go while the screen is up.
pub fn log_path() -> std::path::PathBuf {
    std::env::temp_dir().join("sonde-top.log")
}

/// The log writer: stderr, or the log file while the screen is up.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Box<dyn std::io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        if !SCREEN.load(Relaxed) {
            return Box::new(std::io::stderr());
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path())
        {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::sink()),
        }
    }
}

/// How often the screen takes new data.
const REFRESH: Duration = Duration::from_secs(1);

/// Where the data comes from.
pub enum Source {
    /// This process's own pipeline.
    Local(Arc<Shared>),
    /// A running agent's view endpoint.
    Remote {
        base: String,
        client: reqwest::Client,
        rt: tokio::runtime::Handle,
    },
}

impl Source {
    pub fn remote(addr: &str, rt: tokio::runtime::Handle) -> Result<Source, String> {
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", addr.trim_end_matches('/'))
        };
        let client = crate::export::otlp::http_client(Duration::from_secs(2))
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Source::Remote { base, client, rt })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, String> {
        let Source::Remote { base, client, rt } = self else {
            unreachable!("local sources are read directly")
        };
        let url = format!("{base}{path}");
        rt.block_on(async {
            let r = client.get(&url).send().await.map_err(|e| {
                format!("cannot reach the agent at {base}: {e}. Is `sonde run` running there (its view listens on --view-listen, default 127.0.0.1:9465)?")
            })?;
            if r.status() == reqwest::StatusCode::NOT_FOUND && path.starts_with(TRACE_PATH) {
                return Ok(None);
            }
            if !r.status().is_success() {
                return Err(format!("{url}: HTTP {}", r.status()));
            }
            let body = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| format!("{url} is not a sonde view ({e}); is this the agent's --view-listen address?"))
        })
    }

    pub fn snapshot(&self) -> Result<Snapshot, String> {
        match self {
            Source::Local(v) => Ok(v.snapshot()),
            Source::Remote { .. } => self
                .get(SNAPSHOT_PATH)
                .map(|s: Option<Snapshot>| s.unwrap_or_default()),
        }
    }

    pub fn trace(&self, id: &str) -> Result<Option<TraceDetail>, String> {
        match self {
            Source::Local(v) => Ok(v.trace(id)),
            Source::Remote { .. } => self.get(&format!("{TRACE_PATH}/{id}")),
        }
    }
}

/// Fails early, before the terminal is taken, where `sonde top` cannot
/// draw: output that is not a terminal.
pub fn check_terminal() -> Result<(), String> {
    if !std::io::stdout().is_terminal() {
        return Err("sonde top draws on a terminal, and stdout is not one. For spans in a pipe or a file use `sonde run --stdout-format lines` (or json)".into());
    }
    Ok(())
}

/// Colour unless NO_COLOR is set (the output is a terminal already).
pub fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none()
}

/// Runs the screen until `q` (or `stop` is set). Blocking: call it from a
/// thread that may block.
pub fn run_screen(source: Source, name: String, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut app = App::new(name, colour());
    let mut terminal =
        ratatui::try_init().map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let result = (|| -> Result<(), String> {
        let mut next = Instant::now();
        while !stop.load(Relaxed) {
            if Instant::now() >= next {
                match source.snapshot() {
                    Ok(s) => app.update(s),
                    Err(e) => app.error = Some(e),
                }
                // An open trace keeps its spans; late ones join it.
                if let Some(id) = app.opened.as_ref().map(|t| t.trace_id.clone()) {
                    if let Ok(Some(t)) = source.trace(&id) {
                        app.opened = Some(t);
                    }
                }
                next = Instant::now() + REFRESH;
            }
            terminal
                .draw(|f| draw::draw(f, &app))
                .map_err(|e| format!("cannot draw: {e}"))?;
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            if !event::poll(wait).map_err(|e| format!("cannot read the terminal: {e}"))? {
                continue;
            }
            match event::read().map_err(|e| format!("cannot read the terminal: {e}"))? {
                Event::Key(k) if k.kind != KeyEventKind::Release => match app.key(k) {
                    Action::Quit => break,
                    Action::Open(id) => match source.trace(&id) {
                        Ok(Some(t)) => app.opened = Some(t),
                        Ok(None) => app.error = Some("that trace has left the view".into()),
                        Err(e) => app.error = Some(e),
                    },
                    Action::None => {}
                },
                _ => {}
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

/// `sonde top --connect ADDR`.
pub async fn connect(addr: &str) -> ExitCode {
    let fail = |m: String| {
        eprintln!("sonde top: {m}");
        ExitCode::FAILURE
    };
    if let Err(e) = check_terminal() {
        return fail(e);
    }
    let rt = tokio::runtime::Handle::current();
    let source = match Source::remote(addr, rt) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let name = addr.to_string();
    let screen = tokio::task::spawn_blocking(move || {
        // Refuse at once, before taking the terminal, if nothing answers.
        source.snapshot()?;
        run_screen(source, name, Arc::new(AtomicBool::new(false)))
    });
    match screen.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(e),
        Err(e) => fail(format!("the screen thread failed: {e}")),
    }
}
