//! Which pipes are followed: those a traced service shares between its
//! processes, where a pre-fork pool hands each task to a worker and takes
//! its result back (`correlation/handoff.rs` links them).
//!
//! A process is followed from the moment it does network work (it listens,
//! accepts or connects). Then the pipes it shares with its children are
//! followed, in both: with the children alive then (from `/proc`), and with
//! those it forks later (the kernel reports the forks of followed
//! processes, `agent-ebpf/src/pipe.rs`). A pipe is shared when both hold an
//! end of it (the same inode). Never followed:
//! - a pipe only one process holds (a self-pipe that wakes an event loop,
//!   Go's netpoller): it hands nothing from one process to another;
//! - a pipe on a standard stream (fd 0, 1 or 2) of either process: that is
//!   stdio (logs to a container runtime or journald, a subprocess's
//!   streams), and following it would copy every log line;
//! - a pipe the parent inherited itself (its own parent holds it too): a
//!   make jobserver, or any pipe from further up, is not the service's.
//!
//! Limits: a pipe handed over another way (SCM_RIGHTS, a named FIFO) is not
//! followed, nor are a process's pipes after it execs; a task read by a
//! child that got work within moments of its fork, before its fork record
//! was read, is missed (its calls stay roots).
use foldhash::{HashMap, HashSet, HashSetExt};

/// Followed processes (the kernel's `PIPE_PROCS` holds as many).
const MAX_PROCESSES: usize = 4096;

/// The inode of the pipe at `pid`'s `fd`, from `/proc` (`pipe:[N]`).
pub fn inode(pid: u32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    parse_link(&link.to_string_lossy())
}

fn parse_link(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// `pid`'s fds that are pipes, with their inodes.
pub fn pipes_of(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            Some((fd, parse_link(&link.to_string_lossy())?))
        })
        .collect()
}

/// The parent of `pid` (`PPid` in `/proc/<pid>/status`).
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The children of `pid` alive now (`/proc/<pid>/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    let mut out = vec![];
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// What the connection table must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// Start following `pid`'s `fd` (pipe `inode`).
    Fd { pid: u32, fd: i32, inode: u64 },
    /// Report `pid`'s forks from now on.
    Forks(u32),
}

#[derive(Default)]
pub struct Pipes {
    /// Followed processes, with their followed pipe fds and inodes.
    followed: HashMap<u32, HashSet<(i32, u64)>>,
    /// Processes not followed because the index was full.
    pub forgotten: u64,
}

impl Pipes {
    pub fn is_followed(&self, pid: u32) -> bool {
        self.followed.contains_key(&pid)
    }

    pub fn entries(&self) -> usize {
        self.followed.len()
    }

    /// `pid` does network work: follow its forks, and the pipes it shares
    /// with its children alive now.
    pub fn activate(&mut self, pid: u32, out: &mut Vec<Follow>) {
        // A process already gone forks nothing.
        if self.followed.contains_key(&pid)
            || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || !self.make_followed(pid, out)
        {
            return;
        }
        for child in children_of(pid) {
            self.forked(pid, child, out);
        }
    }

    /// Followed process `parent` forked `child`: both follow the pipes they
    /// share, and the child's forks are followed too. (The child may be
    /// followed already, for network work of its own.)
    pub fn forked(&mut self, parent: u32, child: u32, out: &mut Vec<Follow>) {
        if !self.followed.contains_key(&parent) {
            return;
        }
        let theirs = pipes_of(child);
        if theirs.is_empty() {
            return;
        }
        let mine = pipes_of(parent);
        let inherited: HashSet<u64> = parent_of(parent)
            .map(|gp| pipes_of(gp).into_iter().map(|(_, ino)| ino).collect())
            .unwrap_or_default();
        let stdio: HashSet<u64> = mine
            .iter()
            .chain(&theirs)
            .filter(|&&(fd, _)| fd <= 2)
            .map(|&(_, ino)| ino)
            .chain(inherited)
            .collect();
        let shared: HashSet<u64> = mine
            .iter()
            .map(|&(_, ino)| ino)
            .filter(|ino| !stdio.contains(ino) && theirs.iter().any(|(_, t)| t == ino))
            .collect();
        if shared.is_empty()
            || !self.followed.contains_key(&child) && !self.make_followed(child, out)
        {
            return;
        }
        for (pid, list) in [(parent, mine), (child, theirs)] {
            for (fd, inode) in list {
                if shared.contains(&inode) {
                    self.follow(pid, fd, inode, out);
                }
            }
        }
    }

    /// The process exited or exec'd (its pipes are closed with its other
    /// fds). Returns whether it was followed.
    pub fn forget(&mut self, pid: u32) -> bool {
        self.followed.remove(&pid).is_some()
    }

    /// Forgets followed processes that are gone (their exit record was
    /// lost), returning them.
    pub fn sweep(&mut self) -> Vec<u32> {
        let gone: Vec<u32> = self
            .followed
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in &gone {
            self.followed.remove(pid);
        }
        gone
    }

    fn make_followed(&mut self, pid: u32, out: &mut Vec<Follow>) -> bool {
        if self.followed.len() >= MAX_PROCESSES {
            self.forgotten += 1;
            return false;
        }
        self.followed.insert(pid, HashSet::new());
        out.push(Follow::Forks(pid));
        true
    }

    fn follow(&mut self, pid: u32, fd: i32, inode: u64, out: &mut Vec<Follow>) {
        // Once per fd: a later fork shares it again.
        if let Some(set) = self.followed.get_mut(&pid) {
            if set.insert((fd, inode)) {
                out.push(Follow::Fd { pid, fd, inode });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pipe_links() {
        assert_eq!(parse_link("pipe:[12345]"), Some(12345));
        assert_eq!(parse_link("socket:[12345]"), None);
        assert_eq!(parse_link("pipe:[x]"), None);
        assert_eq!(parse_link("/dev/null"), None);
    }

    /// A real parent and a real child (python's os.fork, as a pool makes
    /// one) sharing a task pipe at fds above stdio, each with a pipe of
    /// its own, and both with the test's stdio.
    #[test]
    fn follows_only_the_pipes_parent_and_child_share() {
        let script = r#"
import os, sys, time
r, w = os.pipe()
own_r, own_w = os.pipe()
if os.fork() == 0:
    mine_r, mine_w = os.pipe()
    time.sleep(30)
    os._exit(0)
print(r, w, own_r, own_w, flush=True)
time.sleep(30)
"#;
        let mut parent = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let fds: Vec<i32> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        let pid = parent.id();
        let task = inode(pid, fds[0]).expect("a pipe");
        assert_eq!(inode(pid, fds[1]), Some(task));
        let own = inode(pid, fds[2]).unwrap();
        let child = children_of(pid);
        assert_eq!(child.len(), 1, "{child:?}");

        let mut p = Pipes::default();
        let mut out = vec![];
        p.activate(pid, &mut out);
        assert!(out.contains(&Follow::Forks(pid)));
        assert!(out.contains(&Follow::Forks(child[0])));
        let followed: Vec<(u32, i32, u64)> = out
            .iter()
            .filter_map(|f| match *f {
                Follow::Fd { pid, fd, inode } => Some((pid, fd, inode)),
                Follow::Forks(_) => None,
            })
            .collect();
        // Both ends in both: the task pipe, and the parent's other pipe
        // (the child inherited it); never stdio, nor a pipe the test's
        // own process passed down (cargo's jobserver), nor the child's own.
        for fd in [fds[0], fds[1]] {
            assert!(followed.contains(&(pid, fd, task)), "{followed:?}");
            assert!(followed.contains(&(child[0], fd, task)), "{followed:?}");
        }
        assert!(
            followed.iter().all(|&(_, fd, _)| fd > 2),
            "stdio: {followed:?}"
        );
        assert!(
            followed
                .iter()
                .all(|&(_, _, ino)| ino == task || ino == own),
            "{followed:?}"
        );
        // Activating again, or a fork record for a known child, adds nothing.
        out.clear();
        p.activate(pid, &mut out);
        p.forked(pid, child[0], &mut out);
        assert!(out.is_empty());
        assert!(p.forget(child[0]));
        assert!(p.forget(pid));
        assert!(!p.is_followed(pid));
        let _ = std::process::Command::new("kill")
            .arg(child[0].to_string())
            .status();
        let _ = parent.kill();
        let _ = parent.wait();
    }

    #[test]
    fn a_process_gone_is_not_followed_and_is_swept() {
        let mut p = Pipes::default();
        let mut out = vec![];
        p.activate(0x7fff_fff0, &mut out);
        assert!(out.is_empty());
        assert!(!p.is_followed(0x7fff_fff0));
        // One followed, then gone without its exit record.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        p.activate(child.id(), &mut out);
        assert!(p.is_followed(child.id()));
        assert!(p.sweep().is_empty(), "alive");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(p.sweep(), vec![child.id()]);
        assert_eq!(p.entries(), 0);
    }
}
