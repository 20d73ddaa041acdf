//! Giving memory back after a wave of connections has closed.
//!
//! glibc's allocator keeps what is freed for reuse: after 10,000
//! connections close, the agent's RSS stays where it was with them open,
//! and a node that once had a burst pays for it until the agent restarts.
//! When the connection table has shrunk by at least half (and by at least
//! [`MIN_DROP`] entries) since its last peak, the next sweep asks the
//! allocator to return its free pages (`malloc_trim`). The check runs on the
//! table's 10 s sweep, never per event.

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
}
