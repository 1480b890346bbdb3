//! Inode numbers (SPEC §2, issue item 5): st_ino stays the same for an
//! object before and after copy-up and across remounts, one st_dev for the
//! whole mount, hard links in a lower layer share an inode number, readdir's
//! d_ino is stat's st_ino, and distinct objects never share a number — also
//! when the layers are on different filesystems. With all layers on one
//! filesystem, kernel overlayfs (xino=off) gives lower objects their real
//! inode number: rovl must show the same numbers.

mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use common::*;
use support::*;

fn layers(st: &Stack) {
    let l1 = |r: &str| st.lower(1, r);
    let l0 = |r: &str| st.lower(0, r);
    put(&l1("f"), "f");
    put(&l1("d/a"), "a");
    put(&l1("d/sub/b"), "b");
    put(&l1("m/one"), "1");
    put(&l1("hl"), "linked");
    link(&l1("hl"), &l1("d/hl2")).unwrap();
    put(&l0("m/two"), "2");
    put(&l0("g"), "g");
    symlink("f", &l0("sym")).unwrap();
    mknod(&l0("fifo"), libc::S_IFIFO | 0o644, 0).unwrap();
    mknod(&l0("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3)).unwrap();
    mkdirs(&l0("empty"));
}

fn setup(s: &Scratch) -> Stack {
    let st = Stack::under(s.path(), 2);
    layers(&st);
    st
}

fn ino(p: &Path) -> u64 {
    lstat(p).unwrap().ino()
}

/// Paths whose object comes from a lower layer (same file under rovl and
/// the kernel), with their inode numbers.
fn lower_inodes(root: &Path) -> BTreeMap<String, u64> {
    inodes(root)
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, (i, _))| (k, i))
        .collect()
}

#[test]
fn inode_numbers_of_lower_objects_are_the_kernels() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let k = st.twin(s.path());
    let _km = mount_kernel(&k, "");
    let _rm = mount_rovl(&st, "");
    let (a, b) = (lower_inodes(&st.mnt), lower_inodes(&k.mnt));
    let d = diff("rovl", &a, "kernel", &b);
    assert!(d.is_empty(), "inode numbers differ:\n{d}");
    // Copy everything up (metadata change, data change, xattr), then again.
    for p in ["f", "d/a", "m/one", "g", "fifo", "null", "d", "m", "empty"] {
        for root in [&st.mnt, &k.mnt] {
            chmod(&root.join(p), 0o700).unwrap();
        }
    }
    for root in [&st.mnt, &k.mnt] {
        lchown(&root.join("sym"), 5, 5).unwrap();
        write(&root.join("d/sub/b"), b"changed").unwrap();
    }
    let (a, b) = (lower_inodes(&st.mnt), lower_inodes(&k.mnt));
    let d = diff("rovl", &a, "kernel", &b);
    assert!(d.is_empty(), "inode numbers after copy-up differ:\n{d}");
}

#[test]
fn st_ino_stays_the_same_across_copy_up_of_every_kind() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let before = inodes(&st.mnt);
    let held = open(&st.m("g"), libc::O_RDONLY).unwrap();
    chmod(&st.m("f"), 0o600).unwrap();
    write(&st.m("g"), b"data copy-up").unwrap();
    lset(&st.m("m/one"), "user.x", b"1", 0).unwrap();
    lchown(&st.m("sym"), 1, 1).unwrap();
    chmod(&st.m("fifo"), 0o600).unwrap();
    chmod(&st.m("null"), 0o600).unwrap();
    utimes(&st.m("d"), (1, 0), (1, 0)).unwrap();
    truncate(&st.m("d/sub/b"), 0).unwrap();
    for p in ["f", "g", "m/one", "sym", "fifo", "null", "d", "d/sub/b"] {
        assert!(
            exists(&st.upper.join(p)),
            "{p} was not copied up; the test does not test"
        );
    }
    let after = inodes(&st.mnt);
    let d = diff("before copy-up", &before, "after", &after);
    assert!(d.is_empty(), "{d}");
    assert_eq!(held.metadata().unwrap().ino(), ino(&st.m("g")));
}

#[test]
fn renamed_objects_keep_their_inode_number() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let (f, d, sub, one) = (
        ino(&st.m("f")),
        ino(&st.m("d")),
        ino(&st.m("d/sub")),
        ino(&st.m("m/one")),
    );
    rename2(&st.m("f"), &st.m("f2"), 0).unwrap();
    rename2(&st.m("d"), &st.m("m/d"), 0).unwrap();
    rename2(&st.m("m/one"), &st.m("m/d/one"), 0).unwrap();
    assert_eq!(ino(&st.m("f2")), f);
    assert_eq!(ino(&st.m("m/d")), d);
    assert_eq!(ino(&st.m("m/d/sub")), sub);
    assert_eq!(ino(&st.m("m/d/one")), one);
}

#[test]
fn inode_numbers_survive_a_remount() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = mount_rovl(&st, "");
    // Give the upper layer every kind of entry: copied up, moved, new.
    chmod(&st.m("f"), 0o600).unwrap();
    write(&st.m("m/one"), b"x").unwrap();
    rename2(&st.m("d"), &st.m("moved"), 0).unwrap();
    write(&st.m("new"), b"new").unwrap();
    std::fs::create_dir(st.m("newdir")).unwrap();
    symlink("new", &st.m("newdir/l")).unwrap();
    link(&st.m("new"), &st.m("newdir/new2")).unwrap();
    let before = inodes(&st.mnt);
    drop(m);
    let m = mount_rovl(&st, "");
    let after = inodes(&st.mnt);
    // The root's st_dev changes with the new FUSE connection; st_ino must
    // not.
    let strip = |v: &BTreeMap<String, (u64, u64)>| -> BTreeMap<String, u64> {
        v.iter().map(|(k, (i, _))| (k.clone(), *i)).collect()
    };
    let d = diff("first mount", &strip(&before), "remount", &strip(&after));
    assert!(d.is_empty(), "{d}");
    drop(m);
}

#[test]
fn one_st_dev_for_the_whole_mount() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    write(&st.m("new"), b"n").unwrap();
    chmod(&st.m("f"), 0o600).unwrap();
    let root_dev = lstat(&st.mnt).unwrap().dev();
    assert_ne!(root_dev, lstat(&st.upper).unwrap().dev());
    for (p, (_, dev)) in inodes(&st.mnt) {
        assert_eq!(dev, root_dev, "{p} has another st_dev");
    }
}

/// No two objects of the mount share an inode number unless they are
/// links of one file (same data, link count > 1).
fn assert_unique_inodes(root: &Path) {
    let mut by_ino: HashMap<u64, Vec<String>> = HashMap::new();
    for (p, (i, _)) in inodes(root) {
        by_ino.entry(i).or_default().push(p);
    }
    for (i, paths) in by_ino {
        if paths.len() < 2 {
            continue;
        }
        let objs: Vec<Obj> = paths
            .iter()
            .map(|p| support::obj(&root.join(p)).unwrap())
            .collect();
        let links = objs[0].kind != 'd' && objs.iter().all(|o| o == &objs[0] && o.nlink > 1);
        assert!(links, "inode {i} shared by distinct objects {paths:?}");
    }
}

#[test]
fn layers_on_different_filesystems_never_share_inode_numbers() {
    let s = Scratch::new().unwrap();
    // Two tmpfs lowers: fresh tmpfs instances hand out the same small inode
    // numbers, so the same real numbers appear in both layers.
    let t0 = s.mkdir("t0").unwrap();
    let t1 = s.mkdir("t1").unwrap();
    for t in [&t0, &t1] {
        testbed::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(t),
        );
    }
    for (t, tag) in [(&t0, "zero"), (&t1, "one")] {
        for i in 0..20 {
            put(&t.join(format!("{tag}-{i}")), tag);
        }
        put(&t.join(format!("dir/{tag}")), tag);
    }
    let st = Stack {
        lowers: vec![t0.clone(), t1.clone()],
        upper: s.mkdir("upper").unwrap(),
        work: s.mkdir("work").unwrap(),
        mnt: s.mkdir("mnt").unwrap(),
    };
    let m = mount_rovl(&st, "");
    write(&st.m("new"), b"n").unwrap();
    chmod(&st.m("zero-3"), 0o600).unwrap();
    let before = inodes(&st.mnt);
    assert_unique_inodes(&st.mnt);
    let dev = lstat(&st.mnt).unwrap().dev();
    assert!(before.values().all(|(_, d)| *d == dev));
    drop(m);
    let _m = mount_rovl(&st, "");
    let after: BTreeMap<String, u64> = inodes(&st.mnt).into_iter().map(|(k, v)| (k, v.0)).collect();
    let before: BTreeMap<String, u64> = before.into_iter().map(|(k, v)| (k, v.0)).collect();
    let d = diff("first mount", &before, "remount", &after);
    assert!(d.is_empty(), "{d}");
}

#[test]
fn distinct_objects_have_distinct_inode_numbers() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    write(&st.m("new"), b"n").unwrap();
    std::fs::create_dir(st.m("d/newdir")).unwrap();
    chmod(&st.m("m/two"), 0o600).unwrap();
    assert_unique_inodes(&st.mnt);
}

#[test]
fn hard_links_in_a_lower_layer_share_an_inode_until_one_is_copied_up() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, |r| {
        let mut l = Log::default();
        let (a, b) = (
            lstat(&r.join("hl")).unwrap(),
            lstat(&r.join("d/hl2")).unwrap(),
        );
        l.v("same ino", a.ino() == b.ino());
        l.v("nlink", (a.nlink(), b.nlink()));
        l.r("write one name", write(&r.join("hl"), b"only here"));
        let (a2, b2) = (
            lstat(&r.join("hl")).unwrap(),
            lstat(&r.join("d/hl2")).unwrap(),
        );
        l.v("still same ino", a2.ino() == b2.ino());
        l.v("other name kept its ino", b2.ino() == b.ino());
        l.r("read other", std::fs::read(r.join("d/hl2")));
        l.r("read written", std::fs::read(r.join("hl")));
        l
    });
    assert!(log.0.iter().any(|(w, _)| w == "same ino = true"));
    assert!(log.0.iter().any(|(w, _)| w == "still same ino = false"));
}

#[test]
fn readdir_d_ino_and_d_type_are_stats_in_merged_and_copied_up_directories() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let k = st.twin(s.path());
    let _km = mount_kernel(&k, "");
    let _rm = mount_rovl(&st, "");
    for root in [&st.mnt, &k.mnt] {
        chmod(&root.join("f"), 0o600).unwrap();
        write(&root.join("m/one"), b"x").unwrap();
        rename2(&root.join("d/sub"), &root.join("m/sub"), 0).unwrap();
        write(&root.join("m/new"), b"n").unwrap();
    }
    for root in [&st.mnt, &k.mnt] {
        for dir in ["", "d", "m", "m/sub", "empty"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let e = e.unwrap();
                let md = lstat(&e.path()).unwrap();
                let st_ino = md.ino();
                assert_eq!(
                    e.file_type().unwrap(),
                    md.file_type(),
                    "{}: d_type differs from stat's type",
                    e.path().display()
                );
                assert_eq!(
                    e.ino(),
                    st_ino,
                    "{}: d_ino {} but st_ino {}",
                    e.path().display(),
                    e.ino(),
                    st_ino
                );
            }
            dot_entries_are_stats(root, dir);
        }
    }
}

/// `.` and `..` of `root/dir` as getdents reports them (std's `read_dir`
/// leaves them out): directories, with the inode numbers stat gives. The
/// mount root's `..` is left alone: it names a directory outside the mount.
fn dot_entries_are_stats(root: &Path, dir: &str) {
    let path = root.join(dir);
    let fd = rustix::fs::open(
        &path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut seen = Vec::new();
    for e in rustix::fs::Dir::read_from(&fd).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_bytes().to_vec();
        let target = match name.as_slice() {
            b"." => path.clone(),
            b".." if !dir.is_empty() => path.join(".."),
            _ => continue,
        };
        assert_eq!(
            e.file_type(),
            rustix::fs::FileType::Directory,
            "{}",
            target.display()
        );
        assert_eq!(
            e.ino(),
            lstat(&target).unwrap().ino(),
            "{}: d_ino differs from st_ino",
            target.display()
        );
        seen.push(name);
    }
    let want = if dir.is_empty() { 1 } else { 2 };
    assert_eq!(
        seen.len(),
        want,
        "{}: . and .. in the listing",
        path.display()
    );
}

/// An upper file with two names, one the kernel has not looked up: after
/// the other name is removed while the file is open, the second name is
/// the same inode (same number as the open file's, as kernel overlayfs
/// shows) at once, and a write through the open file is what that name
/// reads, also with the kernel's writeback cache, which trusts its own
/// idea of a file's size.
#[test]
fn a_name_the_kernel_never_looked_up_is_the_same_inode_as_a_removed_one() {
    for opts in ["", "passthrough=off"] {
        let s = Scratch::new().unwrap();
        let st = setup(&s);
        put(&st.upper.join("a"), "upper file");
        link(&st.upper.join("a"), &st.upper.join("b")).unwrap();
        let want = {
            let _k = mount_kernel(&st, "");
            let f = std::fs::File::open(st.m("a")).unwrap();
            std::fs::remove_file(st.m("a")).unwrap();
            let open_ino = f.metadata().unwrap().ino();
            assert_eq!(open_ino, ino(&st.m("b")), "kernel overlayfs");
            link(&st.m("b"), &st.m("a")).unwrap();
            open_ino
        };
        let _m = mount_rovl(&st, opts);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(st.m("a"))
            .unwrap();
        std::fs::remove_file(st.m("a")).unwrap();
        let t = std::time::Instant::now();
        let b = ino(&st.m("b"));
        let took = t.elapsed();
        assert_eq!(f.metadata().unwrap().ino(), want, "{opts}: the open file");
        assert_eq!(b, want, "{opts}: the other name");
        assert!(
            took < std::time::Duration::from_millis(10),
            "{opts}: lookup took {took:?}"
        );
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"written through the removed name", 0)
            .unwrap();
        drop(f);
        assert_eq!(
            std::fs::read(st.m("b")).unwrap(),
            b"written through the removed name",
            "{opts}"
        );
    }
}
