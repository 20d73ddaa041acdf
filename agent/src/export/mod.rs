//! Stage 8: exporters. OTLP traces (batched, bounded, retried) and metrics
//! (periodic cumulative snapshots), and the stdout span printer.
pub mod assemble;
pub mod batch;
pub mod encode;
pub mod otlp;
pub mod proto;
pub mod stdout;
