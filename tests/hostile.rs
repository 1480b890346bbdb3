//! Hostile layer content (SPEC §2/§4, issue item 7): symlinks and odd names
//! in a layer are data, never paths the daemon walks; redirects and origins
//! cannot lead outside a layer; a work directory made of symlinks is not
//! followed; layers changed underneath a live mount never crash the daemon.
//! Kernel overlayfs is the oracle where it reads the same layers.

mod common;
mod support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use difftest::rng::Rng;
use support::*;

/// A directory outside every layer, with a canary that must survive.
fn outside(s: &Scratch) -> std::path::PathBuf {
    let o = s.mkdir("outside").unwrap();
    put(&o.join("canary"), "must stay");
    put(&o.join("sub/deep"), "must stay too");
    o
}

fn assert_outside_intact(o: &Path) {
    assert_eq!(names(o), vec!["canary", "sub"], "outside was changed");
    assert_eq!(get(&o.join("canary")), "must stay");
    assert_eq!(get(&o.join("sub/deep")), "must stay too");
}

#[test]
fn symlinks_in_layers_are_shown_as_symlinks_and_copied_up_as_symlinks() {
    let s = Scratch::new().unwrap();
    let o = outside(&s);
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "d/x"), "below the symlink");
    symlink(&o, &st.lower(0, "d")).unwrap();
    symlink(o.join("canary"), &st.lower(0, "f")).unwrap();
    symlink("../../../../../../../../..", &st.lower(0, "up")).unwrap();
    symlink("loop", &st.lower(0, "loop")).unwrap();
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.v("root", names(r));
        for n in ["d", "f", "up", "loop"] {
            l.v(
                format!("{n} is symlink"),
                lstat(&p(n)).unwrap().is_symlink(),
            );
            l.r(format!("readlink {n}"), readlink(&p(n)));
        }
        l.r("lchown d", lchown(&p("d"), 1, 1));
        l.r("lchown f", lchown(&p("f"), 1, 1));
        l.r("set xattr on symlink", lset(&p("up"), "trusted.x", b"1", 0));
        l.r("rename symlink", rename2(&p("d"), &p("d2"), 0));
        l.r("unlink symlink", std::fs::remove_file(p("f")));
        l.r("open loop", std::fs::read(p("loop")));
        l
    });
    assert_outside_intact(&o);
    use std::os::unix::fs::MetadataExt as _;
    assert_ne!(
        lstat(&o).unwrap().uid(),
        1,
        "chown went through the symlink"
    );
    assert!(lstat(&st.upper.join("d2")).unwrap().is_symlink());
}

#[test]
fn redirects_through_symlinks_or_dotdot_never_leave_the_layers() {
    let s = Scratch::new().unwrap();
    let o = outside(&s);
    let st = Stack::under(s.path(), 1);
    // The lower layer offers a symlink to the outside directory, and a
    // real directory for comparison.
    symlink(&o, &st.lower(0, "esc")).unwrap();
    symlink(o.parent().unwrap(), &st.lower(0, "parent")).unwrap();
    put(&st.lower(0, "real/inside"), "inside");
    let cases: [(&str, &[u8]); 7] = [
        ("via-symlink", b"/esc"),
        ("via-symlink-deeper", b"/esc/sub"),
        ("via-parent", b"/parent/outside"),
        ("dotdot", b"/../../../../outside"),
        ("relative-dotdot", b".."),
        ("relative-slash", b"../outside"),
        ("absolute-host", o.as_os_str().as_bytes()),
    ];
    for (name, target) in cases {
        let d = st.upper.join(name);
        put(&d.join("own"), "own");
        setxattr(&d, "trusted.overlay.redirect", target);
    }
    let m = mount_rovl(&st, "");
    for (name, target) in cases {
        let shown = try_names(&st.m(name));
        let t = String::from_utf8_lossy(target);
        match &shown {
            Ok(v) => assert!(
                !v.iter()
                    .any(|n| n == "canary" || n == "sub" || n == "outside"),
                "{name} (redirect {t}) shows {v:?}"
            ),
            Err(e) => assert_ne!(
                e.raw_os_error(),
                Some(libc::ENOTCONN),
                "{name}: daemon died"
            ),
        }
        assert!(
            !exists(&st.m(&format!("{name}/canary"))),
            "{name} reached the canary"
        );
    }
    // The mount still works and nothing outside changed.
    assert_eq!(get(&st.m("real/inside")), "inside");
    for (name, _) in cases {
        let _ = std::fs::remove_dir_all(st.m(name));
    }
    drop(m);
    assert_outside_intact(&o);
}

#[test]
fn redirect_loops_and_chains_across_layers_terminate() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 3);
    // l0:a → /b, l1:b → /a, l2:a → /b ...
    for (i, (name, to)) in [("a", "/b"), ("b", "/a"), ("a", "/b")].iter().enumerate() {
        put(&st.lower(i, &format!("{name}/f{i}")), "x");
        setxattr(
            &st.lower(i, name),
            "trusted.overlay.redirect",
            to.as_bytes(),
        );
    }
    put(&st.upper.join("a/up"), "up");
    setxattr(&st.upper.join("a"), "trusted.overlay.redirect", b"/a");
    let k = st.twin(s.path());
    put(&k.upper.join("a/up"), "up");
    setxattr(&k.upper.join("a"), "trusted.overlay.redirect", b"/a");
    let _km = mount_kernel(&k, "");
    let _m = mount_rovl(&st, "");
    let start = std::time::Instant::now();
    let (a, b) = (try_names(&st.m("a")), try_names(&k.mnt.join("a")));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        a.map_err(|e| e.raw_os_error()),
        b.map_err(|e| e.raw_os_error())
    );
    assert_same_view(&st.mnt, &k.mnt);
}

/// Names are bytes: newlines, backslashes, colons, commas, non-UTF-8, the
/// daemon's own temporary-name pattern, near-marker names, 255 bytes.
#[test]
fn odd_names_are_plain_data_like_under_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    let odd: Vec<Vec<u8>> = vec![
        b"new\nline".to_vec(),
        b"back\\slash".to_vec(),
        b"co:lon".to_vec(),
        b"com,ma".to_vec(),
        b" leading space".to_vec(),
        b"-rf".to_vec(),
        b"...".to_vec(),
        b"\xff\xfe not utf-8".to_vec(),
        b"#rovl.1.0".to_vec(),
        format!("#rovl.{}.0", std::process::id()).into_bytes(),
        b".whx".to_vec(),
        b".wh".to_vec(),
        b"incompat".to_vec(),
        b"rovl".to_vec(),
    ];
    for (i, n) in odd.iter().enumerate() {
        let name = os(n);
        let lower = st.lowers[i % 2].join(&name);
        if i % 3 == 0 {
            put(&lower.join("inner"), "dir content");
        } else {
            put(&lower, &format!("file {i}"));
        }
    }
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.v("root", names(r));
        for (i, n) in odd.iter().enumerate() {
            let p = r.join(OsStr::from_bytes(n));
            let tag = String::from_utf8_lossy(n).into_owned();
            l.r(format!("stat {tag}"), lstat(&p).map(|m| m.is_dir()));
            let renamed = r.join(OsStr::from_bytes(&[b"r-", &n[..n.len().min(200)]].concat()));
            l.r(format!("rename {tag}"), rename2(&p, &renamed, 0));
            if i % 3 != 0 {
                l.r(format!("write {tag}"), write(&renamed, b"changed"));
            }
            l.r(format!("create again {tag}"), write(&p, b"again"));
        }
        l.v("root after", names(r));
        l
    });
}

#[test]
fn a_deep_lower_tree_is_copied_up_from_the_bottom() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let mut rel = String::new();
    for i in 0..300 {
        rel.push_str(if i % 2 == 0 { "d/" } else { "e/" });
    }
    put(&st.lower(0, &format!("{rel}leaf")), "deep");
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let leaf = r.join(&rel).join("leaf");
        l.r("read", std::fs::read(&leaf));
        l.r("append", {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&leaf)
                .and_then(|mut f| f.write_all(b"+"))
        });
        l.r("read again", std::fs::read(&leaf));
        l
    });
    assert_eq!(get(&st.upper.join(&rel).join("leaf")), "deep+");
}

#[test]
fn a_big_merged_directory_lists_every_entry_once() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    for i in 0..3000 {
        put(&st.lower(i % 2, &format!("big/e{i:05}")), "");
    }
    // Lower 0 whites out some of lower 1's entries.
    for i in (1..3000).step_by(14) {
        whiteout(&st.lower(0, &format!("big/e{i:05}")));
    }
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let big = r.join("big");
        for i in 0..300 {
            write(&big.join(format!("u{i:04}")), b"").unwrap();
        }
        for i in (1..3000).step_by(11) {
            let _ = std::fs::remove_file(big.join(format!("e{i:05}")));
        }
        let v = names(&big);
        let mut dedup = v.clone();
        dedup.dedup();
        l.v("count", v.len());
        l.v("duplicates", v.len() - dedup.len());
        l.v("names", v);
        l
    });
}

/// WORKDIR/work and WORKDIR/rovl are opened without following symlinks:
/// a work directory made of symlinks to elsewhere is refused and what they
/// point to is left alone.
#[test]
fn symlinks_in_the_workdir_are_not_followed() {
    for which in ["work", "rovl", "work/incompat"] {
        let s = Scratch::new().unwrap();
        let o = outside(&s);
        let st = Stack::under(s.path(), 1);
        put(&st.lower(0, "f"), "f");
        if which == "work/incompat" {
            mkdirs(&st.work.join("work"));
        }
        symlink(&o, &st.work.join(which)).unwrap();
        let (code, _out, err) = run_rovl([
            "-o",
            &format!("{},volatile", st.opts()),
            st.mnt.to_str().unwrap(),
        ]);
        if code == 0 {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&st.mnt)
                .output();
        }
        assert_ne!(
            code, 0,
            "{which}: mounted through a symlinked work directory"
        );
        assert_eq!(err.trim().lines().count(), 1, "{which}: {err}");
        assert!(!mounted_at(&st.mnt));
        assert_outside_intact(&o);
        assert!(lstat(&st.work.join(which)).unwrap().is_symlink());
    }
}

#[test]
fn a_lower_file_replaced_by_a_symlink_after_lookup_is_not_followed() {
    let s = Scratch::new().unwrap();
    let o = outside(&s);
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "f"), "original");
    put(&st.lower(0, "g"), "original g");
    mkdirs(&st.lower(0, "later"));
    let _m = mount_rovl(&st, "");
    assert_eq!(get(&st.m("f")), "original");
    let _ = lstat(&st.m("g")).unwrap();
    // Swap behind the daemon's back.
    std::fs::remove_file(st.lower(0, "f")).unwrap();
    symlink(o.join("canary"), &st.lower(0, "f")).unwrap();
    std::fs::remove_file(st.lower(0, "g")).unwrap();
    symlink(o.join("canary"), &st.lower(0, "g")).unwrap();
    std::fs::remove_dir(st.lower(0, "later")).unwrap();
    symlink(&o, &st.lower(0, "later")).unwrap();
    // Whatever it shows, it never shows the canary's data through the
    // daemon: a held file is the old file, a fresh lookup is a symlink.
    for n in ["f", "g"] {
        if let Ok(d) = std::fs::read(st.m(n)) {
            let is_link = lstat(&st.m(n)).map(|m| m.is_symlink()).unwrap_or(false);
            assert!(
                d != b"must stay" || is_link,
                "{n}: daemon read through the swapped symlink"
            );
        }
    }
    let md = lstat(&st.m("later")).unwrap();
    assert!(md.is_symlink() || md.is_dir());
    if md.is_dir() {
        assert!(!names(&st.m("later")).contains(&"canary".to_string()));
    }
    // Copy-up of the swapped file copies a symlink or the old file, never
    // the canary's content as a regular file.
    let _ = chmod(&st.m("g"), 0o600);
    if let Ok(m) = lstat(&st.upper.join("g")) {
        assert!(m.is_symlink() || get(&st.upper.join("g")) != "must stay");
    }
    assert_outside_intact(&o);
    assert_eq!(lstat(&o.join("canary")).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn layers_changed_under_a_live_mount_never_kill_the_daemon() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    for i in 0..20 {
        put(&st.lower(i % 2, &format!("d{i}/f")), "x");
    }
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    for i in 0..20 {
        let _ = names(&st.m(&format!("d{i}")));
    }
    // Remove, replace, turn into files and devices, while the kernel holds
    // the nodes.
    for i in 0..20 {
        let d = st.lowers[i % 2].join(format!("d{i}"));
        std::fs::remove_dir_all(&d).unwrap();
        match i % 4 {
            0 => {}
            1 => put(&d, "now a file"),
            2 => mknod(&d, libc::S_IFIFO | 0o600, 0).unwrap(),
            _ => put(&d.join("g"), "new dir"),
        }
    }
    for i in 0..20 {
        let p = st.m(&format!("d{i}"));
        let _ = try_names(&p);
        let _ = std::fs::read(p.join("f"));
        let _ = write(&p.join("new"), b"n");
        let _ = chmod(&p, 0o700);
        let _ = std::fs::remove_dir_all(&p);
    }
    let _ = try_names(&st.mnt);
    assert!(alive(pid), "the daemon died");
    assert!(lstat(&st.mnt).is_ok(), "the mount stopped answering");
    write(&st.m("still-works"), b"yes").unwrap();
    assert_eq!(get(&st.m("still-works")), "yes");
}

/// An origin xattr is only a hint for inode numbers: a forged one (garbage,
/// or naming another object of the layers) changes neither data nor the
/// uniqueness of inode numbers.
#[test]
fn forged_origin_xattrs_do_not_alias_objects() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "victim"), "victim data");
    put(&st.upper.join("forged"), "forged data");
    put(&st.upper.join("garbage"), "garbage data");
    // Copy `victim` up once through rovl to learn what an origin looks like,
    // then put the same origin on `forged`.
    {
        let _m = mount_rovl(&st, "");
        chmod(&st.m("victim"), 0o600).unwrap();
    }
    let origin = getxattr(&st.upper.join("victim"), "trusted.overlay.origin")
        .expect("copy-up recorded no origin");
    std::fs::remove_file(st.upper.join("victim")).unwrap();
    setxattr(&st.upper.join("forged"), "trusted.overlay.origin", &origin);
    setxattr(
        &st.upper.join("garbage"),
        "trusted.overlay.origin",
        &[0xfb; 40],
    );
    let _m = mount_rovl(&st, "");
    assert_eq!(get(&st.m("victim")), "victim data");
    assert_eq!(get(&st.m("forged")), "forged data");
    assert_eq!(get(&st.m("garbage")), "garbage data");
    let inos: Vec<u64> = ["victim", "forged", "garbage"]
        .iter()
        .map(|n| lstat(&st.m(n)).unwrap().ino())
        .collect();
    assert_ne!(inos[0], inos[1], "forged origin aliases victim");
    assert_ne!(inos[1], inos[2]);
    assert_ne!(inos[0], inos[2]);
    write(&st.m("forged"), b"changed").unwrap();
    assert_eq!(get(&st.m("victim")), "victim data");
}

/// A 0/0 character device is a whiteout on disk: kernel overlayfs refuses
/// to make one through the mount (EPERM), so a user cannot hide names.
#[test]
fn mknod_of_a_whiteout_device_through_the_mount_matches_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "f"), "lower");
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.r(
            "mknod 0/0 new",
            mknod(&r.join("wh"), libc::S_IFCHR | 0o600, 0),
        );
        l.r(
            "stat it",
            lstat(&r.join("wh")).map(|m| (m.rdev(), m.mode() & 0o170000)),
        );
        l.r("rm f", std::fs::remove_file(r.join("f")));
        l.r(
            "mknod 0/0 over removed lower",
            mknod(&r.join("f"), libc::S_IFCHR | 0o600, 0),
        );
        l.r("stat f", lstat(&r.join("f")).map(|m| m.rdev()));
        l.v("root", names(r));
        l
    });
}

#[test]
fn fifos_sockets_and_devices_in_layers_do_not_block_the_daemon() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    mknod(&st.lower(0, "fifo"), libc::S_IFIFO | 0o666, 0).unwrap();
    mknod(&st.lower(0, "sock"), libc::S_IFSOCK | 0o666, 0).unwrap();
    mknod(
        &st.lower(0, "zero"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 5),
    )
    .unwrap();
    let _m = mount_rovl(&st, "");
    // A reader of a fifo without writers would block in the kernel, not in
    // the daemon: O_NONBLOCK returns at once.
    let f = open(&st.m("fifo"), libc::O_RDONLY | libc::O_NONBLOCK).unwrap();
    drop(f);
    assert_eq!(fails(open(&st.m("sock"), libc::O_RDONLY)), libc::ENXIO);
    let mut z = [1u8; 8];
    use std::os::unix::fs::FileExt;
    open(&st.m("zero"), libc::O_RDONLY)
        .unwrap()
        .read_at(&mut z, 0)
        .unwrap();
    assert_eq!(z, [0u8; 8]);
    chmod(&st.m("fifo"), 0o600).unwrap();
    assert!(exists(&st.upper.join("fifo")));
    assert_eq!(names(&st.mnt), vec!["fifo", "sock", "zero"]);
}

/// Names up to NAME_MAX (255 bytes) work, including those too long to have
/// a `.wh.` twin (252 to 255 bytes).
#[test]
fn names_up_to_255_bytes_work_like_under_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    for n in [250usize, 251, 252, 255] {
        put(&st.lower(0, &"l".repeat(n)), &format!("{n}"));
        put(&st.lower(0, &format!("d{n}/{}", "x".repeat(n))), "in dir");
    }
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.v("root", names(r));
        for n in [250usize, 251, 252, 255] {
            let p = r.join("l".repeat(n));
            l.r(format!("read {n}"), std::fs::read(&p));
            l.v(
                format!("d{n}"),
                try_names(&r.join(format!("d{n}"))).map_err(|e| e.raw_os_error()),
            );
            l.r(format!("create {n}"), write(&r.join("u".repeat(n)), b"u"));
            l.r(format!("unlink {n}"), std::fs::remove_file(&p));
            l.r(format!("recreate {n}"), write(&p, b"again"));
            l.r(
                format!("mkdir {n}"),
                std::fs::create_dir(r.join("m".repeat(n))),
            );
            l.r(
                format!("rename {n}"),
                rename2(&r.join("u".repeat(n)), &r.join("v".repeat(n)), 0),
            );
        }
        l.v("root after", names(r));
        l
    });
}

/// A filesystem mounted on a directory of a layer is not part of the layer:
/// kernel overlayfs shows the directory underneath the mount. rovl must not
/// cross into it either.
#[test]
fn a_mount_inside_a_lower_layer_is_not_crossed() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "sub/under"), "the layer's own file");
    testbed::run(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(st.lower(0, "sub")),
    );
    put(&st.lower(0, "sub/ontop"), "another filesystem");
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.v("sub", names(&r.join("sub")));
        l.r("read ontop", std::fs::read(r.join("sub/ontop")));
        l.r("write into sub", write(&r.join("sub/new"), b"n"));
        l
    });
    assert!(!exists(&st.lower(0, "sub/new")));
}

/// The mountpoint inside a lower layer: the overlay must not reach itself
/// through it (kernel overlayfs shows an empty directory there), and a
/// plain unmount must work.
#[test]
fn a_mountpoint_inside_a_lower_layer_does_not_recurse() {
    let s = Scratch::new().unwrap();
    let st = Stack {
        lowers: vec![s.mkdir("l").unwrap()],
        upper: s.mkdir("upper").unwrap(),
        work: s.mkdir("work").unwrap(),
        mnt: s.mkdir("l/mnt").unwrap(),
    };
    put(&st.lower(0, "f"), "f");
    let mut m = mount_rovl(&st, "");
    m.set_exit_timeout(Duration::from_secs(2));
    assert_eq!(names(&st.mnt), vec!["f", "mnt"]);
    assert_eq!(
        names(&st.m("mnt")),
        Vec::<String>::new(),
        "the mount sees itself"
    );
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
}

/// The same for the upper layer: a filesystem mounted on a directory of the
/// upper layer is not part of it (kernel overlayfs reads and writes the
/// directory underneath), and the mountpoint may sit inside the upper.
#[test]
fn a_mount_inside_the_upper_layer_is_not_crossed() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "f"), "f");
    let k = st.twin(s.path());
    for up in [&st.upper, &k.upper] {
        put(&up.join("sub/under"), "the layer's own file");
        testbed::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(up.join("sub")),
        );
        put(&up.join("sub/ontop"), "another filesystem");
    }
    let _km = mount_kernel(&k, "");
    let _m = mount_rovl(&st, "");
    let script = |r: &Path| {
        let mut l = Log::default();
        l.v("sub", names(&r.join("sub")));
        l.r("read ontop", std::fs::read(r.join("sub/ontop")));
        l.r("write into sub", write(&r.join("sub/new"), b"n"));
        l.v("sub after", names(&r.join("sub")));
        l
    };
    assert_eq!(script(&st.mnt), script(&k.mnt));
    assert!(!exists(&st.upper.join("sub/new")), "written into the tmpfs");
}

#[test]
fn a_mountpoint_inside_the_upper_layer_does_not_recurse() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "f"), "f");
    mkdirs(&st.upper.join("inner-mnt"));
    let inner = Stack {
        mnt: st.upper.join("inner-mnt"),
        ..st
    };
    let mut m = mount_rovl(&inner, "");
    m.set_exit_timeout(Duration::from_secs(2));
    assert_eq!(
        names(&inner.m("inner-mnt")),
        Vec::<String>::new(),
        "the mount sees itself"
    );
    let (code, _out, err) = run_rovl([Path::new("umount"), &inner.mnt]);
    assert_eq!(code, 0, "{err}");
}

/// The names both sides of the churn test use: three top-level names with
/// three names under each.
fn churn_names() -> Vec<String> {
    let mut v = Vec::new();
    for a in ["a", "b", "c"] {
        v.push(a.to_string());
        for b in ["x", "y", "z"] {
            v.push(format!("{a}/{b}"));
        }
    }
    v
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(p)),
        Ok(_) => drop(std::fs::remove_file(p)),
        Err(_) => {}
    }
}

/// Writes a file without blocking on a fifo that may have taken its name.
fn write_nb(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = open(
        p,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK,
    )?;
    std::io::Write::write_all(&mut f, data)
}

/// One change made directly in a layer root, the way another program
/// (or a broken one) might: objects of every kind appear, vanish and
/// change kind, and overlay markers are set to sense and nonsense.
fn churn_layer(r: &mut Rng, root: &Path, names: &[String]) {
    let rel = r.pick(names).clone();
    let p = root.join(&rel);
    if let Some(parent) = p.parent() {
        if r.below(4) == 0 {
            let _ = std::fs::create_dir_all(parent);
        }
    }
    let _ = match r.below(14) {
        0 | 1 => {
            remove_any(&p);
            Ok(())
        }
        2 => write_nb(&p, &vec![b'L'; r.below(9000) as usize]),
        3 => std::fs::create_dir(&p),
        4 => symlink(
            *r.pick(&["/", "..", "../..", "/etc/passwd", "a/x", "loop", "b"]),
            &p,
        ),
        5 => mknod(&p, libc::S_IFIFO | 0o644, 0),
        6 => mknod(&p, libc::S_IFCHR, 0),
        7 => lset(
            &p,
            "trusted.overlay.opaque",
            *r.pick(&[b"y", b"x", b"n"]),
            0,
        ),
        8 => lset(
            &p,
            "trusted.overlay.redirect",
            r.pick::<&[u8]>(&[b"/c", b"../../..", b"//", b"", b"a/x", b"/a/../../b"]),
            0,
        ),
        9 => lset(&p, "trusted.overlay.origin", &[0, 0xfb, 9, 1, 2, 3], 0),
        10 => {
            let to = root.join(r.pick(names));
            let flags = *r.pick(&[0, libc::RENAME_EXCHANGE, libc::RENAME_NOREPLACE]);
            rename2(&p, &to, flags)
        }
        11 => {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let wh = match r.below(2) {
                0 => p.with_file_name(format!(".wh.{name}")),
                _ => p.with_file_name(".wh..wh..opq"),
            };
            write_nb(&wh, b"")
        }
        12 => write_nb(&p, b"").and_then(|()| {
            lset(&p, "trusted.overlay.whiteout", b"y", 0)?;
            lset(&p, "user.overlay.whiteout", b"y", 0)
        }),
        _ => truncate(&p, r.below(20000) as i64),
    };
}

/// One operation through the mount; every result is acceptable, but each
/// must come back.
fn use_mount(r: &mut Rng, mnt: &Path, names: &[String]) {
    let p = mnt.join(r.pick(names));
    let q = mnt.join(r.pick(names));
    let _ = match r.below(16) {
        0 => try_names(&p).map(drop),
        1 => lstat(&p).map(drop),
        // Non-blocking opens: a fifo may turn up at any name.
        2 => open(&p, libc::O_RDONLY | libc::O_NONBLOCK)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut Vec::new()).map(drop)),
        3 => open(&p, libc::O_WRONLY | libc::O_APPEND | libc::O_NONBLOCK).and_then(|mut f| {
            std::io::Write::write_all(&mut f, b"appended")?;
            f.sync_all()
        }),
        4 => write_nb(&p, b"written"),
        5 => std::fs::create_dir(&p),
        6 => std::fs::remove_file(&p),
        7 => std::fs::remove_dir(&p),
        8 => std::fs::rename(&p, &q),
        9 => chmod(&p, 0o700),
        10 => lset(&p, "user.churn", b"v", 0),
        11 => link(&p, &q),
        12 => symlink("target", &p),
        13 => truncate(&p, 3),
        14 => llist(&p).map(drop),
        _ => readlink(&p).map(drop),
    };
}

/// Layers changed underneath a live mount are undefined behaviour (SPEC
/// §2), but never a crash: for three seconds one thread changes the two
/// lower layers and the upper one at random while two threads use the
/// mount at random. The daemon must answer throughout, log no panic, and
/// unmount cleanly.
///
/// The churn makes symlinks to `/`, `..` and `/etc/passwd` and then
/// writes, truncates and chmods through names that may be those symlinks,
/// as any program would (following them): it runs in a child process
/// chrooted into the scratch directory, where those lead nowhere that
/// matters. The child is this test binary again
/// ([`churn_in_a_chroot_child_process`]).
#[test]
fn random_layer_churn_under_random_use_never_panics_the_daemon() {
    let seed = seed_from_env("ROVL_CHURN_SEED");
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "churn_in_a_chroot_child_process"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHURN_ROOT, s.path())
        .env("ROVL_CHURN_SEED", seed.to_string())
        .spawn()
        .unwrap();
    let done = wait_for(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(
        done,
        "seed {seed}: the churn hung (a request never answered?)"
    );
    assert!(status.success(), "seed {seed}: the churn process failed");
    assert!(alive(pid), "seed {seed}: the daemon died");
    write(&st.m("still-works"), b"yes").unwrap();
    assert_eq!(get(&st.m("still-works")), "yes", "seed {seed}");
    // Every path the daemon reports is one of the names above: a node
    // that became its own ancestor would show a path of thousands.
    let (code, out, err) = run_rovl([Path::new("status"), st.mnt.as_path(), Path::new("--json")]);
    assert_eq!(code, 0, "seed {seed}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for d in v["dirty"].as_array().unwrap() {
        let p = d["path"].as_str().unwrap();
        assert!(p.len() < 100, "seed {seed}: {p}");
    }
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    let log = std::fs::read_to_string(st.work.join("rovl/rovl.log")).unwrap_or_default();
    assert!(!log.contains("panic"), "seed {seed}: {log}");
    assert_eq!(code, 0, "seed {seed}: {err}\n{log}");
    drop(m);
}

/// Where [`churn_in_a_chroot_child_process`] chroots to: the scratch
/// directory holding the stack (`l0`, `l1`, `upper`, `mnt`).
const CHURN_ROOT: &str = "ROVL_CHURN_ROOT";

/// The churn of [`random_layer_churn_under_random_use_never_panics_the_daemon`],
/// run as a child process by that test (never on its own: it is ignored,
/// and does nothing without its environment).
#[test]
#[ignore = "the child process of random_layer_churn_under_random_use_never_panics_the_daemon"]
fn churn_in_a_chroot_child_process() {
    let Some(root) = std::env::var_os(CHURN_ROOT) else {
        return;
    };
    let seed: u64 = std::env::var("ROVL_CHURN_SEED").unwrap().parse().unwrap();
    std::os::unix::fs::chroot(&root).unwrap();
    std::env::set_current_dir("/").unwrap();
    let names = churn_names();
    let roots = [Path::new("/l0"), Path::new("/l1"), Path::new("/upper")];
    let mnt = Path::new("/mnt");
    let mut r = Rng::new(seed, 0);
    for _ in 0..60 {
        let root = *r.pick(&roots);
        churn_layer(&mut r, root, &names);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut r = Rng::new(seed, 1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let root = *r.pick(&roots);
                churn_layer(&mut r, root, &names);
            }
        });
        for t in 0..2u32 {
            let (names, stop) = (&names, &stop);
            sc.spawn(move || {
                let mut r = Rng::new(seed, 2 + u64::from(t));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    use_mount(&mut r, mnt, names);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
