//! Random sequences of operations over several observers, checked against a
//! reference model that only knows the rules, not the word.
#![cfg(not(loom))]

use errseq::{Cursor, ErrSeq, Errno};
use proptest::prelude::*;

/// The rules, with no counter and no flags:
///
/// * `last` is the latest error; observers are told that one.
/// * `told` says whether someone was told `last` (by `check_and_advance`)
///   since it was recorded.
/// * each cursor has one bit: "owed a report".
///
/// `set` makes every existing cursor owed; `sample` is owed iff an error
/// exists that nobody was told; `peek` is never owed; a check reports iff
/// owed; `check_and_advance` and `peek_and_advance` clear the bit, and only
/// `check_and_advance` marks the error as told.
#[derive(Default)]
struct Model {
    last: Option<Errno>,
    told: bool,
    owed: Vec<bool>,
}

impl Model {
    fn set(&mut self, e: Errno) {
        self.last = Some(e);
        self.told = false;
        self.owed.iter_mut().for_each(|o| *o = true);
    }
    fn sample(&mut self) {
        self.owed.push(self.last.is_some() && !self.told);
    }
    fn peek(&mut self) {
        self.owed.push(false);
    }
    fn check(&self, i: usize) -> Option<Errno> {
        if self.owed[i] { self.last } else { None }
    }
    fn check_and_advance(&mut self, i: usize) -> Result<(), Errno> {
        match self.check(i) {
            Some(e) => {
                self.owed[i] = false;
                self.told = true;
                Err(e)
            }
            None => Ok(()),
        }
    }
    fn peek_and_advance(&mut self, i: usize) -> Option<Errno> {
        let r = self.check(i);
        self.owed[i] = false;
        r
    }
}

#[derive(Clone, Debug)]
enum Op {
    Set(Errno),
    Sample,
    Peek,
    /// The index is taken modulo the number of cursors.
    Check(usize),
    CheckAndAdvance(usize),
    PeekAndAdvance(usize),
    Drop(usize),
}

fn errno() -> impl Strategy<Value = Errno> {
    // Few values, so that repeats of the same errno are common.
    prop_oneof![
        3 => Just(Errno::EIO),
        1 => Just(Errno::ENOSPC),
        1 => Just(Errno::new(122).unwrap()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => errno().prop_map(Op::Set),
        2 => Just(Op::Sample),
        1 => Just(Op::Peek),
        2 => any::<usize>().prop_map(Op::Check),
        4 => any::<usize>().prop_map(Op::CheckAndAdvance),
        2 => any::<usize>().prop_map(Op::PeekAndAdvance),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

/// Runs `ops` on a real `ErrSeq` and on the model, comparing every answer.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let es = ErrSeq::new();
    let mut model = Model::default();
    let mut cursors: Vec<Cursor> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let pick = |i: usize| (!cursors.is_empty()).then(|| i % cursors.len());
        match *op {
            Op::Set(e) => {
                es.set(e);
                model.set(e);
            }
            Op::Sample => {
                cursors.push(es.sample());
                model.sample();
            }
            Op::Peek => {
                cursors.push(es.peek());
                model.peek();
            }
            Op::Check(i) => {
                if let Some(i) = pick(i) {
                    prop_assert_eq!(es.check(cursors[i]), model.check(i), "step {}", step);
                }
            }
            Op::CheckAndAdvance(i) => {
                if let Some(i) = pick(i) {
                    let got = es.check_and_advance(&mut cursors[i]);
                    prop_assert_eq!(got, model.check_and_advance(i), "step {}", step);
                }
            }
            Op::PeekAndAdvance(i) => {
                if let Some(i) = pick(i) {
                    let got = es.peek_and_advance(&mut cursors[i]);
                    prop_assert_eq!(got, model.peek_and_advance(i), "step {}", step);
                }
            }
            Op::Drop(i) => {
                if let Some(i) = pick(i) {
                    let _ = cursors.swap_remove(i);
                    model.owed.swap_remove(i);
                }
            }
        }
        prop_assert_eq!(es.last_error(), model.last);
    }
    // In the end every cursor agrees on whether it is still owed.
    for (i, &cursor) in cursors.iter().enumerate() {
        prop_assert_eq!(es.check(cursor), model.check(i), "cursor {} at end", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn errseq_matches_the_model(ops in prop::collection::vec(op(), 0..200)) {
        run(&ops)?;
    }
}

/// The model itself, on the documented scenarios, so that a wrong model
/// cannot agree with a wrong implementation unnoticed.
#[test]
fn model_agrees_with_the_scenarios() {
    use Op::*;
    let eio = Errno::EIO;
    let cases: &[&[Op]] = &[
        // 1, 2, 3
        &[
            Sample,
            Sample,
            Set(eio),
            CheckAndAdvance(0),
            CheckAndAdvance(0),
            CheckAndAdvance(1),
            Sample,
            CheckAndAdvance(2),
        ],
        // 4, 5, 6
        &[
            Set(eio),
            Peek,
            Sample,
            Set(eio),
            Check(0),
            Sample,
            CheckAndAdvance(1),
            CheckAndAdvance(2),
            Set(eio),
            CheckAndAdvance(1),
        ],
    ];
    for ops in cases {
        run(ops).unwrap();
    }
    let mut m = Model::default();
    m.sample();
    m.set(eio);
    assert_eq!(m.check_and_advance(0), Err(eio));
    assert_eq!(m.check_and_advance(0), Ok(()));
    m.sample();
    assert_eq!(m.check(1), None);
    m.set(eio);
    m.peek();
    m.sample();
    assert_eq!(m.check(2), None);
    assert_eq!(m.check(3), Some(eio));
}
