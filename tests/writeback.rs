//! The writeback-error contract (SPEC §3, E1–E8), proven on a real failing
//! disk: ext4 on a loop device whose image cannot grow once the tmpfs under
//! it is ballooned, so writeback of new blocks fails for real.

mod common;
mod support;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use testbed::{DiskOptions, FailingDisk};

const ENOSPC: i32 = libc::ENOSPC;
const EIO: i32 = libc::EIO;

/// A stack whose upper and work directories are on the failing disk (the
/// lowers are on the scratch filesystem).
fn disk_stack(disk: &FailingDisk, s: &Scratch, name: &str) -> Stack {
    let base = s.path().join(name);
    let on_disk = disk.path().join(name);
    std::fs::create_dir_all(&on_disk).unwrap();
    let mut st = Stack::under(&base, 1);
    st.upper = on_disk.join("upper");
    st.work = on_disk.join("work");
    std::fs::create_dir_all(&st.upper).unwrap();
    std::fs::create_dir_all(&st.work).unwrap();
    st
}

/// Asserts that none of the upper files `upper/n` holds a writeback error
/// nobody was told. Call it after rovl checked them all (a sync, or the
/// volatile check), which marks their errors seen: one the host still
/// finds unseen is one rovl missed.
fn assert_none_missed(upper: &Path, names: &[String], ctx: &str) {
    for n in names {
        let f = File::open(upper.join(n)).unwrap();
        let unseen = rovl::sys::check_writeback(f.as_fd());
        assert!(
            unseen.is_ok(),
            "{ctx}: rovl missed an error of {n}: {unseen:?}"
        );
    }
}

/// A stack of two lowers (in `s`) laid out for
/// [`support::random_operation`], its upper and work directories at the
/// top of the failing disk.
fn random_stack_on(disk: &FailingDisk, s: &Scratch) -> Stack {
    let mut st = Stack::under(s.path(), 2);
    st.upper = disk.path().join("upper");
    st.work = disk.path().join("work");
    std::fs::create_dir_all(&st.upper).unwrap();
    std::fs::create_dir_all(&st.work).unwrap();
    support::lay_out_for_random_operations(&st);
    st
}

/// Creates `p` as a file of `len` bytes with no block: writing any of it
/// needs new blocks, which a ballooned failing disk cannot give.
fn sparse(p: &Path, len: usize) {
    File::create(p).unwrap().set_len(len as u64).unwrap();
}

/// A new failing disk with the stack "a" on it ([`disk_stack`]), and the
/// scratch directory its lower layers live in (kept as long as they are).
fn failing_stack() -> (Scratch, FailingDisk, Stack) {
    let s = Scratch::new().unwrap();
    let disk = FailingDisk::new().unwrap();
    let st = disk_stack(&disk, &s, "a");
    (s, disk, st)
}

fn rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

fn ro(p: &Path) -> File {
    File::open(p).unwrap()
}

/// fsync's errno, 0 on success.
fn fsync(f: &File) -> i32 {
    match f.sync_all() {
        Ok(()) => 0,
        Err(e) => errno(&e),
    }
}

/// fdatasync's errno, 0 on success.
fn fdatasync(f: &File) -> i32 {
    match f.sync_data() {
        Ok(()) => 0,
        Err(e) => errno(&e),
    }
}

/// Appends `n` bytes (new blocks: they need fresh room on the disk).
fn grow(f: &mut File, n: usize) {
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(&vec![0x5a; n]).unwrap();
}

/// The `ROVL_IOC_SYNCFS` ioctl through `f`: 0 or its errno.
fn ioc_sync(f: &File) -> i32 {
    match rovl::sys::ioctl_rovl_sync(f.as_fd()) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    }
}

/// `rovl sync PATH`: (exit code, stderr).
fn rovl_sync(p: &Path) -> (i32, String) {
    let (c, _, e) = run_rovl([Path::new("sync"), p]);
    (c, e)
}

/// Starts writeback of an upper file from the host, without waiting and
/// without being told anything (so an error stays untold to everyone).
fn kick_writeback(upper_file: &Path) {
    let f = File::open(upper_file).unwrap();
    rovl::sys::start_writeback(f.as_fd()).unwrap();
}

/// Waits until `cond` holds (10 s at most).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status JSON of a live mount.
fn status(mnt: &Path) -> serde_json::Value {
    let (c, out, err) = run_rovl([Path::new("status"), mnt, Path::new("--json")]);
    assert_eq!(c, 0, "rovl status: {err}");
    serde_json::from_str(&out).unwrap()
}

fn error_count(mnt: &Path) -> usize {
    status(mnt)["errors"].as_array().map(Vec::len).unwrap_or(0)
}

fn passthrough_modes() -> [&'static str; 2] {
    ["passthrough=on", "passthrough=off"]
}

/// E1: observers open when the error happened are each told once; one that
/// opens after someone was told is not.
#[test]
fn e1_each_observer_told_once() {
    for mode in passthrough_modes() {
        let (_s, mut disk, st) = failing_stack();
        let m = mount_rovl(&st, mode);
        let f = st.m("f");
        put(&f, "start");
        assert_eq!(fsync(&ro(&f)), 0);
        let mut a = rw(&f);
        let b = ro(&f);
        disk.balloon().unwrap();
        grow(&mut a, 1 << 20);
        assert_eq!(fsync(&a), ENOSPC, "{mode}: writer's fsync");
        assert_eq!(fsync(&a), 0, "{mode}: told once");
        assert_eq!(fsync(&b), ENOSPC, "{mode}: second observer told too");
        assert_eq!(fsync(&b), 0, "{mode}: second observer told once");
        let c = ro(&f);
        assert_eq!(fsync(&c), 0, "{mode}: opened after someone was told");
        drop((a, b, c));
        disk.heal().unwrap();
        drop(m);
    }
}

/// E1 through hard links: observers of a file opened through any of its
/// names are observers of the one file, so each is told of an error a
/// writer met through another name, once. Both kinds of upper hard link:
/// one made through the mount, and one the upper layer held before the
/// mount (so the kernel looks the two names up separately).
#[test]
fn e1_observers_through_every_hard_link_are_told() {
    for mode in passthrough_modes() {
        let (_s, mut disk, st) = failing_stack();
        put(&st.upper.join("x"), "start");
        std::fs::hard_link(st.upper.join("x"), st.upper.join("y")).unwrap();
        let m = mount_rovl(&st, mode);
        put(&st.m("f"), "start");
        std::fs::hard_link(st.m("f"), st.m("g")).unwrap();
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        let observers: Vec<(&str, File)> = ["f", "g", "x", "y"]
            .into_iter()
            .map(|n| (n, ro(&st.m(n))))
            .collect();
        disk.balloon().unwrap();
        for n in ["f", "x"] {
            let mut w = rw(&st.m(n));
            grow(&mut w, 1 << 20);
            assert_eq!(fsync(&w), ENOSPC, "{mode}: the writer through {n}");
        }
        for (n, o) in &observers {
            assert_eq!(fsync(o), ENOSPC, "{mode}: the observer through {n}");
            assert_eq!(fsync(o), 0, "{mode}: the observer through {n}, told once");
        }
        disk.heal().unwrap();
        drop((observers, m));
    }
}

/// E1: an error nobody was told yet is told to an observer that opens
/// afterwards (rovl found it by checking background writeback, without
/// telling anyone); once told, later openers are not.
#[test]
fn e1_untold_error_reaches_late_opener() {
    for mode in passthrough_modes() {
        let (_s, mut disk, st) = failing_stack();
        let m = mount_rovl(&st, mode);
        let f = st.m("f");
        put(&f, "start");
        assert_eq!(fsync(&ro(&f)), 0);
        disk.balloon().unwrap();
        {
            let mut a = rw(&f);
            grow(&mut a, 1 << 20);
        } // closed: no observer is left
        kick_writeback(&st.upper.join("f"));
        wait_for("rovl to notice the background error", || {
            error_count(&st.mnt) >= 1
        });
        let d = ro(&f);
        assert_eq!(
            fsync(&d),
            ENOSPC,
            "{mode}: nobody was told: the late opener is"
        );
        assert_eq!(fsync(&d), 0, "{mode}: told once");
        let e = ro(&f);
        assert_eq!(
            fdatasync(&e),
            0,
            "{mode}: someone was told before this opened"
        );
        disk.heal().unwrap();
        drop((d, e, m));
    }
}

/// E2: the mount sync (ioctl and `rovl sync`) fails for an observer opened
/// before the error, once; a fresh `rovl sync` after that succeeds.
#[test]
fn e2_sync_reports_errors_per_observer() {
    let (_s, mut disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    put(&st.m("f"), "start");
    put(&st.m("g"), "other");
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    let root = File::open(&st.mnt).unwrap();
    let other = ro(&st.m("g"));
    disk.balloon().unwrap();
    let mut a = rw(&st.m("f"));
    grow(&mut a, 1 << 20);
    drop(a);
    let (code, err) = rovl_sync(&st.m("f"));
    assert_eq!(code, 1, "rovl sync must fail: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.starts_with(&st.m("f").display().to_string()), "{err}");
    assert_eq!(
        ioc_sync(&root),
        ENOSPC,
        "an observer open before the error is told"
    );
    assert_eq!(ioc_sync(&root), 0, "once");
    assert_eq!(ioc_sync(&other), ENOSPC, "any file of the mount will do");
    assert_eq!(
        rovl_sync(&st.mnt).0,
        0,
        "a new observer after the error was told"
    );
    disk.heal().unwrap();
    drop((root, other, m));
}

/// E2: after `rovl sync` returned 0, a power cut keeps the data, the new
/// names and the copy-ups this mount made; with the writeback cache
/// (passthrough off) that includes pages the kernel still held.
#[test]
fn e2_sync_makes_everything_durable() {
    for mode in passthrough_modes() {
        e2_sync_durable(mode);
    }
}

fn e2_sync_durable(mode: &str) {
    let (_s, disk, st) = failing_stack();
    put(&st.lower(0, "dir/lowerfile"), "lower data");
    let m = mount_rovl(&st, mode);
    put(&st.m("new/file"), "fresh");
    {
        let mut f = OpenOptions::new()
            .append(true)
            .open(st.m("dir/lowerfile"))
            .unwrap();
        f.write_all(b" + more").unwrap();
    }
    std::fs::rename(st.m("new/file"), st.m("new/renamed")).unwrap();
    // Written and still open: with the writeback cache the data may sit in
    // the kernel's page cache of the mount, not yet sent to rovl.
    let mut open = File::create(st.m("open")).unwrap();
    open.write_all(b"kept open").unwrap();
    let (code, err) = rovl_sync(&st.mnt);
    assert_eq!(code, 0, "{mode}: {err}");
    let cut = disk.power_cut().unwrap();
    let up = cut.path().join("a/upper");
    assert_eq!(get(&up.join("new/renamed")), "fresh", "{mode}");
    assert!(!up.join("new/file").exists(), "{mode}");
    assert_eq!(
        get(&up.join("dir/lowerfile")),
        "lower data + more",
        "{mode}"
    );
    assert_eq!(get(&up.join("open")), "kept open", "{mode}");
    drop((open, cut, m));
}

/// E2 for data the kernel is still sending: with the writeback cache, the
/// kernel writes a big write's pages back to rovl in the background while
/// the file stays open, and a syncfs(2) of the mount does not wait for
/// those already on their way (Linux 6.18). A sync right after such a
/// write must still find every byte in the upper file, written back.
#[test]
fn a_sync_right_after_a_big_write_through_an_open_file_has_all_of_it() {
    for mode in passthrough_modes() {
        let (_s, _disk, st) = failing_stack();
        let _m = mount_rovl(&st, mode);
        let mut f = File::create(st.m("f")).unwrap();
        let root = File::open(&st.mnt).unwrap();
        let len = 1 << 20;
        for round in 0..40u8 {
            let data = vec![b'a' + round % 26; len];
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&data).unwrap();
            assert_eq!(ioc_sync(&root), 0, "{mode}");
            let upper = std::fs::read(st.upper.join("f")).unwrap();
            let missing = upper
                .chunks(4096)
                .zip(data.chunks(4096))
                .filter(|(u, d)| u != d)
                .count();
            assert_eq!(
                missing, 0,
                "{mode}, round {round}: pages of the write not in the upper file after the sync"
            );
            let dirty = dirty_upper_files(&st.upper);
            assert!(dirty.is_empty(), "{mode}, round {round}: {dirty:?}");
        }
    }
}

/// E2 for pages the kernel caches even with passthrough: an open by a
/// writer whose writes must clear setuid bits is answered without
/// passthrough (only rovl can clear them), and stores through a shared
/// mapping of it sit in the mount's page cache. A sync while the mapping
/// is there must write them back (it did not look at them: F31).
#[test]
fn a_sync_writes_back_a_mapping_the_kernel_caches_with_passthrough() {
    for mode in passthrough_modes() {
        let (_s, _disk, st) = failing_stack();
        let _m = mount_rovl(&st, mode);
        let len = 64 << 10;
        sparse(&st.m("f"), len);
        std::fs::set_permissions(st.m("f"), std::fs::Permissions::from_mode(0o4777)).unwrap();
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        let path = std::ffi::CString::new(st.m("f").as_os_str().as_encoded_bytes()).unwrap();
        let (mut stored, mut go_on) = ([0; 2], [0; 2]);
        // SAFETY: two pipes of two descriptors each.
        unsafe {
            assert_eq!(libc::pipe(stored.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(go_on.as_mut_ptr()), 0);
        }
        // SAFETY: the child makes only async-signal-safe calls (setresuid,
        // open, mmap, write, read, munmap, _exit) and stores into its own
        // mapping of `len` bytes.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as said at the fork.
            unsafe {
                if libc::setresgid(1000, 1000, 1000) != 0 || libc::setresuid(1000, 1000, 1000) != 0
                {
                    libc::_exit(1);
                }
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    libc::_exit(2);
                }
                let p = map_shared(fd, len);
                if p == libc::MAP_FAILED {
                    libc::_exit(3);
                }
                for page in 0..len / 4096 {
                    *(p as *mut u8).add(page * 4096) = b'z';
                }
                libc::write(stored[1], b"x".as_ptr().cast(), 1);
                let mut b = 0u8;
                libc::read(go_on[0], (&mut b as *mut u8).cast(), 1);
                libc::munmap(p, len);
                libc::_exit(0);
            }
        }
        let mut b = 0u8;
        // SAFETY: reads one byte into `b` from the pipe made above.
        let n = unsafe { libc::read(stored[0], (&mut b as *mut u8).cast(), 1) };
        let synced = rovl_sync(&st.mnt);
        let upper = std::fs::read(st.upper.join("f")).unwrap();
        let dirty = dirty_upper_files(&st.upper);
        let mut status = 0;
        // SAFETY: lets the child go, waits for it, closes the pipes.
        unsafe {
            libc::write(go_on[1], b"x".as_ptr().cast(), 1);
            libc::waitpid(pid, &mut status, 0);
            for fd in stored.into_iter().chain(go_on) {
                libc::close(fd);
            }
        }
        assert_eq!(n, 1, "{mode}: the child failed (status {status})");
        assert_eq!(synced.0, 0, "{mode}: {}", synced.1);
        let missing = (0..len / 4096).filter(|p| upper[p * 4096] != b'z').count();
        assert_eq!(
            missing, 0,
            "{mode}: pages stored before the sync not in the upper file"
        );
        assert!(dirty.is_empty(), "{mode}: {dirty:?}");
    }
}

/// E2 after a race: four threads of random operations (writes, copy-ups,
/// renames, removals, links, mappings, xattrs, fsyncs and syncs...), then
/// `rovl sync`, then a power cut. What a fresh mount over the cut image
/// shows (rovl, and kernel overlayfs as a second reader) must be what the
/// live mount showed at the sync: a file the sync left out shows up short
/// or empty. It also checks that the sync left no dirty page in an upper
/// file.
#[test]
fn e2_sync_after_a_race_makes_everything_durable() {
    for mode in passthrough_modes() {
        sync_after_a_race_then_power_cut(mode, None, false);
    }
}

/// The same with a daemon limited to 128 descriptors, so that it parks
/// and reopens dirty files throughout.
#[test]
fn e2_sync_after_a_race_short_of_descriptors_makes_everything_durable() {
    for mode in passthrough_modes() {
        sync_after_a_race_then_power_cut(mode, Some(128), false);
    }
}

/// The same ended by `rovl umount` instead of `rovl sync`: a normal
/// unmount makes everything durable (its final sync) before it says 0.
#[test]
fn an_unmount_after_a_race_makes_everything_durable() {
    for mode in passthrough_modes() {
        sync_after_a_race_then_power_cut(mode, None, true);
    }
}

/// The race, sync (or `umount`) and power cut of the tests above.
fn sync_after_a_race_then_power_cut(mode: &str, nofile: Option<u32>, umount: bool) {
    let seed = support::seed_from_env("ROVL_STRESS_SEED");
    let ctx = format!("{mode}, nofile {nofile:?}, umount {umount}, seed {seed}");
    let s = Scratch::new().unwrap();
    let disk = FailingDisk::new().unwrap();
    let st = random_stack_on(&disk, &s);
    let m = match nofile {
        Some(n) => mount_rovl_limited(&st, mode, n),
        None => mount_rovl(&st, mode),
    };
    std::thread::scope(|sc| {
        for w in 0..4 {
            let st = &st;
            sc.spawn(move || {
                let mut r = difftest::rng::Rng::new(seed, w);
                let until = Instant::now() + Duration::from_millis(1000);
                while Instant::now() < until {
                    let _ = support::random_operation(&mut r, st);
                }
            });
        }
    });
    let live = support::brief(&support::view(&st.mnt));
    let (code, err) = if umount {
        let (c, _, e) = run_rovl([Path::new("umount"), &st.mnt]);
        (c, e)
    } else {
        rovl_sync(&st.mnt)
    };
    assert_eq!(code, 0, "{ctx}: {err}");
    let dirty = dirty_upper_files(&st.upper);
    assert!(dirty.is_empty(), "{ctx}: dirty after the sync: {dirty:?}");
    let cut = disk.power_cut().unwrap();
    // The live view is what kernel overlayfs reads from the same layers
    // (the upper as the top lower, read-only).
    {
        let kmnt = s.path().join("kernel-view");
        std::fs::create_dir_all(&kmnt).unwrap();
        let layers: Vec<&Path> = std::iter::once(st.upper.as_path())
            .chain(st.lowers.iter().map(PathBuf::as_path))
            .collect();
        let _k = testbed::KernelOverlay::mount(&layers, None, None, "", &kmnt).unwrap();
        let d = support::diff(
            "live rovl",
            &live,
            "kernel overlayfs",
            &support::brief(&support::view(&kmnt)),
        );
        assert!(d.is_empty(), "{ctx}: the live view is stale:\n{d}");
    }
    drop(m);
    let after = Stack {
        lowers: st.lowers.clone(),
        upper: cut.path().join("upper"),
        work: cut.path().join("work"),
        mnt: st.mnt.clone(),
    };
    let same_as_synced = |reader: &str, mnt: &Path| {
        let d = support::diff(
            "synced",
            &live,
            reader,
            &support::brief(&support::view(mnt)),
        );
        assert!(d.is_empty(), "{ctx}: the sync left something out:\n{d}");
    };
    {
        let _m = mount_rovl(&after, mode);
        same_as_synced("rovl after a power cut", &after.mnt);
    }
    let k = Stack {
        work: cut.path().join("kernel-work"),
        ..after
    };
    std::fs::create_dir_all(&k.work).unwrap();
    let _k = mount_kernel(&k, "");
    same_as_synced("kernel overlayfs after a power cut", &k.mnt);
}

/// E2 against the settling of synced files: while threads rewrite files
/// (open, write, close) over and over, others fsync them and sync the
/// mount, so that a sync may find a file closed and drop it from the
/// dirty set just as it is opened again, or after it was written and
/// closed again behind the sync's fsync (with passthrough the daemon
/// never sees the write). Either way the entry was dropped with data
/// unsynced, and a later `rovl sync` left that data dirty.
#[test]
fn a_file_reopened_while_an_fsync_settles_it_is_still_synced() {
    for mode in passthrough_modes() {
        let (_s, _disk, st) = failing_stack();
        let _m = mount_rovl(&st, mode);
        let names: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
        for round in 0..10 {
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|sc| {
                for n in &names {
                    let (st, stop) = (&st, &stop);
                    sc.spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = std::fs::write(st.m(n), b"new");
                        }
                    });
                    sc.spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            if let Ok(f) = File::open(st.m(n)) {
                                let _ = f.sync_all();
                                let _ = ioc_sync(&f);
                            }
                        }
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let (code, err) = rovl_sync(&st.mnt);
            assert_eq!(code, 0, "{mode}: {err}");
            let dirty = dirty_upper_files(&st.upper);
            assert!(
                dirty.is_empty(),
                "{mode}, round {round}: dirty after a sync: {dirty:?}"
            );
        }
    }
}

/// E2 for attributes: a change of mode, owner, times, xattrs or inode
/// flags of an object that has nothing else unsynced (a file, a directory,
/// a symlink) is made durable by `rovl sync`: after a power cut it is
/// there. Before, only data and directory entries counted, and a sync with
/// nothing else to do left such changes to ext4's next periodic commit.
#[test]
fn e2_sync_makes_attribute_changes_durable() {
    for mode in passthrough_modes() {
        let (_s, disk, st) = failing_stack();
        put(&st.lower(0, "lower"), "lower data");
        let m = mount_rovl(&st, mode);
        put(&st.m("file"), "data");
        std::fs::create_dir(st.m("dir")).unwrap();
        std::os::unix::fs::symlink("file", st.m("link")).unwrap();
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        std::fs::set_permissions(st.m("file"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(st.m("dir"), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::lchown(st.m("link"), Some(7), Some(8)).unwrap();
        std::os::unix::fs::chown(st.m("dir"), Some(5), Some(6)).unwrap();
        setxattr(&st.m("file"), "user.k", b"v");
        setxattr(&st.m("dir"), "user.k", b"w");
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Through a read-only descriptor: an open for writing would make
        // the file dirty anyway.
        File::open(st.m("file"))
            .unwrap()
            .set_modified(when)
            .unwrap();
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        let cut = disk.power_cut().unwrap();
        let up = cut.path().join("a/upper");
        let meta = |p: &str| std::fs::symlink_metadata(up.join(p)).unwrap();
        assert_eq!(meta("file").mode() & 0o7777, 0o640, "{mode}: file mode");
        assert_eq!(meta("file").mtime(), 1_000_000, "{mode}: file mtime");
        assert_eq!(meta("dir").mode() & 0o7777, 0o711, "{mode}: dir mode");
        assert_eq!(
            (meta("dir").uid(), meta("dir").gid()),
            (5, 6),
            "{mode}: dir owner"
        );
        assert_eq!(
            (meta("link").uid(), meta("link").gid()),
            (7, 8),
            "{mode}: link owner"
        );
        assert_eq!(
            getxattr(&up.join("file"), "user.k").as_deref(),
            Some(&b"v"[..]),
            "{mode}"
        );
        assert_eq!(
            getxattr(&up.join("dir"), "user.k").as_deref(),
            Some(&b"w"[..]),
            "{mode}"
        );
        drop((cut, m));
    }
}

/// F29: with passthrough a shared mapping of a file outlives the file's
/// last close (the kernel maps the upper file itself, so the close's
/// RELEASE ends rovl's count of writers). A sync after that close must
/// not drop the file from the dirty set while the mapping can still write
/// it: a store through the mapping afterwards is synced by the next sync.
/// Once the mapping is gone, a sync lets the file go.
#[test]
fn a_write_through_a_mapping_after_the_close_is_synced() {
    for mode in passthrough_modes() {
        let (_s, _disk, st) = failing_stack();
        let _m = mount_rovl(&st, mode);
        put(&st.m("f"), &"a".repeat(8192));
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        let map = MappedAfterClose::new(&st.m("f"), 8192);
        // The close's RELEASE reaches rovl; two syncs would settle the
        // file if only the opens counted.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        map.store(0, b'm');
        drop(map);
        assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
        let dirty = dirty_upper_files(&st.upper);
        assert!(dirty.is_empty(), "{mode}: dirty after the sync: {dirty:?}");
        assert_eq!(get(&st.m("f")).as_bytes()[0], b'm', "{mode}");
        // Unmapped, the file is no longer written by anyone: it leaves the
        // dirty set (the kernel may drop the mapping's file a little
        // after the munmap).
        wait_for("the file to leave the dirty set", || {
            assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
            status(&st.mnt)["dirty_files"] == 0
        });
    }
}

/// F29, errors: stores through a mapping after the file's last close,
/// into holes whose blocks the failing disk cannot give, fail their
/// writeback; the next sync reports it (E2) and the journal has it (E7),
/// whether the mapping is still there or gone.
#[test]
fn an_error_of_a_write_through_a_mapping_after_the_close_is_reported() {
    for mode in passthrough_modes() {
        for unmap_first in [false, true] {
            let (_s, mut disk, st) = failing_stack();
            let _m = mount_rovl(&st, mode);
            let len = 256 << 10;
            sparse(&st.m("f"), len);
            assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
            let map = MappedAfterClose::new(&st.m("f"), len);
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
            assert_eq!(rovl_sync(&st.mnt).0, 0, "{mode}");
            disk.balloon().unwrap();
            for page in 0..len / 4096 {
                map.store(page * 4096, b'm');
            }
            if unmap_first {
                drop(map);
                let (code, err) = rovl_sync(&st.mnt);
                assert_eq!(code, 1, "{mode}, unmapped: the sync said {err:?}");
            } else {
                let (code, err) = rovl_sync(&st.mnt);
                assert_eq!(code, 1, "{mode}, mapped: the sync said {err:?}");
                drop(map);
            }
            let logged = journal(&st.work);
            assert!(
                logged.iter().any(|e| e["path"] == "/f"),
                "{mode}: journal {logged:?}"
            );
            disk.heal().unwrap();
        }
    }
}

/// F29, volatile (E5): a file whose writeback ended cleanly and that no
/// open has for writing is parked (rovl closes its descriptor) and not
/// checked again until an open for writing; one still mapped for writing
/// after its last close must stay checked, so an error of the background
/// writeback of stores through the mapping makes the mount sticky.
#[test]
fn a_volatile_mount_sees_errors_of_writes_through_a_mapping_after_the_close() {
    let (_s, mut disk, st) = failing_stack();
    let _m = mount_rovl(&st, "volatile,passthrough=on");
    let len = 256 << 10;
    sparse(&st.m("f"), len);
    let map = MappedAfterClose::new(&st.m("f"), len);
    // Past the background pass (every second) that would park the file.
    std::thread::sleep(Duration::from_millis(2500));
    disk.balloon().unwrap();
    for page in 0..len / 4096 {
        map.store(page * 4096, b'm');
    }
    let upper = st.upper.join("f");
    wait_for("the writeback to end", || {
        let f = File::open(&upper).unwrap();
        let _ = rovl::sys::start_writeback(f.as_fd());
        let c = rovl::sys::cachestat(f.as_fd()).unwrap();
        c.dirty + c.writeback == 0
    });
    let root = File::open(&st.mnt).unwrap();
    assert_eq!(ioc_sync(&root), EIO, "the sync after the error");
    assert_none_missed(&st.upper, &["f".to_string()], "volatile");
    drop((map, root));
    disk.heal().unwrap();
}

/// A shared writable mapping of a file whose descriptor is closed at once
/// (its RELEASE follows); unmapped when dropped.
struct MappedAfterClose {
    p: *mut libc::c_void,
    len: usize,
}

impl MappedAfterClose {
    fn new(path: &Path, len: usize) -> MappedAfterClose {
        let f = rw(path);
        let p = map_shared(std::os::fd::AsRawFd::as_raw_fd(&f), len);
        assert_ne!(p, libc::MAP_FAILED, "mmap {}", path.display());
        MappedAfterClose { p, len }
    }

    fn store(&self, at: usize, b: u8) {
        assert!(at < self.len);
        // SAFETY: inside the live mapping.
        unsafe { *(self.p as *mut u8).add(at) = b }
    }
}

impl Drop for MappedAfterClose {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.p, self.len) };
    }
}

/// Regular files below `dir` with pages not yet written back.
fn dirty_upper_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(dirty_upper_files(&e.path()));
        } else if t.is_file() {
            let f = File::open(e.path()).unwrap();
            let c = rovl::sys::cachestat(f.as_fd()).unwrap();
            if c.dirty + c.writeback > 0 {
                out.push(format!(
                    "{}: {} dirty pages",
                    e.path().display(),
                    c.dirty + c.writeback
                ));
            }
        }
    }
    out
}

/// Without a sync, a power cut right after a write loses it (the control
/// for the test above: the power-cut image really shows what was durable).
#[test]
fn power_cut_without_sync_loses_data() {
    let (_s, disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    put(&st.m("unsynced"), &"x".repeat(100_000));
    let cut = disk.power_cut().unwrap();
    let up = cut.path().join("a/upper/unsynced");
    let len = std::fs::metadata(&up).map(|m| m.len()).unwrap_or(0);
    let data = std::fs::read(&up).unwrap_or_default();
    assert!(
        len < 100_000 || data.iter().all(|b| *b == 0),
        "unsynced data was already durable; the power-cut check cannot tell"
    );
    drop(m);
}

/// Copy-up is durable before the operation that caused it returns.
#[test]
fn copy_up_is_durable_before_returning() {
    let (_s, disk, st) = failing_stack();
    put(&st.lower(0, "d/e/big"), &"L".repeat(300_000));
    put(&st.lower(0, "d/e/small"), "s");
    std::os::unix::fs::symlink("small", st.lower(0, "d/e/link")).unwrap();
    let m = mount_rovl(&st, "");
    std::fs::metadata(st.m("d/e/big")).unwrap();
    let before = disk.journal_commits().unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(st.m("d/e/big"))
        .unwrap();
    // Three copies (d, d/e, the file), made durable together: one journal
    // commit (and perhaps ext4's own 5-second one), not one or two each.
    let commits = disk.journal_commits().unwrap() - before;
    assert!(
        commits <= 2,
        "{commits} journal commits for one copy-up of a file and its two directories"
    );
    let cut = disk.power_cut().unwrap();
    assert_eq!(
        get(&cut.path().join("a/upper/d/e/big")),
        "L".repeat(300_000)
    );
    drop(cut);
    // A symlink's copy-up and a small file's (for a change of owner; the
    // change itself is the caller's to fsync).
    std::os::unix::fs::lchown(st.m("d/e/link"), Some(7), Some(7)).unwrap();
    let cut = disk.power_cut().unwrap();
    let up = cut.path().join("a/upper/d/e");
    assert_eq!(
        std::fs::read_link(up.join("link")).unwrap(),
        Path::new("small")
    );
    drop(cut);
    std::os::unix::fs::chown(st.m("d/e/small"), Some(8), Some(8)).unwrap();
    let cut = disk.power_cut().unwrap();
    assert_eq!(get(&cut.path().join("a/upper/d/e/small")), "s");
    drop((f, m));
}

/// A copy-up whose data the disk cannot take fails the open that asked
/// for it with the writeback error and leaves nothing behind: no upper
/// file, nothing in the work directory, the lower file still what the
/// mount shows. Once the disk is healed the copy-up succeeds. A large file
/// (the copy writes back behind itself, so the failure comes during the
/// copy) and a small one (it comes from the wait for the copy's writeback
/// before the rename).
#[test]
fn a_copy_up_that_cannot_be_written_back_fails_and_leaves_nothing() {
    // Larger than the copy's write-behind window (5 x 8 MiB).
    copy_up_on_a_full_disk(48 << 20);
    copy_up_on_a_full_disk(64 << 10);
}

fn copy_up_on_a_full_disk(size: usize) {
    let s = Scratch::new().unwrap();
    // Room on the tmpfs for the failed attempt's blocks and the retry's.
    let mut disk = FailingDisk::with_options(DiskOptions {
        image_size: 512 << 20,
        tmpfs_size: 192 << 20,
        ..Default::default()
    })
    .unwrap();
    let st = disk_stack(&disk, &s, "a");
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(st.lower(0, "big"), &data).unwrap();
    let m = mount_rovl(&st, "");
    disk.balloon().unwrap();
    let e = OpenOptions::new()
        .append(true)
        .open(st.m("big"))
        .err()
        .and_then(|e| e.raw_os_error());
    assert!(
        matches!(e, Some(EIO | ENOSPC)),
        "copy-up on a full disk: {e:?}"
    );
    assert!(
        std::fs::symlink_metadata(st.upper.join("big")).is_err(),
        "a partial copy in the upper layer"
    );
    let left: Vec<String> = names(&st.work.join("work"))
        .into_iter()
        .filter(|n| n != "incompat")
        .collect();
    assert!(left.is_empty(), "leftovers in the work directory: {left:?}");
    assert!(
        std::fs::read(st.m("big")).unwrap() == data,
        "the lower file changed"
    );
    disk.heal().unwrap();
    assert!(
        !disk.is_aborted(),
        "ext4 aborted its journal on a data write error"
    );
    let mut f = OpenOptions::new().append(true).open(st.m("big")).unwrap();
    f.write_all(b"!").unwrap();
    assert_eq!(fsync(&f), 0);
    drop(f);
    assert_eq!(
        std::fs::metadata(st.upper.join("big")).unwrap().len(),
        size as u64 + 1
    );
    drop(m);
}

/// E3: a neighbour mount on the same upper filesystem is never told this
/// mount's errors, and its sync does not write back this mount's data.
#[test]
fn e3_neighbour_isolated() {
    let s = Scratch::new().unwrap();
    let mut disk = FailingDisk::new().unwrap();
    let a = disk_stack(&disk, &s, "a");
    let b = disk_stack(&disk, &s, "b");
    let ma = mount_rovl(&a, "");
    let mb = mount_rovl(&b, "");
    put(&a.m("small"), "a's data");
    put(&b.m("big"), "b");
    let a_root = File::open(&a.mnt).unwrap();
    let a_small = rw(&a.m("small"));
    assert_eq!(fsync(&a_small), 0);
    // B holds unsynced data; A's sync must leave it alone.
    {
        let mut f = rw(&b.m("big"));
        grow(&mut f, 8 << 20);
    }
    assert_eq!(ioc_sync(&a_root), 0);
    let dirty = {
        let f = File::open(b.upper.join("big")).unwrap();
        rovl::sys::cachestat(f.as_fd()).unwrap().dirty
    };
    assert!(
        dirty > 1000,
        "A's sync wrote back B's data (dirty pages left: {dirty})"
    );
    // B's data fails to reach the disk; A is never told.
    disk.balloon().unwrap();
    assert_eq!(rovl_sync(&b.mnt).0, 1);
    assert_eq!(ioc_sync(&a_root), 0, "A told of B's error");
    assert_eq!(fsync(&a_small), 0, "A's file told of B's error");
    assert_eq!(rovl_sync(&a.mnt).0, 0);
    disk.heal().unwrap();
    drop((a_root, a_small, ma, mb));
}

/// E4: rovl never calls syncfs on the upper filesystem, so a host process
/// that opens it after rovl synced (and was told) still gets the error.
#[test]
fn e4_host_late_opener_still_told() {
    let (_s, mut disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    put(&st.m("f"), "start");
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    disk.balloon().unwrap();
    {
        let mut a = rw(&st.m("f"));
        grow(&mut a, 1 << 20);
    }
    assert_eq!(rovl_sync(&st.mnt).0, 1, "rovl is told");
    let host = File::open(disk.path()).unwrap();
    let r = rustix::fs::syncfs(&host);
    assert!(
        matches!(r, Err(e) if e.raw_os_error() == ENOSPC || e.raw_os_error() == EIO),
        "the host's syncfs after rovl synced: {r:?}"
    );
    disk.heal().unwrap();
    drop((host, m));
}

/// E5: a volatile mount never makes anything durable, is told its own
/// background errors without forcing writeback, then fails every fsync
/// (that errno) and every sync (EIO) until unmount; its neighbour is not
/// affected.
#[test]
fn e5_volatile_sticky_and_isolated() {
    let s = Scratch::new().unwrap();
    let mut disk = FailingDisk::new().unwrap();
    let a = disk_stack(&disk, &s, "a");
    let b = disk_stack(&disk, &s, "b");
    let ma = mount_rovl(&a, "volatile");
    let mb = mount_rovl(&b, "fsync=0");
    put(&a.m("f"), &"a".repeat(200_000));
    put(&b.m("g"), "b");
    put(&b.m("h"), "b2");
    let af = rw(&a.m("f"));
    assert_eq!(fsync(&af), 0);
    let cut = disk.power_cut().unwrap();
    let cut_len = std::fs::metadata(cut.path().join("a/upper/f"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(cut_len < 200_000, "a volatile fsync made data durable");
    drop(cut);
    disk.balloon().unwrap();
    {
        let mut g = rw(&b.m("g"));
        grow(&mut g, 1 << 20);
    }
    kick_writeback(&b.upper.join("g"));
    let bg = ro(&b.m("g"));
    wait_for("B's volatile check to fail", || fsync(&bg) == ENOSPC);
    assert_eq!(fsync(&bg), ENOSPC, "sticky");
    assert_eq!(
        fdatasync(&ro(&b.m("h"))),
        ENOSPC,
        "every fsync on the mount"
    );
    assert_eq!(ioc_sync(&bg), EIO, "every sync returns EIO");
    assert_eq!(ioc_sync(&bg), EIO, "still");
    assert_eq!(fsync(&af), 0, "the neighbour is not affected");
    assert_eq!(ioc_sync(&af), 0);
    disk.heal().unwrap();
    drop((af, bg, ma, mb));
}

fn kernel_mount_refused(st: &Stack) -> bool {
    let lowers: Vec<&Path> = st.lowers.iter().map(PathBuf::as_path).collect();
    let k = s_mnt(st);
    KernelOverlay::mount(&lowers, Some(&st.upper), Some(&st.work), "", &k).is_err()
}

fn s_mnt(st: &Stack) -> PathBuf {
    let p = st.mnt.with_file_name("kmnt");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn mount_fails(st: &Stack, extra: &str) -> String {
    let mut opts = st.opts();
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    let (code, out, err) = run_rovl([
        std::ffi::OsStr::new("-o"),
        opts.as_ref(),
        st.mnt.as_os_str(),
    ]);
    assert_ne!(code, 0, "mount was allowed: {out}{err}");
    assert!(
        !testbed::mounts()
            .unwrap()
            .iter()
            .any(|m| m.mount_point == st.mnt)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// E6: after a clean unmount a volatile stack is mounted again in the same
/// boot and adopts the files it left dirty; the kernel's marker keeps
/// kernel overlayfs away meanwhile.
#[test]
fn e6_reuse_after_clean_unmount() {
    let (_s, _disk, st) = failing_stack();
    let m = mount_rovl(&st, "volatile");
    put(&st.m("f"), "dirty data");
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    drop(m);
    assert!(st.work.join("work/incompat/volatile/dirty").exists());
    assert!(
        kernel_mount_refused(&st),
        "kernel overlayfs must refuse a volatile workdir"
    );
    let m = mount_rovl(&st, "volatile");
    let stat = status(&st.mnt);
    let dirty: Vec<&str> = stat["dirty"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert!(dirty.contains(&"/f"), "adopted dirty files: {dirty:?}");
    assert_eq!(get(&st.m("f")), "dirty data");
    drop(m);
}

/// E6: a normal mount after a clean volatile session syncs the files it
/// adopts before it serves anything, in both io modes. That sync must not
/// reach into the mount (nobody answers yet): once it did, with the
/// writeback cache, and then with passthrough too, and the mount hung.
#[test]
fn e6_a_normal_mount_syncs_what_it_adopts_before_it_serves() {
    for mode in passthrough_modes() {
        let (_s, disk, st) = failing_stack();
        let m = mount_rovl(&st, &format!("volatile,{mode}"));
        put(&st.m("f"), "dirty data");
        let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
        assert_eq!(code, 0, "{mode}: {err}");
        drop(m);
        let m = mount_rovl(&st, mode);
        let (tx, rx) = std::sync::mpsc::channel();
        let f = st.m("f");
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(f));
        });
        // A hung daemon: its end (the mount's drop, as the panic unwinds)
        // frees the reader.
        let read = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("{mode}: the mount after the volatile session does not answer")
            });
        assert_eq!(read.unwrap(), "dirty data", "{mode}");
        assert!(
            !st.work.join("work/incompat/volatile").exists(),
            "{mode}: the adopted files were synced, the marker goes"
        );
        let cut = disk.power_cut().unwrap();
        assert_eq!(get(&cut.path().join("a/upper/f")), "dirty data", "{mode}");
        drop((cut, m));
    }
}

/// E6: a daemon killed with SIGKILL (or a reboot) makes the next mount of
/// a volatile stack fail with a message that says why and how to recover.
#[test]
fn e6_refused_after_kill_or_reboot() {
    let (_s, _disk, st) = failing_stack();
    let mut m = mount_rovl(&st, "volatile");
    put(&st.m("f"), "dirty data");
    m.kill9().unwrap();
    drop(m);
    let err = mount_fails(&st, "volatile");
    assert!(err.contains("did not end cleanly"), "{err}");
    assert!(
        err.contains("incompat/volatile"),
        "says how to recover: {err}"
    );
    // A normal-mode mount is refused too: the data may be gone.
    let err = mount_fails(&st, "");
    assert!(err.contains("did not end cleanly"), "{err}");
    // Recovery as the message says; then a reboot (another boot id).
    std::fs::remove_dir_all(st.work.join("work/incompat/volatile")).unwrap();
    let m = mount_rovl(&st, "volatile");
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    drop(m);
    let rec = st.work.join("rovl/session.json");
    let text = get(&rec);
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["boot_id"] = serde_json::Value::from("00000000-0000-0000-0000-000000000000");
    std::fs::write(&rec, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = mount_fails(&st, "volatile");
    assert!(err.contains("rebooted"), "{err}");
}

/// E6/E7: a volatile session that met a writeback error ends with a
/// non-zero `rovl umount`, and the next mount is refused.
#[test]
fn e6_refused_after_errors() {
    let (_s, mut disk, st) = failing_stack();
    let m = mount_rovl(&st, "volatile");
    put(&st.m("f"), "x");
    disk.balloon().unwrap();
    {
        let mut a = rw(&st.m("f"));
        grow(&mut a, 1 << 20);
    }
    kick_writeback(&st.upper.join("f"));
    wait_for("the volatile check", || error_count(&st.mnt) >= 1);
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 1, "umount must report the lost data: {err}");
    assert!(err.contains("ENOSPC"), "{err}");
    drop(m);
    disk.heal().unwrap();
    let err = mount_fails(&st, "volatile");
    assert!(err.contains("writeback error"), "{err}");
}

fn journal(work: &Path) -> Vec<serde_json::Value> {
    let raw = std::fs::read(work.join("rovl/journal")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("journal line {l:?}: {e}; the whole journal: {raw:?}"))
        })
        .collect()
}

/// E7: every error goes to the journal (time, mount-relative path, errno
/// name), which survives the daemon's death; `rovl status WORKDIR` reads it.
#[test]
fn e7_journal_survives_daemon_death() {
    let (_s, mut disk, st) = failing_stack();
    let mut m = mount_rovl(&st, "");
    put(&st.m("dir/f"), "x");
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    disk.balloon().unwrap();
    {
        let mut a = rw(&st.m("dir/f"));
        grow(&mut a, 1 << 20);
        assert_eq!(fsync(&a), ENOSPC);
    }
    m.kill9().unwrap();
    drop(m);
    disk.heal().unwrap();
    let j = journal(&st.work);
    assert_eq!(j.len(), 1, "{j:?}");
    assert_eq!(j[0]["path"], "/dir/f");
    assert_eq!(j[0]["errno"], "ENOSPC");
    assert!(j[0]["time"].as_str().unwrap().ends_with('Z'));
    let (code, out, err) = run_rovl([Path::new("status"), &st.work, Path::new("--json")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mounted"], false);
    assert_eq!(v["journal"][0]["path"], "/dir/f");
    let (_, human, _) = run_rovl([Path::new("status"), &st.work]);
    assert!(human.contains("ENOSPC /dir/f"), "{human}");
}

/// A normal unmount syncs; an error there reaches the journal and makes
/// `rovl umount` fail.
#[test]
fn final_sync_error_fails_umount() {
    let (_s, mut disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    put(&st.m("f"), "x");
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    disk.balloon().unwrap();
    {
        let mut a = rw(&st.m("f"));
        grow(&mut a, 1 << 20);
    }
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("final sync failed"), "{err}");
    drop(m);
    disk.heal().unwrap();
    let j = journal(&st.work);
    assert!(j.iter().any(|e| e["path"] == "/f"), "{j:?}");
}

/// A clean normal unmount makes data durable (the final sync).
#[test]
fn clean_unmount_is_durable() {
    let (_s, disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    put(&st.m("f"), "kept");
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    drop(m);
    let cut = disk.power_cut().unwrap();
    assert_eq!(get(&cut.path().join("a/upper/f")), "kept");
}

/// xfstests' fsync-err, in our words: N descriptors each write; the disk
/// fills; each writes again; every descriptor's fsync fails once and then
/// succeeds; after healing, a reopened file works.
#[test]
fn fsync_err_many_descriptors() {
    for mode in passthrough_modes() {
        let (_s, mut disk, st) = failing_stack();
        let m = mount_rovl(&st, mode);
        let p = st.m("f");
        put(&p, "");
        let mut fds: Vec<File> = (0..4).map(|_| rw(&p)).collect();
        for (i, f) in fds.iter_mut().enumerate() {
            f.seek(SeekFrom::Start(i as u64 * 4096)).unwrap();
            f.write_all(&[i as u8; 4096]).unwrap();
        }
        for f in &fds {
            assert_eq!(fsync(f), 0, "{mode}: before the disk fills");
        }
        disk.balloon().unwrap();
        for (i, f) in fds.iter_mut().enumerate() {
            f.seek(SeekFrom::Start((i as u64 + 8) * 65536)).unwrap();
            f.write_all(&[i as u8; 65536]).unwrap();
        }
        for (i, f) in fds.iter().enumerate() {
            assert_eq!(fsync(f), ENOSPC, "{mode}: descriptor {i} told");
        }
        for (i, f) in fds.iter().enumerate() {
            assert_eq!(fsync(f), 0, "{mode}: descriptor {i} told once");
        }
        drop(fds);
        disk.heal().unwrap();
        let mut g = rw(&p);
        grow(&mut g, 8192);
        assert_eq!(fsync(&g), 0, "{mode}: after healing");
        let mut buf = vec![0u8; 4096];
        g.seek(SeekFrom::Start(4096)).unwrap();
        g.read_exact(&mut buf).unwrap();
        assert!(
            buf.iter().all(|b| *b == 1),
            "{mode}: data written before the error survives"
        );
        drop((g, m));
    }
}

/// fsync-err with more files open for writing than the daemon may hold
/// descriptors for (hard limit 256): rovl closes and reopens its own
/// descriptors behind the kernel's open files, and still every descriptor
/// of the mount is told of the error exactly once.
#[test]
fn fsync_err_with_more_writers_than_daemon_descriptors() {
    const FILES: usize = 300;
    for mode in passthrough_modes() {
        let (_s, mut disk, st) = failing_stack();
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg("--nofile=256:256")
            .arg(rovl_bin())
            .arg("-o")
            .arg(format!("{},{mode}", st.opts()))
            .arg(&st.mnt);
        let m = testbed::FuseMount::spawn(cmd, &st.mnt).unwrap();
        let mut fds: Vec<File> = (0..FILES)
            .map(|i| {
                let p = st.m(&format!("f{i}"));
                put(&p, "");
                rw(&p)
            })
            .collect();
        for f in fds.iter_mut() {
            f.write_all(&[1u8; 4096]).unwrap();
        }
        for (i, f) in fds.iter().enumerate() {
            assert_eq!(fsync(f), 0, "{mode}: file {i} before the disk fills");
        }
        disk.balloon().unwrap();
        for f in fds.iter_mut() {
            grow(f, 65536);
        }
        for (i, f) in fds.iter().enumerate() {
            assert_eq!(fsync(f), ENOSPC, "{mode}: file {i} told");
        }
        for (i, f) in fds.iter().enumerate() {
            assert_eq!(fsync(f), 0, "{mode}: file {i} told once");
        }
        let mut buf = [0u8; 4096];
        for (i, f) in fds.iter_mut().enumerate() {
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_exact(&mut buf).unwrap();
            assert!(buf.iter().all(|b| *b == 1), "{mode}: file {i} data");
        }
        drop(fds);
        disk.heal().unwrap();
        drop(m);
    }
}

/// A status longer than the ioctl's fixed reply (16 KiB; here 80 dirty
/// files with 600-byte paths) is cut to fit, not refused: `rovl status`
/// lists as many files as fit and says the list is cut, and `rovl umount`,
/// which asks the daemon for its status first, still returns its result.
#[test]
fn a_status_too_long_for_the_reply_is_cut_to_fit() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let m = mount_rovl(&st, "");
    let deep = ["d".repeat(200), "e".repeat(200), "f".repeat(200)].join("/");
    std::fs::create_dir_all(st.m(&deep)).unwrap();
    let files: Vec<File> = (0..80)
        .map(|i| {
            let mut f = File::create(st.m(&format!("{deep}/{i}"))).unwrap();
            f.write_all(b"x").unwrap();
            f
        })
        .collect();
    let v = status(&st.mnt);
    assert_eq!(v["dirty_files"], 80, "{v}");
    assert_eq!(v["dirty_truncated"], true);
    let listed = v["dirty"].as_array().unwrap();
    assert!(!listed.is_empty() && listed.len() < 64, "{}", listed.len());
    assert!(
        listed[0]["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/{deep}/"))
    );
    drop(files);
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    drop(m);
}

/// A failing disk under many files with long names: more writeback errors
/// than the status reply can hold. The status keeps the oldest ones that
/// fit, says the list is cut and how many there were; the journal keeps
/// every one.
#[test]
fn many_writeback_errors_are_counted_and_listed_as_far_as_they_fit() {
    let (_s, mut disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    let dir = "d".repeat(200);
    std::fs::create_dir(st.m(&dir)).unwrap();
    let names: Vec<String> = (0..100)
        .map(|i| format!("{dir}/{i:03}{}", "n".repeat(240)))
        .collect();
    for n in &names {
        put(&st.m(n), "start");
    }
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    disk.balloon().unwrap();
    for n in &names {
        grow(&mut rw(&st.m(n)), 64 << 10);
    }
    assert_eq!(rovl_sync(&st.mnt).0, 1);
    let v = status(&st.mnt);
    let total = v["errors_total"].as_u64().unwrap();
    assert!(total >= 100, "{v}");
    assert_eq!(v["errors_truncated"], true);
    let listed = v["errors"].as_array().unwrap();
    assert!(
        !listed.is_empty() && (listed.len() as u64) < total,
        "{}",
        listed.len()
    );
    assert!(
        listed[0]["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/{dir}/"))
    );
    let journal = std::fs::read_to_string(st.work.join("rovl/journal")).unwrap();
    assert_eq!(journal.lines().count() as u64, total);
    let (_code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert!(!err.contains("could not be asked"), "{err}");
    disk.heal().unwrap();
    drop(m);
}

/// `rovl status` shows dirty files and bytes, mode, and the last sync.
#[test]
fn status_reports_dirty_data_and_last_sync() {
    let (_s, _disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    {
        let mut f = File::create(st.m("f")).unwrap();
        f.write_all(&[7; 65536]).unwrap();
        let v = status(&st.mnt);
        assert_eq!(v["mode"], "normal");
        assert_eq!(v["dirty_files"], 1);
        assert!(v["dirty_bytes"].as_u64().unwrap() >= 65536, "{v}");
        assert!(v["last_sync"].is_null());
    }
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    // The kernel sends the close's RELEASE asynchronously: if it comes
    // during the sync, the file may still have been open for writing when
    // it was fsynced, and stays in the dirty set until the next sync.
    wait_for("a sync to leave nothing dirty", || {
        status(&st.mnt)["dirty_files"] == 0 || rovl_sync(&st.mnt).0 != 0
    });
    let v = status(&st.mnt);
    assert_eq!(v["dirty_files"], 0, "{v}");
    assert_eq!(v["last_sync"]["result"], "ok");
    assert!(v["errors"].as_array().unwrap().is_empty());
    drop(m);
}

/// Four threads of random operations ([`support::random_operation`]:
/// writes, copy-ups, renames, fsyncs, syncs, status requests ...) on a
/// disk that is healthy, then fails every new block, then is healed, in
/// both io modes: no request hangs, the daemon survives, every writeback
/// error it records is one a failing disk gives (EIO, ENOSPC, or EROFS
/// once ext4 gave up its journal; never one of the daemon's own failures
/// taken for one), and once healed a sync succeeds (the first may still
/// report what failed, E2) and the unmount is clean.
#[test]
fn random_operations_while_the_disk_fails_and_heals() {
    for mode in passthrough_modes() {
        let seed = support::seed_from_env("ROVL_STRESS_SEED");
        let s = Scratch::new().unwrap();
        let mut disk = FailingDisk::new().unwrap();
        let st = random_stack_on(&disk, &s);
        let mut m = mount_rovl(&st, mode);
        let pid = m.daemon_pids()[0];
        let ctx = format!("{mode}, seed {seed}");
        let phase = std::sync::atomic::AtomicUsize::new(0);
        let finished = std::sync::atomic::AtomicUsize::new(0);
        let hung = std::thread::scope(|sc| {
            for w in 0..4 {
                let (st, phase, finished) = (&st, &phase, &finished);
                sc.spawn(move || {
                    let mut r = difftest::rng::Rng::new(seed, w);
                    while phase.load(std::sync::atomic::Ordering::Relaxed) < 3 {
                        let _ = support::random_operation(&mut r, st);
                    }
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            std::thread::sleep(Duration::from_millis(1500));
            disk.balloon().unwrap();
            phase.store(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1500));
            disk.heal().unwrap();
            phase.store(2, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1000));
            phase.store(3, std::sync::atomic::Ordering::Relaxed);
            let done = support::wait_for(Duration::from_secs(60), || {
                finished.load(std::sync::atomic::Ordering::SeqCst) == 4
            });
            if !done {
                // Frees the callers stuck in requests the daemon never answers.
                m.kill9().unwrap();
            }
            !done
        });
        assert!(!hung, "{ctx}: requests hung");
        assert!(support::alive(pid), "{ctx}: the daemon died");
        let v = status(&st.mnt);
        for e in v["errors"].as_array().unwrap() {
            let errno = e["errno"].as_str().unwrap();
            assert!(
                matches!(errno, "EIO" | "ENOSPC" | "EROFS"),
                "{ctx}: a writeback error no disk gives: {e}"
            );
        }
        eprintln!(
            "{ctx}: {} writeback errors, journal aborted: {}",
            v["errors_total"],
            disk.is_aborted()
        );
        if disk.is_aborted() {
            // ext4 gave up its journal: nothing can succeed any more.
            drop(m);
            continue;
        }
        let (first, _) = rovl_sync(&st.mnt);
        let (second, err) = rovl_sync(&st.mnt);
        assert!(
            first == 0 || second == 0,
            "{ctx}: no sync succeeded after the disk healed: {err}"
        );
        let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
        assert_eq!(code, 0, "{ctx}: {err}");
        let log = std::fs::read_to_string(st.work.join("rovl/rovl.log")).unwrap_or_default();
        assert!(!log.contains("panic"), "{ctx}: {log}");
        drop(m);
    }
}

/// E1, E2 and E3 under concurrency, with an exact oracle. On mount A,
/// writer threads append to, overwrite, truncate, fsync and sync six of
/// eight files while the disk fails (new blocks, and for the files made
/// in the upper layer the blocks they already had) and heals; the odd
/// files start in the lower layer and are copied up by the writers'
/// opens; other threads open, fsync and close late observers. Passive
/// observers, opened on every file and on A's root before the disk failed
/// and left alone until the end, must then be told exactly what rovl's
/// error journal says happened: an observer of a file with a recorded
/// error fails its first fsync and succeeds its second; an observer of a
/// file without one succeeds; A's root fails one sync iff any error was
/// recorded. Mount B on the same disk, which writes nothing while the disk
/// fails, fsyncs and syncs throughout and is never told anything.
#[test]
fn concurrent_writers_leave_every_passive_observer_told_exactly_what_happened() {
    observers_told_after_a_race(Race::default());
}

/// The same race, and the writers also rename the files over each other
/// and remove and recreate them, so passive observers end up holding
/// files under other names or under none. Paths no longer say which file
/// an error hit, so the oracle goes by file identity: a passive observer
/// of a file some writer was told an error on must be told too, both
/// observers of a file agree, each is told at most once, and the two
/// files no writer touches are never told.
#[test]
fn passive_observers_are_told_through_renames_and_removals() {
    observers_told_after_a_race(Race {
        churn: true,
        ..Race::default()
    });
}

/// The same race with more files open than the daemon may keep
/// descriptors for (a hard limit of 128: it held under 64 while the test
/// had over 100 files open): rovl parks and reopens the upper files of
/// open files and of dirty ones throughout, and every passive observer is
/// still told exactly once.
#[test]
fn passive_observers_are_told_when_the_daemon_is_short_of_descriptors() {
    observers_told_after_a_race(Race {
        files: 48,
        nofile: Some(128),
        ..Race::default()
    });
}

/// The same race, with the lower files copied up only once the disk
/// fails: a copy-up that fails is its caller's error, not a writeback
/// error, so observers of a file whose copy-up failed are told nothing
/// (unless a later copy-up succeeded and its data then failed).
#[test]
fn passive_observers_of_lower_files_copied_up_while_the_disk_fails() {
    observers_told_after_a_race(Race {
        late_copy_up: true,
        ..Race::default()
    });
}

/// E5 under concurrency. On a volatile mount, writers race a failing and
/// healing disk while the host starts writeback of their upper files, as
/// its flusher would. Afterwards the mount is either clean or sticky, and
/// which is exactly what rovl recorded: with an error recorded, the first
/// sync fails with EIO and from then on every fsync and fdatasync (held
/// observers, new opens) returns that errno and every sync EIO, again and
/// again; with none, everything succeeds. Mount B on the same disk, in
/// normal mode, is never told anything.
#[test]
fn a_volatile_mount_is_sticky_after_a_race_exactly_when_an_error_was_met() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    for mode in passthrough_modes() {
        let seed = support::seed_from_env("ROVL_STRESS_SEED");
        let ctx = format!("volatile, {mode}, seed {seed}");
        let s = Scratch::new().unwrap();
        let mut disk = FailingDisk::new().unwrap();
        let a = disk_stack(&disk, &s, "a");
        let b = disk_stack(&disk, &s, "b");
        let ma = mount_rovl(&a, &format!("volatile,{mode}"));
        let mb = mount_rovl(&b, mode);
        let names: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
        for n in &names {
            put(&a.m(n), &"x".repeat(64 << 10));
        }
        put(&b.m("quiet"), "b's data");
        assert_eq!(rovl_sync(&b.mnt).0, 0, "{ctx}");
        let held: Vec<File> = names.iter().map(|n| ro(&a.m(n))).collect();
        let a_root = File::open(&a.mnt).unwrap();
        let b_quiet = ro(&b.m("quiet"));
        let b_told = std::sync::Mutex::new(Vec::new());
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for w in 0..4u64 {
                let (a, names, stop) = (&a, &names, &stop);
                sc.spawn(move || {
                    let mut r = difftest::rng::Rng::new(seed, w);
                    while !stop.load(Relaxed) {
                        let Ok(mut f) = OpenOptions::new()
                            .write(true)
                            .open(a.m(r.pick::<String>(names)))
                        else {
                            continue;
                        };
                        // Appends need new blocks: they fail while the
                        // disk does. Paced, so that the disk's room is
                        // not used up before the failures.
                        let at = if r.chance(50) {
                            SeekFrom::End(0)
                        } else {
                            SeekFrom::Start(r.below(64 << 10))
                        };
                        let len = r.range(1, 16 << 10) as usize;
                        let _ = f.seek(at).and_then(|_| f.write_all(&vec![0x6b; len]));
                        if r.chance(30) {
                            let _ = f.sync_all();
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
            {
                let (a, names, stop) = (&a, &names, &stop);
                sc.spawn(move || {
                    while !stop.load(Relaxed) {
                        for n in names {
                            if let Ok(f) = File::open(a.upper.join(n)) {
                                let _ = rovl::sys::start_writeback(f.as_fd());
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
            let (b, b_quiet, b_told, stop) = (&b, &b_quiet, &b_told, &stop);
            sc.spawn(move || quiet_neighbour(b, b_quiet, stop, b_told));
            fail_and_heal(&mut disk, &AtomicBool::new(false), stop);
        });
        if disk.is_aborted() {
            eprintln!("{ctx}: journal aborted, nothing to check");
            drop((held, a_root, b_quiet, ma, mb));
            continue;
        }
        let first_sync = ioc_sync(&a_root);
        let v = status(&a.mnt);
        let sticky = v["volatile_error"].as_str().map(|name| match name {
            "ENOSPC" => ENOSPC,
            "EIO" => EIO,
            other => panic!("{ctx}: a volatile error no disk gives: {other}"),
        });
        let recorded = v["errors_total"].as_u64().unwrap();
        eprintln!("{ctx}: first sync {first_sync}, sticky {sticky:?}, {recorded} errors recorded");
        assert_eq!(sticky.is_some(), recorded > 0, "{ctx}: {v}");
        let (want_fsync, want_sync) = match sticky {
            Some(e) => (e, EIO),
            None => (0, 0),
        };
        assert_eq!(first_sync, want_sync, "{ctx}: the first sync");
        for round in 0..2 {
            for (n, f) in names.iter().zip(&held) {
                assert_eq!(fsync(f), want_fsync, "{ctx}, round {round}: fsync of {n}");
                assert_eq!(
                    fdatasync(&ro(&a.m(n))),
                    want_fsync,
                    "{ctx}: a new open of {n}"
                );
            }
            assert_eq!(ioc_sync(&a_root), want_sync, "{ctx}, round {round}: sync");
        }
        // rovl's syncs checked every file the mount wrote, which marks
        // any error there as seen: one the host still finds unseen is
        // one rovl missed.
        assert_none_missed(&a.upper, &names, &ctx);
        let told = b_told.lock().unwrap();
        assert!(told.is_empty(), "{ctx}: B was told of A's errors: {told:?}");
        assert_eq!(status(&b.mnt)["errors_total"], 0, "{ctx}");
        drop(told);
        drop((held, a_root, b_quiet, ma, mb));
    }
}

/// E5 short of descriptors: with more files open for writing than the
/// daemon may keep descriptors for, rovl closes its own descriptors of
/// some of them (they stay open through the kernel). Their writes (with
/// passthrough the daemon never sees them) failing in background
/// writeback must still make the volatile mount sticky, and leave no
/// error unseen.
#[test]
fn a_volatile_mount_short_of_descriptors_still_sees_background_errors() {
    for mode in passthrough_modes() {
        let s = Scratch::new().unwrap();
        let mut disk = FailingDisk::new().unwrap();
        let a = disk_stack(&disk, &s, "a");
        let _m = mount_rovl_limited(&a, &format!("volatile,{mode}"), 128);
        let names: Vec<String> = (0..80).map(|i| format!("f{i}")).collect();
        let mut files: Vec<File> = names
            .iter()
            .map(|n| {
                put(&a.m(n), "x");
                rw(&a.m(n))
            })
            .collect();
        disk.balloon().unwrap();
        for f in &mut files {
            grow(f, 64 << 10);
            f.flush().unwrap();
        }
        if mode == "passthrough=off" {
            // The kernel's cached pages reach the upper files.
            for f in &files {
                let _ = rovl::sys::start_writeback(f.as_fd());
            }
        }
        // Written back (and failed), without anyone being told.
        wait_for("the writeback to end", || {
            names.iter().all(|n| {
                let f = File::open(a.upper.join(n)).unwrap();
                let _ = rovl::sys::start_writeback(f.as_fd());
                let c = rovl::sys::cachestat(f.as_fd()).unwrap();
                c.dirty + c.writeback == 0
            })
        });
        disk.heal().unwrap();
        let root = File::open(&a.mnt).unwrap();
        assert_eq!(ioc_sync(&root), EIO, "{mode}: the sync after the errors");
        assert_eq!(fsync(&files[0]), ENOSPC, "{mode}: sticky");
        // The sync checked every file: an error still unseen was missed.
        assert_none_missed(&a.upper, &names, mode);
        drop((files, root));
    }
}

/// Mount B's part in the races: until `stop`, every 5 ms, an fsync of
/// `held` (its file `quiet`), of a new open of it, and a sync of the
/// mount. B writes nothing meanwhile, so whatever fails is pushed to
/// `told` as a wrong answer.
fn quiet_neighbour(
    b: &Stack,
    held: &File,
    stop: &std::sync::atomic::AtomicBool,
    told: &std::sync::Mutex<Vec<String>>,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (what, e) in [
            ("fsync of a held file", fsync(held)),
            ("fsync of a new open", fsync(&ro(&b.m("quiet")))),
            ("sync", ioc_sync(held)),
        ] {
            if e != 0 {
                told.lock().unwrap().push(format!("{what}: errno {e}"));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The disk's part in the races: healthy for 0.5 s, failing for 1.5 s
/// (`failing` set meanwhile), healed for 0.5 s, then `stop`.
fn fail_and_heal(
    disk: &mut FailingDisk,
    failing: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::sleep(Duration::from_millis(500));
    disk.balloon().unwrap();
    failing.store(true, Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    disk.heal().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
}

/// What varies between the races of the tests above.
#[derive(Clone, Copy)]
struct Race {
    /// Writers also rename the files over each other and remove and
    /// recreate them.
    churn: bool,
    /// Writers leave the lower files alone until the disk fails, so that
    /// their copy-ups race the failures.
    late_copy_up: bool,
    /// How many files are observed (the last two are never written).
    files: usize,
    /// The daemon's open-file limit.
    nofile: Option<u32>,
}

impl Default for Race {
    fn default() -> Race {
        Race {
            churn: false,
            late_copy_up: false,
            files: 8,
            nofile: None,
        }
    }
}

/// The race of the tests above, in both io modes.
fn observers_told_after_a_race(race: Race) {
    for mode in passthrough_modes() {
        observers_race_in(mode, race);
    }
}

/// The race of the tests above, in io mode `mode`.
fn observers_race_in(mode: &str, race: Race) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let Race {
        churn,
        late_copy_up,
        files,
        nofile,
    } = race;
    let written = files - 2;
    let seed = support::seed_from_env("ROVL_STRESS_SEED");
    let ctx = format!(
        "{mode}, churn {churn}, late copy-up {late_copy_up}, {files} files, \
         nofile {nofile:?}, seed {seed}"
    );
    let s = Scratch::new().unwrap();
    let mut disk = FailingDisk::new().unwrap();
    let a = disk_stack(&disk, &s, "a");
    let b = disk_stack(&disk, &s, "b");
    let ma = match nofile {
        Some(n) => mount_rovl_limited(&a, mode, n),
        None => mount_rovl(&a, mode),
    };
    let mb = mount_rovl(&b, mode);
    let names: Vec<String> = (0..files).map(|i| format!("obs/f{i}")).collect();
    std::fs::create_dir_all(a.lower(0, "obs")).unwrap();
    for (i, n) in names.iter().enumerate() {
        let p = if i % 2 == 1 { a.lower(0, n) } else { a.m(n) };
        put(&p, &"x".repeat(64 << 10));
    }
    // A first copy-up into obs/ marks it impure: an xattr that no longer
    // fits in the inode, so ext4 gives it a block of its own, which must
    // not be new while the disk fails (writing it back would abort the
    // journal).
    put(&a.lower(0, "obs/primer"), "");
    std::fs::set_permissions(a.m("obs/primer"), std::fs::Permissions::from_mode(0o600)).unwrap();
    put(&b.m("quiet"), "b's data");
    assert_eq!(rovl_sync(&a.mnt).0, 0, "{ctx}");
    assert_eq!(rovl_sync(&b.mnt).0, 0, "{ctx}");
    for n in names.iter().step_by(2) {
        disk.punch_holes_under(a.upper.join(n)).unwrap();
    }
    // A lower file's observers are both read-only: a read-write open
    // would copy it up before the race.
    let passive: Vec<[File; 2]> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let second = if i % 2 == 1 { ro(&a.m(n)) } else { rw(&a.m(n)) };
            [ro(&a.m(n)), second]
        })
        .collect();
    let ino = |f: &File| f.metadata().unwrap().ino();
    let passive_inos: Vec<u64> = passive.iter().map(|[x, _]| ino(x)).collect();
    let a_root = File::open(&a.mnt).unwrap();
    let b_quiet = ro(&b.m("quiet"));
    let b_told = std::sync::Mutex::new(Vec::new());
    // Inode numbers of files a writer's fsync or fdatasync failed on.
    let writers_told = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let stop = AtomicBool::new(false);
    let failing = AtomicBool::new(false);
    std::thread::scope(|sc| {
        for w in 0..4u64 {
            let (a, names, stop, failing, writers_told) =
                (&a, &names, &stop, &failing, &writers_told);
            sc.spawn(move || {
                let mut r = difftest::rng::Rng::new(seed, w);
                let mut f: Option<File> = None;
                while !stop.load(Relaxed) {
                    let i = r.below(written as u64) as usize;
                    if late_copy_up && i % 2 == 1 && !failing.load(Relaxed) {
                        continue;
                    }
                    let n = &names[i];
                    // Renames and removals start with the failures, so
                    // that the files held passively have been written.
                    if churn && failing.load(Relaxed) && r.chance(1) {
                        if r.chance(50) {
                            let to = &names[r.below(written as u64) as usize];
                            let _ = std::fs::rename(a.m(n), a.m(to));
                        } else if std::fs::remove_file(a.m(n)).is_ok() {
                            let _ = std::fs::write(a.m(n), [0x21; 8192]);
                        }
                        continue;
                    }
                    if f.is_none() || r.chance(10) {
                        f = OpenOptions::new().read(true).write(true).open(a.m(n)).ok();
                    }
                    let Some(file) = f.as_mut() else { continue };
                    let synced = match r.below(10) {
                        0..=3 => {
                            let len = r.range(1, 64 << 10) as usize;
                            let _ = file
                                .seek(SeekFrom::End(0))
                                .and_then(|_| file.write_all(&vec![0x6b; len]));
                            continue;
                        }
                        4..=5 => {
                            let at = r.below(64 << 10);
                            let _ = file
                                .seek(SeekFrom::Start(at))
                                .and_then(|_| file.write_all(&[0x33; 4096]));
                            continue;
                        }
                        6 => {
                            let _ = file.set_len(r.range(32 << 10, 96 << 10));
                            continue;
                        }
                        7 => fsync(file),
                        8 => fdatasync(file),
                        _ => {
                            let _ = ioc_sync(file);
                            continue;
                        }
                    };
                    if synced != 0 {
                        writers_told.lock().unwrap().insert(ino(file));
                    }
                }
            });
        }
        for w in 0..2u64 {
            let (a, names, stop) = (&a, &names, &stop);
            sc.spawn(move || {
                let mut r = difftest::rng::Rng::new(seed, 100 + w);
                while !stop.load(Relaxed) {
                    if let Ok(f) = File::open(a.m(r.pick::<String>(names))) {
                        let _ = f.sync_all();
                    }
                }
            });
        }
        let (b, b_quiet, b_told, stop) = (&b, &b_quiet, &b_told, &stop);
        sc.spawn(move || quiet_neighbour(b, b_quiet, stop, b_told));
        fail_and_heal(&mut disk, &failing, stop);
    });
    if disk.is_aborted() {
        // ext4 gave up its journal: every later sync fails for all.
        eprintln!("{ctx}: journal aborted, nothing to check");
        drop((passive, a_root, b_quiet, ma, mb));
        return;
    }
    let outcome: Vec<[i32; 4]> = passive
        .iter()
        .map(|[x, y]| [fsync(x), fdatasync(y), fsync(x), fdatasync(y)])
        .collect();
    let root = [ioc_sync(&a_root), ioc_sync(&a_root)];
    // Every error is in the journal (the status lists only the first).
    let entries = journal(&a.work);
    let recorded: std::collections::BTreeSet<String> = entries
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    let total = status(&a.mnt)["errors_total"].as_u64().unwrap();
    let strange: Vec<_> = entries
        .iter()
        .filter(|e| !matches!(e["errno"].as_str(), Some("ENOSPC" | "EIO")))
        .collect();
    assert!(
        strange.is_empty(),
        "{ctx}: writeback errors no disk gives: {strange:?}"
    );
    let writers_told = writers_told.into_inner().unwrap();
    let held_and_told = passive_inos
        .iter()
        .filter(|i| writers_told.contains(i))
        .count();
    eprintln!(
        "{ctx}: {total} errors recorded on {recorded:?}, writers told on {held_and_told} \
         passively held files, observers told {outcome:?}, root {root:?}"
    );
    let mut wrong = Vec::new();
    for (i, (n, o)) in names.iter().zip(&outcome).enumerate() {
        // What the failing disk gives: ENOSPC, EIO when ext4 gives up.
        let disk_errno = |e: i32| e == ENOSPC || e == EIO;
        let told_once = disk_errno(o[0]) && disk_errno(o[1]) && o[2] == 0 && o[3] == 0;
        let untold = o.iter().all(|e| *e == 0);
        let writer_told = writers_told.contains(&passive_inos[i]);
        if !churn && writer_told && !recorded.contains(n) {
            // E7: every error anyone was told of is in the journal.
            wrong.push(format!("{n}: a writer was told, the journal has nothing"));
        }
        let must_be_told = writer_told || (!churn && recorded.contains(n));
        let must_be_untold = i >= written || (!churn && !must_be_told);
        let right = if must_be_told {
            told_once
        } else if must_be_untold {
            untold
        } else {
            told_once || untold
        };
        if !right {
            wrong.push(format!(
                "{n}: must be told {must_be_told}, must not be {must_be_untold}, \
                 observers' fsyncs {o:?}"
            ));
        }
    }
    if root[1] != 0 || (root[0] != 0) != (total > 0) {
        wrong.push(format!("A's root: {total} errors recorded, syncs {root:?}"));
    }
    assert!(wrong.is_empty(), "{ctx}: {wrong:#?}");
    let told = b_told.lock().unwrap();
    assert!(told.is_empty(), "{ctx}: B was told of A's errors: {told:?}");
    assert_eq!(status(&b.mnt)["errors_total"], 0, "{ctx}");
    assert_eq!(rovl_sync(&a.mnt).0, 0, "{ctx}: a fresh sync after healing");
    // That sync checked every file the mount wrote, which marks any error
    // there as seen: one the host still finds unseen is one rovl missed.
    let left: Vec<String> = names
        .iter()
        .filter(|n| {
            // Removed ones may have left a whiteout there.
            std::fs::symlink_metadata(a.upper.join(n)).is_ok_and(|m| m.is_file())
        })
        .cloned()
        .collect();
    assert_none_missed(&a.upper, &left, &ctx);
    drop((passive, a_root, b_quiet, ma, mb));
}

/// E6 over and over: volatile sessions of four threads of random
/// operations, each ended by `rovl umount`, each next one adopting what the
/// last left dirty (files since renamed, replaced, linked or removed
/// among them), and at last a normal mount that syncs it all. Every
/// remount shows exactly the tree the last session left, every unmount
/// is clean, and no writeback error is recorded on a healthy disk.
#[test]
fn volatile_sessions_of_random_operations_reuse_cleanly() {
    let seed = support::seed_from_env("ROVL_STRESS_SEED");
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    support::lay_out_for_random_operations(&st);
    let mut left: Option<std::collections::BTreeMap<String, support::Obj>> = None;
    let mut left_inos = std::collections::BTreeMap::new();
    // st_ino of every path (st_dev is the mount's own, new each time).
    let inos = |mnt: &Path| -> std::collections::BTreeMap<String, u64> {
        support::inodes(mnt)
            .into_iter()
            .map(|(p, (ino, _))| (p, ino))
            .collect()
    };
    for session in 0..4u64 {
        let ctx = format!("seed {seed}, session {session}");
        let m = mount_rovl(&st, "volatile");
        if let Some(before) = &left {
            let d = support::diff("left", before, "found", &support::view(&st.mnt));
            assert!(d.is_empty(), "{ctx}: the remount shows another tree:\n{d}");
            let d = support::diff("left", &left_inos, "found", &inos(&st.mnt));
            assert!(
                d.is_empty(),
                "{ctx}: inode numbers changed across the remount:\n{d}"
            );
        }
        std::thread::scope(|sc| {
            for w in 0..4 {
                let st = &st;
                sc.spawn(move || {
                    let mut r = difftest::rng::Rng::new(seed, session * 4 + w);
                    let until = Instant::now() + Duration::from_millis(700);
                    while Instant::now() < until {
                        let _ = support::random_operation(&mut r, st);
                    }
                });
            }
        });
        left = Some(support::view(&st.mnt));
        left_inos = inos(&st.mnt);
        let v = status(&st.mnt);
        assert_eq!(v["errors_total"], 0, "{ctx}: {v}");
        let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
        assert_eq!(code, 0, "{ctx}: {err}");
        drop(m);
    }
    let m = mount_rovl(&st, "");
    let d = support::diff(
        "left",
        left.as_ref().unwrap(),
        "found",
        &support::view(&st.mnt),
    );
    assert!(
        d.is_empty(),
        "seed {seed}: the normal remount shows another tree:\n{d}"
    );
    let d = support::diff("left", &left_inos, "found", &inos(&st.mnt));
    assert!(
        d.is_empty(),
        "seed {seed}: inode numbers changed across the remount:\n{d}"
    );
    let (code, err) = rovl_sync(&st.mnt);
    assert_eq!(code, 0, "seed {seed}: {err}");
    let (code, _, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "seed {seed}: {err}");
    drop(m);
}

/// E2: ext4 hands the inode number of a removed file out again. A new
/// file that gets the number of a removed file this mount had dirtied
/// (and parked: written back, its descriptor closed) is still tracked as
/// itself, so `rovl sync` makes its data durable.
#[test]
fn a_new_file_with_a_removed_files_inode_number_is_synced() {
    const N: usize = 32;
    let (_s, _disk, st) = failing_stack();
    let m = mount_rovl(&st, "");
    for i in 0..N {
        put(&st.m(&format!("old{i}")), "old data");
    }
    // Written back by the host; the daemon's background pass (every
    // second) then parks them.
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(2500));
    let ino = |name: &str| std::fs::metadata(st.upper.join(name)).unwrap().ino();
    let old: Vec<u64> = (0..N).map(|i| ino(&format!("old{i}"))).collect();
    for i in 0..N {
        std::fs::remove_file(st.m(&format!("old{i}"))).unwrap();
    }
    for i in 0..N {
        put(&st.m(&format!("new{i}")), &"new data ".repeat(8000));
    }
    let reused: Vec<String> = (0..N)
        .map(|i| format!("new{i}"))
        .filter(|n| old.contains(&ino(n)))
        .collect();
    assert!(
        !reused.is_empty(),
        "ext4 gave no new file a removed file's number: nothing tested"
    );
    assert_eq!(rovl_sync(&st.mnt).0, 0);
    for n in &reused {
        let f = File::open(st.upper.join(n)).unwrap();
        let dirty = rovl::sys::cachestat(f.as_fd()).unwrap().dirty;
        assert_eq!(
            dirty, 0,
            "{n} (a removed file's inode number): rovl sync left {dirty} pages dirty"
        );
    }
    eprintln!(
        "{} of {N} new files reused a removed file's number",
        reused.len()
    );
    drop(m);
}
