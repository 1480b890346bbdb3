//! Operations on a mounted overlay, and the applier that performs them
//! through system calls and captures what the caller sees.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::rng;
pub use crate::sys::TimeArg;
use crate::sys::{self, errno};

/// Number of file-descriptor slots an operation sequence can hold open.
pub const SLOTS: usize = 3;

/// The unprivileged caller some steps run as (fsuid/fsgid).
pub const USER: (u32, u32) = (1000, 1000);

/// rename(2) flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// plain rename
    Plain,
    /// RENAME_NOREPLACE
    NoReplace,
    /// RENAME_EXCHANGE
    Exchange,
}

/// xattr set flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XFlag {
    /// create or replace
    Any,
    /// XATTR_CREATE
    Create,
    /// XATTR_REPLACE
    Replace,
}

/// What mknod makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// a fifo
    Fifo,
    /// a character device major/minor (0/0 is a whiteout to overlays)
    Chr(u32, u32),
    /// a regular file
    Reg,
    /// a socket
    Sock,
}

/// How a slot opens its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// O_RDONLY
    Read,
    /// O_WRONLY
    Write,
    /// O_RDWR
    ReadWrite,
    /// O_WRONLY|O_TRUNC
    Trunc,
    /// O_WRONLY|O_APPEND
    Append,
    /// O_RDWR|O_CREAT (mode 0644)
    Create,
    /// O_RDONLY|O_DIRECTORY
    Dir,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_EXCL|O_WRONLY, mode), close
    Create { path: String, mode: u32 },
    /// open(O_WRONLY), pwrite `len` bytes of data `seed` at `off`, close
    Write {
        path: String,
        off: u64,
        len: u64,
        seed: u64,
    },
    /// truncate(2)
    Truncate { path: String, size: u64 },
    /// chmod(2)
    Chmod { path: String, mode: u32 },
    /// fchownat(2)
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        follow: bool,
    },
    /// utimensat(2)
    Utimens {
        path: String,
        atime: TimeArg,
        mtime: TimeArg,
        follow: bool,
    },
    /// setxattr(2) / lsetxattr(2)
    SetXattr {
        path: String,
        name: String,
        value: String,
        flag: XFlag,
        follow: bool,
    },
    /// removexattr(2) / lremovexattr(2)
    RemoveXattr {
        path: String,
        name: String,
        follow: bool,
    },
    /// mkdir(2)
    Mkdir { path: String, mode: u32 },
    /// rmdir(2)
    Rmdir { path: String },
    /// unlink(2)
    Unlink { path: String },
    /// renameat2(2)
    Rename {
        from: String,
        to: String,
        mode: RenameMode,
    },
    /// link(2)
    Link { from: String, to: String },
    /// symlink(2)
    Symlink { target: String, path: String },
    /// mknod(2)
    Mknod {
        path: String,
        kind: NodeKind,
        mode: u32,
    },
    /// open `path` into `slot` (closing what the slot held)
    Open {
        slot: usize,
        path: String,
        mode: OpenMode,
    },
    /// pread through a slot
    FdRead { slot: usize, off: u64, len: u64 },
    /// pwrite through a slot
    FdWrite {
        slot: usize,
        off: u64,
        len: u64,
        seed: u64,
    },
    /// ftruncate through a slot
    FdTruncate { slot: usize, size: u64 },
    /// fstat through a slot
    FdStat { slot: usize },
    /// close a slot
    Close { slot: usize },
}

/// One step: an operation and who performs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The operation.
    pub op: Op,
    /// Performed as [`USER`] instead of root.
    pub user: bool,
}

impl Step {
    /// `op` as root.
    pub fn root(op: Op) -> Step {
        Step { op, user: false }
    }

    /// `op` as the unprivileged [`USER`].
    pub fn user(op: Op) -> Step {
        Step { op, user: true }
    }

    /// The step as Rust source.
    pub fn to_rust(&self) -> String {
        let who = if self.user { "user" } else { "root" };
        format!("Step::{who}({})", self.op.to_rust())
    }
}

/// What the caller saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Ok,
    /// Success with a value (bytes read, fstat fields).
    Val(String),
    /// Failure with this errno.
    Err(i32),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Val(v) => write!(f, "ok({v})"),
            Outcome::Err(e) => write!(f, "{}", sys::errno_name(*e)),
        }
    }
}

fn q(s: &str) -> String {
    format!("{s:?}.into()")
}

impl Op {
    /// The operation as Rust source.
    pub fn to_rust(&self) -> String {
        match self {
            Op::Create { path, mode } => {
                format!("Op::Create {{ path: {}, mode: 0o{mode:o} }}", q(path))
            }
            Op::Write {
                path,
                off,
                len,
                seed,
            } => format!(
                "Op::Write {{ path: {}, off: {off}, len: {len}, seed: {seed} }}",
                q(path)
            ),
            Op::Truncate { path, size } => {
                format!("Op::Truncate {{ path: {}, size: {size} }}", q(path))
            }
            Op::Chmod { path, mode } => {
                format!("Op::Chmod {{ path: {}, mode: 0o{mode:o} }}", q(path))
            }
            Op::Chown {
                path,
                uid,
                gid,
                follow,
            } => format!(
                "Op::Chown {{ path: {}, uid: {uid}, gid: {gid}, follow: {follow} }}",
                q(path)
            ),
            Op::Utimens {
                path,
                atime,
                mtime,
                follow,
            } => format!(
                "Op::Utimens {{ path: {}, atime: TimeArg::{atime:?}, mtime: TimeArg::{mtime:?}, follow: {follow} }}",
                q(path)
            ),
            Op::SetXattr {
                path,
                name,
                value,
                flag,
                follow,
            } => format!(
                "Op::SetXattr {{ path: {}, name: {}, value: {}, flag: XFlag::{flag:?}, follow: {follow} }}",
                q(path),
                q(name),
                q(value)
            ),
            Op::RemoveXattr { path, name, follow } => format!(
                "Op::RemoveXattr {{ path: {}, name: {}, follow: {follow} }}",
                q(path),
                q(name)
            ),
            Op::Mkdir { path, mode } => {
                format!("Op::Mkdir {{ path: {}, mode: 0o{mode:o} }}", q(path))
            }
            Op::Rmdir { path } => format!("Op::Rmdir {{ path: {} }}", q(path)),
            Op::Unlink { path } => format!("Op::Unlink {{ path: {} }}", q(path)),
            Op::Rename { from, to, mode } => format!(
                "Op::Rename {{ from: {}, to: {}, mode: RenameMode::{mode:?} }}",
                q(from),
                q(to)
            ),
            Op::Link { from, to } => {
                format!("Op::Link {{ from: {}, to: {} }}", q(from), q(to))
            }
            Op::Symlink { target, path } => {
                format!("Op::Symlink {{ target: {}, path: {} }}", q(target), q(path))
            }
            Op::Mknod { path, kind, mode } => format!(
                "Op::Mknod {{ path: {}, kind: NodeKind::{kind:?}, mode: 0o{mode:o} }}",
                q(path)
            ),
            Op::Open { slot, path, mode } => format!(
                "Op::Open {{ slot: {slot}, path: {}, mode: OpenMode::{mode:?} }}",
                q(path)
            ),
            Op::FdRead { slot, off, len } => {
                format!("Op::FdRead {{ slot: {slot}, off: {off}, len: {len} }}")
            }
            Op::FdWrite {
                slot,
                off,
                len,
                seed,
            } => format!("Op::FdWrite {{ slot: {slot}, off: {off}, len: {len}, seed: {seed} }}"),
            Op::FdTruncate { slot, size } => {
                format!("Op::FdTruncate {{ slot: {slot}, size: {size} }}")
            }
            Op::FdStat { slot } => format!("Op::FdStat {{ slot: {slot} }}"),
            Op::Close { slot } => format!("Op::Close {{ slot: {slot} }}"),
        }
    }

    /// Short name of the operation kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Truncate { .. } => "truncate",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimens { .. } => "utimens",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Mknod { .. } => "mknod",
            Op::Open { .. } => "open",
            Op::FdRead { .. } => "fdread",
            Op::FdWrite { .. } => "fdwrite",
            Op::FdTruncate { .. } => "fdtruncate",
            Op::FdStat { .. } => "fdstat",
            Op::Close { .. } => "close",
        }
    }

    /// The paths the operation names (for the generator's bookkeeping and
    /// the shrinker's simplifications).
    pub fn paths_mut(&mut self) -> Vec<&mut String> {
        match self {
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Unlink { path }
            | Op::Mknod { path, .. }
            | Op::Open { path, .. }
            | Op::Symlink { path, .. } => vec![path],
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            _ => vec![],
        }
    }
}

/// Performs operations on one mount, keeping the slots' file descriptors.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    slots: [Option<i32>; SLOTS],
}

fn res(r: io::Result<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Err(errno(&e)),
    }
}

fn mode_bits(m: OpenMode) -> i32 {
    match m {
        OpenMode::Read => libc::O_RDONLY,
        OpenMode::Write => libc::O_WRONLY,
        OpenMode::ReadWrite => libc::O_RDWR,
        OpenMode::Trunc => libc::O_WRONLY | libc::O_TRUNC,
        OpenMode::Append => libc::O_WRONLY | libc::O_APPEND,
        OpenMode::Create => libc::O_RDWR | libc::O_CREAT,
        OpenMode::Dir => libc::O_RDONLY | libc::O_DIRECTORY,
    }
}

/// A short description of read bytes: length and fingerprint.
pub fn describe_bytes(b: &[u8]) -> String {
    format!("{} bytes #{:016x}", b.len(), rng::fnv(b))
}

impl Applier {
    /// An applier for the mount at `root`.
    pub fn new(root: &Path) -> Applier {
        Applier {
            root: root.to_path_buf(),
            slots: [None; SLOTS],
        }
    }

    /// The mount root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// The open slots: (slot, fd).
    pub fn open_fds(&self) -> Vec<(usize, i32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|fd| (i, fd)))
            .collect()
    }

    /// Closes every slot.
    pub fn close_all(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(fd) = s.take() {
                let _ = sys::close(fd);
            }
        }
    }

    fn slot(&self, slot: usize) -> Result<i32, Outcome> {
        self.slots
            .get(slot)
            .copied()
            .flatten()
            .ok_or(Outcome::Err(libc::EBADF))
    }

    /// Performs `step` and returns what the caller saw.
    pub fn apply(&mut self, step: &Step) -> Outcome {
        let cred = step.user.then_some(USER);
        sys::as_cred(cred, || self.apply_op(&step.op))
    }

    fn apply_op(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Create { path, mode } => {
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                match sys::open(&self.p(path), flags, *mode) {
                    Ok(fd) => res(sys::close(fd)),
                    Err(e) => Outcome::Err(errno(&e)),
                }
            }
            Op::Write {
                path,
                off,
                len,
                seed,
            } => match sys::open(&self.p(path), libc::O_WRONLY | libc::O_NONBLOCK, 0) {
                // O_NONBLOCK: a fifo at that name (renames move them around)
                // must not wait for a reader; ENXIO on both sides.
                Ok(fd) => {
                    let r = sys::pwrite(fd, &rng::data(*seed, *len as usize), *off);
                    let c = sys::close(fd);
                    match (r, c) {
                        (Ok(n), Ok(())) if n as u64 == *len => Outcome::Ok,
                        (Ok(n), Ok(())) => Outcome::Val(format!("short write {n}")),
                        (Err(e), _) | (_, Err(e)) => Outcome::Err(errno(&e)),
                    }
                }
                Err(e) => Outcome::Err(errno(&e)),
            },
            Op::Truncate { path, size } => res(sys::truncate(&self.p(path), *size)),
            Op::Chmod { path, mode } => res(sys::chmod(&self.p(path), *mode)),
            Op::Chown {
                path,
                uid,
                gid,
                follow,
            } => res(sys::chown(&self.p(path), *uid, *gid, *follow)),
            Op::Utimens {
                path,
                atime,
                mtime,
                follow,
            } => res(sys::utimensat(&self.p(path), *atime, *mtime, *follow)),
            Op::SetXattr {
                path,
                name,
                value,
                flag,
                follow,
            } => {
                let f = match flag {
                    XFlag::Any => 0,
                    XFlag::Create => libc::XATTR_CREATE,
                    XFlag::Replace => libc::XATTR_REPLACE,
                };
                res(sys::setxattr(
                    &self.p(path),
                    name,
                    value.as_bytes(),
                    f,
                    *follow,
                ))
            }
            Op::RemoveXattr { path, name, follow } => {
                res(sys::removexattr(&self.p(path), name, *follow))
            }
            Op::Mkdir { path, mode } => res(sys::mkdir(&self.p(path), *mode)),
            Op::Rmdir { path } => res(sys::rmdir(&self.p(path))),
            Op::Unlink { path } => res(sys::unlink(&self.p(path))),
            Op::Rename { from, to, mode } => {
                let flags = match mode {
                    RenameMode::Plain => 0,
                    RenameMode::NoReplace => libc::RENAME_NOREPLACE,
                    RenameMode::Exchange => libc::RENAME_EXCHANGE,
                };
                res(sys::rename2(&self.p(from), &self.p(to), flags))
            }
            Op::Link { from, to } => res(sys::link(&self.p(from), &self.p(to))),
            Op::Symlink { target, path } => res(sys::symlink(target, &self.p(path))),
            Op::Mknod { path, kind, mode } => {
                let (t, dev) = match kind {
                    NodeKind::Fifo => (libc::S_IFIFO, 0),
                    NodeKind::Chr(a, b) => (libc::S_IFCHR, libc::makedev(*a, *b)),
                    NodeKind::Reg => (libc::S_IFREG, 0),
                    NodeKind::Sock => (libc::S_IFSOCK, 0),
                };
                res(sys::mknod(&self.p(path), t | (mode & 0o7777), dev))
            }
            Op::Open { slot, path, mode } => {
                if *slot >= SLOTS {
                    return Outcome::Err(libc::EBADF);
                }
                if let Some(fd) = self.slots[*slot].take() {
                    let _ = sys::close(fd);
                }
                // O_NONBLOCK: opening a fifo must not wait for a writer.
                match sys::open(&self.p(path), mode_bits(*mode) | libc::O_NONBLOCK, 0o644) {
                    Ok(fd) => {
                        self.slots[*slot] = Some(fd);
                        Outcome::Ok
                    }
                    Err(e) => Outcome::Err(errno(&e)),
                }
            }
            Op::FdRead { slot, off, len } => match self.slot(*slot) {
                Ok(fd) => match sys::pread(fd, *len as usize, *off) {
                    Ok(b) => Outcome::Val(describe_bytes(&b)),
                    Err(e) => Outcome::Err(errno(&e)),
                },
                Err(o) => o,
            },
            Op::FdWrite {
                slot,
                off,
                len,
                seed,
            } => match self.slot(*slot) {
                Ok(fd) => match sys::pwrite(fd, &rng::data(*seed, *len as usize), *off) {
                    Ok(n) if n as u64 == *len => Outcome::Ok,
                    Ok(n) => Outcome::Val(format!("short write {n}")),
                    Err(e) => Outcome::Err(errno(&e)),
                },
                Err(o) => o,
            },
            Op::FdTruncate { slot, size } => match self.slot(*slot) {
                Ok(fd) => res(sys::ftruncate(fd, *size)),
                Err(o) => o,
            },
            Op::FdStat { slot } => match self.slot(*slot) {
                Ok(fd) => match sys::fstat(fd) {
                    Ok(st) => {
                        let mut s = String::new();
                        let _ = write!(
                            s,
                            "mode 0{:o} uid {} gid {} nlink {}",
                            st.st_mode, st.st_uid, st.st_gid, st.st_nlink
                        );
                        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                            let _ = write!(s, " size {}", st.st_size);
                        }
                        Outcome::Val(s)
                    }
                    Err(e) => Outcome::Err(errno(&e)),
                },
                Err(o) => o,
            },
            Op::Close { slot } => match self.slots.get_mut(*slot).and_then(Option::take) {
                Some(fd) => res(sys::close(fd)),
                None => Outcome::Err(libc::EBADF),
            },
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.close_all();
    }
}
