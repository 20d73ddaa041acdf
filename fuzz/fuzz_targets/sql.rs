//! The SQL sanitizer on any UTF-8 text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|sql: &str| sonde_fuzz::sql::check(sql));
