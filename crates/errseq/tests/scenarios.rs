//! One test per scenario of the crate documentation, plus the edges of the
//! semantics: errno replacement, the internal reader, and the counter wrap.
#![cfg(not(loom))]

use errseq::{ErrSeq, Errno};

const EDQUOT: Errno = match Errno::new(122) {
    Some(e) => e,
    None => unreachable!(),
};

/// Scenario 1: An observer that sampled before an error is told once, then not again.
#[test]
fn sampled_before_error_is_told_once() {
    let es = ErrSeq::new();
    let mut a = es.sample();
    assert_eq!(es.check(a), None);
    es.set(Errno::EIO);
    assert_eq!(es.check(a), Some(Errno::EIO));
    assert_eq!(es.check(a), Some(Errno::EIO), "check changes nothing");
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    assert_eq!(es.check(a), None);
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
}

/// Scenario 2: Two observers that sampled before an error are each told once.
#[test]
fn two_observers_are_each_told_once() {
    let es = ErrSeq::new();
    let mut a = es.sample();
    let mut b = es.sample();
    es.set(Errno::EIO);
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
    assert_eq!(es.check_and_advance(&mut b), Err(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut b), Ok(()));
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
}

/// Scenario 3: An observer that samples after the error was told to someone is not told.
#[test]
fn sampled_after_someone_was_told_is_not_told() {
    let es = ErrSeq::new();
    let mut a = es.sample();
    es.set(Errno::EIO);
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    let mut late = es.sample();
    assert_eq!(es.check(late), None);
    assert_eq!(es.check_and_advance(&mut late), Ok(()));
    // But it is told of the next error.
    es.set(Errno::EIO);
    assert_eq!(es.check_and_advance(&mut late), Err(Errno::EIO));
}

/// Scenario 4: An observer that samples after an error that nobody was told is told;
/// so is every observer that samples before someone is told, and nobody after.
#[test]
fn sampled_after_untold_error_is_told() {
    let es = ErrSeq::new();
    es.set(Errno::EIO);
    let mut a = es.sample();
    let mut b = es.sample();
    assert_eq!(es.check(a), Some(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    let mut c = es.sample();
    assert_eq!(es.check_and_advance(&mut b), Err(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut c), Ok(()));
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
    assert_eq!(es.check_and_advance(&mut b), Ok(()));
}

/// Scenario 5: The overlay case: a `peek` baseline taken at mount does not stop a later
/// opener from being told, and `check(baseline)` still sees a later error,
/// also one with the same errno.
#[test]
fn overlay_peek_baseline_neither_steals_nor_merges() {
    let upper = ErrSeq::new();
    let mut neighbour = upper.sample();
    upper.set(Errno::EIO); // the neighbour's writeback fails; nobody told yet
    let mount = upper.peek();
    assert_eq!(upper.check(mount), None, "old errors are not the overlay's");
    let mut opener = upper.sample();
    assert_eq!(
        upper.check(opener),
        Some(Errno::EIO),
        "peek must not hide the pending error"
    );
    upper.set(Errno::EIO); // the overlay's own error, same errno
    assert_eq!(
        upper.check(mount),
        Some(Errno::EIO),
        "same errno still counts"
    );
    let mut later = upper.sample();
    assert_eq!(upper.check_and_advance(&mut opener), Err(Errno::EIO));
    assert_eq!(upper.check_and_advance(&mut later), Err(Errno::EIO));
    assert_eq!(upper.check_and_advance(&mut neighbour), Err(Errno::EIO));
    assert_eq!(upper.check(mount), Some(Errno::EIO), "stays until advanced");
    // Once an observer was told, a new baseline counts only what comes next.
    let remount = upper.peek();
    assert_eq!(upper.check(remount), None);
    upper.set(Errno::EIO);
    assert_eq!(upper.check(remount), Some(Errno::EIO));
}

/// Scenario 5b: A peek baseline when nothing happened yet also counts the first error.
#[test]
fn peek_on_clean_counts_first_error() {
    let es = ErrSeq::new();
    let base = es.peek();
    assert_eq!(es.check(base), None);
    es.set(Errno::EIO);
    assert_eq!(es.check(base), Some(Errno::EIO));
    let mut a = es.sample();
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
}

/// Scenario 6: Two errors with the same errno after a sample are two events to a
/// sampler that checks between them, and one to a sampler that does not.
#[test]
fn same_errno_twice_is_two_events_with_a_check_between() {
    let es = ErrSeq::new();
    let mut a = es.sample();
    let mut b = es.sample();
    es.set(Errno::EIO);
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    es.set(Errno::EIO);
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
    // b did not check between them: one report.
    assert_eq!(es.check_and_advance(&mut b), Err(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut b), Ok(()));
}

/// Scenario 6b: The same with `peek_and_advance` between the two errors.
#[test]
fn same_errno_twice_is_two_events_to_a_peeker() {
    let es = ErrSeq::new();
    let mut journal = es.peek();
    es.set(Errno::EIO);
    assert_eq!(es.peek_and_advance(&mut journal), Some(Errno::EIO));
    es.set(Errno::EIO);
    assert_eq!(es.peek_and_advance(&mut journal), Some(Errno::EIO));
    assert_eq!(es.peek_and_advance(&mut journal), None);
}

/// A new errno replaces an untold one when nobody looked in between: the
/// observer is told the newer errno, once.
#[test]
fn newer_error_replaces_untold_one() {
    let es = ErrSeq::new();
    let mut a = es.sample();
    es.set(Errno::EIO);
    es.set(Errno::ENOSPC);
    es.set(EDQUOT);
    assert_eq!(es.last_error(), Some(EDQUOT));
    assert_eq!(es.check_and_advance(&mut a), Err(EDQUOT));
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
}

/// Repeating the pending error with nobody looking changes nothing at all.
#[test]
fn repeat_of_untold_error_changes_nothing() {
    let es = ErrSeq::new();
    es.set(Errno::EIO);
    let before = format!("{es:?}");
    es.set(Errno::EIO);
    assert_eq!(format!("{es:?}"), before);
}

/// The internal reader never marks an error as told.
#[test]
fn peek_and_advance_never_tells() {
    let es = ErrSeq::new();
    let mut journal = es.peek();
    es.set(Errno::EIO);
    assert_eq!(es.peek_and_advance(&mut journal), Some(Errno::EIO));
    let mut a = es.sample();
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    let mut b = es.sample();
    assert_eq!(es.check_and_advance(&mut b), Ok(()));
    assert_eq!(es.peek_and_advance(&mut journal), None);
}

/// A cursor of a sample taken while nothing is pending reports nothing.
#[test]
fn clean_sequence_reports_nothing() {
    let es = ErrSeq::default();
    let mut a = es.sample();
    let base = es.peek();
    assert_eq!(es.check(a), None);
    assert_eq!(es.check(base), None);
    assert_eq!(es.check_and_advance(&mut a), Ok(()));
    assert_eq!(es.last_error(), None);
}

/// Observers are not coupled: one observer's reports are independent of how
/// often others check.
#[test]
fn observers_are_independent() {
    let es = ErrSeq::new();
    let mut busy = es.sample();
    let mut idle = es.sample();
    for _ in 0..10 {
        es.set(Errno::EIO);
        assert_eq!(es.check_and_advance(&mut busy), Err(Errno::EIO));
    }
    assert_eq!(es.check_and_advance(&mut idle), Err(Errno::EIO));
    assert_eq!(es.check_and_advance(&mut idle), Ok(()));
}

/// The documented wrap: a cursor misses its one report only after exactly
/// 2^18 counter steps that end on its own errno; one step fewer is reported.
#[test]
fn counter_wrap_needs_two_to_the_eighteen_steps() {
    let steps = 1u32 << ErrSeq::COUNTER_BITS;
    let es = ErrSeq::new();
    let mut a = es.sample();
    es.set(Errno::EIO);
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    let mut told_current = es.sample(); // the error was told: cursor at the word
    let other = ErrSeq::new();
    other.set(Errno::EIO);
    let fresh = other.sample(); // untold: the "before any error" cursor
    for step in 1..=steps {
        let _ = es.peek(); // someone looks ...
        es.set(Errno::EIO); // ... then an error happens: one counter step
        let _ = other.peek();
        other.set(Errno::EIO);
        if step == steps - 1 {
            assert_eq!(es.check(a), Some(Errno::EIO), "2^18 - 1 steps still differ");
        }
    }
    assert_eq!(
        es.check(a),
        None,
        "a full wrap onto the same errno hides one report"
    );
    assert_eq!(es.check(told_current), None);
    assert_eq!(
        other.check(fresh),
        Some(Errno::EIO),
        "never fooled by a wrap"
    );
    // Until the word changes, the report stays hidden: a repeat of the same
    // errno with nobody looking changes nothing.
    es.set(Errno::EIO);
    assert_eq!(es.check(a), None);
    // An error with a different errno changes the word: caught up.
    es.set(Errno::ENOSPC);
    assert_eq!(es.check_and_advance(&mut told_current), Err(Errno::ENOSPC));
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::ENOSPC));
}

#[test]
fn debug_shows_the_decoded_word() {
    let es = ErrSeq::new();
    let mut a = es.sample();
    es.set(Errno::EIO);
    assert_eq!(
        format!("{es:?}"),
        "ErrSeq { counter: 1, seen: false, mustinc: false, errno: Some(Errno(5, \"EIO\")) }"
    );
    assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
    assert_eq!(
        format!("{es:?}"),
        "ErrSeq { counter: 1, seen: true, mustinc: true, errno: Some(Errno(5, \"EIO\")) }"
    );
    assert_eq!(
        format!("{a:?}"),
        "Cursor { counter: 1, errno: Some(Errno(5, \"EIO\")) }"
    );
}

/// `ErrSeq::new` is `const`, so an `ErrSeq` can be a `static`; it is shared
/// between threads by reference.
#[test]
fn usable_in_a_static_across_threads() {
    static GLOBAL: ErrSeq = ErrSeq::new();
    const fn shareable<T: Send + Sync>() {}
    shareable::<ErrSeq>();
    shareable::<errseq::Cursor>();

    let mut a = GLOBAL.sample();
    std::thread::spawn(|| GLOBAL.set(Errno::EIO))
        .join()
        .unwrap();
    assert_eq!(GLOBAL.check_and_advance(&mut a), Err(Errno::EIO));
}
