//! The guest's initramfs: busybox, the init script, the test binaries and
//! `sonde` at their host paths with their shared libraries, the HTTP
//! fixtures, a trimmed Python and openssl, as an uncompressed newc cpio.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::{cache, repo, selected, which, Options};
use crate::run;

/// A copy of a binary without its debug info.
fn strip(bin: &Path) -> Result<PathBuf> {
    let dir = cache().join("stripped");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(bin.file_name().context("binary name")?);
    run::sh(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(bin),
    )
    .context("strip (binutils)")?;
    Ok(out)
}

/// Files and symlinks for the initramfs, by guest path.
#[derive(Default)]
struct Tree {
    files: BTreeMap<PathBuf, Entry>,
}

enum Entry {
    File(PathBuf, u32),
    Data(Vec<u8>, u32),
    Link(PathBuf),
    Dir,
}

impl Tree {
    /// A host file at the same path (symlinks followed), with its libraries.
    fn host_file(&mut self, path: &Path) -> Result<()> {
        if self.files.contains_key(path) {
            return Ok(());
        }
        let real = path
            .canonicalize()
            .with_context(|| format!("{}", path.display()))?;
        if real != path {
            self.files
                .insert(path.to_path_buf(), Entry::Link(real.clone()));
        }
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&real)?;
        let mode = meta.permissions().mode() & 0o7777;
        // Debug builds carry hundreds of MiB of debug info the guest never reads.
        let source = if mode & 0o111 != 0 && meta.len() > 8 << 20 {
            strip(&real)?
        } else {
            real.clone()
        };
        self.files.insert(real.clone(), Entry::File(source, mode));
        if mode & 0o111 != 0 || real.to_string_lossy().contains(".so") {
            self.libraries_of(&real)?;
        }
        Ok(())
    }

    fn libraries_of(&mut self, bin: &Path) -> Result<()> {
        let out = Command::new("ldd").arg(bin).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split("=>")
                .nth(1)
                .unwrap_or(line)
                .split_whitespace()
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                self.host_file(Path::new(path))?;
            }
        }
        Ok(())
    }

    /// A host directory tree, skipping names in `skip`.
    fn host_dir(&mut self, dir: &Path, skip: &[&str]) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            let t = e.file_type()?;
            if t.is_dir() {
                self.host_dir(&p, skip)?;
            } else if (t.is_file() || t.is_symlink()) && p.exists() {
                self.host_file(&p)?;
            }
        }
        Ok(())
    }

    /// The archive, in the kernel's "newc" cpio format (uncompressed).
    fn cpio(&self, out: &Path) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for p in self.files.keys() {
            let mut a = p.parent();
            while let Some(d) = a.filter(|d| *d != Path::new("/") && !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                a = d.parent();
            }
        }
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        let mut ino = 1u32;
        let mut entry = |w: &mut dyn Write, name: &Path, mode: u32, data: &[u8]| -> Result<()> {
            let name = name
                .strip_prefix("/")
                .unwrap_or(name)
                .to_string_lossy()
                .into_owned();
            let header = format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
            );
            ino += 1;
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            w.write_all(&vec![0u8; (4 - (110 + name.len() + 1) % 4) % 4])?;
            w.write_all(data)?;
            w.write_all(&vec![0u8; (4 - data.len() % 4) % 4])?;
            Ok(())
        };
        for d in &dirs {
            entry(&mut w, d, 0o040755, &[])?;
        }
        for (path, e) in &self.files {
            match e {
                Entry::Dir => entry(&mut w, path, 0o040755, &[])?,
                Entry::File(src, mode) => {
                    let mut data = vec![];
                    std::fs::File::open(src)?.read_to_end(&mut data)?;
                    entry(&mut w, path, 0o100000 | mode, &data)?
                }
                Entry::Data(data, mode) => entry(&mut w, path, 0o100000 | mode, data)?,
                Entry::Link(target) => {
                    entry(&mut w, path, 0o120777, target.to_string_lossy().as_bytes())?
                }
            }
        }
        entry(&mut w, Path::new("TRAILER!!!"), 0, &[])?;
        w.flush()?;
        Ok(())
    }
}

pub(super) fn initramfs(
    bins: &BTreeMap<String, PathBuf>,
    sonde: &Path,
    opts: &Options,
) -> Result<PathBuf> {
    let mut t = Tree::default();
    let busybox = which("busybox").context("busybox (Debian's busybox-static)")?;
    t.files
        .insert("/bin/busybox".into(), Entry::File(busybox, 0o755));
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/root",
        "/etc",
        "/usr/bin",
        "/sys/kernel/tracing",
    ] {
        t.files.insert(d.into(), Entry::Dir);
    }
    t.host_file(sonde)?;
    for b in bins.values() {
        t.host_file(b)?;
    }
    // The HTTP fixtures, at the path compiled into the tests.
    t.host_dir(&repo().join("agent/tests/fixtures"), &["amqp", "k8s"])?;
    // Python for them: the interpreter the host tests use, its stdlib trimmed.
    let python = PathBuf::from(
        String::from_utf8(
            Command::new("python3")
                .args([
                    "-c",
                    "import sys,os;print(os.path.realpath(sys.executable))",
                ])
                .output()?
                .stdout,
        )?
        .trim(),
    );
    let stdlib = PathBuf::from(
        String::from_utf8(
            Command::new("python3")
                .args([
                    "-c",
                    "import sysconfig;print(sysconfig.get_paths()['stdlib'])",
                ])
                .output()?
                .stdout,
        )?
        .trim(),
    );
    t.host_file(&python)?;
    // openssl makes the TLS test's certificate; Python's ssl module (in the
    // stdlib's lib-dynload) brings libssl with it.
    t.host_file(&which("openssl").context("openssl")?)?;
    t.host_file(Path::new("/usr/lib/ssl/openssl.cnf"))?;
    t.files
        .insert("/usr/bin/python3".into(), Entry::Link(python));
    t.host_dir(
        &stdlib,
        &[
            "site-packages",
            "test",
            "tests",
            "idlelib",
            "tkinter",
            "turtledemo",
            "ensurepip",
            "lib2to3",
            "pydoc_data",
            "__pycache__",
            "distutils",
        ],
    )?;
    let mut script = String::from(INIT_HEAD);
    if opts.agent_log {
        script +=
            "export SONDE_TEST_AGENT_LOG=/tmp/agent.log SONDE_TEST_AGENT_LOG_FILTER=sonde=debug\n";
    }
    for (suite, filters) in selected(opts) {
        if let Some(b) = bins.get(*suite) {
            script += &format!(
                "run_suite {suite} {} --test-threads 1 --color never {} {}\n",
                b.display(),
                filters.join(" "),
                opts.test.as_deref().unwrap_or_default()
            );
        }
    }
    script += &format!(
        "echo \"SONDE-VM-DOCTOR $({} doctor --json 2>/dev/null | tr -d '\\n')\"\n",
        sonde.display()
    );
    script += "echo SONDE-VM-DONE\npoweroff -f\n";
    t.files
        .insert("/init".into(), Entry::Data(script.into_bytes(), 0o755));
    let out = cache().join("initramfs.cpio");
    std::fs::create_dir_all(cache())?;
    t.cpio(&out)?;
    Ok(out)
}

const INIT_HEAD: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
ip link set lo up
echo "SONDE-VM-INIT $(uname -r)"
run_suite() {
  name=$1; shift
  echo "SONDE-VM-SUITE $name"
  "$@" 2>&1
  rc=$?
  if [ $rc != 0 ] && [ -f /tmp/agent.log ]; then sed 's/^/SONDE-VM-LOG /' /tmp/agent.log; fi
  echo "SONDE-VM-RC $name $rc"
}
"#;
