//! Choosing qemu's accelerator. KVM fails in more ways than "not there":
//! /dev/kvm may open and the guest hang, or qemu may abort at start (on the
//! development host: `failed to set MSR 0x10a`, an assertion in
//! `kvm_buf_set_msrs`). Whether a boot failed because of KVM is decided
//! here from what qemu left behind, so that it can be tested without qemu.
use std::{process::ExitStatus, time::Duration};

/// `--accel`: what the matrix runs its guests with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM while it works, then TCG for this and the remaining kernels.
    #[default]
    Auto,
    /// KVM only: a KVM failure ends the run.
    Kvm,
    /// TCG only (single-threaded), never trying KVM.
    Tcg,
}

/// How a boot's qemu process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The guest printed nothing within the first-line limit (qemu killed).
    Silent(Duration),
    /// qemu exited with this status.
    Exited(i32),
    /// qemu died from this signal (an abort is SIGABRT).
    Signaled(i32),
}

impl End {
    pub fn of(status: ExitStatus) -> End {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => End::Exited(c),
            (None, Some(s)) => End::Signaled(s),
            // Neither is only possible for a stopped process, which wait() does not report.
            (None, None) => End::Exited(-1),
        }
    }
}

/// Whether a line of qemu's stderr is an error about KVM. Warnings (CPU
/// features the host lacks, say) leave the guest running and are not.
pub fn kvm_error(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("kvm")
        && !l.contains("warning")
        && [
            "error",
            "fail",
            "assert",
            "cannot",
            "could not",
            "not supported",
            "abort",
        ]
        .iter()
        .any(|w| l.contains(w))
}

/// Why a boot under KVM says nothing about the guest, because KVM itself
/// failed: a KVM error on stderr, or qemu ending (hung, exited or killed by
/// a signal) before the guest's init printed its first line. `None` when
/// the guest ran: its result stands, pass or fail, and TCG would not
/// change it.
pub fn kvm_failure(end: End, stderr: &str, guest_started: bool) -> Option<String> {
    // The first error qemu printed names the cause best; an abort's
    // assertion line follows it.
    let error = stderr
        .lines()
        .map(str::trim)
        .find(|l| kvm_error(l) || l.contains("error"))
        .map(|l| l.strip_prefix("qemu-system-x86_64: ").unwrap_or(l));
    let kvm_line = stderr.lines().map(str::trim).find(|l| kvm_error(l));
    if guest_started {
        return kvm_line.map(|l| {
            format!(
                "qemu: {}",
                l.strip_prefix("qemu-system-x86_64: ").unwrap_or(l)
            )
        });
    }
    let how = match end {
        End::Silent(limit) => format!(
            "the guest printed nothing in {}s (it hangs)",
            limit.as_secs()
        ),
        End::Exited(c) => format!("qemu exited with status {c} before the guest started"),
        End::Signaled(s) => format!("qemu died of {} before the guest started", signal_name(s)),
    };
    Some(match error {
        Some(e) => format!("{how}: {e}"),
        None => how,
    })
}

fn signal_name(s: i32) -> String {
    match s {
        6 => "SIGABRT (an assertion)".into(),
        9 => "SIGKILL".into(),
        11 => "SIGSEGV".into(),
        15 => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}

/// Whether KVM may work: /dev/kvm opens read-write. Err names why not.
pub fn kvm_device() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What qemu 7.2 prints on the development host under `-accel kvm -cpu host`.
    const MSR_ABORT: &str = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
        qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n";

    #[test]
    fn an_abort_at_start_is_a_kvm_failure_naming_its_error() {
        let why = kvm_failure(End::Signaled(6), MSR_ABORT, false).expect("KVM failed");
        assert!(why.contains("SIGABRT"), "{why}");
        assert!(why.contains("failed to set MSR 0x10a"), "{why}");
    }

    #[test]
    fn any_exit_before_the_guest_started_is_a_kvm_failure() {
        for end in [
            End::Exited(0),
            End::Exited(1),
            End::Signaled(11),
            End::Signaled(9),
        ] {
            assert!(kvm_failure(end, "", false).is_some(), "{end:?}");
        }
        let why = kvm_failure(
            End::Exited(1),
            "qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied\n",
            false,
        )
        .unwrap();
        assert!(
            why.contains("status 1") && why.contains("failed to initialize kvm"),
            "{why}"
        );
    }

    #[test]
    fn a_silent_guest_is_a_kvm_failure() {
        let why = kvm_failure(End::Silent(Duration::from_secs(60)), "", false).unwrap();
        assert!(why.contains("nothing in 60s"), "{why}");
    }

    #[test]
    fn a_kvm_error_after_the_guest_started_is_a_kvm_failure() {
        let stderr = "KVM internal error. Suberror: 1\nemulation failure\n";
        let why = kvm_failure(End::Signaled(9), stderr, true).unwrap();
        assert!(why.contains("KVM internal error"), "{why}");
        assert!(kvm_failure(End::Exited(0), MSR_ABORT, true).is_some());
    }

    #[test]
    fn a_guest_that_ran_keeps_its_result() {
        // Passed, failed suites, a kernel panic, the time limit: the guest's own doing.
        for end in [End::Exited(0), End::Exited(1), End::Signaled(9)] {
            assert_eq!(kvm_failure(end, "", true), None, "{end:?}");
        }
        // Warnings about KVM and errors about something else do not count.
        let stderr = "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.80000001H:ECX.svm [bit 2]\n\
            qemu-system-x86_64: warning: KVM: guest may see an unstable TSC\n\
            qemu-system-x86_64: terminating on signal 15 from pid 1\n";
        assert_eq!(kvm_failure(End::Signaled(9), stderr, true), None);
    }

    #[test]
    fn kvm_errors_are_told_from_warnings() {
        assert!(kvm_error(
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69 (kvm)"
        ));
        assert!(kvm_error("qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret' failed."));
        assert!(kvm_error(
            "Could not access KVM kernel module: No such file or directory"
        ));
        assert!(!kvm_error(
            "qemu-system-x86_64: warning: KVM: something optional"
        ));
        assert!(!kvm_error(
            "qemu-system-x86_64: error: could not load kernel '/x'"
        ));
    }
}
