//! Shrinking a diverging case: delta debugging over the steps, then over
//! the layer entries, then simpler arguments, keeping the same kind of
//! divergence (its signature) at every stage.

use std::time::{Duration, Instant};

use crate::ops::{Op, OpenMode, RenameMode, Step, TimeArg, XFlag};
use crate::run::{Case, Config, Failure, Workspace, replay};
use crate::spec::{Kind, Layers, T0};

/// What shrinking produced.
#[derive(Debug)]
pub struct Shrunk {
    /// The smallest case found.
    pub case: Case,
    /// Its divergence.
    pub failure: Failure,
    /// Replays made.
    pub tries: usize,
    /// The original divergence did not come back on replay (flaky).
    pub flaky: bool,
}

struct Shrinker<'a> {
    ws: &'a mut Workspace,
    cfg: &'a Config,
    want: String,
    deadline: Instant,
    tries: usize,
}

impl Shrinker<'_> {
    /// Replays `case`; its failure when it diverges the same way.
    fn test(&mut self, case: &Case) -> Option<Failure> {
        if Instant::now() > self.deadline {
            return None;
        }
        self.tries += 1;
        match replay(self.ws, self.cfg, case) {
            Ok(Some(f)) if f.signature(&case.steps) == self.want => Some(f),
            _ => None,
        }
    }

    /// Classic ddmin over the items of `len` units, where `make` builds a
    /// candidate from the kept indices.
    fn ddmin<T: Clone>(
        &mut self,
        items: Vec<T>,
        best: &mut (Case, Failure),
        make: &dyn Fn(&Case, &[T]) -> Case,
    ) -> Vec<T> {
        let mut items = items;
        let mut n = 2usize;
        while items.len() >= 2 && Instant::now() < self.deadline {
            let chunk = items.len().div_ceil(n);
            let mut reduced = false;
            let mut start = 0;
            while start < items.len() {
                let end = (start + chunk).min(items.len());
                let cand: Vec<T> = items[..start]
                    .iter()
                    .chain(items[end..].iter())
                    .cloned()
                    .collect();
                let c = make(&best.0, &cand);
                if let Some(f) = self.test(&c) {
                    items = cand;
                    *best = (c, f);
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
                start = end;
            }
            if !reduced {
                if n >= items.len() {
                    break;
                }
                n = (n * 2).min(items.len());
            }
        }
        // A last pass with single items (ddmin may stop early on a budget).
        if items.len() == 1 {
            let c = make(&best.0, &[]);
            if let Some(f) = self.test(&c) {
                *best = (c, f);
                items.clear();
            }
        }
        items
    }
}

fn simpler_ops(op: &Op) -> Vec<Op> {
    let mut v = Vec::new();
    let mut push = |o: Op| {
        if o != *op {
            v.push(o);
        }
    };
    match op.clone() {
        Op::Write {
            path,
            off,
            len,
            seed,
        } => {
            push(Op::Write {
                path: path.clone(),
                off: 0,
                len,
                seed,
            });
            push(Op::Write {
                path,
                off,
                len: len.min(1),
                seed,
            });
        }
        Op::FdWrite {
            slot,
            off,
            len,
            seed,
        } => {
            push(Op::FdWrite {
                slot,
                off: 0,
                len,
                seed,
            });
            push(Op::FdWrite {
                slot,
                off,
                len: len.min(1),
                seed,
            });
        }
        Op::FdRead { slot, len, .. } => push(Op::FdRead { slot, off: 0, len }),
        Op::Truncate { path, size } => push(Op::Truncate {
            path,
            size: size.min(1),
        }),
        Op::FdTruncate { slot, size } => push(Op::FdTruncate {
            slot,
            size: size.min(1),
        }),
        Op::Chmod { path, mode } => {
            push(Op::Chmod {
                path: path.clone(),
                mode: mode & 0o777,
            });
            push(Op::Chmod { path, mode: 0o644 });
        }
        Op::Create { path, .. } => push(Op::Create { path, mode: 0o644 }),
        Op::Mkdir { path, .. } => push(Op::Mkdir { path, mode: 0o755 }),
        Op::Chown {
            path,
            uid,
            gid,
            follow,
        } if follow => push(Op::Chown {
            path,
            uid,
            gid,
            follow: false,
        }),
        Op::Utimens {
            path,
            atime,
            mtime,
            follow,
        } => {
            push(Op::Utimens {
                path: path.clone(),
                atime: TimeArg::Omit,
                mtime,
                follow,
            });
            push(Op::Utimens {
                path: path.clone(),
                atime,
                mtime: TimeArg::Omit,
                follow,
            });
            push(Op::Utimens {
                path,
                atime,
                mtime,
                follow: false,
            });
        }
        Op::SetXattr {
            path,
            name,
            value,
            flag,
            follow,
        } => {
            push(Op::SetXattr {
                path: path.clone(),
                name: name.clone(),
                value: value.clone(),
                flag: XFlag::Any,
                follow,
            });
            push(Op::SetXattr {
                path,
                name,
                value,
                flag,
                follow: false,
            });
        }
        Op::RemoveXattr { path, name, .. } => push(Op::RemoveXattr {
            path,
            name,
            follow: false,
        }),
        Op::Rename { from, to, mode } if mode != RenameMode::Plain => push(Op::Rename {
            from,
            to,
            mode: RenameMode::Plain,
        }),
        Op::Open { slot, path, mode } if mode != OpenMode::Read => push(Op::Open {
            slot,
            path,
            mode: OpenMode::Read,
        }),
        _ => {}
    }
    v
}

fn simpler_entry(e: &crate::spec::Entry) -> Vec<crate::spec::Entry> {
    let mut v = Vec::new();
    if !e.xattrs.is_empty() {
        let mut s = e.clone();
        s.xattrs.clear();
        v.push(s);
    }
    if e.uid != 0 || e.gid != 0 {
        v.push(e.clone().owner(0, 0));
    }
    if e.mtime != T0 || e.atime != T0 {
        v.push(e.clone().times(T0, T0));
    }
    match &e.kind {
        Kind::Whiteout(w) if *w != crate::spec::Wh::CharDev => {
            let mut s = e.clone();
            s.kind = Kind::Whiteout(crate::spec::Wh::CharDev);
            v.push(s);
        }
        Kind::Dir { .. } if e.mode != 0o755 => v.push(e.clone().mode(0o755)),
        Kind::File { size, chunks } => {
            if e.mode != 0o644 {
                v.push(e.clone().mode(0o644));
            }
            if *size > 1 || chunks.len() > 1 {
                let mut s = e.clone();
                s.kind = Kind::File {
                    size: 1,
                    chunks: vec![(0, 1, 1)],
                };
                v.push(s);
            }
            if *size > 0 {
                let mut s = e.clone();
                s.kind = Kind::File {
                    size: 0,
                    chunks: vec![],
                };
                v.push(s);
            }
        }
        _ => {}
    }
    v
}

/// Shrinks `case`, which failed with `failure`, for at most `budget`.
pub fn shrink(
    ws: &mut Workspace,
    cfg: &Config,
    case: &Case,
    failure: &Failure,
    budget: Duration,
) -> Shrunk {
    let mut s = Shrinker {
        ws,
        cfg,
        want: failure.signature(&case.steps),
        deadline: Instant::now() + budget,
        tries: 0,
    };
    // Steps after the diverging one play no part.
    let mut start = case.clone();
    if let Some(i) = failure.step {
        start.steps.truncate(i + 1);
    }
    let Some(f0) = s.test(&start) else {
        return Shrunk {
            case: start,
            failure: failure.clone(),
            tries: s.tries,
            flaky: true,
        };
    };
    let mut best = (start, f0);

    // 1. Steps.
    let idx: Vec<usize> = (0..best.0.steps.len()).collect();
    let all = best.0.steps.clone();
    s.ddmin(idx, &mut best, &|c: &Case, keep: &[usize]| Case {
        steps: keep.iter().map(|i| all[*i].clone()).collect(),
        ..c.clone()
    });
    // The kept steps, as the case now holds them.
    // 2. Layer entries: whole layers first, then ddmin, then one by one.
    for layer in 0..crate::spec::LOWERS {
        let cand = Case {
            layers: Layers::from_entries(
                best.0
                    .layers
                    .entries
                    .iter()
                    .filter(|e| e.layer != layer)
                    .cloned()
                    .collect(),
            ),
            ..best.0.clone()
        };
        if cand.layers.entries.len() < best.0.layers.entries.len() {
            if let Some(f) = s.test(&cand) {
                best = (cand, f);
            }
        }
    }
    let entries = best.0.layers.entries.clone();
    let idx: Vec<usize> = (0..entries.len()).collect();
    s.ddmin(idx, &mut best, &|c: &Case, keep: &[usize]| {
        // Drop hard links whose target went.
        let kept: Vec<crate::spec::Entry> = keep.iter().map(|i| entries[*i].clone()).collect();
        let ok: Vec<crate::spec::Entry> = kept
            .iter()
            .filter(|e| match &e.kind {
                Kind::HardLink(t) => kept.iter().any(|x| x.layer == e.layer && &x.path == t),
                _ => true,
            })
            .cloned()
            .collect();
        Case {
            layers: Layers::from_entries(ok),
            ..c.clone()
        }
    });
    let mut i = 0;
    while i < best.0.layers.entries.len() && Instant::now() < s.deadline {
        let cand = Case {
            layers: best.0.layers.without(i),
            ..best.0.clone()
        };
        match s.test(&cand) {
            Some(f) => best = (cand, f),
            None => i += 1,
        }
    }
    // 3. Simpler arguments.
    for i in 0..best.0.steps.len() {
        if best.0.steps[i].user {
            let mut cand = best.0.clone();
            cand.steps[i].user = false;
            if let Some(f) = s.test(&cand) {
                best = (cand, f);
            }
        }
        for op in simpler_ops(&best.0.steps[i].op) {
            let mut cand = best.0.clone();
            cand.steps[i] = Step {
                op,
                user: cand.steps[i].user,
            };
            if let Some(f) = s.test(&cand) {
                best = (cand, f);
            }
        }
    }
    for i in 0..best.0.layers.entries.len() {
        for e in simpler_entry(&best.0.layers.entries[i]) {
            let mut cand = best.0.clone();
            cand.layers.entries[i] = e;
            if let Some(f) = s.test(&cand) {
                best = (cand, f);
            }
        }
    }
    Shrunk {
        case: best.0,
        failure: best.1,
        tries: s.tries,
        flaky: false,
    }
}
