//! Ring-buffer records: any bytes a (torn, hostile or future) kernel
//! writes must decode or be rejected, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sonde_fuzz::ring::check(data));
