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
use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::programs::uprobe::UProbeAttachLocation;
use object::{Object, ObjectSymbol, ReadCache};

use super::{uprobes::LinkSet, Probes};

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
    /// Hooks attached (of `TLS_HOOKS`).
    pub hooks: usize,
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
    // Only the names sonde looks for are kept: an executable's symbol
    // table can hold hundreds of thousands.
    // `REQUIRED` is among the hooks (test `required_symbols_are_hooks`).
    let wanted = |n: &str| TLS_HOOKS.iter().any(|h| h.symbol == n);
    let defined: HashSet<&str> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok())
        .filter(|n| wanted(n))
        .collect();
    if !REQUIRED.iter().all(|s| defined.contains(s)) {
        return None;
    }
    Some(
        TLS_HOOKS
            .iter()
            .filter(|h| defined.contains(h.symbol))
            .collect(),
    )
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
/// TLS library at all.
pub fn on_file<'a>(
    pid: u32,
    path: String,
    open: &Path,
    kind: Kind,
    elf: impl object::ReadRef<'a>,
    probes: &mut Probes,
) -> Option<Library> {
    let Some(hooks) = hooks_in(elf) else {
        return (kind == Kind::Shared).then_some(Library {
            path,
            kind,
            outcome: "no_symbols",
            hooks: 0,
        });
    };
    let (outcome, hooks) = match attach(probes, open, &hooks) {
        Ok(n) => {
            tracing::info!(pid, path, hooks = n, "TLS plaintext probes attached");
            ("attached", n)
        }
        Err(e) => {
            tracing::warn!(pid, path, "TLS probes not attached: {e}");
            ("failed", 0)
        }
    };
    Some(Library {
        path,
        kind,
        outcome,
        hooks,
    })
}

/// Attaches `hooks` to the file at `target`; all required ones, or none.
/// The return probe of each pair is attached before its entry: an entry
/// without its return would leave a call open that swallows the thread's
/// socket records, a return without an entry does nothing.
fn attach(probes: &mut Probes, target: &Path, hooks: &[&Hook]) -> Result<usize, String> {
    let mut set = LinkSet::default();
    let mut pairs = 0;
    for h in hooks {
        let mut pair = LinkSet::default();
        let at = || UProbeAttachLocation::Symbol(h.symbol);
        let attached = h
            .ret
            .map_or(Ok(()), |r| pair.attach(probes, r, at(), target))
            .and_then(|()| pair.attach(probes, h.entry, at(), target));
        match attached {
            Ok(()) => {
                set.extend(pair);
                pairs += 1;
            }
            Err(e) => {
                pair.undo(probes);
                if h.required {
                    set.undo(probes);
                    return Err(format!("{}: {e}", h.symbol));
                }
            }
        }
    }
    Ok(pairs)
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

    /// The machine's own libssl (Debian's OpenSSL 3): every hook is there.
    #[test]
    fn the_system_libssl_has_every_hook() {
        let lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let hooks = hooks_in(&ReadCache::new(File::open(lib).unwrap())).expect("OpenSSL API");
        assert_eq!(hooks.len(), TLS_HOOKS.len());
    }
}
