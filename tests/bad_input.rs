//! Bad input (SPEC §4, issue item 8): each refused mount request gives one
//! line naming the problem on stderr, a non-zero exit, nothing mounted and
//! nothing changed in any layer or directory involved.

mod common;
mod support;

use std::path::Path;
use std::process::Command;

use common::*;
use support::*;

fn setup(s: &Scratch) -> Stack {
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "low"), "from l1");
    put(&st.lower(0, "top"), "from l0");
    put(&st.upper.join("up"), "upper");
    st
}

fn mounts_at(p: &Path) -> usize {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    testbed::mounts()
        .unwrap()
        .iter()
        .filter(|m| m.mount_point == p)
        .count()
}

/// Runs `rovl ARGS` expecting a refusal that mentions every word of
/// `words` (case-insensitive); checks the one-line message, the exit code,
/// that nothing got mounted at `mnt` and that nothing under `watch`
/// changed.
#[track_caller]
fn refused(args: &[&str], mnt: &Path, watch: &Path, words: &[&str]) -> String {
    let before_tree = tree(watch);
    let before_mounts = mounts_at(mnt);
    let (code, out, err) = run_rovl(args);
    assert_ne!(code, 0, "rovl {args:?} was accepted");
    assert_eq!(
        mounts_at(mnt),
        before_mounts,
        "rovl {args:?} mounted something"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "rovl {args:?}: expected one line on stderr, got:\n{err}"
    );
    let low = lines[0].to_lowercase();
    for w in words {
        assert!(
            low.contains(&w.to_lowercase()),
            "rovl {args:?}: message does not mention {w:?}: {}",
            lines[0]
        );
    }
    assert!(out.is_empty(), "rovl {args:?} printed on stdout: {out}");
    let after = tree(watch);
    let d = diff("before", &before_tree, "after", &after);
    assert!(d.is_empty(), "rovl {args:?} changed files:\n{d}");
    lines[0].to_string()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn missing_or_conflicting_layer_options() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = p(&st.mnt);
    let (l, u, w) = (st.lower_opts(), esc(&st.upper), esc(&st.work));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("upperdir={u},workdir={w}"), vec!["lowerdir"]),
        (format!("{l},upperdir={u}"), vec!["workdir"]),
        (format!("{l},workdir={w}"), vec!["upperdir"]),
        (format!("{l},volatile"), vec!["volatile", "upperdir"]),
        (
            format!("{},volatile,fsync=1", st.opts()),
            vec!["conflicting"],
        ),
        (
            format!("{},fsync=0,fsync=strict", st.opts()),
            vec!["conflicting"],
        ),
        (format!("{},fsync=maybe", st.opts()), vec!["fsync"]),
        (
            format!("{},passthrough=sometimes", st.opts()),
            vec!["passthrough"],
        ),
        (format!("{},timeout=-1", st.opts()), vec!["timeout"]),
        (format!("{},timeout=soon", st.opts()), vec!["timeout"]),
        (format!("{},threads=0", st.opts()), vec!["threads"]),
        (format!("{},threads=many", st.opts()), vec!["threads"]),
        ("lowerdir=".to_string(), vec!["lowerdir"]),
        (
            format!("lowerdir={}::{}", p(&st.lowers[0]), p(&st.lowers[1])),
            vec!["empty"],
        ),
        (format!("{},upperdir=", l), vec!["upperdir"]),
    ];
    for (opts, words) in cases {
        refused(&["-o", &opts, m], &st.mnt, s.path(), &words);
    }
}

#[test]
fn rootless_options_are_refused_as_not_supported_yet() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    for o in [
        "uidmapping=0:1000:65536",
        "gidmapping=0:1000:65536",
        "squash_to_root",
        "squash_to_uid=1000",
        "squash_to_gid=1000",
        "xattr_permissions=2",
    ] {
        let opts = format!("{},{o}", st.opts());
        let key = o.split('=').next().unwrap();
        refused(
            &["-o", &opts, p(&st.mnt)],
            &st.mnt,
            s.path(),
            &[key, "not supported yet"],
        );
    }
}

#[test]
fn missing_or_unusable_directories() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let file = s.join("a-file");
    put(&file, "not a directory");
    let missing = s.join("missing");
    let m = p(&st.mnt);
    let (l, u, w) = (st.lower_opts(), esc(&st.upper), esc(&st.work));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!(
                "lowerdir={}:{},upperdir={u},workdir={w}",
                p(&st.lowers[0]),
                p(&missing)
            ),
            vec!["lowerdir", "missing", "does not exist"],
        ),
        (
            format!("lowerdir={},upperdir={u},workdir={w}", p(&file)),
            vec!["lowerdir", "not a directory"],
        ),
        (
            format!("{l},upperdir={},workdir={w}", p(&missing)),
            vec!["upperdir", "does not exist"],
        ),
        (
            format!("{l},upperdir={u},workdir={}", p(&missing)),
            vec!["workdir", "does not exist"],
        ),
        (
            format!("{l},upperdir={},workdir={w}", p(&file)),
            vec!["upperdir", "not a directory"],
        ),
        (
            format!("{l},upperdir={u},workdir={}", p(&file)),
            vec!["workdir", "not a directory"],
        ),
    ];
    for (opts, words) in cases {
        refused(&["-o", &opts, m], &st.mnt, s.path(), &words);
    }
    assert!(!exists(&missing));
    assert!(
        !exists(&st.work.join("rovl")),
        "the workdir was prepared anyway"
    );
}

#[test]
fn workdir_and_upperdir_must_be_separate_directories_of_one_filesystem() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = p(&st.mnt);
    let l = st.lower_opts();
    // Another filesystem for the workdir.
    let other = s.mkdir("tmpfs").unwrap();
    testbed::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&other),
    );
    let inner_work = st.upper.join("inner-work");
    mkdirs(&inner_work);
    let inner_upper = st.work.join("inner-upper");
    mkdirs(&inner_upper);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{l},upperdir={},workdir={}", p(&st.upper), p(&other)),
            vec!["workdir", "same filesystem"],
        ),
        (
            format!("{l},upperdir={},workdir={}", p(&st.upper), p(&inner_work)),
            vec!["workdir", "inside upperdir"],
        ),
        (
            format!("{l},upperdir={},workdir={}", p(&inner_upper), p(&st.work)),
            vec!["upperdir", "inside workdir"],
        ),
        (
            format!("{l},upperdir={},workdir={}", p(&st.upper), p(&st.upper)),
            vec!["same directory"],
        ),
        (
            format!("{l},upperdir={},workdir={}", p(&st.lowers[0]), p(&st.work)),
            vec!["upperdir", "lowerdir"],
        ),
    ];
    for (opts, words) in cases {
        refused(&["-o", &opts, m], &st.mnt, s.path(), &words);
    }
    assert!(!exists(&other.join("rovl")));
    assert!(!exists(&inner_work.join("rovl")));
}

#[test]
fn workdir_inside_upperdir_through_a_symlink_is_refused() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let inner = st.upper.join("w");
    mkdirs(&inner);
    let link = s.join("innocent-looking");
    symlink(&inner, &link).unwrap();
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lower_opts(),
        p(&st.upper),
        p(&link)
    );
    refused(
        &["-o", &opts, p(&st.mnt)],
        &st.mnt,
        s.path(),
        &["inside upperdir"],
    );
}

#[test]
fn upper_on_a_read_only_filesystem_is_refused_even_for_ro() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let ro = s.mkdir("ro").unwrap();
    testbed::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&ro),
    );
    mkdirs(&ro.join("u"));
    mkdirs(&ro.join("w"));
    put(&ro.join("u/up"), "read-only upper");
    testbed::run(Command::new("mount").args(["-o", "remount,ro"]).arg(&ro));
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lower_opts(),
        p(&ro.join("u")),
        p(&ro.join("w"))
    );
    refused(
        &["-o", &opts, p(&st.mnt)],
        &st.mnt,
        s.path(),
        &["upperdir", "read-only"],
    );
    // Kernel overlayfs refuses such an upper even for a read-only mount
    // ("filesystem on ... is read-only"); so does rovl.
    refused(
        &["-o", &format!("{opts},ro"), p(&st.mnt)],
        &st.mnt,
        s.path(),
        &["read-only"],
    );
}

#[test]
fn busy_missing_or_bad_mountpoints() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let o = st.opts();
    let missing = s.join("no-such-mnt");
    refused(
        &["-o", &o, p(&missing)],
        &missing,
        s.path(),
        &["mountpoint", "does not exist"],
    );
    let file = s.join("file-mnt");
    put(&file, "x");
    refused(
        &["-o", &o, p(&file)],
        &file,
        s.path(),
        &["mountpoint", "not a directory"],
    );
    // A tmpfs already mounted there.
    let busy = s.mkdir("busy").unwrap();
    testbed::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&busy),
    );
    refused(
        &["-o", &o, p(&busy)],
        &busy,
        &st.upper,
        &["mountpoint", "busy"],
    );
    // A live rovl mount there (of another stack).
    let s2 = Scratch::new().unwrap();
    let other = setup(&s2);
    let _m = mount_rovl(&other, "");
    refused(
        &["-o", &o, p(&other.mnt)],
        &other.mnt,
        &st.upper,
        &["mountpoint", "busy"],
    );
    assert_eq!(get(&other.m("low")), "from l1");
    assert!(!exists(&st.work.join("rovl")));
}

#[test]
fn a_dead_fuse_mount_as_layer_or_mountpoint_is_named_as_such() {
    let s = Scratch::new().unwrap();
    let dead = setup(&s);
    let mut m = mount_rovl(&dead, "");
    m.kill9().unwrap();
    let s2 = Scratch::new().unwrap();
    let st = setup(&s2);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        p(&dead.mnt),
        p(&st.lowers[0]),
        p(&st.upper),
        p(&st.work)
    );
    refused(
        &["-o", &opts, p(&st.mnt)],
        &st.mnt,
        s2.path(),
        &["lowerdir", "not connected"],
    );
    refused(
        &["-o", &st.opts(), p(&dead.mnt)],
        &dead.mnt,
        s2.path(),
        &["mountpoint"],
    );
    drop(m);
}

#[test]
fn a_missing_mountpoint_argument_is_one_line_too() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    refused(&["-o", &st.opts()], &st.mnt, s.path(), &["mountpoint"]);
}

#[test]
fn too_many_positional_arguments_are_refused() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = p(&st.mnt);
    refused(&["-o", &st.opts(), "src", m, m], &st.mnt, s.path(), &[]);
}

#[test]
fn a_refused_mount_leaves_a_stack_that_mounts_fine_afterwards() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    refused(
        &["-o", &format!("{},threads=0", st.opts()), p(&st.mnt)],
        &st.mnt,
        s.path(),
        &["threads"],
    );
    let _m = mount_rovl(&st, "");
    assert_eq!(names(&st.mnt), vec!["low", "top", "up"]);
}

/// The upper or work directory of a live kernel overlayfs mount: refused
/// before rovl touches the work directory the kernel is using (SPEC §4).
#[test]
fn upper_or_work_of_a_live_kernel_overlay_is_refused() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let k = mount_kernel(&st, "");
    put(&k.path().join("k"), "through the kernel");
    let (other_upper, other_work) = (s.mkdir("upper2").unwrap(), s.mkdir("work2").unwrap());
    let mnt = s.mkdir("mnt2").unwrap();
    let l = st.lower_opts();
    let cases = [
        ("upperdir", &st.upper, &st.work),
        ("upperdir", &st.upper, &other_work),
        ("workdir", &other_upper, &st.work),
    ];
    for (role, u, w) in cases {
        let opts = format!("{l},upperdir={},workdir={}", esc(u), esc(w));
        let line = refused(
            &["-o", &opts, p(&mnt)],
            &mnt,
            s.path(),
            &["in use", "live kernel overlayfs mount", role],
        );
        assert!(line.contains(p(k.path())), "{line}");
    }
    assert_eq!(get(&k.path().join("k")), "through the kernel");
    k.unmount().unwrap();
    // Free again: mounts.
    let _m = mount_rovl(&st, "");
    assert_eq!(get(&st.m("k")), "through the kernel");
}

/// The same for fuse-overlayfs, found by the directories its daemon holds
/// open: given relative paths, which no mount table would resolve.
#[test]
fn upper_or_work_of_a_live_fuse_overlayfs_is_refused() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut cmd = Command::new("fuse-overlayfs");
    cmd.current_dir(s.path())
        .arg("-o")
        .arg("lowerdir=l0:l1,upperdir=upper,workdir=work")
        .arg("mnt");
    let f = FuseMount::spawn(cmd, &st.mnt).unwrap();
    put(&st.m("f"), "through fuse-overlayfs");
    let (other_upper, other_work) = (s.mkdir("upper2").unwrap(), s.mkdir("work2").unwrap());
    let mnt = s.mkdir("mnt2").unwrap();
    let l = st.lower_opts();
    for (role, u, w) in [
        ("upperdir", &st.upper, &other_work),
        ("workdir", &other_upper, &st.work),
    ] {
        let opts = format!("{l},upperdir={},workdir={}", esc(u), esc(w));
        refused(
            &["-o", &opts, p(&mnt)],
            &mnt,
            s.path(),
            &["in use", "live fuse-overlayfs mount", role],
        );
    }
    assert_eq!(get(&st.m("f")), "through fuse-overlayfs");
    f.unmount().unwrap();
    let _m = mount_rovl(&st, "");
    assert_eq!(get(&st.m("f")), "through fuse-overlayfs");
}

/// `rovl sync` and `rovl status` on paths that are not rovl mounts: one
/// line per path (`PATH: reason`), exit 1.
#[test]
fn sync_and_status_of_paths_that_are_not_rovl_mounts() {
    let s = Scratch::new().unwrap();
    let missing = s.join("missing");
    let plain = s.mkdir("plain").unwrap();
    let (code, out, err) = run_rovl([Path::new("sync"), &missing]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
    assert!(err.contains("No such file"), "{err}");
    let (code, _out, err) = run_rovl([Path::new("sync"), &plain]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with(&format!("{}: ", plain.display())), "{err}");
    assert!(err.contains("not on a rovl mount"), "{err}");
    // Several paths: one line for each bad one, still exit 1.
    let (code, _out, err) = run_rovl([Path::new("sync"), &plain, &missing]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 2, "{err}");
    for p in [&missing, &plain] {
        let (code, out, err) = run_rovl([Path::new("status"), p]);
        assert_ne!(code, 0, "{out}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!exists(&missing));
    assert!(names(&plain).is_empty());
}
