//! The operation generator: seeded, and aware of the current tree (the
//! kernel's view) so that most operations hit names that exist, names
//! that were just removed (whiteouts), and files that were just renamed or
//! copied up.

use crate::ops::{NodeKind, Op, OpenMode, Outcome, RenameMode, SLOTS, Step, TimeArg, XFlag};
use crate::rng::Rng;
use crate::snap::Snapshot;
use crate::spec::{NAMES, T0, gen_target, join, parent_of};

/// Generates the steps of one sequence.
#[derive(Debug)]
pub struct OpGen {
    rng: Rng,
    /// Names recently renamed to or copied up (the "reopen" targets).
    recent: Vec<String>,
    /// Names recently removed (to create over whiteouts).
    removed: Vec<String>,
    /// Which slots hold a file.
    open: [bool; SLOTS],
}

const FMODES: [u32; 8] = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o6711, 0o444, 0o1644];
const DMODES: [u32; 6] = [0o755, 0o700, 0o775, 0o1777, 0o2775, 0o555];
const XNAMES: [&str; 3] = ["user.a", "user.b", "user.c"];
const NEWNAMES: [&str; 3] = ["n", "m", "h0"];

fn push_bounded(v: &mut Vec<String>, p: String) {
    v.retain(|x| *x != p);
    v.push(p);
    if v.len() > 8 {
        v.remove(0);
    }
}

impl OpGen {
    /// A generator for sequence `seed`.
    pub fn new(seed: u64) -> OpGen {
        OpGen {
            rng: Rng::new(seed, 2),
            recent: Vec::new(),
            removed: Vec::new(),
            open: [false; SLOTS],
        }
    }

    fn existing(&mut self, view: &Snapshot, pred: impl Fn(char) -> bool, root_ok: bool) -> String {
        if !self.recent.is_empty() && self.rng.chance(25) {
            let p = self.rng.pick(&self.recent).clone();
            if view.objs.get(&p).is_some_and(|o| pred(o.kind)) {
                return p;
            }
        }
        let all: Vec<&String> = view
            .objs
            .iter()
            .filter(|(p, o)| (root_ok || !p.is_empty()) && pred(o.kind))
            .map(|(p, _)| p)
            .collect();
        if all.is_empty() || self.rng.chance(4) {
            return self.fresh(view);
        }
        (*self.rng.pick(&all)).clone()
    }

    fn any(&mut self, view: &Snapshot) -> String {
        self.existing(view, |_| true, false)
    }

    fn fresh(&mut self, view: &Snapshot) -> String {
        if !self.removed.is_empty() && self.rng.chance(35) {
            return self.rng.pick(&self.removed).clone();
        }
        let dirs: Vec<&String> = view
            .objs
            .iter()
            .filter(|(_, o)| o.kind == 'd')
            .map(|(p, _)| p)
            .collect();
        let dir = if dirs.is_empty() {
            String::new()
        } else {
            (*self.rng.pick(&dirs)).clone()
        };
        let name = if self.rng.chance(70) {
            *self.rng.pick(&NAMES)
        } else {
            *self.rng.pick(&NEWNAMES)
        };
        let dir = if self.rng.chance(3) {
            // Through something that is not a directory, or is missing.
            let any: Vec<&String> = view.objs.keys().filter(|p| !p.is_empty()).collect();
            if any.is_empty() {
                dir
            } else {
                (*self.rng.pick(&any)).clone()
            }
        } else {
            dir
        };
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    fn size_like(&mut self, view: &Snapshot, path: &str) -> u64 {
        let cur = view.objs.get(path).and_then(|o| o.size).unwrap_or(0);
        match self.rng.below(6) {
            0 => 0,
            1 => self.rng.below(cur + 1),
            2 => cur,
            3 => cur + self.rng.range(1, 5000),
            4 => self.rng.range(0, 4096),
            _ => self.rng.range(100_000, 1_200_000),
        }
    }

    fn len(&mut self) -> u64 {
        if self.rng.chance(10) {
            self.rng.range(4096, 70_000)
        } else {
            self.rng.range(1, 4096)
        }
    }

    fn time(&mut self) -> TimeArg {
        match self.rng.below(10) {
            0..=1 => TimeArg::Omit,
            2..=3 => TimeArg::Now,
            _ => TimeArg::At(
                T0 + self.rng.below(200_000_000) as i64,
                self.rng.below(1_000_000_000) as i64,
            ),
        }
    }

    fn slot(&mut self) -> usize {
        let open: Vec<usize> = (0..SLOTS).filter(|i| self.open[*i]).collect();
        if !open.is_empty() && self.rng.chance(90) {
            *self.rng.pick(&open)
        } else {
            self.rng.below(SLOTS as u64) as usize
        }
    }

    /// The next step, given the kernel's current view.
    pub fn next(&mut self, view: &Snapshot) -> Step {
        let is_file = |k: char| k == 'f';
        let non_dir = |k: char| k != 'd';
        let is_dir = |k: char| k == 'd';
        // create write truncate chmod chown utimens setxattr removexattr
        // mkdir rmdir unlink rename link symlink mknod open fdread fdwrite
        // fdtruncate fdstat close
        let any_open = self.open.iter().any(|o| *o);
        let fdw = if any_open { 5 } else { 0 };
        let weights = [
            7, 9, 4, 5, 3, 4, 5, 3, 6, 4, 6, 13, 5, 3, 3, 7, fdw, fdw, 1, 2, 2,
        ];
        let k = self.rng.weighted(&weights);
        let follow = self.rng.chance(40);
        let op = match k {
            0 => Op::Create {
                path: if self.rng.chance(90) {
                    self.fresh(view)
                } else {
                    self.any(view)
                },
                mode: *self.rng.pick(&FMODES),
            },
            1 => {
                let path = self.existing(view, is_file, false);
                let cur = view.objs.get(&path).and_then(|o| o.size).unwrap_or(0);
                let off = match self.rng.below(5) {
                    0 => 0,
                    1 => self.rng.below(cur + 1),
                    2 => cur,
                    3 => cur + self.rng.range(1, 100_000),
                    _ => self.rng.range(0, 8192),
                };
                Op::Write {
                    path,
                    off,
                    len: self.len(),
                    seed: self.rng.below(1_000_000),
                }
            }
            2 => {
                let path = self.existing(view, is_file, false);
                let size = self.size_like(view, &path);
                Op::Truncate { path, size }
            }
            3 => Op::Chmod {
                path: self.existing(view, |_| true, true),
                mode: if self.rng.chance(50) {
                    *self.rng.pick(&FMODES)
                } else {
                    *self.rng.pick(&DMODES)
                },
            },
            4 => {
                let ids = [0, 1000, 1001, u32::MAX];
                Op::Chown {
                    path: self.any(view),
                    uid: *self.rng.pick(&ids),
                    gid: *self.rng.pick(&ids),
                    follow,
                }
            }
            5 => Op::Utimens {
                path: self.existing(view, |_| true, true),
                atime: self.time(),
                mtime: self.time(),
                follow,
            },
            6 => {
                let name = if self.rng.chance(4) {
                    "trusted.overlay.opaque".to_string()
                } else {
                    self.rng.pick(&XNAMES).to_string()
                };
                let path = self.existing(view, |_| true, true);
                // XATTR_CREATE/REPLACE only where they succeed: the kernel
                // copies up before it checks them, so a failing one still
                // breaks hard links and changes directory link counts; rovl
                // checks first (FINDINGS: kernel quirks). Through a symlink
                // when following.
                let has = view
                    .object(&path, follow)
                    .map(|o| o.xattrs.contains_key(&name));
                let flag = match (has, self.rng.below(4)) {
                    (Some(false), 0) => XFlag::Create,
                    (Some(true), 0) => XFlag::Replace,
                    _ => XFlag::Any,
                };
                Op::SetXattr {
                    path,
                    name,
                    value: format!("w{}", self.rng.below(1000)),
                    flag,
                    follow,
                }
            }
            7 => Op::RemoveXattr {
                path: self.any(view),
                name: self.rng.pick(&XNAMES).to_string(),
                follow,
            },
            8 => Op::Mkdir {
                path: self.fresh(view),
                mode: *self.rng.pick(&DMODES),
            },
            9 => Op::Rmdir {
                path: if self.rng.chance(85) {
                    self.existing(view, is_dir, false)
                } else {
                    self.any(view)
                },
            },
            10 => Op::Unlink {
                path: if self.rng.chance(85) {
                    self.existing(view, non_dir, false)
                } else {
                    self.any(view)
                },
            },
            11 => {
                let from = self.any(view);
                let from_dir = view.objs.get(&from).is_some_and(|o| o.kind == 'd');
                let to = if self.rng.chance(50) {
                    self.fresh(view)
                } else if self.rng.chance(70) {
                    self.existing(view, |k| (k == 'd') == from_dir, false)
                } else {
                    self.any(view)
                };
                let ino = |p: &String| view.objs.get(p).filter(|o| o.kind != 'd').map(|o| o.ino);
                let to = if ino(&from).is_some() && ino(&from) == ino(&to) {
                    // Two names of one lower file: POSIX says rename does
                    // nothing (rovl); the kernel renames (FINDINGS: kernel
                    // quirks).
                    self.fresh(view)
                } else {
                    to
                };
                let mode = match self.rng.below(10) {
                    0..=5 => RenameMode::Plain,
                    6..=7 => RenameMode::NoReplace,
                    _ => RenameMode::Exchange,
                };
                Op::Rename { from, to, mode }
            }
            12 => Op::Link {
                from: self.existing(view, non_dir, false),
                to: self.fresh(view),
            },
            13 => Op::Symlink {
                target: gen_target(&mut self.rng),
                path: self.fresh(view),
            },
            14 => {
                let kind = match self.rng.below(20) {
                    0..=7 => NodeKind::Fifo,
                    8..=11 => NodeKind::Chr(1, 3),
                    12..=14 => NodeKind::Chr(0, 0),
                    15..=17 => NodeKind::Reg,
                    _ => NodeKind::Sock,
                };
                Op::Mknod {
                    path: self.fresh(view),
                    kind,
                    mode: 0o644,
                }
            }
            15 => {
                let path = if !self.recent.is_empty() && self.rng.chance(40) {
                    self.rng.pick(&self.recent).clone()
                } else if self.rng.chance(90) {
                    self.existing(view, is_file, false)
                } else {
                    self.any(view)
                };
                let mode = match self.rng.below(20) {
                    0..=6 => OpenMode::Read,
                    7..=9 => OpenMode::Write,
                    10..=13 => OpenMode::ReadWrite,
                    14..=15 => OpenMode::Trunc,
                    16 => OpenMode::Append,
                    17..=18 => OpenMode::Create,
                    _ => OpenMode::Dir,
                };
                Op::Open {
                    slot: self.rng.below(SLOTS as u64) as usize,
                    path,
                    mode,
                }
            }
            16 => Op::FdRead {
                slot: self.slot(),
                off: self.rng.range(0, 8192),
                len: self.len(),
            },
            17 => Op::FdWrite {
                slot: self.slot(),
                off: self.rng.range(0, 70_000),
                len: self.len(),
                seed: self.rng.below(1_000_000),
            },
            18 => Op::FdTruncate {
                slot: self.slot(),
                size: self.rng.range(0, 70_000),
            },
            19 => Op::FdStat { slot: self.slot() },
            _ => Op::Close { slot: self.slot() },
        };
        let path_op = !matches!(
            op,
            Op::FdRead { .. }
                | Op::FdWrite { .. }
                | Op::FdTruncate { .. }
                | Op::FdStat { .. }
                | Op::Close { .. }
        );
        let user = path_op && self.rng.chance(15);
        let (op, user) = avoid_documented_divergences(view, op, user);
        Step { op, user }
    }

    /// Learns from what the kernel did with `step` (which names were
    /// removed, renamed, copied up; which slots are open).
    pub fn observe(&mut self, step: &Step, kernel: &Outcome) {
        let ok = !matches!(kernel, Outcome::Err(_));
        match &step.op {
            Op::Open { slot, .. } if *slot < SLOTS => self.open[*slot] = ok,
            Op::Close { slot } if *slot < SLOTS => self.open[*slot] = false,
            _ => {}
        }
        if !ok {
            return;
        }
        match &step.op {
            Op::Unlink { path } | Op::Rmdir { path } => {
                push_bounded(&mut self.removed, path.clone())
            }
            Op::Rename { from, to, mode } => {
                push_bounded(&mut self.recent, to.clone());
                if *mode == RenameMode::Exchange {
                    push_bounded(&mut self.recent, from.clone());
                } else {
                    push_bounded(&mut self.removed, from.clone());
                }
            }
            Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::SetXattr { path, .. }
            | Op::Link { from: path, .. } => push_bounded(&mut self.recent, path.clone()),
            _ => {}
        }
    }
}

/// Steps where rovl differs from the kernel on purpose (README, "Where rovl
/// differs"; FINDINGS D5, D9) become harmless ones, decided from the view
/// alone so that the random stream stays the same:
/// - opening a name of a file with several links (an open file of a lower
///   hard link follows the inode in rovl, the name in the kernel) becomes
///   an fstat of the slot;
/// - `chown(-1, -1)` by the test user of another owner's setuid or
///   group-executable setgid file (EPERM in the kernel, a successful no-op
///   in rovl) is made by root.
fn avoid_documented_divergences(view: &Snapshot, op: Op, user: bool) -> (Op, bool) {
    match op {
        Op::Open { slot, ref path, .. }
            if view
                .object(path, true)
                .is_some_and(|o| o.kind != 'd' && o.nlink > 1) =>
        {
            (Op::FdStat { slot }, false)
        }
        Op::Chown {
            ref path,
            uid: u32::MAX,
            gid: u32::MAX,
            follow,
        } if user
            && view.object(path, follow).is_some_and(|o| {
                o.kind != 'd'
                    && o.uid != crate::ops::USER.0
                    && (o.perm & 0o4000 != 0 || o.perm & 0o2010 == 0o2010)
            }) =>
        {
            (op, false)
        }
        // Two names of one file (K3): the generator's fresh name may be
        // another name of it again; take the first name in the target's
        // directory that is not.
        Op::Rename { from, to, mode } if same_file(view, &from, &to) => {
            let dir = parent_of(&to);
            let other = NEWNAMES
                .iter()
                .chain(NAMES.iter())
                .map(|n| join(dir, n))
                .find(|c| !same_file(view, &from, c));
            match other {
                Some(to) => (Op::Rename { from, to, mode }, user),
                None => (
                    Op::Rename {
                        from: to.clone(),
                        to,
                        mode,
                    },
                    user,
                ),
            }
        }
        op => (op, user),
    }
}

/// True when `a` and `b` name one non-directory (without following a last
/// symlink, as rename does).
fn same_file(view: &Snapshot, a: &str, b: &str) -> bool {
    let ino = |p: &str| {
        view.object(p, false)
            .filter(|o| o.kind != 'd' && o.kind != '?')
            .map(|o| o.ino)
    };
    ino(a).is_some() && ino(a) == ino(b)
}
