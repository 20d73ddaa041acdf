//! `sonde doctor`: what this kernel and this process allow, feature by
//! feature, each tested by actually loading or attaching rather than by
//! guessing from the kernel version.
use std::path::Path;

use aya::{
    programs::{FEntry, KProbe, SkMsg, UProbe},
    Btf,
};
use serde::Serialize;

use crate::{
    caps,
    probes::{programs::Need, tracefs, AttachState, ProbeConfig, Probes},
};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracepointCheck {
    pub hook: String,
    pub required: bool,
    pub state: String,
    pub detail: String,
    /// Instructions the verifier processed (loaded programs, kernels >= 5.16).
    pub verified_insns: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub checks: Vec<Check>,
    pub tracepoints: Vec<TracepointCheck>,
    /// Whether `sonde run`/`capture` can work here.
    pub capture_possible: bool,
    pub capture_problem: Option<String>,
    /// The oldest kernel the agent's programs run on (`probes/compat.rs`).
    pub minimum_kernel: String,
    /// Which kind of hook the loader uses here, per hook family.
    pub strategy: String,
    /// The TLS libraries running processes map, and whether the plaintext
    /// probes would attach to each.
    pub tls_libraries: Vec<TlsLibraryCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsLibraryCheck {
    /// The path as the first process found sees it.
    pub path: String,
    /// Processes that map it now.
    pub processes: usize,
    /// Hooks of `probes::tls::TLS_HOOKS` it has symbols for (0: not the
    /// OpenSSL API, or stripped: it would stay opaque).
    pub hooks: usize,
    /// Read and write pairs that go at the internal function both their
    /// public forms call (`probes::tls::INNER`), where the kernel traps
    /// once.
    pub inner: usize,
}

/// The function the uprobe check attaches to: part of this binary, never
/// inlined, so it has a symbol.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sonde_doctor_uprobe_target() -> u64 {
    std::hint::black_box(42)
}

fn check(name: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            available: true,
            detail,
        },
        Err(detail) => Check {
            name,
            available: false,
            detail,
        },
    }
}

fn kernel_release() -> String {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let f = |a: &[libc::c_char]| {
        unsafe { std::ffi::CStr::from_ptr(a.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    format!("{} {} {}", f(&u.sysname), f(&u.release), f(&u.machine))
}

pub fn run() -> Report {
    let mut checks = vec![];
    let capset = caps::effective();
    checks.push(check(
        "privileges",
        match caps::missing_for_tracing(capset) {
            None => Ok(format!("CapEff={capset:#x}")),
            Some(why) => Err(why),
        },
    ));
    let read_proc =
        caps::has(capset, caps::CAP_SYS_PTRACE) || caps::has(capset, caps::CAP_SYS_ADMIN);
    checks.push(check(
        "proc access",
        if read_proc {
            Ok("CAP_SYS_PTRACE: other processes' fds and sockets are readable".into())
        } else {
            Err("missing CAP_SYS_PTRACE: pre-existing connections and process names of other users \
                 cannot be read. Fix: run as root or add CAP_SYS_PTRACE"
                .into())
        },
    ));
    let btf_path = Path::new("/sys/kernel/btf/vmlinux");
    checks.push(check(
        "btf",
        if btf_path.exists() {
            Ok(btf_path.display().to_string())
        } else {
            Err("no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=n): not needed by the tracepoint \
                 probes; the io_uring path (kprobes) needs it for the msghdr layout"
                .into())
        },
    ));
    let tracefs_root = tracefs::ensure_mounted();
    checks.push(check(
        "tracefs",
        tracefs_root
            .as_ref()
            .map(|p| p.display().to_string())
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "cgroup v2",
        crate::connections::cgroup::cgroup2_mount().map(|m| format!("mounted at {}", m.display())).ok_or_else(|| {
            "no cgroup2 mount: the cgroup filter needs cgroup v2; container ids still work from v1 paths".to_string()
        }),
    ));

    let mut tracepoints = vec![];
    let mut capture_problem = None;
    let mut kernel_io = Err("the eBPF object did not load".to_string());
    match Probes::load_object(&ProbeConfig {
        ringbuf_bytes: 4096 * 16,
        ..Default::default()
    }) {
        Err(e) => {
            checks.push(check("ringbuf", Err(format!("object did not load: {e}"))));
            capture_problem = Some(e.to_string());
        }
        Ok(mut probes) => {
            checks.push(check("ringbuf", Ok("BPF_MAP_TYPE_RINGBUF created".into())));
            if let Err(e) = probes.attach_all() {
                capture_problem = Some(e.to_string());
            }
            // The agent attaches these when io_uring comes into use; doctor
            // proves now that they would load.
            probes.attach_deferred();
            for p in &probes.report {
                let (state, detail) = match &p.state {
                    AttachState::Attached => ("attached", String::new()),
                    AttachState::Skipped(r) => ("skipped", r.clone()),
                    AttachState::Failed(r) => ("failed", r.clone()),
                    AttachState::Deferred(r) => ("deferred", r.clone()),
                };
                tracepoints.push(TracepointCheck {
                    hook: p.hook.clone(),
                    required: p.need == Need::Required,
                    verified_insns: probes.verified_insns(p.program),
                    state: state.into(),
                    detail: if detail.is_empty() {
                        p.covers.to_string()
                    } else {
                        detail
                    },
                });
            }
            if capture_problem.is_none() {
                capture_problem = probes.check_required().err().map(|e| e.to_string());
            }
            kernel_io = kernel_io_state(&probes);
            let attached = probes
                .report
                .iter()
                .filter(|p| p.state == AttachState::Attached)
                .count();
            checks.push(check(
                "tracepoints",
                if attached > 0 {
                    Ok(format!("{attached}/{} attached", probes.report.len()))
                } else {
                    Err("no tracepoint could be attached".into())
                },
            ));
            checks.push(check(
                "accepts",
                match &probes.accept_tuples_off {
                    None => Ok("from the kernel: accept() finds its socket's tuple behind the fd (offsets from BTF)".into()),
                    Some(why) => Err(format!(
                        "from /proc for accepts without a sockaddr (libuv), which a busy agent can reach after the socket closed: {why}"
                    )),
                },
            ));
            checks.push(check("kprobes", kprobe_check(&mut probes)));
            checks.push(check("fentry", fentry_check(&mut probes)));
            checks.push(check("uprobes", uprobe_check(&mut probes)));
            checks.push(check("tls", tls_check(&mut probes)));
            checks.push(check("sk_msg", sk_msg_check(&mut probes)));
            checks.push(check(
                "traceparent",
                inject_check(&mut probes, crate::caps::effective()),
            ));
        }
    }
    let ((maj, min), why) = crate::probes::compat::agent_minimum();
    let has = |name: &str| checks.iter().any(|c| c.name == name && c.available);
    let strategy = strategy(&kernel_io, has("fentry"));
    Report {
        tls_libraries: tls_libraries(),
        kernel: kernel_release(),
        checks,
        tracepoints,
        capture_possible: capture_problem.is_none(),
        capture_problem,
        minimum_kernel: format!("{maj}.{min} ({why})"),
        strategy,
    }
}

fn kprobe_check(probes: &mut Probes) -> Result<String, String> {
    if !crate::probes::kprobes_present() {
        return Err(
            "unavailable: no kprobe PMU and no kprobe_events in tracefs (CONFIG_KPROBES=n)".into(),
        );
    }
    let prog: &mut KProbe = probes.program("sonde_doctor_kprobe")?;
    prog.load().map_err(|e| format!("unavailable: load: {e}"))?;
    let link = prog
        .attach("tcp_sendmsg", 0)
        .map_err(|e| format!("unavailable: attach: {e}"))?;
    let _ = prog.detach(link);
    Ok("available (attached to tcp_sendmsg)".into())
}

fn fentry_check(probes: &mut Probes) -> Result<String, String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("unavailable: no kernel BTF: {e}"))?;
    let prog: &mut FEntry = probes.program("sonde_doctor_fentry")?;
    prog.load("tcp_sendmsg", &btf)
        .map_err(|e| format!("unavailable: load: {e}"))?;
    let link = prog
        .attach()
        .map_err(|e| format!("unavailable: attach: {}", root_cause(&e)))?;
    let _ = prog.detach(link);
    Ok("available (attached to tcp_sendmsg)".into())
}

fn uprobe_check(probes: &mut Probes) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("unavailable: own executable: {e}"))?;
    let prog: &mut UProbe = probes.program("sonde_doctor_uprobe")?;
    prog.load().map_err(|e| format!("unavailable: load: {e}"))?;
    let link = prog
        .attach(
            aya::programs::uprobe::UProbeAttachLocation::Symbol("sonde_doctor_uprobe_target"),
            &exe,
            aya::programs::uprobe::UProbeScope::CallingProcess,
        )
        .map_err(|e| format!("unavailable: attach: {}", root_cause(&e)))?;
    sonde_doctor_uprobe_target();
    let _ = prog.detach(link);
    Ok("available".into())
}

/// Whether the TLS plaintext programs pass this kernel's verifier (they
/// attach as the agent finds libraries; `tls_libraries` lists those).
fn tls_check(probes: &mut Probes) -> Result<String, String> {
    let names = crate::probes::tls::programs();
    for name in &names {
        let prog: &mut UProbe = probes.program(name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| format!("unavailable: {name}: load: {}", root_cause(&e)))?;
        }
    }
    Ok(format!(
        "OpenSSL plaintext programs load ({}); libraries below; Go crypto/tls attaches with the goroutine probes; Node.js through its own OpenSSL. Java, GnuTLS and rustls stay opaque",
        names.len()
    ))
}

/// Every OpenSSL library file running processes map (by inode), with the
/// hooks it has symbols for.
fn tls_libraries() -> Vec<TlsLibraryCheck> {
    use std::{collections::HashMap, os::unix::fs::MetadataExt};
    let mut by_inode: HashMap<(u64, u64), TlsLibraryCheck> = HashMap::new();
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        for (path, open) in crate::probes::tls::shared_libraries(pid) {
            let Ok(m) = std::fs::metadata(&open) else {
                continue;
            };
            let entry = by_inode.entry((m.dev(), m.ino())).or_insert_with(|| {
                let api = std::fs::File::open(&open)
                    .ok()
                    .and_then(|f| crate::probes::tls::api(&object::ReadCache::new(f)));
                let (hooks, inner) = api.map_or((0, 0), |(hooks, inner)| {
                    (hooks.len(), inner.iter().filter(|o| o.is_some()).count())
                });
                TlsLibraryCheck {
                    hooks,
                    inner,
                    path,
                    processes: 0,
                }
            });
            entry.processes += 1;
        }
    }
    let mut out: Vec<TlsLibraryCheck> = by_inode.into_values().collect();
    out.sort_by(|a, b| b.processes.cmp(&a.processes).then(a.path.cmp(&b.path)));
    out
}

fn sk_msg_check(probes: &mut Probes) -> Result<String, String> {
    let prog: &mut SkMsg = probes.program("sonde_doctor_sk_msg")?;
    prog.load().map_err(|e| format!("unavailable: load: {e}"))?;
    Ok("available (program loads)".into())
}

/// Whether `--context-propagation traceparent` can work here: cgroup v2,
/// CAP_NET_ADMIN, and the kernel accepting its two programs (the sk_msg
/// program's `bpf_loop` needs 5.17).
fn inject_check(probes: &mut Probes, caps: u64) -> Result<String, String> {
    use aya::programs::SockOps;
    let mount = crate::connections::cgroup::cgroup2_mount().ok_or(
        "unavailable: cgroup v2 is not mounted (its sock_ops program attaches to a cgroup v2)",
    )?;
    if !crate::caps::has(caps, crate::caps::CAP_NET_ADMIN) {
        return Err(
            "unavailable: CAP_NET_ADMIN is missing (add it to the agent's capabilities; \
                    the Helm chart does with contextPropagation: traceparent)"
                .into(),
        );
    }
    let msg: &mut SkMsg = probes.program("sonde_inject")?;
    msg.load()
        .map_err(|e| format!("unavailable: the sk_msg program is refused (Linux 5.17+): {e}"))?;
    let ops: &mut SockOps = probes.program("sonde_inject_enrol")?;
    ops.load()
        .map_err(|e| format!("unavailable: the sock_ops program is refused: {e}"))?;
    Ok(format!(
        "available, off by default (--context-propagation traceparent; cgroup v2 at {})",
        mount.display()
    ))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// Whether the io_uring path runs, or the first reason it does not.
fn kernel_io_state(probes: &Probes) -> Result<(), String> {
    if probes.kernel_io_active() {
        return Ok(());
    }
    if let Some(why) = &probes.kernel_io_off {
        return Err(why.clone());
    }
    let io: Vec<String> = crate::probes::programs::KERNEL_IO
        .iter()
        .map(|k| k.hook_name())
        .collect();
    Err(probes
        .report
        .iter()
        .filter(|p| io.contains(&p.hook))
        .find_map(|p| match &p.state {
            AttachState::Skipped(r) | AttachState::Failed(r) | AttachState::Deferred(r) => {
                Some(format!("{}: {r}", p.hook))
            }
            AttachState::Attached => None,
        })
        .unwrap_or_else(|| "not attached".into()))
}

/// The loader's choice of hook per family on this kernel. Tracepoints
/// everywhere: they exist on every supported kernel, need no CO-RE, and
/// carry the syscall arguments sonde reads. io_uring's sends and receives
/// make no syscall of their own, so where the kernel has kprobes they are
/// read at tcp_sendmsg/tcp_recvmsg. fentry would reach the same two
/// functions more cheaply, but it is missing wherever kprobes are (it needs
/// BTF and trampolines) and refused in some sandboxes that allow kprobes,
/// so it adds no coverage; it is detected and reported only.
pub fn strategy(kernel_io: &Result<(), String>, fentry: bool) -> String {
    let io = match kernel_io {
        Ok(()) => "kprobes on tcp_sendmsg/tcp_recvmsg (msghdr layout from BTF), attached at the first io_uring request on a traced socket".to_string(),
        Err(why) => format!("not captured ({why})"),
    };
    format!(
        "connections, data and lifecycle: tracepoints (syscalls, sock, sched); io_uring socket payload: {io}; fentry {}: not used",
        if fentry { "available" } else { "unavailable" }
    )
}

/// Human-readable rendering.
pub fn render(r: &Report, verbose: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "sonde doctor: {}", r.kernel);
    for c in &r.checks {
        let mark = if c.available { "ok " } else { "no " };
        let _ = writeln!(s, "  [{mark}] {:<12} {}", c.name, c.detail);
    }
    for t in &r.tracepoints {
        if verbose || t.state != "attached" {
            let need = if t.required { "required" } else { "optional" };
            let verified = t
                .verified_insns
                .map(|n| format!(" ({n} insns verified)"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "        {:<8} {:<46} {need}: {}{verified}",
                t.state, t.hook, t.detail
            );
        }
    }
    for l in &r.tls_libraries {
        let what = if l.hooks > 0 {
            match l.inner {
                0 => format!("OpenSSL API, {} hooks", l.hooks),
                n => format!(
                    "OpenSSL API, {} hooks; {n} of {} pairs at internal functions",
                    l.hooks,
                    crate::probes::tls::PAIRS
                ),
            }
        } else {
            "no OpenSSL symbols: stays opaque".into()
        };
        let _ = writeln!(
            s,
            "        tls      {:<46} {} processes: {what}",
            l.path, l.processes
        );
    }
    let _ = writeln!(s, "strategy: {}", r.strategy);
    let _ = writeln!(s, "minimum kernel: {}", r.minimum_kernel);
    match &r.capture_problem {
        None => {
            let _ = writeln!(
                s,
                "capture: possible (tracepoint probes; kprobes/fentry not needed)"
            );
        }
        Some(p) => {
            let _ = writeln!(s, "capture: IMPOSSIBLE: {p}");
        }
    }
    s
}
