//! Shared helpers for rovl's integration tests: a layer stack in a scratch
//! directory, rovl and kernel overlayfs mounts of it (all cleaned up by the
//! testbed guards, even when a test fails).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(unused_imports)] // not every test binary needs all of them
pub use testbed::{FuseMount, KernelOverlay, Scratch, escape_option_path as esc};

/// The rovl binary under test.
pub fn rovl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rovl"))
}

/// A `rovl` command.
pub fn rovl() -> Command {
    Command::new(rovl_bin())
}

/// Directories of one overlay: lowers (top first), upper, work, mountpoint.
#[derive(Debug)]
pub struct Stack {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    /// `n` lowers plus upper, work and mnt under `base` (created).
    pub fn under(base: &Path, n: usize) -> Stack {
        let mk = |name: &str| {
            let p = base.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        Stack {
            lowers: (0..n).map(|i| mk(&format!("l{i}"))).collect(),
            upper: mk("upper"),
            work: mk("work"),
            mnt: mk("mnt"),
        }
    }

    /// The same layers, another mountpoint and fresh upper/work (for the
    /// kernel's twin of a stack).
    pub fn twin(&self, base: &Path) -> Stack {
        let mk = |name: &str| {
            let p = base.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        Stack {
            lowers: self.lowers.clone(),
            upper: mk("k-upper"),
            work: mk("k-work"),
            mnt: mk("k-mnt"),
        }
    }

    /// `lowerdir=...,upperdir=...,workdir=...`
    pub fn opts(&self) -> String {
        let lowers: Vec<String> = self.lowers.iter().map(|l| esc(l)).collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            esc(&self.upper),
            esc(&self.work)
        )
    }

    /// `lowerdir=...` only.
    pub fn lower_opts(&self) -> String {
        let lowers: Vec<String> = self.lowers.iter().map(|l| esc(l)).collect();
        format!("lowerdir={}", lowers.join(":"))
    }

    /// Path of `rel` in lower `i`.
    pub fn lower(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }

    /// Path of `rel` in the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// Mounts rovl over `stack` with extra options `extra` (comma-separated,
/// may be empty) and waits for it.
pub fn mount_rovl(stack: &Stack, extra: &str) -> FuseMount {
    let mut opts = stack.opts();
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    mount_rovl_opts(&opts, &stack.mnt)
}

/// [`mount_rovl`] with the daemon's open-file limit set to `nofile` (soft
/// and hard, so it cannot raise it).
pub fn mount_rovl_limited(stack: &Stack, extra: &str, nofile: u32) -> FuseMount {
    let mut opts = stack.opts();
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(rovl_bin())
        .arg("-o")
        .arg(opts)
        .arg(&stack.mnt);
    FuseMount::spawn(cmd, &stack.mnt).unwrap_or_else(|e| panic!("mounting rovl: {e}"))
}

/// Mounts rovl with exactly `opts` at `mnt`.
pub fn mount_rovl_opts(opts: &str, mnt: &Path) -> FuseMount {
    let mut cmd = rovl();
    cmd.arg("-o").arg(opts).arg(mnt);
    FuseMount::spawn(cmd, mnt).unwrap_or_else(|e| panic!("mounting rovl: {e}"))
}

/// Mounts kernel overlayfs (redirect_dir=on,index=off,metacopy=off) over
/// `stack`.
pub fn mount_kernel(stack: &Stack, extra: &str) -> KernelOverlay {
    let lowers: Vec<&Path> = stack.lowers.iter().map(PathBuf::as_path).collect();
    let mut opts = String::from("redirect_dir=on,index=off,metacopy=off,xino=off");
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    KernelOverlay::mount(
        &lowers,
        Some(&stack.upper),
        Some(&stack.work),
        &opts,
        &stack.mnt,
    )
    .unwrap_or_else(|e| panic!("mounting kernel overlayfs: {e}"))
}

/// Runs `rovl ARGS...` to completion: (exit code, stdout, stderr).
pub fn run_rovl<I, S>(args: I) -> (i32, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = rovl().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `errno` of an io::Error.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The error number `f` fails with (panics when it succeeds).
pub fn fails<T: std::fmt::Debug>(f: std::io::Result<T>) -> i32 {
    match f {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => errno(&e),
    }
}

/// Sorted names in directory `p`.
pub fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| String::from_utf8_lossy(e.unwrap().file_name().as_bytes()).into_owned())
        .collect();
    v.sort();
    v
}

/// Writes `data` to `p`, creating parents.
pub fn put(p: &Path, data: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

/// Reads `p` as a string.
pub fn get(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// Sets xattr `name` on `p` (not following symlinks).
pub fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// Reads xattr `name` of `p`, `None` when absent.
pub fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// Makes a 0/0 character device (a kernel whiteout) at `p`.
pub fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

/// A shared, readable and writable mapping of the first `len` bytes of
/// the file open as `fd` (`MAP_FAILED` on failure). Only the mmap call:
/// usable in a forked child.
pub fn map_shared(fd: std::os::fd::RawFd, len: usize) -> *mut libc::c_void {
    // SAFETY: a new mapping at an address the kernel picks; no memory of
    // ours is touched.
    unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    }
}
