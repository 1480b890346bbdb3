//! Namespace semantics through a real rovl mount, with kernel overlayfs
//! (redirect_dir=on, index=off, metacopy=off) as the oracle: every script
//! runs on both over the same lower layers, each step must fail or succeed
//! the same way, and the trees must look the same afterwards. Where a step
//! must fail, the expected errno is also asserted on its own, so a change
//! on both sides does not go unnoticed.

mod common;
mod support;

use std::path::Path;

use common::*;
use support::*;

/// Lower layers most tests start from (top is l0):
///
/// l1: f, gone, d/{a,b,sub/x}, m/one, opq/hidden, full/{p,q}, hl+hl2 (links)
/// l0: d/c, m/two, whiteout gone, whiteout d/b, opq/ (opaque) with mine,
///     sym -> f, fifo, filed (a file over l1's directory filed/)
fn layers(st: &Stack) {
    let l1 = |r: &str| st.lower(1, r);
    let l0 = |r: &str| st.lower(0, r);
    put(&l1("f"), "f@l1");
    put(&l1("gone"), "gone@l1");
    put(&l1("d/a"), "a@l1");
    put(&l1("d/b"), "b@l1");
    put(&l1("d/sub/x"), "x@l1");
    put(&l1("m/one"), "1");
    put(&l1("opq/hidden"), "hidden");
    put(&l1("full/p"), "p");
    put(&l1("full/q"), "q");
    put(&l1("filed/under"), "under a file");
    put(&l1("hl"), "linked");
    link(&l1("hl"), &l1("hl2")).unwrap();
    put(&l1("plain"), "plain@l1");
    put(&l0("d/c"), "c@l0");
    put(&l0("m/two"), "2");
    whiteout(&l0("gone"));
    whiteout(&l0("d/b"));
    put(&l0("opq/mine"), "mine");
    setxattr(&l0("opq"), "trusted.overlay.opaque", b"y");
    symlink("f", &l0("sym")).unwrap();
    mknod(&l0("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    put(&l0("filed"), "a file over a directory");
}

fn setup(s: &Scratch) -> Stack {
    let st = Stack::under(s.path(), 2);
    layers(&st);
    st
}

#[test]
fn merged_view_of_whiteouts_opaque_dirs_and_type_changes_matches_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.v("root", names(r));
        l.v("d", names(&r.join("d")));
        l.v("m", names(&r.join("m")));
        l.v("opq", names(&r.join("opq")));
        l.r("stat gone", lstat(&r.join("gone")));
        l.r("stat d/b", lstat(&r.join("d/b")));
        l.r("stat opq/hidden", lstat(&r.join("opq/hidden")));
        l.r("stat filed/under", lstat(&r.join("filed/under")));
        l.r("read sym", std::fs::read(r.join("sym")));
        l
    });
    assert_eq!(log.errno("stat gone"), libc::ENOENT);
    assert_eq!(log.errno("stat d/b"), libc::ENOENT);
    assert_eq!(log.errno("stat opq/hidden"), libc::ENOENT);
    assert_eq!(log.errno("stat filed/under"), libc::ENOTDIR);
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout_and_the_name_is_gone() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.r("unlink f", std::fs::remove_file(r.join("f")));
        l.r("stat f", lstat(&r.join("f")));
        l.r("open f", std::fs::read(r.join("f")));
        l.v("root", names(r));
        l.r("unlink d/a", std::fs::remove_file(r.join("d/a")));
        l.r("unlink d/a again", std::fs::remove_file(r.join("d/a")));
        l.v("d", names(&r.join("d")));
        l
    });
    assert_eq!(log.errno("stat f"), libc::ENOENT);
    assert_eq!(log.errno("unlink d/a again"), libc::ENOENT);
    assert!(is_whiteout(&st.upper.join("f")), "no whiteout for f");
    assert!(is_whiteout(&st.upper.join("d/a")), "no whiteout for d/a");
    // The lower layers are untouched.
    assert_eq!(get(&st.lower(1, "f")), "f@l1");
}

#[test]
fn unlink_of_an_upper_only_file_leaves_no_whiteout() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.r("create new", write(&r.join("new"), b"n"));
        l.r("unlink new", std::fs::remove_file(r.join("new")));
        l.r("mkdir nd", std::fs::create_dir(r.join("nd")));
        l.r("rmdir nd", std::fs::remove_dir(r.join("nd")));
        l
    });
    assert!(!exists(&st.upper.join("new")));
    assert!(!exists(&st.upper.join("nd")));
}

#[test]
fn creating_over_a_whiteout_replaces_it() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.r("unlink f", std::fs::remove_file(r.join("f")));
        l.r("create f", write(&r.join("f"), b"again"));
        l.r("read f", std::fs::read(r.join("f")));
        // Names whited out in a lower layer come back the same way.
        l.r("create gone", write(&r.join("gone"), b"back"));
        l.r("mkdir d/b", std::fs::create_dir(r.join("d/b")));
        l.r("symlink over removed d/a", {
            std::fs::remove_file(r.join("d/a")).unwrap();
            symlink("c", &r.join("d/a"))
        });
        l.v("d", names(&r.join("d")));
        l
    });
    let f = lstat(&st.upper.join("f")).unwrap();
    assert!(f.is_file(), "upper f should be the new file");
    assert_eq!(get(&st.upper.join("f")), "again");
    assert!(lstat(&st.upper.join("d/a")).unwrap().is_symlink());
}

#[test]
fn a_directory_recreated_over_a_removed_one_is_opaque() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        for n in ["p", "q"] {
            l.r(
                format!("unlink full/{n}"),
                std::fs::remove_file(r.join("full").join(n)),
            );
        }
        l.r("rmdir full", std::fs::remove_dir(r.join("full")));
        l.r("stat full", lstat(&r.join("full")));
        l.r("mkdir full", std::fs::create_dir(r.join("full")));
        l.v("full", names(&r.join("full")));
        l.r("stat full/p", lstat(&r.join("full/p")));
        // A directory removed with rm -r and made again at once.
        l.r("rm -r d", std::fs::remove_dir_all(r.join("d")));
        l.r("mkdir d", std::fs::create_dir(r.join("d")));
        l.v("d", names(&r.join("d")));
        l
    });
    for d in ["full", "d"] {
        assert_eq!(
            getxattr(&st.upper.join(d), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{d} recreated without an opaque marker"
        );
    }
}

#[test]
fn rmdir_of_a_merged_directory_whose_lower_entries_are_all_whited_out() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, |r| {
        let mut l = Log::default();
        l.r(
            "rmdir full (non-empty)",
            std::fs::remove_dir(r.join("full")),
        );
        l.r("unlink full/p", std::fs::remove_file(r.join("full/p")));
        l.r("rmdir full (q left)", std::fs::remove_dir(r.join("full")));
        l.r("unlink full/q", std::fs::remove_file(r.join("full/q")));
        l.r(
            "rmdir full (whiteouts only)",
            std::fs::remove_dir(r.join("full")),
        );
        l.r("stat full", lstat(&r.join("full")));
        l
    });
    assert_eq!(log.errno("rmdir full (non-empty)"), libc::ENOTEMPTY);
    assert_eq!(log.errno("rmdir full (q left)"), libc::ENOTEMPTY);
    assert_eq!(log.errno("rmdir full (whiteouts only)"), 0);
    assert!(is_whiteout(&st.upper.join("full")));
}

/// Every failing namespace operation fails with the kernel's errno.
#[test]
fn failing_namespace_operations_give_the_kernels_errno() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        std::fs::create_dir(p("newdir")).unwrap();
        write(&p("newdir/in"), b"x").unwrap();
        l.r("open missing", std::fs::read(p("missing")));
        l.r("open whited-out", std::fs::read(p("gone")));
        l.r("create under whited-out", write(&p("gone/x"), b""));
        l.r("mkdir lower dir", std::fs::create_dir(p("d")));
        l.r("mkdir lower file", std::fs::create_dir(p("f")));
        l.r(
            "excl lower file",
            open(&p("f"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
        );
        l.r(
            "excl lower dir",
            open(&p("d"), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY),
        );
        l.r("rmdir lower non-empty", std::fs::remove_dir(p("d")));
        l.r("rmdir upper non-empty", std::fs::remove_dir(p("newdir")));
        l.r("rmdir merged non-empty", std::fs::remove_dir(p("m")));
        l.r("unlink dir", std::fs::remove_file(p("d")));
        l.r("rmdir file", std::fs::remove_dir(p("f")));
        l.r("rmdir symlink", std::fs::remove_dir(p("sym")));
        l.r("rmdir missing", std::fs::remove_dir(p("missing")));
        l.r("unlink missing", std::fs::remove_file(p("missing")));
        l.r("file as dir", std::fs::read(p("f/x")));
        l.r("create under file", write(&p("f/x"), b""));
        l.r("mkdir under file", std::fs::create_dir(p("f/x")));
        l.r("rename file over dir", rename2(&p("f"), &p("d"), 0));
        l.r("rename dir over file", rename2(&p("d"), &p("f"), 0));
        l.r("rename dir over non-empty", rename2(&p("m"), &p("d"), 0));
        l.r(
            "rename dir over non-empty upper",
            rename2(&p("m"), &p("newdir"), 0),
        );
        l.r(
            "rename noreplace",
            rename2(&p("f"), &p("hl"), libc::RENAME_NOREPLACE),
        );
        l.r(
            "rename noreplace dir",
            rename2(&p("d"), &p("m"), libc::RENAME_NOREPLACE),
        );
        l.r(
            "exchange missing",
            rename2(&p("f"), &p("missing"), libc::RENAME_EXCHANGE),
        );
        l.r(
            "exchange|noreplace",
            rename2(
                &p("f"),
                &p("hl"),
                libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE,
            ),
        );
        l.r("rename missing", rename2(&p("missing"), &p("x"), 0));
        l.r("rename into own subdir", rename2(&p("d"), &p("d/sub/d"), 0));
        l.r("rename whited-out", rename2(&p("gone"), &p("x"), 0));
        l.r("link dir", link(&p("d"), &p("dlink")));
        l.r("link onto existing", link(&p("f"), &p("hl")));
        l.r("link missing", link(&p("missing"), &p("x")));
        l.r("symlink onto existing", symlink("x", &p("f")));
        l.r(
            "mknod onto existing",
            mknod(&p("d"), libc::S_IFIFO | 0o600, 0),
        );
        l.r("open dir for write", open(&p("d"), libc::O_WRONLY));
        l.r("open dir O_RDWR", open(&p("m"), libc::O_RDWR));
        l.r("truncate dir", truncate(&p("d"), 0));
        l.r("readlink file", readlink(&p("f")));
        l.r("readlink missing", readlink(&p("missing")));
        l.r(
            "O_DIRECTORY on file",
            open(&p("f"), libc::O_RDONLY | libc::O_DIRECTORY),
        );
        l.r(
            "O_NOFOLLOW on symlink",
            open(&p("sym"), libc::O_RDONLY | libc::O_NOFOLLOW),
        );
        let long = "n".repeat(256);
        l.r("create long name", write(&p(&long), b""));
        l.r("stat long name", lstat(&p(&long)));
        l.r("getxattr missing", lget(&p("f"), "user.none"));
        l.r("removexattr missing", lremove(&p("f"), "user.none"));
        l.r(
            "xattr create",
            lset(&p("f"), "user.k", b"1", libc::XATTR_CREATE),
        );
        l.r(
            "xattr create again",
            lset(&p("f"), "user.k", b"2", libc::XATTR_CREATE),
        );
        l.r(
            "xattr replace missing",
            lset(&p("f"), "user.j", b"2", libc::XATTR_REPLACE),
        );
        l
    });
    use libc::{
        EEXIST, EINVAL, EISDIR, ELOOP, ENAMETOOLONG, ENODATA, ENOENT, ENOTDIR, ENOTEMPTY, EPERM,
    };
    let expect = [
        ("open missing", ENOENT),
        ("open whited-out", ENOENT),
        ("create under whited-out", ENOENT),
        ("mkdir lower dir", EEXIST),
        ("mkdir lower file", EEXIST),
        ("excl lower file", EEXIST),
        ("excl lower dir", EEXIST),
        ("rmdir lower non-empty", ENOTEMPTY),
        ("rmdir upper non-empty", ENOTEMPTY),
        ("rmdir merged non-empty", ENOTEMPTY),
        ("unlink dir", EISDIR),
        ("rmdir file", ENOTDIR),
        ("rmdir symlink", ENOTDIR),
        ("rmdir missing", ENOENT),
        ("unlink missing", ENOENT),
        ("file as dir", ENOTDIR),
        ("create under file", ENOTDIR),
        ("mkdir under file", ENOTDIR),
        ("rename file over dir", EISDIR),
        ("rename dir over file", ENOTDIR),
        ("rename dir over non-empty", ENOTEMPTY),
        ("rename dir over non-empty upper", ENOTEMPTY),
        ("rename noreplace", EEXIST),
        ("rename noreplace dir", EEXIST),
        ("exchange missing", ENOENT),
        ("exchange|noreplace", EINVAL),
        ("rename missing", ENOENT),
        ("rename into own subdir", EINVAL),
        ("rename whited-out", ENOENT),
        ("link dir", EPERM),
        ("link onto existing", EEXIST),
        ("link missing", ENOENT),
        ("symlink onto existing", EEXIST),
        ("mknod onto existing", EEXIST),
        ("open dir for write", EISDIR),
        ("open dir O_RDWR", EISDIR),
        ("truncate dir", EISDIR),
        ("readlink file", EINVAL),
        ("readlink missing", ENOENT),
        ("O_DIRECTORY on file", ENOTDIR),
        ("O_NOFOLLOW on symlink", ELOOP),
        ("create long name", ENAMETOOLONG),
        ("stat long name", ENAMETOOLONG),
        ("getxattr missing", ENODATA),
        ("removexattr missing", ENODATA),
        ("xattr create", 0),
        ("xattr create again", EEXIST),
        ("xattr replace missing", ENODATA),
    ];
    for (what, e) in expect {
        assert_eq!(
            log.errno(what),
            e,
            "{what}: expected {}, got {}",
            ename(e),
            ename(log.errno(what))
        );
    }
}

#[test]
fn failed_operations_leave_the_upper_layer_untouched() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = mount_rovl(&st, "");
    let r = &st.mnt;
    let before = tree(&st.upper);
    let _ = std::fs::create_dir(r.join("d/sub"));
    let _ = rename2(&r.join("f"), &r.join("d"), 0);
    let _ = rename2(&r.join("m"), &r.join("d"), 0);
    let _ = std::fs::remove_dir(r.join("d"));
    let _ = rename2(&r.join("f"), &r.join("hl"), libc::RENAME_NOREPLACE);
    let _ = link(&r.join("d"), &r.join("x"));
    drop(m);
    let after = tree(&st.upper);
    let d = diff("before", &before, "after", &after);
    assert!(
        d.is_empty(),
        "failed operations changed the upper layer:\n{d}"
    );
}

#[test]
fn every_kind_of_object_can_be_made_and_looks_as_under_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("create", write(&p("d/new"), b"new data"));
        l.r("mkdir", std::fs::create_dir(p("d/newdir")));
        l.r("mkdir deep", std::fs::create_dir_all(p("d/sub/y/z")));
        l.r("symlink", symlink("../f", &p("d/ln")));
        l.r(
            "symlink dangling",
            symlink("/nowhere/at/all", &p("dangling")),
        );
        l.r("fifo", mknod(&p("d/fifo"), libc::S_IFIFO | 0o600, 0));
        l.r("socket", mknod(&p("d/sock"), libc::S_IFSOCK | 0o755, 0));
        l.r(
            "char dev",
            mknod(&p("d/null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
        );
        l.r(
            "block dev",
            mknod(&p("d/loop"), libc::S_IFBLK | 0o660, libc::makedev(7, 200)),
        );
        l.r(
            "mknod regular",
            mknod(&p("d/reg"), libc::S_IFREG | 0o604, 0),
        );
        l.r("link upper file", link(&p("d/new"), &p("d/new2")));
        l.r("link lower file", link(&p("f"), &p("d/f-link")));
        l.r("readlink", readlink(&p("d/ln")));
        l.r("read through link", std::fs::read(p("d/ln")));
        l.r("write through link", write(&p("d/ln"), b"via link"));
        l.r("setuid/sticky modes", {
            std::fs::create_dir(p("tmp")).unwrap();
            chmod(&p("tmp"), 0o1777)
        });
        l.r("setuid file", {
            write(&p("suid"), b"#!").unwrap();
            chmod(&p("suid"), 0o4755)
        });
        l
    });
}

#[test]
fn hard_links_to_upper_and_lower_files_share_data_and_count() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("link f", link(&p("f"), &p("f2")));
        l.r("write f2", write(&p("f2"), b"through f2"));
        l.r("read f", std::fs::read(p("f")));
        l.v("nlink f", lstat(&p("f")).unwrap().nlink());
        l.r("unlink f", std::fs::remove_file(p("f")));
        l.v("nlink f2", lstat(&p("f2")).unwrap().nlink());
        l.r("read f2", std::fs::read(p("f2")));
        l
    });
}

use std::os::unix::fs::MetadataExt;

#[test]
fn rename_of_files_within_and_across_layers_matches_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("lower file to new name", rename2(&p("f"), &p("f-moved"), 0));
        l.r("stat old", lstat(&p("f")));
        l.r("read new", std::fs::read(p("f-moved")));
        l.r("into other dir", rename2(&p("d/a"), &p("m/a"), 0));
        l.r("over lower file", rename2(&p("m/one"), &p("d/c"), 0));
        l.r("over whited-out name", rename2(&p("m/two"), &p("gone"), 0));
        l.r("back to removed name", rename2(&p("f-moved"), &p("f"), 0));
        l.r("upper file over lower", {
            write(&p("u"), b"u").unwrap();
            rename2(&p("u"), &p("hl"), 0)
        });
        l.r("onto itself", rename2(&p("hl2"), &p("hl2"), 0));
        l.r("symlink", rename2(&p("sym"), &p("d/sym"), 0));
        l.r("readlink moved", readlink(&p("d/sym")));
        l.r("fifo", rename2(&p("fifo"), &p("m/fifo"), 0));
        l.r(
            "noreplace to free name",
            rename2(&p("plain"), &p("plain2"), libc::RENAME_NOREPLACE),
        );
        l.v("root", names(r));
        l.v("d", names(&p("d")));
        l.v("m", names(&p("m")));
        l
    });
    // Where a lower name was moved away, a whiteout stays.
    assert!(is_whiteout(&st.upper.join("d/a")));
    assert!(is_whiteout(&st.upper.join("m/one")));
}

#[test]
fn rename_exchange_swaps_files_directories_and_mixed() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let x = libc::RENAME_EXCHANGE;
        let mut l = Log::default();
        l.r("lower files", rename2(&p("f"), &p("plain"), x));
        l.r("read f", std::fs::read(p("f")));
        l.r("read plain", std::fs::read(p("plain")));
        l.r("upper and lower", {
            write(&p("u"), b"upper").unwrap();
            rename2(&p("u"), &p("d/c"), x)
        });
        l.r("file and dir", rename2(&p("m/one"), &p("full"), x));
        l.r("dirs (merged and lower)", rename2(&p("d"), &p("opq"), x));
        l.v("d", names(&p("d")));
        l.v("opq", names(&p("opq")));
        l.r(
            "dirs in different parents",
            rename2(&p("d/mine"), &p("m/two"), x),
        );
        l.r("new dir and lower dir", {
            std::fs::create_dir(p("nd")).unwrap();
            write(&p("nd/inside"), b"i").unwrap();
            rename2(&p("nd"), &p("opq/sub"), x)
        });
        l.v("root", names(r));
        l
    });
}

#[test]
fn renamed_directories_keep_their_lower_content_like_redirect_dir_on() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("rename merged dir", rename2(&p("d"), &p("e"), 0));
        l.v("e", names(&p("e")));
        l.r("read e/a", std::fs::read(p("e/a")));
        l.r("read e/sub/x", std::fs::read(p("e/sub/x")));
        l.r("stat d", lstat(&p("d")));
        l.r("mkdir d again", std::fs::create_dir(p("d")));
        l.v("new d", names(&p("d")));
        l.r(
            "move nested lower dir up",
            rename2(&p("e/sub"), &p("s2"), 0),
        );
        l.v("s2", names(&p("s2")));
        l.r(
            "rename lower dir into other",
            rename2(&p("full"), &p("m/full"), 0),
        );
        l.v("m/full", names(&p("m/full")));
        l.r("rename twice", rename2(&p("m/full"), &p("full2"), 0));
        l.r("and back", rename2(&p("full2"), &p("full"), 0));
        l.v("full", names(&p("full")));
        l.r("remove in moved dir", std::fs::remove_file(p("full/p")));
        l.r("rename moved over removed", rename2(&p("e"), &p("d"), 0));
        l.r("replace empty dir", {
            std::fs::create_dir(p("empty")).unwrap();
            rename2(&p("s2"), &p("empty"), 0)
        });
        l.v("root", names(r));
        l
    });
    // The moved directory records where its lower content is.
    let rd = getxattr(&st.upper.join("m"), "trusted.overlay.redirect");
    assert_eq!(rd, None, "m was not moved");
    let e = getxattr(&st.upper.join("empty"), "trusted.overlay.redirect");
    assert!(
        e.is_some(),
        "moved directory has no redirect in the upper layer"
    );
}

#[test]
fn moving_a_new_directory_into_a_merged_one_hides_the_lower_directory() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("mkdir", std::fs::create_dir(p("fresh")));
        l.r("write", write(&p("fresh/own"), b"own"));
        // d/sub exists in l1; a new directory replacing it must not show
        // l1's d/sub/x.
        l.r("rm -r d/sub", std::fs::remove_dir_all(p("d/sub")));
        l.r("move in", rename2(&p("fresh"), &p("d/sub"), 0));
        l.v("d/sub", names(&p("d/sub")));
        l
    });
}

#[test]
fn setattr_on_lower_objects_matches_kernel_and_spares_the_lower_layer() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let before = tree(&st.lowers[1]);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("chmod file", chmod(&p("f"), 0o600));
        l.r("chmod dir", chmod(&p("d"), 0o711));
        l.r("chmod lower-only dir", chmod(&p("full"), 0o700));
        l.r("chown file", lchown(&p("d/a"), 1234, 5678));
        l.r("chown symlink", lchown(&p("sym"), 42, 43));
        l.r("chown dir", lchown(&p("m"), 7, 8));
        l.r("truncate shrink", truncate(&p("plain"), 2));
        l.r("truncate grow", truncate(&p("d/c"), 10000));
        l.r("truncate zero", truncate(&p("d/sub/x"), 0));
        l.r("utimes", utimes(&p("m/one"), (1000, 5), (2000, 6)));
        l.r("chmod fifo", chmod(&p("fifo"), 0o666));
        l
    });
    let after = tree(&st.lowers[1]);
    assert!(diff("before", &before, "after", &after).is_empty());
}

#[test]
fn times_set_through_the_mount_are_kept() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let p = st.m("m/one");
    utimes(&p, (1_000_000_000, 123), (1_500_000_000, 456_789)).unwrap();
    let md = lstat(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 456_789));
    let up = lstat(&st.upper.join("m/one")).unwrap();
    assert_eq!((up.mtime(), up.mtime_nsec()), (1_500_000_000, 456_789));
    // UTIME_NOW moves mtime forward, UTIME_OMIT keeps atime.
    utimes(&p, (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW)).unwrap();
    let md = lstat(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123));
    assert!(md.mtime() > 1_600_000_000);
}

#[test]
fn xattrs_are_set_listed_and_removed_like_under_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    setxattr(&st.lower(1, "f"), "user.lower", b"from l1");
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("get lower xattr", lget(&p("f"), "user.lower"));
        l.r("set on lower file", lset(&p("f"), "user.new", b"v", 0));
        l.r("set on lower dir", lset(&p("d"), "user.dir", b"dv", 0));
        l.r("set on symlink", lset(&p("sym"), "trusted.t", b"tv", 0));
        l.r(
            "replace",
            lset(&p("f"), "user.lower", b"changed", libc::XATTR_REPLACE),
        );
        l.r("list f", llist(&p("f")));
        l.r("remove", lremove(&p("f"), "user.new"));
        l.r("list f again", llist(&p("f")));
        l.r("big value", lset(&p("m/one"), "user.big", &[7u8; 3000], 0));
        l.r("get big", lget(&p("m/one"), "user.big"));
        l
    });
    assert_eq!(
        getxattr(&st.lower(1, "f"), "user.lower").as_deref(),
        Some(&b"from l1"[..])
    );
}

#[test]
fn overlay_private_xattrs_are_never_listed() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        // Make the upper layer carry every private xattr rovl and the kernel
        // write: opaque (recreated dir), redirect (moved dir), origin and
        // impure (copy-up).
        std::fs::remove_dir_all(p("full")).unwrap();
        std::fs::create_dir(p("full")).unwrap();
        rename2(&p("d"), &p("e"), 0).unwrap();
        chmod(&p("m/one"), 0o600).unwrap();
        for x in ["", "full", "e", "m", "m/one", "opq"] {
            l.r(format!("list {x}"), llist(&p(x)));
        }
        l
    });
}

/// A user of the mount cannot change what the layers mean: setting an
/// overlay-private xattr never makes a directory opaque or redirected, now
/// or after a remount. (Kernel overlayfs since 6.7 accepts such names and
/// stores them escaped as `trusted.overlay.overlay.*`, for nested
/// overlays; rovl refuses them. See FINDINGS.md.)
#[test]
fn overlay_private_xattrs_set_through_the_mount_never_change_the_layers() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = mount_rovl(&st, "");
    let p = |x: &str| st.m(x);
    assert_eq!(
        fails(lget(&p("opq"), "trusted.overlay.opaque")),
        libc::ENODATA
    );
    let _ = lset(&p("d"), "trusted.overlay.opaque", b"y", 0);
    let _ = lset(&p("m"), "trusted.overlay.redirect", b"/full", 0);
    let _ = lset(&p("f"), "user.overlay.whiteout", b"", 0);
    let _ = lset(&p("full"), "user.fuseoverlayfs.opaque", b"y", 0);
    let _ = lremove(&p("opq"), "trusted.overlay.opaque");
    let check = |when: &str| {
        assert_eq!(names(&p("d")), vec!["a", "c", "sub"], "{when}");
        assert_eq!(names(&p("m")), vec!["one", "two"], "{when}");
        assert_eq!(names(&p("full")), vec!["p", "q"], "{when}");
        assert_eq!(names(&p("opq")), vec!["mine"], "{when}");
        assert_eq!(get(&p("f")), "f@l1", "{when}");
    };
    check("while mounted");
    drop(m);
    for (d, x) in [
        ("d", "trusted.overlay.opaque"),
        ("m", "trusted.overlay.redirect"),
        ("full", "user.fuseoverlayfs.opaque"),
    ] {
        let v = getxattr(&st.upper.join(d), x);
        assert!(v.is_none(), "{d} got {x} = {v:?} in the upper layer");
    }
    let _m = mount_rovl(&st, "");
    check("after a remount");
}

#[test]
fn statfs_reports_the_upper_filesystem() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let a = rustix::fs::statvfs(&st.mnt).unwrap();
    let b = rustix::fs::statvfs(&st.upper).unwrap();
    assert_eq!(a.f_bsize, b.f_bsize);
    assert_eq!(a.f_blocks * a.f_frsize, b.f_blocks * b.f_frsize);
    assert_eq!(a.f_files, b.f_files);
    assert_eq!(a.f_namemax, 255);
    let fs = rustix::fs::statfs(&st.mnt).unwrap();
    assert_eq!(fs.f_type as i64, 0x6573_5546, "not a FUSE mount");
}

#[test]
fn read_only_stack_of_lowers_refuses_every_change_with_erofs() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let opts = st.lower_opts();
    let _m = mount_rovl_opts(&opts, &st.mnt);
    let k = st.twin(s.path());
    let ls: Vec<&Path> = st.lowers.iter().map(|p| p.as_path()).collect();
    let _k = KernelOverlay::mount(&ls, None, None, "", &k.mnt).unwrap();
    let script = |r: &Path| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.v("root", names(r));
        l.r("read", std::fs::read(p("f")));
        l.r("write", open(&p("f"), libc::O_WRONLY));
        l.r("create", write(&p("new"), b""));
        l.r("mkdir", std::fs::create_dir(p("nd")));
        l.r("unlink", std::fs::remove_file(p("f")));
        l.r("rmdir", std::fs::remove_dir(p("full")));
        l.r("rename", rename2(&p("f"), &p("g"), 0));
        l.r("chmod", chmod(&p("f"), 0o600));
        l.r("setxattr", lset(&p("f"), "user.x", b"1", 0));
        l.r("symlink", symlink("f", &p("s")));
        l.r("link", link(&p("f"), &p("f3")));
        l.r("truncate", truncate(&p("f"), 0));
        l
    };
    let (a, b) = (script(&st.mnt), script(&k.mnt));
    assert_eq!(a, b);
    for (what, e) in &a.0[2..] {
        assert_eq!(*e, libc::EROFS, "{what}");
    }
    assert_same_view(&st.mnt, &k.mnt);
    let mi = testbed::mounts()
        .unwrap()
        .into_iter()
        .find(|m| m.mount_point == std::fs::canonicalize(&st.mnt).unwrap())
        .unwrap();
    assert!(
        mi.mount_options.split(',').any(|o| o == "ro"),
        "a stack of lowers is not mounted read-only: {}",
        mi.mount_options
    );
}

#[test]
fn ro_option_with_an_upper_refuses_changes_and_keeps_the_upper() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    put(&st.upper.join("u"), "upper");
    let before = tree(&st.upper);
    let m = mount_rovl(&st, "ro");
    assert_eq!(get(&st.m("u")), "upper");
    assert_eq!(fails(write(&st.m("u"), b"x")), libc::EROFS);
    assert_eq!(fails(std::fs::remove_file(st.m("f"))), libc::EROFS);
    assert_eq!(fails(std::fs::create_dir(st.m("x"))), libc::EROFS);
    drop(m);
    assert!(diff("before", &before, "after", &tree(&st.upper)).is_empty());
}

/// Kernel overlayfs (6.7+) lets users set `trusted.overlay.*` names, stored
/// escaped as `trusted.overlay.overlay.*` in the upper layer and shown back
/// unescaped (so overlays nest); they never change what the layers mean.
#[test]
fn trusted_overlay_xattrs_set_through_the_mount_are_escaped_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("get opaque", lget(&p("opq"), "trusted.overlay.opaque"));
        l.r(
            "set opaque",
            lset(&p("d"), "trusted.overlay.opaque", b"y", 0),
        );
        l.r("get it back", lget(&p("d"), "trusted.overlay.opaque"));
        l.r("list", llist(&p("d")));
        l.r(
            "set redirect",
            lset(&p("m"), "trusted.overlay.redirect", b"/full", 0),
        );
        l.r(
            "set whiteout",
            lset(&p("f"), "trusted.overlay.whiteout", b"", 0),
        );
        l.r(
            "create flag",
            lset(&p("d"), "trusted.overlay.opaque", b"n", libc::XATTR_CREATE),
        );
        l.r("remove", lremove(&p("d"), "trusted.overlay.opaque"));
        l.r("remove again", lremove(&p("d"), "trusted.overlay.opaque"));
        l.r(
            "remove lower marker",
            lremove(&p("opq"), "trusted.overlay.opaque"),
        );
        l.v("d", names(&p("d")));
        l.v("m", names(&p("m")));
        l.r("read f", std::fs::read(p("f")));
        l
    });
    assert_eq!(
        getxattr(&st.upper.join("m"), "trusted.overlay.overlay.redirect").as_deref(),
        Some(&b"/full"[..])
    );
    assert_eq!(
        getxattr(&st.upper.join("m"), "trusted.overlay.redirect"),
        None
    );
}

/// Everything the namespace tests do, in one script: afterwards the upper
/// layer rovl wrote must give the same view when rovl mounts it again and
/// when kernel overlayfs mounts it.
fn busy_script(r: &Path) -> Log {
    let p = |x: &str| r.join(x);
    let mut l = Log::default();
    l.r("rm f", std::fs::remove_file(p("f")));
    l.r("rm -r full", std::fs::remove_dir_all(p("full")));
    l.r("mkdir full", std::fs::create_dir(p("full")));
    l.r("new in full", write(&p("full/n"), b"n"));
    l.r("mv d e", rename2(&p("d"), &p("e"), 0));
    l.r("mv e/sub m/sub", rename2(&p("e/sub"), &p("m/sub"), 0));
    l.r("mv m/one e/one", rename2(&p("m/one"), &p("e/one"), 0));
    l.r(
        "exchange opq m",
        rename2(&p("opq"), &p("m"), libc::RENAME_EXCHANGE),
    );
    l.r("link plain", link(&p("plain"), &p("e/plain-link")));
    l.r("write plain-link", write(&p("e/plain-link"), b"linked"));
    l.r("symlink", symlink("e/one", &p("to-one")));
    l.r("fifo", mknod(&p("e/fifo"), libc::S_IFIFO | 0o600, 0));
    l.r("chmod", chmod(&p("e/c"), 0o600));
    l.r("chown", lchown(&p("m"), 3, 4));
    l.r("xattr", lset(&p("e"), "user.moved", b"yes", 0));
    l.r("recreate gone", write(&p("gone"), b"back"));
    l.r("mkdir deep", std::fs::create_dir_all(p("new/a/b")));
    l.r(
        "mv new/a into lower dir",
        rename2(&p("new/a"), &p("opq/sub/a"), 0),
    );
    l.r("mv filed", rename2(&p("filed"), &p("e/filed"), 0));
    l
}

#[test]
fn the_upper_layer_written_by_rovl_remounts_with_the_same_view_under_rovl_and_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, busy_script);
    assert!(log.0.iter().all(|(_, e)| *e == 0), "{log:?}");
    let k = st.twin(s.path());
    // Both mounts are gone; look at what each left.
    let m = mount_rovl(&st, "");
    let rovl_again = view(&st.mnt);
    drop(m);
    let km = mount_kernel(&k, "");
    let kernel_own = view(&k.mnt);
    drop(km);
    let d = diff(
        "rovl remounted",
        &rovl_again,
        "kernel's own upper",
        &kernel_own,
    );
    assert!(d.is_empty(), "rovl's upper reads back differently:\n{d}");
    let (km, kmnt) = kernel_on(s.path(), "k-on-rovl", &st.lowers, &st.upper);
    let kernel_on_rovl = view(&kmnt);
    drop(km);
    let d = diff(
        "rovl remounted",
        &rovl_again,
        "kernel on rovl's upper",
        &kernel_on_rovl,
    );
    assert!(
        d.is_empty(),
        "the kernel reads rovl's upper differently:\n{d}"
    );
    let (rm, rst) = rovl_on(s.path(), "rovl-on-k", &st.lowers, &k.upper);
    let rovl_on_kernel = view(&rst.mnt);
    drop(rm);
    let d = diff(
        "kernel's own upper",
        &kernel_own,
        "rovl on the kernel's upper",
        &rovl_on_kernel,
    );
    assert!(
        d.is_empty(),
        "rovl reads the kernel's upper differently:\n{d}"
    );
}

/// Directory renames never fail with EXDEV where kernel overlayfs
/// (redirect_dir=on) succeeds: merged, lower-only, opaque, deep, into
/// upper-only parents, twice, and back.
#[test]
fn directory_renames_fail_with_exdev_only_where_the_kernel_does() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut deep = String::from("deep");
    for i in 0..30 {
        deep.push_str(&format!("/level-{i:02}-with-a-long-name"));
    }
    put(&st.lower(1, &format!("{deep}/leaf")), "leaf");
    let k = st.twin(s.path());
    let _km = mount_kernel(&k, "");
    let _rm = mount_rovl(&st, "");
    let steps: Vec<(String, String)> = vec![
        ("d".into(), "m/d".into()),
        ("full".into(), "full2".into()),
        ("opq".into(), "m/d/opq".into()),
        (deep.clone(), "shallow".into()),
        ("shallow".into(), format!("{deep}-sibling")),
        ("m/d/sub".into(), "newparent/sub".into()),
        ("m/d".into(), "d".into()),
    ];
    for root in [&st.mnt, &k.mnt] {
        std::fs::create_dir(root.join("newparent")).unwrap();
    }
    for (from, to) in &steps {
        let kr = rc(rename2(&k.mnt.join(from), &k.mnt.join(to), 0));
        let rr = rc(rename2(&st.m(from), &st.m(to), 0));
        if kr != libc::EXDEV {
            assert_eq!(
                rr,
                kr,
                "mv {from} {to}: rovl {}, kernel {}",
                ename(rr),
                ename(kr)
            );
        } else {
            assert!(
                rr == 0 || rr == libc::EXDEV,
                "mv {from} {to}: {}",
                ename(rr)
            );
            if rr == 0 {
                // Keep both trees alike for the next steps.
                rename2(&st.m(to), &st.m(from), 0).unwrap();
            }
        }
    }
    assert_same_view(&st.mnt, &k.mnt);
}

#[test]
fn renames_over_whited_out_and_emptied_directories_hide_the_lower_content() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        // full/ (lower) emptied by whiteouts, then replaced by a new dir.
        l.r("rm full/p", std::fs::remove_file(p("full/p")));
        l.r("rm full/q", std::fs::remove_file(p("full/q")));
        l.r("mkdir fresh", std::fs::create_dir(p("fresh")));
        l.r("fresh/own", write(&p("fresh/own"), b"own"));
        l.r(
            "mv fresh over emptied full",
            rename2(&p("fresh"), &p("full"), 0),
        );
        l.v("full", names(&p("full")));
        // A merged directory moved over an emptied merged directory.
        l.r("rm m/one", std::fs::remove_file(p("m/one")));
        l.r("rm m/two", std::fs::remove_file(p("m/two")));
        l.r("mv d over emptied m", rename2(&p("d"), &p("m"), 0));
        l.v("m", names(&p("m")));
        // Directories moved onto whited-out names of lower directories.
        l.r("rm -r opq", std::fs::remove_dir_all(p("opq")));
        l.r("mkdir x", std::fs::create_dir(p("x")));
        l.r("mv x over whited-out opq", rename2(&p("x"), &p("opq"), 0));
        l.v("opq", names(&p("opq")));
        l.r("rm -r m/sub", std::fs::remove_dir_all(p("m/sub")));
        l.r(
            "mv full over whited-out m/sub",
            rename2(&p("full"), &p("m/sub"), 0),
        );
        l.v("m/sub", names(&p("m/sub")));
        // A file over a whited-out directory, then a directory again.
        l.r("mv plain over whited-out opq", {
            std::fs::remove_dir_all(p("opq")).unwrap();
            rename2(&p("plain"), &p("opq"), 0)
        });
        l.r("read opq", std::fs::read(p("opq")));
        l.r("rm opq", std::fs::remove_file(p("opq")));
        l.r("mkdir opq", std::fs::create_dir(p("opq")));
        l.v("opq again", names(&p("opq")));
        l.r(
            "exchange with whited-out",
            rename2(&p("f"), &p("gone"), libc::RENAME_EXCHANGE),
        );
        l
    });
}

#[test]
fn lower_hard_links_split_on_every_kind_of_change_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    link(&st.lower(1, "hl"), &st.lower(1, "d/hl3")).unwrap();
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r("chmod hl", chmod(&p("hl"), 0o600));
        l.r("link hl2", link(&p("hl2"), &p("hl2-link")));
        l.r("write hl2-link", write(&p("hl2-link"), b"via new link"));
        l.r("read hl2", std::fs::read(p("hl2")));
        l.r("xattr d/hl3", lset(&p("d/hl3"), "user.x", b"1", 0));
        l.r("rename d/hl3", rename2(&p("d/hl3"), &p("m/hl3"), 0));
        l.r("truncate m/hl3", truncate(&p("m/hl3"), 1));
        for n in ["hl", "hl2", "hl2-link", "m/hl3"] {
            l.r(format!("read {n}"), std::fs::read(p(n)));
            l.v(format!("nlink {n}"), lstat(&p(n)).unwrap().nlink());
        }
        l
    });
}

/// New objects get the group of a setgid directory, and directories the
/// setgid bit; the process umask applies (the kernel passes it to FUSE).
#[test]
fn setgid_directories_and_umask_shape_new_objects_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    mkdirs(&st.lower(1, "sg"));
    lchown(&st.lower(1, "sg"), 0, 4242).unwrap();
    chmod(&st.lower(1, "sg"), 0o2777).unwrap();
    chmod(&st.mnt, 0o755).unwrap();
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let sg = r.join("sg");
        l.r("root file", write(&sg.join("rootfile"), b"r"));
        l.r("root dir", std::fs::create_dir(sg.join("rootdir")));
        let sh = |c: &str| as_nobody(&format!("cd {} && {c}", sg.display())).0;
        l.v("nobody file", sh("umask 022 && echo n > nobodyfile"));
        l.v("nobody dir", sh("umask 022 && mkdir nobodydir"));
        l.v("umask 077 file", sh("umask 077 && echo u > private"));
        l.v("umask 077 dir", sh("umask 077 && mkdir privdir"));
        l.v("umask 0 fifo", sh("umask 0 && mkfifo fifo"));
        l.v(
            "setgid file by nobody",
            sh("umask 0 && touch sgfile && chmod 2755 sgfile"),
        );
        l
    });
}

/// chown of a setuid/setgid executable clears those bits, also for root,
/// as on any Linux filesystem.
#[test]
fn chown_clears_setuid_and_setgid_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    for (n, mode) in [
        ("suid", 0o4755),
        ("sgid", 0o2755),
        ("sgid-noexec", 0o2644),
        ("both", 0o6711),
    ] {
        put(&st.lower(1, n), "#!");
        chmod(&st.lower(1, n), mode).unwrap();
    }
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        for n in ["suid", "sgid", "sgid-noexec", "both"] {
            l.r(format!("chown {n}"), lchown(&r.join(n), 1000, 1000));
            l.v(
                format!("{n} mode"),
                lstat(&r.join(n)).unwrap().mode() & 0o7777,
            );
        }
        l.r("write by root keeps suid", write(&r.join("both"), b"x"));
        l.v(
            "both after write",
            lstat(&r.join("both")).unwrap().mode() & 0o7777,
        );
        l
    });
}

/// Setuid/setgid bits go when another user writes (not when it opens for
/// writing), also through passthrough, where writes never reach the
/// daemon; chown(-1, -1) by root clears them, by a user who does not own
/// the file leaves them; a group member's write to a group-writable setgid
/// file works and clears the bit; truncate(2) moves mtime by the upper
/// filesystem's rule. The kernel hands all of this to rovl
/// (FUSE_HANDLE_KILLPRIV_V2).
#[test]
fn setuid_bits_follow_writes_chown_and_truncate_like_the_kernel() {
    use difftest::sys::as_cred;
    use std::os::unix::fs::FileExt;
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let user = Some((1000, 1000));
    for (n, mode, size) in [
        ("opened", 0o4755, 10),
        ("written", 0o6755, 10),
        ("big", 0o4755, 2 << 20),
        ("root-chown", 0o4755, 10),
        ("user-chown", 0o4755, 10),
        ("user-chown-plain", 0o755, 10),
        ("same-size", 0o644, 10),
        ("group-sgid", 0o2775, 10),
    ] {
        let p = st.lower(1, n);
        put(&p, &"a".repeat(size));
        if n == "group-sgid" {
            lchown(&p, 0, 1000).unwrap();
        } else if !n.starts_with("root-") && !n.starts_with("user-chown") {
            lchown(&p, 1000, 1000).unwrap();
        }
        chmod(&p, mode).unwrap();
        utimes(&p, (978307200, 0), (978307200, 0)).unwrap();
    }
    let log = oracle(&s, &st, |r| {
        let mut l = Log::default();
        let mode = |n: &str| lstat(&r.join(n)).unwrap().mode() & 0o7777;
        let f = as_cred(user, || open(&r.join("opened"), libc::O_RDWR));
        l.v("opened for writing, nothing written", mode("opened"));
        let f = f.unwrap();
        as_cred(user, || l.r("write", f.write_all_at(b"x", 0)));
        l.v("after a write", mode("opened"));
        as_cred(user, || {
            l.r("write small", write(&r.join("written"), b"x"));
            let reader = open(&r.join("big"), libc::O_RDONLY).unwrap();
            let w = open(&r.join("big"), libc::O_RDWR).unwrap();
            l.r("write big", w.write_all_at(b"x", 1 << 20));
            drop(reader);
        });
        l.v("written", mode("written"));
        l.v("big", mode("big"));
        l.r(
            "root chown -1 -1",
            lchown(&r.join("root-chown"), u32::MAX, u32::MAX),
        );
        l.v("root-chown", mode("root-chown"));
        as_cred(user, || {
            // The kernel says EPERM, rovl succeeds without a change: FUSE
            // delivers it like the privilege removal of a write (README).
            let _ = lchown(&r.join("user-chown"), u32::MAX, u32::MAX);
            l.r(
                "user chown -1 -1 of root's plain file",
                lchown(&r.join("user-chown-plain"), u32::MAX, u32::MAX),
            );
        });
        l.v("user-chown", mode("user-chown"));
        as_cred(user, || {
            l.r("group member writes", write(&r.join("group-sgid"), b"g"));
        });
        l.v("group-sgid", mode("group-sgid"));
        l.r(
            "truncate to the same size",
            truncate(&r.join("same-size"), 10),
        );
        // Whether it moves is the upper filesystem's rule (ext4: always;
        // tmpfs: only when the size changes).
        l.v(
            "mtime moved by truncate to the same size",
            lstat(&r.join("same-size")).unwrap().mtime() != 978307200,
        );
        l.r("truncate shorter", truncate(&r.join("same-size"), 5));
        l.v(
            "mtime moved",
            lstat(&r.join("same-size")).unwrap().mtime() != 978307200,
        );
        l
    });
    let shown = format!("{log:?}");
    for want in [
        "opened for writing, nothing written = 2541",
        "after a write = 493",
        "written = 493",
        "big = 493",
        "root-chown = 493",
        "user-chown = 2541",
        "group-sgid = 509",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
}

/// O_TMPFILE: kernel overlayfs (6.6+) makes an unnamed file in the upper
/// directory; rovl answers EOPNOTSUPP (fuser 0.18 has no FUSE_TMPFILE), the
/// documented divergence (README; FINDINGS Q2) programs fall back from.
/// Either way nothing shows up in the directory.
#[test]
fn o_tmpfile_is_refused_cleanly() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let try_tmpfile = |r: &Path| {
        let got = open(&r.join("d"), libc::O_TMPFILE | libc::O_RDWR).map(|f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"tmp", 0).unwrap();
        });
        (got.map_err(|e| e.raw_os_error()), names(&r.join("d")))
    };
    let k = st.twin(s.path());
    let (kernel, kernel_names) = {
        let _k = mount_kernel(&k, "");
        try_tmpfile(&k.mnt)
    };
    assert_eq!(kernel, Ok(()), "kernel overlayfs supports O_TMPFILE");
    let _m = mount_rovl(&st, "");
    let (rovl, rovl_names) = try_tmpfile(&st.mnt);
    assert_eq!(rovl, Err(Some(libc::EOPNOTSUPP)));
    assert_eq!(rovl_names, kernel_names);
}

fn openat(dir: &std::fs::File, name: &str, flags: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid dirfd and path.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: a fresh fd we own.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }
}

/// A directory fd keeps naming its directory across a rename of it (merged
/// or not), and a removed directory accepts no new entries.
#[test]
fn directory_fds_follow_renames_and_removed_directories_take_no_entries() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        let d = open(&p("d"), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        l.r("mv d e", rename2(&p("d"), &p("e"), 0));
        l.r(
            "create via fd",
            openat(&d, "via-fd", libc::O_CREAT | libc::O_WRONLY),
        );
        l.r("read lower via fd", openat(&d, "a", libc::O_RDONLY));
        l.v("e", names(&p("e")));
        std::fs::create_dir(p("gone-dir")).unwrap();
        let g = open(&p("gone-dir"), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        l.r("rmdir", std::fs::remove_dir(p("gone-dir")));
        l.r(
            "create in removed dir",
            openat(&g, "x", libc::O_CREAT | libc::O_WRONLY),
        );
        let f = open(&p("full"), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        l.r("rm -r full", std::fs::remove_dir_all(p("full")));
        l.r(
            "create in removed merged dir",
            openat(&f, "x", libc::O_CREAT | libc::O_WRONLY),
        );
        l.r(
            "lookup lower entry of removed dir",
            openat(&f, "p", libc::O_RDONLY),
        );
        l.r("mkdir full again", std::fs::create_dir(p("full")));
        l.r("old fd still sees nothing", openat(&f, "p", libc::O_RDONLY));
        l.v("root", names(r));
        l
    });
}

#[test]
fn times_and_xattrs_of_symlinks_and_special_files_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let log = oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        l.r(
            "utimes lower symlink",
            utimes(&p("sym"), (100, 1), (200, 2)),
        );
        let m = lstat(&p("sym")).unwrap();
        l.v("sym times", (m.atime(), m.mtime(), m.mtime_nsec()));
        l.r("new symlink", symlink("x", &p("s2")));
        l.r("utimes new symlink", utimes(&p("s2"), (300, 3), (400, 4)));
        let m = lstat(&p("s2")).unwrap();
        l.v("s2 times", (m.atime(), m.mtime(), m.mtime_nsec()));
        l.r("user xattr on symlink", lset(&p("sym"), "user.x", b"1", 0));
        l.r("user xattr on fifo", lset(&p("fifo"), "user.x", b"1", 0));
        l.r(
            "trusted xattr on fifo",
            lset(&p("fifo"), "trusted.x", b"1", 0),
        );
        l.r("list fifo", llist(&p("fifo")));
        l
    });
    assert_eq!(log.errno("user xattr on symlink"), libc::EPERM);
}

fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut acl = vec![2u8, 0, 0, 0];
    for (tag, perm, id) in entries {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    acl
}

/// POSIX ACLs stored in a layer decide access, as under kernel overlayfs:
/// an ACL entry can grant another user more than the mode bits, or deny
/// what the mode bits would allow. (The kernel enforces ACLs on a FUSE
/// mount only when the daemon negotiates FUSE_POSIX_ACL.)
#[test]
fn posix_acls_in_a_layer_decide_access_like_under_the_kernel() {
    const ANY: u32 = u32::MAX;
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    // user::rw- user:nobody:rw- group::--- mask::rw- other::---  (0660)
    let grant = acl_xattr(&[
        (1, 6, ANY),
        (2, 6, 65534),
        (4, 0, ANY),
        (0x10, 6, ANY),
        (0x20, 0, ANY),
    ]);
    // user::rw- user:nobody:--- group::r-- mask::r-- other::r--  (0644)
    let deny = acl_xattr(&[
        (1, 6, ANY),
        (2, 0, 65534),
        (4, 4, ANY),
        (0x10, 4, ANY),
        (0x20, 4, ANY),
    ]);
    put(&st.lower(0, "acl/granted"), "granted by acl");
    chmod(&st.lower(0, "acl/granted"), 0o660).unwrap();
    setxattr(
        &st.lower(0, "acl/granted"),
        "system.posix_acl_access",
        &grant,
    );
    put(&st.lower(0, "acl/denied"), "denied by acl");
    chmod(&st.lower(0, "acl/denied"), 0o644).unwrap();
    setxattr(&st.lower(0, "acl/denied"), "system.posix_acl_access", &deny);
    for d in [
        s.path(),
        st.mnt.as_path(),
        &st.lowers[0],
        &st.lower(0, "acl"),
    ] {
        chmod(d, 0o755).unwrap();
    }
    let k = st.twin(s.path());
    chmod(&k.mnt, 0o755).unwrap();
    let _km = mount_kernel(&k, "");
    let _m = mount_rovl(&st, "");
    for (what, cmd, kernel_ok) in [
        ("read granted", "cat {}/acl/granted", true),
        ("append granted", "echo more >> {}/acl/granted", true),
        ("read denied", "cat {}/acl/denied", false),
    ] {
        let on = |root: &Path| as_nobody(&cmd.replace("{}", root.to_str().unwrap()));
        let (r, kr) = (on(&st.mnt), on(&k.mnt));
        assert_eq!(kr.0 == 0, kernel_ok, "kernel: {what}: {}", kr.1);
        assert_eq!(r.0, kr.0, "{what}: rovl {r:?}, kernel {kr:?}");
    }
}

/// The busy script again in volatile mode, with the other data path (no
/// passthrough: the kernel's writeback cache) and with no entry/attribute
/// caching (every step looks names up again), against the kernel.
#[test]
fn the_busy_script_matches_the_kernel_without_passthrough_and_without_caching() {
    for opts in [
        "passthrough=off",
        "timeout=0",
        "passthrough=off,timeout=0,threads=1",
    ] {
        let s = Scratch::new().unwrap();
        let st = setup(&s);
        let log = oracle_with(&s, &st, opts, busy_script);
        assert!(log.0.iter().all(|(_, e)| *e == 0), "{opts}: {log:?}");
    }
}

/// A default ACL set on a directory after objects were created in it
/// (rovl remembers that it had none) applies to the next ones, and once
/// removed the umask applies again, as under the kernel.
#[test]
fn a_default_acl_set_or_removed_later_applies_to_the_next_creates() {
    const ANY: u32 = u32::MAX;
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let dacl = acl_xattr(&[(1, 7, ANY), (4, 5, ANY), (0x20, 5, ANY)]);
    chmod(&st.mnt, 0o755).unwrap();
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let d = r.join("later");
        let sh = |c: &str| {
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("umask 077 && cd {} && {c}", d.display()))
                .status()
                .unwrap()
                .code()
        };
        let mode = |n: &str| lstat(&d.join(n)).map(|m| m.mode()).ok();
        mkdirs(&d);
        l.v("before", sh("echo a > a && mkdir da"));
        setxattr(&d, "system.posix_acl_default", &dacl);
        l.v("with acl", sh("echo b > b && mkdir db"));
        l.v(
            "b acl",
            getxattr(&d.join("b"), "system.posix_acl_access").is_some(),
        );
        rustix::fs::removexattr(&d, "system.posix_acl_default").unwrap();
        l.v("after", sh("echo c > c && mkdir dc"));
        for n in ["a", "da", "b", "db", "c", "dc"] {
            l.v(format!("mode {n}"), mode(n));
        }
        l
    });
}

/// A default ACL on a directory is inherited by what is created in it, and
/// replaces the umask for the new object's mode, like on any filesystem.
#[test]
fn default_acls_are_inherited_like_under_the_kernel() {
    const ANY: u32 = u32::MAX;
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    // default: user::rwx user:nobody:rwx group::r-x mask::rwx other::---
    let dacl = acl_xattr(&[
        (1, 7, ANY),
        (2, 7, 65534),
        (4, 5, ANY),
        (0x10, 7, ANY),
        (0x20, 0, ANY),
    ]);
    mkdirs(&st.lower(1, "shared"));
    setxattr(&st.lower(1, "shared"), "system.posix_acl_default", &dacl);
    chmod(&st.mnt, 0o755).unwrap();
    oracle(&s, &st, |r| {
        let mut l = Log::default();
        let sh = |c: &str| {
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("cd {} && {c}", r.join("shared").display()))
                .status()
                .unwrap()
                .code()
        };
        l.v("file", sh("umask 077 && echo f > file"));
        l.v("dir", sh("umask 077 && mkdir dir && echo g > dir/inner"));
        l.v("fifo", sh("umask 022 && mkfifo fifo"));
        l.v(
            "nobody writes",
            as_nobody(&format!("echo n >> {}/shared/file", r.display())).0,
        );
        l
    });
}

// ------------------------------------------------------------ inode flags

const SYNC_FL: u32 = 0x8;
const IMMUTABLE_FL: u32 = 0x10;
const APPEND_FL: u32 = 0x20;
const NODUMP_FL: u32 = 0x40;
const NOATIME_FL: u32 = 0x80;
/// `FS_XFLAG_NOATIME` in `struct fsxattr`'s `fsx_xflags`.
const XFLAG_NOATIME: u32 = 0x40;

/// `lsattr`: the inode flags of `p` (a regular file or directory).
fn iflags(p: &Path) -> std::io::Result<u32> {
    let f = open(p, libc::O_RDONLY | libc::O_NONBLOCK)?;
    Ok(rustix::fs::ioctl_getflags(&f)?.bits())
}

/// `chattr`: sets the inode flags of `p`.
fn set_iflags(p: &Path, flags: u32) -> std::io::Result<()> {
    let f = open(p, libc::O_RDONLY | libc::O_NONBLOCK)?;
    rustix::fs::ioctl_setflags(&f, rustix::fs::IFlags::from_bits_retain(flags))?;
    Ok(())
}

/// `chattr +/-`: adds `on` and removes `off` from the flags of `p`.
fn chattr(p: &Path, on: u32, off: u32) -> std::io::Result<()> {
    set_iflags(p, (iflags(p)? | on) & !off)
}

/// `FS_IOC_FSGETXATTR` (`true`) or `FS_IOC_FSSETXATTR` of `p` on `v`, the
/// `struct fsxattr` as seven words (xflags first).
fn fsxattr_ioctl(p: &Path, get: bool, v: &mut [u32; 7]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = open(p, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let cmd: libc::c_ulong = if get { 0x801c_581f } else { 0x401c_5820 };
    // SAFETY: both ioctls move exactly 28 bytes, the size of `v`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd, v.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `truncate(p, 0)`: a size change by path, no open.
fn truncate_path(p: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::truncate(c.as_ptr(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn setxattr_try(p: &Path, name: &str) -> std::io::Result<()> {
    rustix::fs::lsetxattr(p, name, b"1", rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// Takes the immutable and append-only flags off everything below a
/// directory when dropped, so that the scratch directory can go.
struct ClearsProtectedFlags(std::path::PathBuf);

impl Drop for ClearsProtectedFlags {
    fn drop(&mut self) {
        fn walk(p: &Path) {
            if let Ok(f) = iflags(p) {
                if f & (IMMUTABLE_FL | APPEND_FL) != 0 {
                    let _ = set_iflags(p, f & !(IMMUTABLE_FL | APPEND_FL));
                }
            }
            if lstat(p).map(|m| m.is_dir()).unwrap_or(false) {
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    walk(&e.path());
                }
            }
        }
        walk(&self.0);
    }
}

/// `lsattr`/`chattr` and `FS_IOC_FS[GS]ETXATTR` through the mount: reads
/// show the real inode's flags, a change copies the object up and leaves
/// the lower one alone, a copy-up keeps S, A, a and i (not d), and what
/// immutable and append-only forbid is refused, lower or upper.
#[test]
fn inode_flags_are_read_set_kept_and_enforced_like_the_kernel() {
    let s = Scratch::new().unwrap();
    let _clear = ClearsProtectedFlags(s.path().to_path_buf());
    let st = setup(&s);
    for (name, flags) in [
        ("sa", SYNC_FL | NOATIME_FL),
        ("nd", NODUMP_FL),
        ("imm", IMMUTABLE_FL),
        ("app", APPEND_FL),
        ("imm2", IMMUTABLE_FL),
        ("app2", APPEND_FL),
        ("imm3", IMMUTABLE_FL),
        ("app3", APPEND_FL),
        ("imm4", IMMUTABLE_FL),
        ("idir/inner", 0),
    ] {
        put(&st.lower(1, name), name);
        chattr(&st.lower(1, name), flags, 0).unwrap();
    }
    chattr(&st.lower(1, "idir"), IMMUTABLE_FL, 0).unwrap();
    let log = oracle(&s, &st, |r| {
        let p = |x: &str| r.join(x);
        let mut l = Log::default();
        let lsattr = |l: &mut Log, name: &str| {
            let f = iflags(&p(name)).map(|f| format!("{f:#x}"));
            l.v(format!("lsattr {name}"), f.map_err(|e| e.raw_os_error()));
        };
        for name in ["sa", "nd", "imm", "app", "f", "d"] {
            lsattr(&mut l, name);
        }
        l.r("copy up sa", setxattr_try(&p("sa"), "user.x"));
        l.r("copy up nd", setxattr_try(&p("nd"), "user.x"));
        lsattr(&mut l, "sa");
        lsattr(&mut l, "nd");

        // Lower files marked immutable and append-only.
        l.r("write imm", open(&p("imm"), libc::O_WRONLY));
        l.r("chmod imm", chmod(&p("imm"), 0o600));
        l.r("xattr imm", setxattr_try(&p("imm"), "user.x"));
        lsattr(&mut l, "imm");
        l.r("write app", open(&p("app"), libc::O_WRONLY));
        l.r(
            "append app",
            open(&p("app"), libc::O_WRONLY | libc::O_APPEND).and_then(|mut f| {
                use std::io::Write;
                f.write_all(b"+more")
            }),
        );
        l.r(
            "truncate app",
            open(&p("app"), libc::O_WRONLY | libc::O_APPEND | libc::O_TRUNC),
        );
        l.v("app", std::fs::read_to_string(p("app")).ok());

        // chattr of a lower file and of a merged directory.
        let ctime = |x: &str| lstat(&p(x)).map(|m| (m.ctime(), m.ctime_nsec())).ok();
        let before = ctime("f");
        l.r("chattr +A f", chattr(&p("f"), NOATIME_FL, 0));
        lsattr(&mut l, "f");
        l.v("ctime of f moved", ctime("f") != before);
        l.r("chattr +S d", chattr(&p("d"), SYNC_FL, 0));
        lsattr(&mut l, "d");

        // Immutable, set through the mount.
        put(&p("new"), "new");
        l.r("chattr +i new", chattr(&p("new"), IMMUTABLE_FL, 0));
        lsattr(&mut l, "new");
        l.r("write new", open(&p("new"), libc::O_WRONLY));
        l.r("unlink new", std::fs::remove_file(p("new")));
        l.r("rename new", std::fs::rename(p("new"), p("new2")));
        l.r("link new", std::fs::hard_link(p("new"), p("new3")));
        l.r("chmod new", chmod(&p("new"), 0o600));
        l.r("xattr new", setxattr_try(&p("new"), "user.x"));
        l.r("chattr -i new", chattr(&p("new"), 0, IMMUTABLE_FL));
        l.r("unlink new after", std::fs::remove_file(p("new")));

        // Append-only, set through the mount, and the fsxattr interface.
        put(&p("log"), "1");
        l.r("chattr +a log", chattr(&p("log"), APPEND_FL, 0));
        l.r("write log", open(&p("log"), libc::O_WRONLY));
        l.r(
            "append log",
            open(&p("log"), libc::O_WRONLY | libc::O_APPEND).map(|_| ()),
        );
        l.r("unlink log", std::fs::remove_file(p("log")));
        l.r("chattr -a log", chattr(&p("log"), 0, APPEND_FL));
        let mut fsx = [0u32; 7];
        l.r("fsgetxattr sa", fsxattr_ioctl(&p("sa"), true, &mut fsx));
        l.v("xflags sa", format!("{:#x}", fsx[0]));
        let mut fsx = [0u32; 7];
        l.r("fsgetxattr log", fsxattr_ioctl(&p("log"), true, &mut fsx));
        fsx[0] |= XFLAG_NOATIME;
        l.r("fssetxattr log", fsxattr_ioctl(&p("log"), false, &mut fsx));
        lsattr(&mut l, "log");

        // Truncating them before anything copied them up.
        for name in ["imm3", "app3"] {
            l.r(
                format!("open trunc {name}"),
                open(&p(name), libc::O_WRONLY | libc::O_TRUNC),
            );
            l.r(format!("truncate {name}"), truncate_path(&p(name)));
            l.v(name, std::fs::read_to_string(p(name)).ok());
        }

        // Removing what the flags protect, never copied up.
        l.r("unlink imm2", std::fs::remove_file(p("imm2")));
        l.r("unlink app2", std::fs::remove_file(p("app2")));
        l.r("rename imm4", std::fs::rename(p("imm4"), p("imm4b")));
        l.r("rename over imm4", std::fs::rename(p("f"), p("imm4")));
        l.r("rename idir", std::fs::rename(p("idir"), p("idir2")));
        l.r("chattr +a m", chattr(&p("m"), APPEND_FL, 0));
        l.r("unlink m/one", std::fs::remove_file(p("m/one")));
        l.r("create in m", std::fs::write(p("m/new"), "n"));
        l.r("unlink m/new", std::fs::remove_file(p("m/new")));
        l.r("chattr -a m", chattr(&p("m"), 0, APPEND_FL));
        l.r("unlink m/one after", std::fs::remove_file(p("m/one")));

        // Off again, so that both trees can be compared and removed.
        l.r("chattr -i imm", chattr(&p("imm"), 0, IMMUTABLE_FL));
        l.r("chattr -a app", chattr(&p("app"), 0, APPEND_FL));
        l
    });
    for step in [
        "write imm",
        "chmod imm",
        "xattr imm",
        "write app",
        "truncate app",
        "write new",
        "unlink new",
        "rename new",
        "link new",
        "chmod new",
        "xattr new",
        "write log",
        "unlink log",
        "unlink imm2",
        "unlink app2",
        "rename imm4",
        "rename over imm4",
        "rename idir",
        "unlink m/one",
        "unlink m/new",
        "open trunc imm3",
        "truncate imm3",
        "open trunc app3",
        "truncate app3",
    ] {
        assert_eq!(log.errno(step), libc::EPERM, "{step}");
    }
    for step in [
        "append app",
        "chattr +A f",
        "chattr +i new",
        "fssetxattr log",
        "create in m",
        "unlink m/one after",
    ] {
        assert_eq!(log.errno(step), 0, "{step}");
    }
    assert!(log.0.iter().any(|(w, _)| w == "ctime of f moved = true"));
    assert!(log.0.iter().any(|(w, _)| w
        == &format!("lsattr sa = Ok(\"{:#x}\")", {
            iflags(&st.lower(1, "sa")).unwrap()
        })));
    // The lower layer kept its own flags.
    assert_eq!(iflags(&st.lower(1, "f")).unwrap() & NOATIME_FL, 0);
    assert_eq!(iflags(&st.lower(1, "d")).unwrap() & SYNC_FL, 0);
    assert_eq!(
        iflags(&st.lower(1, "imm")).unwrap() & IMMUTABLE_FL,
        IMMUTABLE_FL
    );
}
