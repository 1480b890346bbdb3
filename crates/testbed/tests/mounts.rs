//! Kernel overlay and FUSE guards, cleanup after panics, and the sweeper.
//! Needs root, fuse-overlayfs and fusermount3.

use std::fs::{self, File};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::{FailingDisk, FuseMount, KernelOverlay, OWNER_ENV, Scratch};

/// lower/ (with a file), upper/, work/ and merged/ in a scratch dir.
fn layers(s: &Scratch) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let lower = s.mkdir("lower").unwrap();
    fs::write(lower.join("hello"), b"from lower").unwrap();
    (
        lower,
        s.mkdir("upper").unwrap(),
        s.mkdir("work").unwrap(),
        s.mkdir("merged").unwrap(),
    )
}

/// The one daemon of a daemonizing fuse-overlayfs mount. The mount shows
/// up before the program's foreground parent has exited, and the guard
/// rightly lists that parent while it runs; wait (up to 5 s) for it to go.
fn lone_daemon(m: &mut FuseMount) -> Vec<u32> {
    let mut pids = Vec::new();
    wait_until(Duration::from_secs(5), || {
        pids = m.daemon_pids();
        pids.len() <= 1
    });
    assert_eq!(pids.len(), 1, "{pids:?}");
    pids
}

fn fuse_overlayfs(
    lower: &Path,
    upper: &Path,
    work: &Path,
    merged: &Path,
    foreground: bool,
) -> Command {
    let mut c = Command::new("fuse-overlayfs");
    if foreground {
        c.arg("-f");
    }
    c.arg("-o").arg(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ));
    c.arg(merged);
    c
}

fn mounted_under(dir: &Path) -> Vec<testbed::MountEntry> {
    testbed::mounts_under(dir).unwrap()
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            st != 'Z' && st != 'X'
        })
        .unwrap_or(false)
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes
/// (false).
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    wait_until(timeout, || pids.iter().all(|&p| !alive(p)))
}

fn loop_backing(dev: &Path) -> Option<String> {
    let name = dev.file_name()?;
    fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file")).ok()
}

#[test]
fn kernel_overlay_mounts_and_unmounts() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let ovl =
        KernelOverlay::mount(&[&lower], Some(&upper), Some(&work), "volatile", &merged).unwrap();
    assert_eq!(fs::read(merged.join("hello")).unwrap(), b"from lower");
    fs::write(merged.join("new"), b"x").unwrap();
    assert!(upper.join("new").exists());
    let e = ovl.entry().unwrap();
    assert_eq!(e.fs_type, "overlay");
    assert!(e.super_options.contains("volatile"), "{e:?}");
    drop(ovl);
    assert!(mounted_under(&merged).is_empty());
}

#[test]
fn kernel_overlay_lowers_only_and_errno() {
    let s = Scratch::new().unwrap();
    let (lower, _, _, merged) = layers(&s);
    let second = s.mkdir("lower2").unwrap();
    let ovl = KernelOverlay::mount(&[&lower, &second], None, None, "ro", &merged).unwrap();
    assert!(ovl.entry().unwrap().mount_options.starts_with("ro"));
    assert!(!ovl.unmount().unwrap());
    let err = KernelOverlay::mount(&[&s.join("missing")], None, None, "", &merged).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
}

#[test]
fn busy_kernel_overlay_is_detached_lazily() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let ovl = KernelOverlay::mount(&[&lower], Some(&upper), Some(&work), "", &merged).unwrap();
    let busy = File::open(merged.join("hello")).unwrap();
    assert!(ovl.unmount().unwrap(), "unmount of a busy mount is lazy");
    assert!(mounted_under(&merged).is_empty());
    drop(busy);
}

#[test]
fn fuse_daemonizing_program_is_found_and_reaped() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let mut m = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper, &work, &merged, false),
        &merged,
    )
    .unwrap();
    assert!(m.is_mounted());
    assert!(m.connection().is_some());
    assert_eq!(fs::read(merged.join("hello")).unwrap(), b"from lower");
    let pids = m.daemon_pids();
    assert!(!pids.is_empty(), "daemon found through its environment");
    drop(m);
    assert!(mounted_under(&merged).is_empty());
    assert!(wait_gone(&pids, Duration::from_secs(5)));
}

#[test]
fn fuse_daemon_is_found_by_its_connection_without_the_env_marker() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let inner = fuse_overlayfs(&lower, &upper, &work, &merged, false);
    let mut c = Command::new("env");
    c.arg("-i").arg(inner.get_program()).args(inner.get_args());
    let mut m = FuseMount::spawn(c, &merged).unwrap();
    let pids = lone_daemon(&mut m);
    let env = fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    assert!(!String::from_utf8_lossy(&env).contains(OWNER_ENV));
    drop(m);
    assert!(wait_gone(&pids, Duration::from_secs(5)));
}

#[test]
fn fuse_foreground_unmount_reports_exit_status() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let m = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper, &work, &merged, true),
        &merged,
    )
    .unwrap();
    let status = m.unmount().unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(mounted_under(&merged).is_empty());
}

#[test]
fn fuse_spawn_failure_carries_output() {
    let s = Scratch::new().unwrap();
    let merged = s.mkdir("merged").unwrap();
    let mut c = Command::new("fuse-overlayfs");
    c.arg("-o")
        .arg("lowerdir=/nonexistent/testbed")
        .arg(&merged);
    let e = FuseMount::spawn(c, &merged).unwrap_err();
    assert!(e.to_string().contains("before mounting"), "{e}");
    assert!(mounted_under(&merged).is_empty());
}

#[test]
fn fuse_kill9_leaves_a_dead_mount_that_drop_removes() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let mut m = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper, &work, &merged, false),
        &merged,
    )
    .unwrap();
    let pids = m.daemon_pids();
    m.kill9().unwrap();
    assert!(pids.iter().all(|&p| !alive(p)));
    assert!(m.is_mounted());
    let e = fs::read(merged.join("hello")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    drop(m);
    assert!(mounted_under(&merged).is_empty());
}

#[test]
fn fuse_abort_fails_requests() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let m = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper, &work, &merged, false),
        &merged,
    )
    .unwrap();
    m.abort().unwrap();
    let e = fs::read(merged.join("hello")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
}

#[test]
fn stopped_daemon_does_not_hang_drop() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let mut m = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper, &work, &merged, false),
        &merged,
    )
    .unwrap();
    m.set_exit_timeout(Duration::from_secs(1));
    let pids = m.daemon_pids();
    for &p in &pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(p as libc::pid_t, libc::SIGSTOP) };
    }
    let t = Instant::now();
    let res = m.unmount();
    eprintln!(
        "unmount with a stopped daemon: {res:?} after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(mounted_under(&merged).is_empty());
    assert!(wait_gone(&pids, Duration::from_secs(5)));
}

#[test]
fn everything_is_cleaned_up_when_the_test_panics() {
    struct Seen {
        dirs: Vec<PathBuf>,
        loop_dev: PathBuf,
        image: String,
        pids: Vec<u32>,
    }
    let mut seen: Option<Seen> = None;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let mut disk = FailingDisk::new().unwrap();
        let s = Scratch::new().unwrap();
        let (lower, _, _, merged) = layers(&s);
        let upper = disk.path().join("upper");
        let work = disk.path().join("work");
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        let ovl = KernelOverlay::mount(&[&lower], Some(&upper), Some(&work), "", &merged).unwrap();
        let fmerged = s.mkdir("fmerged").unwrap();
        let fupper = disk.path().join("fupper");
        let fwork = disk.path().join("fwork");
        fs::create_dir(&fupper).unwrap();
        fs::create_dir(&fwork).unwrap();
        let mut fm = FuseMount::spawn(
            fuse_overlayfs(&lower, &fupper, &fwork, &fmerged, false),
            &fmerged,
        )
        .unwrap();
        disk.balloon().unwrap();
        // Keep things busy: an open file on each mount.
        let _f1 = File::open(ovl.path().join("hello")).unwrap();
        let _f2 = File::open(fm.path().join("hello")).unwrap();
        seen = Some(Seen {
            dirs: vec![disk.scratch().to_path_buf(), s.path().to_path_buf()],
            loop_dev: disk.device().to_path_buf(),
            image: disk.image().display().to_string(),
            pids: fm.daemon_pids(),
        });
        panic!("test body fails");
    }));
    assert!(res.is_err());
    let seen = seen.unwrap();
    for d in &seen.dirs {
        assert!(
            mounted_under(d).is_empty(),
            "{} still has mounts",
            d.display()
        );
        assert!(!d.exists(), "{} still exists", d.display());
    }
    assert!(
        !loop_backing(&seen.loop_dev).is_some_and(|b| b.starts_with(&seen.image)),
        "loop device still attached"
    );
    assert!(wait_gone(&seen.pids, Duration::from_secs(5)));
}

#[test]
fn sweeper_removes_resources_of_a_dead_owner() {
    // A pid that is certainly dead: our own reaped child.
    let mut c = Command::new("true").spawn().unwrap();
    let dead_pid = c.id();
    c.wait().unwrap();
    let name = format!("{dead_pid}-1-0");
    let root = testbed::root();

    // Build it inside a live scratch dir, then move it into place in one
    // step so that no sweeper sees it half made.
    let s = Scratch::new().unwrap();
    let staging = s.mkdir(&name).unwrap();
    let t = staging.join("tmpfs");
    fs::create_dir(&t).unwrap();
    testbed::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
            .arg(&t),
    );
    let img = t.join("img");
    File::create(&img).unwrap().set_len(16 << 20).unwrap();
    let dev = testbed::run(Command::new("losetup").args(["--find", "--show"]).arg(&img));
    let dev = PathBuf::from(dev.trim());
    let inner = t.join("inner");
    fs::create_dir(&inner).unwrap();
    testbed::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&inner),
    );
    let mut daemon = Command::new("sleep")
        .arg("600")
        .env(OWNER_ENV, &name)
        .spawn()
        .unwrap();
    // spawn returns once the child has begun exec, which can be before
    // the kernel has set up its environment: until then /proc shows an
    // empty environ and no sweeper could tell whose daemon it is.
    let marker = format!("{OWNER_ENV}={name}");
    let environ = format!("/proc/{}/environ", daemon.id());
    assert!(
        wait_until(Duration::from_secs(5), || fs::read(&environ)
            .unwrap()
            .split(|&b| b == 0)
            .any(|v| v == marker.as_bytes())),
        "no environment yet"
    );
    let dir = root.join(&name);
    fs::rename(&staging, &dir).unwrap();
    assert_eq!(mounted_under(&dir).len(), 2);

    let swept = testbed::sweep_stale().unwrap();
    // Another test process starting meanwhile may have swept it first
    // (sweeps are serialized by a lock, so it is done by now).
    assert!(swept.dirs.contains(&dir) || !dir.exists(), "{swept:?}");
    assert!(mounted_under(&dir).is_empty());
    assert!(!dir.exists());
    // The device is free (or already reused by someone else's image).
    let backing = loop_backing(&dev);
    assert!(
        !backing
            .as_deref()
            .is_some_and(|b| b.contains(&name) || b.trim_end().ends_with("/img")),
        "loop device still attached: {backing:?}"
    );
    let st = daemon.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
}

#[test]
fn sweeper_never_touches_a_live_owner() {
    let s = Scratch::new().unwrap();
    let t = s.mkdir("t").unwrap();
    testbed::run(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&t));
    testbed::sweep_stale().unwrap();
    assert_eq!(mounted_under(&t).len(), 1);
    assert!(s.path().exists());
    let dir = s.path().to_path_buf();
    drop(s);
    assert!(mounted_under(&dir).is_empty());
    assert!(!dir.exists());
}

#[test]
fn run_returns_stdout_and_panics_with_output() {
    assert_eq!(testbed::run(Command::new("echo").arg("hi")), "hi\n");
    let e = testbed::try_run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("out") && msg.contains("err") && msg.contains('3'),
        "{msg}"
    );
    let p = catch_unwind(|| testbed::run(&mut Command::new("false")));
    assert!(p.is_err());
    let _: io::Result<String> = testbed::try_run(&mut Command::new("true"));
}

#[test]
fn a_guard_whose_mount_is_gone_leaves_the_next_mount_on_its_number_alone() {
    let s = Scratch::new().unwrap();
    let (lower, upper, work, merged) = layers(&s);
    let mut first = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper, &work, &merged, false),
        &merged,
    )
    .unwrap();
    let number = first.connection().unwrap();
    // Unmounted behind the guard's back: the kernel frees the number, and
    // the next FUSE mount (usually this one) gets it.
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success());
    let (upper2, work2, merged2) = (
        s.mkdir("upper2").unwrap(),
        s.mkdir("work2").unwrap(),
        s.mkdir("merged2").unwrap(),
    );
    let mut second = FuseMount::spawn(
        fuse_overlayfs(&lower, &upper2, &work2, &merged2, false),
        &merged2,
    )
    .unwrap();
    if second.connection() != Some(number) {
        eprintln!("note: the second mount got another connection number");
    }
    let theirs = lone_daemon(&mut second);
    first.abort().unwrap();
    assert!(
        first.daemon_pids().iter().all(|p| !theirs.contains(p)),
        "the first guard claims the second mount's daemon"
    );
    drop(first);
    assert_eq!(fs::read(merged2.join("hello")).unwrap(), b"from lower");
    assert!(theirs.iter().all(|&p| alive(p)));
    second.unmount().unwrap();
}
