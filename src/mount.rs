//! Setting up a mount: checking the request (SPEC §4), preparing the work
//! directory, the FUSE device and mount(2), and the daemon's lifecycle.
//!
//! Every check runs before anything is created, so a refused mount changes
//! nothing in any layer.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::cli::{MountOptions, SyncMode};
use crate::sys::{self, Errno, FileType, Mode, OFlags, SysResult};

/// Where rovl keeps its own state: `WORKDIR/rovl/`.
pub const STATE_DIR: &str = "rovl";
/// The kernel's work area inside WORKDIR (temporary objects).
pub const WORK_DIR: &str = "work";

/// A mount request that passed every check.
#[derive(Debug)]
pub struct Checked {
    /// The parsed options.
    pub opts: MountOptions,
    /// Absolute mountpoint.
    pub mountpoint: PathBuf,
    /// Absolute upperdir.
    pub upperdir: Option<PathBuf>,
    /// Absolute workdir.
    pub workdir: Option<PathBuf>,
    /// Absolute lowerdirs, top first (symlinks resolved).
    pub lowerdirs: Vec<PathBuf>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn describe(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// Whether `e`, from a call on a FUSE mount, means its daemon is gone:
/// ENOTCONN once the daemon's device is closed, ECONNABORTED for a call
/// already queued when the kernel tore the connection down (the daemon
/// dying as it was asked).
pub fn daemon_gone(e: Errno) -> bool {
    matches!(e, Errno::NOTCONN | Errno::CONNABORTED)
}

fn check_dir(what: &str, p: &Path) -> Result<sys::Stat, String> {
    let st = rustix::fs::stat(p).map_err(|e| match e {
        Errno::NOENT => format!("{what} {}: does not exist", p.display()),
        e if daemon_gone(e) => format!(
            "{what} {}: a dead FUSE mount (transport endpoint is not connected)",
            p.display()
        ),
        e => format!("{what} {}: {}", p.display(), describe(e)),
    })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(format!("{what} {}: not a directory", p.display()));
    }
    Ok(st)
}

/// True when `inner` is `outer` or lies below it (by walking `..` up from
/// `inner`, comparing device and inode).
fn is_within(inner: &Path, outer: &sys::Stat) -> bool {
    let Ok(mut fd) = sys::open_dir_path(inner) else {
        return false;
    };
    for _ in 0..4096 {
        let Ok(st) = sys::stat_fd(fd.as_fd()) else {
            return false;
        };
        if st.st_dev == outer.st_dev && st.st_ino == outer.st_ino {
            return true;
        }
        let Ok(parent) = sys::open_dir_at(fd.as_fd(), OsStr::new("..")) else {
            return false;
        };
        let Ok(pst) = sys::stat_fd(parent.as_fd()) else {
            return false;
        };
        if pst.st_dev == st.st_dev && pst.st_ino == st.st_ino {
            return false; // reached /
        }
        fd = parent;
    }
    false
}

fn is_mount_root(p: &Path) -> bool {
    match rustix::fs::statx(
        rustix::fs::CWD,
        p,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::BASIC_STATS,
    ) {
        Ok(stx) => {
            let root = rustix::fs::StatxAttributes::MOUNT_ROOT;
            stx.stx_attributes_mask.contains(root) && stx.stx_attributes.contains(root)
        }
        Err(_) => false,
    }
}

/// Checks a mount request. Nothing is created or changed.
pub fn check(opts: MountOptions, mountpoint: &Path) -> Result<Checked, String> {
    let mountpoint = absolute(mountpoint);
    check_dir("mountpoint", &mountpoint)?;
    // The mount table names it canonically (no `..`, no trailing slash, no
    // symlink): so must we, to find our connection there later.
    let mountpoint = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint);
    if is_mount_root(&mountpoint) {
        return Err(format!(
            "mountpoint {}: busy (something is already mounted there)",
            mountpoint.display()
        ));
    }
    let mut lowerdirs = Vec::new();
    for l in &opts.lowerdirs {
        let st = check_dir("lowerdir", l)?;
        let _ = st;
        // Layer roots given on the command line may be symlinks.
        lowerdirs.push(std::fs::canonicalize(l).unwrap_or_else(|_| absolute(l)));
    }
    let (mut upperdir, mut workdir) = (None, None);
    if let (Some(u), Some(w)) = (&opts.upperdir, &opts.workdir) {
        let ust = check_dir("upperdir", u)?;
        let wst = check_dir("workdir", w)?;
        if ust.st_dev != wst.st_dev {
            return Err(format!(
                "workdir {} is not on the same filesystem as upperdir {}",
                w.display(),
                u.display()
            ));
        }
        if ust.st_dev == wst.st_dev && ust.st_ino == wst.st_ino {
            return Err("upperdir and workdir are the same directory".into());
        }
        if is_within(w, &ust) {
            return Err(format!(
                "workdir {} is inside upperdir {}",
                w.display(),
                u.display()
            ));
        }
        if is_within(u, &wst) {
            return Err(format!(
                "upperdir {} is inside workdir {}",
                u.display(),
                w.display()
            ));
        }
        for l in &opts.lowerdirs {
            let lst = check_dir("lowerdir", l)?;
            if lst.st_dev == ust.st_dev && lst.st_ino == ust.st_ino {
                return Err(format!("upperdir {} is also a lowerdir", u.display()));
            }
        }
        let vfs = rustix::fs::statvfs(u)
            .map_err(|e| format!("upperdir {}: {}", u.display(), describe(e)))?;
        if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) && !opts.ro {
            return Err(format!(
                "upperdir {} is on a read-only filesystem",
                u.display()
            ));
        }
        rustix::fs::access(w, rustix::fs::Access::WRITE_OK)
            .map_err(|e| format!("workdir {}: {}", w.display(), describe(e)))?;
        if in_use(w) {
            return Err(format!(
                "upperdir/workdir {} are in use by a live rovl mount",
                w.display()
            ));
        }
        let mut ours = vec![
            ("upperdir", u.as_path(), ust),
            ("workdir", w.as_path(), wst),
        ];
        // fuse-overlayfs holds WORKDIR/work open, not WORKDIR.
        if let Ok(st) = rustix::fs::stat(w.join(WORK_DIR)) {
            ours.push(("workdir", w.as_path(), st));
        }
        if let Some(e) = used_by_another_overlay(&ours) {
            return Err(e);
        }
        upperdir = Some(std::fs::canonicalize(u).unwrap_or_else(|_| absolute(u)));
        workdir = Some(std::fs::canonicalize(w).unwrap_or_else(|_| absolute(w)));
    }
    Ok(Checked {
        opts,
        mountpoint,
        upperdir,
        workdir,
        lowerdirs,
    })
}

/// The lock a live mount holds on its workdir's state directory.
fn lock_path(workdir: &Path) -> PathBuf {
    workdir.join(STATE_DIR).join("lock")
}

/// True when a live rovl daemon holds the workdir.
fn in_use(workdir: &Path) -> bool {
    let Ok(f) = File::open(lock_path(workdir)) else {
        return false;
    };
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => false,
        Err(_) => true,
    }
}

/// The error for a directory of `dirs` (role, path as given, stat) that a
/// live overlay other than rovl uses as its upper or work directory (rovl
/// mounts hold a lock instead, see [`in_use`]). Mounting over it would let
/// two filesystems rewrite one upper layer, and rovl's cleaning of the work
/// directory would delete the other's temporary files.
///
/// Kernel overlayfs mounts are found by the `upperdir=` and `workdir=`
/// options /proc/self/mountinfo shows: they are the paths given at mount
/// time, so one given as a relative path cannot be found. fuse-overlayfs
/// daemons are found by the directories they hold open, whatever path
/// they were given.
fn used_by_another_overlay(dirs: &[(&str, &Path, sys::Stat)]) -> Option<String> {
    let ours = |dev: u64, ino: u64| {
        dirs.iter()
            .find(|(_, _, d)| d.st_dev == dev && d.st_ino == ino)
    };
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            let Some(m) = MountInfoLine::parse(line) else {
                continue;
            };
            if m.fstype != "overlay" {
                continue;
            }
            // The kernel escapes commas in the paths, so splitting is safe.
            for opt in m.super_opts.split(',') {
                let Some((key, val)) = opt.split_once('=') else {
                    continue;
                };
                if key != "upperdir" && key != "workdir" {
                    continue;
                }
                let path = PathBuf::from(OsString::from_vec(unescape_mountinfo(val)));
                if !path.is_absolute() {
                    continue;
                }
                let Ok(st) = rustix::fs::stat(&path) else {
                    continue;
                };
                if let Some((role, p, _)) = ours(st.st_dev, st.st_ino) {
                    let at = PathBuf::from(OsString::from_vec(unescape_mountinfo(m.mountpoint)));
                    return Some(format!(
                        "{role} {} is in use as the {key} of a live kernel overlayfs mount at {}",
                        p.display(),
                        at.display()
                    ));
                }
            }
        }
    }
    let me = std::process::id().to_string();
    let procs = std::fs::read_dir("/proc").ok()?;
    for e in procs.flatten() {
        let pid = e.file_name();
        if pid.as_bytes().is_empty()
            || !pid.as_bytes().iter().all(u8::is_ascii_digit)
            || *pid == *me
        {
            continue;
        }
        let dir = e.path();
        match std::fs::read(dir.join("comm")) {
            Ok(c) if c.trim_ascii_end() == b"fuse-overlayfs" => {}
            _ => continue,
        }
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // Cached attributes only: a descriptor on a stuck FUSE mount
            // must not hang the check.
            let Ok(st) = rustix::fs::statx(
                rustix::fs::CWD,
                fd.path(),
                rustix::fs::AtFlags::STATX_DONT_SYNC,
                rustix::fs::StatxFlags::INO,
            ) else {
                continue;
            };
            let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
            if let Some((role, p, _)) = ours(dev, st.stx_ino) {
                return Some(format!(
                    "{role} {} is in use by a live fuse-overlayfs mount (process {})",
                    p.display(),
                    pid.to_string_lossy()
                ));
            }
        }
    }
    None
}

/// Creates `dir/name` as a directory unless it exists.
pub fn ensure_dir(dir: BorrowedFd<'_>, name: &str, mode: u32) -> SysResult<OwnedFd> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    sys::open_dir_at(dir, OsStr::new(name))
}

/// Takes the exclusive lock on WORKDIR/rovl/lock (and on the upper
/// directory), held until the daemon exits.
pub fn lock_stack(state: BorrowedFd<'_>, upper: BorrowedFd<'_>) -> Result<(File, OwnedFd), String> {
    let fd = rustix::fs::openat(
        state,
        "lock",
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("cannot create lock file: {}", describe(e)))?;
    let f = File::from(fd);
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| "upperdir/workdir are in use by a live rovl mount".to_string())?;
    let up = sys::dup(upper).map_err(describe)?;
    rustix::fs::flock(&up, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| "upperdir is in use by a live rovl mount".to_string())?;
    Ok((f, up))
}

/// Removes everything in WORKDIR/work but the kernel's `incompat`
/// directory: leftovers of a killed daemon (or kernel overlayfs).
pub fn clean_work(proc: &sys::ProcSelfFd, work: BorrowedFd<'_>) -> SysResult<usize> {
    let mut n = 0;
    for e in sys::read_dir(proc, work)? {
        if e.name == "incompat" {
            continue;
        }
        remove_any(proc, work, &e.name, 0)?;
        n += 1;
    }
    Ok(n)
}

fn remove_any(
    proc: &sys::ProcSelfFd,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    depth: u32,
) -> SysResult<()> {
    let Some(st) = sys::stat_at(dir, name)? else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        if depth > 4096 {
            return Err(Errno::LOOP);
        }
        let sub = sys::open_path_at(dir, name)?;
        for e in sys::read_dir(proc, sub.as_fd())? {
            remove_any(proc, sub.as_fd(), &e.name, depth + 1)?;
        }
        sys::optional(rustix::fs::unlinkat(
            dir,
            name,
            rustix::fs::AtFlags::REMOVEDIR,
        ))?;
    } else {
        sys::optional(rustix::fs::unlinkat(
            dir,
            name,
            rustix::fs::AtFlags::empty(),
        ))?;
    }
    Ok(())
}

/// VFS mount flags from the options.
fn mount_flags(opts: &MountOptions, readonly: bool) -> rustix::mount::MountFlags {
    use rustix::mount::MountFlags as F;
    let mut f = F::empty();
    if readonly {
        f |= F::RDONLY;
    }
    if opts.nodev {
        f |= F::NODEV;
    }
    if opts.nosuid {
        f |= F::NOSUID;
    }
    if opts.noexec {
        f |= F::NOEXEC;
    }
    if opts.noatime {
        f |= F::NOATIME;
    }
    if opts.sync_io {
        f |= F::DIRSYNC;
    }
    f
}

/// Opens /dev/fuse and mounts it at `mountpoint` as `fuse.rovl`.
pub fn fuse_mount(
    opts: &MountOptions,
    mountpoint: &Path,
    readonly: bool,
    allow_other: bool,
) -> Result<OwnedFd, String> {
    let dev = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot open /dev/fuse: {}", describe(e)))?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions,max_read={}",
        dev.as_raw_fd(),
        1 << 20
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let data = std::ffi::CString::new(data).map_err(|_| "bad mount data".to_string())?;
    rustix::mount::mount(
        "rovl",
        mountpoint,
        "fuse.rovl",
        mount_flags(opts, readonly),
        data.as_c_str(),
    )
    .map_err(|e| format!("mount {}: {}", mountpoint.display(), describe(e)))?;
    Ok(dev)
}

/// The topmost mount at `mountpoint` (an absolute path) in
/// /proc/self/mountinfo, as its device (`MAJOR:MINOR`) and filesystem
/// type. Read by name, never touching the mount itself, so the mount of a
/// daemon that died is found too.
fn mountinfo_at(mountpoint: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.as_os_str().as_encoded_bytes();
    let mut found = None;
    for line in info.lines() {
        let Some(m) = MountInfoLine::parse(line) else {
            continue;
        };
        if unescape_mountinfo(m.mountpoint) != want {
            continue;
        }
        found = Some((m.dev.to_string(), m.fstype.to_string()));
    }
    found
}

/// The fields rovl reads of one line of /proc/self/mountinfo:
/// `ID PARENT DEV ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER_OPTS`.
struct MountInfoLine<'a> {
    /// `MAJOR:MINOR`.
    dev: &'a str,
    /// Escaped (see [`unescape_mountinfo`]).
    mountpoint: &'a str,
    /// Empty when the line has no ` - ` part.
    fstype: &'a str,
    /// The superblock options, paths in them escaped.
    super_opts: &'a str,
}

impl<'a> MountInfoLine<'a> {
    /// `None` for a line too short to name a mount point.
    fn parse(line: &'a str) -> Option<MountInfoLine<'a>> {
        let (head, tail) = line.split_once(" - ").unwrap_or((line, ""));
        let mut h = head.split(' ');
        let dev = h.nth(2)?;
        let mountpoint = h.nth(1)?;
        let mut t = tail.split(' ');
        let fstype = t.next().unwrap_or("");
        let super_opts = t.nth(1).unwrap_or("");
        Some(MountInfoLine {
            dev,
            mountpoint,
            fstype,
            super_opts,
        })
    }
}

/// The FUSE connection number (the device minor) of the mount at
/// `mountpoint`.
pub fn fuse_connection(mountpoint: &Path) -> Option<u32> {
    let (dev, _) = mountinfo_at(mountpoint)?;
    dev.split_once(':')?.1.parse().ok()
}

/// The filesystem type of the topmost mount at `mountpoint` (an absolute
/// path); `None` when nothing is mounted there.
pub fn fs_type_at(mountpoint: &Path) -> Option<String> {
    mountinfo_at(mountpoint).map(|(_, ty)| ty)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Volatile mode's marker, as the kernel lays it out.
pub fn volatile_marker(work: &Path) -> PathBuf {
    work.join(WORK_DIR).join("incompat").join("volatile")
}

/// The pipe through which a daemon tells the waiting parent how the mount
/// went.
#[derive(Debug)]
pub struct Ready(File);

impl Ready {
    /// The mount is live.
    pub fn ok(mut self) {
        let _ = self.0.write_all(b"ok\n");
    }
    /// The mount failed with `msg` (one line).
    pub fn fail(mut self, msg: &str) {
        let _ = writeln!(self.0, "error: {}", msg.replace('\n', " "));
    }
}

/// Forks: the parent waits for the child to report and exits with its
/// result; the child returns its end of the pipe and becomes the daemon.
pub fn daemonize() -> Result<Ready, String> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {}", describe(e)))?;
    match sys::fork().map_err(|e| format!("fork: {}", describe(e)))? {
        None => {
            drop(r);
            let _ = rustix::process::setsid();
            Ok(Ready(File::from(w)))
        }
        Some(_child) => {
            drop(w);
            let mut msg = String::new();
            let _ = File::from(r).read_to_string(&mut msg);
            let line = msg.lines().next().unwrap_or("");
            if line == "ok" {
                std::process::exit(0);
            }
            let m = line
                .strip_prefix("error: ")
                .unwrap_or("the daemon exited before the mount was live");
            eprintln!("rovl: {m}");
            std::process::exit(1);
        }
    }
}

/// Keeps the volatile-mode choice visible in one place.
pub fn is_volatile(opts: &MountOptions) -> bool {
    opts.sync_mode == SyncMode::Volatile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_place_type_and_options() {
        let l = "41 29 0:38 / /run/a\\040b rw,relatime shared:20 - overlay overlay \
                 rw,lowerdir=/l,upperdir=/u\\054x,workdir=/w";
        let m = MountInfoLine::parse(l).unwrap();
        assert_eq!(m.dev, "0:38");
        assert_eq!(unescape_mountinfo(m.mountpoint), b"/run/a b");
        assert_eq!(m.fstype, "overlay");
        assert_eq!(m.super_opts, "rw,lowerdir=/l,upperdir=/u\\054x,workdir=/w");
        let bare = MountInfoLine::parse("1 2 8:1 / /x rw").unwrap();
        assert_eq!((bare.dev, bare.mountpoint, bare.fstype), ("8:1", "/x", ""));
        assert!(MountInfoLine::parse("1 2 8:1 /").is_none());
    }
}
