//! An error-sequence counter: record errors in one place, and tell each of
//! many observers about each new error exactly once.
//!
//! This is the kernel's `errseq_t` (the mechanism behind `fsync(2)` reporting
//! writeback errors), with its `SEEN` flag split in two as proposed on LKML in
//! December 2020 ("errseq: split the `ERRSEQ_SEEN` flag into two new flags"):
//!
//! * **SEEN**: some observer has been *told* the current error;
//! * **MUSTINC**: someone has taken a cursor at the current value, so the next
//!   error must move the counter, even if nobody was told yet.
//!
//! With a single flag doing both jobs, a reader that only wants a baseline
//! ("what happens from now on?", such as an overlay at mount time or a status
//! reader) must either mark the error as told, and so hide it from the next
//! real observer, or leave the flag clear, and then miss a later error with
//! the same errno because the counter does not move. With the flags split,
//! [`ErrSeq::peek`] sets only MUSTINC and does neither harm.
//!
//! # Use
//!
//! One [`ErrSeq`] sits where errors happen (a file's mapping, a filesystem).
//! Each *observer* (an open file description) takes a [`Cursor`] with
//! [`ErrSeq::sample`] when it starts, and at each point where it must report
//! errors (fsync) calls [`ErrSeq::check_and_advance`]. Whoever hits an error
//! calls [`ErrSeq::set`]. An *internal reader* that must not count as an
//! observer takes its baseline with [`ErrSeq::peek`] and uses [`ErrSeq::check`]
//! or [`ErrSeq::peek_and_advance`].
//!
//! ```
//! use errseq::{ErrSeq, Errno};
//!
//! let mapping = ErrSeq::new();
//! let mut fd = mapping.sample(); // open(2)
//! mapping.set(Errno::EIO); // background writeback fails
//! assert_eq!(mapping.check_and_advance(&mut fd), Err(Errno::EIO)); // fsync(2)
//! assert_eq!(mapping.check_and_advance(&mut fd), Ok(())); // told once only
//! ```
//!
//! # The rules
//!
//! * An observer is told of the errors that happen after it sampled: its
//!   next [`check_and_advance`](ErrSeq::check_and_advance) returns an error,
//!   the one after that does not (unless another error happened in between).
//! * Every observer that exists when an error happens is told it; telling one
//!   observer never stops another from being told.
//! * An error that nobody has been told yet is also told to every observer
//!   that samples before someone is told. Once someone is told, observers that
//!   sample afterwards are not.
//! * Errors are not queued: an observer is told the *latest* errno (the one in
//!   the word when it checks), once, however many errors happened since its
//!   last check. Two errors with the same errno between two checks are one
//!   report; with a check in between they are two.
//! * A new error that arrives while the previous one is still untold *and*
//!   nobody has taken a cursor since it was recorded replaces its errno
//!   without moving the counter. This loses nothing: everyone who would have
//!   been told the old error is told the new one instead, still exactly once,
//!   and nobody else is.
//! * [`peek`](ErrSeq::peek), [`check`](ErrSeq::check) and
//!   [`peek_and_advance`](ErrSeq::peek_and_advance) never change who is told
//!   what.
//!
//! # The word
//!
//! An `ErrSeq` is one `AtomicU32`:
//!
//! ```text
//!  31                               14   13        12    11             0
//! +-----------------------------------+---------+------+----------------+
//! |         counter (18 bits)         | MUSTINC | SEEN |  errno (12 b)  |
//! +-----------------------------------+---------+------+----------------+
//! ```
//!
//! * **errno**: the latest error, `0` until the first one ([`Errno::MAX`] is
//!   4095, the kernel's `MAX_ERRNO`). It never goes back to `0`.
//! * **SEEN** and **MUSTINC** as above; SEEN is only ever set together with
//!   MUSTINC, and [`set`](ErrSeq::set) clears both.
//! * **counter**: moves by one when an error is recorded while MUSTINC is
//!   set, and wraps at 2<sup>18</sup> ([`ErrSeq::COUNTER_BITS`]).
//!
//! A [`Cursor`] is the word with the flag bits cleared: counter and errno.
//! All comparisons ignore the flags. An observer has something to be told
//! exactly when its cursor differs from the word.
//!
//! ## States
//!
//! ```text
//!                      sample, peek                  check_and_advance
//!   +-------------+   (set MUSTINC)   +-------------+  (set SEEN too)  +----------------+
//!   |   pending   | ----------------> |   sampled   | ---------------> |      seen      |
//!   | flags: none |                   |   MUSTINC   |                  |  SEEN+MUSTINC  |
//!   |             | <---------------- |             |                  |                |
//!   +-------------+   set: counter+1  +-------------+                  +----------------+
//!     |  ^  ^  |                                                               |
//!     +--+  |  |                      check_and_advance                        |
//!    set    |  +-------------------------------------------------------------> |
//!           |                                                                  |
//!           +------------------------- set: counter+1 -------------------------+
//! ```
//!
//! * *pending*: the latest error has not been told to anyone, and nobody took
//!   a cursor since it was recorded. A `set` of the same errno changes nothing;
//!   a `set` of another errno replaces it and keeps the counter.
//! * *sampled*: still untold, but someone holds a cursor at the current value,
//!   so the next `set` moves the counter.
//! * *seen*: someone was told the current error.
//! * `check_and_advance` goes to *seen* from *pending* too: an observer whose
//!   cursor predates the error is told it.
//! * Before the first error the word is *clean*: errno 0, counter 0. It acts
//!   like *pending* (`sample` and `peek` set MUSTINC, and the first `set` then
//!   moves the counter), except that there is nothing to tell.
//! * `check`, and every call that finds the cursor at the current value,
//!   changes nothing.
//!
//! ## What `sample` returns
//!
//! If the current error has not been told to anyone (SEEN clear), `sample`
//! returns the cursor of "before any error": counter 0 and errno 0. The word's
//! errno is never 0 once an error happened, so that cursor always differs from
//! the word, and the observer's first `check_and_advance` reports the error in
//! the word at that time, once, and moves the cursor to the word. Otherwise it
//! returns the current value, and only later errors are reported.
//!
//! ## Counter wrap
//!
//! The counter has 18 bits. A cursor misses a report only if, between two of
//! its checks, the counter moved by an exact multiple of 2<sup>18</sup>
//! (262 144) *and* the word's errno is again the errno in the cursor. Each
//! counter step needs an error recorded after someone took a cursor, so this
//! takes 262 144 rounds of "someone looks, then an error happens" between two
//! checks of one cursor. What it hides is the one report owed to each cursor
//! that stood at exactly that counter and errno; cursors anywhere else are not
//! affected. Such a cursor catches up at the next change of the word: an error
//! with another errno, or any error after someone else has taken a cursor. The
//! "before any error" cursor of [`ErrSeq::sample`] can never be fooled by a
//! wrap (its errno is 0).
//!
//! # Concurrency
//!
//! Every operation is lock-free and linearizable: one atomic load, and at most
//! one read-modify-write (retried only when another thread changed the word in
//! between). `check`, and every operation that finds nothing to do, only
//! loads, so many readers share the cache line without contention.
//!
//! Memory ordering: a `set` that changes the word is a release and every
//! operation reads the word with acquire, so whatever the setter wrote before
//! `set` is visible to an observer that is told that error. (A `set` that
//! changes nothing, because the same error is already pending and untold,
//! publishes nothing: whoever is told it synchronizes with the `set` that
//! stored it.) A `set` that completes before a `check_and_advance` starts
//! (through any other synchronization, or in one thread) is seen by it.
//!
//! # Scenarios
//!
//! 1. An observer that sampled before an error is told once, then not again:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let es = ErrSeq::new();
//! let mut a = es.sample();
//! es.set(Errno::EIO);
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
//! assert_eq!(es.check_and_advance(&mut a), Ok(()));
//! ```
//!
//! 2. Two observers that sampled before an error are each told once:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let es = ErrSeq::new();
//! let (mut a, mut b) = (es.sample(), es.sample());
//! es.set(Errno::EIO);
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
//! assert_eq!(es.check_and_advance(&mut b), Err(Errno::EIO));
//! assert_eq!(es.check_and_advance(&mut a), Ok(()));
//! assert_eq!(es.check_and_advance(&mut b), Ok(()));
//! ```
//!
//! 3. An observer that samples after the error was told to someone is not told:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let es = ErrSeq::new();
//! let mut a = es.sample();
//! es.set(Errno::EIO);
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
//! let mut late = es.sample();
//! assert_eq!(es.check_and_advance(&mut late), Ok(()));
//! ```
//!
//! 4. An observer that samples after an error that nobody was told is told:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let es = ErrSeq::new();
//! es.set(Errno::EIO); // nobody is watching yet
//! let mut a = es.sample();
//! let mut b = es.sample();
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
//! // b sampled before anyone was told, so it is told too.
//! assert_eq!(es.check_and_advance(&mut b), Err(Errno::EIO));
//! ```
//!
//! 5. The overlay case: a baseline taken with `peek` at mount time neither
//!    hides the pending error from a later opener nor merges a later error
//!    with the same errno into the old one:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let upper = ErrSeq::new();
//! upper.set(Errno::EIO); // a neighbour's error, not told to anyone yet
//! let mount = upper.peek(); // the overlay mounts
//! assert_eq!(upper.check(mount), None); // the old error is not the overlay's
//! let mut early = upper.sample(); // opened after the mount
//! upper.set(Errno::EIO); // the overlay's own writeback fails, same errno
//! assert_eq!(upper.check(mount), Some(Errno::EIO)); // counted: peek set MUSTINC
//! let mut late = upper.sample(); // opened after that
//! assert_eq!(upper.check_and_advance(&mut early), Err(Errno::EIO));
//! assert_eq!(upper.check_and_advance(&mut late), Err(Errno::EIO));
//! ```
//!
//! 6. Two errors with the same errno after a sample are two events to a
//!    sampler that checks between them:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let es = ErrSeq::new();
//! let mut a = es.sample();
//! es.set(Errno::EIO);
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
//! es.set(Errno::EIO);
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::EIO));
//! assert_eq!(es.check_and_advance(&mut a), Ok(()));
//! ```
//!
//! 7. A newer error replaces one that is still untold; the observer is told
//!    the newer errno, once:
//!
//! ```
//! # use errseq::{ErrSeq, Errno};
//! let es = ErrSeq::new();
//! let mut a = es.sample();
//! es.set(Errno::EIO);
//! es.set(Errno::ENOSPC);
//! assert_eq!(es.check_and_advance(&mut a), Err(Errno::ENOSPC));
//! assert_eq!(es.check_and_advance(&mut a), Ok(()));
//! ```
//!
//! # Features
//!
//! `std` (default): conversions to and from [`std::io::Error`]. Without it
//! the crate is `#![no_std]` and needs only 32-bit atomics with
//! compare-and-swap.

#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod errno;

pub use errno::{Errno, ErrnoName};

use core::fmt;
use core::sync::atomic::Ordering::{Acquire, Release};

#[cfg(not(loom))]
use core::sync::atomic::AtomicU32;
#[cfg(loom)]
use loom::sync::atomic::AtomicU32;

/// The errno bits of the word.
const ERRNO_MASK: u32 = 0xfff;
/// Someone has been told the current error.
const SEEN: u32 = 1 << 12;
/// Someone holds a cursor equal to the current value: the next error bumps
/// the counter.
const MUSTINC: u32 = 1 << 13;
/// Both flags.
const FLAGS: u32 = SEEN | MUSTINC;
/// Where the counter starts.
const COUNTER_SHIFT: u32 = 14;
/// One step of the counter.
const COUNTER_ONE: u32 = 1 << COUNTER_SHIFT;

// The layout documented above, checked.
const _: () = assert!(ERRNO_MASK == Errno::MAX as u32);
const _: () = assert!(ERRNO_MASK & FLAGS == 0 && (ERRNO_MASK | FLAGS) + 1 == COUNTER_ONE);
const _: () = assert!(ErrSeq::COUNTER_BITS == 18);

/// An error-sequence counter: the latest error, a counter and two flags in one
/// atomic word. See the [crate documentation](crate) for the rules, the bit
/// layout and the states.
///
/// All methods take `&self`; share an `ErrSeq` between threads by reference
/// or in an `Arc`.
pub struct ErrSeq {
    word: AtomicU32,
}

/// An observer's position in an [`ErrSeq`]: the counter and errno it has
/// last been told of (or taken as its baseline), without the flags.
///
/// Get one from [`ErrSeq::sample`] (an observer) or [`ErrSeq::peek`] (a
/// baseline). A cursor only means something to the `ErrSeq` that made it.
/// Cursors of the same `ErrSeq` compare equal when they are at the same point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "a cursor is how an observer is told of later errors"]
pub struct Cursor(u32);

impl Cursor {
    /// The position before any error: differs from every word that holds an
    /// error, whatever the counter.
    const BEFORE_ERRORS: Cursor = Cursor(0);

    /// The cursor for a word: the word without its flags.
    const fn at(word: u32) -> Cursor {
        Cursor(word & !FLAGS)
    }

    /// Whether the word is at this cursor, flags ignored.
    const fn is_at(self, word: u32) -> bool {
        word & !FLAGS == self.0
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("counter", &(self.0 >> COUNTER_SHIFT))
            .field("errno", &Errno::from_bits(self.0 & ERRNO_MASK))
            .finish()
    }
}

impl ErrSeq {
    /// Width of the counter in bits (18): it wraps after 2<sup>18</sup> steps.
    /// See [Counter wrap](crate#counter-wrap) for what a wrap can hide.
    pub const COUNTER_BITS: u32 = 32 - COUNTER_SHIFT;

    /// A new `ErrSeq` with no error recorded.
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> ErrSeq {
        ErrSeq {
            word: AtomicU32::new(0),
        }
    }

    /// A new `ErrSeq` with no error recorded.
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> ErrSeq {
        ErrSeq {
            word: AtomicU32::new(0),
        }
    }

    /// Records an error: every observer whose cursor predates this call will
    /// be told it (or a later error), once.
    ///
    /// The counter moves only if someone took a cursor at the current value
    /// (MUSTINC); both flags are cleared. If the same errno is already pending,
    /// untold, and nobody took a cursor since, nothing changes. If a different
    /// errno is pending under those conditions, it is replaced (see
    /// [the rules](crate#the-rules)).
    pub fn set(&self, err: Errno) {
        let mut old = self.word.load(Acquire);
        loop {
            if old & MUSTINC == 0 && old & ERRNO_MASK == err.bits() {
                return;
            }
            let mut new = (old & !(ERRNO_MASK | FLAGS)) | err.bits();
            if old & MUSTINC != 0 {
                new = new.wrapping_add(COUNTER_ONE);
            }
            match self.word.compare_exchange_weak(old, new, Release, Acquire) {
                Ok(_) => return,
                Err(now) => old = now,
            }
        }
    }

    /// The cursor of a new observer (an open file description).
    ///
    /// If the current error has not been told to anyone yet, the cursor is
    /// from before it, so this observer will be told it; otherwise only later
    /// errors are reported. Sets MUSTINC, never SEEN.
    pub fn sample(&self) -> Cursor {
        let word = self.arm();
        if word & SEEN == 0 && word & ERRNO_MASK != 0 {
            Cursor::BEFORE_ERRORS
        } else {
            Cursor::at(word)
        }
    }

    /// A baseline for an internal reader: the current value, so that only
    /// errors recorded after this call count.
    ///
    /// Sets MUSTINC, so that a later error with the same errno still moves the
    /// counter and [`check`](ErrSeq::check) sees it; never sets SEEN, so it
    /// never hides a pending error from an observer that samples later.
    pub fn peek(&self) -> Cursor {
        Cursor::at(self.arm())
    }

    /// Whether an error was recorded since `since` (and not yet reported to
    /// it): the errno now in the word, or `None`. Changes nothing.
    #[must_use]
    pub fn check(&self, since: Cursor) -> Option<Errno> {
        let word = self.word.load(Acquire);
        if since.is_at(word) {
            None
        } else {
            Errno::from_bits(word & ERRNO_MASK)
        }
    }

    /// Reports an error to an observer, once: if an error was recorded since
    /// `since`, returns the errno now in the word, moves `since` to the
    /// current value and marks the error as told (SEEN and MUSTINC).
    /// Otherwise returns `Ok(())` and changes nothing.
    ///
    /// This is what an `fsync` does after writing back.
    ///
    /// # Errors
    ///
    /// The errno of the latest error, if any error was recorded since `since`.
    pub fn check_and_advance(&self, since: &mut Cursor) -> Result<(), Errno> {
        let mut word = self.word.load(Acquire);
        loop {
            if since.is_at(word) {
                return Ok(());
            }
            if word & FLAGS == FLAGS {
                break;
            }
            match self
                .word
                .compare_exchange_weak(word, word | FLAGS, Acquire, Acquire)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        *since = Cursor::at(word);
        match Errno::from_bits(word & ERRNO_MASK) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Like [`check_and_advance`](ErrSeq::check_and_advance), for an internal
    /// reader: returns the errno now in the word if an error was recorded
    /// since `since`, and moves `since` to the current value, but does not
    /// mark the error as told (it sets MUSTINC only, like
    /// [`peek`](ErrSeq::peek)).
    ///
    /// This suits a reader that must see each new error, such as one that
    /// journals errors, without changing what observers are told.
    ///
    /// ```
    /// use errseq::{ErrSeq, Errno};
    ///
    /// let es = ErrSeq::new();
    /// let mut journal = es.peek();
    /// es.set(Errno::EIO);
    /// assert_eq!(es.peek_and_advance(&mut journal), Some(Errno::EIO));
    /// assert_eq!(es.peek_and_advance(&mut journal), None);
    /// // The error is still untold, so a new observer is told it.
    /// let mut fd = es.sample();
    /// assert_eq!(es.check_and_advance(&mut fd), Err(Errno::EIO));
    /// ```
    #[must_use]
    pub fn peek_and_advance(&self, since: &mut Cursor) -> Option<Errno> {
        let word = self.word.load(Acquire);
        if since.is_at(word) {
            return None;
        }
        let word = self.arm_from(word);
        if since.is_at(word) {
            return None;
        }
        *since = Cursor::at(word);
        Errno::from_bits(word & ERRNO_MASK)
    }

    /// The latest error recorded, if any, whether or not anyone was told it.
    /// Changes nothing; takes no cursor.
    #[must_use]
    pub fn last_error(&self) -> Option<Errno> {
        Errno::from_bits(self.word.load(Acquire) & ERRNO_MASK)
    }

    /// Makes sure MUSTINC is set and returns the word as it was at the moment
    /// it was (or was found to be) set.
    fn arm(&self) -> u32 {
        self.arm_from(self.word.load(Acquire))
    }

    /// [`arm`](ErrSeq::arm) with the word already loaded.
    fn arm_from(&self, word: u32) -> u32 {
        if word & MUSTINC != 0 {
            word
        } else {
            self.word.fetch_or(MUSTINC, Acquire)
        }
    }
}

impl Default for ErrSeq {
    fn default() -> ErrSeq {
        ErrSeq::new()
    }
}

/// Shows the decoded word; reading it changes nothing.
impl fmt::Debug for ErrSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.word.load(Acquire);
        f.debug_struct("ErrSeq")
            .field("counter", &(word >> COUNTER_SHIFT))
            .field("seen", &(word & SEEN != 0))
            .field("mustinc", &(word & MUSTINC != 0))
            .field("errno", &Errno::from_bits(word & ERRNO_MASK))
            .finish()
    }
}
