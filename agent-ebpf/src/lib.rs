//! Placeholder library target: lets `sonde` name this crate as a build
//! dependency so cargo rebuilds the probes when their sources change.
#![no_std]
