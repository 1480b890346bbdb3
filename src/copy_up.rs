//! Copy-up: building an upper copy of a lower object in the work directory
//! and publishing it with one rename, so the upper layer never holds a
//! partial copy (SPEC §2).
//!
//! The copy keeps data (reflink when the filesystem can, else data extents
//! only, so sparse files stay sparse), owner, mode, times and xattrs, and
//! records its origin the way kernel overlayfs does. Outside volatile mode
//! the copy and its directory entry are durable before copy-up returns.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::layers::markers;
use crate::layers::object::ObjRef;
use crate::overlay::Overlay;
use crate::overlay::keylocks::KeyGuard;
use crate::overlay::node::{Layers, MAX_DEPTH, Node, NodeId, NodeRef, ROOT_ID};
use crate::sys::{
    self, Errno, FileType, IFlags, Mode, OFlags, RenameFlags, Stat, SysResult, Time, xattr,
};

/// What to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// Everything.
    Full,
    /// Metadata only: the caller truncates the file to zero right away.
    Truncated,
}

/// Whether the copy records its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Record `trusted.overlay.origin` (the copy keeps the inode number of
    /// the lower file it came from).
    Keep,
    /// Do not: the copy is a file of its own from now on (its own inode
    /// number, here and under kernel overlayfs).
    Drop,
}

/// Makes sure `node` has an upper copy, copying its ancestors first.
///
/// The caller holds `ov.rename_lock` (shared or exclusive), so no name on
/// the way changes meanwhile. Fails with EBUSY when the node's lower file
/// is pinned by passthrough readers (see `Node::lower_pinned`).
pub fn copy_up(ov: &Overlay, node: &NodeRef, data: Data) -> SysResult<()> {
    copy_up_with(ov, node, data, Origin::Keep)
}

/// [`copy_up`] choosing whether the copy records its origin.
pub fn copy_up_with(ov: &Overlay, node: &NodeRef, data: Data, origin: Origin) -> SysResult<()> {
    copy_up_chain(ov, node, data, origin, None)
}

/// [`copy_up`] that publishes `pre`, the node's data copied ahead by
/// [`prebuild`], if it is still the copy to make (else it is discarded
/// and the copy made as usual).
pub fn copy_up_prebuilt(
    ov: &Overlay,
    node: &NodeRef,
    data: Data,
    pre: Prebuilt<'_>,
) -> SysResult<()> {
    copy_up_chain(ov, node, data, Origin::Keep, Some(pre))
}

fn copy_up_chain(
    ov: &Overlay,
    node: &NodeRef,
    data: Data,
    origin: Origin,
    mut pre: Option<Prebuilt<'_>>,
) -> SysResult<()> {
    if node.has_upper() {
        return Ok(());
    }
    if ov.opts.readonly {
        return Err(Errno::ROFS);
    }
    let mut chain = vec![node.clone()];
    loop {
        let last = chain.last().cloned().ok_or(Errno::IO)?;
        if last.id() == ROOT_ID {
            return Err(Errno::ROFS);
        }
        let (parent, unlinked) = {
            let st = last.state.read();
            (st.parent, st.unlinked())
        };
        if unlinked {
            // Nothing to publish the copy under.
            return Err(Errno::STALE);
        }
        let p = ov.node(parent)?;
        if p.has_upper() {
            break;
        }
        if chain.len() > MAX_DEPTH {
            // Deeper than any tree: a loop the table must not hold.
            return Err(Errno::LOOP);
        }
        chain.push(p);
    }
    let mut owed = Vec::new();
    let mut made = Ok(());
    for n in chain.iter().rev() {
        let (d, o, p) = if NodeRef::ptr_eq(n, node) {
            (data, origin, pre.take())
        } else {
            (Data::Full, Origin::Keep, None)
        };
        match copy_up_one(ov, n, d, o, p) {
            Ok(u) => owed.extend(u),
            Err(e) => {
                made = Err(e);
                break;
            }
        }
    }
    // The deepest copy first: on a journaling filesystem its fsync commits
    // the renames of every copy above it too, so that the whole chain costs
    // one journal commit and the other fsyncs find nothing left to commit.
    // Each copy is atomic on its own, so none has to be durable before the
    // next is built. Owed even when a later copy failed.
    let mut synced = Ok(());
    for u in owed.into_iter().rev() {
        synced = synced.and(u.sync(ov));
    }
    made.and(synced)
}

/// A published copy that still has to be made durable (outside volatile
/// mode), with its directory entry.
struct Unsynced {
    kind: FileType,
    /// The copy: open for writing (a regular file), else an `O_PATH`
    /// handle.
    copy: OwnedFd,
    parent_fd: Arc<OwnedFd>,
}

impl Unsynced {
    /// The copy, then its directory entry. The copy's data is on the disk
    /// already (`build`), so the copy's metadata, the rename and the
    /// parent's changes can become durable together: on a journaling
    /// filesystem the fsync of the copy commits them all in one journal
    /// commit (ext4 puts everything since the last commit in the next), and
    /// the directory's fsync finds nothing left to commit. Made durable
    /// before the rename instead, each copy would cost two commits.
    fn sync(self, ov: &Overlay) -> SysResult<()> {
        match self.kind {
            FileType::RegularFile => rustix::fs::fsync(&self.copy)?,
            FileType::Directory => ov.wb.sync_dir_now(ov, self.copy.as_fd())?,
            _ => {}
        }
        ov.wb.sync_dir_now(ov, self.parent_fd.as_fd())
    }
}

/// Copies `node` up under its parent, which has an upper copy. Returns
/// what is owed to make the copy durable (nothing in volatile mode, or
/// when another thread made the copy meanwhile).
fn copy_up_one(
    ov: &Overlay,
    node: &NodeRef,
    data: Data,
    origin: Origin,
    pre: Option<Prebuilt<'_>>,
) -> SysResult<Option<Unsynced>> {
    let _g = node.lock_copy_up();
    if node.has_upper() {
        return Ok(None);
    }
    if node.lower_pinned() {
        return Err(Errno::BUSY);
    }
    let (parent_id, name, lower) = {
        let st = node.state.read();
        let obj = match &st.layers {
            Layers::Dir(d) => d.lowers.first().map(|l| ObjRef::Shared(l.obj.clone())),
            l => l.lower().map(|l| l.to_ref(node.small_key())),
        };
        (st.parent, st.name.clone(), obj.ok_or(Errno::IO)?)
    };
    let layer = lower.layer();
    let lower = node.open(&lower)?;
    if data == Data::Truncated {
        // The truncation that follows is refused on an immutable or
        // append-only file: do not leave an empty copy behind.
        let (immutable, append) = sys::immutable_or_append(lower.as_fd())?;
        if immutable || append {
            return Err(Errno::PERM);
        }
    }
    let parent = ov.node(parent_id)?;
    let pup = parent.upper_fd()?.ok_or(Errno::IO)?;
    let work = ov.work()?;
    let st = sys::stat_fd(lower.as_fd())?;
    let pstat = sys::stat_fd(pup.as_fd())?;

    let src = Source {
        layer,
        fd: lower.as_fd(),
        st,
        origin,
    };
    // Kept to the end: other threads wanting to copy this node's data
    // ahead wait until it is published (or not).
    let mut ahead = pre.filter(|p| data == Data::Full && origin == Origin::Keep && p.of(&st));
    let (tmp, built) = match ahead.as_mut() {
        Some(p) => (p.tmp.clone(), p.built.take().ok_or(Errno::IO)),
        None => {
            let tmp = ov.tmp_name();
            let built = build(ov, &src, work, &tmp, data);
            (tmp, built)
        }
    };
    let Built { path: copy, file } = match built {
        Ok(b) => b,
        Err(e) => {
            remove_tmp(ov, work, &tmp);
            return Err(e);
        }
    };
    if let Err(e) = sys::rename_at(work, &tmp, pup.as_fd(), &name, RenameFlags::NOREPLACE) {
        remove_tmp(ov, work, &tmp);
        return Err(e);
    }
    // The copy is published: record it before anything else can fail.
    let ust = sys::stat_fd(copy.as_fd())?;
    let kind = node.kind();
    let copy_fd = sys::dup(copy.as_fd())?;
    let dir = kind == FileType::Directory;
    let obj = ov.stack.objs.adopt(0, copy, dir);
    if dir {
        // Made empty by rovl: no `.wh.` names in it, now or later.
        obj.set_wh_names(false);
    }
    {
        let mut s = node.state.write();
        s.layers.set_upper(obj);
        s.set_ident((ust.st_dev, ust.st_ino));
    }
    let copy = copy_fd;
    // Best effort, like the kernel: the parent keeps its times.
    let _ = sys::set_times(
        pup.as_fd(),
        Time::At(pstat.st_atime, pstat.st_atime_nsec as i64),
        Time::At(pstat.st_mtime, pstat.st_mtime_nsec as i64),
    );
    mark_impure(&parent, pup.as_fd());
    copy_inode_flags(ov, kind, lower.as_fd(), copy.as_fd());
    if node.id() != 0 {
        ov.attributes_changed(node.id());
    }
    ov.attributes_changed(parent.id());
    if ov.opts.volatile {
        ov.wb.dir_changed(ov, &parent, pup.as_fd());
        if kind == FileType::RegularFile {
            ov.wb.file_changed(ov, node, copy.as_fd());
        }
        return Ok(None);
    }
    Ok(Some(Unsynced {
        kind,
        copy: file.unwrap_or(copy),
        parent_fd: pup,
    }))
}

/// Regular files at least this big have their data copied ahead of the
/// copy-up ([`prebuild`]).
const PREBUILD_MIN: i64 = 1 << 20;

/// A regular lower file's copy, data and metadata, built in the work
/// directory ahead of its copy-up: without the rename lock, which the
/// copy-up holds (shared) while it publishes, so that a rename, and behind
/// a waiting rename every other change of the mount, does not wait for
/// the data of a big file to be copied. Removed again unless published.
pub struct Prebuilt<'a> {
    work: OwnedFd,
    tmp: OsString,
    /// The lower file it copies (st_dev, st_ino, size, mtime).
    from: (u64, u64, i64, i64, i64),
    built: Option<Built>,
    /// The node's claim in `Overlay::prebuilds`, held from before the copy
    /// until it is published (or not): another thread about to copy the
    /// same node's data waits for that instead of making a second copy (of
    /// maybe gigabytes).
    _claim: KeyGuard<'a, NodeId>,
}

impl Prebuilt<'_> {
    /// Whether it is a copy of the lower file whose stat is `st`.
    fn of(&self, st: &Stat) -> bool {
        self.from == version_of(st)
    }
}

/// What tells one version of a lower file from another: (st_dev, st_ino,
/// size, mtime).
fn version_of(st: &Stat) -> (u64, u64, i64, i64, i64) {
    (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec as i64,
    )
}

impl Drop for Prebuilt<'_> {
    fn drop(&mut self) {
        if self.built.take().is_some() {
            let _ = rustix::fs::unlinkat(&self.work, &self.tmp, rustix::fs::AtFlags::empty());
        }
    }
}

/// Copies the data of `node`, a regular lower file of at least 1 MiB
/// (`PREBUILD_MIN`) that is not yet copied up, into the work
/// directory, for [`copy_up_prebuilt`] to publish. The caller holds no
/// lock. `None` when there is nothing to copy ahead, or when copying
/// fails (the copy-up then tries again and reports the failure).
pub fn prebuild<'a>(ov: &'a Overlay, node: &NodeRef) -> Option<Prebuilt<'a>> {
    if ov.opts.readonly || node.kind() != FileType::RegularFile || node.has_upper() {
        return None;
    }
    if node.lower_pinned() {
        // Copied up to a node of its own instead (`Overlay::copy_up_node`).
        return None;
    }
    let lower = node
        .state
        .read()
        .layers
        .lower()
        .map(|l| l.to_ref(node.small_key()))?;
    let layer = lower.layer();
    let fd = node.open(&lower).ok()?;
    let st = sys::stat_fd(fd.as_fd()).ok()?;
    if st.st_size < PREBUILD_MIN || st.st_nlink > 1 {
        // Small: no wait worth avoiding. Hard-linked: split by name first.
        return None;
    }
    let claim = ov.prebuilds.lock(node.id());
    if node.has_upper() {
        // Another thread's copy was published meanwhile.
        return None;
    }
    let work = ov.work().ok()?;
    let held_work = sys::dup(work).ok()?;
    let tmp = ov.tmp_name();
    let src = Source {
        layer,
        fd: fd.as_fd(),
        st,
        origin: Origin::Keep,
    };
    match build(ov, &src, work, &tmp, Data::Full) {
        Ok(built) => Some(Prebuilt {
            work: held_work,
            tmp,
            from: version_of(&st),
            built: Some(built),
            _claim: claim,
        }),
        Err(_) => {
            remove_tmp(ov, work, &tmp);
            None
        }
    }
}

/// A copy built in the work directory, not yet published.
struct Built {
    /// `O_PATH` handle on the copy.
    path: OwnedFd,
    /// A regular file's copy open for writing, to fsync once published.
    file: Option<OwnedFd>,
}

/// The inode flags a copy-up of a directory keeps, as kernel overlayfs
/// does: sync and noatime (`chattr`'s S and A).
const COPIED_DIR_FLAGS: u32 = IFlags::SYNC.bits() | IFlags::NOATIME.bits();

/// What a copy-up of a regular file keeps: those and, as the kernel does,
/// append-only and immutable (a and i).
const COPIED_FILE_FLAGS: u32 = COPIED_DIR_FLAGS | IFlags::APPEND.bits() | IFlags::IMMUTABLE.bits();

/// Gives the published copy `copy` of `lower` the lower object's inode
/// flags that a copy-up keeps. After the rename, because an immutable or
/// append-only copy could not be renamed into place; on the copy itself,
/// where the upper filesystem enforces them on every change rovl makes.
/// Kernel overlayfs keeps a and i in an xattr instead and enforces them
/// itself, which also lets it copy up the entries of an immutable
/// directory: rovl leaves those two off directories. Best effort: a layer
/// without inode flags has none to keep.
fn copy_inode_flags(ov: &Overlay, kind: FileType, lower: BorrowedFd<'_>, copy: BorrowedFd<'_>) {
    let mask = match kind {
        FileType::RegularFile => COPIED_FILE_FLAGS,
        FileType::Directory => COPIED_DIR_FLAGS,
        _ => return,
    };
    let open = |fd| ov.open_for_fileattr(kind, fd);
    let Ok(want) = open(lower).and_then(|f| sys::inode_flags(f.as_fd())) else {
        return;
    };
    let want = want & mask;
    if want == 0 {
        return;
    }
    let r = open(copy).and_then(|f| {
        let flags = sys::inode_flags(f.as_fd())?;
        sys::set_inode_flags(f.as_fd(), (flags & !mask) | want)
    });
    if let Err(e) = r {
        tracing::warn!(%e, "copy-up could not keep the inode flags {want:#x}");
    }
}

/// Marks an upper directory impure (it holds entries whose inode number is
/// their origin's), once.
pub(crate) fn mark_impure(dir: &Node, fd: BorrowedFd<'_>) {
    if dir.state.read().impure() {
        return;
    }
    if xattr::set(fd, OsStr::new(markers::IMPURE), b"y", 0).is_ok() {
        dir.state.write().set_impure(true);
    }
}

/// The lower object a copy is made of.
struct Source<'a> {
    layer: usize,
    fd: BorrowedFd<'a>,
    st: Stat,
    origin: Origin,
}

/// Builds the copy as `work/tmp`. Outside volatile mode a regular file's
/// data is written back before this returns, so that a writeback error
/// fails the copy-up before anything is published, and so that the rename
/// can never reach the disk ahead of the data it publishes.
fn build(
    ov: &Overlay,
    src: &Source<'_>,
    work: BorrowedFd<'_>,
    tmp: &OsStr,
    data: Data,
) -> SysResult<Built> {
    let st = &src.st;
    let kind = FileType::from_raw_mode(st.st_mode);
    let perm = st.st_mode & 0o7777;
    let fd = match kind {
        FileType::RegularFile => {
            let f = rustix::fs::openat(
                work,
                tmp,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            if data == Data::Full && st.st_size > 0 {
                let from = ov.stack.proc.reopen(src.fd, OFlags::RDONLY)?;
                sys::copy_file_data(
                    from.as_fd(),
                    f.as_fd(),
                    st.st_size as u64,
                    !ov.opts.volatile,
                )?;
            }
            if !ov.opts.volatile {
                sys::write_back_and_wait(f.as_fd())?;
            }
            let fd = sys::open_path_at(work, tmp)?;
            finish(ov, src, fd.as_fd(), true)?;
            return Ok(Built {
                path: fd,
                file: Some(f),
            });
        }
        FileType::Directory => {
            rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
            sys::open_path_at(work, tmp)?
        }
        FileType::Symlink => {
            let target = sys::read_link_fd(src.fd)?;
            rustix::fs::symlinkat(target.as_slice(), work, tmp)?;
            sys::open_path_at(work, tmp)?
        }
        FileType::Fifo | FileType::Socket | FileType::CharacterDevice | FileType::BlockDevice => {
            sys::mknod_at(work, tmp, kind, perm, st.st_rdev)?;
            sys::open_path_at(work, tmp)?
        }
        FileType::Unknown => return Err(Errno::IO),
    };
    finish(ov, src, fd.as_fd(), kind != FileType::Symlink)?;
    Ok(Built {
        path: fd,
        file: None,
    })
}

/// Owner, mode, xattrs, origin and times, in the order that keeps each:
/// chown first (it clears setuid bits and capabilities), then mode, then
/// xattrs, times last.
fn finish(ov: &Overlay, src: &Source<'_>, fd: BorrowedFd<'_>, chmod: bool) -> SysResult<()> {
    let st = &src.st;
    sys::chown_fd(fd, Some(st.st_uid), Some(st.st_gid))?;
    if chmod {
        ov.stack.proc.chmod(fd, st.st_mode & 0o7777)?;
    }
    copy_xattrs(src.fd, fd)?;
    if src.origin == Origin::Keep {
        if let Some(o) = ov.stack.origin_of(src.layer, src.fd) {
            // Without it the inode number survives only until the next
            // remount.
            let _ = xattr::set(fd, OsStr::new(markers::ORIGIN), &o.encode(), 0);
        }
    }
    sys::set_times(
        fd,
        Time::At(st.st_atime, st.st_atime_nsec as i64),
        Time::At(st.st_mtime, st.st_mtime_nsec as i64),
    )
}

/// Copies every xattr but overlay-private ones.
pub(crate) fn copy_xattrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> SysResult<()> {
    for name in xattr::list(from)? {
        if markers::is_private_xattr(&name) {
            continue;
        }
        let Some(value) = xattr::get(from, &name)? else {
            continue;
        };
        match xattr::set(to, &name, &value, 0) {
            Ok(()) => {}
            // The upper filesystem cannot hold it (or not on this type).
            Err(Errno::OPNOTSUPP | Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes a temporary object from the work directory, whatever it is.
pub(crate) fn remove_tmp(ov: &Overlay, work: BorrowedFd<'_>, name: &OsStr) {
    match sys::stat_at(work, name) {
        Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            let _ = remove_tree(ov, work, name, 0);
        }
        Ok(Some(_)) => {
            let _ = rustix::fs::unlinkat(work, name, rustix::fs::AtFlags::empty());
        }
        _ => {}
    }
}

/// Removes directory `name` of `dir` and everything in it (used on the work
/// directory only; never follows a symlink).
pub(crate) fn remove_tree(
    ov: &Overlay,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    depth: u32,
) -> SysResult<()> {
    if depth > 4096 {
        return Err(Errno::LOOP);
    }
    let sub = sys::open_path_at(dir, name)?;
    for e in sys::read_dir(&ov.stack.proc, sub.as_fd())? {
        let is_dir = match e.kind {
            FileType::Directory => true,
            FileType::Unknown => sys::stat_at(sub.as_fd(), &e.name)?
                .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_dir {
            remove_tree(ov, sub.as_fd(), &e.name, depth + 1)?;
        } else {
            sys::optional(rustix::fs::unlinkat(
                sub.as_fd(),
                &e.name,
                rustix::fs::AtFlags::empty(),
            ))?;
        }
    }
    sys::optional(rustix::fs::unlinkat(
        dir,
        name,
        rustix::fs::AtFlags::REMOVEDIR,
    ))?;
    Ok(())
}
