//! Every whiteout and opaque form SPEC §2 lists, read from lower and upper
//! layers. The oracle is kernel overlayfs over the same content written
//! with the kernel's own forms (0/0 device, `trusted.overlay.opaque=y`,
//! xattr whiteouts): rovl over form X must show what the kernel shows over
//! the kernel form.

mod common;
mod support;

use std::path::{Path, PathBuf};

use common::*;
use support::*;

/// How a layer says "this name is gone" / "nothing below this directory".
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// 0/0 character device; `trusted.overlay.opaque=y`.
    Kernel,
    /// `.wh.NAME`; `.wh..wh..opq` (containers/storage).
    WhFiles,
    /// Zero-size file with `trusted.overlay.whiteout` inside a directory
    /// with `trusted.overlay.opaque=x`; opaque `trusted.overlay.opaque=y`.
    TrustedXattr,
    /// The same with `user.overlay.*`.
    UserXattr,
    /// fuse-overlayfs: opaque `user.fuseoverlayfs.opaque=y`, `.wh.` files.
    FuseOverlayfs,
}

fn wh(dir: &Path, name: &str, form: Form) {
    mkdirs(dir);
    match form {
        Form::Kernel => whiteout(&dir.join(name)),
        Form::WhFiles | Form::FuseOverlayfs => put(&dir.join(format!(".wh.{name}")), ""),
        Form::TrustedXattr | Form::UserXattr => {
            let ns = if form == Form::TrustedXattr {
                "trusted"
            } else {
                "user"
            };
            put(&dir.join(name), "");
            setxattr(&dir.join(name), &format!("{ns}.overlay.whiteout"), b"");
            setxattr(dir, &format!("{ns}.overlay.opaque"), b"x");
        }
    }
}

fn opaque(dir: &Path, form: Form) {
    mkdirs(dir);
    match form {
        Form::Kernel | Form::TrustedXattr => setxattr(dir, "trusted.overlay.opaque", b"y"),
        Form::UserXattr => setxattr(dir, "user.overlay.opaque", b"y"),
        Form::WhFiles => put(&dir.join(".wh..wh..opq"), ""),
        Form::FuseOverlayfs => setxattr(dir, "user.fuseoverlayfs.opaque", b"y"),
    }
}

/// The bottom layer: the same for every form.
fn bottom(l: &Path) {
    put(&l.join("keep"), "keep");
    put(&l.join("rmfile"), "rm");
    put(&l.join("rmdir/x"), "x");
    put(&l.join("d/a"), "a");
    put(&l.join("d/b"), "b");
    put(&l.join("d/deep/c"), "c");
    put(&l.join("od/hidden"), "hidden");
    put(&l.join("od/sub/hidden2"), "hidden2");
    put(&l.join("nd/shown"), "shown below a non-opaque dir");
    put(&l.join("re/old"), "old");
}

/// The hiding layer in `form`.
fn hiding(l: &Path, form: Form) {
    mkdirs(l);
    wh(l, "rmfile", form);
    wh(l, "rmdir", form);
    wh(&l.join("d"), "a", form);
    wh(&l.join("d/deep"), "c", form);
    opaque(&l.join("od"), form);
    put(&l.join("od/own"), "own");
    // A directory that holds xattr whiteouts (opaque value "x") is not
    // opaque; in other forms this is just a plain directory.
    put(&l.join("nd/top"), "top");
    if matches!(form, Form::TrustedXattr | Form::UserXattr) {
        wh(&l.join("nd"), "nothing-here", form);
    }
    // Removed and made again in the same layer: the new one is shown,
    // opaque, the old content is not.
    opaque(&l.join("re"), form);
    put(&l.join("re/new"), "new");
}

fn lowers(base: &Path, tag: &str, form: Form) -> Vec<PathBuf> {
    let top = base.join(format!("{tag}-top"));
    let bot = base.join(format!("{tag}-bottom"));
    hiding(&top, form);
    bottom(&bot);
    vec![top, bot]
}

/// rovl over `form` in the lower layers vs kernel over the kernel form.
fn compare_lower_form(form: Form) {
    let s = Scratch::new().unwrap();
    let base = s.path();
    let (km, kmnt) = {
        let ls = lowers(base, "k", Form::Kernel);
        let up = base.join("k-upper");
        mkdirs(&up);
        kernel_on(base, "k", &ls, &up)
    };
    let ls = lowers(base, "r", form);
    let up = base.join("r-upper");
    mkdirs(&up);
    let (rm, st) = rovl_on(base, "r", &ls, &up);
    assert_same_view(&st.mnt, &kmnt);
    // Lookups of hidden names fail like the kernel's, also for the marker
    // names themselves.
    for name in [
        "rmfile",
        "rmdir",
        "rmdir/x",
        "d/a",
        "d/deep/c",
        "od/hidden",
        "od/sub",
        ".wh.rmfile",
        "d/.wh.a",
        "od/.wh..wh..opq",
        "re/old",
    ] {
        assert_eq!(
            rc(lstat(&st.mnt.join(name))),
            rc(lstat(&kmnt.join(name))),
            "{form:?}: lstat {name}"
        );
    }
    drop(rm);
    drop(km);
}

#[test]
fn kernel_whiteouts_and_opaque_xattr_in_lower_layers() {
    compare_lower_form(Form::Kernel);
}

#[test]
fn wh_files_and_wh_opq_marker_in_lower_layers() {
    compare_lower_form(Form::WhFiles);
}

#[test]
fn trusted_xattr_whiteouts_and_opaque_in_lower_layers() {
    compare_lower_form(Form::TrustedXattr);
}

#[test]
fn user_xattr_whiteouts_and_user_overlay_opaque_in_lower_layers() {
    compare_lower_form(Form::UserXattr);
}

#[test]
fn fuse_overlayfs_opaque_xattr_in_lower_layers() {
    compare_lower_form(Form::FuseOverlayfs);
}

/// The same forms in the upper layer (where rovl may meet a layer written by
/// fuse-overlayfs or a rootless tool): rovl over form X vs kernel over the
/// kernel form.
fn compare_upper_form(form: Form, writes: bool) {
    let s = Scratch::new().unwrap();
    let base = s.path();
    let kbot = base.join("k-bottom");
    bottom(&kbot);
    let kup = base.join("k-upper");
    hiding(&kup, Form::Kernel);
    let (km, kmnt) = kernel_on(base, "k", std::slice::from_ref(&kbot), &kup);
    let rbot = base.join("r-bottom");
    bottom(&rbot);
    let rup = base.join("r-upper");
    hiding(&rup, form);
    let (rm, st) = rovl_on(base, "r", std::slice::from_ref(&rbot), &rup);
    assert_same_view(&st.mnt, &kmnt);
    if !writes {
        return;
    }
    let script = |r: &Path| {
        let mut l = Log::default();
        l.r("create rmfile", write(&r.join("rmfile"), b"again"));
        l.r("mkdir rmdir", std::fs::create_dir(r.join("rmdir")));
        l.r("list rmdir", try_names(&r.join("rmdir")));
        l.r("create d/a", write(&r.join("d/a"), b"A"));
        l.r("unlink d/b", std::fs::remove_file(r.join("d/b")));
        l.r("create od/hidden", write(&r.join("od/hidden"), b"h"));
        l.r("list od", try_names(&r.join("od")));
        l.v("d", names(&r.join("d")));
        l
    };
    let (a, b) = (script(&st.mnt), script(&kmnt));
    assert_eq!(a, b, "{form:?}");
    assert_same_view(&st.mnt, &kmnt);
    drop(rm);
    drop(km);
}

#[test]
fn kernel_forms_in_the_upper_layer() {
    compare_upper_form(Form::Kernel, false);
}

#[test]
fn creating_and_removing_over_kernel_forms_in_the_upper_layer() {
    compare_upper_form(Form::Kernel, true);
}

#[test]
fn wh_files_and_wh_opq_marker_in_the_upper_layer() {
    compare_upper_form(Form::WhFiles, false);
}

#[test]
fn creating_and_removing_over_wh_files_and_wh_opq_marker_in_the_upper_layer() {
    compare_upper_form(Form::WhFiles, true);
}

#[test]
fn trusted_xattr_whiteouts_in_the_upper_layer() {
    compare_upper_form(Form::TrustedXattr, false);
}

#[test]
fn creating_and_removing_over_trusted_xattr_whiteouts_in_the_upper_layer() {
    compare_upper_form(Form::TrustedXattr, true);
}

#[test]
fn user_xattr_forms_in_the_upper_layer() {
    compare_upper_form(Form::UserXattr, false);
}

#[test]
fn creating_and_removing_over_user_xattr_forms_in_the_upper_layer() {
    compare_upper_form(Form::UserXattr, true);
}

#[test]
fn fuse_overlayfs_opaque_xattr_in_the_upper_layer() {
    compare_upper_form(Form::FuseOverlayfs, false);
}

#[test]
fn creating_and_removing_over_fuse_overlayfs_opaque_xattr_in_the_upper_layer() {
    compare_upper_form(Form::FuseOverlayfs, true);
}

/// containers/storage writes a deleted-and-recreated file as both `.wh.f`
/// and `f` in one layer: `f` is shown, the layers below are not.
#[test]
fn a_name_and_its_wh_file_in_one_layer_show_the_name() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "f"), "old");
    put(&st.lower(1, "d/old"), "old");
    put(&st.lower(0, "f"), "new");
    put(&st.lower(0, ".wh.f"), "");
    put(&st.lower(0, "d/new"), "new");
    put(&st.lower(0, ".wh.d"), "");
    let _m = mount_rovl(&st, "");
    assert_eq!(get(&st.m("f")), "new");
    assert_eq!(names(&st.m("d")), vec!["new"]);
    assert_eq!(names(&st.mnt), vec!["d", "f"]);
}

/// `.wh..wh..opq` with the value "x" as an xattr means "holds xattr
/// whiteouts", never "opaque"; a `.wh.` name is never listed nor found.
#[test]
fn marker_names_are_never_shown_and_x_is_not_opaque() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "d/below"), "b");
    put(&st.lower(0, "d/above"), "a");
    setxattr(&st.lower(0, "d"), "trusted.overlay.opaque", b"x");
    put(&st.lower(0, ".wh..wh..opq"), ""); // root of a layer is never opaque-able
    put(&st.lower(0, ".wh.nothing"), "");
    let _m = mount_rovl(&st, "");
    assert_eq!(names(&st.m("d")), vec!["above", "below"]);
    assert_eq!(names(&st.mnt), vec!["d"]);
    assert_eq!(fails(lstat(&st.m(".wh.nothing"))), libc::ENOENT);
    assert_eq!(fails(lstat(&st.m(".wh..wh..opq"))), libc::ENOENT);
}

/// The upper layer rovl writes uses the kernel's forms only, so the kernel
/// mounts it with the same view (and rovl mounts what the kernel wrote).
#[test]
fn uppers_written_by_rovl_and_by_the_kernel_mount_under_the_other() {
    let s = Scratch::new().unwrap();
    let base = s.path();
    let ls = lowers(base, "l", Form::WhFiles);
    let script = |r: &Path| {
        let mut l = Log::default();
        l.r("rm keep", std::fs::remove_file(r.join("keep")));
        l.r("rm -r d", std::fs::remove_dir_all(r.join("d")));
        l.r("mkdir d", std::fs::create_dir(r.join("d")));
        l.r("rename re", rename2(&r.join("re"), &r.join("re2"), 0));
        l.r("rename nd", rename2(&r.join("nd"), &r.join("od/nd"), 0));
        l.r("new file", write(&r.join("od/nd/mine"), b"m"));
        l.r("chmod", chmod(&r.join("od/own"), 0o600));
        l.r("mkdir new", std::fs::create_dir(r.join("newdir")));
        l.r("symlink", symlink("x", &r.join("newdir/l")));
        l.r("rm shown", std::fs::remove_file(r.join("od/nd/shown")));
        l
    };
    // rovl writes, then the kernel reads rovl's upper.
    let rup = base.join("r-upper");
    mkdirs(&rup);
    let (rm, st) = rovl_on(base, "r", &ls, &rup);
    script(&st.mnt);
    let rview = view(&st.mnt);
    drop(rm);
    // The kernel cannot read `.wh.` files in lowers: give it kernel-form
    // lowers with the same meaning.
    let kls = lowers(base, "kl", Form::Kernel);
    let (km, kmnt) = kernel_on(base, "k-on-r", &kls, &rup);
    let d = diff("rovl", &rview, "kernel on rovl's upper", &view(&kmnt));
    assert!(d.is_empty(), "{d}");
    drop(km);
    // The kernel writes, then rovl reads the kernel's upper.
    let kup = base.join("k-upper");
    mkdirs(&kup);
    let (km, kmnt) = kernel_on(base, "k", &kls, &kup);
    script(&kmnt);
    let kview = view(&kmnt);
    drop(km);
    let (rm, st) = rovl_on(base, "r-on-k", &ls, &kup);
    let d = diff(
        "kernel",
        &kview,
        "rovl on the kernel's upper",
        &view(&st.mnt),
    );
    assert!(d.is_empty(), "{d}");
    drop(rm);
}

/// Container engines stack yesterday's upper layers as today's lower
/// layers (overlay2 diff directories, committed images). An upper written
/// by the kernel or by rovl — whiteouts, opaque directories, redirects of
/// renamed directories, copied-up files with origins — must read the same
/// as a lower layer under rovl and under the kernel.
#[test]
fn uppers_reused_as_lower_layers_read_like_under_the_kernel() {
    let s = Scratch::new().unwrap();
    let base = s.path();
    let ls = lowers(base, "l", Form::Kernel);
    let script = |r: &Path| {
        rename2(&r.join("d"), &r.join("d-moved"), 0).unwrap();
        rename2(&r.join("d-moved/deep"), &r.join("deep-moved"), 0).unwrap();
        std::fs::remove_file(r.join("keep")).unwrap();
        std::fs::remove_dir_all(r.join("od")).unwrap();
        std::fs::create_dir(r.join("od")).unwrap();
        write(&r.join("od/fresh"), b"fresh").unwrap();
        chmod(&r.join("nd/shown"), 0o600).unwrap();
        rename2(&r.join("nd"), &r.join("re/nd"), 0).unwrap();
        write(&r.join("new-top"), b"n").unwrap();
    };
    for writer in ["kernel", "rovl"] {
        let up = base.join(format!("{writer}-layer"));
        mkdirs(&up);
        if writer == "kernel" {
            let (k, mnt) = kernel_on(base, "write-k", &ls, &up);
            script(&mnt);
            drop(k);
        } else {
            let (m, st) = rovl_on(base, "write-r", &ls, &up);
            script(&st.mnt);
            drop(m);
        }
        // Yesterday's upper on top of the same lowers, a fresh upper above.
        let mut stacked = vec![up.clone()];
        stacked.extend(ls.iter().cloned());
        let kup = base.join(format!("{writer}-k-upper"));
        let rup = base.join(format!("{writer}-r-upper"));
        mkdirs(&kup);
        mkdirs(&rup);
        let (km, kmnt) = kernel_on(base, &format!("{writer}-read-k"), &stacked, &kup);
        let (rm, st) = rovl_on(base, &format!("{writer}-read-r"), &stacked, &rup);
        let d = diff("rovl", &view(&st.mnt), "kernel", &view(&kmnt));
        assert!(d.is_empty(), "{writer}'s upper as a lower layer:\n{d}");
        let ino = |root: &Path| -> std::collections::BTreeMap<String, u64> {
            inodes(root)
                .into_iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k, v.0))
                .collect()
        };
        let d = diff("rovl", &ino(&st.mnt), "kernel", &ino(&kmnt));
        assert!(
            d.is_empty(),
            "{writer}'s upper as a lower layer, inode numbers:\n{d}"
        );
        drop(rm);
        drop(km);
    }
}

/// A directory moved out of a directory that is itself redirected in a
/// lower layer: the redirect written for it names the path through that
/// directory (`/e/c`, as the kernel writes it), and reading it back must
/// follow the lower redirect on the way (`/e` leads to `/b`), as the kernel
/// does, so that the moved directory keeps its lower content after a
/// remount, under rovl and under the kernel.
#[test]
fn redirects_through_a_redirected_lower_directory_survive_remounts() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "b/c/e"), "deep");
    mkdirs(&st.lower(0, "e"));
    setxattr(&st.lower(0, "e"), "trusted.overlay.redirect", b"/b");
    whiteout(&st.lower(0, "b"));
    put(&st.lower(0, "f/f"), "f");
    {
        let _m = mount_rovl(&st, "");
        assert_eq!(get(&st.m("e/c/e")), "deep");
        std::fs::create_dir(st.m("f/b")).unwrap();
        std::fs::rename(st.m("e/c"), st.m("f/b/e")).unwrap();
        assert_eq!(get(&st.m("f/b/e/e")), "deep");
    }
    assert_eq!(
        getxattr(&st.upper.join("f/b/e"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/e/c"[..])
    );
    {
        let _m = mount_rovl(&st, "");
        assert_eq!(get(&st.m("f/b/e/e")), "deep", "rovl after a remount");
        assert!(!st.m("e/c").exists());
    }
    let (_k, kmnt) = kernel_on(s.path(), "k", &st.lowers, &st.upper);
    assert_eq!(
        get(&kmnt.join("f/b/e/e")),
        "deep",
        "kernel over rovl's upper"
    );
    assert!(!kmnt.join("e/c").exists());
}

/// An absolute redirect whose path crosses an opaque lower directory: the
/// kernel still finds the target in that layer (the opaque directory only
/// ends the search below it), so must rovl, after a remount too.
#[test]
fn redirects_through_an_opaque_lower_directory_survive_remounts() {
    for form in [Form::Kernel, Form::WhFiles, Form::FuseOverlayfs] {
        let s = Scratch::new().unwrap();
        let st = Stack::under(s.path(), 2);
        put(&st.lower(0, "d/c/x"), "x");
        opaque(&st.lower(0, "d"), form);
        put(&st.lower(1, "f/f"), "f");
        {
            let _m = mount_rovl(&st, "");
            std::fs::rename(st.m("d/c"), st.m("f/h1")).unwrap();
            assert_eq!(get(&st.m("f/h1/x")), "x");
        }
        {
            let _m = mount_rovl(&st, "");
            assert_eq!(get(&st.m("f/h1/x")), "x", "{form:?}: rovl after a remount");
            assert!(!st.m("d/c").exists());
        }
        if form == Form::Kernel {
            let (_k, kmnt) = kernel_on(s.path(), "k", &st.lowers, &st.upper);
            assert_eq!(get(&kmnt.join("f/h1/x")), "x", "kernel over rovl's upper");
        }
    }
}
