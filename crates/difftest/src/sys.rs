//! Thin wrappers over the system calls the tests make, returning
//! `io::Result` so that the errno of a failure is what gets compared.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The path as a C string.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// mknod(2).
pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::mknod(c.as_ptr(), mode, dev) }).map(drop)
}

/// setxattr(2) (`follow`) or lsetxattr(2) with `flags`.
pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32, follow: bool) -> io::Result<()> {
    let (c, n) = (cpath(p)?, cstr(name)?);
    let f = if follow {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    // SAFETY: valid C strings and buffer.
    cvt(unsafe {
        f(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// lsetxattr(2) creating or replacing.
pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    setxattr(p, name, value, 0, false)
}

/// removexattr(2) / lremovexattr(2).
pub fn removexattr(p: &Path, name: &str, follow: bool) -> io::Result<()> {
    let (c, n) = (cpath(p)?, cstr(name)?);
    let f = if follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    // SAFETY: valid C strings.
    cvt(unsafe { f(c.as_ptr(), n.as_ptr()) }).map(drop)
}

/// Names of the xattrs of `p` (not following symlinks).
pub fn llistxattr(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: buffer of the given size.
        let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match cvt_size(r) {
            Ok(n) => {
                buf.truncate(n);
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Value of xattr `name` of `p` (not following symlinks).
pub fn lgetxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (c, n) = (cpath(p)?, cstr(name)?);
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: buffer of the given size.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match cvt_size(r) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// fchownat(2), following the last symlink or not.
pub fn chown(p: &Path, uid: u32, gid: u32, follow: bool) -> io::Result<()> {
    let c = cpath(p)?;
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid path.
    cvt(unsafe { libc::fchownat(libc::AT_FDCWD, c.as_ptr(), uid, gid, flags) }).map(drop)
}

/// lchown(2).
pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    chown(p, uid, gid, false)
}

/// chmod(2) (follows symlinks).
pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(drop)
}

/// A time for utimensat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// UTIME_OMIT
    Omit,
    /// UTIME_NOW
    Now,
    /// seconds, nanoseconds
    At(i64, i64),
}

fn timespec(t: TimeArg) -> libc::timespec {
    match t {
        TimeArg::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        TimeArg::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeArg::At(s, n) => libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        },
    }
}

/// utimensat(2).
pub fn utimensat(p: &Path, atime: TimeArg, mtime: TimeArg, follow: bool) -> io::Result<()> {
    let c = cpath(p)?;
    let ts = [timespec(atime), timespec(mtime)];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid path and two timespecs.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) }).map(drop)
}

/// Sets times to whole seconds (None: leave alone).
pub fn utimens(
    p: &Path,
    atime: Option<(i64, i64)>,
    mtime: Option<(i64, i64)>,
    follow: bool,
) -> io::Result<()> {
    let t = |x: Option<(i64, i64)>| x.map_or(TimeArg::Omit, |(s, n)| TimeArg::At(s, n));
    utimensat(p, t(atime), t(mtime), follow)
}

/// renameat2(2).
pub fn rename2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid paths.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// lstat(2).
pub fn lstat(p: &Path) -> io::Result<libc::stat> {
    let c = cpath(p)?;
    // SAFETY: zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out buffer.
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// fstat(2).
pub fn fstat(fd: i32) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: out buffer; a bad fd is an error, not UB.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// open(2); the fd is the caller's to close.
pub fn open(p: &Path, flags: i32, mode: u32) -> io::Result<i32> {
    let c = cpath(p)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// close(2).
pub fn close(fd: i32) -> io::Result<()> {
    // SAFETY: the caller owns fd.
    cvt(unsafe { libc::close(fd) }).map(drop)
}

/// pwrite(2) of all of `data` (a short write is returned as is).
pub fn pwrite(fd: i32, data: &[u8], off: u64) -> io::Result<usize> {
    // SAFETY: buffer of the given length.
    cvt_size(unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as i64) })
}

/// pread(2) until `len` bytes or end of file.
pub fn pread(fd: i32, len: usize, off: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: buffer of the given length.
        let r = unsafe {
            libc::pread(
                fd,
                buf[got..].as_mut_ptr().cast(),
                len - got,
                (off + got as u64) as i64,
            )
        };
        match cvt_size(r) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// ftruncate(2).
pub fn ftruncate(fd: i32, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::ftruncate(fd, size as i64) }).map(drop)
}

/// truncate(2).
pub fn truncate(p: &Path, size: u64) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::truncate(c.as_ptr(), size as i64) }).map(drop)
}

/// link(2).
pub fn link(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid paths.
    cvt(unsafe { libc::link(a.as_ptr(), b.as_ptr()) }).map(drop)
}

/// symlink(2).
pub fn symlink(target: &str, at: &Path) -> io::Result<()> {
    let (a, b) = (cstr(target)?, cpath(at)?);
    // SAFETY: valid strings.
    cvt(unsafe { libc::symlink(a.as_ptr(), b.as_ptr()) }).map(drop)
}

/// mkdir(2).
pub fn mkdir(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) }).map(drop)
}

/// rmdir(2).
pub fn rmdir(p: &Path) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::rmdir(c.as_ptr()) }).map(drop)
}

/// unlink(2).
pub fn unlink(p: &Path) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::unlink(c.as_ptr()) }).map(drop)
}

/// readlink(2).
pub fn readlink(p: &Path) -> io::Result<Vec<u8>> {
    std::fs::read_link(p).map(|t| t.as_os_str().as_bytes().to_vec())
}

/// Runs `f` with filesystem uid/gid `cred` and no supplementary groups on
/// this thread only (raw syscalls: the C library would change every
/// thread), then returns to root. `None` runs `f` as is.
pub fn as_cred<T>(cred: Option<(u32, u32)>, f: impl FnOnce() -> T) -> T {
    let Some((uid, gid)) = cred else {
        return f();
    };
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: buffer of 256 gids.
    let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    // SAFETY: raw per-thread credential syscalls; restored below.
    unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
        libc::syscall(libc::SYS_setfsgid, gid as libc::c_long);
        libc::syscall(libc::SYS_setfsuid, uid as libc::c_long);
    }
    let r = f();
    // SAFETY: as above, back to root (capabilities come back with fsuid 0).
    unsafe {
        libc::syscall(libc::SYS_setfsuid, 0 as libc::c_long);
        libc::syscall(libc::SYS_setfsgid, 0 as libc::c_long);
        libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
    }
    r
}

/// mount(2) of a tmpfs at `at`.
pub fn mount_tmpfs(at: &Path, opts: &str) -> io::Result<()> {
    let (src, c, t, o) = (cstr("tmpfs")?, cpath(at)?, cstr("tmpfs")?, cstr(opts)?);
    // SAFETY: valid strings.
    cvt(unsafe { libc::mount(src.as_ptr(), c.as_ptr(), t.as_ptr(), 0, o.as_ptr().cast()) })
        .map(drop)
}

/// umount2(2).
pub fn umount(at: &Path, lazy: bool) -> io::Result<()> {
    let c = cpath(at)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid path.
    cvt(unsafe { libc::umount2(c.as_ptr(), flags) }).map(drop)
}

/// The errno of an error (EIO when it has none).
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The symbolic name of an errno.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::ESTALE => "ESTALE",
        libc::ENOTCONN => "ENOTCONN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

/// The names in directory `p`, read without changing its access time
/// (`O_NOATIME`), so that looking at a layer does not change it.
pub fn list_dir_noatime(p: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let c = cpath(p)?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a fresh directory descriptor that fdopendir takes over
    // (closedir closes it).
    let dir = unsafe { libc::fdopendir(fd) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: `dir` is a valid DIR* until closedir below.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is a
        // NUL-terminated string that lives until the next readdir call.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(std::ffi::OsStr::from_bytes(b).to_owned());
        }
    }
    // SAFETY: `dir` came from fdopendir and is closed once.
    unsafe { libc::closedir(dir) };
    Ok(out)
}
