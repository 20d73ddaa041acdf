//! Every protocol in the registry, fed a structured conversation (sides,
//! syscall cuts, capture gaps) and closed; see `sonde_fuzz::conversation`
//! for the promises checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sonde_fuzz::conversation::replay(&sonde_fuzz::conversation::Input::decode(data));
});
