//! Python runtimes: where each thread of a traced CPython process keeps the
//! contextvars context it runs in, for the kernel's `PY_THREADS`
//! (`agent-ebpf/src/python.rs`). asyncio runs each task's steps in the
//! task's own context, so the context a socket call runs in names the task
//! that made it (`correlation/causality/python.rs` uses it).
//!
//! No uprobe and nothing injected: the interpreter's state is read from the
//! process's memory (`/proc/<pid>/mem`), as debuggers and profilers do.
//! `_PyRuntime` (an exported symbol of the executable or `libpython`) leads
//! to the main interpreter and its list of thread states; each state holds
//! its thread's native id and, at a fixed offset per CPython version, the
//! current context. The offsets were measured on each release here
//! (`layout`), and every walk is checked against the process before
//! anything is entered: each state must point back to its interpreter, name
//! a thread of the process, and hold either no context or an object whose
//! type is `PyContext_Type`. A process that fails any check is left to the
//! thread rules.
//!
//! Supported: CPython 3.11 to 3.13 on x86-64 (3.11 is the first to export
//! `Py_Version` and to keep the native thread id in the thread state).
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
};

use object::{Object, ObjectSegment, ObjectSymbol};

/// The uprobe on the interpreter's context copies (`agent-ebpf/src/python.rs`):
/// the return of `PyContext_CopyCurrent`.
pub const COPY_RETURN: &str = "py_copy_context_ret";
pub const PROGRAMS: &[&str] = &[COPY_RETURN];

/// Offsets of the fields walked, for one CPython minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntimeState.interpreters.head`.
    pub interp_head: u64,
    /// `PyInterpreterState.threads.head`.
    pub threads_head: u64,
    /// `PyThreadState.next`, `.interp`, `.native_thread_id`, `.context`.
    pub ts_next: u64,
    pub ts_interp: u64,
    pub ts_native_tid: u64,
    pub ts_context: u64,
}

/// The layout of CPython 3.`minor`, as measured on 3.11.2, 3.11.7, 3.12.1
/// and 3.13.0 (x86-64, default build).
pub fn layout(minor: u32) -> Option<Layout> {
    let (interp_head, threads_head, ts_native_tid, ts_context) = match minor {
        11 => (40, 16, 160, 224),
        12 => (40, 72, 144, 208),
        13 => (632, 7344, 160, 208),
        _ => return None,
    };
    Some(Layout {
        interp_head,
        threads_head,
        ts_next: 8,
        ts_interp: 16,
        ts_native_tid,
        ts_context,
    })
}

/// Why a Python process is not followed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not CPython, or no interpreter file found.
    NotPython,
    /// A CPython release without a known layout (before 3.11, after 3.13).
    Version,
    /// The walk did not check out (a build with another layout, or the
    /// process changed under it).
    Layout,
}

/// The symbols of an interpreter file (link-time addresses).
#[derive(Debug, Clone, Copy)]
struct Symbols {
    runtime: u64,
    version: u64,
    context_type: u64,
    /// The link-time address of the file's first byte (its first load
    /// segment at file offset 0).
    base: u64,
}

/// A followed Python process: its CPython minor version, its threads, and
/// its interpreter file.
pub struct Followed {
    pub minor: u32,
    pub threads: Vec<PyThread>,
    pub interpreter: Interpreter,
}

/// The file that holds a process's interpreter (the executable, or the
/// `libpython` it links), as a path that reaches it from here, and its
/// device and inode.
pub struct Interpreter {
    pub file: std::path::PathBuf,
    pub key: (u64, u64),
}

/// A Python thread: its id and where its current context is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyThread {
    pub tid: u32,
    pub context_at: u64,
}

/// Reads interpreter files once each (they are large), by device and inode.
#[derive(Default)]
pub struct Finder {
    files: HashMap<(u64, u64), Option<Symbols>>,
}

/// Bound on interpreter files remembered.
const MAX_FILES: usize = 256;
/// Bound on thread states walked per process.
const MAX_THREADS: usize = 4096;

impl Finder {
    /// The threads of process `pid` and where each keeps its context, with
    /// the CPython minor version and its interpreter file; or why it is not
    /// followed.
    pub fn threads_of(&mut self, pid: u32) -> Result<Followed, Skip> {
        let maps =
            std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| Skip::NotPython)?;
        // The executable, or the `libpython` it links (`--enable-shared`).
        let (start, (sym, interpreter)) = interpreter_mappings(&maps)
            .into_iter()
            .find_map(|(start, path)| Some((start, self.symbols(pid, &path)?)))
            .ok_or(Skip::NotPython)?;
        let bias = start.wrapping_sub(sym.base);
        let mem = File::open(format!("/proc/{pid}/mem")).map_err(|_| Skip::NotPython)?;
        let read = |addr: u64| -> Option<u64> {
            let mut b = [0u8; 8];
            mem.read_exact_at(&mut b, addr).ok()?;
            Some(u64::from_le_bytes(b))
        };
        let version = read(bias.wrapping_add(sym.version)).ok_or(Skip::Layout)? as u32;
        if version >> 24 != 3 {
            return Err(Skip::Layout);
        }
        let minor = (version >> 16) & 0xff;
        let l = layout(minor).ok_or(Skip::Version)?;
        let tasks: HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|_| Skip::NotPython)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let threads = walk(
            &read,
            bias.wrapping_add(sym.runtime),
            bias.wrapping_add(sym.context_type),
            &l,
            &tasks,
        )
        .ok_or(Skip::Layout)?;
        Ok(Followed {
            minor,
            threads,
            interpreter,
        })
    }

    /// The interpreter file's symbols, and the file (reached through the
    /// process's root) with its device and inode.
    fn symbols(&mut self, pid: u32, path: &str) -> Option<(Symbols, Interpreter)> {
        let file = std::path::PathBuf::from(format!("/proc/{pid}/root{path}"));
        let meta = std::fs::metadata(&file).ok()?;
        let key = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        let s = match self.files.get(&key) {
            Some(s) => *s,
            None => {
                // Read through a cache: only the headers and dynamic symbols.
                let s = std::fs::File::open(&file)
                    .ok()
                    .and_then(|f| symbols_in(&object::ReadCache::new(f)));
                if self.files.len() >= MAX_FILES {
                    self.files.clear();
                }
                self.files.insert(key, s);
                s
            }
        };
        s.map(|s| (s, Interpreter { file, key }))
    }
}

/// The mappings at file offset 0 of the files that may hold a process's
/// interpreter: their start address and path. The executable `python3.N`
/// or the library `libpython3.N.so`.
fn interpreter_mappings(maps: &str) -> Vec<(u64, String)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let _perms = f.next()?;
            let offset = f.next()?;
            let path = f.nth(2)?;
            let name = path.rsplit('/').next()?;
            let python = name.starts_with("libpython3.")
                || name.strip_prefix("python3").is_some_and(|v| {
                    v.is_empty() || v.starts_with('.') && v[1..].bytes().all(|b| b.is_ascii_digit())
                });
            if !python || u64::from_str_radix(offset, 16).ok()? != 0 {
                return None;
            }
            let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
            Some((start, path.to_string()))
        })
        .collect()
}

/// The symbols sonde needs from an interpreter file, if it defines them.
fn symbols_in<'a>(elf: impl object::ReadRef<'a>) -> Option<Symbols> {
    let file = object::File::parse(elf).ok()?;
    if file.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let find = |name: &str| {
        file.dynamic_symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    };
    let base = file
        .segments()
        .filter(|s| s.file_range().0 == 0)
        .map(|s| s.address())
        .min()?;
    Some(Symbols {
        runtime: find("_PyRuntime")?,
        version: find("Py_Version")?,
        context_type: find("PyContext_Type")?,
        base: base & !0xfff,
    })
}

/// Walks the main interpreter's thread states from `runtime`; None if any
/// check fails (see the module's documentation).
fn walk(
    read: &impl Fn(u64) -> Option<u64>,
    runtime: u64,
    context_type: u64,
    l: &Layout,
    tasks: &HashSet<u32>,
) -> Option<Vec<PyThread>> {
    let interp = read(runtime + l.interp_head).filter(|&a| a != 0)?;
    let mut ts = read(interp + l.threads_head)?;
    let mut out = vec![];
    while ts != 0 {
        if out.len() >= MAX_THREADS || read(ts + l.ts_interp)? != interp {
            return None;
        }
        let tid = read(ts + l.ts_native_tid)?;
        let context = read(ts + l.ts_context)?;
        if context != 0 && read(context + 8)? != context_type {
            return None;
        }
        // A state whose thread has not started or has just ended has no
        // thread of the process behind it: skipped, not a mismatch.
        if let Ok(tid) = u32::try_from(tid) {
            if tasks.contains(&tid) {
                out.push(PyThread {
                    tid,
                    context_at: ts + l.ts_context,
                });
            }
        }
        ts = read(ts + l.ts_next)?;
    }
    // Not one live thread: the layout names something else.
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_mapping() {
        let maps = "\
00400000-00420000 r--p 00000000 08:01 123 /usr/bin/python3.11
00420000-00700000 r-xp 00020000 08:01 123 /usr/bin/python3.11
7f00-7f10 r--p 00000000 08:01 9 /usr/lib/x86_64-linux-gnu/libssl.so.3
";
        assert_eq!(
            interpreter_mappings(maps),
            vec![(0x400000, "/usr/bin/python3.11".to_string())]
        );
        let shared = "\
5500-5600 r--p 00000000 08:01 4 /opt/py/bin/python3.12
7f1000-7f2000 r--p 00000000 08:01 5 /opt/py/lib/libpython3.12.so.1.0
";
        assert_eq!(interpreter_mappings(shared).len(), 2);
        for other in [
            "7f00-7f10 r--p 00000000 08:01 9 /usr/bin/python3-config\n",
            "7f00-7f10 r--p 00000000 08:01 9 /usr/bin/python2.7\n",
            "7f00-7f10 r--p 00001000 08:01 9 /usr/bin/python3.11\n",
            "garbage\n",
        ] {
            assert!(interpreter_mappings(other).is_empty(), "{other}");
        }
    }

    #[test]
    fn layouts_only_for_measured_releases() {
        assert!(layout(10).is_none());
        assert!(layout(14).is_none());
        assert_eq!(layout(11).unwrap().ts_context, 224);
    }

    /// A fake address space: interpreter at 0x1000, two thread states.
    fn memory() -> HashMap<u64, u64> {
        let l = layout(11).unwrap();
        let (rt, interp, t1, t2, ctx, ty) = (0x100, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000);
        HashMap::from([
            (rt + l.interp_head, interp),
            (interp + l.threads_head, t1),
            (t1 + l.ts_interp, interp),
            (t1 + l.ts_native_tid, 41),
            (t1 + l.ts_context, ctx),
            (t1 + l.ts_next, t2),
            (t2 + l.ts_interp, interp),
            (t2 + l.ts_native_tid, 42),
            (t2 + l.ts_context, 0),
            (t2 + l.ts_next, 0),
            (ctx + 8, ty),
        ])
    }

    #[test]
    fn walks_the_thread_states_and_checks_them() {
        let l = layout(11).unwrap();
        let mem = memory();
        let read = |a: u64| mem.get(&a).copied();
        let tasks = HashSet::from([41, 42]);
        let got = walk(&read, 0x100, 0x5000, &l, &tasks).unwrap();
        assert_eq!(
            got,
            vec![
                PyThread {
                    tid: 41,
                    context_at: 0x2000 + 224
                },
                PyThread {
                    tid: 42,
                    context_at: 0x3000 + 224
                },
            ]
        );
        // A thread that is gone is skipped; none alive is a mismatch.
        assert_eq!(
            walk(&read, 0x100, 0x5000, &l, &HashSet::from([42]))
                .unwrap()
                .len(),
            1
        );
        assert!(walk(&read, 0x100, 0x5000, &l, &HashSet::new()).is_none());
        // A context of another type, or a state of another interpreter:
        // the layout is not this one.
        assert!(walk(&read, 0x100, 0x6000, &l, &tasks).is_none());
        let mut bad = memory();
        bad.insert(0x3000 + l.ts_interp, 0x9999);
        let read = |a: u64| bad.get(&a).copied();
        assert!(walk(&read, 0x100, 0x5000, &l, &tasks).is_none());
        // A cycle ends at the bound, not in a hang.
        let mut cycle = memory();
        cycle.insert(0x3000 + l.ts_next, 0x2000);
        let read = |a: u64| cycle.get(&a).copied();
        assert!(walk(&read, 0x100, 0x5000, &l, &tasks).is_none());
    }

    /// This machine's own interpreter, when there is one: the walk finds
    /// the thread that runs it.
    #[test]
    fn follows_a_real_interpreter() {
        use std::io::{BufRead, BufReader, Write};
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("python3")
            .args([
                "-c",
                "import sys; print('up', flush=True); sys.stdin.read()",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("no python3 here");
            return;
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let found = Finder::default().threads_of(child.id());
        let _ = child.stdin.take().unwrap().write_all(b"");
        let _ = child.kill();
        let _ = child.wait();
        match found {
            Ok(f) => {
                assert!((11..=13).contains(&f.minor));
                assert_eq!(f.threads.len(), 1);
                assert_eq!(f.threads[0].tid, child.id(), "the main thread");
                let name = f.interpreter.file.file_name().unwrap().to_string_lossy();
                assert!(
                    name.starts_with("python3") || name.starts_with("libpython3."),
                    "{}",
                    f.interpreter.file.display()
                );
            }
            // An interpreter this module does not support.
            Err(Skip::Version) => eprintln!("python3 here is not 3.11 to 3.13"),
            Err(e) => panic!("{e:?}"),
        }
    }
}
