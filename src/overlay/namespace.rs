//! Changing names: create, mkdir, mknod, symlink, link, unlink, rmdir,
//! rename. Semantics follow kernel overlayfs (`fs/overlayfs/dir.c`) with
//! `redirect_dir=on,index=off,metacopy=off`:
//! - removing a name that a lower layer also has leaves a whiteout;
//! - creating over a whiteout replaces it; a directory created there is
//!   opaque;
//! - renaming a directory that has lower layers records a redirect to where
//!   its lower directories are, so they follow it;
//! - every change lands in the upper layer in one atomic step (objects that
//!   need an owner, a mode or xattrs set first are built in the work
//!   directory and renamed into place).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::node::{Layers, Node, NodeId, NodeRef};
use super::{Attr, Caller, Overlay, acl};
use crate::copy_up::{self, Data, mark_impure, remove_tmp, remove_tree};
use crate::layers::lookup::{self, DirLayers};
use crate::layers::{markers, readdir};
use crate::sys::{self, AtFlags, Errno, FileType, Mode, OFlags, RenameFlags, SysResult, xattr};

/// What to create.
#[derive(Debug, Clone, Copy)]
pub enum NewKind<'a> {
    /// A regular file, opened with these flags.
    File(OFlags),
    /// A directory.
    Dir,
    /// A symlink to this target.
    Symlink(&'a [u8]),
    /// A device, fifo, socket (or regular file made by mknod).
    Special(FileType, u64),
}

impl NewKind<'_> {
    fn file_type(&self) -> FileType {
        match self {
            NewKind::File(_) => FileType::RegularFile,
            NewKind::Dir => FileType::Directory,
            NewKind::Symlink(_) => FileType::Symlink,
            NewKind::Special(t, _) => *t,
        }
    }
}

/// What is at a name in the upper directory.
enum UpperAt {
    Nothing,
    Whiteout,
    Object,
}

/// What `name` is in `dir`, the upper directory of `parent`: whiteouts in
/// every form rovl reads (an upper written by other tools may hold xattr
/// whiteouts) are replaced like the kernel's 0/0 ones.
fn upper_at(parent: &Node, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<UpperAt> {
    let Some(st) = sys::stat_at(dir, name)? else {
        return Ok(UpperAt::Nothing);
    };
    if markers::is_whiteout_stat(&st) {
        return Ok(UpperAt::Whiteout);
    }
    let xwhiteouts = parent.dir_layers().is_some_and(|d| d.upper_xwhiteouts);
    if xwhiteouts && markers::is_xattr_whiteout(dir, name, &st)? {
        return Ok(UpperAt::Whiteout);
    }
    Ok(UpperAt::Object)
}

/// A file `create` made and opened, with the flags it was opened with.
pub type CreatedFile = (OwnedFd, OFlags);

fn check_new_name(name: &OsStr) -> SysResult<()> {
    sys::check_name(name)?;
    if markers::is_marker_name(name) {
        // A `.wh.` name would turn into a whiteout on the next mount.
        return Err(Errno::INVAL);
    }
    Ok(())
}

impl Overlay {
    /// The upper directory of `parent`, copied up first when needed. The
    /// caller holds `rename_lock`.
    pub(crate) fn upper_dir(&self, parent: &NodeRef) -> SysResult<Arc<OwnedFd>> {
        if !parent.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        copy_up::copy_up(self, parent, Data::Full)?;
        parent.upper_fd()?.ok_or(Errno::IO)
    }

    fn parent_layers(parent: &Node) -> SysResult<Arc<DirLayers>> {
        parent.dir_layers().ok_or(Errno::NOTDIR)
    }

    /// Creates `parent/name` with permissions `perm` (not yet masked by
    /// the caller's `umask`: a default ACL of the parent replaces the
    /// umask). Returns the new node (with one kernel reference), its
    /// attributes, and for `NewKind::File` the open file and its flags.
    pub fn create(
        &self,
        parent_id: NodeId,
        name: &OsStr,
        kind: NewKind<'_>,
        perm: u32,
        umask: u32,
        caller: Caller,
    ) -> SysResult<(NodeRef, Attr, Option<CreatedFile>)> {
        check_new_name(name)?;
        if let NewKind::Special(FileType::CharacterDevice, 0) = kind {
            // A 0/0 device is a whiteout in the upper layer: it would hide
            // the name (EPERM, as kernel overlayfs answers).
            return Err(Errno::PERM);
        }
        let parent = self.node(parent_id)?;
        let _r = self.rename_lock.read();
        let pup = self.upper_dir(&parent)?;
        let pup = pup.as_fd();
        let pdl = Self::parent_layers(&parent)?;
        let over_whiteout = match upper_at(&parent, pup, name)? {
            UpperAt::Object => return Err(Errno::EXIST),
            UpperAt::Whiteout => true,
            UpperAt::Nothing => {
                // Without lower directories the upper one is all there is.
                if !pdl.lowers.is_empty() && self.resolve(&parent, name)?.is_some() {
                    return Err(Errno::EXIST);
                }
                false
            }
        };
        let pst = sys::stat_fd(pup)?;
        let ftype = kind.file_type();
        let sgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let uid = caller.uid;
        let gid = if sgid_parent { pst.st_gid } else { caller.gid };
        // A default ACL of the parent decides the permissions and the ACLs
        // the object inherits; without one, the umask applies.
        let inherited = if ftype == FileType::Symlink {
            None
        } else {
            default_acl(&pdl, pup)?
                .and_then(|d| acl::inherit(&d, perm & 0o7777, ftype == FileType::Directory))
        };
        let mut perm = match &inherited {
            Some(i) => i.mode & 0o7777,
            None => perm & 0o7777 & !(umask & 0o777),
        };
        if ftype == FileType::Directory && sgid_parent {
            perm |= libc::S_ISGID;
        }
        if ftype != FileType::Directory
            && perm & libc::S_ISGID != 0
            && perm & libc::S_IXGRP != 0
            && caller.uid != 0
            && gid != caller.gid
        {
            // As inode_init_owner: no setgid file in a group one is not in.
            perm &= !libc::S_ISGID;
        }
        let natural_gid = if sgid_parent { pst.st_gid } else { 0 };
        let opaque = ftype == FileType::Directory && over_whiteout;
        let direct = !over_whiteout && uid == 0 && gid == natural_gid;

        let (dir, objname, tmp) = if direct {
            (pup, name.to_owned(), None)
        } else {
            let t = self.tmp_name();
            (self.work()?, t.clone(), Some(t))
        };
        let made = make_object(self, dir, &objname, kind, perm);
        let (obj, file) = made?;
        // The attributes right after creation, when nothing changed them.
        let mut unchanged = None;
        if let Some(tmp) = &tmp {
            let work = self.work()?;
            let prepared = (|| -> SysResult<()> {
                sys::chown_fd(obj.as_fd(), Some(uid), Some(gid))?;
                if ftype != FileType::Symlink {
                    self.stack.proc.chmod(obj.as_fd(), perm)?;
                }
                if opaque {
                    xattr::set(obj.as_fd(), OsStr::new(markers::OPAQUE), b"y", 0)?;
                }
                set_inherited_acls(obj.as_fd(), inherited.as_ref())?;
                if over_whiteout && ftype == FileType::Directory {
                    sys::rename_at(work, tmp, pup, name, RenameFlags::EXCHANGE)?;
                    // The whiteout is now in the work directory.
                    let _ = rustix::fs::unlinkat(work, tmp, AtFlags::empty());
                } else if over_whiteout {
                    sys::rename_at(work, tmp, pup, name, RenameFlags::empty())?;
                } else {
                    sys::rename_at(work, tmp, pup, name, RenameFlags::NOREPLACE)?;
                }
                Ok(())
            })();
            if let Err(e) = prepared {
                remove_tmp(self, work, tmp);
                return Err(e);
            }
        } else if ftype != FileType::Symlink {
            // Creation modes pass the daemon's umask (0) untouched, but a
            // setgid parent may have changed the group: set what we computed.
            let st = sys::stat_fd(obj.as_fd())?;
            if st.st_mode & 0o7777 != perm {
                self.stack.proc.chmod(obj.as_fd(), perm)?;
            } else if inherited.is_none() {
                unchanged = Some(st);
            }
            set_inherited_acls(obj.as_fd(), inherited.as_ref())?;
        }
        self.wb.dir_changed_at(self, &parent, &pst);
        let st = match unchanged {
            Some(st) => st,
            None => sys::stat_fd(obj.as_fd())?,
        };
        let dir = ftype == FileType::Directory;
        let obj = self.stack.objs.adopt(0, obj, dir);
        let layers = if dir {
            Layers::Dir(Arc::new(DirLayers {
                upper: Some(obj),
                ..Default::default()
            }))
        } else {
            Layers::Upper(obj)
        };
        let node = self.install_upper(parent_id, name, ftype, layers, &st, opaque);
        let (node, attr) = self.reference_with(&node, parent_id, name, Some(&st))?;
        Ok((node, attr, file))
    }

    /// Makes `node` also reachable as `new_parent/new_name`.
    pub fn link(
        &self,
        node_id: NodeId,
        new_parent: NodeId,
        new_name: &OsStr,
    ) -> SysResult<(NodeRef, Attr)> {
        check_new_name(new_name)?;
        let node = self.node(node_id)?;
        if node.is_dir() {
            return Err(Errno::PERM);
        }
        let parent = self.node(new_parent)?;
        let _r = self.rename_lock.read();
        let pup = self.upper_dir(&parent)?;
        let pup = pup.as_fd();
        let over_whiteout = match upper_at(&parent, pup, new_name)? {
            UpperAt::Object => return Err(Errno::EXIST),
            UpperAt::Whiteout => true,
            UpperAt::Nothing => {
                if self.resolve(&parent, new_name)?.is_some() {
                    return Err(Errno::EXIST);
                }
                false
            }
        };
        self.copy_up_node(&node, Data::Full)?;
        let up = node.upper_fd()?.ok_or(Errno::IO)?;
        if over_whiteout {
            let work = self.work()?;
            let tmp = self.tmp_name();
            sys::link_fd(up.as_fd(), work, &tmp)?;
            if let Err(e) = sys::rename_at(work, &tmp, pup, new_name, RenameFlags::empty()) {
                let _ = rustix::fs::unlinkat(work, &tmp, AtFlags::empty());
                return Err(e);
            }
        } else {
            sys::link_fd(up.as_fd(), pup, new_name)?;
        }
        if node.state.read().layers.has_lowers() {
            mark_impure(&parent, pup);
        }
        self.wb.dir_changed(self, &parent, pup);
        {
            let mut table = self.table.lock();
            table.remove_name(new_parent, new_name);
            table.add_alias(&node, new_parent, new_name);
        }
        self.reference(&node, new_parent, new_name)
    }

    /// Removes the non-directory `parent/name`.
    pub fn unlink(&self, parent_id: NodeId, name: &OsStr) -> SysResult<()> {
        self.remove(parent_id, name, false)
    }

    /// Removes the empty directory `parent/name`.
    pub fn rmdir(&self, parent_id: NodeId, name: &OsStr) -> SysResult<()> {
        self.remove(parent_id, name, true)
    }

    fn remove(&self, parent_id: NodeId, name: &OsStr, dir: bool) -> SysResult<()> {
        sys::check_name(name)?;
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let parent = self.node(parent_id)?;
        let _r = self.rename_lock.read();
        let node = self.resolve(&parent, name)?.ok_or(Errno::NOENT)?;
        match (dir, node.is_dir()) {
            (true, false) => return Err(Errno::NOTDIR),
            (false, true) => return Err(Errno::ISDIR),
            _ => {}
        }
        if dir {
            let dl = node.dir_layers().ok_or(Errno::NOTDIR)?;
            if !readdir::is_empty(&self.stack, &dl)? {
                return Err(Errno::NOTEMPTY);
            }
        }
        let pdl = Self::parent_layers(&parent)?;
        let need_whiteout =
            !pdl.lowers.is_empty() && lookup::lower_positive(&self.stack, &pdl, name)?;
        let pup = self.upper_dir(&parent)?;
        let pup = pup.as_fd();
        match upper_at(&parent, pup, name)? {
            UpperAt::Object => {
                let removed_dir = if dir { upper_key(&node) } else { None };
                let plain = !need_whiteout && (!dir || upper_dir_is_empty(self, pup, name)?);
                if plain {
                    let flags = if dir {
                        AtFlags::REMOVEDIR
                    } else {
                        AtFlags::empty()
                    };
                    rustix::fs::unlinkat(pup, name, flags)?;
                } else {
                    // One atomic step: the name becomes a whiteout (or, for
                    // a directory still holding whiteouts, disappears) and
                    // the old object moves to the work directory.
                    let work = self.work()?;
                    let tmp = self.tmp_name();
                    let flags = if need_whiteout {
                        RenameFlags::WHITEOUT
                    } else {
                        RenameFlags::NOREPLACE
                    };
                    sys::rename_at(pup, name, work, &tmp, flags)?;
                    if dir {
                        remove_tree(self, work, &tmp, 0)?;
                    } else {
                        rustix::fs::unlinkat(work, &tmp, AtFlags::empty())?;
                    }
                }
                if let Some(key) = removed_dir {
                    self.wb.dir_removed(key);
                }
            }
            UpperAt::Nothing | UpperAt::Whiteout => {
                // Lower only (the whiteout case cannot be visible). The
                // upper filesystem would take the whiteout even where
                // the lower object or the directory forbids the removal:
                // refuse it as the kernel does.
                refuse_protected_lower(&node)?;
                if sys::immutable_or_append(pup)?.1 {
                    return Err(Errno::PERM);
                }
                sys::mknod_whiteout(pup, name)?;
            }
        }
        self.wb.dir_changed(self, &parent, pup);
        self.table.lock().remove_name(parent_id, name);
        Ok(())
    }

    /// Renames `old_parent/old_name` to `new_parent/new_name`; `flags` may
    /// hold `NOREPLACE` or `EXCHANGE`.
    pub fn rename(
        &self,
        old_parent: NodeId,
        old_name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> SysResult<()> {
        sys::check_name(old_name)?;
        check_new_name(new_name)?;
        if self.opts.readonly {
            return Err(Errno::ROFS);
        }
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let noreplace = flags.contains(RenameFlags::NOREPLACE);
        if exchange && noreplace {
            return Err(Errno::INVAL);
        }
        let _w = self.rename_lock.write();
        let op = self.node(old_parent)?;
        let np = self.node(new_parent)?;
        let src = self.resolve(&op, old_name)?.ok_or(Errno::NOENT)?;
        let dst = self.resolve(&np, new_name)?;
        if let Some(d) = &dst {
            if NodeRef::ptr_eq(d, &src) {
                // Two names of one object: rename(2) does nothing.
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EXIST);
            }
            if !exchange {
                match (src.is_dir(), d.is_dir()) {
                    (true, false) => return Err(Errno::NOTDIR),
                    (false, true) => return Err(Errno::ISDIR),
                    (true, true) => {
                        let dl = d.dir_layers().ok_or(Errno::NOTDIR)?;
                        if !readdir::is_empty(&self.stack, &dl)? {
                            return Err(Errno::NOTEMPTY);
                        }
                    }
                    _ => {}
                }
            }
        } else if exchange {
            return Err(Errno::NOENT);
        }
        let opl = Self::parent_layers(&op)?;
        let npl = Self::parent_layers(&np)?;
        let need_whiteout = !exchange
            && !opl.lowers.is_empty()
            && lookup::lower_positive(&self.stack, &opl, old_name)?;
        let opup = self.upper_dir(&op)?;
        let npup = self.upper_dir(&np)?;
        if exchange {
            // Both may be names of hard-linked lower files: mark both before
            // the kernel's single retry, which must split them together.
            let src_split = self.needs_split(&src);
            let dst_split = dst.as_ref().map_or(Ok(()), |d| self.needs_split(d));
            src_split.and(dst_split)?;
        }
        refuse_protected_lower(&src)?;
        if let Some(d) = &dst {
            refuse_protected_lower(d)?;
        }
        self.copy_up_node(&src, Data::Full)?;
        if exchange {
            if let Some(d) = &dst {
                self.copy_up_node(d, Data::Full)?;
            }
        }
        let same_place = old_parent == new_parent && old_name == new_name;
        if src.is_dir() && !same_place {
            self.mark_moved_dir(&src, &npl)?;
        }
        if exchange {
            if let Some(d) = &dst {
                if d.is_dir() {
                    self.mark_moved_dir(d, &opl)?;
                }
            }
        }
        let (opup, npup) = (opup.as_fd(), npup.as_fd());
        let replaced_dir = match &dst {
            Some(d) if !exchange && d.is_dir() => upper_key(d),
            _ => None,
        };
        if exchange {
            sys::rename_at(opup, old_name, npup, new_name, RenameFlags::EXCHANGE)?;
        } else {
            let wh = if need_whiteout {
                RenameFlags::WHITEOUT
            } else {
                RenameFlags::empty()
            };
            match upper_at(&np, npup, new_name)? {
                UpperAt::Whiteout if src.is_dir() => {
                    // A directory cannot replace a device: swap, then drop
                    // the whiteout unless the old name needs one.
                    sys::rename_at(opup, old_name, npup, new_name, RenameFlags::EXCHANGE)?;
                    if !need_whiteout {
                        rustix::fs::unlinkat(opup, old_name, AtFlags::empty())?;
                    }
                }
                UpperAt::Whiteout => {
                    sys::rename_at(opup, old_name, npup, new_name, wh)?;
                }
                UpperAt::Object => {
                    if dst.as_ref().is_some_and(|d| d.is_dir())
                        && !upper_dir_is_empty(self, npup, new_name)?
                    {
                        self.clear_upper_dir(npup, new_name)?;
                    }
                    sys::rename_at(opup, old_name, npup, new_name, wh)?;
                }
                UpperAt::Nothing => {
                    sys::rename_at(opup, old_name, npup, new_name, wh | RenameFlags::NOREPLACE)?;
                }
            }
        }
        if let Some(key) = replaced_dir {
            self.wb.dir_removed(key);
        }
        if src.state.read().layers.has_lowers() {
            mark_impure(&np, npup);
        }
        if exchange
            && dst
                .as_ref()
                .is_some_and(|d| d.state.read().layers.has_lowers())
        {
            mark_impure(&op, opup);
        }
        self.wb.dir_changed(self, &op, opup);
        if old_parent != new_parent {
            self.wb.dir_changed(self, &np, npup);
        }
        let mut table = self.table.lock();
        if exchange {
            // Swap the two names: park one under an impossible name.
            let park = OsStr::new("/");
            table.move_name(new_parent, new_name, new_parent, park);
            table.move_name(old_parent, old_name, new_parent, new_name);
            table.move_name(new_parent, park, old_parent, old_name);
        } else {
            if dst.is_some() {
                table.remove_name(new_parent, new_name);
            }
            table.move_name(old_parent, old_name, new_parent, new_name);
        }
        Ok(())
    }

    /// Before a directory moves into `to`: a directory with lower layers
    /// gets a redirect to them; one without, moving into a merged
    /// directory, gets an opaque marker so the new place's lower
    /// directories do not show through.
    fn mark_moved_dir(&self, dir: &NodeRef, to: &DirLayers) -> SysResult<()> {
        let (has_lowers, lower_path, opaque, up) = {
            let st = dir.state.read();
            match &st.layers {
                Layers::Dir(d) => (
                    !d.lowers.is_empty(),
                    d.lower_path.clone(),
                    st.opaque(),
                    d.upper.clone(),
                ),
                _ => return Ok(()),
            }
        };
        let up = up.ok_or(Errno::IO)?.fd()?;
        if has_lowers {
            let path = lower_path.ok_or(Errno::IO)?;
            let value = markers::encode_redirect(&path.components());
            xattr::set(up.as_fd(), OsStr::new(markers::REDIRECT), &value, 0)?;
        } else if !opaque && !to.lowers.is_empty() {
            xattr::set(up.as_fd(), OsStr::new(markers::OPAQUE), b"y", 0)?;
            dir.state.write().set_opaque(true);
        }
        Ok(())
    }

    /// Replaces upper directory `dir/name` (which holds only whiteouts) by
    /// an empty opaque one, atomically, and removes the old one.
    fn clear_upper_dir(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        let work = self.work()?;
        let tmp = self.tmp_name();
        rustix::fs::mkdirat(work, &tmp, Mode::from_raw_mode(0o700))?;
        let old = sys::open_path_at(dir, name)?;
        let new = sys::open_path_at(work, &tmp)?;
        let st = sys::stat_fd(old.as_fd())?;
        let prepared = (|| -> SysResult<()> {
            sys::chown_fd(new.as_fd(), Some(st.st_uid), Some(st.st_gid))?;
            self.stack.proc.chmod(new.as_fd(), st.st_mode)?;
            copy_up::copy_xattrs(old.as_fd(), new.as_fd())?;
            xattr::set(new.as_fd(), OsStr::new(markers::OPAQUE), b"y", 0)?;
            sys::rename_at(work, &tmp, dir, name, RenameFlags::EXCHANGE)
        })();
        if let Err(e) = prepared {
            remove_tmp(self, work, &tmp);
            return Err(e);
        }
        remove_tree(self, work, &tmp, 0)
    }
}

/// Sets the ACLs a new object inherited (the upper filesystem applied them
/// already when the object was made in its real parent; setting them again
/// is harmless).
fn set_inherited_acls(obj: BorrowedFd<'_>, inherited: Option<&acl::Inherited>) -> SysResult<()> {
    let Some(i) = inherited else { return Ok(()) };
    if let Some(a) = &i.access {
        xattr::set(obj, OsStr::new(acl::ACCESS), a, 0)?;
    }
    if let Some(d) = &i.default {
        xattr::set(obj, OsStr::new(acl::DEFAULT), d, 0)?;
    }
    Ok(())
}

fn upper_dir_is_empty(ov: &Overlay, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<bool> {
    let d = sys::open_path_at(dir, name)?;
    Ok(sys::read_dir(&ov.stack.proc, d.as_fd())?.is_empty())
}

/// The default ACL of the upper directory `pup` of `dl`, remembering its
/// absence: most directories have none, and the `getxattr` (through
/// /proc, `pup` being an `O_PATH` handle) was the costliest call of a
/// create. Xattr changes through rovl forget it (files.rs).
fn default_acl(dl: &DirLayers, pup: BorrowedFd<'_>) -> SysResult<Option<Vec<u8>>> {
    let ticket = match dl.no_default_acl.check() {
        Ok(()) => return Ok(None),
        Err(t) => t,
    };
    let d = xattr::get(pup, OsStr::new(acl::DEFAULT))?;
    if d.is_none() {
        dl.no_default_acl.note_absent(ticket);
    }
    Ok(d)
}

/// Creates the object itself in `dir` (no owner change yet). Returns an
/// `O_PATH` handle on it and, for a regular file, the open file.
fn make_object(
    ov: &Overlay,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind: NewKind<'_>,
    perm: u32,
) -> SysResult<(OwnedFd, Option<CreatedFile>)> {
    let mode = Mode::from_raw_mode(perm);
    match kind {
        NewKind::File(flags) => {
            let mut f = flags
                & !(OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOCTTY
                    | OFlags::NOFOLLOW
                    | OFlags::TRUNC);
            f = adapt_access(ov, f);
            if f & OFlags::ACCMODE == OFlags::WRONLY {
                // The file is new: reading it is no wider than the caller's
                // write, and a read-write descriptor can serve as its
                // passthrough backing file as it is (fuse/io.rs).
                f = (f & !OFlags::ACCMODE) | OFlags::RDWR;
            }
            let file = rustix::fs::openat(
                dir,
                name,
                f | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                mode,
            )?;
            let obj = sys::open_path_at(dir, name)?;
            Ok((obj, Some((file, f))))
        }
        NewKind::Dir => {
            rustix::fs::mkdirat(dir, name, mode)?;
            Ok((sys::open_path_at(dir, name)?, None))
        }
        NewKind::Symlink(target) => {
            rustix::fs::symlinkat(target, dir, name)?;
            Ok((sys::open_path_at(dir, name)?, None))
        }
        NewKind::Special(FileType::RegularFile, _) => {
            let f = rustix::fs::openat(
                dir,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                mode,
            )?;
            drop(f);
            Ok((sys::open_path_at(dir, name)?, None))
        }
        NewKind::Special(t, rdev) => {
            sys::mknod_at(dir, name, t, perm, rdev)?;
            Ok((sys::open_path_at(dir, name)?, None))
        }
    }
}

/// Adapts open flags for the real file: with the kernel's writeback cache,
/// the kernel may read through a write-only open and handles `O_APPEND`
/// itself.
pub(crate) fn adapt_access(ov: &Overlay, mut f: OFlags) -> OFlags {
    if ov.writeback_cache() {
        if f & OFlags::ACCMODE == OFlags::WRONLY {
            f = (f & !OFlags::ACCMODE) | OFlags::RDWR;
        }
        f &= !OFlags::APPEND;
    }
    f
}

/// EPERM for an object only a lower layer holds that is marked immutable
/// or append-only (`statx`, no open): removing or renaming it changes only
/// the upper layer, which never sees those flags, so rovl refuses what the
/// kernel refuses. An upper object carries its own flags, and the upper
/// filesystem enforces them.
fn refuse_protected_lower(node: &NodeRef) -> SysResult<()> {
    if node.has_upper() {
        return Ok(());
    }
    let (immutable, append) = sys::immutable_or_append(node.top_fd()?.as_fd())?;
    if immutable || append {
        return Err(Errno::PERM);
    }
    Ok(())
}

/// The upper directory of `node` as the writeback bookkeeping knows it
/// (st_dev, st_ino), if it has one.
fn upper_key(node: &NodeRef) -> Option<(u64, u64)> {
    let fd = node.upper_fd().ok().flatten()?;
    let st = sys::stat_fd(fd.as_fd()).ok()?;
    Some((st.st_dev, st.st_ino))
}
