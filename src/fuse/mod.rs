//! The FUSE side: the only module that knows the FUSE library. It
//! translates kernel requests into calls on the overlay engine and the
//! writeback layer, and decides per open how data flows (passthrough to the
//! real file, or through the daemon and the kernel's page cache).

mod handles;
mod io;
pub mod notify;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno as FErrno, FileAttr, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags as FRenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use tracing::{debug, warn};

use self::handles::Handles;
use self::io::IoModes;
use crate::overlay::files::{Fileattr, ListEntry};
use crate::overlay::{Attr, Caller, NewKind, OpenFile, Overlay, SetAttr, SetTime};
use crate::sys::{self, Errno, FileType, OFlags, RenameFlags};

/// `_IO(0xE5, 1)`: make everything this mount wrote durable; report
/// writeback errors (SPEC E2).
pub const ROVL_IOC_SYNCFS: u32 = 0xE501;
/// `_IOR(0xE5, 2, char[16383])`: the mount's status as NUL-terminated JSON
/// (`rovl status`, and `rovl umount` to find the daemon).
pub const ROVL_IOC_STATUS: u32 = 0xBFFF_E502;

/// `FS_IOC_GETFLAGS` (`_IOR('f', 1, long)`); the kernel forwards it from
/// `lsattr` with a 4-byte argument.
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
/// `FS_IOC_SETFLAGS` (`_IOW('f', 2, long)`), from `chattr`, 4 bytes.
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;

/// Anything that carries an observer's cursors (open files, directories).
trait ObserverOf: Send + Sync {
    fn observer(&self) -> &crate::writeback::Observer;
}

impl ObserverOf for OpenFile {
    fn observer(&self) -> &crate::writeback::Observer {
        &self.observer
    }
}

impl ObserverOf for DirHandle {
    fn observer(&self) -> &crate::writeback::Observer {
        &self.observer
    }
}

/// How the daemon was configured to talk to the kernel.
#[derive(Debug, Clone)]
pub struct FuseConfig {
    /// Entry and attribute cache timeout.
    pub ttl: Duration,
    /// Try FUSE passthrough (needs CAP_SYS_ADMIN).
    pub passthrough: bool,
    /// Largest stacking depth of the layers' filesystems (for passthrough).
    pub max_stack_depth: u32,
    /// The workdir, reported by `ROVL_IOC_WORKDIR`.
    pub workdir: Option<std::path::PathBuf>,
    /// Descriptors open files may hold; past it the least recently used
    /// are closed and reopened on demand.
    pub open_fd_budget: usize,
}

/// A directory open on the mount.
#[derive(Debug)]
struct DirHandle {
    node: crate::overlay::node::NodeRef,
    /// The listing being read, and its id (see [`Listing`]).
    entries: Mutex<Option<Listing>>,
    observer: crate::writeback::Observer,
}

/// A snapshot of a directory's entries, taken when a reader starts at
/// offset 0 (opendir, rewinddir). The offset of its entry `i` is
/// `id << 32 | (i + 1)`: the kernel's directory cache appends entries
/// from any reader whose offsets continue the ones it holds, so two
/// snapshots of one directory must never share offsets, or a reader still
/// in an older snapshot would complete the cache with entries that no
/// longer exist and leave out new ones, for every later reader.
#[derive(Debug, Clone)]
struct Listing {
    id: u64,
    entries: Arc<Vec<ListEntry>>,
}

impl Listing {
    /// Offsets fit in the kernel's `loff_t` with room to spare.
    const ID_BITS: u32 = 30;

    fn new(entries: Vec<ListEntry>) -> Listing {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // 0 would make the first offsets small numbers again.
        let id = NEXT.fetch_add(1, Ordering::Relaxed) % ((1 << Self::ID_BITS) - 1) + 1;
        Listing {
            id,
            entries: Arc::new(entries),
        }
    }

    /// The entries after offset `off` (0: all), each with the offset that
    /// follows it. An offset of another snapshot (a seekdir across a
    /// rewind) counts by its index.
    fn after(&self, off: u64) -> impl Iterator<Item = (u64, &ListEntry)> {
        let from = (off & 0xffff_ffff) as usize;
        self.entries
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, e)| (self.id << 32 | (i as u64 + 1), e))
    }
}

impl DirHandle {
    /// About how much heap the listing this handle alone holds takes
    /// (`None` when it holds none, or shares it).
    fn listing_bytes(&self) -> Option<usize> {
        let e = self.entries.lock();
        let list = &e.as_ref()?.entries;
        if Arc::strong_count(list) > 1 {
            return None;
        }
        let names: usize = list.iter().map(|e| e.name.len()).sum();
        Some(list.capacity() * std::mem::size_of::<ListEntry>() + names)
    }
}

/// The FUSE filesystem: the overlay engine plus handle and io-mode tables.
#[derive(Debug)]
pub struct RovlFs {
    ov: Arc<Overlay>,
    cfg: FuseConfig,
    handles: Handles,
    io: IoModes,
}

fn err(e: Errno) -> FErrno {
    FErrno::from_i32(e.raw_os_error())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn kind(t: FileType) -> fuser::FileType {
    match t {
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharacterDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::RegularFile | FileType::Unknown => fuser::FileType::RegularFile,
    }
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => SetTime::At(s),
    })
}

fn oflags(f: OpenFlags) -> OFlags {
    OFlags::from_bits_retain(f.0 as u32)
}

impl RovlFs {
    /// The filesystem over `ov`.
    pub fn new(ov: Arc<Overlay>, cfg: FuseConfig) -> Self {
        RovlFs {
            ov,
            handles: Handles::new(cfg.open_fd_budget),
            cfg,
            io: IoModes::default(),
        }
    }

    fn entry(&self, reply: ReplyEntry, node: &crate::overlay::node::Node, attr: &Attr) {
        reply.entry(&self.cfg.ttl, &fattr(attr), Generation(node.generation()));
    }

    fn negative(&self, reply: ReplyEntry) {
        let attr = FileAttr {
            ino: INodeNo(0),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: fuser::FileType::RegularFile,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        reply.entry(&self.cfg.ttl, &attr, Generation(0));
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        k: NewKind<'_>,
        (perm, umask): (u32, u32),
        reply: ReplyEntry,
    ) {
        match self.ov.create(parent.0, name, k, perm, umask, caller(req)) {
            Ok((node, attr, _)) => self.entry(reply, &node, &attr),
            Err(e) => reply.error(err(e)),
        }
    }

    /// The listing of the open directory `fh` to read from `offset`: a
    /// new one when a reader starts (offset 0: opendir or rewinddir, which
    /// must show what changed since), else the one it is reading.
    fn listing(&self, fh: FileHandle, offset: u64) -> Result<Listing, FErrno> {
        let d = self.handles.dir(fh)?;
        let mut g = d.entries.lock();
        if offset != 0 {
            if let Some(l) = &*g {
                return Ok(l.clone());
            }
        }
        let l = Listing::new(self.ov.list_dir(&d.node).map_err(err)?);
        *g = Some(l.clone());
        Ok(l)
    }
}

impl Filesystem for RovlFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        let mut want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_HAS_IOCTL_DIR
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            // The kernel enforces ACLs (with default_permissions) and
            // leaves the umask to rovl, which a default ACL replaces.
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK;
        let passthrough = self.cfg.passthrough && caps.contains(InitFlags::FUSE_PASSTHROUGH);
        if passthrough {
            want |= InitFlags::FUSE_PASSTHROUGH;
            let _ = config.set_max_stack_depth(self.cfg.max_stack_depth.clamp(1, 2));
        } else {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
            // With the writeback cache, an open with O_TRUNC done by the
            // daemon (atomic O_TRUNC) races with truncates of the same
            // file: after OPEN the kernel drops the inode lock, then sets
            // its own size to 0 without a request, undoing in the kernel
            // only a truncate that came in between (a file read as 3
            // bytes through the mount held 2,987; tests/FINDINGS.md F21).
            // The kernel's own truncation, a SETATTR under the inode
            // lock, has no such race.
            want &= !InitFlags::FUSE_ATOMIC_O_TRUNC;
        }
        let want = want & caps;
        if let Err(missing) = config.add_capabilities(want) {
            warn!("kernel lacks FUSE capabilities {missing:?}");
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        self.io.passthrough = passthrough;
        self.ov.set_writeback_cache(!passthrough);
        debug!(passthrough, "FUSE connection initialized");
        Ok(())
    }

    fn destroy(&mut self) {
        self.ov.wb.unmounting(&self.ov);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.ov.lookup(parent.0, name, true) {
            Ok(Some((node, attr))) => self.entry(reply, &node, &attr),
            Ok(None) => self.negative(reply),
            Err(e) => reply.error(err(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ov.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = match fh.and_then(|fh| self.handles.file(fh).ok()) {
            Some(f) => Ok(f.node.clone()),
            None => self.ov.node(ino.0),
        };
        match node.and_then(|n| self.ov.getattr(&n)) {
            Ok(a) => reply.attr(&self.cfg.ttl, &fattr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Nothing but (with the writeback cache) ctime: what the kernel
        // leaves of a chown(-1, -1) once it hands the clearing of setuid
        // bits to rovl.
        let only_ctime = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none();
        if only_ctime {
            // chown(-1, -1): see `Overlay::chown_unchanged`.
            match self.ov.chown_unchanged(ino.0, caller(req)) {
                Ok(a) => reply.attr(&self.cfg.ttl, &fattr(&a)),
                Err(e) => reply.error(err(e)),
            }
            return;
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self.ov.setattr(ino.0, set, caller(req)) {
            Ok(a) => reply.attr(&self.cfg.ttl, &fattr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ov.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let t = FileType::from_raw_mode(mode);
        if t == FileType::Directory || t == FileType::Symlink || t == FileType::Unknown {
            reply.error(FErrno::EINVAL);
            return;
        }
        self.make(
            req,
            parent,
            name,
            NewKind::Special(t, u64::from(rdev)),
            (mode & 0o7777, umask),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(
            req,
            parent,
            name,
            NewKind::Dir,
            (mode & 0o7777, umask),
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let t = target.as_os_str().as_bytes();
        self.make(
            req,
            parent,
            link_name,
            NewKind::Symlink(t),
            (0o777, 0),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Some(node) = self.ov.cached_child(parent.0, name) {
            self.handles.removing(&self.ov, node);
        }
        match self.ov.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.ov.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FRenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(FRenameFlags::RENAME_WHITEOUT) {
            reply.error(FErrno::EINVAL);
            return;
        }
        let f = RenameFlags::from_bits_retain(flags.bits());
        if !f.contains(RenameFlags::EXCHANGE) {
            if let Some(node) = self.ov.cached_child(newparent.0, newname) {
                self.handles.removing(&self.ov, node);
            }
        }
        match self.ov.rename(parent.0, name, newparent.0, newname, f) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.ov.link(ino.0, newparent.0, newname) {
            Ok((node, attr)) => self.entry(reply, &node, &attr),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let of = match self.ov.open(ino.0, oflags(flags), caller(req)) {
            Ok(of) => of,
            Err(e) => {
                reply.error(err(e));
                return;
            }
        };
        let via_daemon = self.ov.writes_kill_privs(&of, caller(req));
        let (fh, of) = self.handles.add_file(of);
        self.io
            .open(&self.ov, fh, &of, via_daemon, io::Reply::Open(reply));
        self.handles.trim();
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self
            .handles
            .file(fh)
            .and_then(|f| self.ov.read(&f, offset, size).map_err(err));
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
        self.handles.trim();
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let r = self
            .handles
            .file(fh)
            .and_then(|f| self.ov.write(&f, offset, data, kill).map_err(err));
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
        self.handles.trim();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) reports no writeback errors (kernel semantics); they stay
        // reportable through fsync and sync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let of = self.handles.remove_file(&self.ov, fh);
        if let Some(of) = of {
            self.io.release(fh.0, &of);
            self.ov.release(&of);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self
            .handles
            .file(fh)
            .and_then(|f| self.ov.fsync(&f, datasync).map_err(err));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let node = match self.ov.node(ino.0) {
            Ok(n) if n.is_dir() => n,
            Ok(_) => {
                reply.error(FErrno::ENOTDIR);
                return;
            }
            Err(e) => {
                reply.error(err(e));
                return;
            }
        };
        let observer = self.ov.wb.observe(&node);
        let fh = self.handles.add_dir(DirHandle {
            node,
            entries: Mutex::new(None),
            observer,
        });
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing(fh, offset) {
            Ok(l) => l,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        for (off, e) in listing.after(offset) {
            if reply.add(INodeNo(e.ino), off, kind(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(fh, offset) {
            Ok(l) => l,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        for (off, e) in listing.after(offset) {
            if e.name.as_bytes() == b"." || e.name.as_bytes() == b".." {
                // The kernel takes only the name, inode number and type of
                // these two (`fuse_direntplus_link` skips them before it
                // looks at the attributes), so they cost no getattr.
                if reply.add(
                    INodeNo(e.ino),
                    off,
                    &e.name,
                    &Duration::ZERO,
                    &zero_attr(e.ino),
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            match self.ov.lookup(ino.0, &e.name, false) {
                Ok(Some((node, attr))) => {
                    let full = reply.add(
                        INodeNo(node.id()),
                        off,
                        &e.name,
                        &self.cfg.ttl,
                        &fattr(&attr),
                        Generation(node.generation()),
                    );
                    if full {
                        // Not sent: the kernel took no reference.
                        self.ov.forget(node.id(), 1);
                        break;
                    }
                }
                // Vanished since the listing was taken: skip it.
                Ok(None) => continue,
                Err(e) => {
                    warn!(?e, "readdirplus lookup failed");
                    continue;
                }
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
        if let Some(d) = self.handles.remove_dir(fh) {
            self.ov.dir_closed(&d.node);
            let bytes = d.listing_bytes();
            drop(d);
            if let Some(bytes) = bytes {
                crate::heap::freed(bytes);
            }
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.handles.dir(fh).and_then(|d| {
            self.ov
                .fsyncdir(&d.node, &d.observer, datasync)
                .map_err(err)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.ov.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.ov.getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(FErrno::ERANGE),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.ov.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(FErrno::ERANGE),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.ov.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let f = OFlags::from_bits_retain(flags as u32);
        match self.ov.create(
            parent.0,
            name,
            NewKind::File(f),
            mode & 0o7777,
            umask,
            caller(req),
        ) {
            Ok((node, attr, Some(file))) => {
                let of = self.ov.adopt_created(node.clone(), file);
                let via_daemon = self.ov.writes_kill_privs(&of, caller(req));
                let (fh, of) = self.handles.add_file(of);
                self.io.open(
                    &self.ov,
                    fh,
                    &of,
                    via_daemon,
                    io::Reply::Create(
                        reply,
                        self.cfg.ttl,
                        fattr(&attr),
                        Generation(node.generation()),
                    ),
                );
                self.handles.trim();
            }
            Ok((_, _, None)) => reply.error(FErrno::EIO),
            Err(e) => reply.error(err(e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        match cmd {
            ROVL_IOC_SYNCFS => {
                let observer: Arc<dyn ObserverOf> = match self.handles.file(fh) {
                    Ok(f) => f,
                    Err(_) => match self.handles.dir(fh) {
                        Ok(d) => d,
                        Err(e) => {
                            reply.error(e);
                            return;
                        }
                    },
                };
                // A sync flushes the kernel's cache of this mount, which
                // sends requests back to us: never on a request thread.
                let ov = self.ov.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("rovl-sync".into())
                        .spawn(move || match ov.sync_mount(observer.observer()) {
                            Ok(()) => reply.ioctl(0, &[]),
                            Err(e) => reply.error(err(e)),
                        });
                if let Err(e) = spawned {
                    warn!(%e, "cannot start a sync thread");
                }
            }
            ROVL_IOC_STATUS => {
                let workdir = self
                    .cfg
                    .workdir
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let status = self.ov.wb.status(&self.ov, &workdir, self.io.passthrough);
                // The reply ends with a NUL.
                match status.to_json_within((out_size as usize).saturating_sub(1)) {
                    Some(mut v) => {
                        v.resize(out_size as usize, 0);
                        reply.ioctl(0, &v);
                    }
                    None => reply.error(FErrno::ERANGE),
                }
            }
            FS_IOC_GETFLAGS | sys::FS_IOC_FSGETXATTR => {
                match self.ov.fileattr_get(ino.0, cmd == sys::FS_IOC_FSGETXATTR) {
                    Ok(a) => {
                        let bytes = a.to_bytes();
                        if bytes.len() > out_size as usize {
                            reply.error(FErrno::EINVAL);
                        } else {
                            reply.ioctl(0, &bytes);
                        }
                    }
                    Err(e) => reply.error(err(e)),
                }
            }
            FS_IOC_SETFLAGS | sys::FS_IOC_FSSETXATTR => {
                let attr = Fileattr::from_bytes(cmd == sys::FS_IOC_FSSETXATTR, in_data);
                match attr.map(|a| self.ov.fileattr_set(ino.0, a)) {
                    Some(Ok(())) => reply.ioctl(0, &[]),
                    Some(Err(e)) => reply.error(err(e)),
                    None => reply.error(FErrno::EINVAL),
                }
            }
            _ => reply.error(FErrno::ENOTTY),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .handles
            .file(fh)
            .and_then(|f| self.ov.fallocate(&f, mode, offset, length).map_err(err));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = self
            .handles
            .file(fh)
            .and_then(|f| self.ov.lseek(&f, offset, whence).map_err(err));
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            let a = self.handles.file(fh_in)?;
            let b = self.handles.file(fh_out)?;
            self.ov
                .copy_file_range(&a, offset_in, &b, offset_out, len)
                .map_err(err)
        })();
        match r {
            Ok(n) => reply.written(n.min(u64::from(u32::MAX)) as u32),
            Err(e) => reply.error(e),
        }
    }
}

/// Attributes for a `.` or `..` entry of READDIRPLUS: fuser takes the entry's
/// inode number from `ino` and its type from the mode; the rest goes unread.
fn zero_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::Directory,
        perm: 0o755,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
