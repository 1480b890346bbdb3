//! Model check of the concurrent operations with loom: every interleaving
//! (within the preemption bound, see `model`) and every outcome the C11
//! memory model allows for the orderings the crate uses.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p errseq --release --test loom`.
#![cfg(loom)]

use errseq::{ErrSeq, Errno};
use loom::sync::Arc;
use loom::sync::atomic::AtomicU32;
use loom::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use loom::thread;

const EIO: Errno = Errno::EIO;
const ENOSPC: Errno = Errno::ENOSPC;

/// Explores `f` exhaustively up to 4 preemptions per execution, unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise.
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    builder.check(f);
}

/// How many of the results are reports.
fn reports(results: &[Result<(), Errno>]) -> usize {
    results.iter().filter(|r| r.is_err()).count()
}

/// `set` racing with an observer's `check_and_advance` and with `peek` and
/// `sample`: an observer whose cursor predates the set is told exactly once,
/// and whoever is told sees what the setter wrote before `set`.
#[test]
fn set_reaches_every_earlier_cursor_once() {
    model(|| {
        let es = Arc::new(ErrSeq::new());
        let detail = Arc::new(AtomicU32::new(0));
        let mut a = es.sample();
        let b = es.sample();

        let setter = thread::spawn({
            let (es, detail) = (es.clone(), detail.clone());
            move || {
                detail.store(42, Relaxed);
                es.set(EIO);
            }
        });
        let checker = thread::spawn({
            let (es, detail) = (es.clone(), detail.clone());
            move || {
                let mut b = b;
                let r = es.check_and_advance(&mut b);
                if r.is_err() {
                    assert_eq!(detail.load(Relaxed), 42, "told before the data is visible");
                }
                (b, r)
            }
        });
        let peeker = thread::spawn({
            let es = es.clone();
            move || {
                let p = es.peek();
                let s = es.sample();
                (p, s)
            }
        });

        setter.join().unwrap();
        let (mut b, r1) = checker.join().unwrap();
        let (p, mut s) = peeker.join().unwrap();

        assert_eq!(es.check_and_advance(&mut a), Err(EIO));
        assert_eq!(es.check_and_advance(&mut a), Ok(()));
        let r2 = es.check_and_advance(&mut b);
        assert_eq!(reports(&[r1, r2]), 1, "b: {r1:?} then {r2:?}");
        assert_eq!(es.check_and_advance(&mut b), Ok(()));
        let s1 = es.check_and_advance(&mut s);
        assert_eq!(
            es.check_and_advance(&mut s),
            Ok(()),
            "s told twice after {s1:?}"
        );
        // The baseline reports the error or not, and never anything else.
        assert!(matches!(es.check(p), None | Some(EIO)));
        // Everybody who was owed the error has been told it.
        let mut late = es.sample();
        assert_eq!(es.check_and_advance(&mut late), Ok(()));
    });
}

/// `peek` and `peek_and_advance` racing with an opener and a second error
/// never hide the pending error from the opener: nobody else tells it, so
/// the opener's first check reports, whatever the interleaving, and the
/// latest errno reaches it.
#[test]
fn peek_never_hides_a_pending_error() {
    model(|| {
        let es = Arc::new(ErrSeq::new());
        es.set(EIO); // pending, nobody told

        let peeker = thread::spawn({
            let es = es.clone();
            move || {
                let mut p = es.peek();
                let _ = es.peek_and_advance(&mut p);
            }
        });
        let opener = thread::spawn({
            let es = es.clone();
            move || {
                let mut s = es.sample();
                let r = es.check_and_advance(&mut s);
                (s, r)
            }
        });
        let setter = thread::spawn({
            let es = es.clone();
            move || es.set(ENOSPC)
        });

        peeker.join().unwrap();
        setter.join().unwrap();
        let (mut s, r1) = opener.join().unwrap();
        assert!(r1.is_err(), "the opener was not told the pending error");
        let r2 = es.check_and_advance(&mut s);
        assert!(
            r1 == Err(ENOSPC) || r2 == Err(ENOSPC),
            "the latest error never reached the opener: {r1:?} then {r2:?}"
        );
        assert_eq!(es.check_and_advance(&mut s), Ok(()));
    });
}

/// Two observers telling themselves while two errors with the same errno
/// arrive: each is told at least once, at most once per error, and nothing
/// is left over once both checked after the setter finished.
#[test]
fn racing_observers_each_told_once_per_error() {
    model(|| {
        let es = Arc::new(ErrSeq::new());
        let a = es.sample();
        let b = es.sample();

        let setter = thread::spawn({
            let es = es.clone();
            move || {
                es.set(EIO);
                es.set(EIO);
            }
        });
        let spawn_checker = |mut c| {
            let es = es.clone();
            thread::spawn(move || {
                let r = es.check_and_advance(&mut c);
                (c, r)
            })
        };
        let ta = spawn_checker(a);
        let tb = spawn_checker(b);

        setter.join().unwrap();
        for t in [ta, tb] {
            let (mut c, r1) = t.join().unwrap();
            let r2 = es.check_and_advance(&mut c);
            let n = reports(&[r1, r2]);
            assert!((1..=2).contains(&n), "{r1:?} then {r2:?}");
            assert_eq!(es.check_and_advance(&mut c), Ok(()));
        }
        let mut late = es.sample();
        assert_eq!(es.check_and_advance(&mut late), Ok(()));
    });
}

/// `check_and_advance` marks as told only the error it reports: an error
/// recorded while it runs stays untold, so a later opener is told it.
#[test]
fn check_and_advance_marks_only_what_it_reports() {
    model(|| {
        let es = Arc::new(ErrSeq::new());
        es.set(EIO);
        let a = es.sample(); // untold: told whatever is latest at its check

        let setter = thread::spawn({
            let es = es.clone();
            move || es.set(ENOSPC)
        });
        let checker = thread::spawn({
            let es = es.clone();
            move || {
                let mut a = a;
                let r = es.check_and_advance(&mut a);
                (a, r)
            }
        });

        setter.join().unwrap();
        let (mut a, r1) = checker.join().unwrap();
        let mut late = es.sample();
        let r2 = es.check_and_advance(&mut a);
        match r1 {
            // ENOSPC came after the telling: nobody was told it yet.
            Err(EIO) => {
                assert_eq!(es.check(late), Some(ENOSPC), "an untold error was hidden");
                assert_eq!(r2, Err(ENOSPC));
            }
            Err(ENOSPC) => {
                assert_eq!(es.check_and_advance(&mut late), Ok(()));
                assert_eq!(r2, Ok(()));
            }
            other => panic!("the observer was not told: {other:?}"),
        }
    });
}

/// `sample` racing with the first `check_and_advance` of an untold error is
/// linearizable: a sample that happens before the telling is told too; one
/// that happens after it is not.
#[test]
fn sample_racing_the_first_telling() {
    model(|| {
        let es = Arc::new(ErrSeq::new());
        es.set(EIO);
        let a = es.sample();
        let told = Arc::new(AtomicU32::new(0));
        let sampled = Arc::new(AtomicU32::new(0));

        let teller = thread::spawn({
            let (es, told, sampled) = (es.clone(), told.clone(), sampled.clone());
            move || {
                let mut a = a;
                let sampled_first = sampled.load(Acquire) == 1;
                assert_eq!(es.check_and_advance(&mut a), Err(EIO));
                told.store(1, Release);
                sampled_first
            }
        });
        let opener = thread::spawn({
            let (es, told, sampled) = (es.clone(), told.clone(), sampled.clone());
            move || {
                let told_first = told.load(Acquire) == 1;
                let s = es.sample();
                sampled.store(1, Release);
                (told_first, s)
            }
        });

        let sampled_first = teller.join().unwrap();
        let (told_first, mut s) = opener.join().unwrap();
        let r = es.check_and_advance(&mut s);
        if sampled_first {
            assert_eq!(r, Err(EIO), "sampled before anyone was told, not told");
        }
        if told_first {
            assert_eq!(r, Ok(()), "sampled after someone was told, told");
        }
    });
}
