//! AMQP field tables and content-header properties on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sonde_fuzz::amqp::check(data));
