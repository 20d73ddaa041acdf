//! sonde: an eBPF node agent that turns the socket traffic of unmodified
//! processes into OpenTelemetry traces and RED metrics.
//!
//! The pipeline runs one way, one module per stage; see ARCHITECTURE.md.
pub mod caps;
pub mod event;
pub mod probes;
pub mod conntrack;
pub mod stats;
pub mod reader;
pub mod session;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod output;
pub mod protocols;
pub mod spans;
pub mod export;
pub mod metrics;
pub mod config;
pub mod l7;
pub mod metadata;
pub mod relay;
pub mod nat;
pub mod run;
pub mod linker;
