//! The subcommands' bodies.
use std::process::ExitCode;

use tokio::io::AsyncWriteExt;

use crate::{
    cli::{CaptureArgs, CaptureCmd, Command, DoctorCmd, ProbeCostCmd},
    clock::Clock,
    connections::StreamEvent,
    doctor,
    output::{json_line, text_line},
    session::Session,
};

pub async fn dispatch(cmd: Command) -> ExitCode {
    match cmd {
        Command::Doctor(d) => doctor_cmd(d),
        Command::ProbeCost(p) => probe_cost_cmd(p),
        Command::Capture(c) => capture_cmd(c).await,
        Command::Run(r) => crate::run::run(r).await,
        Command::Top(t) => match &t.connect {
            Some(addr) => crate::top::connect(addr).await,
            None => crate::run::top(t.run).await,
        },
    }
}

fn probe_cost_cmd(p: ProbeCostCmd) -> ExitCode {
    let window = std::time::Duration::from_secs(p.seconds);
    match crate::probes::cost::measure(window) {
        Ok((costs, floor)) => {
            print!("{}", crate::probes::cost::render(&costs, &floor, window));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sonde probe-cost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn doctor_cmd(d: DoctorCmd) -> ExitCode {
    let report = doctor::run();
    if d.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    } else {
        print!("{}", doctor::render(&report, d.verbose));
    }
    if report.capture_possible {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn start(args: &CaptureArgs) -> Result<Session, ExitCode> {
    Session::start(args.session_config()).map_err(|e| {
        eprintln!("sonde: {e}");
        ExitCode::FAILURE
    })
}

async fn capture_cmd(c: CaptureCmd) -> ExitCode {
    let mut session = match start(&c.common) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let clock = Clock::new();
    let mut stdout = tokio::io::stdout();
    let stop = crate::run::shutdown_signal();
    tokio::pin!(stop);
    eprintln!("sonde: capturing; Ctrl-C to stop");
    loop {
        let ev = tokio::select! {
            ev = session.events.recv() => match ev { Some(ev) => ev, None => break },
            _ = &mut stop => break,
        };
        if !c.connections && !matches!(ev, StreamEvent::Data(..)) {
            continue;
        }
        let mut line = if c.json {
            json_line(&ev, &clock)
        } else {
            text_line(&ev, c.show_bytes)
        };
        line.push('\n');
        if stdout.write_all(line.as_bytes()).await.is_err() {
            break; // stdout closed (e.g. piped into head)
        }
        let _ = stdout.flush().await;
    }
    report_counters(&session);
    ExitCode::SUCCESS
}

fn report_counters(session: &Session) {
    let k = session.kernel_counters();
    let u = session.stats();
    eprintln!(
        "sonde: kernel events={} ringbuf_drops={} read_faults={} map_full={}; \
         user records={} decode_errors={} channel_drops={} unresolved={}",
        k.events,
        k.ringbuf_drops,
        k.read_faults,
        k.map_full,
        u.ringbuf_records,
        u.decode_errors,
        u.reader_channel_drops + u.stream_channel_drops,
        u.unresolved_sockets
    );
}
