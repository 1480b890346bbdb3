//! `rovl umount`, `rovl sync` and `rovl status`.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::daemon;
use crate::sys::{self, Errno, Mode, OFlags};
use crate::writeback::status::{self, Offline, Status};

fn open_any(p: &Path) -> Result<std::os::fd::OwnedFd, Errno> {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn strerror(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// The live status of the rovl mount holding `p`, when it is one.
fn live_status(p: &Path) -> Result<Status, Errno> {
    let fd = open_any(p)?;
    let raw = sys::ioctl_rovl_status(fd.as_fd())?;
    serde_json::from_slice(&raw).map_err(|_| Errno::PROTO)
}

/// `rovl sync PATH...`: syncs each mount holding one of the paths (E2).
pub fn sync(paths: &[PathBuf]) -> i32 {
    let mut code = 0;
    let mut done: HashSet<u64> = HashSet::new();
    for p in paths {
        let r = open_any(p).and_then(|fd| {
            let dev = sys::stat_fd(fd.as_fd())?.st_dev;
            if !done.insert(dev) {
                return Ok(());
            }
            sys::ioctl_rovl_sync(fd.as_fd()).map_err(|e| match e {
                Errno::NOTTY | Errno::INVAL => Errno::NOTTY,
                e => e,
            })
        });
        if let Err(e) = r {
            let msg = if e == Errno::NOTTY {
                "not on a rovl mount".to_string()
            } else {
                strerror(e)
            };
            eprintln!("{}: {msg}", p.display());
            code = 1;
        }
    }
    code
}

/// `rovl umount MNT`: unmounts, waits for the daemon to finish its unmount
/// work, and returns its result.
pub fn umount(mnt: &Path) -> i32 {
    // Only ever a rovl mount: a mistyped path must not unmount whatever
    // else is mounted there. Found by name, since the mount of a dead
    // daemon cannot be stat'ed.
    let abs = absolute_mountpoint(mnt);
    match abs.as_deref().and_then(crate::mount::fs_type_at) {
        Some(t) if t == "fuse.rovl" => {}
        Some(t) => {
            eprintln!("rovl: umount {}: not a rovl mount ({t})", mnt.display());
            return 1;
        }
        None => {
            eprintln!("rovl: umount {}: not a mount point", mnt.display());
            return 1;
        }
    }
    let st = live_status(mnt);
    let (pid, workdir) = match &st {
        Ok(s) => (
            Some(s.pid),
            (!s.workdir.is_empty()).then(|| PathBuf::from(&s.workdir)),
        ),
        Err(_) => (None, None),
    };
    let pidfd = pid.and_then(|p| {
        rustix::process::Pid::from_raw(p as i32)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
    });
    if let Err(e) = unmount_when_idle(mnt) {
        eprintln!("rovl: umount {}: {}", mnt.display(), strerror(e));
        return 1;
    }
    if let Some(fd) = pidfd {
        let mut pfd = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        while let Err(Errno::INTR) = rustix::event::poll(&mut pfd, None) {}
    }
    match (st, workdir.map(|w| daemon::unmount_result(&w))) {
        (_, Some(Err(msg))) => {
            eprintln!("rovl: {}: {msg}", mnt.display());
            1
        }
        (Err(e), _) if crate::mount::daemon_gone(e) => {
            eprintln!(
                "rovl: umount {}: unmounted, but its daemon had exited (killed or crashed): \
                 its unmount work (final sync, session record) did not run; see \
                 `rovl status WORKDIR` and WORKDIR/rovl/rovl.log",
                mnt.display()
            );
            1
        }
        (Err(e), _) => {
            eprintln!(
                "rovl: umount {}: unmounted, but its daemon could not be asked ({}): \
                 its result is unknown",
                mnt.display(),
                strerror(e)
            );
            1
        }
        (Ok(_), _) => 0,
    }
}

/// How long `rovl umount` waits out references to a busy mount.
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Unmounts `mnt`, retrying while it is busy for up to [`BUSY_PATIENCE`].
/// Many references to a mount are gone a moment later: a process forked
/// by a multi-threaded program holds a copy of every descriptor its parent
/// had open until it execs (a container engine forks all the time), and
/// tools that scan `/proc/PID/fd` hold each file while they look at it.
/// A mount still busy after that (a shell inside it, an open file) stays
/// mounted, and the error is EBUSY as from umount(8).
fn unmount_when_idle(mnt: &Path) -> Result<(), Errno> {
    let deadline = std::time::Instant::now() + BUSY_PATIENCE;
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        match rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::empty()) {
            Err(Errno::BUSY) if std::time::Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// `mnt` as an absolute path with its parent's symlinks resolved. The
/// mountpoint itself is resolved only when it is a symlink or `.`/`..`:
/// the root of a mount whose daemon died cannot be stat'ed.
fn absolute_mountpoint(mnt: &Path) -> Option<PathBuf> {
    let is_link = std::fs::symlink_metadata(mnt).is_ok_and(|m| m.file_type().is_symlink());
    let Some(name) = mnt.file_name().filter(|_| !is_link) else {
        return std::fs::canonicalize(mnt).ok();
    };
    let parent = match mnt.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

/// `rovl status MNT|WORKDIR [--json]`.
pub fn status(target: &Path, json: bool) -> i32 {
    match live_status(target) {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print_live(&s);
            }
            0
        }
        Err(live) => match status::offline(target) {
            Ok(o) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&o).unwrap_or_default());
                } else {
                    print_offline(&o);
                }
                0
            }
            Err(e) if not_a_rovl_mount(live) => {
                eprintln!("rovl: {e}");
                1
            }
            Err(_) => {
                // A rovl mount whose daemon did not answer (it died: the
                // connection is gone) or answered with an error.
                eprintln!(
                    "rovl: {}: cannot ask its daemon: {}",
                    target.display(),
                    strerror(live)
                );
                1
            }
        },
    }
}

/// Whether asking for a live status failed with `e` because the path is
/// on no rovl mount (or cannot be opened at all), not because a rovl
/// daemon failed to answer.
fn not_a_rovl_mount(e: Errno) -> bool {
    matches!(
        e,
        Errno::NOTTY
            | Errno::INVAL
            | Errno::NOSYS
            | Errno::OPNOTSUPP
            | Errno::NOENT
            | Errno::NOTDIR
            | Errno::ACCESS
            | Errno::PERM
            | Errno::LOOP
            | Errno::NAMETOOLONG
    )
}

fn print_live(s: &Status) {
    println!("mountpoint:  {}", s.mountpoint);
    if !s.workdir.is_empty() {
        println!("workdir:     {}", s.workdir);
    }
    println!("daemon pid:  {}", s.pid);
    println!(
        "mode:        {}{}",
        s.mode,
        if s.passthrough { " (passthrough)" } else { "" }
    );
    println!(
        "dirty:       {} file(s), {} byte(s) not yet written back",
        s.dirty_files, s.dirty_bytes
    );
    for d in &s.dirty {
        println!("  {} ({} bytes)", d.path, d.bytes);
    }
    if s.dirty_truncated {
        println!("  ...");
    }
    match &s.last_sync {
        Some(l) => println!(
            "last sync:   {} ({} file(s), {} dir(s), {} ms): {}",
            l.time, l.files, l.dirs, l.duration_ms, l.result
        ),
        None => println!("last sync:   never"),
    }
    if let Some(e) = &s.volatile_error {
        println!("volatile:    every fsync and sync now fails ({e})");
    }
    println!(
        "errors since mount: {}",
        s.errors_total.max(s.errors.len() as u64)
    );
    for e in &s.errors {
        println!("  {} {} {}", e.time, e.errno, e.path);
    }
    if s.errors_truncated {
        println!("  ... (every error is in WORKDIR/rovl/journal)");
    }
}

fn print_offline(o: &Offline) {
    println!("workdir:     {} (not mounted)", o.workdir);
    match &o.session {
        Some(r) => {
            println!(
                "last session: {:?}, {}, pid {}, started {}, ended {}",
                r.state,
                if r.volatile { "volatile" } else { "normal" },
                r.pid,
                r.started,
                r.ended.as_deref().unwrap_or("never (daemon killed?)")
            );
            if let Some(m) = &r.result {
                println!("  unmount: {m}");
            }
        }
        None => println!("last session: unknown"),
    }
    println!("journal: {} error(s)", o.journal.len());
    for e in &o.journal {
        println!("  {} {} {}", e.time, e.errno, e.path);
    }
}
