//! sonde: an eBPF node agent that turns the socket traffic of unmodified
//! processes into OpenTelemetry traces and RED metrics.
//!
//! The pipeline runs one way, one module per stage; see ARCHITECTURE.md.
//!
//! capture (`probes`, `reader`, `event`) -> `connections` -> `protocols`
//! (dispatch) -> `correlation` -> `telemetry` (`spans`, `metrics`) ->
//! `export`; `session` wires capture and connections, `pipeline` the rest.
pub mod caps;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod connections;
pub mod correlation;
pub mod doctor;
pub mod event;
pub mod export;
pub mod health;
pub mod memory;
pub mod metadata;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod probes;
pub mod protocols;
pub mod reader;
pub mod run;
pub mod session;
pub mod spans;
pub mod stats;
pub mod status;
pub mod telemetry;
pub mod top;
pub mod view;
