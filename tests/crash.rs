//! A daemon killed at any moment (SPEC §2, §4): SIGKILL lands at a random
//! point of a mix of copy-ups, renames, removals and creates made by two
//! threads. Afterwards every operation must be found whole: each of them
//! is a short sequence of system calls on objects of its own, and its
//! objects must look exactly as after the calls that returned, or, for
//! the one call in flight when the daemon died, as after that call too —
//! never in between (no partial copy, no name without its redirect, no
//! half-made whiteout). What "after k calls" looks like comes from kernel
//! overlayfs running the same calls. The next rovl mount must clean the
//! work directory, and kernel overlayfs must then show the upper layer
//! exactly as rovl does.

mod common;
mod support;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use difftest::rng::Rng;
use support::*;

/// One system call of an operation, given the operation's directory.
type Step = fn(&Path) -> io::Result<()>;

fn step(f: Step) -> Step {
    f
}

fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    OpenOptions::new().append(true).open(p)?.write_all(data)
}

fn create_new(p: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map(drop)
}

/// The steps that empty `d/` (the lower content [`lay_out`] puts there)
/// and remove it: `rm -r` as the calls it makes.
fn rm_r_d() -> Vec<Step> {
    vec![
        step(|d| std::fs::remove_file(d.join("d/a"))),
        step(|d| std::fs::remove_file(d.join("d/b"))),
        step(|d| std::fs::remove_file(d.join("d/top"))),
        step(|d| std::fs::remove_file(d.join("d/sub/deep/c"))),
        step(|d| std::fs::remove_dir(d.join("d/sub/deep"))),
        step(|d| std::fs::remove_dir(d.join("d/sub"))),
        step(|d| std::fs::remove_dir(d.join("d"))),
    ]
}

/// The operations, by name. Each works only inside its own directory.
fn operations() -> Vec<(&'static str, Vec<Step>)> {
    let mut replace_dir = rm_r_d();
    replace_dir.push(step(|d| std::fs::create_dir(d.join("d"))));
    replace_dir.push(step(|d| create_new(&d.join("d/new"))));
    vec![
        ("append", vec![step(|d| append(&d.join("f"), b"A"))]),
        (
            "pwrite",
            vec![step(|d| {
                OpenOptions::new()
                    .write(true)
                    .open(d.join("f"))?
                    .write_all_at(b"XYZ", 100)
            })],
        ),
        (
            "open O_TRUNC",
            vec![step(|d| {
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(d.join("f"))
                    .map(drop)
            })],
        ),
        ("chmod", vec![step(|d| chmod(&d.join("f"), 0o600))]),
        ("chown", vec![step(|d| lchown(&d.join("f"), 1000, 1000))]),
        (
            "setxattr",
            vec![step(|d| lset(&d.join("f"), "user.k", b"v", 0))],
        ),
        ("truncate", vec![step(|d| truncate(&d.join("f"), 1000))]),
        ("unlink", vec![step(|d| std::fs::remove_file(d.join("f")))]),
        (
            "unlink symlink",
            vec![step(|d| std::fs::remove_file(d.join("s")))],
        ),
        (
            "rename",
            vec![step(|d| std::fs::rename(d.join("f"), d.join("g")))],
        ),
        (
            "rename over",
            vec![step(|d| std::fs::rename(d.join("f"), d.join("h")))],
        ),
        (
            "rename dir",
            vec![step(|d| std::fs::rename(d.join("d"), d.join("e")))],
        ),
        (
            "rename deep dir",
            vec![step(|d| {
                std::fs::rename(d.join("d/sub/deep"), d.join("moved"))
            })],
        ),
        (
            "rename dir over empty dir",
            vec![step(|d| std::fs::rename(d.join("d/sub"), d.join("empty")))],
        ),
        (
            "move into a lower dir",
            vec![step(|d| std::fs::rename(d.join("t"), d.join("d/sub/t2")))],
        ),
        (
            "exchange",
            vec![step(|d| {
                rename2(&d.join("d"), &d.join("f"), libc::RENAME_EXCHANGE)
            })],
        ),
        (
            "rmdir",
            vec![step(|d| std::fs::remove_dir(d.join("empty")))],
        ),
        ("rm -r", rm_r_d()),
        ("replace dir", replace_dir),
        (
            "mkdir deep",
            vec![step(|d| std::fs::create_dir(d.join("d/sub/deep/x")))],
        ),
        (
            "create and write",
            vec![
                step(|d| create_new(&d.join("n"))),
                step(|d| append(&d.join("n"), &[b'n'; 8192])),
            ],
        ),
        ("link", vec![step(|d| link(&d.join("f"), &d.join("f2")))]),
        ("symlink", vec![step(|d| symlink("f", &d.join("new-l")))]),
        (
            "mkfifo",
            vec![step(|d| mknod(&d.join("p"), libc::S_IFIFO | 0o644, 0))],
        ),
        (
            "deep append",
            vec![step(|d| append(&d.join("d/sub/deep/c"), b"C"))],
        ),
        ("chmod dir", vec![step(|d| chmod(&d.join("d"), 0o700))]),
        (
            "setxattr dir",
            vec![step(|d| lset(&d.join("d"), "user.k", b"v", 0))],
        ),
        (
            "append then rename",
            vec![
                step(|d| append(&d.join("f"), b"B")),
                step(|d| std::fs::rename(d.join("f"), d.join("g"))),
            ],
        ),
    ]
}

/// Sizes of `f` across the operations' directories: empty to 8 MiB, so
/// that some copy-ups take long enough for the kill to land inside them.
const SIZES: [usize; 5] = [0, 3000, 70_000, 1 << 20, 8 << 20];

/// Every operation twice, with different sizes of `f`.
const INSTANCES: usize = 2;

/// Kill rounds; each mounts a fresh upper over the same lowers.
const ROUNDS: u64 = 16;

/// The lower content of operation directory `k`: a file `f` (owner 7:8,
/// mode 0640, a user xattr) of `SIZES[k % 5]` bytes, `h`, a symlink `s`,
/// an empty directory, and `d/` merged from both lowers with a chain
/// `d/sub/deep/c` below it.
fn lay_out(st: &Stack, k: usize) {
    let dir = format!("o{k:02}");
    let f = st.lower(1, &format!("{dir}/f"));
    mkdirs(f.parent().unwrap());
    write(&f, &difftest::rng::data(k as u64, SIZES[k % SIZES.len()])).unwrap();
    lchown(&f, 7, 8).unwrap();
    chmod(&f, 0o640).unwrap();
    lset(&f, "user.lower", b"1", 0).unwrap();
    put(&st.lower(1, &format!("{dir}/h")), "h");
    symlink("f", &st.lower(1, &format!("{dir}/s"))).unwrap();
    mkdirs(&st.lower(1, &format!("{dir}/empty")));
    put(&st.lower(1, &format!("{dir}/d/a")), "a");
    put(&st.lower(1, &format!("{dir}/d/b")), "b");
    put(&st.lower(1, &format!("{dir}/d/sub/deep/c")), "c");
    put(&st.lower(0, &format!("{dir}/d/top")), "top");
    put(&st.lower(0, &format!("{dir}/t")), "t");
}

/// A view of one operation's directory.
type View = std::collections::BTreeMap<String, Obj>;

/// For every operation directory, its view after 0, 1, ... of its steps,
/// from kernel overlayfs.
fn kernel_states(s: &Scratch, st: &Stack, ops: &[(usize, Vec<Step>)]) -> Vec<Vec<View>> {
    let k = st.twin(s.path());
    let _km = mount_kernel(&k, "");
    let dir = |i: usize| k.mnt.join(format!("o{i:02}"));
    let mut states: Vec<Vec<View>> = (0..ops.len()).map(|i| vec![view(&dir(i))]).collect();
    let longest = ops.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    for j in 0..longest {
        for (i, (op, steps)) in ops.iter().enumerate() {
            if let Some(f) = steps.get(j) {
                f(&dir(i)).unwrap_or_else(|e| {
                    panic!("kernel: o{i:02} ({}), step {j}: {e}", names_of(*op))
                });
                states[i].push(view(&dir(i)));
            }
        }
    }
    states
}

fn names_of(op: usize) -> &'static str {
    operations()[op].0
}

/// How far one operation got on rovl before the kill.
#[derive(Default)]
struct Progress {
    /// Steps that returned success.
    done: AtomicUsize,
    /// A step had been started and had not returned success.
    in_flight: AtomicBool,
}

/// When to kill the daemon: `jitter` after the start of the step with this
/// number (counted over all operations as they start).
struct Kill {
    at_step: usize,
    jitter: Duration,
}

/// Runs the operations on `mnt` from two threads in `order`, and calls
/// `kill` at the moment `when` says (or once all are done). False if the
/// operations hung instead (and were freed by the kill).
fn run_until_killed(
    mnt: &Path,
    ops: &[(usize, Vec<Step>)],
    order: &[usize],
    progress: &[Progress],
    failures: &Mutex<Vec<String>>,
    when: Kill,
    kill: impl FnOnce(),
) -> bool {
    let next = AtomicUsize::new(0);
    let started = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let dead = AtomicBool::new(false);
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                let _count = Finished(&finished);
                while !dead.load(Ordering::Relaxed) {
                    let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let dir = mnt.join(format!("o{i:02}"));
                    for f in &ops[i].1 {
                        progress[i].in_flight.store(true, Ordering::SeqCst);
                        started.fetch_add(1, Ordering::SeqCst);
                        match f(&dir) {
                            Ok(()) => {
                                progress[i].done.fetch_add(1, Ordering::SeqCst);
                                progress[i].in_flight.store(false, Ordering::SeqCst);
                            }
                            Err(e) => {
                                // Only the dead connection may fail a
                                // step: the kernel did them all.
                                if !matches!(
                                    e.raw_os_error(),
                                    Some(libc::ENOTCONN | libc::ECONNABORTED)
                                ) {
                                    failures
                                        .lock()
                                        .unwrap()
                                        .push(format!("o{i:02} ({}): {e}", names_of(ops[i].0)));
                                }
                                dead.store(true, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut moving = true;
        while started.load(Ordering::SeqCst) <= when.at_step && finished.load(Ordering::SeqCst) < 2
        {
            if std::time::Instant::now() > deadline {
                moving = false;
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        std::thread::sleep(when.jitter);
        kill();
        moving
    })
}

/// Counts a worker as finished when it returns, however it returns.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Round `round`'s stack: the lowers of `base`, a fresh upper, work
/// directory and mountpoint.
fn round_stack(s: &Scratch, base: &Stack, round: u64) -> Stack {
    let r = s.join(format!("r{round}"));
    let st = Stack {
        lowers: base.lowers.clone(),
        upper: r.join("upper"),
        work: r.join("work"),
        mnt: r.join("mnt"),
    };
    for d in [&st.upper, &st.work, &st.mnt] {
        mkdirs(d);
    }
    st
}

/// Mounts rovl on `st` again after the kill, and checks that the work
/// directory is clean and no temporary name is left in the upper layer.
fn remount_clean(st: &Stack, ctx: &str) -> FuseMount {
    let m = mount_rovl(st, "");
    let left = work_leftovers(st);
    assert!(
        left.is_empty(),
        "{ctx}: left in the work directory: {left:?}"
    );
    let mut upper_names = Vec::new();
    raw_names(&st.upper, &mut upper_names);
    let stray: Vec<&PathBuf> = upper_names
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"#"))
        })
        .collect();
    assert!(
        stray.is_empty(),
        "{ctx}: temporary names in the upper layer: {stray:?}"
    );
    m
}

/// Unmounts rovl's mount `m` of `st` and requires kernel overlayfs to show
/// the same tree over the same layers.
fn kernel_reads_alike(st: &Stack, m: FuseMount, ctx: &str) {
    let rovl_view = view(&st.mnt);
    drop(m);
    let _k = mount_kernel(st, "");
    let d = diff("rovl", &brief(&rovl_view), "kernel", &brief(&view(&st.mnt)));
    assert!(
        d.is_empty(),
        "{ctx}: kernel overlayfs sees the upper otherwise:\n{d}"
    );
}

/// Every name below `dir` (raw, no overlay), relative.
fn raw_names(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if lstat(&p).unwrap().is_dir() {
            raw_names(&p, out);
        }
    }
}

#[test]
fn a_daemon_killed_mid_operation_leaves_every_operation_whole() {
    let seed = seed_from_env("ROVL_CRASH_SEED");
    let s = Scratch::new().unwrap();
    let base = Stack::under(s.path(), 2);
    let all = operations();
    let ops: Vec<(usize, Vec<Step>)> = (0..all.len() * INSTANCES)
        .map(|k| (k % all.len(), all[k % all.len()].1.clone()))
        .collect();
    for k in 0..ops.len() {
        lay_out(&base, k);
    }
    let states = kernel_states(&s, &base, &ops);
    let steps: usize = ops.iter().map(|(_, s)| s.len()).sum();
    let mut rng = Rng::new(seed, 0);
    let mut landed_mid_step = 0;
    for round in 0..ROUNDS {
        let st = round_stack(&s, &base, round);
        let mut order: Vec<usize> = (0..ops.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        // Kills spread over the steps rather than over time, so that most
        // land inside an operation; the jitter reaches well into the
        // longest copy-ups.
        let when = Kill {
            at_step: rng.below(steps as u64) as usize,
            jitter: Duration::from_micros(rng.below(4000)),
        };
        let ctx = format!(
            "seed {seed}, round {round}, kill {:?} after the start of step {}",
            when.jitter, when.at_step
        );
        let progress: Vec<Progress> = (0..ops.len()).map(|_| Progress::default()).collect();
        let failures = Mutex::new(Vec::new());
        let mut m = mount_rovl(&st, "");
        let moving = run_until_killed(&st.mnt, &ops, &order, &progress, &failures, when, || {
            m.kill9().unwrap()
        });
        drop(m);
        let failures = failures.into_inner().unwrap();
        assert!(
            moving,
            "{ctx}: the operations hung (the daemon deadlocked?)"
        );
        assert!(
            failures.is_empty(),
            "{ctx}: steps failed before the kill: {failures:?}"
        );

        let m = remount_clean(&st, &ctx);
        for (i, (op, _)) in ops.iter().enumerate() {
            let done = progress[i].done.load(Ordering::SeqCst);
            let mid = progress[i].in_flight.load(Ordering::SeqCst);
            let got = view(&st.m(&format!("o{i:02}")));
            let allowed: Vec<usize> = if mid {
                vec![done, done + 1]
            } else {
                vec![done]
            };
            if mid && states[i].get(done) != states[i].get(done + 1) {
                landed_mid_step += 1;
            }
            if !allowed.iter().any(|&n| states[i].get(n) == Some(&got)) {
                let want = &states[i][done];
                panic!(
                    "{ctx}: o{i:02} ({}) after {done} step(s){} differs from the kernel's state after {done}:\n{}",
                    names_of(*op),
                    if mid { " and one in flight" } else { "" },
                    diff("rovl", &brief(&got), "kernel", &brief(want))
                );
            }
        }
        kernel_reads_alike(&st, m, &ctx);
    }
    eprintln!(
        "seed {seed}: {ROUNDS} kills, {landed_mid_step} of them in the middle of a step that changes something"
    );
}

/// SIGKILL at a random moment of four threads of random operations on the
/// same few names ([`random_operation`]: renames, exchanges, removals,
/// links, copy-ups, fsyncs and syncs racing each other). Which operations
/// took effect is not known here, so this checks what must hold whatever
/// they were: the next rovl mount cleans the work directory and finds no
/// temporary name in the upper layer, and kernel overlayfs then shows the
/// upper layer exactly as rovl does.
#[test]
fn a_daemon_killed_during_racing_operations_leaves_an_upper_the_kernel_reads_alike() {
    const ROUNDS: u64 = 16;
    const WORKERS: u64 = 4;
    let seed = seed_from_env("ROVL_CRASH_SEED");
    let s = Scratch::new().unwrap();
    let base = Stack::under(s.path(), 2);
    lay_out_for_random_operations(&base);
    let mut rng = Rng::new(seed, 0);
    for round in 0..ROUNDS {
        let st = round_stack(&s, &base, round);
        let delay = Duration::from_micros(rng.range(1_000, 400_000));
        let ctx = format!("seed {seed}, round {round}, kill after {delay:?}");
        let mut m = mount_rovl(&st, "");
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for w in 0..WORKERS {
                let (st, stop) = (&st, &stop);
                sc.spawn(move || {
                    let mut r = Rng::new(seed, 1 + round * WORKERS + w);
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(e) = random_operation(&mut r, st) {
                            if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
                            {
                                return;
                            }
                        }
                    }
                });
            }
            std::thread::sleep(delay);
            m.kill9().unwrap();
            stop.store(true, Ordering::Relaxed);
        });
        drop(m);

        let m = remount_clean(&st, &ctx);
        kernel_reads_alike(&st, m, &ctx);
    }
}
