//! The runner: one sequence applied to a rovl mount and a kernel overlayfs
//! mount over identical layers, compared after every step; then the
//! unmount, the lower layers left untouched, and the format interchange.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use testbed::{FuseMount, KernelOverlay, Scratch, escape_option_path as esc};

use crate::opgen::OpGen;
use crate::ops::{Applier, Outcome, Step};
use crate::snap::{Diff, Snapshot, diff};
use crate::spec::{Forms, LOWERS, Layers, T0};
use crate::{rng, sys};

/// Kernel overlayfs options: the reference configuration.
pub const KERNEL_OPTS: &str = "redirect_dir=on,index=off,metacopy=off,xino=off";

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The rovl binary.
    pub rovl: PathBuf,
    /// Steps per generated sequence.
    pub steps: usize,
    /// Fields left out of the comparison (known divergences).
    pub ignore: Vec<String>,
    /// Run the interchange checks.
    pub interchange: bool,
}

/// A concrete test case: layers and steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The seed it came from.
    pub seed: u64,
    /// The lower layers.
    pub layers: Layers,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Where in a run a divergence showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The view of the layers before any operation.
    Initial,
    /// After a step (see [`Failure::step`]).
    Step,
    /// After closing every slot at the end.
    Final,
    /// `rovl umount` failed.
    Unmount,
    /// rovl changed its lower layers.
    LowerModified,
    /// rovl remounted over its own upper layer.
    Remount,
    /// Kernel overlayfs mounted over rovl's upper layer.
    KernelOverRovlUpper,
    /// rovl mounted over the kernel's upper layer.
    RovlOverKernelUpper,
}

/// A divergence.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Where.
    pub phase: Phase,
    /// Index of the step after which it showed (Step phase).
    pub step: Option<usize>,
    /// The step's outcomes (kernel, rovl) when they differ.
    pub result: Option<(Outcome, Outcome)>,
    /// Differences of the views.
    pub diffs: Vec<Diff>,
    /// Anything else worth saying (an error message).
    pub note: String,
}

impl Failure {
    /// True for divergences only the interchange checks find.
    pub fn phase_needs_interchange(&self) -> bool {
        matches!(
            self.phase,
            Phase::Remount | Phase::KernelOverRovlUpper | Phase::RovlOverKernelUpper
        )
    }

    /// What kind of divergence this is: the shrinker keeps it.
    pub fn signature(&self, steps: &[Step]) -> String {
        let what = if self.result.is_some() {
            let k = self
                .step
                .and_then(|i| steps.get(i))
                .map_or("?", |s| s.op.kind());
            format!("result of {k}")
        } else if let Some(d) = self.diffs.first() {
            d.field.to_string()
        } else {
            "note".to_string()
        };
        format!("{:?}: {what}", self.phase)
    }

    /// A readable description.
    pub fn describe(&self, steps: &[Step]) -> String {
        let mut s = String::new();
        match (self.phase, self.step) {
            (Phase::Step, Some(i)) => {
                let st = &steps[i];
                let _ = writeln!(
                    s,
                    "after step {i}: {}{}",
                    st.op.to_rust(),
                    if st.user { " (as uid 1000)" } else { "" }
                );
            }
            (p, _) => {
                let _ = writeln!(s, "{p:?}");
            }
        }
        if let Some((k, r)) = &self.result {
            let _ = writeln!(s, "  result: kernel {k} / rovl {r}");
        }
        for d in self.diffs.iter().take(20) {
            let _ = writeln!(s, "  {d}");
        }
        if self.diffs.len() > 20 {
            let _ = writeln!(s, "  ... {} more", self.diffs.len() - 20);
        }
        if !self.note.is_empty() {
            let _ = writeln!(s, "  {}", self.note.trim_end());
        }
        s
    }
}

/// A tmpfs mounted at a directory (created), unmounted on drop (lazily
/// when busy).
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs at `at`.
    pub fn new(at: &Path) -> io::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        sys::mount_tmpfs(at, "size=2g,mode=0755")?;
        Ok(Tmpfs {
            path: at.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if sys::umount(&self.path, false).is_err() {
            let _ = sys::umount(&self.path, true);
        }
    }
}

/// A tmpfs in a scratch directory, where every case of one worker lives.
#[derive(Debug)]
pub struct Workspace {
    fs: Tmpfs,
    n: u64,
    // Dropped last: unmounts whatever is still below it.
    _scratch: Scratch,
}

impl Workspace {
    /// A scratch directory with a fresh tmpfs in it.
    pub fn new() -> io::Result<Workspace> {
        let scratch = Scratch::new()?;
        let fs = Tmpfs::new(&scratch.path().join("fs"))?;
        Ok(Workspace {
            fs,
            n: 0,
            _scratch: scratch,
        })
    }

    fn fresh(&mut self) -> io::Result<PathBuf> {
        self.n += 1;
        let d = self.fs.path().join(format!("case{}", self.n));
        std::fs::create_dir(&d)?;
        Ok(d)
    }
}

/// Where the steps come from.
#[derive(Debug)]
pub enum Source<'a> {
    /// Generated from the kernel's view as the run goes.
    Gen(OpGen, usize),
    /// Given.
    Fixed(&'a [Step]),
}

/// The directories of one stack.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Upper layer.
    pub upper: PathBuf,
    /// Work directory.
    pub work: PathBuf,
    /// Mount point.
    pub mnt: PathBuf,
}

impl Dirs {
    fn make(base: &Path, lowers: &[PathBuf], tag: &str) -> io::Result<Dirs> {
        let d = Dirs {
            lowers: lowers.to_vec(),
            upper: base.join(format!("{tag}-upper")),
            work: base.join(format!("{tag}-work")),
            mnt: base.join(format!("{tag}-mnt")),
        };
        for p in [&d.upper, &d.work, &d.mnt] {
            std::fs::create_dir_all(p)?;
        }
        sys::chmod(&d.upper, 0o755)?;
        sys::utimens(&d.upper, Some((T0, 0)), Some((T0, 0)), false)?;
        Ok(d)
    }

    fn with_mnt(&self, base: &Path, tag: &str) -> io::Result<Dirs> {
        let mnt = base.join(format!("{tag}-mnt"));
        std::fs::create_dir_all(&mnt)?;
        Ok(Dirs {
            mnt,
            ..self.clone()
        })
    }

    fn opts(&self) -> String {
        let l: Vec<String> = self.lowers.iter().map(|p| esc(p)).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            l.join(":"),
            esc(&self.upper),
            esc(&self.work)
        )
    }
}

/// Mounts rovl over `d`.
pub fn mount_rovl(rovl: &Path, d: &Dirs) -> io::Result<FuseMount> {
    let mut cmd = Command::new(rovl);
    cmd.arg("-o").arg(d.opts()).arg(&d.mnt);
    FuseMount::spawn(cmd, &d.mnt)
}

/// Mounts kernel overlayfs over `d`.
pub fn mount_kernel(d: &Dirs) -> io::Result<KernelOverlay> {
    let lowers: Vec<&Path> = d.lowers.iter().map(PathBuf::as_path).collect();
    KernelOverlay::mount(&lowers, Some(&d.upper), Some(&d.work), KERNEL_OPTS, &d.mnt)
}

/// `rovl umount MNT`, then the guard's own unmount (which also waits for
/// the daemon). An error says what went wrong.
pub fn unmount_rovl(rovl: &Path, m: FuseMount) -> Result<(), String> {
    let out = Command::new(rovl).arg("umount").arg(m.path()).output();
    let res = match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "rovl umount: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("rovl umount: {e}")),
    };
    // Give the mount table a moment: the guard must not race the unmount.
    let mut still = m.is_mounted();
    for _ in 0..50 {
        if !still {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        still = m.is_mounted();
    }
    let res = match res {
        Ok(()) if still => Err("rovl umount returned 0 but the mount is still there".into()),
        r => r,
    };
    let guard = m.unmount().map(drop).map_err(|e| format!("unmount: {e}"));
    res.and(if still { guard } else { Ok(()) })
}

/// Every object of the lower layers as seen directly (not through a
/// mount), with times and ctime: a change means someone wrote a lower
/// layer.
pub fn lower_state(roots: &[PathBuf]) -> BTreeMap<String, (String, String)> {
    fn walk(root: &Path, rel: &Path, tag: &str, out: &mut BTreeMap<String, (String, String)>) {
        let p = root.join(rel);
        let Ok(st) = sys::lstat(&p) else { return };
        let atime = format!("atime {}.{}", st.st_atime, st.st_atime_nsec);
        let mut s = format!(
            "mode 0{:o} {}:{} size {} mtime {}.{} ctime {}.{}",
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime,
            st.st_mtime_nsec,
            st.st_ctime,
            st.st_ctime_nsec
        );
        if let Ok(names) = sys::llistxattr(&p) {
            for n in names {
                let v = sys::lgetxattr(&p, &n).unwrap_or_default();
                let _ = write!(s, " {n}={}", String::from_utf8_lossy(&v));
            }
        }
        out.insert(format!("{tag}/{}", rel.display()), (s, atime));
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // O_NOATIME: looking must not change the access times this
            // very snapshot compares.
            if let Ok(mut names) = sys::list_dir_noatime(&p) {
                names.sort();
                for n in names {
                    walk(root, &rel.join(n), tag, out);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (i, r) in roots.iter().enumerate() {
        walk(r, Path::new(""), &format!("lower{i}"), &mut out);
    }
    out
}

pub type LowerState = BTreeMap<String, (String, String)>;

/// Changes to rovl's lower layers: `lower-atime` when only the access time
/// moved, `lower-layer` for anything else. "kernel" is the state before.
pub fn lower_diffs(before: &LowerState, after: &LowerState, ignore: &[String]) -> Vec<Diff> {
    let on = |f: &str| !ignore.iter().any(|i| i == f);
    let mut v = Vec::new();
    for (p, (b, ba)) in before {
        match after.get(p) {
            None => v.push(Diff {
                path: p.clone(),
                field: "lower-layer",
                kernel: b.clone(),
                rovl: "absent".into(),
            }),
            Some((a, _)) if a != b => v.push(Diff {
                path: p.clone(),
                field: "lower-layer",
                kernel: b.clone(),
                rovl: a.clone(),
            }),
            Some((_, aa)) if aa != ba => v.push(Diff {
                path: p.clone(),
                field: "lower-atime",
                kernel: ba.clone(),
                rovl: aa.clone(),
            }),
            _ => {}
        }
    }
    for (p, (a, _)) in after {
        if !before.contains_key(p) {
            v.push(Diff {
                path: p.clone(),
                field: "lower-layer",
                kernel: "absent".into(),
                rovl: a.clone(),
            });
        }
    }
    v.retain(|d| on(d.field));
    v
}

/// What [`execute`] found.
#[derive(Debug)]
pub struct Outcomes {
    /// The steps that ran (all of them when nothing diverged).
    pub steps: Vec<Step>,
    /// The first divergence.
    pub failure: Option<Failure>,
}

fn state_failure(phase: Phase, step: Option<usize>, diffs: Vec<Diff>) -> Option<Failure> {
    (!diffs.is_empty()).then(|| Failure {
        phase,
        step,
        result: None,
        diffs,
        note: String::new(),
    })
}

/// Runs one case: `layers` under both implementations, steps from
/// `source`. `Err` is a harness problem (nothing about rovl).
pub fn execute(
    ws: &mut Workspace,
    cfg: &Config,
    layers: &Layers,
    mut source: Source<'_>,
) -> Result<Outcomes, String> {
    let base = ws.fresh().map_err(|e| format!("case dir: {e}"))?;
    let r = execute_in(&base, cfg, layers, &mut source);
    // The mounts are gone (guards); the tmpfs is the workspace's.
    let _ = std::fs::remove_dir_all(&base);
    r
}

fn execute_in(
    base: &Path,
    cfg: &Config,
    layers: &Layers,
    source: &mut Source<'_>,
) -> Result<Outcomes, String> {
    let h = |e: io::Error| e.to_string();
    let lr: Vec<PathBuf> = (0..LOWERS).map(|i| base.join(format!("L{i}"))).collect();
    let lk: Vec<PathBuf> = (0..LOWERS).map(|i| base.join(format!("K{i}"))).collect();
    for p in lr.iter().chain(lk.iter()) {
        std::fs::create_dir_all(p).map_err(h)?;
    }
    layers
        .materialize(&lr, Forms::Native)
        .map_err(|e| format!("layers: {e}"))?;
    layers
        .materialize(&lk, Forms::Kernel)
        .map_err(|e| format!("kernel layers: {e}"))?;
    let rd = Dirs::make(base, &lr, "r").map_err(h)?;
    let kd = Dirs::make(base, &lk, "k").map_err(h)?;
    let lower_before = lower_state(&lr);

    let km = mount_kernel(&kd).map_err(|e| format!("kernel mount: {e}"))?;
    let rm = match mount_rovl(&cfg.rovl, &rd) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Outcomes {
                steps: Vec::new(),
                failure: Some(Failure {
                    phase: Phase::Initial,
                    step: None,
                    result: None,
                    diffs: Vec::new(),
                    note: format!("rovl does not mount: {e}"),
                }),
            });
        }
    };
    let mut ka = Applier::new(km.path());
    let mut ra = Applier::new(rm.path());
    let mut steps: Vec<Step> = Vec::new();
    let mut failure = None;

    let mut ks = Snapshot::take(ka.root(), &[]);
    let mut rs = Snapshot::take(ra.root(), &[]);
    failure = failure.or_else(|| state_failure(Phase::Initial, None, diff(&ks, &rs, &cfg.ignore)));
    // Set when a step met a kernel quirk: the views differ from then on.
    let mut quirk = None;
    let mut i = 0;
    let pause = std::env::var("DIFFTEST_PAUSE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    while failure.is_none() {
        let step = match source {
            Source::Gen(g, n) => {
                if i >= *n {
                    break;
                }
                g.next(&ks)
            }
            Source::Fixed(v) => match v.get(i) {
                Some(s) => s.clone(),
                None => break,
            },
        };
        let ko = ka.apply(&step);
        let ro = ra.apply(&step);
        if std::env::var_os("DIFFTEST_TRACE").is_some() {
            eprintln!("step {i}: {} -> kernel {ko} / rovl {ro}", step.to_rust());
        }
        if let Source::Gen(g, _) = source {
            g.observe(&step, &ko);
        }
        let ks_before = std::mem::replace(&mut ks, Snapshot::take(ka.root(), &ka.open_fds()));
        let rs_before = std::mem::replace(&mut rs, Snapshot::take(ra.root(), &ra.open_fds()));
        let diffs = diff(&ks, &rs, &cfg.ignore);
        if std::env::var_os("DIFFTEST_TRACE").is_some() {
            for d in &diffs {
                eprintln!("  {d}");
            }
        }
        let diverged = ko != ro || !diffs.is_empty();
        let known = diverged
            .then(|| kernel_quirk(&step, &ko, &ro, (&ks_before, &ks), (&rs_before, &rs), cfg))
            .flatten();
        steps.push(step);
        if let Some(k) = known {
            if std::env::var_os("DIFFTEST_TRACE").is_some() {
                eprintln!("  stopped: kernel quirk {k}");
            }
            quirk = Some(k);
            break;
        }
        if diverged {
            failure = Some(Failure {
                phase: Phase::Step,
                step: Some(i),
                result: (ko != ro).then_some((ko, ro)),
                diffs,
                note: String::new(),
            });
        }
        i += 1;
    }
    if let Some(secs) = pause {
        eprintln!(
            "paused {secs}s: kernel {} rovl {} layers {}",
            ka.root().display(),
            ra.root().display(),
            base.display()
        );
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    ka.close_all();
    ra.close_all();
    let kfinal = Snapshot::take(ka.root(), &[]);
    if failure.is_none() && quirk.is_none() {
        let rfinal = Snapshot::take(ra.root(), &[]);
        failure = state_failure(Phase::Final, None, diff(&kfinal, &rfinal, &cfg.ignore));
    }
    drop((ka, ra));
    let unmounted = unmount_rovl(&cfg.rovl, rm);
    km.unmount().map_err(|e| format!("kernel unmount: {e}"))?;
    if let Err(e) = unmounted {
        failure = failure.or(Some(Failure {
            phase: Phase::Unmount,
            step: None,
            result: None,
            diffs: Vec::new(),
            note: e,
        }));
    }
    if failure.is_none() {
        let after = lower_state(&lr);
        failure = state_failure(
            Phase::LowerModified,
            None,
            lower_diffs(&lower_before, &after, &cfg.ignore),
        );
    }
    if failure.is_none() && quirk.is_none() && cfg.interchange {
        failure = interchange(base, cfg, &rd, &kd, &kfinal)?;
    }
    Ok(Outcomes { steps, failure })
}

/// The kernel quirk (crates/difftest/FINDINGS.md) a diverging step shows,
/// if its divergence is exactly one; the sequence then ends there, passed
/// (the views differ from then on). Given the views before and after the
/// step, kernel's and rovl's.
/// - K6: rmdir, or rename over a directory, that the kernel refuses with
///   ENOTEMPTY though its own listing of the directory is empty (lower
///   xattr whiteouts count as entries in its emptiness check); rovl
///   succeeds.
/// - K2/K7: a call that fails alike in both, after which rovl's view is
///   unchanged but the kernel's is not: the kernel copied up before it
///   failed (link counts, broken hard links).
fn kernel_quirk(
    step: &Step,
    ko: &Outcome,
    ro: &Outcome,
    (k_before, k_after): (&Snapshot, &Snapshot),
    (r_before, r_after): (&Snapshot, &Snapshot),
    cfg: &Config,
) -> Option<&'static str> {
    use crate::ops::Op;
    let refused_empty = |p: &str| {
        *ko == Outcome::Err(libc::ENOTEMPTY)
            && *ro == Outcome::Ok
            && k_before
                .resolve_parent(p)
                .is_some_and(|d| k_before.is_empty_dir(&d))
    };
    match &step.op {
        Op::Rmdir { path } if refused_empty(path) => return Some("K6"),
        Op::Rename { to, .. } if refused_empty(to) => return Some("K6"),
        _ => {}
    }
    let copy_up_only = |d: &Diff| matches!(d.field, "nlink" | "inode-classes");
    if matches!(ko, Outcome::Err(_))
        && ko == ro
        && diff(r_before, r_after, &cfg.ignore).is_empty()
        && diff(k_after, r_after, &cfg.ignore).iter().all(copy_up_only)
    {
        return Some("K2/K7");
    }
    None
}

/// Remounts: rovl over its own upper, kernel over rovl's upper, rovl over
/// the kernel's upper; each view must be the kernel's final one.
fn interchange(
    base: &Path,
    cfg: &Config,
    rd: &Dirs,
    kd: &Dirs,
    want: &Snapshot,
) -> Result<Option<Failure>, String> {
    let fail = |phase, diffs: Vec<Diff>, note: String| {
        Some(Failure {
            phase,
            step: None,
            result: None,
            diffs,
            note,
        })
    };
    // rovl over its own upper again.
    let d = rd.with_mnt(base, "x-remount").map_err(|e| e.to_string())?;
    match mount_rovl(&cfg.rovl, &d) {
        Ok(m) => {
            let got = Snapshot::take(m.path(), &[]);
            let u = unmount_rovl(&cfg.rovl, m);
            let diffs = diff(want, &got, &cfg.ignore);
            if !diffs.is_empty() {
                return Ok(fail(Phase::Remount, diffs, String::new()));
            }
            if let Err(e) = u {
                return Ok(fail(Phase::Unmount, Vec::new(), e));
            }
        }
        Err(e) => return Ok(fail(Phase::Remount, Vec::new(), format!("mount: {e}"))),
    }
    // The kernel over rovl's upper (and rovl's workdir), kernel-form lowers.
    let d = Dirs {
        lowers: kd.lowers.clone(),
        ..rd.with_mnt(base, "x-kernel").map_err(|e| e.to_string())?
    };
    match mount_kernel(&d) {
        Ok(m) => {
            let got = Snapshot::take(m.path(), &[]);
            let _ = m.unmount();
            let diffs = diff(want, &got, &cfg.ignore);
            if !diffs.is_empty() {
                return Ok(fail(Phase::KernelOverRovlUpper, diffs, String::new()));
            }
        }
        Err(e) => {
            return Ok(fail(
                Phase::KernelOverRovlUpper,
                Vec::new(),
                format!("kernel refuses rovl's upper: {e}"),
            ));
        }
    }
    // rovl over the kernel's upper (and workdir), native-form lowers.
    let d = Dirs {
        lowers: rd.lowers.clone(),
        ..kd.with_mnt(base, "x-rovl").map_err(|e| e.to_string())?
    };
    match mount_rovl(&cfg.rovl, &d) {
        Ok(m) => {
            let got = Snapshot::take(m.path(), &[]);
            let u = unmount_rovl(&cfg.rovl, m);
            let diffs = diff(want, &got, &cfg.ignore);
            if !diffs.is_empty() {
                return Ok(fail(Phase::RovlOverKernelUpper, diffs, String::new()));
            }
            if let Err(e) = u {
                return Ok(fail(Phase::Unmount, Vec::new(), e));
            }
        }
        Err(e) => {
            return Ok(fail(
                Phase::RovlOverKernelUpper,
                Vec::new(),
                format!("rovl refuses the kernel's upper: {e}"),
            ));
        }
    }
    Ok(None)
}

/// Generates and runs sequence `seed`: the case that ran and its
/// divergence, if any.
pub fn run_seed(
    ws: &mut Workspace,
    cfg: &Config,
    seed: u64,
) -> Result<(Case, Option<Failure>), String> {
    let layers = crate::spec::generate(seed);
    let out = execute(ws, cfg, &layers, Source::Gen(OpGen::new(seed), cfg.steps))?;
    Ok((
        Case {
            seed,
            layers,
            steps: out.steps,
        },
        out.failure,
    ))
}

/// Replays a case.
pub fn replay(ws: &mut Workspace, cfg: &Config, case: &Case) -> Result<Option<Failure>, String> {
    Ok(execute(ws, cfg, &case.layers, Source::Fixed(&case.steps))?.failure)
}

/// Mixes a seed into a well-spread number (for picking seeds in --long).
pub fn spread(x: u64) -> u64 {
    rng::Rng::new(x, 9).next_u64()
}

/// The result of one seed in a batch.
#[derive(Debug)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The case that ran, and its divergence; `Err` for a harness problem.
    pub result: Result<(Case, Option<Failure>), String>,
    /// Wall time.
    pub took: std::time::Duration,
}

/// Runs `seeds` on `jobs` worker threads (each with its own workspace),
/// calling `each` as results come in; stops taking new seeds once `stop`
/// returns true. Results in seed order.
pub fn run_many(
    cfg: &Config,
    seeds: &[u64],
    jobs: usize,
    interchange_every: u64,
    each: &(dyn Fn(&SeedResult) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Vec<SeedResult> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<SeedResult>> = Mutex::new(Vec::new());
    let jobs = jobs.max(1);
    // What each worker runs since when, for the watchdog.
    let running: Mutex<Vec<Option<(u64, std::time::Instant)>>> = Mutex::new(vec![None; jobs]);
    let finished = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| watchdog(&running, &finished, jobs));
        for j in 0..jobs {
            let (running, finished) = (&running, &finished);
            let (next, out) = (&next, &out);
            s.spawn(move || {
                let _done = Finished(finished);
                let mut ws = match Workspace::new() {
                    Ok(ws) => ws,
                    Err(e) => {
                        eprintln!("difftest: workspace: {e}");
                        return;
                    }
                };
                loop {
                    if stop() {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let mut c = cfg.clone();
                    c.interchange =
                        cfg.interchange && interchange_every > 0 && seed % interchange_every == 0;
                    let t = std::time::Instant::now();
                    set_running(running, j, Some((seed, t)));
                    let result = run_seed(&mut ws, &c, seed);
                    set_running(running, j, None);
                    let r = SeedResult {
                        seed,
                        result,
                        took: t.elapsed(),
                    };
                    each(&r);
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_else(|e| e.into_inner());
    v.sort_by_key(|r| r.seed);
    v
}

/// Longest a seed may run before the harness gives up on the whole run.
const HANG_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Counts a worker as finished when it ends, however it ends.
struct Finished<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn set_running(
    running: &std::sync::Mutex<Vec<Option<(u64, std::time::Instant)>>>,
    j: usize,
    v: Option<(u64, std::time::Instant)>,
) {
    if let Some(slot) = running.lock().unwrap_or_else(|e| e.into_inner()).get_mut(j) {
        *slot = v;
    }
}

/// A seed that hangs (a blocked system call on either mount) would hang
/// the run, and CI with it: past [`HANG_LIMIT`] this says which seed hung,
/// detaches this process's mounts and exits; `testbed::sweep_stale` of the
/// next run removes what is left.
fn watchdog(
    running: &std::sync::Mutex<Vec<Option<(u64, std::time::Instant)>>>,
    finished: &std::sync::atomic::AtomicUsize,
    jobs: usize,
) {
    while finished.load(std::sync::atomic::Ordering::Acquire) < jobs {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let hung = running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .find(|(_, t)| t.elapsed() > HANG_LIMIT)
            .map(|(seed, _)| *seed);
        if let Some(seed) = hung {
            eprintln!(
                "difftest: seed {seed} hung for {} s; giving up (replay it with --seed {seed})",
                HANG_LIMIT.as_secs()
            );
            let mine = testbed::root().join(format!("{}-", std::process::id()));
            if let Ok(list) = testbed::mounts() {
                for m in list.iter().rev() {
                    if m.mount_point
                        .to_string_lossy()
                        .starts_with(&*mine.to_string_lossy())
                    {
                        let _ = sys::umount(&m.mount_point, true);
                    }
                }
            }
            std::process::exit(3);
        }
    }
}
