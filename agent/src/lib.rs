//! sonde: an eBPF node agent that turns the socket traffic of unmodified
//! processes into OpenTelemetry traces and RED metrics.
//!
//! The pipeline runs one way, one module per stage; see ARCHITECTURE.md.
//!
//! capture (`probes`, `reader`, `event`) -> `connections` -> `protocols`
//! (dispatch) -> `correlation` -> `telemetry` (`spans`, `metrics`) ->
//! `export`; `session` wires capture and connections, `pipeline` the rest.
pub mod caps;
pub mod clock;
pub mod event;
pub mod probes;
pub mod connections;
pub mod stats;
pub mod reader;
pub mod session;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod output;
pub mod protocols;
pub mod correlation;
pub mod telemetry;
pub mod pipeline;
pub mod spans;
pub mod export;
pub mod metrics;
pub mod health;
pub mod config;
pub mod metadata;
pub mod run;
