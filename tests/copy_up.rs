//! Copy-up (SPEC §2): what lands in the upper layer keeps the lower
//! object's data, mode (setuid included), owner, times and xattrs (file
//! capabilities included), parents are copied up first with their own
//! attributes, concurrent writers share one copy, and a daemon killed in
//! the middle leaves no partial file in the upper layer. The kernel's copy
//! of the same lower objects is the reference.

mod common;
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use support::*;

/// A valid v2 file capability: cap_net_raw, permitted + effective.
const CAP_NET_RAW_EP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x00, 0x20, 0x00, 0x00, // permitted[0]: 1 << 13
    0x00, 0x00, 0x00, 0x00, // inheritable[0]
    0x00, 0x00, 0x00, 0x00, // permitted[1]
    0x00, 0x00, 0x00, 0x00, // inheritable[1]
];

/// An object on disk as copy-up must keep it: the snapshot, mtime, and
/// xattrs without the overlay's own. (atime is copied too, but reading the
/// lower file for the copy moves it under relatime.)
#[derive(Debug, PartialEq, Eq)]
struct Real {
    obj: Obj,
    mtime: (i64, i64),
}

fn real(p: &Path) -> Real {
    let mut obj = support::obj(p).unwrap();
    obj.xattrs.retain(|k, _| !k.starts_with("trusted.overlay."));
    let m = lstat(p).unwrap();
    Real {
        obj,
        mtime: (m.mtime(), m.mtime_nsec()),
    }
}

fn lower_objects(st: &Stack) {
    let l = |r: &str| st.lower(0, r);
    put(&l("a/b/c/file"), "file data");
    put(&l("a/b/c/other"), "other");
    put(&l("suid"), "#!/bin/true\n");
    put(&l("caps"), "binary");
    put(&l("empty"), "");
    symlink("a/b/c/file", &l("link")).unwrap();
    mknod(&l("fifo"), libc::S_IFIFO | 0o620, 0).unwrap();
    mknod(&l("dev"), libc::S_IFBLK | 0o600, libc::makedev(7, 99)).unwrap();
    for (p, mode, owner) in [
        ("a", 0o751, (11, 12)),
        ("a/b", 0o2775, (21, 22)),
        ("a/b/c", 0o1733, (31, 32)),
        ("a/b/c/file", 0o640, (41, 42)),
        ("suid", 0o4755, (0, 0)),
        ("caps", 0o755, (51, 52)),
        ("empty", 0o000, (61, 62)),
        ("fifo", 0o620, (71, 72)),
        ("dev", 0o600, (81, 82)),
    ] {
        lchown(&l(p), owner.0, owner.1).unwrap();
        chmod(&l(p), mode).unwrap();
    }
    lchown(&l("link"), 91, 92).unwrap();
    setxattr(&l("a/b/c/file"), "user.note", b"kept");
    setxattr(&l("a/b/c/file"), "trusted.secret", b"kept too");
    setxattr(&l("a/b"), "user.dir", b"dir xattr");
    setxattr(&l("link"), "trusted.linkx", b"on the link");
    setxattr(&l("caps"), "security.capability", &CAP_NET_RAW_EP);
    // user::rw- user:1234:r-- group::r-- mask::r-- other::--- (mode 0640)
    let mut acl = vec![2u8, 0, 0, 0];
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1234),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    setxattr(&l("a/b/c/file"), "system.posix_acl_access", &acl);
    setxattr(&l("a/b"), "system.posix_acl_default", &acl);
    // Times last (chown and setxattr change ctime only, chmod too).
    for (i, p) in [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/file",
        "suid",
        "caps",
        "empty",
        "fifo",
        "dev",
        "link",
    ]
    .iter()
    .enumerate()
    {
        let t = 1_000_000_000 + i as i64 * 1000;
        utimes(&l(p), (t, 111 + i as i64), (t + 500, 222 + i as i64)).unwrap();
    }
}

/// Triggers copy-up of each object without changing what copy-up keeps
/// (xattrs the test then ignores, or an open for writing without a write).
fn trigger(root: &Path) {
    for p in ["a/b/c/file", "suid", "caps", "empty"] {
        drop(open(&root.join(p), libc::O_WRONLY).unwrap());
    }
    for p in ["fifo", "dev", "link"] {
        lset(&root.join(p), "trusted.trigger", b"1", 0).unwrap();
    }
}

#[test]
fn copy_up_keeps_data_mode_owner_times_and_xattrs_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    lower_objects(&st);
    let k = st.twin(s.path());
    let km = mount_kernel(&k, "");
    let rm = mount_rovl(&st, "");
    trigger(&k.mnt);
    trigger(&st.mnt);
    drop(rm);
    drop(km);
    let objs = [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/file",
        "suid",
        "caps",
        "empty",
        "link",
        "fifo",
        "dev",
    ];
    let mut mine = BTreeMap::new();
    let mut kern = BTreeMap::new();
    for p in objs {
        let (mut a, mut b) = (real(&st.upper.join(p)), real(&k.upper.join(p)));
        for x in [&mut a, &mut b] {
            x.obj.xattrs.remove("trusted.trigger");
        }
        mine.insert(p.to_string(), a);
        kern.insert(p.to_string(), b);
    }
    let d = diff("rovl upper", &mine, "kernel upper", &kern);
    assert!(d.is_empty(), "copies differ:\n{d}");
    // And both keep what the lower layer had (the kernel could be wrong too).
    for p in ["a/b/c/file", "suid", "caps", "empty", "link", "fifo", "dev"] {
        let mut low = real(&st.lower(0, p));
        low.obj.xattrs.remove("trusted.trigger");
        assert_eq!(mine[p], low, "{p}: the copy lost something");
    }
    // The lower layer itself is untouched.
    assert!(getxattr(&st.lower(0, "link"), "trusted.trigger").is_none());
}

#[test]
fn copy_up_of_a_deep_file_copies_its_parents_first() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    lower_objects(&st);
    let _m = mount_rovl(&st, "");
    assert!(!exists(&st.upper.join("a")));
    write(&st.m("a/b/c/file"), b"new data").unwrap();
    for p in ["a", "a/b", "a/b/c"] {
        let (u, l) = (real(&st.upper.join(p)), real(&st.lower(0, p)));
        assert_eq!(u.obj.perm, l.obj.perm, "{p} mode");
        assert_eq!((u.obj.uid, u.obj.gid), (l.obj.uid, l.obj.gid), "{p} owner");
        assert_eq!(u.obj.xattrs, l.obj.xattrs, "{p} xattrs");
    }
    // Siblings are not copied up.
    assert!(!exists(&st.upper.join("a/b/c/other")));
    assert_eq!(get(&st.upper.join("a/b/c/file")), "new data");
    assert_eq!(get(&st.lower(0, "a/b/c/file")), "file data");
    // The work directory is clean afterwards.
    assert_eq!(names(&st.work.join("work")), Vec::<String>::new());
}

#[test]
fn concurrent_writers_of_one_lower_file_share_one_copy() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "shared"), &"-".repeat(64));
    for i in 0..8 {
        put(&st.lower(0, &format!("dir/f{i}")), "x");
    }
    let _m = mount_rovl(&st, "");
    let p = st.m("shared");
    std::thread::scope(|sc| {
        for i in 0..8u8 {
            let p = p.clone();
            let dir = st.m("dir");
            sc.spawn(move || {
                let f = open(&p, libc::O_WRONLY).unwrap();
                f.write_all_at(&[b'0' + i; 8], u64::from(i) * 8).unwrap();
                // Copy-ups of siblings race with the parent's copy-up too.
                write(&dir.join(format!("f{i}")), &[b'0' + i]).unwrap();
            });
        }
    });
    let want: String = (0..8).map(|i| format!("{i}").repeat(8)).collect();
    assert_eq!(get(&p), want);
    for i in 0..8 {
        assert_eq!(get(&st.m(&format!("dir/f{i}"))), format!("{i}"));
    }
    assert_eq!(names(&st.work.join("work")), Vec::<String>::new());
}

/// SIGKILL while a big file is being copied up: the upper layer holds the
/// complete copy or nothing, never a partial file; the next mount cleans
/// the work directory and shows the lower file intact.
#[test]
fn a_daemon_killed_during_copy_up_leaves_no_partial_file() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let size: u64 = 192 << 20;
    {
        let f = std::fs::File::create(st.lower(0, "big")).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        for i in 0..size >> 20 {
            f.write_all_at(&chunk, i << 20).unwrap();
        }
    }
    let mut saw_partial_in_work = false;
    for delay_ms in [5u64, 30] {
        let mut m = mount_rovl(&st, "passthrough=off");
        let pid = daemon_pid(&mut m);
        let p = st.m("big");
        let writer = std::thread::spawn(move || {
            // Fails with ENOTCONN once the daemon is gone.
            let _ = open(&p, libc::O_WRONLY).map(|f| f.write_all_at(b"!", 0));
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: killing the daemon we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = m.kill9();
        writer.join().unwrap();
        drop(m);
        if let Ok(md) = lstat(&st.upper.join("big")) {
            assert_eq!(md.len(), size, "partial copy in the upper layer");
        }
        saw_partial_in_work |= names(&st.work.join("work")).iter().any(|n| n != "incompat");
        let _m = mount_rovl(&st, "");
        let left: Vec<String> = names(&st.work.join("work"));
        assert!(left.is_empty(), "leftovers after remount: {left:?}");
        let f = open(&st.m("big"), libc::O_RDONLY).unwrap();
        assert_eq!(f.metadata().unwrap().len(), size);
        let mut b = [0u8; 2];
        f.read_exact_at(&mut b, (size - 1) - 1).unwrap();
        let i = size - 2;
        assert_eq!(
            b,
            [
                (i % (1 << 20) % 253) as u8,
                ((i + 1) % (1 << 20) % 253) as u8
            ]
        );
        drop(f);
        let _ = std::fs::remove_file(st.upper.join("big"));
    }
    eprintln!("copy-up interrupted in the work directory at least once: {saw_partial_in_work}");
}

#[test]
fn copy_up_by_truncate_to_zero_copies_no_data_but_everything_else() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    lower_objects(&st);
    let _m = mount_rovl(&st, "");
    truncate(&st.m("a/b/c/file"), 0).unwrap();
    let (u, l) = (
        real(&st.upper.join("a/b/c/file")),
        real(&st.lower(0, "a/b/c/file")),
    );
    assert_eq!(u.obj.data.as_deref(), Some(&b""[..]));
    assert_eq!(u.obj.perm, l.obj.perm);
    assert_eq!((u.obj.uid, u.obj.gid), (l.obj.uid, l.obj.gid));
    assert_eq!(u.obj.xattrs, l.obj.xattrs);
}

/// Truncating or writing a file removes its file capability, also for root
/// (`security_inode_need_killpriv`); the setuid bit stays for root. Through
/// the overlay, copy-up included, the same as under the kernel.
#[test]
fn writes_after_copy_up_drop_file_capabilities_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    lower_objects(&st);
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let caps = |l: &mut Log, tag: &str| {
            l.r(
                format!("{tag}: caps"),
                lget(&r.join("caps"), "security.capability"),
            );
            l.v(
                format!("{tag}: suid mode"),
                lstat(&r.join("suid")).unwrap().mode() & 0o7777,
            );
        };
        caps(&mut l, "before");
        l.r(
            "open caps O_TRUNC",
            open(&r.join("caps"), libc::O_WRONLY | libc::O_TRUNC),
        );
        l.r("write suid", {
            let f = open(&r.join("suid"), libc::O_WRONLY).unwrap();
            f.write_all_at(b"#", 0)
        });
        caps(&mut l, "after");
        l
    });
}

/// A file made through the overlay has no file capability (rovl answers
/// that without asking the upper filesystem), until one is set; a write or
/// a chown then drops it, as under the kernel.
#[test]
fn file_capabilities_of_new_files_behave_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    lower_objects(&st);
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let f = r.join("a/b/c/new");
        l.r("create", write(&f, b"new file"));
        l.r("caps of new", lget(&f, "security.capability"));
        l.r("write", {
            let o = open(&f, libc::O_WRONLY).unwrap();
            o.write_all_at(b"N", 0)
        });
        l.r(
            "set caps",
            lset(&f, "security.capability", &CAP_NET_RAW_EP, 0),
        );
        l.r("caps after set", lget(&f, "security.capability"));
        l.r("write again", {
            let o = open(&f, libc::O_WRONLY).unwrap();
            o.write_all_at(b"M", 1)
        });
        l.r("caps after write", lget(&f, "security.capability"));
        l.r(
            "set caps again",
            lset(&f, "security.capability", &CAP_NET_RAW_EP, 0),
        );
        l.r("chown", lchown(&f, 7, 7));
        l.r("caps after chown", lget(&f, "security.capability"));
        l.r("list", llist(&f));
        l
    });
}

#[test]
fn copy_up_keeps_many_and_large_xattrs_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let f = st.lower(0, "many");
    put(&f, "x");
    for i in 0..60 {
        setxattr(
            &f,
            &format!("user.attr{i:02}"),
            format!("value {i}").as_bytes(),
        );
    }
    let d = st.lower(0, "dir");
    mkdirs(&d);
    // ext4 holds all xattrs of an inode in one block (without ea_inode).
    setxattr(&d, "user.large", &[0xab; 1800]);
    setxattr(&d, "trusted.large", &[0xcd; 1800]);
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.r("chmod many", chmod(&r.join("many"), 0o600));
        l.r("create in dir", write(&r.join("dir/new"), b"n"));
        l.r("list many", llist(&r.join("many")).map(|v| v.len()));
        l.r(
            "get large",
            lget(&r.join("dir"), "user.large").map(|v| v.len()),
        );
        l
    });
    let up = llist(&st.upper.join("many")).unwrap();
    assert_eq!(up.iter().filter(|n| n.starts_with("user.attr")).count(), 60);
    assert_eq!(
        getxattr(&st.upper.join("dir"), "trusted.large").map(|v| v.len()),
        Some(1800)
    );
}

/// A copy-up that does not fit in the upper filesystem fails with ENOSPC,
/// as under the kernel, and leaves nothing behind: no partial file in the
/// upper layer, nothing in the work directory, the lower file intact.
#[test]
fn a_copy_up_that_does_not_fit_fails_with_enospc_and_leaves_nothing() {
    let s = Scratch::new().unwrap();
    let mut st = Stack::under(s.path(), 1);
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    mkdirs(&st.lower(0, "dir"));
    std::fs::write(st.lower(0, "dir/big"), &data).unwrap();
    put(&st.lower(0, "dir/small"), "small");
    // Upper and work on a 1 MiB tmpfs, for rovl and for the kernel.
    let small_fs = |name: &str| {
        let d = s.mkdir(name).unwrap();
        testbed::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
                .arg(&d),
        );
        mkdirs(&d.join("upper"));
        mkdirs(&d.join("work"));
        d
    };
    let r = small_fs("rfs");
    st.upper = r.join("upper");
    st.work = r.join("work");
    let kfs = small_fs("kfs");
    let k = Stack {
        lowers: st.lowers.clone(),
        upper: kfs.join("upper"),
        work: kfs.join("work"),
        mnt: s.mkdir("kmnt").unwrap(),
    };
    let _km = mount_kernel(&k, "");
    let _rm = mount_rovl(&st, "");
    let script = |root: &Path| {
        let mut l = Log::default();
        l.r(
            "open big for writing",
            open(&root.join("dir/big"), libc::O_WRONLY),
        );
        l.r("chmod big", chmod(&root.join("dir/big"), 0o600));
        l.r(
            "read big",
            std::fs::read(root.join("dir/big")).map(|d| d.len()),
        );
        l.r("write small", write(&root.join("dir/small"), b"fits"));
        l.v("dir", names(&root.join("dir")));
        l
    };
    let (a, b) = (script(&st.mnt), script(&k.mnt));
    assert_eq!(a, b);
    assert_eq!(a.errno("open big for writing"), libc::ENOSPC);
    assert!(
        !exists(&st.upper.join("dir/big")),
        "partial copy in the upper layer"
    );
    let left: Vec<String> = names(&st.work.join("work"));
    assert!(left.is_empty(), "left in the work directory: {left:?}");
    assert_eq!(std::fs::read(st.m("dir/big")).unwrap(), data);
    assert_eq!(get(&st.m("dir/small")), "fits");
}

/// Copying a big file up takes a while; renames and creates elsewhere in
/// the mount must not wait for it. They used to: the copy-up held the
/// rename lock (shared) while it copied the data, a rename waited for it,
/// and every create, unlink or copy-up behind the waiting rename waited
/// too. Now the data is copied into the work directory first, and the
/// lock is taken only to publish the copy.
#[test]
fn renames_and_creates_do_not_wait_for_a_big_copy_up() {
    use std::io::Write;
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let big = st.lower(0, "big");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..384 {
            f.write_all(&chunk).unwrap();
        }
    }
    let _m = mount_rovl(&st, "");
    // The lower file in the host's cache: the copy is then bound by the
    // writes to the upper layer, and takes long enough to watch.
    std::fs::read(&big).unwrap();
    let (copy_took, worst) = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let t = std::time::Instant::now();
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(st.m("big"))
                .unwrap();
            (t.elapsed(), f)
        });
        std::thread::sleep(Duration::from_millis(30));
        let mut worst = Duration::ZERO;
        let mut i = 0;
        while !writer.is_finished() {
            let t = std::time::Instant::now();
            write(&st.m(&format!("new{i}")), b"x").unwrap();
            std::fs::rename(st.m(&format!("new{i}")), st.m(&format!("renamed{i}"))).unwrap();
            worst = worst.max(t.elapsed());
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let (took, mut f) = writer.join().unwrap();
        f.write_all(b"+").unwrap();
        (took, worst)
    });
    eprintln!("copy-up {copy_took:?}, worst create + rename {worst:?}");
    assert!(
        worst * 3 < copy_took,
        "a create and rename took {worst:?} while the copy-up took {copy_took:?}"
    );
    let data = std::fs::read(st.m("big")).unwrap();
    let lower = std::fs::read(st.lower(0, "big")).unwrap();
    assert_eq!(lower.len(), 384 << 20, "the lower file is untouched");
    assert!(data.len() == lower.len() + 1 && data[..lower.len()] == lower[..]);
    assert_eq!(data.last(), Some(&b'+'));
    let left = work_leftovers(&st);
    assert!(left.is_empty(), "left in the work directory: {left:?}");
}

/// Eight writers opening the same big lower file at once: its data is
/// copied ahead of the copy-up (without the rename lock), and only once,
/// not once per writer (which would also take eight times the room in the
/// upper filesystem while the copies are built). Measured by what the
/// upper filesystem's disk was given to write.
#[test]
fn concurrent_writers_of_a_big_lower_file_copy_its_data_once() {
    use std::io::Write;
    const SIZE: usize = 64 << 20;
    let s = Scratch::new().unwrap();
    let disk = testbed::Ext4Disk::new(1 << 30).unwrap();
    let mut st = Stack::under(s.path(), 1);
    st.upper = disk.path().join("upper");
    st.work = disk.path().join("work");
    mkdirs(&st.upper);
    mkdirs(&st.work);
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    write(&st.lower(0, "big"), &data).unwrap();
    let _m = mount_rovl(&st, "");
    std::fs::read(st.lower(0, "big")).unwrap();
    let dev = disk
        .device()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Sectors written to the disk so far (field 7 of its stat).
    let written = || -> u64 {
        let stat = std::fs::read_to_string(format!("/sys/block/{dev}/stat")).unwrap();
        stat.split_whitespace()
            .nth(6)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 512
    };
    let before = written();
    std::thread::scope(|sc| {
        for w in 0..8u8 {
            let st = &st;
            sc.spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(st.m("big"))
                    .unwrap();
                f.write_all(&[b'a' + w]).unwrap();
            });
        }
    });
    let (code, _, err) = run_rovl([Path::new("sync"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    let copied = written() - before;
    assert!(
        copied < 2 * SIZE as u64,
        "{copied} bytes written to the upper disk for one copy of {SIZE}"
    );
    let got = std::fs::read(st.m("big")).unwrap();
    assert_eq!(got.len(), SIZE + 8);
    assert!(got[..SIZE] == data[..]);
    let mut tail = got[SIZE..].to_vec();
    tail.sort_unstable();
    assert_eq!(tail, b"abcdefgh");
    let left = work_leftovers(&st);
    assert!(left.is_empty(), "left in the work directory: {left:?}");
}
