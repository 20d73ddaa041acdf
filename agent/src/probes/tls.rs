//! TLS libraries: finds the OpenSSL API in the files traced processes map
//! and attaches the plaintext uprobes (`agent-ebpf/src/tls.rs`) to each
//! file once.
//!
//! Where the API lives:
//! - a shared `libssl.so*` (OpenSSL 1.1 and 3.x), found in the process's
//!   `/proc/<pid>/maps`;
//! - an executable that links OpenSSL or BoringSSL statically and exports
//!   its symbols (Node.js).
//!
//! Paths are opened through `/proc/<pid>/root`, so a container's library is
//! the one inside its mount namespace. Uprobes are per file: one attachment
//! covers every process that maps it, and the kernel's pid and cgroup
//! filters still decide which of them produce records.
//!
//! Where the code has the shape, reads and writes are hooked at the
//! internal function that `SSL_read` and `SSL_read_ex` (and `SSL_write`
//! and `SSL_write_ex`) both call, not at the public entries. OpenSSL 3's
//! public functions open with `sub rsp, ..`, which the kernel single-steps
//! at a uprobe (a second trap per call, and a third for the return
//! probe's), where the internal ones open with a `push`, which it emulates
//! (`code.rs`). Anything else keeps the public entries.
use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::programs::uprobe::UProbeAttachLocation;
use object::{Object, ObjectSection, ObjectSymbol, ReadCache};

use super::{
    code::{call_site, opens_with_push, wrapped},
    uprobes::LinkSet,
    Probes,
};

/// One hook: the entry program, the return program (if any), the symbol,
/// and whether a library without it is still worth hooking.
pub struct Hook {
    pub entry: &'static str,
    pub ret: Option<&'static str>,
    pub symbol: &'static str,
    pub required: bool,
}

const fn hook(
    entry: &'static str,
    ret: Option<&'static str>,
    symbol: &'static str,
    required: bool,
) -> Hook {
    Hook {
        entry,
        ret,
        symbol,
        required,
    }
}

/// Every TLS hook. The `_ex` forms exist from OpenSSL 1.1.1; the handshake
/// functions are hooked only so their ciphertext is kept out (and the
/// socket learnt early); `SSL_free` forgets the object's socket.
pub const TLS_HOOKS: &[Hook] = &[
    hook("tls_read", Some("tls_read_ret"), "SSL_read", true),
    hook("tls_write", Some("tls_write_ret"), "SSL_write", true),
    hook("tls_read_ex", Some("tls_read_ret"), "SSL_read_ex", false),
    hook("tls_write_ex", Some("tls_write_ret"), "SSL_write_ex", false),
    hook(
        "tls_handshake",
        Some("tls_handshake_ret"),
        "SSL_do_handshake",
        false,
    ),
    hook(
        "tls_handshake",
        Some("tls_handshake_ret"),
        "SSL_connect",
        false,
    ),
    hook(
        "tls_handshake",
        Some("tls_handshake_ret"),
        "SSL_accept",
        false,
    ),
    hook("tls_free", None, "SSL_free", false),
];

/// The symbols a file must export to be hooked at all.
const REQUIRED: [&str; 2] = ["SSL_read", "SSL_write"];

/// A read or write hooked at the internal function its public forms call:
/// `wrapper` passes its arguments to it unchanged (`code::wrapped`), so it
/// takes the wrapper's (the object, the buffer, the length, in OpenSSL 3.3+
/// a write's flags, then where the count goes) and returns 1 with the
/// count stored; `caller` must call it too, once. `entry`/`ret` take the
/// place of the hooks of `replaces`.
pub struct Inner {
    pub wrapper: &'static str,
    pub caller: &'static str,
    pub replaces: &'static [&'static str],
    pub entry: &'static str,
    pub ret: &'static str,
}

/// How many of `INNER` a library has at most: a read and a write.
pub const PAIRS: usize = 2;

/// In order of preference: of two with the same `caller`, the first found
/// is used.
pub const INNER: [Inner; 3] = [
    Inner {
        wrapper: "SSL_read_ex",
        caller: "SSL_read",
        replaces: &["SSL_read", "SSL_read_ex"],
        entry: "tls_read_inner",
        ret: "tls_read_ret",
    },
    // OpenSSL 3.3+: `SSL_write_ex2(s, buf, num, flags, written)`, which
    // `SSL_write_ex` jumps to with no flags.
    Inner {
        wrapper: "SSL_write_ex2",
        caller: "SSL_write",
        replaces: &["SSL_write", "SSL_write_ex"],
        entry: "tls_write_flags",
        ret: "tls_write_ret",
    },
    Inner {
        wrapper: "SSL_write_ex",
        caller: "SSL_write",
        replaces: &["SSL_write", "SSL_write_ex"],
        entry: "tls_write_inner",
        ret: "tls_write_ret",
    },
];

/// For each of `INNER`, the file offset of its internal function, if found.
pub type Found = [Option<u64>; INNER.len()];

/// Every TLS program, for the doctor's verifier check and `probe-cost`.
pub fn programs() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = TLS_HOOKS
        .iter()
        .flat_map(|h| std::iter::once(h.entry).chain(h.ret))
        .chain(INNER.iter().flat_map(|i| [i.entry, i.ret]))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// For each of `INNER`, the file offset of its internal function, where
/// the code has that shape and the function opens with an instruction the
/// kernel emulates (`code::opens_with_push`); else None, and the public
/// forms keep their hooks.
pub fn inner_entries<'a>(elf: impl object::ReadRef<'a>) -> Found {
    match object::File::parse(elf) {
        Ok(file) => inner_of(&file, &api_symbols(&file)),
        Err(_) => [None; INNER.len()],
    }
}

/// A defined symbol of the OpenSSL API: name, section, address, size.
type Sym<'d> = (&'d str, object::SectionIndex, u64, u64);

/// The symbols of `TLS_HOOKS` and `INNER` that `file` defines, each once.
/// Only the names sonde looks for are kept: an executable's symbol table
/// can hold hundreds of thousands.
fn api_symbols<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>) -> Vec<Sym<'d>> {
    let wanted = |n: &str| {
        TLS_HOOKS.iter().any(|h| h.symbol == n)
            || INNER.iter().any(|i| i.wrapper == n || i.caller == n)
    };
    let mut found: Vec<Sym<'d>> = vec![];
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        let (Ok(name), Some(section)) = (sym.name(), sym.section_index()) else {
            continue;
        };
        if sym.is_definition() && wanted(name) && !found.iter().any(|f| f.0 == name) {
            found.push((name, section, sym.address(), sym.size()));
        }
    }
    found
}

/// `inner_entries`, from `file`'s API symbols `syms`.
fn inner_of<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>, syms: &[Sym<'d>]) -> Found {
    let code = |name: &str| {
        let &(_, section, at, size) = syms.iter().find(|f| f.0 == name)?;
        let section = file.section_by_index(section).ok()?;
        Some((section.data_range(at, size).ok()??, at, section))
    };
    let entry = |inner: &Inner| {
        let (wrapper, at, section) = code(inner.wrapper)?;
        let target = wrapped(wrapper, at)?;
        let (caller, caller_at, _) = code(inner.caller)?;
        call_site(caller, caller_at, target)?;
        // Its first instruction, in the wrapper's section.
        let head = section.data_range(target, 16).ok()??;
        if !opens_with_push(head) {
            return None;
        }
        let (offset, _) = section.file_range()?;
        target.checked_sub(section.address())?.checked_add(offset)
    };
    let mut out: Found = [None; INNER.len()];
    for (i, inner) in INNER.iter().enumerate() {
        let taken = INNER[..i]
            .iter()
            .zip(&out)
            .any(|(earlier, at)| at.is_some() && earlier.caller == inner.caller);
        if !taken {
            out[i] = entry(inner);
        }
    }
    out
}

/// What a library file is, seen from its symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A shared `libssl`.
    Shared,
    /// An executable with the API linked in (Node.js).
    Static,
    /// A Go program's crypto/tls (`gotls.rs`).
    Go,
}

/// A TLS library file and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Library {
    /// The path as the process sees it (inside its mount namespace).
    pub path: String,
    pub kind: Kind,
    /// `attached`, or why not: `no_symbols` (stripped or not OpenSSL),
    /// `failed` (the kernel refused).
    pub outcome: &'static str,
    /// Pairs attached: of `TLS_HOOKS`, or of `INNER` in their place.
    pub hooks: usize,
    /// Of them, pairs attached at an internal function (`INNER`).
    pub inner: usize,
}

/// The shared `libssl` files process `pid` maps, as (path inside the
/// process's mount namespace, path to open from here).
pub fn shared_libraries(pid: u32) -> Vec<(String, PathBuf)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return vec![];
    };
    let mut out: Vec<(String, PathBuf)> = vec![];
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        if is_libssl(path) && !out.iter().any(|(p, _)| p == path) {
            out.push((
                path.to_string(),
                PathBuf::from(format!("/proc/{pid}/root{path}")),
            ));
        }
    }
    out
}

/// `libssl.so`, `libssl.so.3`, `libssl.so.1.1`, and the copies Python
/// wheels bundle under a hashed name (`libssl-6a9b88ec.so.3`, psycopg's
/// binary wheel); not NSS's `libssl3.so`.
fn is_libssl(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|f| {
        f == "libssl.so"
            || f.starts_with("libssl.so.")
            || f.strip_prefix("libssl-")
                .is_some_and(|rest| rest.contains(".so"))
    })
}

/// The hooks whose symbols an ELF file defines, or None when it lacks the
/// required ones (not OpenSSL, or stripped of its dynamic symbols).
pub fn hooks_in<'a>(elf: impl object::ReadRef<'a>) -> Option<Vec<&'static Hook>> {
    let file = object::File::parse(elf).ok()?;
    hooks_of(&api_symbols(&file))
}

/// `hooks_in` and `inner_entries` of one file, read and scanned once.
pub fn api<'a>(elf: impl object::ReadRef<'a>) -> Option<(Vec<&'static Hook>, Found)> {
    let file = object::File::parse(elf).ok()?;
    let syms = api_symbols(&file);
    let hooks = hooks_of(&syms)?;
    Some((hooks, inner_of(&file, &syms)))
}

/// `hooks_in`, from a file's API symbols.
fn hooks_of(syms: &[Sym]) -> Option<Vec<&'static Hook>> {
    // `REQUIRED` is among the hooks (test `required_symbols_are_hooks`).
    let defined = |n: &str| syms.iter().any(|s| s.0 == n);
    if !REQUIRED.iter().all(|s| defined(s)) {
        return None;
    }
    Some(TLS_HOOKS.iter().filter(|h| defined(h.symbol)).collect())
}

/// Files already inspected, by (device, inode): uprobes are per inode.
#[derive(Default)]
pub struct Seen(HashSet<(u64, u64)>);

impl Seen {
    /// Opens `path`, if it is a file not inspected before (it is now
    /// marked): the open file, and a reader of its contents that reads
    /// (and keeps, until it is dropped) only the ranges the ELF parser asks
    /// for. Never the whole file: an executable can be hundreds of
    /// megabytes, and each would have been as much of the agent's memory.
    pub fn open_first_time(&mut self, path: &Path) -> Option<(File, ReadCache<File>)> {
        let file = File::open(path).ok()?;
        let m = file.metadata().ok()?;
        if !self.0.insert((m.dev(), m.ino())) {
            return None;
        }
        let reader = ReadCache::new(file.try_clone().ok()?);
        Some((file, reader))
    }
}

/// A path to an open file that stays valid while it is open, whatever
/// happens to the process it was found through: the uprobe attaches to the
/// inode the kernel resolves it to.
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Attaches the TLS hooks to one file (`elf`, its bytes; `open`, its path
/// from here) if it has the API. None for an executable without it: not a
/// TLS library at all. `at_entries`: reads and writes at the public
/// functions' entries even where their internal function is found.
pub fn on_file<'a>(
    pid: u32,
    path: String,
    open: &Path,
    kind: Kind,
    elf: impl object::ReadRef<'a>,
    at_entries: bool,
    probes: &mut Probes,
) -> Option<Library> {
    let Some((hooks, found)) = api(elf) else {
        return (kind == Kind::Shared).then_some(Library {
            path,
            kind,
            outcome: "no_symbols",
            hooks: 0,
            inner: 0,
        });
    };
    let inner = if at_entries {
        [None; INNER.len()]
    } else {
        found
    };
    let mut attached = attach(probes, open, &placements(&hooks, &inner));
    if let Err(e) = &attached {
        if inner.iter().any(Option::is_some) {
            // The internal functions' probes refused: the public entries
            // still give the plaintext, at their cost.
            tracing::info!(
                pid,
                path,
                "TLS probes at internal functions refused ({e}); at the public entries"
            );
            attached = attach(probes, open, &placements(&hooks, &[None; INNER.len()]));
        }
    }
    let (outcome, (hooks, inner)) = match attached {
        Ok((n, inner)) => {
            tracing::info!(pid, path, hooks = n, inner, "TLS plaintext probes attached");
            ("attached", (n, inner))
        }
        Err(e) => {
            tracing::warn!(pid, path, "TLS probes not attached: {e}");
            ("failed", (0, 0))
        }
    };
    Some(Library {
        path,
        kind,
        outcome,
        hooks,
        inner,
    })
}

/// One pair to attach: its programs, where, what to call it in an error,
/// and whether the library is hooked at all without it.
struct Pair {
    entry: &'static str,
    ret: Option<&'static str>,
    at: At,
    name: &'static str,
    required: bool,
    inner: bool,
}

#[derive(Clone, Copy)]
enum At {
    Symbol(&'static str),
    /// A file offset: an internal function has no exported symbol.
    Offset(u64),
}

/// The pairs for a file that has `hooks` and, where found, the internal
/// functions `inner` (file offsets, `inner_entries`): each found takes the
/// place of both public forms' hooks.
fn placements(hooks: &[&'static Hook], inner: &Found) -> Vec<Pair> {
    let replaced = |symbol: &str| {
        INNER
            .iter()
            .zip(inner)
            .any(|(i, at)| at.is_some() && i.replaces.contains(&symbol))
    };
    let mut pairs: Vec<Pair> = INNER
        .iter()
        .zip(inner)
        .filter_map(|(i, at)| {
            Some(Pair {
                entry: i.entry,
                ret: Some(i.ret),
                at: At::Offset((*at)?),
                name: i.caller,
                required: true,
                inner: true,
            })
        })
        .collect();
    pairs.extend(hooks.iter().filter(|h| !replaced(h.symbol)).map(|h| Pair {
        entry: h.entry,
        ret: h.ret,
        at: At::Symbol(h.symbol),
        name: h.symbol,
        required: h.required,
        inner: false,
    }));
    pairs
}

/// Attaches `pairs` to the file at `target`; all required ones, or none.
/// The return probe of each pair is attached before its entry: an entry
/// without its return would leave a call open that swallows the thread's
/// socket records, a return without an entry does nothing. The pairs
/// attached, and how many of them at internal functions.
fn attach(probes: &mut Probes, target: &Path, pairs: &[Pair]) -> Result<(usize, usize), String> {
    let mut set = LinkSet::default();
    let (mut attached_pairs, mut inner) = (0, 0);
    for p in pairs {
        let mut pair = LinkSet::default();
        let at = || match p.at {
            At::Symbol(s) => UProbeAttachLocation::Symbol(s),
            At::Offset(o) => UProbeAttachLocation::AbsoluteOffset(o),
        };
        let attached = p
            .ret
            .map_or(Ok(()), |r| pair.attach(probes, r, at(), target))
            .and_then(|()| pair.attach(probes, p.entry, at(), target));
        match attached {
            Ok(()) => {
                set.extend(pair);
                attached_pairs += 1;
                inner += usize::from(p.inner);
            }
            Err(e) => {
                pair.undo(probes);
                if p.required {
                    set.undo(probes);
                    return Err(format!("{}: {e}", p.name));
                }
            }
        }
    }
    Ok((attached_pairs, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_libssl() {
        assert!(is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_libssl("/lib/libssl.so.1.1"));
        assert!(is_libssl("/opt/x/libssl.so"));
        assert!(is_libssl(
            "/venv/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3"
        ));
        assert!(!is_libssl("/usr/lib/x86_64-linux-gnu/libssl3.so"));
        assert!(!is_libssl("/usr/lib/libcrypto.so.3"));
        assert!(!is_libssl("[heap]"));
    }

    #[test]
    fn this_test_binary_has_no_openssl() {
        let me = File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(hooks_in(&ReadCache::new(me)).is_none());
        assert!(hooks_in(&b"garbage"[..]).is_none());
    }

    #[test]
    fn required_symbols_are_hooks() {
        for r in REQUIRED {
            assert!(TLS_HOOKS.iter().any(|h| h.symbol == r), "{r}");
        }
    }

    /// The machine's own libssl (Debian's OpenSSL 3.0): reads and writes
    /// go at the internal functions both public forms call, which open
    /// with a `push`; every other hook stays on its symbol.
    #[test]
    fn the_system_libssl_is_hooked_at_its_internal_functions() {
        let lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let elf = ReadCache::new(File::open(lib).unwrap());
        let inner = inner_entries(&elf);
        // A read, and a write of 3.0 (no `SSL_write_ex2`, which 3.3 added).
        assert!(
            matches!(inner, [Some(r), None, Some(w)] if r != w),
            "{inner:?}"
        );
        let hooks = hooks_in(&elf).unwrap();
        let pairs = placements(&hooks, &inner);
        let names: Vec<&str> = pairs.iter().map(|p| p.entry).collect();
        assert_eq!(pairs.iter().filter(|p| p.inner).count(), 2);
        for gone in ["tls_read", "tls_read_ex", "tls_write", "tls_write_ex"] {
            assert!(!names.contains(&gone), "{names:?}");
        }
        for kept in [
            "tls_read_inner",
            "tls_write_inner",
            "tls_handshake",
            "tls_free",
        ] {
            assert!(names.contains(&kept), "{names:?}");
        }
        // Without them, the public forms keep theirs.
        let public = placements(&hooks, &[None; INNER.len()]);
        assert_eq!(public.len(), TLS_HOOKS.len());
        assert!(public.iter().all(|p| !p.inner));
        // One found, the other not: only its pair moves.
        let half = placements(&hooks, &[inner[0], None, None]);
        let names: Vec<&str> = half.iter().map(|p| p.entry).collect();
        assert!(names.contains(&"tls_read_inner") && names.contains(&"tls_write_ex"));
        assert!(!names.contains(&"tls_read_ex") && !names.contains(&"tls_write_inner"));
    }

    #[test]
    fn no_internal_functions_outside_openssl() {
        let me = File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(inner_entries(&ReadCache::new(me)), [None; INNER.len()]);
        assert_eq!(inner_entries(&b"garbage"[..]), [None; INNER.len()]);
    }

    /// The machine's own libssl (Debian's OpenSSL 3): every hook is there.
    #[test]
    fn the_system_libssl_has_every_hook() {
        let lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let hooks = hooks_in(&ReadCache::new(File::open(lib).unwrap())).expect("OpenSSL API");
        assert_eq!(hooks.len(), TLS_HOOKS.len());
    }
}
