//! Helpers of the overlay integration suite (namespace, lifecycle, bad
//! input, layer forms, inodes, hostile layers, copy-up): raw system calls
//! that report errno, a comparable snapshot of a mounted tree, and the
//! kernel-overlayfs oracle (run the same script on rovl and on the kernel
//! over the same lower layers, compare results and views).
//!
//! Used next to `common`: a test file declares `mod common; mod support;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{FuseMount, Scratch, Stack, mount_kernel, mount_rovl, put};

// ------------------------------------------------------------ system calls

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// 0 for success, else the errno.
pub fn rc<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// `renameat2(from, to, flags)`.
pub fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cs(from), cs(to));
    // SAFETY: valid NUL-terminated paths.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

/// `mknod(p, mode, dev)` (mode includes the file type).
pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = cs(p);
    // SAFETY: valid path.
    check(unsafe { libc::mknod(c.as_ptr(), mode, dev) })
}

/// `link(from, to)`.
pub fn link(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)
}

/// `symlink(target, at)`.
pub fn symlink(target: impl AsRef<OsStr>, at: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(Path::new(target.as_ref()), at)
}

/// `lsetxattr` with flags (0, XATTR_CREATE, XATTR_REPLACE).
pub fn lset(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (c, n) = (cs(p), CString::new(name).unwrap());
    // SAFETY: valid pointers and lengths.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// `lgetxattr`.
pub fn lget(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (c, n) = (cs(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid pointers and lengths.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// `lremovexattr`.
pub fn lremove(p: &Path, name: &str) -> io::Result<()> {
    let (c, n) = (cs(p), CString::new(name).unwrap());
    // SAFETY: valid pointers.
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

/// `llistxattr`, sorted.
pub fn llist(p: &Path) -> io::Result<Vec<String>> {
    let c = cs(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid pointers and lengths.
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    let mut v: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// `lchown`.
pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

/// `chmod`.
pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let c = cs(p);
    // SAFETY: valid path.
    check(unsafe { libc::chmod(c.as_ptr(), mode) })
}

/// `truncate`.
pub fn truncate(p: &Path, len: i64) -> io::Result<()> {
    let c = cs(p);
    // SAFETY: valid path.
    check(unsafe { libc::truncate(c.as_ptr(), len) })
}

/// `utimensat(p, [atime, mtime], AT_SYMLINK_NOFOLLOW)`, seconds + nanos.
pub fn utimes(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = cs(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: valid path and array of two timespecs.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `open(p, flags, 0o644)` as a File.
pub fn open(p: &Path, flags: i32) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let c = cs(p);
    // SAFETY: valid path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// `lstat`, as std metadata.
pub fn lstat(p: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::symlink_metadata(p)
}

/// `readlink`.
pub fn readlink(p: &Path) -> io::Result<Vec<u8>> {
    std::fs::read_link(p).map(|t| t.into_os_string().into_vec())
}

/// Writes `data` to existing or new `p` (truncating), without creating
/// parents (unlike `common::put`).
pub fn write(p: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::write(p, data)
}

/// True when `p` is a kernel whiteout (0/0 character device).
pub fn is_whiteout(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match lstat(p) {
        Ok(m) => m.file_type().is_char_device() && m.rdev() == 0,
        Err(_) => false,
    }
}

/// True when `p` exists (without following a final symlink).
pub fn exists(p: &Path) -> bool {
    lstat(p).is_ok()
}

/// Creates a directory `p` with parents.
pub fn mkdirs(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
}

// ------------------------------------------------------------------ views

/// What a comparable snapshot records of one object. Times, sizes of
/// directories and inode numbers are left out (see the inode tests for
/// those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    /// `d`, `f`, `l`, `p` (fifo), `s`, `c`, `b`.
    pub kind: char,
    /// Permission bits with setuid/setgid/sticky.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count of non-directories.
    pub nlink: u64,
    /// Device number of devices.
    pub rdev: u64,
    /// Content of regular files.
    pub data: Option<Vec<u8>>,
    /// Target of symlinks.
    pub target: Option<Vec<u8>>,
    /// Xattrs (name → value).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

fn kind_of(m: &std::fs::Metadata) -> char {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        'd'
    } else if t.is_file() {
        'f'
    } else if t.is_symlink() {
        'l'
    } else if t.is_fifo() {
        'p'
    } else if t.is_socket() {
        's'
    } else if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else {
        '?'
    }
}

/// Snapshot of one object.
pub fn obj(p: &Path) -> io::Result<Obj> {
    let m = lstat(p)?;
    let kind = kind_of(&m);
    let mut xattrs = BTreeMap::new();
    for n in llist(p).unwrap_or_default() {
        if let Ok(v) = lget(p, &n) {
            xattrs.insert(n, v);
        }
    }
    Ok(Obj {
        kind,
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        nlink: if kind == 'd' { 0 } else { m.nlink() },
        rdev: if matches!(kind, 'c' | 'b') {
            m.rdev()
        } else {
            0
        },
        data: if kind == 'f' {
            Some(std::fs::read(p)?)
        } else {
            None
        },
        target: if kind == 'l' {
            Some(readlink(p)?)
        } else {
            None
        },
        xattrs,
    })
}

/// `v` with file contents shown as their length and a hash, for messages.
pub fn brief(v: &BTreeMap<String, Obj>) -> BTreeMap<String, Obj> {
    v.iter()
        .map(|(k, o)| {
            let mut o = o.clone();
            if let Some(d) = &o.data {
                let text = format!("{} bytes, fnv {:016x}", d.len(), difftest::rng::fnv(d));
                o.data = Some(text.into_bytes());
            }
            (k.clone(), o)
        })
        .collect()
}

/// Path (relative, `/`-joined, lossy) → snapshot, for every object below
/// `root` (root itself as "").
pub fn view(root: &Path) -> BTreeMap<String, Obj> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Obj>) {
    let rel = dir
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let o = obj(dir).unwrap_or_else(|e| panic!("lstat {}: {e}", dir.display()));
    out.insert(rel, o);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = lstat(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        if m.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(
                rel,
                obj(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            );
        }
    }
}

/// Paths below `root` (as [`view`] names them) → (st_ino, st_dev).
pub fn inodes(root: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u64)>) {
        let m = lstat(dir).unwrap();
        let rel = dir
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert(rel, (m.ino(), m.dev()));
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = lstat(&p).unwrap();
            if m.is_dir() {
                go(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, (m.ino(), m.dev()));
            }
        }
    }
    go(root, root, &mut out);
    out
}

/// Describes the differences of two views (empty when equal).
pub fn diff<V: PartialEq + std::fmt::Debug>(
    a_name: &str,
    a: &BTreeMap<String, V>,
    b_name: &str,
    b: &BTreeMap<String, V>,
) -> String {
    let mut s = String::new();
    for (k, va) in a {
        match b.get(k) {
            None => s.push_str(&format!("  {k:?}: only in {a_name}: {va:?}\n")),
            Some(vb) if vb != va => s.push_str(&format!(
                "  {k:?}:\n    {a_name}: {va:?}\n    {b_name}: {vb:?}\n"
            )),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            s.push_str(&format!("  {k:?}: only in {b_name}: {vb:?}\n"));
        }
    }
    s
}

/// Asserts that two mounted trees look the same.
#[track_caller]
pub fn assert_same_view(rovl: &Path, kernel: &Path) {
    let (a, b) = (view(rovl), view(kernel));
    let d = diff("rovl", &a, "kernel", &b);
    assert!(d.is_empty(), "views differ:\n{d}");
}

// ----------------------------------------------------------------- oracle

/// What a script did: one line per step, `what → errno` (0 = success).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Log(pub Vec<(String, i32)>);

impl Log {
    /// Records the outcome of a step and returns its value.
    pub fn r<T>(&mut self, what: impl Into<String>, res: io::Result<T>) -> Option<T> {
        let what = what.into();
        match res {
            Ok(v) => {
                self.0.push((what, 0));
                Some(v)
            }
            Err(e) => {
                self.0.push((what, e.raw_os_error().unwrap_or(-1)));
                None
            }
        }
    }

    /// Records a value observed (compared as text).
    pub fn v(&mut self, what: impl Into<String>, value: impl std::fmt::Debug) {
        self.0.push((format!("{} = {value:?}", what.into()), 0));
    }

    /// The errno recorded for step `what`.
    pub fn errno(&self, what: &str) -> i32 {
        self.0
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("no step {what:?} in {self:?}"))
    }
}

fn log_diff(a: &Log, b: &Log) -> String {
    let mut s = String::new();
    let n = a.0.len().max(b.0.len());
    for i in 0..n {
        let x = a.0.get(i);
        let y = b.0.get(i);
        if x != y {
            s.push_str(&format!("  step {i}: rovl {x:?} / kernel {y:?}\n"));
        }
    }
    s
}

/// Errno name for messages.
pub fn ename(e: i32) -> String {
    if e == 0 {
        return "ok".into();
    }
    io::Error::from_raw_os_error(e).to_string()
}

/// Runs `script` on a rovl mount of `st` (with `rovl_opts`) and on kernel
/// overlayfs over the same lowers (fresh upper/work), and asserts that
/// every step had the same outcome and that both trees look the same.
/// Returns the log. Both mounts are gone when it returns.
pub fn oracle(s: &Scratch, st: &Stack, script: impl Fn(&Path) -> Log) -> Log {
    oracle_with(s, st, "", script)
}

/// [`oracle`] with extra rovl mount options.
pub fn oracle_with(s: &Scratch, st: &Stack, rovl_opts: &str, script: impl Fn(&Path) -> Log) -> Log {
    let k = st.twin(s.path());
    let km = mount_kernel(&k, "");
    let rm = mount_rovl(st, rovl_opts);
    let klog = script(&k.mnt);
    let rlog = script(&st.mnt);
    let d = log_diff(&rlog, &klog);
    assert!(
        d.is_empty(),
        "rovl and kernel overlayfs disagree:\n{d}\nrovl:   {rlog:?}\nkernel: {klog:?}"
    );
    assert_same_view(&st.mnt, &k.mnt);
    drop(rm);
    drop(km);
    rlog
}

/// Mounts kernel overlayfs over `lowers` with upper `upper` and a fresh
/// work directory under `base`, at a fresh mountpoint under `base`.
pub fn kernel_on(
    base: &Path,
    tag: &str,
    lowers: &[PathBuf],
    upper: &Path,
) -> (crate::common::KernelOverlay, PathBuf) {
    let work = base.join(format!("{tag}-work"));
    let mnt = base.join(format!("{tag}-mnt"));
    mkdirs(&work);
    mkdirs(&mnt);
    let ls: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let k = crate::common::KernelOverlay::mount(
        &ls,
        Some(upper),
        Some(&work),
        "redirect_dir=on,index=off,metacopy=off,xino=off",
        &mnt,
    )
    .unwrap_or_else(|e| panic!("mounting kernel overlayfs on {}: {e}", upper.display()));
    (k, mnt)
}

/// Mounts rovl over `lowers` with upper `upper` and a fresh work directory
/// under `base`, at a fresh mountpoint under `base`.
pub fn rovl_on(base: &Path, tag: &str, lowers: &[PathBuf], upper: &Path) -> (FuseMount, Stack) {
    let st = Stack {
        lowers: lowers.to_vec(),
        upper: upper.to_path_buf(),
        work: base.join(format!("{tag}-work")),
        mnt: base.join(format!("{tag}-mnt")),
    };
    mkdirs(&st.work);
    mkdirs(&st.mnt);
    let m = mount_rovl(&st, "");
    (m, st)
}

// -------------------------------------------------------------- processes

/// True while process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Waits up to `t` for `cond`.
pub fn wait_for(t: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > t {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when something is mounted exactly at `p` (per mountinfo).
pub fn mounted_at(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    testbed::mounts()
        .unwrap()
        .iter()
        .any(|m| m.mount_point == p)
}

/// The filesystem type mounted at `p`, if any (last mount wins).
pub fn fstype_at(p: &Path) -> Option<String> {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    testbed::mounts()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point == p)
        .map(|m| m.fs_type)
        .next_back()
}

/// Runs a shell snippet as user nobody (65534:65534, no supplementary
/// groups): (exit code, stderr).
pub fn as_nobody(script: &str) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Recursive listing of a real directory (paths relative to `root`, with
/// type and, for files, content): for "nothing changed" checks.
pub fn tree(root: &Path) -> BTreeMap<String, Obj> {
    if !root.exists() {
        return BTreeMap::new();
    }
    view(root)
}

/// An `OsString` from raw bytes.
pub fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// Sorted names in directory `p`, or the error of listing it.
pub fn try_names(p: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p)? {
        v.push(String::from_utf8_lossy(e?.file_name().as_bytes()).into_owned());
    }
    v.sort();
    Ok(v)
}

/// A daemon run in the foreground (`rovl -f`) as our own child, for tests
/// that need its exit status. (testbed's `FuseMount::unmount` can report a
/// spurious error when a parallel test's new mount reuses the mount id.)
/// Drop unmounts (lazily if needed) and kills the child if it is still
/// there after 10 s.
pub struct Foreground {
    child: Option<std::process::Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Foreground {
    /// Spawns `cmd` (stdout/stderr to `log`) and waits up to 10 s for a FUSE
    /// mount at `mnt`. Panics with the log if none appears.
    pub fn spawn(mut cmd: Command, mnt: &Path, log: &Path) -> Foreground {
        let f = std::fs::File::create(log).unwrap();
        cmd.stdin(std::process::Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        let mut me = Foreground {
            child: Some(cmd.spawn().unwrap()),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
        };
        let ok = wait_for(Duration::from_secs(10), || {
            fstype_at(mnt).is_some_and(|t| t.starts_with("fuse"))
                || me
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
        });
        assert!(
            ok && fstype_at(mnt).is_some(),
            "no mount at {}: {}",
            mnt.display(),
            me.log()
        );
        me
    }

    /// Pid of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What the daemon wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `t` for the daemon to exit; its exit code.
    pub fn wait(&mut self, t: Duration) -> Option<i32> {
        let mut code = None;
        let c = self.child.as_mut()?;
        wait_for(t, || match c.try_wait() {
            Ok(Some(st)) => {
                code = Some(st.code().unwrap_or(-1));
                true
            }
            _ => false,
        });
        if code.is_some() {
            self.child = None;
        }
        code
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if fstype_at(&self.mnt).is_some_and(|t| t.starts_with("fuse")) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .output();
            if fstype_at(&self.mnt).is_some_and(|t| t.starts_with("fuse")) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
            }
        }
        if self.wait(Duration::from_secs(10)).is_none() {
            if let Some(c) = self.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The pid of the daemon behind `m`, once the programs that started it
/// (rovl's waiting parent, mount.fuse3, a shell) have exited — before
/// that, `daemon_pids()` lists them too.
pub fn daemon_pid(m: &mut FuseMount) -> u32 {
    let mut pids = Vec::new();
    let ok = wait_for(Duration::from_secs(10), || {
        pids = m.daemon_pids();
        pids.len() == 1
    });
    assert!(ok, "not exactly one daemon process: {pids:?}");
    pids[0]
}

/// Unmounts `mnt` with `umount` or `fusermount3 -u` (`how`), retrying for
/// 2 s while it is busy (another program of the machine walking the
/// scratch tree can hold it for a moment). Panics with the last error.
pub fn unmount_with(how: &str, mnt: &Path) {
    let mut last = String::new();
    for _ in 0..40 {
        let mut cmd = Command::new(how);
        if how == "fusermount3" {
            cmd.arg("-u");
        }
        let out = cmd.arg(mnt).output().unwrap();
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if !last.to_lowercase().contains("busy") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{how} {}: {last}", mnt.display());
}

/// What is left in the work directory of `st` (`WORKDIR/work`), but the
/// volatile mode's `incompat` marker: temporary objects of copy-ups and
/// creates, which a finished operation or a new mount must not leave.
pub fn work_leftovers(st: &Stack) -> Vec<String> {
    crate::common::names(&st.work.join("work"))
        .into_iter()
        .filter(|n| n != "incompat")
        .collect()
}

// ------------------------------------------------------ random operations

/// A seed for a randomized test: the environment variable `var` if set
/// (to replay a failure), else the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// The lower tree [`random_operation`] works on (two lowers): directories
/// `d0`..`d2` merged from both, files of 0 to 5 KiB in the bottom one,
/// subdirectories with a file each in the top one.
pub fn lay_out_for_random_operations(st: &Stack) {
    for d in 0..3 {
        for f in 0..6 {
            put(
                &st.lower(1, &format!("d{d}/f{f}")),
                &"lower ".repeat(f * 300),
            );
            put(&st.lower(0, &format!("d{d}/s{f}/f{f}")), "top");
        }
        // Big enough for passthrough reads of the lower file (which pin it).
        for b in 0..2 {
            put(
                &st.lower(1, &format!("d{d}/big{b}")),
                &"big ".repeat(400_000),
            );
        }
        link(
            &st.lower(1, &format!("d{d}/f1")),
            &st.lower(1, &format!("d{d}/hl")),
        )
        .unwrap();
    }
}

/// The names in each directory of [`lay_out_for_random_operations`] that
/// [`random_operation`] picks from (some exist in the lowers, some not).
const RANDOM_NAMES: [&str; 11] = [
    "f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "big0", "big1", "hl",
];

/// One random operation on a small set of names of the mount of `st`
/// (laid out by [`lay_out_for_random_operations`]; names that exist and
/// names that do not, files and directories, big lower files and lower
/// hard links): writes, removals, renames and exchanges, mkdir and rmdir,
/// chmod, xattrs, links, truncates, listings, fsyncs, fsyncdirs,
/// `ROVL_IOC_SYNCFS`, `ROVL_IOC_STATUS`, reads, a write while the same
/// file is open for reading, stats, writes through a shared mapping
/// (also after the file's close), writes and fsyncs of an open file
/// whose name was removed, fallocate, copy_file_range, symlinks, device
/// nodes, renames with flags, setattr through an open descriptor, times
/// and owners, xattr removal and listing. Any errno is a possible outcome.
pub fn random_operation(r: &mut difftest::rng::Rng, st: &Stack) -> io::Result<()> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let mut name = || {
        let d = r.below(3);
        match r.below(3) {
            0 => st.m(&format!("d{d}/{}", r.pick(&RANDOM_NAMES))),
            1 => st.m(&format!("d{d}/s{}", r.below(8))),
            _ => st.m(&format!("d{d}/s{}/f{}", r.below(8), r.below(8))),
        }
    };
    let (a, b) = (name(), name());
    match r.below(30) {
        0 => write(&a, b"new"),
        1 => open(&a, libc::O_WRONLY | libc::O_APPEND).and_then(|f| f.write_all_at(b"more", 0)),
        2 => std::fs::remove_file(&a),
        3 => std::fs::rename(&a, &b),
        4 => rename2(&a, &b, libc::RENAME_EXCHANGE),
        5 => std::fs::create_dir(&a),
        6 => std::fs::remove_dir(&a),
        7 => chmod(&a, 0o700 | r.below(0o100) as u32),
        8 => lset(&a, "user.x", b"y", 0),
        9 => link(&a, &b),
        10 => truncate(&a, r.below(5000) as i64),
        11 => try_names(&a).map(drop),
        12 => open(&a, libc::O_RDWR).and_then(|f| f.sync_all()),
        13 => open(&a, libc::O_RDONLY | libc::O_DIRECTORY).and_then(|f| f.sync_all()),
        14 => open(&st.mnt, libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|f| Ok(rovl::sys::ioctl_rovl_sync(f.as_fd())?)),
        15 => open(&a, libc::O_RDONLY).and_then(|f| {
            let mut buf = [0u8; 4096];
            f.read_at(&mut buf, r.below(2 << 20)).map(drop)
        }),
        16 => open(&a, libc::O_RDONLY).and_then(|reader| {
            let writer = open(&a, libc::O_RDWR)?;
            writer.write_all_at(b"w", 0)?;
            let mut buf = [0u8; 16];
            reader.read_at(&mut buf, 0).map(drop)
        }),
        17 => open(&st.mnt, libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|f| Ok(rovl::sys::ioctl_rovl_status(f.as_fd()).map(drop)?)),
        18 => lstat(&a).map(drop),
        19 => open(&a, libc::O_RDWR).and_then(|f| {
            let close_first = r.below(2) == 0;
            write_through_mapping(f, r.below(8192) as usize, close_first)
        }),
        20 => open(&a, libc::O_RDWR).and_then(|f| {
            std::fs::remove_file(&a)?;
            f.write_all_at(b"orphan", r.below(8192))?;
            f.sync_all()
        }),
        21 => open(&a, libc::O_RDWR).and_then(|f| {
            let mode = [0, libc::FALLOC_FL_KEEP_SIZE][r.below(2) as usize];
            let (off, len) = (r.below(1 << 20) as i64, 1 + r.below(1 << 16) as i64);
            // SAFETY: a plain call on an open descriptor.
            check(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
        }),
        22 => open(&a, libc::O_RDONLY).and_then(|from| {
            let to = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&b)?;
            let len = r.below(1 << 20) as usize;
            // SAFETY: open descriptors; null offsets use the files' own.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    len,
                    0,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }),
        23 => symlink("f1", &a),
        24 => mknod(&a, libc::S_IFCHR | 0o644, 0),
        25 => {
            let flags = [libc::RENAME_NOREPLACE, libc::RENAME_WHITEOUT][r.below(2) as usize];
            rename2(&a, &b, flags)
        }
        26 => open(&a, libc::O_RDWR).and_then(|f| {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
            f.set_len(r.below(9000))
        }),
        27 => utimes(&a, (1, 0), (r.below(1 << 30) as i64, 0))
            .and_then(|()| lchown(&a, r.below(3) as u32, r.below(3) as u32)),
        28 => lremove(&a, "user.x").and_then(|()| llist(&a).map(drop)),
        _ => open(&a, libc::O_RDWR).and_then(|f| {
            f.write_all_at(b"buffered", r.below(1 << 16))?;
            // A check that starts no writeback (E5).
            // SAFETY: a plain call on an open descriptor.
            check(unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WAIT_AFTER)
            })
        }),
    }
}

/// Writes a byte at `at` through a shared mapping of `f` (if the file is
/// that long) and unmaps without msync, so the data stays dirty for the
/// next sync to find; if `close_first`, every descriptor of the file is
/// closed before the write (the mapping alone still writes to it). The
/// mapping lives in a forked child: another thread may truncate the file
/// meanwhile, and the write then raises SIGBUS, which ends only the child.
fn write_through_mapping(f: std::fs::File, at: usize, close_first: bool) -> io::Result<()> {
    let len = f.metadata()?.len() as usize;
    if at >= len {
        return Ok(());
    }
    // SAFETY: the child runs only async-signal-safe calls (mmap, close,
    // munmap, _exit) and a store into its own mapping.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child, on its copy of the descriptor; the store
        // stays inside the `len` bytes mapped.
        unsafe {
            let p = crate::common::map_shared(f.as_raw_fd(), len);
            if p == libc::MAP_FAILED {
                libc::_exit(1);
            }
            if close_first {
                libc::close(f.as_raw_fd());
            }
            *(p as *mut u8).add(at) = b'm';
            libc::munmap(p, len);
            libc::_exit(0);
        }
    }
    if close_first {
        drop(f);
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    check(unsafe { libc::waitpid(pid, &mut status, 0) })
}
