"""Keeping the servers the infra scripts start from outliving them.

A failed test run must not leave PostgreSQL, MariaDB, Redis or RabbitMQ
running. The scripts stop their servers when stdin closes; this module
covers the other ways out:
- SIGTERM, SIGINT and SIGHUP raise SystemExit, so `finally` blocks run
  (Python's default for SIGTERM is to die on the spot).
- Every server gets a parent-death signal (PR_SET_PDEATHSIG): if the script
  is killed with SIGKILL, the kernel signals the servers itself.
- Servers stay in the script's process group (none is started through su,
  which makes a new session), so killing the group reaches all of them.
- Temporary directories carry their owner (pid and start time) in their
  name; a new run removes those of dead owners, and stops any server still
  running in them, before starting its own.
"""
import ctypes, glob, os, re, shutil, signal, subprocess, sys, tempfile, time

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_on_signals():
    def stop(sig, _frame):
        # Once: a second Ctrl-C must not cut the stopping short.
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(128 + sig)
    for sig in SIGNALS:
        signal.signal(sig, stop)


def dies_with_parent(sig=signal.SIGKILL):
    """A preexec_fn: `sig` to the child when this process dies. Popen runs it
    after switching to `user=`, which would otherwise clear the setting."""
    parent = os.getpid()

    def pre():
        _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), sig)
    return pre


def spawn(args, death_signal=signal.SIGKILL, **kw):
    """Popen for a server: quiet unless told otherwise, signalled when we die."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(args, preexec_fn=dies_with_parent(death_signal), **kw)


def stop_all(procs, timeout=10):
    """Stops servers given as (Popen, signal that stops it), together; those
    still running after `timeout` seconds get SIGKILL. Empties `procs`."""
    for p, sig in procs:
        if p.poll() is None:
            p.send_signal(sig)
    end = time.time() + timeout
    for p, _ in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()


def _start_time(pid):
    """The process's start time (clock ticks since boot), or None if it is
    gone (or a zombie: nothing left to stop)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command (field 2) may hold spaces: count from after it.
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def owned_tempdir(prefix):
    """A fresh temporary directory named after this process, after removing
    the ones of earlier runs whose owner is gone (and their servers)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(\d+)-")
    for old in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")):
        m = pattern.match(os.path.basename(old))
        # Directories of another naming (older scripts) may be in use: kept.
        if m and _start_time(int(m.group(1))) != int(m.group(2)):
            print(f"{prefix}: removing the leftovers of an earlier run in {old}", file=sys.stderr)
            reap(old)
            shutil.rmtree(old, ignore_errors=True)
    base = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.{_start_time(os.getpid())}-")
    os.chmod(base, 0o755)
    return base


def _runs_in(pid, base):
    """Whether a process works in `base`: its cwd (PostgreSQL, MariaDB and
    Redis change into their data directory) or its command line names it."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return False
    return cwd == base or cwd.startswith(base + "/") or cwd.startswith(base + " ") or base in cmdline


def reap(base):
    """Stops every process working in `base`. A PostgreSQL postmaster first
    gets SIGQUIT (what `pg_ctl stop -m immediate` sends), which stops its
    backends and releases its shared memory; what is left gets SIGKILL. A
    pid file is only trusted for a process that really runs there."""
    for pidfile in glob.glob(os.path.join(base, "**", "postmaster.pid"), recursive=True):
        try:
            pid = int(open(pidfile).readline())
        except (OSError, ValueError):
            continue
        if _runs_in(pid, base):
            os.kill(pid, signal.SIGQUIT)
            for _ in range(50):
                if _start_time(pid) is None:
                    break
                time.sleep(0.1)
    for _ in range(3):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and _runs_in(int(p), base)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
