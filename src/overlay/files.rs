//! Open files and everything done through them or to an object's content
//! and attributes: open, read, write, setattr, xattrs, symlink targets,
//! directory listings.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::node::{Node, NodeId, NodeRef};
use super::open_file::OpenFile;
use super::{Attr, Caller, Overlay, SetAttr, SetTime};
use crate::copy_up::Data;
use crate::layers::lookup::{self, DirLayers};
use crate::layers::markers;
use crate::layers::readdir::{self, MergedEntry};
use crate::sys::{self, Errno, FileType, OFlags, SysResult, Time, xattr};
use crate::writeback::Observer;

/// Open flags, as `open(2)` takes them.
pub type OpenFlags = OFlags;

fn to_time(t: SetTime) -> Time {
    match t {
        SetTime::Now => Time::Now,
        SetTime::At(st) => match st.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time::At(d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(e) => {
                let d = e.duration();
                let mut s = -(d.as_secs() as i64);
                let mut n = i64::from(d.subsec_nanos());
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                Time::At(s, n)
            }
        },
    }
}

/// One entry of a directory listing as the kernel gets it.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// Name (`.` and `..` included).
    pub name: OsString,
    /// File type.
    pub kind: FileType,
    /// Inode number (the same `stat` shows).
    pub ino: u64,
}

impl Overlay {
    /// Opens `node` with `flags`. Opening for writing copies it up first
    /// (without data when `O_TRUNC` will empty it anyway).
    pub fn open(&self, node_id: NodeId, flags: OFlags, caller: Caller) -> SysResult<OpenFile> {
        let node = self.node(node_id)?;
        let acc = flags & OFlags::ACCMODE;
        let write = acc != OFlags::RDONLY || flags.contains(OFlags::TRUNC);
        let keep = flags
            & (OFlags::APPEND | OFlags::DIRECT | OFlags::SYNC | OFlags::DSYNC | OFlags::NOATIME);
        if write {
            if self.opts.readonly {
                return Err(Errno::ROFS);
            }
            let data = if flags.contains(OFlags::TRUNC) {
                Data::Truncated
            } else {
                Data::Full
            };
            self.copy_up_unlocked(&node, data)?;
            let up = node.upper_fd()?.ok_or(Errno::IO)?;
            let f = super::namespace::adapt_access(self, acc | keep | (flags & OFlags::TRUNC));
            let fd = self.stack.proc.reopen(up.as_fd(), f)?;
            if flags.contains(OFlags::TRUNC) {
                // The kernel leaves this to rovl (FUSE_OPEN_KILL_SUIDGID);
                // a plain open for writing kills nothing until a write.
                self.kill_privs_for(&node, &fd, caller)?;
            }
            let fd = Arc::new(fd);
            self.wb.opened_for_write(self, &node, &fd);
            Ok(OpenFile::new(
                node.clone(),
                fd,
                f,
                true,
                true,
                self.wb.observe(&node),
            ))
        } else {
            let (top, on_upper) = {
                let st = node.state.read();
                let on_upper = st.layers.upper().is_some();
                (st.layers.top(node.small_key()), on_upper)
            };
            let top = node.open(&top.ok_or(Errno::STALE)?)?;
            let flags = OFlags::RDONLY | (keep & !OFlags::APPEND);
            let fd = self.stack.proc.reopen(top.as_fd(), flags)?;
            Ok(OpenFile::new(
                node.clone(),
                Arc::new(fd),
                flags,
                on_upper,
                false,
                self.wb.observe(&node),
            ))
        }
    }

    /// Truncation by someone other than root removes setuid/setgid bits
    /// and file capabilities, as the kernel does. rovl works as root, so it
    /// clears them itself.
    fn kill_privs_for(&self, node: &Node, fd: &OwnedFd, caller: Caller) -> SysResult<()> {
        if caller.uid == 0 || node.kind() != FileType::RegularFile {
            return Ok(());
        }
        let st = sys::stat_fd(fd.as_fd())?;
        let mode = st.st_mode & 0o7777;
        let mut kill = libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            kill |= libc::S_ISGID;
        }
        if mode & kill != 0 {
            rustix::fs::fchmod(fd, sys::Mode::from_raw_mode(mode & !kill))?;
        }
        xattr::remove(fd.as_fd(), OsStr::new("security.capability"))
    }

    /// Whether writes through `of` by `caller` must clear setuid/setgid
    /// bits or file capabilities (a writer without CAP_FSETID, which rovl
    /// takes to be anyone but root, writing a file that has them). The
    /// kernel leaves that to rovl, and it only can when the writes reach
    /// it (FUSE_WRITE_KILL_SUIDGID), not through passthrough.
    pub fn writes_kill_privs(&self, of: &OpenFile, caller: Caller) -> bool {
        if !of.writable || caller.uid == 0 {
            return false;
        }
        let Ok(fd) = self.file_fd(of) else {
            return true;
        };
        let Ok(st) = sys::stat_fd(fd.as_fd()) else {
            return true;
        };
        let mode = st.st_mode & 0o7777;
        mode & libc::S_ISUID != 0
            || mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
            || !matches!(
                xattr::get(fd.as_fd(), OsStr::new("security.capability")),
                Ok(None)
            )
    }

    /// Reads up to `size` bytes at `offset`. A read-only open made before
    /// the file was copied up moves to the upper copy, so it sees what was
    /// written since (as kernel overlayfs does).
    pub fn read(&self, of: &OpenFile, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        if !of.on_upper() {
            if let Some(up) = of.node.upper_fd()? {
                let fd = self.stack.proc.reopen(up.as_fd(), OFlags::RDONLY)?;
                of.replace_fd(fd, true);
            }
        }
        let fd = self.file_fd(of)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match rustix::io::pread(&*fd, &mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Writes `data` at `offset`.
    pub fn write(
        &self,
        of: &OpenFile,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> SysResult<usize> {
        if !of.writable {
            return Err(Errno::BADF);
        }
        let fd = self.file_fd(of)?;
        if kill_suidgid {
            let st = sys::stat_fd(fd.as_fd())?;
            let mode = st.st_mode & 0o7777;
            let mut kill = libc::S_ISUID;
            if mode & libc::S_IXGRP != 0 {
                kill |= libc::S_ISGID;
            }
            if mode & kill != 0 {
                rustix::fs::fchmod(&*fd, sys::Mode::from_raw_mode(mode & !kill))?;
            }
            xattr::remove(fd.as_fd(), OsStr::new("security.capability"))?;
        }
        let mut done = 0usize;
        while done < data.len() {
            match rustix::io::pwrite(&*fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        self.wb.wrote(&of.node, done as u64);
        Ok(done)
    }

    /// Applies attribute changes; copies the object up first.
    pub fn setattr(&self, node_id: NodeId, set: SetAttr, caller: Caller) -> SysResult<Attr> {
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let node = self.node(node_id)?;
        if set.times_only() && self.writeback_cache() && self.removed_lower_only(&node) {
            // The kernel flushing the times it keeps itself under the
            // writeback cache (before an fsync, a chmod or a utimes) of a
            // lower file whose name was removed or replaced while it was
            // open: no name is left to publish a copy under and the lower
            // file is never changed, so they stay the kernel's. Failing
            // here failed the fsync of a reader with ESTALE.
            return self.getattr(&node);
        }
        // A truncation to 0 copies no data up, so the upper copy starts
        // empty: whether the size changes is decided by the size before.
        let size_before = match set.size {
            Some(_) if !node.is_dir() => Some(sys::stat_fd(node.top_fd()?.as_fd())?.st_size as u64),
            _ => None,
        };
        let data = if set.size == Some(0) {
            Data::Truncated
        } else {
            Data::Full
        };
        self.copy_up_unlocked(&node, data)?;
        let up = node.upper_fd()?.ok_or(Errno::IO)?;
        if set.uid.is_some() || set.gid.is_some() {
            sys::chown_fd(up.as_fd(), set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            self.stack.proc.chmod(up.as_fd(), mode)?;
        }
        if let Some(size) = set.size {
            if node.is_dir() {
                return Err(Errno::ISDIR);
            }
            // The size alone, as kernel overlayfs passes it on: ftruncate
            // would also set the times, which ftruncate(2) through the
            // mount sends explicitly and truncate(2) does not.
            sys::truncate_obj(up.as_fd(), size)?;
            if size_before != Some(size) && set.mtime.is_none() {
                // POSIX: a size change marks mtime and ctime for update.
                sys::set_times(up.as_fd(), Time::Omit, Time::Now)?;
            }
            if caller.uid != 0 {
                let st = sys::stat_fd(up.as_fd())?;
                let mode = st.st_mode & 0o7777;
                let mut kill = libc::S_ISUID;
                if mode & libc::S_IXGRP != 0 {
                    kill |= libc::S_ISGID;
                }
                if mode & kill != 0 {
                    self.stack.proc.chmod(up.as_fd(), mode & !kill)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::set_times(
                up.as_fd(),
                set.atime.map(to_time).unwrap_or(Time::Omit),
                set.mtime.map(to_time).unwrap_or(Time::Omit),
            )?;
        }
        self.attrs_written(&node, up.as_fd());
        self.getattr(&node)
    }

    /// The attributes of `node`'s upper object `up` (mode, owner, times,
    /// size, xattrs, flags) changed: the next sync makes the change
    /// durable (SPEC E2: everything the mount wrote). A file or directory
    /// is fsynced itself; other kinds cannot be opened for an fsync, so
    /// their directory is, which on ext4 commits every change made before
    /// it (elsewhere it may not cover theirs).
    fn attrs_written(&self, node: &NodeRef, up: BorrowedFd<'_>) {
        match node.kind() {
            FileType::RegularFile => self.wb.file_changed(self, node, up),
            FileType::Directory => self.wb.dir_changed(self, node, up),
            _ => {
                let parent = node.state.read().parent;
                if let Ok(p) = self.node(parent) {
                    if let Ok(Some(pup)) = p.upper_fd() {
                        self.wb.dir_changed(self, &p, pup.as_fd());
                    }
                }
            }
        }
    }

    /// No name leads to `node` any more and it was never copied up.
    fn removed_lower_only(&self, node: &NodeRef) -> bool {
        let st = node.state.read();
        st.unlinked() && st.layers.upper().is_none()
    }

    /// A setattr that changes nothing (at most ctime): what the kernel
    /// leaves of `chown(path, -1, -1)` once it hands rovl the clearing of
    /// setuid bits on chown (FUSE_HANDLE_KILLPRIV_V2), and also of the
    /// privilege removal before a write by another user. For the owner or
    /// root it clears setuid, group-executable setgid and file capabilities
    /// as every chown of a non-directory does. For anyone else it changes
    /// nothing and succeeds: a write must not fail here (its own
    /// FUSE_WRITE_KILL_SUIDGID clears the bits), so a chown(-1, -1) by a
    /// non-owner succeeds where the kernel says EPERM (README).
    pub fn chown_unchanged(&self, node_id: NodeId, caller: Caller) -> SysResult<Attr> {
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let node = self.node(node_id)?;
        if node.is_dir() {
            // No bits to clear, but a setattr copies up as always.
            let _r = self.rename_lock.read();
            self.copy_up_node(&node, Data::Full)?;
            drop(_r);
            return self.getattr(&node);
        }
        let st = sys::stat_fd(node.top_fd()?.as_fd())?;
        let mode = st.st_mode & 0o7777;
        let kills_bits = mode & libc::S_ISUID != 0
            || mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP;
        if kills_bits && caller.uid != 0 && caller.uid != st.st_uid {
            return self.getattr(&node);
        }
        self.copy_up_unlocked(&node, Data::Full)?;
        let up = node.upper_fd()?.ok_or(Errno::IO)?;
        // fchown(-1, -1) as root: the upper filesystem clears exactly what
        // the kernel clears for a chown.
        sys::chown_fd(up.as_fd(), None, None)?;
        self.attrs_written(&node, up.as_fd());
        self.getattr(&node)
    }

    /// Target of a symlink.
    pub fn readlink(&self, node_id: NodeId) -> SysResult<Vec<u8>> {
        let node = self.node(node_id)?;
        if node.kind() != FileType::Symlink {
            return Err(Errno::INVAL);
        }
        let fd = node.top_fd()?;
        sys::read_link_fd(fd.as_fd())
    }

    /// Value of xattr `name` (overlay-private names do not exist).
    pub fn getxattr(&self, node_id: NodeId, name: &OsStr) -> SysResult<Vec<u8>> {
        let Some(real) = markers::xattr_to_layer(name) else {
            return Err(Errno::NODATA);
        };
        let node = self.node(node_id)?;
        let fd = node.top_fd()?;
        xattr::get(fd.as_fd(), &real)?.ok_or(Errno::NODATA)
    }

    /// Names of all xattrs but overlay-private ones, NUL-terminated.
    pub fn listxattr(&self, node_id: NodeId) -> SysResult<Vec<u8>> {
        let node = self.node(node_id)?;
        let fd = node.top_fd()?;
        let mut out = Vec::new();
        for n in xattr::list(fd.as_fd())? {
            let Some(shown) = markers::xattr_from_layer(&n) else {
                continue;
            };
            out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(shown.as_os_str()));
            out.push(0);
        }
        Ok(out)
    }

    /// Sets xattr `name`; copies the object up first.
    pub fn setxattr(
        &self,
        node_id: NodeId,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> SysResult<()> {
        let Some(real) = markers::xattr_to_layer(name) else {
            return Err(Errno::PERM);
        };
        let name = real.as_os_str();
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let node = self.node(node_id)?;
        if flags & libc::XATTR_REPLACE != 0 || flags & libc::XATTR_CREATE != 0 {
            let exists = node
                .top_fd()
                .and_then(|fd| xattr::get(fd.as_fd(), name))?
                .is_some();
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Errno::NODATA);
            }
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Errno::EXIST);
            }
        }
        self.copy_up_unlocked(&node, Data::Full)?;
        let up = node.upper_fd()?.ok_or(Errno::IO)?;
        let r = xattr::set(up.as_fd(), name, value, flags);
        xattrs_changed(&node);
        self.attrs_written(&node, up.as_fd());
        r
    }

    /// Removes xattr `name`; copies the object up first.
    pub fn removexattr(&self, node_id: NodeId, name: &OsStr) -> SysResult<()> {
        let Some(real) = markers::xattr_to_layer(name) else {
            return Err(Errno::PERM);
        };
        let name = real.as_os_str();
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let node = self.node(node_id)?;
        let exists = node
            .top_fd()
            .and_then(|fd| xattr::get(fd.as_fd(), name))?
            .is_some();
        if !exists {
            return Err(Errno::NODATA);
        }
        self.copy_up_unlocked(&node, Data::Full)?;
        let up = node.upper_fd()?.ok_or(Errno::IO)?;
        let r = xattr::remove_strict(up.as_fd(), name);
        xattrs_changed(&node);
        self.attrs_written(&node, up.as_fd());
        r
    }

    /// The file attributes (`lsattr`, `FS_IOC_FSGETXATTR`) of what
    /// `node_id` shows: its upper object, else its top lower one, read from
    /// the real inode as kernel overlayfs does.
    pub fn fileattr_get(&self, node_id: NodeId, fsx: bool) -> SysResult<Fileattr> {
        let node = self.node(node_id)?;
        let top = node.top_fd()?;
        let fd = self.open_for_fileattr(node.kind(), top.as_fd())?;
        if fsx {
            sys::fsxattr(fd.as_fd()).map(Fileattr::Fsx)
        } else {
            sys::inode_flags(fd.as_fd()).map(Fileattr::Flags)
        }
    }

    /// Sets file attributes (`chattr`); copies the object up first. They
    /// are set on the upper object itself, as fuse-overlayfs does, so the
    /// upper filesystem enforces an immutable or append-only flag on every
    /// change rovl makes there. (Kernel overlayfs keeps those two flags in
    /// the `overlay.protattr` xattr and enforces them on its own inode.)
    pub fn fileattr_set(&self, node_id: NodeId, attr: Fileattr) -> SysResult<()> {
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let node = self.node(node_id)?;
        self.copy_up_unlocked(&node, Data::Full)?;
        let up = node.upper_fd()?.ok_or(Errno::IO)?;
        let fd = self.open_for_fileattr(node.kind(), up.as_fd())?;
        let r = match attr {
            Fileattr::Flags(flags) => sys::set_inode_flags(fd.as_fd(), flags),
            Fileattr::Fsx(v) => sys::set_fsxattr(fd.as_fd(), v),
        };
        // The change time moved.
        self.attributes_changed(node.id());
        self.attrs_written(&node, up.as_fd());
        r
    }

    /// Opens `obj`, the real object of a node of type `kind`, for a file
    /// attribute ioctl (the kernel sends those for regular files and
    /// directories only).
    pub(crate) fn open_for_fileattr(
        &self,
        kind: FileType,
        obj: BorrowedFd<'_>,
    ) -> SysResult<OwnedFd> {
        let flags = match kind {
            FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
            FileType::RegularFile => OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            _ => return Err(Errno::NOTTY),
        };
        self.stack.proc.reopen(obj, flags)
    }

    /// The node the kernel knows by `name` in `parent`, if any.
    pub fn cached_child(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        self.table.lock().child(parent, name).map(|n| n.id())
    }

    /// A directory handle of `node` was closed: the lookups its listing
    /// sped up are done (see [`crate::layers::object::ListingHints`]).
    pub fn dir_closed(&self, node: &Node) {
        if let Some(dl) = node.dir_layers() {
            if let Some(first) = dl.upper.as_ref().or(dl.lowers.first().map(|l| &l.obj)) {
                self.stack.objs.drop_hints(first);
            }
        }
    }

    /// The listing of directory `node`: `.`, `..`, then the merged entries.
    pub fn list_dir(&self, node: &Node) -> SysResult<Vec<ListEntry>> {
        let dl = node.dir_layers().ok_or(Errno::NOTDIR)?;
        let merged = readdir::merge(&self.stack, &dl)?;
        let parent_ino = {
            let p = node.state.read().parent;
            self.node(p).map(|p| p.id()).unwrap_or(node.id())
        };
        let impure = match &dl.upper {
            Some(u) => xattr::is(u.fd()?.as_fd(), OsStr::new(markers::IMPURE), b"y")?,
            None => false,
        };
        let mut out = Vec::with_capacity(merged.len() + 2);
        out.push(ListEntry {
            name: ".".into(),
            kind: FileType::Directory,
            ino: node.id(),
        });
        out.push(ListEntry {
            name: "..".into(),
            kind: FileType::Directory,
            ino: parent_ino,
        });
        for e in merged {
            let ino = self.entry_ino(node.id(), &dl, &e, impure)?;
            out.push(ListEntry {
                name: e.name,
                kind: e.kind,
                ino,
            });
        }
        Ok(out)
    }

    /// The inode number of a listed entry, equal to what lookup would show,
    /// computed without a full lookup where the entry's layers make it
    /// plain.
    fn entry_ino(
        &self,
        parent: NodeId,
        dl: &DirLayers,
        e: &MergedEntry,
        impure: bool,
    ) -> SysResult<u64> {
        if let Some(n) = self.table.lock().child(parent, &e.name) {
            return Ok(n.id());
        }
        let upper_entry = dl.upper.is_some() && e.layer == 0 && self.stack.has_upper;
        if !upper_entry {
            return Ok(self.stack.map_ino(e.layer, e.real_ino));
        }
        let may_differ = if e.kind == FileType::Directory {
            !dl.lowers.is_empty()
        } else {
            impure
        };
        if !may_differ {
            return Ok(self.stack.map_ino(0, e.real_ino));
        }
        match lookup::lookup(&self.stack, dl, &e.name)? {
            Some(found) => self.ino_of(&found),
            None => Ok(self.stack.map_ino(0, e.real_ino)),
        }
    }

    /// Preallocates or punches space in an open file.
    pub fn fallocate(&self, of: &OpenFile, mode: i32, offset: u64, len: u64) -> SysResult<()> {
        if !of.writable {
            return Err(Errno::BADF);
        }
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(&*self.file_fd(of)?, flags, offset, len)?;
        self.wb.wrote(&of.node, 0);
        Ok(())
    }

    /// `lseek` for `SEEK_DATA` and `SEEK_HOLE` (and the plain whences).
    pub fn lseek(&self, of: &OpenFile, offset: i64, whence: i32) -> SysResult<i64> {
        let pos = match whence {
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => rustix::fs::SeekFrom::Current(offset),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            _ => return Err(Errno::INVAL),
        };
        Ok(rustix::fs::seek(&*self.file_fd(of)?, pos)? as i64)
    }

    /// Copies a range between two open files of the mount.
    pub fn copy_file_range(
        &self,
        src: &OpenFile,
        off_in: u64,
        dst: &OpenFile,
        off_out: u64,
        len: u64,
    ) -> SysResult<u64> {
        if !dst.writable {
            return Err(Errno::BADF);
        }
        let (fi, fo) = (self.file_fd(src)?, self.file_fd(dst)?);
        let mut i = off_in;
        let mut o = off_out;
        let n = rustix::fs::copy_file_range(&*fi, Some(&mut i), &*fo, Some(&mut o), len as usize)?;
        self.wb.wrote(&dst.node, n as u64);
        Ok(n as u64)
    }

    /// The open file for a file `create` just made, opened with `flags`.
    pub fn adopt_created(&self, node: NodeRef, (file, flags): (OwnedFd, OFlags)) -> OpenFile {
        let writable = flags & OFlags::ACCMODE != OFlags::RDONLY;
        let fd = Arc::new(file);
        if writable {
            self.wb.opened_for_write(self, &node, &fd);
        }
        let observer = self.wb.observe(&node);
        OpenFile::new(node, fd, flags, true, writable, observer)
    }

    /// The last reference to an open file went away.
    pub fn release(&self, of: &OpenFile) {
        self.wb.released(&of.node, of.writable);
    }

    /// fsync/fdatasync through an open file (SPEC E1, E5).
    pub fn fsync(&self, of: &OpenFile, datasync: bool) -> SysResult<()> {
        self.wb
            .fsync(self, &of.node, &of.observer, datasync)
            .map_err(crate::writeback::to_sys)
    }

    /// fsync of a directory through an open directory.
    pub fn fsyncdir(&self, node: &NodeRef, obs: &Observer, _datasync: bool) -> SysResult<()> {
        self.wb
            .fsyncdir(self, node, obs)
            .map_err(crate::writeback::to_sys)
    }

    /// The `ROVL_IOC_SYNCFS` sync of the whole mount, for observer `obs`
    /// (SPEC E2).
    pub fn sync_mount(&self, obs: &Observer) -> SysResult<()> {
        self.wb
            .sync(self, Some(obs))
            .map_err(crate::writeback::to_sys)
    }
}

/// A file attribute value, as the kernel's fileattr requests carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fileattr {
    /// Inode flags (`FS_IOC_GETFLAGS`, `FS_IOC_SETFLAGS`).
    Flags(u32),
    /// A raw `struct fsxattr` (`FS_IOC_FSGETXATTR`, `FS_IOC_FSSETXATTR`).
    Fsx([u8; sys::FSXATTR_SIZE]),
}

impl Fileattr {
    /// Reads a value from a request's argument bytes (native endian, as
    /// the kernel passes it); `None` when they are too short.
    pub fn from_bytes(fsx: bool, data: &[u8]) -> Option<Fileattr> {
        if fsx {
            let v = data.get(..sys::FSXATTR_SIZE)?;
            Some(Fileattr::Fsx(v.try_into().ok()?))
        } else {
            let v = data.get(..4)?;
            Some(Fileattr::Flags(u32::from_ne_bytes(v.try_into().ok()?)))
        }
    }

    /// The value as reply bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            Fileattr::Flags(f) => f.to_ne_bytes().to_vec(),
            Fileattr::Fsx(v) => v.to_vec(),
        }
    }
}

/// After a change of `node`'s xattrs: what was known absent may not be.
fn xattrs_changed(node: &NodeRef) {
    if let Some(dl) = node.dir_layers() {
        dl.no_default_acl.forget();
    }
}
