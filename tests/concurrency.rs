//! Concurrent operations on the same names (SPEC §4): exactly one winner of
//! racing creates and removals, one copy-up per file, no lost rename, no
//! torn directory listing. Invariants that hold under kernel overlayfs for
//! any interleaving.

mod common;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use support::*;

const THREADS: usize = 8;

/// Runs `f(thread)` on THREADS threads started together; their results.
fn race<T: Send>(f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let b = Barrier::new(THREADS);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let (b, f) = (&b, &f);
                sc.spawn(move || {
                    b.wait();
                    f(i)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn tally(v: &[i32]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in v {
        *m.entry(ename(*e)).or_default() += 1;
    }
    m
}

#[test]
fn racing_creates_of_one_name_have_exactly_one_winner() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    for i in 0..10 {
        put(&st.lower(0, &format!("d/old{i}")), "lower");
    }
    let _m = mount_rovl(&st, "");
    // Half the names over whiteouts of lower files.
    for i in 0..5 {
        std::fs::remove_file(st.m(&format!("d/old{i}"))).unwrap();
    }
    for round in 0..10 {
        let name = if round < 5 {
            format!("d/old{round}")
        } else {
            format!("d/new{round}")
        };
        let p = st.m(&name);
        let r = race(|i| {
            if round % 2 == 0 {
                rc(std::fs::create_dir(&p))
            } else {
                rc(
                    open(&p, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY).and_then(|f| {
                        use std::os::unix::fs::FileExt;
                        f.write_all_at(format!("{i}").as_bytes(), 0)
                    }),
                )
            }
        });
        let t = tally(&r);
        assert_eq!(t.get("ok"), Some(&1), "{name}: {t:?}");
        assert_eq!(
            r.iter().filter(|e| **e == libc::EEXIST).count(),
            THREADS - 1,
            "{name}: {t:?}"
        );
        if round % 2 == 0 {
            assert_eq!(names(&p), Vec::<String>::new(), "{name}");
        }
    }
    assert_eq!(names(&st.work.join("work")), Vec::<String>::new());
}

#[test]
fn racing_removals_of_one_lower_name_have_exactly_one_winner() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    for i in 0..10 {
        put(&st.lower(0, &format!("f{i}")), "lower");
        put(&st.lower(0, &format!("d{i}/x")), "x");
    }
    let _m = mount_rovl(&st, "");
    for i in 0..10 {
        std::fs::remove_file(st.m(&format!("d{i}/x"))).unwrap();
    }
    for i in 0..10 {
        let f = st.m(&format!("f{i}"));
        let t = tally(&race(|_| rc(std::fs::remove_file(&f))));
        assert_eq!(t.get("ok"), Some(&1), "f{i}: {t:?}");
        let d = st.m(&format!("d{i}"));
        let t = tally(&race(|_| rc(std::fs::remove_dir(&d))));
        assert_eq!(t.get("ok"), Some(&1), "d{i}: {t:?}");
        assert!(is_whiteout(&st.upper.join(format!("f{i}"))));
        assert!(is_whiteout(&st.upper.join(format!("d{i}"))));
    }
    assert_eq!(names(&st.mnt), Vec::<String>::new());
    assert_eq!(names(&st.work.join("work")), Vec::<String>::new());
}

#[test]
fn racing_renames_lose_no_file() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    const N: usize = 64;
    for i in 0..N {
        put(
            &st.lower(i % 2, &format!("a/f{i:02}")),
            &format!("content {i}"),
        );
    }
    mkdirs(&st.lower(0, "b"));
    let _m = mount_rovl(&st, "");
    let (a, b) = (st.m("a"), st.m("b"));
    race(|t| {
        for round in 0..40 {
            let i = (t * 7 + round * 13) % N;
            let n = format!("f{i:02}");
            let (from, to) = if (t + round) % 2 == 0 {
                (&a, &b)
            } else {
                (&b, &a)
            };
            let r = rename2(&from.join(&n), &to.join(&n), libc::RENAME_NOREPLACE);
            if let Err(e) = r {
                let e = e.raw_os_error().unwrap();
                assert!(
                    e == libc::ENOENT || e == libc::EEXIST,
                    "mv {n}: unexpected {}",
                    ename(e)
                );
            }
        }
    });
    let mut seen = BTreeMap::new();
    for d in [&a, &b] {
        for n in names(d) {
            *seen.entry(n.clone()).or_insert(0) += 1;
            let i: usize = n[1..].parse().unwrap();
            assert_eq!(get(&d.join(&n)), format!("content {i}"));
        }
    }
    assert_eq!(seen.len(), N, "files lost: {seen:?}");
    assert!(seen.values().all(|c| *c == 1), "files doubled: {seen:?}");
    assert_eq!(names(&st.work.join("work")), Vec::<String>::new());
}

#[test]
fn racing_copy_ups_in_one_lower_tree_copy_each_object_once() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    for i in 0..THREADS {
        put(&st.lower(0, &format!("deep/er/still/f{i}")), "lower");
    }
    let _m = mount_rovl(&st, "");
    race(|i| {
        for round in 0..5 {
            let p = st.m(&format!("deep/er/still/f{}", (i + round) % THREADS));
            let f = open(&p, libc::O_WRONLY | libc::O_APPEND).unwrap();
            use std::io::Write;
            (&f).write_all(format!("<{i}>").as_bytes()).unwrap();
        }
    });
    let mut total = 0;
    for i in 0..THREADS {
        let data = get(&st.m(&format!("deep/er/still/f{i}")));
        assert!(data.starts_with("lower"), "f{i}: {data}");
        total += data.matches('<').count();
    }
    assert_eq!(total, THREADS * 5, "appends lost");
    assert_eq!(names(&st.upper.join("deep/er/still")).len(), THREADS);
    assert_eq!(names(&st.work.join("work")), Vec::<String>::new());
}

#[test]
fn listings_during_creates_and_removals_always_hold_the_stable_entries() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    for i in 0..200 {
        put(&st.lower(i % 2, &format!("dir/stable{i:03}")), "");
    }
    let _m = mount_rovl(&st, "");
    let dir = st.m("dir");
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        for t in 0..2 {
            let (dir, stop) = (&dir, &stop);
            sc.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let p = dir.join(format!("tmp{t}-{}", i % 50));
                    let _ = write(&p, b"t");
                    let _ = rename2(&p, &dir.join(format!("mv{t}-{}", i % 50)), 0);
                    let _ = std::fs::remove_file(dir.join(format!("mv{t}-{}", (i + 25) % 50)));
                    i += 1;
                }
            });
        }
        for _ in 0..100 {
            let v = names(&dir);
            let stable = v.iter().filter(|n| n.starts_with("stable")).count();
            assert_eq!(stable, 200, "a listing lost stable entries");
            let mut d = v.clone();
            d.dedup();
            assert_eq!(d.len(), v.len(), "a listing had duplicates");
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn racing_exchanges_keep_both_names() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "x"), "X");
    put(&st.lower(0, "dir/y"), "Y");
    let _m = mount_rovl(&st, "");
    let r = race(|_| {
        (0..25)
            .map(|_| rc(rename2(&st.m("x"), &st.m("dir/y"), libc::RENAME_EXCHANGE)))
            .collect::<Vec<i32>>()
    });
    assert!(r.iter().flatten().all(|e| *e == 0), "{r:?}");
    // 8 × 25 exchanges: an even number, so everything is back in place.
    assert_eq!(get(&st.m("x")), "X");
    assert_eq!(get(&st.m("dir/y")), "Y");
}

/// A truncating open racing a truncate of the same file leaves one size:
/// what the mount shows (stat, read) is what the upper file holds. Under
/// the writeback cache with atomic O_TRUNC (the daemon truncating in
/// OPEN), the kernel's part of the open, which sets its own size to 0 and
/// drops its cache without a request, could run after a truncate that
/// slipped in between, and the kernel kept 3 bytes where the upper file
/// held 2,987, for good (F21: 7 of 20 rounds here with it on).
#[test]
fn truncating_opens_racing_truncates_leave_one_size() {
    for opts in ["passthrough=on", "passthrough=off"] {
        let s = Scratch::new().unwrap();
        let st = Stack::under(s.path(), 1);
        let _m = mount_rovl(&st, opts);
        let f = st.m("f");
        put(&f, &"x".repeat(100));
        for round in 0..20 {
            let stop = AtomicBool::new(false);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let mut w = std::fs::File::create(&f).unwrap();
                        std::io::Write::write_all(&mut w, b"abc").unwrap();
                    }
                });
                sc.spawn(|| {
                    let t = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        t.set_len(2987).unwrap();
                    }
                });
                std::thread::sleep(Duration::from_millis(150));
                stop.store(true, Ordering::Relaxed);
            });
            let shown = std::fs::metadata(&f).unwrap().len();
            let read = std::fs::read(&f).unwrap().len() as u64;
            let upper = std::fs::metadata(st.upper.join("f")).unwrap().len();
            assert!(
                shown == upper && read == upper,
                "{opts}, round {round}: the mount shows {shown} bytes (reads {read}), \
                 the upper file holds {upper}"
            );
        }
    }
}

/// A lookup that makes a node (which takes the writeback maps' lock while
/// it holds the node table's) racing the first change of a directory
/// since its last sync (which looked up the directory's path in the node
/// table while holding the map's lock) deadlocked the daemon: both
/// requests waited forever, and with them every later one. The creates go
/// into fresh directories deep down, so that each is a first change with
/// a long path to look up.
#[test]
fn lookups_racing_the_first_change_of_directories_never_deadlock() {
    const LOWER_FILES: usize = 20_000;
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let many = st.lower(0, "many");
    mkdirs(&many);
    for i in 0..LOWER_FILES {
        write(&many.join(format!("f{i}")), b"").unwrap();
    }
    let mut m = mount_rovl(&st, "");
    let deep: String = (0..40).map(|_| "a/").collect();
    mkdirs(&st.m(&deep));
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let hung = std::thread::scope(|sc| {
        for t in 0..2 {
            let (finished, stop, st, deep) = (&finished, &stop, &st, &deep);
            sc.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 5_000 {
                    let d = st.m(&format!("{deep}t{t}-{i}"));
                    if std::fs::create_dir(&d).is_err() || write(&d.join("f"), b"x").is_err() {
                        break;
                    }
                    i += 1;
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
            sc.spawn(move || {
                for j in (t..LOWER_FILES).step_by(2) {
                    if stop.load(Ordering::Relaxed) || lstat(&st.m(&format!("many/f{j}"))).is_err()
                    {
                        break;
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        let all_done = wait_for(Duration::from_secs(60), || {
            finished.load(Ordering::SeqCst) == 4
        });
        stop.store(true, Ordering::Relaxed);
        if !all_done {
            // Frees the callers stuck in requests the daemon never answers.
            m.kill9().unwrap();
        }
        !all_done
    });
    assert!(!hung, "requests hung: the daemon deadlocked");
}

/// Eight threads of random operations on a small set of shared names
/// (files and directories of a merged lower tree, new ones, whiteouts),
/// with fsyncs, fsyncdirs and `ROVL_IOC_SYNCFS` among them, for a few
/// seconds: every request comes back (no deadlock between the node
/// table, the copy-up and rename locks and the writeback bookkeeping),
/// and the mount then syncs, reports its status and unmounts cleanly.
/// The errnos are not checked: any interleaving is allowed.
#[test]
fn many_threads_of_random_operations_never_hang_the_daemon() {
    random_operations_on_many_threads("");
}

/// [`many_threads_of_random_operations_never_hang_the_daemon`] in the
/// volatile mode, whose fsyncs and syncs check for errors instead (E5).
#[test]
fn many_threads_of_random_operations_never_hang_a_volatile_mount() {
    random_operations_on_many_threads("volatile");
}

/// [`many_threads_of_random_operations_never_hang_the_daemon`] without
/// passthrough: the kernel's writeback cache then sends every write to the
/// daemon, and opens, flushes and releases take the daemon's io path.
#[test]
fn many_threads_of_random_operations_never_hang_a_mount_without_passthrough() {
    random_operations_on_many_threads("passthrough=off");
}

/// [`many_threads_of_random_operations_never_hang_the_daemon`] with the
/// daemon allowed 64 descriptors: it parks and reopens the upper files it
/// tracks while other threads use them.
#[test]
fn many_threads_of_random_operations_under_a_tiny_descriptor_limit() {
    random_operations_under("", Some(64));
}

/// [`many_threads_of_random_operations_never_hang_the_daemon`] while the
/// host drops its dentry and inode caches every 20 ms: the kernel forgets
/// nodes (FORGET, BATCH_FORGET) amid the lookups, opens and renames that
/// use them, and looks them up again.
#[test]
fn many_threads_of_random_operations_while_the_kernel_forgets_nodes() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let done = std::panic::catch_unwind(|| random_operations_under("", None));
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = done {
            std::panic::resume_unwind(e);
        }
    });
}

/// Eight threads of random operations for 4 s on a mount with `opts`;
/// then the checks of [`many_threads_of_random_operations_never_hang_the_daemon`].
fn random_operations_on_many_threads(opts: &str) {
    random_operations_under(opts, None);
}

/// [`random_operations_on_many_threads`] with the daemon's open-file limit
/// set to `nofile` (hard and soft), if given.
fn random_operations_under(opts: &str, nofile: Option<u32>) {
    const WORKERS: u64 = 8;
    let seed = seed_from_env("ROVL_STRESS_SEED");
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    lay_out_for_random_operations(&st);
    let mut m = match nofile {
        None => mount_rovl(&st, opts),
        Some(n) => mount_rovl_limited(&st, opts, n),
    };
    let pid = daemon_pid(&mut m);
    let finished = std::sync::atomic::AtomicU64::new(0);
    let ops = std::sync::atomic::AtomicU64::new(0);
    let out_of_fds = std::sync::atomic::AtomicU64::new(0);
    let hung = std::thread::scope(|sc| {
        for w in 0..WORKERS {
            let (finished, ops, st, out_of_fds) = (&finished, &ops, &st, &out_of_fds);
            sc.spawn(move || {
                let mut r = difftest::rng::Rng::new(seed, w);
                let until = std::time::Instant::now() + Duration::from_secs(4);
                while std::time::Instant::now() < until {
                    if let Err(e) = random_operation(&mut r, st) {
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                            out_of_fds.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        let all_done = wait_for(Duration::from_secs(60), || {
            finished.load(Ordering::SeqCst) == WORKERS
        });
        if !all_done {
            // Frees the callers stuck in requests the daemon never answers.
            m.kill9().unwrap();
        }
        !all_done
    });
    let ops = ops.into_inner();
    assert!(
        !hung,
        "seed {seed}: requests hung after {ops} operations: the daemon deadlocked"
    );
    assert!(alive(pid), "seed {seed}: the daemon died");
    // SPEC §4: short of descriptors, the daemon degrades (reopens).
    let out_of_fds = out_of_fds.into_inner();
    assert_eq!(
        out_of_fds, 0,
        "seed {seed}: {out_of_fds} operations failed with EMFILE or ENFILE"
    );
    let (code, _, err) = run_rovl([Path::new("sync"), st.mnt.as_path()]);
    assert_eq!(code, 0, "seed {seed}: {err}");
    // No disk failed: any writeback error the daemon recorded is one of
    // its own failures taken for one (running out of descriptors, a
    // directory removed since it changed).
    let (code, out, err) = run_rovl([Path::new("status"), st.mnt.as_path(), Path::new("--json")]);
    assert_eq!(code, 0, "seed {seed}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["errors_total"], 0, "seed {seed}: {out}");
    // What the kernel cached through the session (long entry and attribute
    // timeouts, invalidated by the daemon) is what the layers now hold.
    let live = view(&st.mnt);
    let live_inodes = inode_numbers(&st.mnt);
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "seed {seed}: {err}");
    let log = std::fs::read_to_string(st.work.join("rovl/rovl.log")).unwrap_or_default();
    assert!(!log.contains("panic"), "seed {seed}: {log}");
    drop(m);
    let fresh = mount_rovl(&st, opts);
    let d = diff("live", &brief(&live), "remounted", &brief(&view(&st.mnt)));
    assert!(
        d.is_empty(),
        "seed {seed}: the session's view went stale:\n{d}"
    );
    let d = diff("live", &live_inodes, "remounted", &inode_numbers(&st.mnt));
    assert!(d.is_empty(), "seed {seed}: inode numbers changed:\n{d}");
    drop(fresh);
    // A work directory of its own: kernel overlayfs refuses one a volatile
    // mount used (E6).
    let k = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: st.work.with_file_name("kernel-work"),
        mnt: st.mnt.clone(),
    };
    std::fs::create_dir_all(&k.work).unwrap();
    let _k = mount_kernel(&k, "");
    let d = diff("rovl", &brief(&live), "kernel", &brief(&view(&st.mnt)));
    assert!(
        d.is_empty(),
        "seed {seed}: kernel overlayfs reads the layers otherwise:\n{d}"
    );
    eprintln!("seed {seed}: {ops} operations");
}

/// Paths below `root` → inode number.
fn inode_numbers(root: &Path) -> BTreeMap<String, u64> {
    inodes(root)
        .into_iter()
        .map(|(k, (ino, _))| (k, ino))
        .collect()
}
