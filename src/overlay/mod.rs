//! The overlay engine: the merged view as a table of nodes, and every
//! operation on it. No FUSE types here: `crate::fuse` translates requests
//! into calls on [`Overlay`].

pub mod acl;
pub mod attr;
pub mod files;
pub mod keylocks;
mod namespace;
pub mod node;
pub mod open_file;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

pub use self::attr::{Attr, Caller, SetAttr, SetTime};
pub use self::files::OpenFlags;
pub use self::namespace::NewKind;
use self::node::{Layers, MAX_DEPTH, Node, NodeId, NodeRef, NodeState, NodeTable, ROOT_ID, Slab};
pub use self::open_file::OpenFile;

/// How long a hard-linked lower file waits for the kernel's retry that
/// picks the name to copy up.
const SPLIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);
use crate::layers::lookup::{self, DirLayers, Found, LayerDir, LowerPath};
use crate::layers::{Stack, markers};
use crate::sys::{self, Errno, FileType, SysResult};
use crate::writeback::MountWb;

/// Behaviour switches fixed at mount time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Volatile mode: never force writeback to the upper filesystem.
    pub volatile: bool,
    /// No upper layer, or mounted `ro`.
    pub readonly: bool,
}

/// How long a new object waits for the kernel to forget a removed
/// object's node that holds its inode number (the kernel keeps a removed
/// file's inode past its FORGET only while something holds it, such as a
/// working directory inside a removed directory; the object then gets a
/// fallback number for this mount's life).
const FORGET_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// A mounted overlay.
#[derive(Debug)]
pub struct Overlay {
    /// The layers.
    pub stack: Stack,
    /// Mount-time switches.
    pub opts: Options,
    /// `WORKDIR/work`: where copies and new objects are prepared.
    work: Option<OwnedFd>,
    table: Mutex<NodeTable>,
    /// Told when the kernel's FORGET removed a node from the table (see
    /// [`Overlay::wait_for_removed_holder`]).
    forgotten: Condvar,
    /// Where nodes live.
    slab: Slab,
    /// Renames take it exclusively; anything that walks or publishes into
    /// the parent chain (copy-up, create, remove) takes it shared, so names
    /// stay put while they are used.
    pub(crate) rename_lock: RwLock<()>,
    /// Nodes whose data is being copied ahead of their copy-up
    /// (`copy_up::prebuild`).
    pub(crate) prebuilds: keylocks::KeyLocks<NodeId>,
    tmp_counter: AtomicU64,
    /// The kernel's writeback cache is on (opens adapt their flags to it).
    wbcache: std::sync::atomic::AtomicBool,
    /// Mount-wide writeback state.
    pub wb: MountWb,
    /// Where to report changes the kernel has cached but did not make.
    invalidate: std::sync::OnceLock<Arc<dyn Invalidate>>,
}

/// Receives the changes rovl makes behind the kernel's back (copy-up
/// changes an object's change time and blocks, and its parent's): the
/// kernel caches attributes for a long time and must be told.
pub trait Invalidate: Send + Sync + std::fmt::Debug {
    /// The attributes of node `ino` changed.
    fn attributes(&self, ino: NodeId);
    /// What the kernel caches of node `ino`'s contents changed (for a
    /// directory: an entry's inode number).
    fn contents(&self, ino: NodeId);
}

impl Overlay {
    /// Builds the overlay over `stack`; `work` is `WORKDIR/work` (required
    /// when the stack has an upper layer).
    pub fn new(stack: Stack, work: Option<OwnedFd>, opts: Options, wb: MountWb) -> SysResult<Self> {
        let mut dl = DirLayers {
            lower_path: Some(LowerPath::root()),
            ..Default::default()
        };
        let mut ident = (0, 0);
        if stack.has_upper {
            let fd = stack.layers[0].root.clone();
            dl.upper_xwhiteouts = markers::dir_marks(fd.as_fd())?.xwhiteouts;
            let st = sys::stat_fd(fd.as_fd())?;
            ident = (st.st_dev, st.st_ino);
            dl.upper = Some(stack.objs.pin(0, fd));
        }
        for id in stack.lower_ids() {
            let fd = stack.layers[id].root.clone();
            if dl.upper.is_none() && dl.lowers.is_empty() {
                let st = sys::stat_fd(fd.as_fd())?;
                ident = (st.st_dev, st.st_ino);
            }
            let xwhiteouts = markers::dir_marks(fd.as_fd())?.xwhiteouts;
            dl.lowers.push(LayerDir {
                layer: id,
                obj: stack.objs.pin(id, fd),
                xwhiteouts,
            });
        }
        let slab = Slab::new(Some(stack.objs.clone()), Some(wb.node_wbs()));
        let root = slab.alloc_with(
            ROOT_ID,
            0,
            FileType::Directory,
            NodeState::new(
                ROOT_ID,
                OsStr::new(""),
                Layers::Dir(Arc::new(dl)),
                ident,
                false,
            ),
        );
        root.set_lookups(1);
        let mut table = NodeTable::new(slab.clone());
        table.insert(&root, ROOT_ID, OsStr::new(""));
        drop(root);
        Ok(Overlay {
            stack,
            opts,
            work,
            table: Mutex::new(table),
            forgotten: Condvar::new(),
            slab,
            rename_lock: RwLock::new(()),
            prebuilds: Default::default(),
            tmp_counter: AtomicU64::new(0),
            wbcache: std::sync::atomic::AtomicBool::new(false),
            invalidate: std::sync::OnceLock::new(),
            wb,
        })
    }

    /// Sets where changes behind the kernel's back are reported.
    pub fn set_invalidate(&self, inv: Arc<dyn Invalidate>) {
        let _ = self.invalidate.set(inv);
    }

    /// The attributes of `ino` changed behind the kernel's back.
    pub(crate) fn attributes_changed(&self, ino: NodeId) {
        if let Some(inv) = self.invalidate.get() {
            inv.attributes(ino);
        }
    }

    /// The cached contents of `ino` changed behind the kernel's back.
    pub(crate) fn contents_changed(&self, ino: NodeId) {
        if let Some(inv) = self.invalidate.get() {
            inv.contents(ino);
        }
    }

    /// Records whether the kernel's writeback cache is on for this mount.
    pub fn set_writeback_cache(&self, on: bool) {
        self.wbcache.store(on, Ordering::Release);
        self.wb.set_writeback_cache(on);
    }

    /// Whether the kernel's writeback cache is on.
    pub fn writeback_cache(&self) -> bool {
        self.wbcache.load(Ordering::Acquire)
    }

    /// The node with id `id` (ESTALE when the kernel names a node rovl no
    /// longer has, which only a kernel bug could cause).
    pub fn node(&self, id: NodeId) -> SysResult<NodeRef> {
        self.table.lock().get(id).ok_or(Errno::STALE)
    }

    /// Every node the kernel currently holds.
    pub fn nodes(&self) -> Vec<NodeRef> {
        self.table.lock().all()
    }

    /// Number of nodes the kernel currently holds.
    pub fn node_count(&self) -> usize {
        self.table.lock().len()
    }

    /// Every name the kernel may know `node` by.
    pub fn names_of(&self, node: &Node) -> Vec<(NodeId, OsString)> {
        self.table.lock().names_of(node)
    }

    /// The work directory (EROFS when the mount has no upper layer).
    pub(crate) fn work(&self) -> SysResult<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::ROFS)
    }

    /// A fresh temporary name for the work directory.
    pub(crate) fn tmp_name(&self) -> OsString {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#rovl.{}.{n}", std::process::id()))
    }

    /// Looks `name` up in directory `parent`, counting a kernel reference
    /// on success. `None`: no such name (a negative entry).
    ///
    /// `split`: this lookup may be the kernel's retry of an operation that
    /// needs a hard-linked lower file copied up (see `Overlay::needs_split`);
    /// readdirplus passes false.
    pub fn lookup(
        &self,
        parent: NodeId,
        name: &OsStr,
        split: bool,
    ) -> SysResult<Option<(NodeRef, Attr)>> {
        let Some((mut node, mut fresh)) = self.resolve_fresh(parent, name)? else {
            return Ok(None);
        };
        if split {
            let pending = node.state.read().split_age();
            if let Some(age) = pending {
                if age < SPLIT_WINDOW {
                    node = self.split(parent, name, &node)?;
                    fresh = None;
                } else {
                    node.state.write().clear_split();
                }
            }
        }
        Ok(Some(self.reference_with(
            &node,
            parent,
            name,
            fresh.as_ref(),
        )?))
    }

    /// Counts the kernel reference a reply is about to give for `node`
    /// (reached as `parent/name`) and returns its attributes.
    pub(crate) fn reference(
        &self,
        node: &NodeRef,
        parent: NodeId,
        name: &OsStr,
    ) -> SysResult<(NodeRef, Attr)> {
        self.reference_with(node, parent, name, None)
    }

    /// [`Overlay::reference`], with the stat of `node`'s object when the
    /// caller has just taken one (a lookup), which then gives the
    /// attributes without asking the layer again.
    fn reference_with(
        &self,
        node: &NodeRef,
        parent: NodeId,
        name: &OsStr,
        fresh: Option<&sys::Stat>,
    ) -> SysResult<(NodeRef, Attr)> {
        let counted = self.table.lock().take_ref(node, parent, name);
        let attr = match fresh {
            Some(st) if NodeRef::ptr_eq(&counted, node) => Ok(self.attr_from_stat(&counted, st)),
            _ => self.getattr(&counted),
        };
        match attr {
            Ok(attr) => Ok((counted, attr)),
            Err(e) => {
                // No reply will carry the reference: give it back.
                self.forget(counted.id(), 1);
                Err(e)
            }
        }
    }

    /// The node `parent/name` leads to, without counting a reference. Nodes
    /// found fresh are entered in the table with no reference, so the next
    /// `lookup` of the same name finds the same node.
    pub(crate) fn resolve_id(&self, parent: NodeId, name: &OsStr) -> SysResult<Option<NodeRef>> {
        Ok(self.resolve_fresh(parent, name)?.map(|(n, _)| n))
    }

    /// [`Overlay::resolve_id`], with the stat of the node's object when the
    /// layers were just asked (the node was not in the table yet).
    fn resolve_fresh(
        &self,
        parent: NodeId,
        name: &OsStr,
    ) -> SysResult<Option<(NodeRef, Option<sys::Stat>)>> {
        sys::check_name(name)?;
        if let Some(n) = self.table.lock().child(parent, name) {
            return Ok(Some((n, None)));
        }
        let pnode = self.node(parent)?;
        let Some(dl) = pnode.dir_layers() else {
            return Err(Errno::NOTDIR);
        };
        let Some(found) = lookup::lookup(&self.stack, &dl, name)? else {
            return Ok(None);
        };
        let st = found.top().stat;
        let node = self.install(parent, name, found)?;
        // Another link of the same object, or a racing lookup's node: the
        // stat is still this node's only if it is the same object.
        let same = node.state.read().same_ident((st.st_dev, st.st_ino));
        Ok(Some((node, same.then_some(st))))
    }

    /// Like [`Overlay::resolve_id`] with the parent node at hand.
    pub(crate) fn resolve(&self, parent: &Node, name: &OsStr) -> SysResult<Option<NodeRef>> {
        self.resolve_id(parent.id(), name)
    }

    /// The inode number an object of the merged view naturally has, like
    /// kernel overlayfs (same filesystem or xino): a directory shows its top
    /// lower directory's; a copied-up file its origin's, unless the origin
    /// has several links (copy-up broke the link, so the copy is a different
    /// file); anything else its own.
    fn ino_of(&self, found: &Found) -> SysResult<u64> {
        if found.kind == FileType::Directory {
            if let Some((layer, real, _)) = found.lowers.first() {
                return Ok(self.stack.map_ino(*layer, real.stat.st_ino));
            }
        }
        if let Some(up) = &found.upper {
            if found.kind != FileType::Directory {
                if let Some(v) = sys::xattr::get(up.fd.as_fd(), OsStr::new(markers::ORIGIN))? {
                    if let Some(origin) = markers::Origin::decode(&v) {
                        if let Some((ino, nlink)) = self.stack.origin_ino(&origin) {
                            if nlink == 1 {
                                return Ok(ino);
                            }
                        }
                    }
                }
            }
            return Ok(self.stack.map_ino(0, up.stat.st_ino));
        }
        let (layer, real, _) = &found.lowers[0];
        Ok(self.stack.map_ino(*layer, real.stat.st_ino))
    }

    /// Enters a found object in the table as `parent/name`, or returns the
    /// node already standing for the same object (another link of it).
    fn install(&self, parent: NodeId, name: &OsStr, found: Found) -> SysResult<NodeRef> {
        let want = self.ino_of(&found)?;
        let top = found.top();
        let ident = (top.stat.st_dev, top.stat.st_ino);
        let opaque = found.upper_marks.opaque;
        let kind = found.kind;
        // The descriptor of a small lower object, cached once the node (and
        // so its key) exists.
        let mut small_fd = None;
        let layers = if kind == FileType::Directory {
            Layers::Dir(Arc::new(found.into_dir_layers(&self.stack)))
        } else {
            let upper = found.upper.map(|u| self.stack.objs.adopt(0, u.fd, false));
            let lower = match found.lowers.into_iter().next() {
                Some((l, r, _)) => {
                    let (obj, fd) = self.stack.objs.adopt_lower(l, r.fd);
                    small_fd = fd;
                    Some(obj)
                }
                None => None,
            };
            Layers::non_dir(upper, lower)
        };
        let mut table = self.table.lock();
        self.wait_for_removed_holder(&mut table, want, ident, &layers);
        if let Some(n) = table.child(parent, name) {
            return Ok(n);
        }
        let id = match table.claim(want, ident, &layers) {
            Ok(existing) => {
                table.add_alias(&existing, parent, name);
                return Ok(existing);
            }
            Err(id) => id,
        };
        let node = self.slab.alloc(
            id,
            kind,
            NodeState::new(parent, name, layers, ident, opaque),
        );
        self.wb.new_node(&node, ident);
        table.insert(&node, parent, name);
        drop(table);
        if let Some(fd) = small_fd {
            self.stack.objs.cache_small(node.small_key(), fd);
        }
        Ok(node)
    }

    /// Enters a just-made upper object as `parent/name` (replacing whatever
    /// the name led to).
    pub(crate) fn install_upper(
        &self,
        parent: NodeId,
        name: &OsStr,
        kind: FileType,
        layers: Layers,
        st: &sys::Stat,
        opaque: bool,
    ) -> NodeRef {
        let ident = (st.st_dev, st.st_ino);
        let want = self.stack.map_ino(0, st.st_ino);
        let mut table = self.table.lock();
        self.wait_for_removed_holder(&mut table, want, ident, &layers);
        table.remove_name(parent, name);
        let id = match table.claim(want, ident, &layers) {
            Ok(existing) => {
                table.add_alias(&existing, parent, name);
                return existing;
            }
            Err(id) => id,
        };
        if let Layers::Dir(d) = &layers {
            // A directory rovl just made is empty: it has no `.wh.` names,
            // and rovl never makes one in it.
            if let Some(u) = &d.upper {
                u.set_wh_names(false);
            }
        }
        let node = self.slab.alloc(
            id,
            kind,
            NodeState::new(parent, name, layers, ident, opaque),
        );
        self.wb.new_node(&node, ident);
        table.insert(&node, parent, name);
        node
    }

    /// Before copying up `node`: a lower file with several links cannot be
    /// copied up through its node, which all its names share, without
    /// knowing which name is meant. Marks the node and fails with ESTALE; the
    /// kernel then retries the operation after looking the name up again,
    /// and that lookup copies up exactly that name (`Overlay::split`).
    pub(crate) fn needs_split(&self, node: &NodeRef) -> SysResult<()> {
        if node.is_dir() || node.has_upper() {
            return Ok(());
        }
        let fd = node.top_fd()?;
        if sys::stat_fd(fd.as_fd())?.st_nlink > 1 {
            node.state.write().mark_split();
            return Err(Errno::STALE);
        }
        Ok(())
    }

    /// Copies `node` up (ancestors first) unless it is a hard-linked lower
    /// file, which first needs the kernel to say which name is meant. The
    /// caller holds `rename_lock`.
    pub(crate) fn copy_up_node(&self, node: &NodeRef, data: crate::copy_up::Data) -> SysResult<()> {
        self.copy_up_node_with(node, data, None)
    }

    /// Copies `node` up for an operation that holds no lock yet, taking the
    /// rename lock (shared) for it. A big regular file's data is copied
    /// into the work directory before, without the lock, so that renames
    /// (and, behind a waiting rename, every other change of the mount) do
    /// not wait for it; only publishing the copy holds the lock.
    pub(crate) fn copy_up_unlocked(
        &self,
        node: &NodeRef,
        data: crate::copy_up::Data,
    ) -> SysResult<()> {
        let pre = match data {
            crate::copy_up::Data::Full => crate::copy_up::prebuild(self, node),
            crate::copy_up::Data::Truncated => None,
        };
        let _r = self.rename_lock.read();
        self.copy_up_node_with(node, data, pre)
    }

    fn copy_up_node_with(
        &self,
        node: &NodeRef,
        data: crate::copy_up::Data,
        pre: Option<crate::copy_up::Prebuilt<'_>>,
    ) -> SysResult<()> {
        self.needs_split(node)?;
        let copied = match pre {
            Some(p) => crate::copy_up::copy_up_prebuilt(self, node, data, p),
            None => crate::copy_up::copy_up(self, node, data),
        };
        match copied {
            Err(Errno::BUSY) if node.lower_pinned() => {
                // Passthrough readers hold the lower file through this
                // node's FUSE inode: give the name a new node instead (its
                // own inode number; no origin, so it keeps that number
                // across remounts, under the kernel too), leave the readers
                // on the old one, and have the kernel retry the operation
                // after looking the name up again.
                let (parent, name) = {
                    let st = node.state.read();
                    if st.unlinked() {
                        return Err(Errno::STALE);
                    }
                    (st.parent, st.name.clone())
                };
                self.copy_up_name(parent, &name, node, data, crate::copy_up::Origin::Drop)?;
                Err(Errno::STALE)
            }
            r => r,
        }
    }

    /// Copies up name `parent/name` of the hard-linked lower file `node` as
    /// a file of its own (breaking the link, as kernel overlayfs does with
    /// `index=off`), and returns its new node.
    fn split(&self, parent: NodeId, name: &OsStr, node: &NodeRef) -> SysResult<NodeRef> {
        let _r = self.rename_lock.read();
        node.state.write().clear_split();
        self.copy_up_name(
            parent,
            name,
            node,
            crate::copy_up::Data::Full,
            crate::copy_up::Origin::Keep,
        )
    }

    /// Copies up the lower file `node` shows as a new node for the name
    /// `parent/name` alone, which from then on leads to the new node; the
    /// old node keeps its other names (or becomes unlinked). The caller
    /// holds `rename_lock`.
    fn copy_up_name(
        &self,
        parent: NodeId,
        name: &OsStr,
        node: &NodeRef,
        data: crate::copy_up::Data,
        origin: crate::copy_up::Origin,
    ) -> SysResult<NodeRef> {
        let (lower, ident) = {
            let st = node.state.read();
            match &st.layers {
                Layers::Lower(l) => (l.clone(), st.ident()),
                _ => return Ok(node.clone()),
            }
        };
        let part = self.slab.alloc(
            0,
            node.kind(),
            NodeState::new(parent, name, Layers::Lower(lower.clone()), ident, false),
        );
        crate::copy_up::copy_up_with(self, &part, data, origin)?;
        let up = part.upper().ok_or(Errno::IO)?;
        let st = sys::stat_fd(up.fd()?.as_fd())?;
        let layers = Layers::non_dir(Some(up), Some(lower));
        let node = self.install_upper(parent, name, node.kind(), layers, &st, false);
        // The name's inode number changed: the kernel's cached listing of
        // the parent still has the old one.
        self.contents_changed(parent);
        Ok(node)
    }

    /// Drops `n` kernel references to node `id`.
    pub fn forget(&self, id: NodeId, n: u64) {
        let removed = self.table.lock().forget(id, n);
        if removed.is_some() {
            self.forgotten.notify_all();
        }
        drop(removed);
    }

    /// Before a new object takes its natural id `want`: when a removed
    /// object's node still holds that id with the same inode number (the
    /// upper filesystem hands freed numbers out again, and the kernel's
    /// FORGET of the old node is usually microseconds away), waits for that
    /// node to go, for at most [`FORGET_WAIT`], with the table unlocked
    /// meanwhile. The object then shows its natural inode number, the one
    /// it has after a remount (SPEC §2), instead of a fallback.
    fn wait_for_removed_holder(
        &self,
        table: &mut MutexGuard<'_, NodeTable>,
        want: NodeId,
        ident: (u64, u64),
        layers: &Layers,
    ) {
        let deadline = std::time::Instant::now() + FORGET_WAIT;
        while table.held_by_removed(want, ident, layers) {
            if self.forgotten.wait_until(table, deadline).timed_out() {
                return;
            }
        }
    }

    /// Attributes of `node` as the merged view shows them.
    pub fn getattr(&self, node: &NodeRef) -> SysResult<Attr> {
        let fd = node.top_fd()?;
        let st = sys::stat_fd(fd.as_fd())?;
        Ok(self.attr_from_stat(node, &st))
    }

    /// Attributes of `node` given the stat of the object it shows.
    fn attr_from_stat(&self, node: &Node, st: &sys::Stat) -> Attr {
        let merged = match &node.state.read().layers {
            Layers::Dir(d) => {
                (d.upper.is_some() && !d.lowers.is_empty())
                    || (d.upper.is_none() && d.lowers.len() > 1)
            }
            _ => false,
        };
        let mut attr = Attr::from_stat(st, node.id());
        if merged {
            // Like kernel overlayfs: counting a merged directory's links
            // would mean reading every layer.
            attr.nlink = 1;
        }
        attr
    }

    /// The path of `node` relative to the mount root (best effort: an
    /// unlinked node keeps its last name).
    pub fn path_of(&self, node: &Node) -> PathBuf {
        let mut parts: Vec<OsString> = Vec::new();
        let (mut parent, name) = {
            let st = node.state.read();
            (st.parent, st.name.to_os_string())
        };
        if node.id() == ROOT_ID {
            return PathBuf::from("/");
        }
        parts.push(name);
        let table = self.table.lock();
        let mut guard = 0;
        while parent != ROOT_ID && guard < MAX_DEPTH {
            let Some(p) = table.get(parent) else { break };
            let st = p.state.read();
            parts.push(st.name.to_os_string());
            parent = st.parent;
            guard += 1;
        }
        let mut path = PathBuf::from("/");
        for p in parts.iter().rev() {
            path.push(p);
        }
        path
    }

    /// Filesystem statistics (of the upper layer, or the top lower one).
    pub fn statfs(&self) -> SysResult<rustix::fs::StatVfs> {
        let root = &self.stack.layers[0].root;
        rustix::fs::fstatvfs(root)
    }
}
