//! Go's crypto/tls: the plaintext of `(*Conn).Write` and `(*Conn).Read` in
//! Go programs that already have the goroutine probes (`goruntime.rs`), by
//! uprobes at each function's entry and at each of its RET instructions
//! (`agent-ebpf/src/tls.rs`).
//!
//! The entry probe sits on the stack check's conditional jump, a few bytes
//! in (`code::stack_check`), where the registers are still the entry's:
//! the kernel emulates a jump, where it single-steps the check's `cmp`
//! (see `code.rs`). A function without that prologue gets it at its entry.
//!
//! Uretprobes replace the return address on the stack, and Go moves
//! goroutine stacks as they grow: a moved stack would return into the
//! kernel's trampoline from a copied frame and crash the program. So the
//! return side is a plain uprobe on every RET of the function, found by
//! disassembling its bytes (iced-x86) from the symbol table. A binary
//! without its symbol table (stripped) has no goroutine probes either and
//! is counted there (`sonde_go_binaries_total{outcome="stripped"}`).
use std::path::Path;

use aya::programs::uprobe::UProbeAttachLocation;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol};

use super::{code::stack_check, uprobes::LinkSet, Probes};

/// (entry program, return program, function, required).
pub const GO_TLS_HOOKS: &[(&str, &str, &str, bool)] = &[
    (
        "go_tls_write",
        "go_tls_write_ret",
        "crypto/tls.(*Conn).Write",
        true,
    ),
    (
        "go_tls_read",
        "go_tls_read_ret",
        "crypto/tls.(*Conn).Read",
        true,
    ),
    // Servers run the handshake on its own (net/http does): hooked so its
    // records are not reported.
    (
        "go_tls_handshake",
        "go_tls_handshake_ret",
        "crypto/tls.(*Conn).handshakeContext",
        false,
    ),
];

/// Where function `symbol` of `elf` is hooked, as offsets from its start:
/// its entry's (the stack check's jump, or 0), and every RET instruction's.
/// None if the symbol is not there (the program does not use crypto/tls)
/// or its bytes cannot be read.
pub fn sites<'a>(elf: impl object::ReadRef<'a>, symbol: &str) -> Option<(u64, Vec<u64>)> {
    let file = object::File::parse(elf).ok()?;
    let sym = file
        .symbols()
        .find(|s| s.is_definition() && s.name() == Ok(symbol))?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    // The function's bytes alone: a file read through a cache reads no
    // more of its section.
    let code = section.data_range(sym.address(), sym.size()).ok()??;
    let entry = stack_check(code).unwrap_or(0);
    let mut decoder = Decoder::with_ip(64, code, sym.address(), DecoderOptions::NONE);
    let mut out = vec![];
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.mnemonic() == Mnemonic::Ret {
            out.push(i.ip() - sym.address());
        }
    }
    (!out.is_empty()).then_some((entry, out))
}

/// Attaches the crypto/tls hooks to Go executable `target` (whose bytes
/// are `elf`). `Ok(None)`: the program does not use crypto/tls. All
/// required hooks or none; each function's RET probes before its entry.
pub fn attach<'a>(
    probes: &mut Probes,
    target: &str,
    elf: impl object::ReadRef<'a>,
) -> Result<Option<usize>, String> {
    let found: Vec<_> = GO_TLS_HOOKS.iter().map(|h| (h, sites(elf, h.2))).collect();
    if found.iter().any(|(h, r)| h.3 && r.is_none()) {
        return Ok(None);
    }
    let target = Path::new(target);
    let mut set = LinkSet::default();
    let mut hooked = 0;
    for ((entry, ret, symbol, _), sites) in &found {
        let Some((at, rets)) = sites else { continue };
        let attached = rets
            .iter()
            .try_for_each(|off| {
                let at = UProbeAttachLocation::SymbolOffset(symbol, *off);
                set.attach(probes, ret, at, target)
            })
            .and_then(|()| {
                let at = UProbeAttachLocation::SymbolOffset(symbol, *at);
                set.attach(probes, entry, at, target)
            });
        if let Err(e) = attached {
            set.undo(probes);
            return Err(format!("{symbol}: {e}"));
        }
        hooked += 1;
    }
    Ok(Some(hooked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_go_no_returns() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(sites(me.as_slice(), "crypto/tls.(*Conn).Write").is_none());
        assert!(sites(&b"garbage"[..], "x").is_none());
    }

    /// A function with a branch, kept in this test binary under its name.
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn sonde_gotls_test_target(x: u64) -> u64 {
        if std::hint::black_box(x) > 3 {
            x.wrapping_mul(7)
        } else {
            x + 1
        }
    }

    /// A real function of this test binary: its RETs are found, each at an
    /// offset inside it, in order.
    #[test]
    fn finds_the_rets_of_a_real_function() {
        assert_eq!(std::hint::black_box(sonde_gotls_test_target)(5), 35);
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let file = object::File::parse(&*me).unwrap();
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok("sonde_gotls_test_target"))
            .expect("the test target is in the symbol table");
        let (entry, rets) =
            sites(me.as_slice(), "sonde_gotls_test_target").expect("a function returns");
        // Not Go: no stack check, so at its entry.
        assert_eq!(entry, 0);
        assert!(rets.iter().all(|&o| o < sym.size()));
        assert!(rets.windows(2).all(|w| w[0] < w[1]));
    }
}
