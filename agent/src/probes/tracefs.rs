//! Finding (and if needed mounting) tracefs, where tracepoint ids and formats live.
use std::path::{Path, PathBuf};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}. \
         Fix: run `mount -t tracefs nodev /sys/kernel/tracing` as root, or in a container \
         bind-mount the host's /sys/kernel/tracing (or /sys/kernel/debug)"
    )]
    MountFailed(std::io::Error),
}

/// Returns the tracefs root, mounting tracefs at /sys/kernel/tracing when no
/// candidate has it (a fresh boot often leaves it unmounted).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(p) = find() {
        return Ok(p);
    }
    let target = Path::new(CANDIDATES[0]);
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::MountFailed(std::io::Error::last_os_error()));
    }
    tracing::info!(path = %target.display(), "mounted tracefs");
    Ok(target.to_path_buf())
}

pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Whether `category/name` exists on this kernel.
pub fn has_tracepoint(root: &Path, category: &str, name: &str) -> bool {
    root.join("events")
        .join(category)
        .join(name)
        .join("id")
        .exists()
}

/// Parses `field:<decl>; offset:<n>;` lines of a tracepoint format file into
/// (field name, offset).
pub fn field_offsets(format: &str) -> Vec<(String, usize)> {
    format
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let decl = l.strip_prefix("field:")?.split(';').next()?;
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?.to_string();
            let off = l
                .split("offset:")
                .nth(1)?
                .split(';')
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((name, off))
        })
        .collect()
}

/// The offsets the `inet_sock_set_state` program was compiled with.
pub const INET_SOCK_SET_STATE_LAYOUT: [(&str, usize); 11] = [
    ("skaddr", 8),
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("daddr", 36),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// Checks a tracepoint's format against the layout the program expects.
/// Returns the first mismatch as a human-readable reason.
pub fn check_layout(format: &str, expected: &[(&str, usize)]) -> Result<(), String> {
    let got = field_offsets(format);
    for (name, off) in expected {
        match got.iter().find(|(n, _)| n == name) {
            Some((_, o)) if o == off => {}
            Some((_, o)) => return Err(format!("field {name} at offset {o}, expected {off}")),
            None => return Err(format!("field {name} missing")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state\nID: 2287\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n";

    #[test]
    fn layout_matches_the_6x_format() {
        assert_eq!(check_layout(FORMAT, &INET_SOCK_SET_STATE_LAYOUT), Ok(()));
    }

    #[test]
    fn layout_reports_moved_and_missing_fields() {
        let moved = FORMAT.replace("offset:30;", "offset:32;");
        assert_eq!(
            check_layout(&moved, &INET_SOCK_SET_STATE_LAYOUT),
            Err("field protocol at offset 32, expected 30".into())
        );
        let missing = FORMAT.replace("protocol", "proto");
        assert_eq!(
            check_layout(&missing, &INET_SOCK_SET_STATE_LAYOUT),
            Err("field protocol missing".into())
        );
    }
}
