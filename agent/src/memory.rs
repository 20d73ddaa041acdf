//! Giving memory back after a wave of connections has closed.
//!
//! glibc's allocator keeps what is freed for reuse: after 10,000
//! connections close, the agent's RSS stays where it was with them open,
//! and a node that once had a burst pays for it until the agent restarts.
//! When the connection table has shrunk by at least half (and by at least
//! [`MIN_DROP`] entries) since its last peak, the next sweep asks the
//! allocator to return its free pages (`malloc_trim`). The check runs on the
//! table's 10 s sweep, never per event.
//!
//! Start-up is such a wave too: parsing the kernel's BTF and loading the
//! eBPF object allocate and free several megabytes, which glibc keeps
//! (8 MB of RSS, measured). The agent gives them back once it is capturing
//! ([`release`]), and drops the resident pages of the embedded object,
//! which nothing reads after the load ([`drop_static_pages`]).
//!
//! And large blocks always get pages of their own ([`fix_mmap_threshold`]),
//! so that one big transient allocation does not leave the heap holding
//! its size for good.

/// Fewer closed entries than this are not worth a trim.
pub const MIN_DROP: usize = 1_000;

/// Tracks the table's size between trims.
#[derive(Debug, Default)]
pub struct Trimmer {
    peak: usize,
    /// The table halved at the last sweep: trim at this one, once the
    /// later stages (parsers, correlation) have freed what those
    /// connections held, which they do after the table lets them go.
    due: bool,
}

impl Trimmer {
    /// Notes the table's size at a sweep; whether the allocator should be
    /// asked to give back its free memory now.
    pub fn observe(&mut self, entries: usize) -> bool {
        if std::mem::take(&mut self.due) {
            self.peak = entries;
            return true;
        }
        if entries >= self.peak {
            self.peak = entries;
        } else if self.peak - entries >= MIN_DROP && entries <= self.peak / 2 {
            self.due = true;
        }
        false
    }
}

/// Large allocations (from 256 KiB) always get pages of their own, given
/// back when freed. glibc otherwise raises this threshold to the size of
/// the largest such block freed (up to 32 MiB): after start-up freed the
/// kernel's BTF, or an inspector freed a big symbol table, every later
/// block below that size came from the heap, and stayed in RSS once freed
/// (measured: 10 MB kept from start-up). A no-op where the C library is
/// not glibc.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers; it sets an allocator parameter
    // under the allocator's lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Returns the allocator's free pages to the kernel. A no-op where the C
/// library is not glibc.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only touches the
    // allocator's own state, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the resident pages that lie wholly inside `bytes`, a static in a
/// read-only, file-backed mapping of the binary (the embedded eBPF object
/// once it is loaded: 2.7 MB). A later read faults them back in from the
/// file, unchanged. Does nothing, and says why, where the static is not in
/// such a mapping (its pages could not come back as they were).
pub fn drop_static_pages(bytes: &'static [u8]) -> Result<usize, String> {
    const PAGE: usize = 4096;
    let (lo, hi) = (
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
    let (start, end) = (lo.div_ceil(PAGE) * PAGE, hi / PAGE * PAGE);
    if end <= start {
        return Ok(0);
    }
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    if !maps.lines().any(|l| read_only_file_mapping(l, start, end)) {
        return Err("not in one read-only mapping of a file".into());
    }
    #[cfg(target_os = "linux")]
    // SAFETY: [start, end) is page-aligned and lies in a private, read-only
    // mapping of a file, checked above; MADV_DONTNEED only unmaps its pages,
    // and the next access maps the same file contents again, so `bytes`
    // reads the same whether or not its pages were dropped.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    #[cfg(not(target_os = "linux"))]
    let rc = 0;
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(end - start)
}

/// A `/proc/self/maps` line of a private read-only file mapping that holds
/// `[start, end)`.
fn read_only_file_mapping(line: &str, start: usize, end: usize) -> bool {
    let mut f = line.split_whitespace();
    let (Some(range), Some(perms)) = (f.next(), f.next()) else {
        return false;
    };
    let path = f.nth(3);
    let Some((a, b)) = range.split_once('-') else {
        return false;
    };
    let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
        return false;
    };
    a <= start && end <= b && perms == "r--p" && path.is_some_and(|p| p.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_the_sweep_after_the_table_halves_by_enough() {
        let mut t = Trimmer::default();
        assert!(!t.observe(20_000));
        assert!(!t.observe(15_000), "a quarter gone: not yet");
        assert!(
            !t.observe(9_000),
            "more than half gone: due at the next sweep"
        );
        assert!(t.observe(9_000), "now");
        assert!(!t.observe(9_000), "once per drop");
        assert!(!t.observe(100));
        assert!(t.observe(100), "a further halving trims again");
        let mut small = Trimmer::default();
        small.observe(1_500);
        assert!(!small.observe(600), "under MIN_DROP entries: not worth it");
        assert!(!small.observe(600));
        assert!(!small.observe(400));
        assert!(small.observe(400));
    }

    /// In the test binary's read-only data, as the eBPF object is in the
    /// agent's.
    static READ_ONLY: [u8; 5 * 4096] = [7; 5 * 4096];

    #[test]
    fn a_read_only_statics_pages_are_dropped_and_read_back_the_same() {
        let bytes: &'static [u8] = &READ_ONLY;
        let dropped = drop_static_pages(bytes).expect("in the binary's read-only data");
        assert!(dropped >= 4 * 4096, "{dropped}");
        assert!(bytes.iter().all(|&b| b == 7), "faulted back from the file");
    }

    #[test]
    fn memory_that_is_not_a_read_only_file_mapping_is_left_alone() {
        let heap: &'static mut [u8] = Box::leak(vec![9u8; 5 * 4096].into_boxed_slice());
        let err = drop_static_pages(heap).unwrap_err();
        assert!(err.contains("read-only mapping of a file"), "{err}");
        assert!(heap.iter().all(|&b| b == 9), "untouched");
    }

    #[test]
    fn maps_lines_are_read_for_range_permissions_and_a_file() {
        let bin = "55c6c8227000-55c6c89eb000 r--p 00000000 fe:01 123 /usr/bin/sonde";
        assert!(read_only_file_mapping(bin, 0x55c6c8228000, 0x55c6c8230000));
        assert!(
            !read_only_file_mapping(bin, 0x55c6c8228000, 0x55c6c89ec000),
            "past its end"
        );
        let data = "55c6c89eb000-55c6c8a00000 rw-p 00000000 fe:01 123 /usr/bin/sonde";
        assert!(
            !read_only_file_mapping(data, 0x55c6c89eb000, 0x55c6c89ec000),
            "writable"
        );
        let anon = "7f9808000000-7f98091ab000 r--p 00000000 00:00 0 ";
        assert!(
            !read_only_file_mapping(anon, 0x7f9808000000, 0x7f9808001000),
            "anonymous"
        );
        let ring = "7f981a7be000-7f981b7bf000 r--s 00000000 00:0f 42 anon_inode:bpf-map";
        assert!(
            !read_only_file_mapping(ring, 0x7f981a7be000, 0x7f981a7bf000),
            "shared, no file"
        );
        assert!(!read_only_file_mapping("garbage", 0, 4096));
    }
}
