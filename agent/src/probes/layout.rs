//! The running kernel's struct offsets, read from its BTF: for the kprobe
//! path (see `agent-ebpf/src/kernel_io.rs`, with the io_uring tracepoint's
//! format file), and from a task to an fd's socket (`agent-ebpf/src/conn.rs`,
//! accept). Doing this here, once at load, keeps CO-RE relocations out of
//! the Rust eBPF code, which cannot emit them reliably.
use std::path::Path;

use btf_rs::{Btf, Struct, Type};
use sonde_common::{FdLayout, KernelLayout, ProcLayout};

use super::tracefs;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF at `path` (`VMLINUX_BTF`), parsed once at load for
/// every layout here. The error names the file.
pub fn kernel_btf(path: &Path) -> Result<Btf, String> {
    Btf::from_file(path).map_err(|e| format!("no kernel BTF at {}: {e}", path.display()))
}

/// Reads the layout from the kernel's BTF and the tracefs at
/// `tracefs_root`. The error names what is missing; the kprobe path stays
/// off then.
pub fn resolve(btf: &Btf, tracefs_root: &Path) -> Result<KernelLayout, String> {
    let format_path = tracefs_root.join("events/io_uring/io_uring_file_get/format");
    let format = std::fs::read_to_string(&format_path).map_err(|e| {
        format!(
            "no io_uring:io_uring_file_get tracepoint ({}: {e})",
            format_path.display()
        )
    })?;
    let uring_fd = tracefs::field_offsets(&format)
        .into_iter()
        .find(|(n, _)| n == "fd")
        .map(|(_, o)| o as u32)
        .ok_or("io_uring_file_get has no fd field")?;
    from_btf(btf, uring_fd)
}

/// The path from the current task to an fd's `struct sock`, from the
/// kernel's BTF. The error names what is missing; accepts without a
/// sockaddr are then resolved through `/proc`.
pub fn fd_layout(btf: &Btf) -> Result<FdLayout, String> {
    let member = |s: &str, field: &str| member(btf, s, field);
    Ok(FdLayout {
        task_files: member("task_struct", "files")?,
        files_fdt: member("files_struct", "fdt")?,
        fdt_max_fds: member("fdtable", "max_fds")?,
        fdt_fd: member("fdtable", "fd")?,
        file_private_data: member("file", "private_data")?,
        socket_sk: member("socket", "sk")?,
        valid: 1,
        _pad: [0; 7],
    })
}

/// The path from the current task to its argument and environment strings
/// (the exec record, `agent-ebpf/src/proc.rs`). The error names what is
/// missing; processes that exit before their /proc entry is read then lose
/// their environment's service name.
pub fn proc_layout(btf: &Btf) -> Result<ProcLayout, String> {
    let member = |s: &str, field: &str| member(btf, s, field);
    Ok(ProcLayout {
        task_mm: member("task_struct", "mm")?,
        mm_arg_start: member("mm_struct", "arg_start")?,
        mm_arg_end: member("mm_struct", "arg_end")?,
        mm_env_end: member("mm_struct", "env_end")?,
        valid: 1,
        _pad: [0; 7],
    })
}

fn from_btf(btf: &Btf, uring_fd: u32) -> Result<KernelLayout, String> {
    let msghdr = named_struct(btf, "msghdr")?;
    let iter = named_struct(btf, "iov_iter")?;
    let msg_iter = offset(btf, &msghdr, "msg_iter")?;
    // 6.0 split the old `type` (iter type | direction bit) into `iter_type`.
    let (iter_type, iter_type_mask) = match offset(btf, &iter, "iter_type") {
        Ok(o) => (o, 0xff),
        Err(_) => (offset(btf, &iter, "type")?, 0xfe),
    };
    // The segment pointer: `ubuf`/`__iov` (6.4+) or `iov` share one union.
    let iter_ptr = ["ubuf", "__iov", "iov"]
        .iter()
        .find_map(|f| offset(btf, &iter, f).ok())
        .ok_or("struct iov_iter has no iov/__iov/ubuf member")?;
    let iter_ubuf = enumerator(btf, "iter_type", "ITER_UBUF")
        .map(|v| v as u8)
        .unwrap_or(KernelLayout::NO_UBUF);
    let iter_iovec =
        enumerator(btf, "iter_type", "ITER_IOVEC").ok_or("enum iter_type has no ITER_IOVEC")? as u8;
    Ok(KernelLayout {
        msg_iter,
        iter_type,
        iter_count: offset(btf, &iter, "count")?,
        iter_ptr,
        iter_nr_segs: offset(btf, &iter, "nr_segs")?,
        iter_offset: offset(btf, &iter, "iov_offset")?,
        uring_fd,
        iter_type_mask,
        iter_iovec,
        iter_ubuf,
        valid: 1,
    })
}

fn named_struct(btf: &Btf, name: &str) -> Result<Struct, String> {
    btf.resolve_types_by_name(name)
        .map_err(|e| format!("struct {name}: {e}"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| format!("no struct {name} in the kernel's BTF"))
}

/// Byte offset of `field` in `s`, looking inside anonymous structs and
/// unions as C does.
/// The byte offset of `field` in struct `s`; the error names both.
fn member(btf: &Btf, s: &str, field: &str) -> Result<u32, String> {
    offset(btf, &named_struct(btf, s)?, field).map_err(|e| format!("struct {s}: {e}"))
}

fn offset(btf: &Btf, s: &Struct, field: &str) -> Result<u32, String> {
    find(btf, s, field, 0)
        .map(|bits| bits / 8)
        .ok_or_else(|| format!("no member {field}"))
}

fn find(btf: &Btf, s: &Struct, field: &str, base_bits: u32) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let at = base_bits + m.bit_offset();
        if name == field {
            return Some(at);
        }
        if name.is_empty() {
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m) {
                if let Some(found) = find(btf, &inner, field, at) {
                    return Some(found);
                }
            }
        }
    }
    None
}

fn enumerator(btf: &Btf, enum_name: &str, name: &str) -> Option<u32> {
    btf.resolve_types_by_name(enum_name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == name))
                .map(|m| m.val()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF (every kernel sonde supports has it; the
    /// VM matrix runs this on 5.10, 6.1 and 6.12 too through the capture
    /// suite, which proves the offsets by capturing io_uring payload).
    #[test]
    fn this_kernels_layout_resolves_consistently() {
        let Ok(btf) = Btf::from_file(VMLINUX_BTF) else {
            panic!("{VMLINUX_BTF} is missing: this kernel has no BTF");
        };
        let l = from_btf(&btf, 24).expect("layout");
        eprintln!("{l:?}");
        assert_eq!(l.valid, 1);
        // Members of one struct at distinct offsets, inside its size.
        let iter_size = named_struct(&btf, "iov_iter").unwrap().size() as u32;
        let mut offs = [
            l.iter_type,
            l.iter_count,
            l.iter_ptr,
            l.iter_nr_segs,
            l.iter_offset,
        ];
        assert!(offs.iter().all(|o| *o < iter_size), "{l:?}");
        offs.sort();
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "distinct: {l:?}");
        let msghdr_size = named_struct(&btf, "msghdr").unwrap().size() as u32;
        assert!(l.msg_iter + iter_size <= msghdr_size, "{l:?}");
        assert_ne!(l.iter_iovec, l.iter_ubuf);
    }

    /// The offsets are proven by the HTTP suite (short-lived curls keep
    /// their `OTEL_SERVICE_NAME` through their exec records); here: every
    /// member is found, inside its struct, and in the kernel's order.
    #[test]
    fn this_kernels_proc_layout_resolves_inside_its_structs() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("kernel BTF");
        let l = proc_layout(&btf).expect("proc layout");
        assert_eq!(l.valid, 1);
        let size = |s| named_struct(&btf, s).unwrap().size() as u32;
        assert!(l.task_mm + 8 <= size("task_struct"), "{l:?}");
        assert!(l.mm_env_end + 8 <= size("mm_struct"), "{l:?}");
        assert!(
            l.mm_arg_start < l.mm_arg_end && l.mm_arg_end < l.mm_env_end,
            "{l:?}"
        );
    }

    /// The offsets are proven by the TLS suite (a Node.js server's
    /// accepts, which pass no sockaddr, get their tuples from the kernel);
    /// here: every member is found, inside its struct.
    #[test]
    fn this_kernels_fd_layout_resolves_inside_its_structs() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("kernel BTF");
        let l = fd_layout(&btf).expect("fd layout");
        assert_eq!(l.valid, 1);
        let size = |s| named_struct(&btf, s).unwrap().size() as u32;
        for (off, s, width) in [
            (l.task_files, "task_struct", 8),
            (l.files_fdt, "files_struct", 8),
            (l.fdt_max_fds, "fdtable", 4),
            (l.fdt_fd, "fdtable", 8),
            (l.file_private_data, "file", 8),
            (l.socket_sk, "socket", 8),
        ] {
            assert!(off + width <= size(s), "{s}: {l:?}");
        }
        assert_ne!(l.fdt_max_fds, l.fdt_fd);
        let err = kernel_btf(Path::new("/nonexistent"))
            .err()
            .expect("no BTF there");
        assert!(err.contains("no kernel BTF"), "{err}");
    }

    #[test]
    fn a_missing_tracepoint_is_named() {
        let btf = kernel_btf(Path::new(VMLINUX_BTF)).expect("kernel BTF");
        let err = resolve(&btf, Path::new("/nonexistent")).unwrap_err();
        assert!(err.contains("io_uring_file_get"), "{err}");
    }
}
