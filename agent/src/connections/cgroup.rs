//! Container ids from `/proc/<pid>/cgroup`.
//!
//! Runtimes name the container's cgroup after its 64-hex id, wrapped in
//! runtime-specific prefixes and, under the systemd driver, a `.scope`
//! suffix. Both cgroup v1 (one line per hierarchy) and v2 (`0::/path`) are
//! handled; the first line that yields an id wins.

/// Prefixes of container scopes; conmon and other helper scopes are not
/// containers and are rejected before these are stripped.
const PREFIXES: [&str; 6] = [
    "docker-",
    "cri-containerd-",
    "crio-",
    "libpod-",
    "containerd-",
    "cri-o-",
];

/// Extracts the container id from the whole contents of a cgroup file.
pub fn container_id(cgroup_file: &str) -> Option<String> {
    cgroup_file.lines().find_map(|line| {
        // hierarchy-id:controllers:path
        let path = line.splitn(3, ':').nth(2)?;
        container_id_from_path(path)
    })
}

/// Extracts the container id from one cgroup path, searching from the leaf:
/// a process in a nested cgroup (`.../<id>/init.scope`) still belongs to it.
pub fn container_id_from_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(segment_id)
}

fn segment_id(seg: &str) -> Option<String> {
    if seg.contains("conmon") {
        return None;
    }
    let s = seg.strip_suffix(".scope").unwrap_or(seg);
    let s = PREFIXES.iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s);
    is_container_id(s).then(|| s.to_string())
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(Into::into))?
    })
}

/// The cgroup v2 id of a process: the inode of its cgroup directory, which
/// is what `bpf_get_current_cgroup_id()` returns in the kernel.
pub fn cgroup2_id_of(pid: u32, mount: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = f.lines().find_map(|l| l.strip_prefix("0::"))?;
    std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn id(s: &str) -> Option<String> {
        container_id(&s.replace("ID", ID))
    }

    #[test]
    fn docker_cgroupfs_v1() {
        let f = "12:pids:/docker/ID\n11:memory:/docker/ID\n0::/system.slice/containerd.service\n";
        assert_eq!(id(f).as_deref(), Some(ID));
    }

    #[test]
    fn docker_systemd_v2() {
        assert_eq!(id("0::/system.slice/docker-ID.scope").as_deref(), Some(ID));
    }

    #[test]
    fn kubernetes_containerd_systemd_and_cgroupfs() {
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/\
kubepods-burstable-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f6a7b8.slice/cri-containerd-ID.scope";
        assert_eq!(id(systemd).as_deref(), Some(ID));
        let cgroupfs = "0::/kubepods/besteffort/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f6a7b8/ID";
        assert_eq!(id(cgroupfs).as_deref(), Some(ID));
    }

    #[test]
    fn cri_o_but_not_its_conmon() {
        let f = "0::/kubepods.slice/kubepods-pod1.slice/crio-ID.scope";
        assert_eq!(id(f).as_deref(), Some(ID));
        assert_eq!(
            id("0::/kubepods.slice/kubepods-pod1.slice/crio-conmon-ID.scope"),
            None
        );
    }

    #[test]
    fn podman_forms() {
        assert_eq!(
            id("0::/machine.slice/libpod-ID.scope/container").as_deref(),
            Some(ID)
        );
        assert_eq!(
            id("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-ID.scope")
                .as_deref(),
            Some(ID)
        );
        assert_eq!(
            id("1:name=systemd:/libpod_parent/libpod-ID").as_deref(),
            Some(ID)
        );
        assert_eq!(id("0::/machine.slice/libpod-conmon-ID.scope"), None);
    }

    #[test]
    fn nested_init_scope_belongs_to_the_container() {
        assert_eq!(
            id("0::/system.slice/docker-ID.scope/init.scope").as_deref(),
            Some(ID)
        );
    }

    #[test]
    fn host_processes_have_none() {
        assert_eq!(id("0::/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(id("0::/system.slice/nginx.service\n"), None);
        assert_eq!(id("0::/"), None);
        assert_eq!(id(""), None);
        // 64 characters but not hex, and uppercase hex: not ids.
        assert_eq!(id(&format!("0::/docker/{}", "g".repeat(64))), None);
        assert_eq!(id(&format!("0::/docker/{}", ID.to_uppercase())), None);
        // Garbage lines never panic.
        assert_eq!(id("::::\n:\n\u{0}\n0::/docker/ID/"), Some(ID.to_string()));
    }
}
