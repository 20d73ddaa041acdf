//! The expected trace tree of each demo flow, and a canonical rendering of
//! a received trace to compare with it: one line per span, `service KIND
//! name`, children indented under their parent and sorted, so the
//! comparison checks service, kind, name and parent of every span.
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan};

/// The demo's services (everything but the load generator).
pub const SERVICES: &[&str] = &[
    "login",
    "accusr",
    "wfd",
    "ingestion",
    "statusup",
    "status",
    "condition",
    "whpusher",
    "tsmanager",
    "conditionworker",
    "emailpusher",
    "gates",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Login,
    DeviceData,
    Gates,
}

impl Flow {
    pub const ALL: [Flow; 3] = [Flow::Login, Flow::DeviceData, Flow::Gates];

    /// The flow a load-generator root span started.
    pub fn of(root: &ReceivedSpan) -> Option<Flow> {
        let target = root
            .attr("url.full")
            .or_else(|| root.attr("url.path"))
            .unwrap_or_default();
        Flow::ALL.into_iter().find(|f| target.contains(f.path()))
    }

    fn path(self) -> &'static str {
        match self {
            Flow::Login => "/login",
            Flow::DeviceData => "/data",
            Flow::Gates => "/gates/",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flow::Login => "login",
            Flow::DeviceData => "device-data",
            Flow::Gates => "gates",
        }
    }
}

/// Cache misses only: the load gives each request its own user.
const LOGIN: &str = "\
loadgen CLIENT POST /login
  login SERVER POST /login
    login CLIENT GET /users/{id}
      accusr SERVER GET /users/{id}
        accusr CLIENT SELECT users
    login CLIENT GET /workspaces/{id}
      wfd SERVER GET /workspaces/{id}
        wfd CLIENT GET
        wfd CLIENT SELECT workspaces
        wfd CLIENT SET
";

const DEVICE_DATA: &str = "\
loadgen CLIENT POST /data
  ingestion SERVER POST /data
    ingestion PRODUCER publish devices
      statusup CONSUMER process statusup
        statusup CLIENT PUT /status/{id}
          status SERVER PUT /status/{id}
            status CLIENT INSERT device_status
        statusup PRODUCER publish condition
          condition CONSUMER process condition.evaluate
            condition PRODUCER publish gatescheduler
              conditionworker CONSUMER process condition
                conditionworker CLIENT POST /email
                  emailpusher SERVER POST /email
              whpusher CONSUMER process data
                whpusher CLIENT POST /series
                  tsmanager SERVER POST /series
                    tsmanager CLIENT INSERT series
";

const GATES: &str = "\
loadgen CLIENT GET /gates/{id}
  gates SERVER GET /gates/{id}
    gates CLIENT SELECT gate_permissions
    gates CLIENT SELECT gate_schedules
    gates CLIENT SELECT gates
";

pub fn expected(flow: Flow) -> &'static str {
    match flow {
        Flow::Login => LOGIN,
        Flow::DeviceData => DEVICE_DATA,
        Flow::Gates => GATES,
    }
}

fn kind(s: &ReceivedSpan) -> &'static str {
    match SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
        SpanKind::Internal => "INTERNAL",
        SpanKind::Unspecified => "UNSPECIFIED",
    }
}

/// One trace as an indented tree. Spans whose parent is not in the trace
/// are roots, so a broken link shows as a second top-level line.
pub fn render(trace: &[&ReceivedSpan]) -> String {
    fn subtree(s: &ReceivedSpan, trace: &[&ReceivedSpan], depth: usize) -> String {
        let mut kids: Vec<String> = trace
            .iter()
            .filter(|k| k.span.parent_span_id == s.span.span_id)
            .map(|k| subtree(k, trace, depth + 1))
            .collect();
        kids.sort();
        format!(
            "{}{} {} {}\n{}",
            "  ".repeat(depth),
            s.service(),
            kind(s),
            s.span.name,
            kids.concat()
        )
    }
    let mut roots: Vec<String> = trace
        .iter()
        .filter(|s| {
            !trace
                .iter()
                .any(|p| p.span.span_id == s.span.parent_span_id)
        })
        .map(|s| subtree(s, trace, 0))
        .collect();
    roots.sort();
    roots.concat()
}
