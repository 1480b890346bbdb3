//! Giving freed heap memory back to the system.
//!
//! A directory listing is the daemon's largest short-lived allocation: a
//! merged listing of a 20,000-entry directory is a few megabytes of names,
//! built from each layer's entries and dropped when the directory is
//! closed. glibc's malloc keeps what is freed in the middle of its heap
//! resident (it only shrinks the heap from the top), so after a walk of
//! a container image the daemon held 2 MiB of freed listings between the
//! nodes that outlive them (bench/FINDINGS.md F4).
//!
//! Whoever drops such memory reports an estimate of its size with
//! [`freed`]; once a megabyte is owed, the heap's free pages are returned
//! (`malloc_trim`, a few hundred microseconds for a heap of this size,
//! so at most one call per megabyte of listings). The background thread
//! calls [`settle`] once a second to return what is owed below that.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes freed since the heap was last trimmed (an estimate).
static OWED: AtomicUsize = AtomicUsize::new(0);

/// How much freed memory triggers a trim at once.
const TRIM_AT: usize = 1 << 20;

/// Records that about `bytes` of heap memory were just freed.
pub fn freed(bytes: usize) {
    let owed = OWED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if owed >= TRIM_AT && OWED.swap(0, Ordering::Relaxed) >= TRIM_AT {
        crate::sys::trim_heap();
    }
}

/// Returns freed memory to the system if any is owed.
pub fn settle() {
    if OWED.swap(0, Ordering::Relaxed) > 0 {
        crate::sys::trim_heap();
    }
}

/// Bytes owed right now (for tests).
pub fn owed() -> usize {
    OWED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_megabyte_of_frees_trims_and_resets_the_debt() {
        settle();
        freed(TRIM_AT / 2);
        assert!(owed() >= TRIM_AT / 2);
        freed(TRIM_AT / 2);
        assert!(owed() < TRIM_AT, "the debt is paid once it reaches TRIM_AT");
        freed(10);
        settle();
        assert_eq!(owed(), 0);
    }
}
