//! Command line and lifecycle (SPEC §1, issue item 2): fuse-overlayfs
//! compatible options in any order, the ignored SOURCE word, repeated -o,
//! `\:` escapes, unknown options warned about; returning only once the
//! mount is live; -f and -d; `mount -t fuse.rovl` through mount.fuse3;
//! unmounting by umount, fusermount3 -u, `rovl umount` and signals; a
//! second mount of a live stack refused; a killed daemon's leftovers
//! cleaned; default_permissions.

mod common;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use support::*;

fn setup(s: &Scratch) -> Stack {
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "low"), "from l1");
    put(&st.lower(0, "top"), "from l0");
    st
}

fn spawn(args: &[&str], mnt: &Path) -> FuseMount {
    let mut cmd = rovl();
    cmd.args(args);
    FuseMount::spawn(cmd, mnt).unwrap_or_else(|e| panic!("rovl {args:?}: {e}"))
}

fn session_state(work: &Path) -> String {
    let text = std::fs::read_to_string(work.join("rovl/session.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["state"].as_str().unwrap_or_default().to_string()
}

fn check_live(st: &Stack) {
    assert_eq!(fstype_at(&st.mnt).as_deref(), Some("fuse.rovl"));
    assert_eq!(get(&st.m("low")), "from l1");
    assert_eq!(get(&st.m("top")), "from l0");
}

#[test]
fn options_and_positionals_in_any_order_with_an_ignored_source_word() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let (o, m) = (st.opts(), st.mnt.to_str().unwrap().to_string());
    let lower = st.lower_opts();
    let rest = format!("upperdir={},workdir={}", esc(&st.upper), esc(&st.work));
    let variants: Vec<Vec<&str>> = vec![
        vec!["-o", &o, &m],
        vec![&m, "-o", &o],
        vec!["overlay", &m, "-o", &o],
        vec!["-o", &o, "/no/such/source", &m],
        vec!["-o", &lower, "-o", &rest, "rovl", &m],
        vec!["-o", &rest, "whatever", "-o", &lower, &m],
        vec!["-o", &lower, &m, "-o", &rest],
    ];
    for v in variants {
        let mnt = spawn(&v, &st.mnt);
        check_live(&st);
        put(&st.m("w"), "written");
        drop(mnt);
        assert_eq!(get(&st.upper.join("w")), "written", "{v:?}");
        assert!(!mounted_at(&st.mnt), "{v:?} left a mount");
    }
}

#[test]
fn escaped_colons_and_commas_in_layer_paths() {
    let s = Scratch::new().unwrap();
    let l0 = s.join("lower:with:colons");
    let l1 = s.join("plain");
    put(&l0.join("a"), "colon layer");
    put(&l1.join("b"), "plain layer");
    let up = s.join("up,per");
    let wk = s.join("wo,rk");
    let mnt = s.join("mnt");
    for d in [&up, &wk, &mnt] {
        mkdirs(d);
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l0.to_str().unwrap().replace(':', "\\:"),
        l1.display(),
        up.to_str().unwrap().replace(',', "\\,"),
        wk.to_str().unwrap().replace(',', "\\,"),
    );
    let _m = spawn(&["-o", &opts, mnt.to_str().unwrap()], &mnt);
    assert_eq!(get(&mnt.join("a")), "colon layer");
    assert_eq!(get(&mnt.join("b")), "plain layer");
    put(&mnt.join("c"), "up");
    assert_eq!(get(&up.join("c")), "up");
}

#[test]
fn unknown_options_are_warned_about_and_ignored() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let opts = format!(
        "{},frobnicate,metacopy=on,noatime,nodev,nosuid,context=system_u:object_r:container_file_t:s0",
        st.opts()
    );
    let m = spawn(&["-o", &opts, st.mnt.to_str().unwrap()], &st.mnt);
    check_live(&st);
    let log = m.log();
    for o in ["frobnicate", "metacopy=on"] {
        assert!(
            log.lines().any(|l| l.contains("warning") && l.contains(o)),
            "no warning about {o}:\n{log}"
        );
    }
    for o in ["noatime", "nodev", "context"] {
        assert!(
            !log.contains(o),
            "warned about the known option {o}:\n{log}"
        );
    }
    let mi = testbed::mounts()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == std::fs::canonicalize(&st.mnt).unwrap())
        .unwrap();
    for f in ["noatime", "nodev", "nosuid"] {
        assert!(
            mi.mount_options.split(',').any(|o| o == f),
            "{f} not applied: {}",
            mi.mount_options
        );
    }
}

/// What podman 4.3 runs: from the storage directory, relative layer paths
/// through `l/` symlinks, an empty option, volatile.
#[test]
fn the_podman_command_line_with_relative_symlinked_layers() {
    let s = Scratch::new().unwrap();
    let g = s.path();
    for (id, file) in [("aaa", "base"), ("bbb", "app")] {
        put(&g.join(format!("{id}/diff/{file}")), id);
    }
    mkdirs(&g.join("l"));
    symlink("../aaa/diff", &g.join("l/AAA")).unwrap();
    symlink("../bbb/diff", &g.join("l/BBB")).unwrap();
    for d in ["ctr/diff", "ctr/work", "ctr/merged"] {
        mkdirs(&g.join(d));
    }
    let mut cmd = rovl();
    cmd.current_dir(g).args([
        "-o",
        "lowerdir=l/BBB:l/AAA,upperdir=ctr/diff,workdir=ctr/work,,volatile",
        "ctr/merged",
    ]);
    let m = FuseMount::spawn(cmd, g.join("ctr/merged")).unwrap();
    let mnt = g.join("ctr/merged");
    assert_eq!(names(&mnt), vec!["app", "base"]);
    put(&mnt.join("new"), "n");
    assert!(exists(&g.join("ctr/work/work/incompat/volatile")));
    drop(m);
    assert_eq!(get(&g.join("ctr/diff/new")), "n");
    // The l/ symlinks were followed for the layer roots only.
    assert!(lstat(&g.join("l/AAA")).unwrap().is_symlink());
}

/// What `podman image mount` runs: lowers only, no upper or workdir. A
/// mount that works prints nothing, as fuse-overlayfs does (there is no
/// log file then, and until the mount is up stderr is the caller's).
#[test]
fn a_mount_of_lowers_only_says_nothing() {
    let s = Scratch::new().unwrap();
    let l0 = s.mkdir("l0").unwrap();
    let l1 = s.mkdir("l1").unwrap();
    let mnt = s.mkdir("mnt").unwrap();
    put(&l0.join("a"), "a");
    put(&l1.join("b"), "b");
    let mut cmd = rovl();
    cmd.arg("-o")
        .arg(format!("lowerdir={}:{}", esc(&l0), esc(&l1)))
        .arg(&mnt);
    // The guard unmounts even if an assertion fails.
    let m = FuseMount::spawn(cmd, &mnt).unwrap();
    assert_eq!(m.log(), "", "stdout and stderr of the mount command");
    assert_eq!(names(&mnt), vec!["a", "b"]);
    let (code, _out, err) = run_rovl([Path::new("umount"), &mnt]);
    assert_eq!(code, 0, "{err}");
    drop(m);
}

/// A mount of lowers only has no workdir for `rovl.log`, and the daemon's
/// stderr is /dev/null once it runs: it logs to syslog (`ROVL_SYSLOG`
/// points it at a socket of the test's instead of /dev/log), one datagram
/// per line, facility daemon, and still prints nothing.
#[test]
fn a_mount_of_lowers_only_logs_to_syslog() {
    let s = Scratch::new().unwrap();
    let l0 = s.mkdir("l0").unwrap();
    let mnt = s.mkdir("mnt").unwrap();
    put(&l0.join("a"), "a");
    let sock = s.join("syslog.sock");
    let server = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = rovl();
    cmd.env("ROVL_SYSLOG", &sock)
        .env_remove("ROVL_LOG")
        .arg("-o")
        .arg(format!("lowerdir={}", esc(&l0)))
        .arg(&mnt);
    let mut m = FuseMount::spawn(cmd, &mnt).unwrap();
    assert_eq!(names(&mnt), vec!["a"]);
    let mut buf = vec![0u8; 65536];
    let n = server
        .recv(&mut buf)
        .expect("no syslog datagram from the daemon");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    let pid = m.daemon_pids();
    assert!(
        pid.iter()
            .any(|p| line.starts_with(&format!("<30>rovl[{p}]: "))),
        "{line:?} is not an info line of daemon {pid:?}"
    );
    assert!(line.contains("mounted"), "{line:?}");
    assert!(!line.ends_with('\n'), "{line:?}");
    assert_eq!(m.log(), "", "the caller was told something");
}

/// `rovl` returns once the mount is live: the first command after it sees
/// the mount and its content.
#[test]
fn rovl_returns_only_once_the_mount_is_live() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    for round in 0..5 {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(
                r#""$0" -o "$1" "$2"; echo "rc=$?"; mountpoint -q "$2" && echo mounted;
                   cat "$2/low"; echo; echo END"#,
            )
            .arg(rovl_bin())
            .arg(st.opts())
            .arg(&st.mnt);
        let m = FuseMount::spawn(cmd, &st.mnt).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || m.log().contains("END")),
            "{}",
            m.log()
        );
        let log = m.log();
        assert!(log.contains("rc=0"), "round {round}: {log}");
        assert!(log.contains("mounted"), "round {round}: not live: {log}");
        assert!(log.contains("from l1"), "round {round}: no content: {log}");
        drop(m);
    }
}

#[test]
fn foreground_daemon_exits_zero_after_fusermount3_u_or_umount() {
    for how in ["fusermount3", "umount"] {
        let s = Scratch::new().unwrap();
        let st = setup(&s);
        let mut cmd = rovl();
        cmd.args(["-f", "-o", &st.opts()]).arg(&st.mnt);
        let mut d = Foreground::spawn(cmd, &st.mnt, &s.join("log"));
        check_live(&st);
        put(&st.m("x"), "x");
        unmount_with(how, &st.mnt);
        let code = d.wait(Duration::from_secs(10));
        assert_eq!(code, Some(0), "{how}: {}", d.log());
        assert_eq!(session_state(&st.work), "clean");
        assert_eq!(get(&st.upper.join("x")), "x");
    }
}

#[test]
fn debug_flag_logs_requests_to_stderr_in_the_foreground() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let o = st.opts();
    let mut m = spawn(&["-d", "-o", &o, st.mnt.to_str().unwrap()], &st.mnt);
    assert_eq!(get(&st.m("low")), "from l1");
    let pids = m.daemon_pids();
    assert_eq!(pids.len(), 1, "-d should stay in the foreground");
    let log = m.log();
    assert!(log.contains("DEBUG"), "no debug output:\n{log}");
    assert!(
        log.contains("low"),
        "the lookup of 'low' is not logged:\n{log}"
    );
}

#[test]
fn background_daemon_exits_after_umount_or_fusermount3_u() {
    for how in ["umount", "fusermount3"] {
        let s = Scratch::new().unwrap();
        let st = setup(&s);
        let mut m = mount_rovl(&st, "");
        let pid = daemon_pid(&mut m);
        put(&st.m("x"), "x");
        unmount_with(how, &st.mnt);
        assert!(
            wait_for(Duration::from_secs(5), || !alive(pid)),
            "{how}: daemon {pid} still running"
        );
        assert_eq!(session_state(&st.work), "clean", "{how}");
        assert!(!mounted_at(&st.mnt));
        drop(m);
    }
}

#[test]
fn rovl_umount_unmounts_and_returns_after_the_daemon_exited() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    put(&st.m("x"), "x");
    umounts_cleanly(&st, pid);
    drop(m);
}

/// `rovl umount` of `st`'s mount succeeds, returns only after the daemon
/// `pid` exited, and leaves the session recorded as clean.
fn umounts_cleanly(st: &Stack, pid: u32) {
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    assert!(!alive(pid), "rovl umount returned before the daemon exited");
    assert!(!mounted_at(&st.mnt));
    assert_eq!(session_state(&st.work), "clean");
}

/// A reference that goes away a moment later (here a file closed 150 ms
/// after `rovl umount` starts; in real life a process forked by another
/// thread, still holding copies of its parent's descriptors until it
/// execs) does not fail `rovl umount`: it waits the reference out.
#[test]
fn rovl_umount_waits_out_a_reference_that_goes_away() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    let held = std::fs::File::open(st.m("low")).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        drop(held);
    });
    umounts_cleanly(&st, pid);
    closer.join().unwrap();
    drop(m);
}

/// A mount that stays busy: `rovl umount` gives up after its patience
/// with one line and exit status 1, and leaves the mount and its daemon
/// as they were; once the file is closed it unmounts.
#[test]
fn rovl_umount_of_a_mount_that_stays_busy_fails_and_changes_nothing() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    let held = std::fs::File::open(st.m("low")).unwrap();
    let (code, out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("busy"), "{err}");
    assert!(mounted_at(&st.mnt));
    assert!(alive(pid));
    assert_eq!(get(&st.m("low")), "from l1");
    drop(held);
    umounts_cleanly(&st, pid);
    drop(m);
}

/// A mount whose daemon was killed: `rovl umount` removes it, but the
/// daemon's unmount work (final sync, session record) never ran, so it
/// must not report success.
#[test]
fn rovl_umount_of_a_mount_whose_daemon_died_unmounts_and_fails() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    put(&st.m("x"), "x");
    m.kill9().unwrap();
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("daemon had exited"), "{err}");
    assert!(!mounted_at(&st.mnt));
    assert_eq!(session_state(&st.work), "running");
    drop(m);
}

#[test]
fn rovl_umount_of_a_path_that_is_not_mounted_fails() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `rovl umount` only ever unmounts a rovl mount: a mistyped path must not
/// take down whatever else is mounted there (here a kernel overlay).
#[test]
fn rovl_umount_refuses_a_mount_that_is_not_rovl() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let lowers: Vec<&Path> = st.lowers.iter().map(|l| l.as_path()).collect();
    let k = KernelOverlay::mount(&lowers, None, None, "", &st.mnt).unwrap();
    let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a rovl mount"), "{err}");
    assert!(
        mounted_at(&st.mnt),
        "rovl umount took down a kernel overlay"
    );
    k.unmount().unwrap();
}

#[test]
fn sigterm_to_the_daemon_unmounts_and_it_exits() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(wait_for(Duration::from_secs(5), || !alive(pid)));
    assert!(!mounted_at(&st.mnt), "SIGTERM left the mount behind");
    assert_eq!(session_state(&st.work), "clean");
    drop(m);
}

/// mount.fuse3 (what mount(8) runs for `-t fuse.rovl`) finds rovl on PATH
/// and passes it `rovl rovl MNT -o rw,OPTS,dev,suid`.
#[test]
fn mount_fuse3_runs_rovl_from_path() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let bin = s.mkdir("bin").unwrap();
    symlink(rovl_bin(), &bin.join("rovl")).unwrap();
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let mut cmd = Command::new("mount.fuse3");
    cmd.env("PATH", &path).arg("rovl").arg(&st.mnt).args([
        "-o",
        &format!("rw,{}", st.opts()),
        "-t",
        "fuse.rovl",
    ]);
    let mut m = FuseMount::spawn(cmd, &st.mnt).unwrap();
    check_live(&st);
    put(&st.m("x"), "via mount.fuse3");
    let pid = daemon_pid(&mut m);
    unmount_with("umount", &st.mnt);
    assert!(wait_for(Duration::from_secs(5), || !alive(pid)));
    assert_eq!(get(&st.upper.join("x")), "via mount.fuse3");
    assert!(!m.log().contains("warning"), "{}", m.log());
    drop(m);
}

/// `mount -t fuse.rovl rovl MNT -o ...` end to end. util-linux 2.38 runs
/// mount helpers without PATH, so mount.fuse3's shell finds rovl only in
/// the default PATH: the test runs in a private mount namespace where
/// /usr/local/bin holds rovl, and unmounts there with `rovl umount`.
#[test]
fn mount_t_fuse_rovl_works_through_mount_8() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let bin = s.mkdir("bin").unwrap();
    std::fs::copy(rovl_bin(), bin.join("rovl")).unwrap();
    let script = r#"
        set -e
        mount --bind "$BIN" /usr/local/bin
        trap 'umount "$MNT" 2>/dev/null || true' EXIT
        mount -t fuse.rovl rovl "$MNT" -o "$OPTS"
        echo "fstype=$(findmnt -n -o FSTYPE "$MNT")"
        cat "$MNT/low"; echo
        echo written > "$MNT/x"
        rovl umount "$MNT"
        echo "after=$(findmnt -n -o FSTYPE "$MNT" || true)"
        echo END
    "#;
    let out = Command::new("timeout")
        .args([
            "30",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
        ])
        .env("BIN", &bin)
        .env("MNT", &st.mnt)
        .env("OPTS", st.opts())
        .env(testbed::OWNER_ENV, s.path().file_name().unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("fstype=fuse.rovl"), "{text}");
    assert!(text.contains("from l1"), "{text}");
    assert!(
        text.contains("after=\nEND"),
        "still mounted after rovl umount: {text}"
    );
    assert_eq!(get(&st.upper.join("x")), "written\n");
}

#[test]
fn a_second_mount_of_a_live_upper_and_work_is_refused() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    put(&st.m("x"), "x");
    let mnt2 = s.mkdir("mnt2").unwrap();
    let other_work = s.mkdir("work2").unwrap();
    let before_upper = tree(&st.upper);
    let cases = [
        ("same upper and work", st.opts()),
        (
            "same upper, other work",
            format!(
                "{},upperdir={},workdir={}",
                st.lower_opts(),
                esc(&st.upper),
                esc(&other_work)
            ),
        ),
    ];
    for (what, opts) in cases {
        let (code, _out, err) = run_rovl(["-o", &opts, mnt2.to_str().unwrap()]);
        if code == 0 {
            // Not left mounted for the next test when the assertion fails.
            let _ = run_rovl([Path::new("umount"), &mnt2]);
        }
        assert_ne!(code, 0, "{what}: second mount accepted");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(err.contains("in use"), "{what}: {err}");
        assert!(!mounted_at(&mnt2), "{what}: something got mounted");
    }
    assert!(diff("before", &before_upper, "after", &tree(&st.upper)).is_empty());
    // The first mount is unharmed.
    assert_eq!(get(&st.m("x")), "x");
}

#[test]
fn leftovers_of_a_killed_daemon_are_removed_at_the_next_mount() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    put(&st.m("kept"), "kept");
    m.kill9().unwrap();
    drop(m);
    assert_eq!(session_state(&st.work), "running");
    // What a copy-up or create in progress leaves in the work directory.
    let w = st.work.join("work");
    put(&w.join("#rovl.12345.0"), "partial copy");
    put(&w.join("#rovl.12345.1/inner/deep"), "partial dir");
    symlink("/etc", &w.join("#rovl.12345.2")).unwrap();
    whiteout(&w.join("#rovl.12345.3"));
    let _m = mount_rovl(&st, "");
    assert_eq!(names(&w), Vec::<String>::new(), "leftovers stay in work/");
    assert_eq!(get(&st.m("kept")), "kept");
    assert_eq!(names(&st.mnt), vec!["kept", "low", "top"]);
    assert!(Path::new("/etc/passwd").exists());
}

#[test]
fn kernel_overlayfs_leftovers_in_work_are_removed_too() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    {
        let _k = mount_kernel(&st, "");
        put(&st.m("by-kernel"), "k");
        std::fs::remove_file(st.m("low")).unwrap();
    }
    let _m = mount_rovl(&st, "");
    assert_eq!(names(&st.mnt), vec!["by-kernel", "top"]);
    let left: Vec<String> = names(&st.work.join("work"))
        .into_iter()
        .filter(|n| n != "incompat")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// As root, rovl mounts with allow_other and default_permissions: other
/// users get in, and the kernel checks their permissions like on any
/// filesystem — the same results as under kernel overlayfs.
#[test]
fn other_users_get_the_permission_checks_of_default_permissions() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    put(&st.lower(0, "secret"), "root only");
    chmod(&st.lower(0, "secret"), 0o600).unwrap();
    put(&st.lower(0, "shared/notes"), "readable");
    chmod(&st.lower(0, "shared"), 0o755).unwrap();
    chmod(&st.lower(0, "shared/notes"), 0o644).unwrap();
    put(&st.lower(0, "open/f"), "world-writable dir");
    chmod(&st.lower(0, "open"), 0o777).unwrap();
    for d in [
        &st.mnt,
        &s.path().to_path_buf(),
        &st.lowers[0],
        &st.lowers[1],
    ] {
        chmod(d, 0o755).unwrap();
    }
    let k = st.twin(s.path());
    chmod(&k.mnt, 0o755).unwrap();
    let _km = mount_kernel(&k, "");
    let m = mount_rovl(&st, "");
    let mi = m.entry().unwrap();
    for o in ["default_permissions", "allow_other"] {
        assert!(
            mi.super_options.contains(o),
            "{o} missing: {}",
            mi.super_options
        );
    }
    let steps = [
        ("read world-readable", "cat {}/shared/notes"),
        ("read 0600 root file", "cat {}/secret"),
        ("write 0644 root file", "echo x >> {}/shared/notes"),
        ("create in root dir", "touch {}/shared/new"),
        ("unlink in root dir", "rm -f {}/shared/notes"),
        ("chmod root file", "chmod 777 {}/shared/notes"),
        ("mkdir at root", "mkdir {}/mine"),
        ("create in 0777 dir", "echo mine > {}/open/mine"),
        ("rename root file", "mv {}/top {}/top2"),
        ("truncate root file", "truncate -s 0 {}/top"),
    ];
    for (what, cmd) in steps {
        // Exit code, and whether it failed with EACCES or EPERM.
        let on = |root: &Path| {
            let (code, err) = as_nobody(&cmd.replace("{}", root.to_str().unwrap()));
            let why = if err.contains("Permission denied") {
                "EACCES"
            } else if err.contains("Operation not permitted") {
                "EPERM"
            } else {
                ""
            };
            (code, why)
        };
        let (r, k) = (on(&st.mnt), on(&k.mnt));
        assert_eq!(r, k, "{what}: rovl {r:?}, kernel {k:?}");
        let expect = match what {
            "read world-readable" | "create in 0777 dir" => "",
            "chmod root file" => "EPERM",
            _ => "EACCES",
        };
        assert_eq!(r.1, expect, "{what}: {r:?}");
    }
    // And the steps that must fail did: nothing changed.
    assert_eq!(get(&st.m("shared/notes")), "readable");
    assert_eq!(get(&st.m("top")), "from l0");
    assert!(!exists(&st.m("shared/new")));
    assert!(!exists(&st.m("mine")));
    // What nobody could create is nobody's, through the mount and on disk.
    use std::os::unix::fs::MetadataExt;
    for p in [st.m("open/mine"), st.upper.join("open/mine")] {
        let md = lstat(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "{}", p.display());
    }
    assert_eq!(get(&st.m("open/mine")), "mine\n");
}

#[test]
fn rovl_status_reports_a_live_mount_and_then_the_ended_session() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut m = mount_rovl(&st, "");
    let pid = daemon_pid(&mut m);
    let (code, out, err) = run_rovl([Path::new("status"), &st.mnt, Path::new("--json")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mounted"], true);
    assert_eq!(v["pid"], pid);
    assert_eq!(v["mode"], "normal");
    drop(m);
    let (code, out, err) = run_rovl([Path::new("status"), &st.work, Path::new("--json")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mounted"], false);
    assert_eq!(v["session"]["state"], "clean");
}

/// Every option SPEC §1 lists mounts, and the writeback mode follows the
/// three spellings of volatile.
#[test]
fn every_documented_option_mounts_and_selects_the_right_mode() {
    let cases = [
        ("volatile", "volatile"),
        ("fsync=0", "volatile"),
        ("fsync=volatile", "volatile"),
        ("fsync=1", "normal"),
        ("fsync=auto", "normal"),
        ("fsync=strict", "normal"),
        ("passthrough=on", "normal"),
        ("passthrough=off", "normal"),
        ("passthrough=auto", "normal"),
        ("threads=1", "normal"),
        ("threads=256", "normal"),
        ("timeout=0", "normal"),
        ("timeout=2.5", "normal"),
        ("allow_other,default_permissions", "normal"),
        ("noatime,nodev,nosuid,noexec,rw,relatime", "normal"),
        ("context=system_u:object_r:container_file_t:s0", "normal"),
        ("", "normal"),
    ];
    std::thread::scope(|sc| {
        for (opt, mode) in cases {
            sc.spawn(move || {
                let s = Scratch::new().unwrap();
                let st = setup(&s);
                let m = mount_rovl(&st, opt);
                check_live(&st);
                put(&st.m("w"), "w");
                assert_eq!(get(&st.m("w")), "w", "{opt}");
                let (code, out, err) =
                    run_rovl([Path::new("status"), &st.mnt, Path::new("--json")]);
                assert_eq!(code, 0, "{opt}: {err}");
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["mode"], mode, "{opt}");
                assert!(!m.log().contains("warning"), "{opt}: {}", m.log());
                assert_eq!(
                    exists(&st.work.join("work/incompat/volatile")),
                    mode == "volatile",
                    "{opt}: volatile marker"
                );
                drop(m);
            });
        }
    });
}

/// Paths with spaces, tabs and newlines (mountinfo escapes them) for the
/// layers and the mountpoint: mount, status, SIGTERM and `rovl umount` all
/// find the mount. (Backslashes: see the escapes test below.)
#[test]
fn odd_characters_in_layer_and_mountpoint_paths() {
    for how in ["rovl umount", "SIGTERM", "relative trailing slash"] {
        let s = Scratch::new().unwrap();
        let base = s.mkdir("a dir\twith odd\nchars").unwrap();
        let st = Stack::under(&base, 1);
        put(&st.lower(0, "f"), "odd");
        let mut m = if how == "relative trailing slash" {
            let mut cmd = rovl();
            cmd.current_dir(&base)
                .args(["-o", "lowerdir=l0,upperdir=upper,workdir=work", "mnt/"]);
            FuseMount::spawn(cmd, &st.mnt).unwrap()
        } else {
            mount_rovl(&st, "")
        };
        assert_eq!(get(&st.m("f")), "odd", "{how}");
        let (code, out, err) = run_rovl([Path::new("status"), &st.mnt, Path::new("--json")]);
        assert_eq!(code, 0, "{how}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["mountpoint"].as_str().map(|m| m.trim_end_matches('/')),
            st.mnt.to_str(),
            "{how}"
        );
        let pid = daemon_pid(&mut m);
        if how == "SIGTERM" {
            // SAFETY: signalling the daemon we started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        } else {
            let (code, _out, err) = run_rovl([Path::new("umount"), &st.mnt]);
            assert_eq!(code, 0, "{how}: {err}");
        }
        assert!(wait_for(Duration::from_secs(5), || !alive(pid)), "{how}");
        assert!(!mounted_at(&st.mnt), "{how}: still mounted");
        drop(m);
    }
}

/// `\\` and `\:` escapes in upperdir= and workdir= are undone like in
/// lowerdir= and like kernel overlayfs does (`upperdir=/a\\b` is `/a\b`).
#[test]
fn upperdir_and_workdir_take_the_kernels_escapes() {
    let s = Scratch::new().unwrap();
    let l = s.mkdir("low\\er:x").unwrap();
    let u = s.mkdir("up\\per").unwrap();
    let w = s.mkdir("wo:rk").unwrap();
    let mnt = s.mkdir("mnt").unwrap();
    put(&l.join("f"), "f");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        esc(&l),
        esc(&u),
        esc(&w)
    );
    // The kernel takes these options as they are.
    {
        let kmnt = s.mkdir("kmnt").unwrap();
        let kw = s.mkdir("k:work").unwrap();
        let ku = s.mkdir("k\\upper").unwrap();
        let kopts = format!(
            "lowerdir={},upperdir={},workdir={}",
            esc(&l),
            esc(&ku),
            esc(&kw)
        );
        testbed::run(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &kopts])
                .arg(&kmnt),
        );
        put(&kmnt.join("k"), "k");
        testbed::run(Command::new("umount").arg(&kmnt));
        assert_eq!(get(&ku.join("k")), "k");
    }
    let _m = mount_rovl_opts(&opts, &mnt);
    put(&mnt.join("new"), "n");
    assert_eq!(get(&u.join("new")), "n");
    assert!(exists(&w.join("rovl")));
}

/// SIGTERM while the mount is busy (a process has a file open there): the
/// daemon detaches the mount, aborts its connection and exits.
fn sigterm_with_a_busy_mount(mnt_arg: &str) {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let mut cmd = rovl();
    cmd.current_dir(s.path()).args(["-o", &st.opts(), mnt_arg]);
    let mut m = FuseMount::spawn(cmd, &st.mnt).unwrap();
    m.set_exit_timeout(Duration::from_secs(2));
    let busy = open(&st.m("low"), libc::O_RDONLY).unwrap();
    let pid = daemon_pid(&mut m);
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        wait_for(Duration::from_secs(5), || !alive(pid)),
        "{mnt_arg}: the daemon ignores SIGTERM while its mount is busy"
    );
    assert!(!mounted_at(&st.mnt), "{mnt_arg}: still mounted");
    drop(busy);
    drop(m);
}

#[test]
fn sigterm_with_a_busy_mount_still_ends_the_daemon() {
    sigterm_with_a_busy_mount("mnt");
}

#[test]
fn sigterm_with_a_busy_mount_given_with_a_trailing_slash() {
    sigterm_with_a_busy_mount("mnt/");
}
