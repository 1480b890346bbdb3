//! Writeback: what this mount dirtied, the writeback errors it met, and who
//! has been told them (SPEC §3, E1–E8).
//!
//! - Every error rovl meets on the upper filesystem for this mount (an
//!   fsync of a file or directory it dirtied, or a check of background
//!   writeback) is recorded once: in the file's [`ErrSeq`], in the mount's,
//!   in the journal and in the status list. The errseqs then tell each
//!   observer (an open file description of the mount) once (E1, E2): the
//!   kernel would hand an error only to the fsync caller that met it.
//! - Observers sample both errseqs when they open; internal readers (status,
//!   the volatile check) only peek (E8).
//! - Dirty tracking keeps an upper fd per file this mount dirtied, opened
//!   before the data was written, until the data is known durable, so no
//!   error slips past between a close and a check. Passthrough writes never
//!   reach the daemon, so "dirtied" means "opened for writing" and the bytes
//!   come from `cachestat(2)`.
//! - A sync (E2) writes back exactly that set: several files in flight, then
//!   the directories whose entries changed. Nothing ever calls syncfs(2) on
//!   the upper filesystem (E3, E4).
//! - Volatile mode (E5) never forces writeback; it checks for errors of
//!   background writeback without starting any, and after the first one
//!   fails every fsync and sync until unmount.

pub mod journal;
pub mod session;
pub mod status;

use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use std::time::{Duration, Instant, SystemTime};

use errseq::{Cursor, ErrSeq, Errno};
use parking_lot::Mutex;
use tracing::{error, info, warn};

use crate::layers::object::Obj;
use crate::overlay::Overlay;
use crate::overlay::node::{Node, NodeRef, WeakNode};
use crate::sys::{self, OFlags};

pub use self::journal::Journal;

/// Per-inode writeback state, made on first use and kept in the mount's
/// [`NodeWbs`] by node, not in the node: the kernel holds tens of
/// thousands of nodes after a walk, and only those opened or changed need
/// any.
#[derive(Debug, Default)]
pub struct InodeWb {
    slots: Mutex<WbSlots>,
}

#[derive(Debug, Default)]
struct WbSlots {
    /// Writeback errors of this file (E1).
    errs: Option<Arc<ErrSeq>>,
    /// Its entry in the mount's dirty set, while it has one.
    dirty: Option<Arc<DirtyFile>>,
}

impl InodeWb {
    fn with(errs: Arc<ErrSeq>, dirty: Option<Arc<DirtyFile>>) -> InodeWb {
        InodeWb {
            slots: Mutex::new(WbSlots {
                errs: Some(errs),
                dirty,
            }),
        }
    }

    /// Writeback errors of this file (E1).
    pub fn errs(&self) -> Arc<ErrSeq> {
        self.slots
            .lock()
            .errs
            .get_or_insert_with(Default::default)
            .clone()
    }

    fn dirty(&self) -> Option<Arc<DirtyFile>> {
        self.slots.lock().dirty.clone()
    }
}

/// The writeback state of the nodes that have any, by node generation
/// (unique to each node for the life of the mount). The node slab drops a
/// node's entry when it empties the node's slot.
#[derive(Debug, Default)]
pub struct NodeWbs(Mutex<HashMap<u64, Arc<InodeWb>>>);

impl NodeWbs {
    /// The state of the node with generation `generation`, if it has any.
    pub fn get(&self, generation: u64) -> Option<Arc<InodeWb>> {
        self.0.lock().get(&generation).cloned()
    }

    /// The state of that node, made now if it has none.
    pub fn get_or_make(&self, generation: u64) -> Arc<InodeWb> {
        self.0.lock().entry(generation).or_default().clone()
    }

    /// Gives a new node the state `wb`.
    pub fn set(&self, generation: u64, wb: Arc<InodeWb>) {
        self.0.lock().insert(generation, wb);
    }

    /// The node with generation `generation` is gone.
    pub fn remove(&self, generation: u64) {
        let old = self.0.lock().remove(&generation);
        drop(old);
    }

    /// Nodes with state (for tests).
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// True when no node has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One observer's cursors: an open file description of the mount.
#[derive(Debug)]
pub struct Observer {
    file: Mutex<Cursor>,
    mount: Mutex<Cursor>,
}

/// How the mount writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// fsync and sync reach the upper filesystem.
    Normal,
    /// Never force writeback (E5).
    Volatile,
}

/// A file this mount dirtied.
#[derive(Debug)]
pub struct DirtyFile {
    /// Upper (st_dev, st_ino).
    key: (u64, u64),
    /// The file's errseq (shared with its node).
    errs: Arc<ErrSeq>,
    /// rovl's own read-only fd on the upper file, opened before this mount
    /// wrote anything unsynced; `None` once parked.
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// Handle to reopen it when parked.
    handle: Option<sys::FileHandle>,
    /// The node, for its current path (the kernel may forget it and get a
    /// new one for the same file).
    node: Mutex<WeakNode>,
    /// Last known path (relative to the mount).
    path: Mutex<PathBuf>,
    /// Opens for writing right now.
    writers: AtomicUsize,
    /// Parked after its writeback ended cleanly (not for want of
    /// descriptors).
    parked_written_back: AtomicBool,
    /// Bumped by every change; a sync that saw the same value before and
    /// after made everything durable.
    epoch: AtomicU64,
    /// The mount's count of dirty files holding a descriptor.
    open_fds: Arc<AtomicUsize>,
}

impl Drop for DirtyFile {
    fn drop(&mut self) {
        if self.fd.get_mut().is_some() {
            self.open_fds.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A directory whose entries this mount changed.
#[derive(Debug)]
struct DirtyDir {
    key: (u64, u64),
    obj: Obj,
    errs: Arc<ErrSeq>,
    node: WeakNode,
    path: PathBuf,
    epoch: AtomicU64,
}

/// One error for the status report.
#[derive(Debug, Clone)]
pub struct ErrorRecord {
    /// When rovl met it.
    pub time: SystemTime,
    /// Path relative to the mount.
    pub path: PathBuf,
    /// The error.
    pub errno: Errno,
}

/// The outcome of the last sync, for the status report.
#[derive(Debug, Clone)]
pub struct SyncRecord {
    /// When it finished.
    pub time: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Files written back.
    pub files: usize,
    /// Directories made durable.
    pub dirs: usize,
    /// Its result for the caller.
    pub result: Result<(), Errno>,
}

/// Most errors kept in memory for the status report.
const MAX_ERROR_RECORDS: usize = 4096;
/// Most files fsynced at once by a sync.
const SYNC_PARALLELISM: usize = 8;

/// Runs `open` (a reopen of an upper object for a sync); out of
/// descriptors, it gives back the layer objects' cached descriptors and
/// tries once more (SPEC §4: degrade rather than fail).
fn short_of_descriptors_retry(
    ov: &Overlay,
    open: impl Fn() -> Result<OwnedFd, sys::Errno>,
) -> Result<OwnedFd, sys::Errno> {
    match open() {
        Err(sys::Errno::MFILE | sys::Errno::NFILE) => {
            ov.stack.objs.shrink();
            open()
        }
        r => r,
    }
}

/// Mount-wide writeback state.
#[derive(Debug)]
pub struct MountWb {
    mode: Mode,
    /// Writeback errors of the whole mount (E2).
    errs: ErrSeq,
    /// Baseline peeked at mount: "errors since mount".
    baseline: Cursor,
    /// The dirty files and directories, by upper (st_dev, st_ino). A
    /// lookup takes these locks while it holds the node table's
    /// (`new_node`): never take the table's (`Overlay::path_of`) while
    /// holding one of them.
    files: Mutex<HashMap<(u64, u64), Arc<DirtyFile>>>,
    dirs: Mutex<HashMap<(u64, u64), Arc<DirtyDir>>>,
    /// Per-node state (errors and dirty entry) of the nodes that have any.
    nodes: Arc<NodeWbs>,
    /// Volatile mode: the first writeback error, sticky until unmount.
    sticky: Mutex<Option<Errno>>,
    journal: Option<Journal>,
    errors: Mutex<Vec<ErrorRecord>>,
    error_count: AtomicU64,
    last_sync: Mutex<Option<SyncRecord>>,
    /// The mountpoint (to flush the kernel's page cache of this mount).
    pub mountpoint: PathBuf,
    /// `st_dev` of the mount once it is live: the flush must only ever
    /// reach this mount (after unmount the path is someone else's).
    mount_dev: std::sync::atomic::AtomicU64,
    /// Whether the kernel caches writes (writeback cache negotiated).
    writeback_cache: std::sync::atomic::AtomicBool,
    /// Whether a lease probe failed (warned once).
    no_leases: AtomicBool,
    /// Dirty files holding a descriptor, and how many may.
    open_fds: Arc<AtomicUsize>,
    fd_budget: AtomicUsize,
    /// Dirty files in the order they took their descriptor (oldest first;
    /// entries of files parked or gone since are dropped when met).
    held: Mutex<VecDeque<Weak<DirtyFile>>>,
    /// The unmount's result, once known.
    exit: Mutex<Option<Result<(), String>>>,
    /// Serializes syncs of the whole mount.
    sync_lock: Mutex<()>,
}

fn wb_errno(e: sys::Errno) -> Errno {
    Errno::new(e.raw_os_error()).unwrap_or(Errno::EIO)
}

fn sys_errno(e: Errno) -> sys::Errno {
    sys::Errno::from_raw_os_error(e.get())
}

impl DirtyFile {
    /// Holds a descriptor again (a parked file being written anew), so
    /// the background checks see it. An error of writeback since it was
    /// parked still reaches the new descriptor: nobody else checks this
    /// mount's upper files, so it is untold.
    /// Returns true when it took a descriptor.
    fn unpark(&self, ov: &Overlay) -> bool {
        let mut g = self.fd.lock();
        if g.is_some() {
            return false;
        }
        if let Ok(fd) = self.reopen(ov) {
            *g = Some(Arc::new(fd));
            self.open_fds.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// A new descriptor of a parked file (not kept).
    fn reopen(&self, ov: &Overlay) -> Result<OwnedFd, sys::Errno> {
        let h = self.handle.as_ref().ok_or(sys::Errno::STALE)?;
        let upper = ov.stack.upper_root().ok_or(sys::Errno::ROFS)?;
        short_of_descriptors_retry(ov, || {
            let p = sys::open_by_handle(upper, h)?;
            ov.stack.proc.reopen(p.as_fd(), OFlags::RDONLY)
        })
    }

    /// Closes rovl's descriptor of the file (it can be reopened by handle).
    /// `written_back`: its writeback ended without error and no writer
    /// has it open (else, parked for want of descriptors, it may still
    /// meet errors that the volatile check must see).
    fn park(&self, written_back: bool) -> bool {
        if self.handle.is_none() {
            return false;
        }
        let mut g = self.fd.lock();
        if g.take().is_some() {
            self.parked_written_back
                .store(written_back, Ordering::Release);
            self.open_fds.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// About how much heap this entry holds (for [`crate::heap::freed`]).
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.path.lock().as_os_str().len() + 128
    }

    fn current_path(&self, ov: &Overlay) -> PathBuf {
        let node = self.node.lock().upgrade();
        if let Some(n) = node {
            let p = ov.path_of(&n);
            *self.path.lock() = p.clone();
            return p;
        }
        self.path.lock().clone()
    }

    fn touch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Registers a change (and with `writer` a new open for writing).
    /// Called with the mount's file map locked and this entry in it, so
    /// that a sync settling the entry (under the same lock) either sees
    /// the change or has already let go of the entry.
    fn mark(&self, writer: bool) {
        if writer {
            self.writers.fetch_add(1, Ordering::AcqRel);
        }
        self.touch();
    }

    /// Whether this entry is of the upper object `upper`, and not of an
    /// earlier inode with the same number: a parked entry of a removed
    /// file stays in the map until a sync, while the upper filesystem may
    /// give its number to a new file. Unknown handles count as the same
    /// (an entry without a handle is never parked: its descriptor keeps
    /// the inode and its number).
    fn is_of(&self, upper: Option<&Obj>) -> bool {
        match (&self.handle, upper) {
            (Some(mine), Some(o)) => o.named_by(mine).unwrap_or(true),
            _ => true,
        }
    }
}

impl DirtyDir {
    /// Whether this entry is of the upper directory `upper` (see
    /// [`DirtyFile::is_of`]: a removed directory's number may be reused).
    fn is_of(&self, upper: Option<&Obj>) -> bool {
        upper.is_none_or(|u| self.obj.same_inode(u))
    }

    /// About how much heap this entry holds (for [`crate::heap::freed`]).
    fn footprint(&self) -> usize {
        std::mem::size_of::<DirtyDir>() + self.path.as_os_str().len()
    }
}

impl MountWb {
    /// Writeback state for a new mount.
    pub fn new(mode: Mode, journal: Option<Journal>, mountpoint: PathBuf) -> MountWb {
        let errs = ErrSeq::new();
        let baseline = errs.peek();
        MountWb {
            mode,
            errs,
            baseline,
            files: Mutex::new(HashMap::default()),
            nodes: Arc::default(),
            dirs: Mutex::new(HashMap::default()),
            sticky: Mutex::new(None),
            journal,
            errors: Mutex::new(Vec::new()),
            error_count: AtomicU64::new(0),
            last_sync: Mutex::new(None),
            mountpoint,
            writeback_cache: std::sync::atomic::AtomicBool::new(false),
            no_leases: AtomicBool::new(false),
            mount_dev: AtomicU64::new(0),
            open_fds: Arc::new(AtomicUsize::new(0)),
            fd_budget: AtomicUsize::new(4096),
            held: Mutex::new(VecDeque::new()),
            exit: Mutex::new(None),
            sync_lock: Mutex::new(()),
        }
    }

    /// The mount's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Tells the writeback layer whether the kernel caches writes.
    pub fn set_writeback_cache(&self, on: bool) {
        self.writeback_cache.store(on, Ordering::Release);
    }

    /// Sets how many dirty files may hold a descriptor at once; beyond
    /// that, the oldest idle ones are parked (SPEC §4: degrade, reopen).
    pub fn set_fd_budget(&self, n: usize) {
        self.fd_budget.store(n.max(4), Ordering::Release);
    }

    /// Over budget: parks the oldest dirty files, an eighth of the budget
    /// at a time: first those nobody has open for writing, then, when
    /// many files are open for writing at once (more than the descriptor
    /// limit allows), open ones too. A parked file is still synced and
    /// checked by every fsync and sync (reopened for it); only the
    /// periodic background check skips it.
    ///
    /// It walks the files holding a descriptor (about the budget), oldest
    /// first, not every dirty file: past the budget it runs once per
    /// eighth of it, so its cost per new dirty file stays constant however
    /// many files are dirty (it used to collect and sort them all).
    fn make_room(&self) {
        let budget = self.fd_budget.load(Ordering::Acquire);
        if self.open_fds.load(Ordering::Acquire) < budget {
            return;
        }
        let mut n = budget / 8 + 1;
        let mut held = self.held.lock();
        let mut kept: VecDeque<Weak<DirtyFile>> = VecDeque::with_capacity(held.len());
        let mut open: Vec<Arc<DirtyFile>> = Vec::new();
        for w in held.drain(..) {
            let Some(df) = w.upgrade() else { continue };
            if df.fd.lock().is_none() {
                continue;
            }
            if n > 0 && df.handle.is_some() {
                if df.writers.load(Ordering::Acquire) == 0 {
                    if df.park(false) {
                        n -= 1;
                        continue;
                    }
                } else {
                    open.push(df);
                }
            }
            kept.push_back(w);
        }
        *held = kept;
        drop(held);
        // Not enough idle ones: files open for writing too, oldest first
        // (their queue entries go when next met).
        for df in open {
            if n == 0 {
                break;
            }
            if df.park(false) {
                n -= 1;
            }
        }
    }

    /// `df` took a descriptor: it joins the end of the parking order.
    fn now_held(&self, df: &Arc<DirtyFile>) {
        let mut held = self.held.lock();
        held.push_back(Arc::downgrade(df));
        // Files parked or settled since leave entries behind (and a weak
        // reference keeps a dropped file's memory): drop them once they
        // outnumber the files holding a descriptor.
        let live = self.open_fds.load(Ordering::Acquire);
        if held.len() > 2 * live + 64 {
            held.retain(|w| w.upgrade().is_some_and(|d| d.fd.lock().is_some()));
        }
    }

    /// Records the live mount's device number (see `mount_dev`).
    pub fn set_mount_dev(&self, dev: u64) {
        self.mount_dev.store(dev, Ordering::Release);
    }

    /// The per-node state table (the node slab drops the entries of the
    /// nodes it frees).
    pub fn node_wbs(&self) -> Arc<NodeWbs> {
        self.nodes.clone()
    }

    /// The writeback state of `node`, made now if it has none.
    fn wb_of(&self, node: &Node) -> Arc<InodeWb> {
        self.nodes.get_or_make(node.generation())
    }

    /// The dirty entry of `node`, if it has one.
    fn dirty_of(&self, node: &Node) -> Option<Arc<DirtyFile>> {
        self.nodes.get(node.generation()).and_then(|w| w.dirty())
    }

    /// Gives the new node `node` of the object `ident` (upper st_dev,
    /// st_ino) the state the mount already tracks for that object when
    /// the kernel forgot an earlier node of it, so that no error recorded
    /// meanwhile is lost to the new node's observers, and points the
    /// object's dirty entry at it.
    pub fn new_node(&self, node: &NodeRef, ident: (u64, u64)) {
        if let Some(wb) = self.inode_wb(ident, node.upper().as_ref()) {
            self.nodes.set(node.generation(), wb);
        }
        self.link(node);
    }

    /// The writeback state of a new node for the object `ident` (see
    /// [`MountWb::new_node`]), whose upper object is `upper`. An entry
    /// of an earlier inode with the same number is not the new node's.
    fn inode_wb(&self, ident: (u64, u64), upper: Option<&Obj>) -> Option<Arc<InodeWb>> {
        if let Some(df) = self.files.lock().get(&ident) {
            if df.is_of(upper) {
                return Some(Arc::new(InodeWb::with(df.errs.clone(), Some(df.clone()))));
            }
        }
        let d = self.dir_entry(ident, upper)?;
        Some(Arc::new(InodeWb::with(d.errs.clone(), None)))
    }

    /// The dirty entry of the upper directory `upper`, whose (st_dev,
    /// st_ino) is `key`, if it has one (not one a removed directory with
    /// the same number left).
    fn dir_entry(&self, key: (u64, u64), upper: Option<&Obj>) -> Option<Arc<DirtyDir>> {
        self.dirs
            .lock()
            .get(&key)
            .filter(|d| d.is_of(upper))
            .cloned()
    }

    /// Points the dirty entry of `node`'s object (if any) at `node`.
    fn link(&self, node: &NodeRef) {
        if let Some(df) = self.dirty_of(node) {
            *df.node.lock() = node.downgrade();
        }
    }

    /// A new observer opens `node`.
    pub fn observe(&self, node: &Node) -> Observer {
        Observer {
            file: Mutex::new(self.wb_of(node).errs().sample()),
            mount: Mutex::new(self.errs.sample()),
        }
    }

    /// Records a writeback error rovl met on `path`, once, everywhere it
    /// must be told or kept: the file's errseq, the mount's, the journal,
    /// the status list, and (volatile) the sticky state.
    fn record(&self, file_errs: Option<&ErrSeq>, path: &std::path::Path, e: Errno) {
        if let Some(f) = file_errs {
            f.set(e);
        }
        self.errs.set(e);
        let now = SystemTime::now();
        self.error_count.fetch_add(1, Ordering::AcqRel);
        {
            let mut v = self.errors.lock();
            if v.len() < MAX_ERROR_RECORDS {
                v.push(ErrorRecord {
                    time: now,
                    path: path.to_path_buf(),
                    errno: e,
                });
            }
        }
        if self.mode == Mode::Volatile {
            let mut s = self.sticky.lock();
            if s.is_none() {
                *s = Some(e);
            }
        }
        error!(path = %path.display(), errno = %e.name(), "writeback error");
        if let Some(j) = &self.journal {
            let entry = journal::Entry {
                time: journal::rfc3339(now),
                path: path.to_string_lossy().into_owned(),
                errno: e.name().to_string(),
            };
            if let Err(je) = j.append(&entry) {
                error!(
                    path = %path.display(),
                    errno = %e.name(),
                    journal_error = %je,
                    "could not append to the error journal"
                );
            }
        }
    }

    /// The dirty entry of `node`, created (with rovl's own fd on `upper`)
    /// when it has none, with a change registered on it (and with
    /// `writer` a new open for writing) while it is in the mount's map: an
    /// entry a sync settles concurrently is never handed out.
    fn dirty_file(
        &self,
        ov: &Overlay,
        node: &NodeRef,
        upper: BorrowedFd<'_>,
        writer: bool,
    ) -> Option<Arc<DirtyFile>> {
        let wb = self.wb_of(node);
        if let Some(df) = self.marked(&wb.slots.lock().dirty, writer) {
            return Some(df);
        }
        // Looked up before the slots' lock: `new_node` takes a node's
        // slots while it holds the node table's.
        let path = ov.path_of(node);
        let upper_obj = node.upper();
        let mut slot = wb.slots.lock();
        if let Some(df) = self.marked(&slot.dirty, writer) {
            return Some(df);
        }
        let st = sys::stat_fd(upper).ok()?;
        let key = (st.st_dev, st.st_ino);
        // An entry of a removed file whose number this one got is not
        // this file's (nothing of it is left to make durable): replaced.
        let existing = {
            let files = self.files.lock();
            let df = files
                .get(&key)
                .filter(|df| df.is_of(upper_obj.as_ref()))
                .cloned();
            if let Some(df) = &df {
                df.mark(writer);
            }
            df
        };
        let df = match existing {
            Some(df) => df,
            None => {
                let handle = sys::name_to_handle(upper).ok();
                // Short of descriptors even after making room, the entry
                // starts parked: a sync reopens it by handle. Only an
                // entry that could be neither held nor reopened is lost.
                let fd = match short_of_descriptors_retry(ov, || {
                    ov.stack.proc.reopen(upper, OFlags::RDONLY)
                }) {
                    Ok(fd) => Some(Arc::new(fd)),
                    Err(e) if handle.is_none() => {
                        warn!(?e, "cannot hold the upper file for writeback tracking");
                        return None;
                    }
                    Err(_) => None,
                };
                let held = fd.is_some();
                let df = Arc::new(DirtyFile {
                    key,
                    errs: slot.errs.get_or_insert_with(Default::default).clone(),
                    fd: Mutex::new(fd),
                    handle,
                    node: Mutex::new(node.downgrade()),
                    path: Mutex::new(path),
                    writers: AtomicUsize::new(usize::from(writer)),
                    parked_written_back: AtomicBool::new(false),
                    epoch: AtomicU64::new(1),
                    open_fds: self.open_fds.clone(),
                });
                if held {
                    self.open_fds.fetch_add(1, Ordering::AcqRel);
                }
                let stale = self.files.lock().insert(key, df.clone());
                if let Some(old) = stale {
                    crate::heap::freed(old.footprint());
                }
                if held {
                    self.now_held(&df);
                    self.make_room();
                }
                df
            }
        };
        slot.dirty = Some(df.clone());
        Some(df)
    }

    /// `slot`'s entry with a change (and with `writer` an open for
    /// writing) registered, if the mount's map still holds it; `None` when
    /// there is none or a sync settled it (a new one is made then).
    fn marked(&self, slot: &Option<Arc<DirtyFile>>, writer: bool) -> Option<Arc<DirtyFile>> {
        let df = slot.as_ref()?;
        let files = self.files.lock();
        if !files.get(&df.key).is_some_and(|x| Arc::ptr_eq(x, df)) {
            return None;
        }
        df.mark(writer);
        Some(df.clone())
    }

    /// `node` was opened for writing through the upper file `fd`.
    pub fn opened_for_write(&self, ov: &Overlay, node: &NodeRef, fd: &Arc<OwnedFd>) {
        if let Some(df) = self.dirty_file(ov, node, fd.as_fd(), true) {
            if df.unpark(ov) {
                self.now_held(&df);
            }
            self.make_room();
        }
    }

    /// An open of `node` is released.
    pub fn released(&self, node: &Node, writable: bool) {
        if !writable {
            return;
        }
        if let Some(df) = self.dirty_of(node) {
            // A change first: with passthrough the daemon never sees the
            // writes, so a sync that fsynced before this close must not
            // settle the entry after it (it checks the count, then the
            // epoch).
            df.touch();
            df.writers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// rovl wrote to `node` through an open file.
    pub fn wrote(&self, node: &Node, _n: u64) {
        if let Some(df) = self.dirty_of(node) {
            df.touch();
        }
    }

    /// The upper file `fd` of `node` changed outside an open file for
    /// writing (a truncate, its mode, owner, times, xattrs or flags, or a
    /// copy-up a volatile mount left unsynced): the next sync makes it
    /// durable.
    pub fn file_changed(&self, ov: &Overlay, node: &NodeRef, fd: BorrowedFd<'_>) {
        self.dirty_file(ov, node, fd, false);
    }

    /// The upper directory `fd` of `dir` had its entries changed.
    pub fn dir_changed(&self, ov: &Overlay, dir: &NodeRef, fd: BorrowedFd<'_>) {
        if let Ok(st) = sys::stat_fd(fd) {
            self.dir_changed_at(ov, dir, &st);
        }
    }

    /// [`MountWb::dir_changed`] with the upper directory's stat in hand.
    pub fn dir_changed_at(&self, ov: &Overlay, dir: &NodeRef, st: &sys::Stat) {
        let key = (st.st_dev, st.st_ino);
        let Some(obj) = dir.upper() else { return };
        if let Some(d) = self.dir_entry(key, Some(&obj)) {
            d.epoch.fetch_add(1, Ordering::AcqRel);
            return;
        }
        // Built without the map's lock held: `path_of` takes the node
        // table's lock, and a lookup installing a node holds that one while
        // it takes this map's (`new_node`).
        let fresh = DirtyDir {
            key,
            obj,
            errs: self.wb_of(dir).errs(),
            node: dir.downgrade(),
            path: ov.path_of(dir),
            epoch: AtomicU64::new(1),
        };
        let mut dirs = self.dirs.lock();
        match dirs.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut d) => {
                if d.get().is_of(Some(&fresh.obj)) {
                    d.get().epoch.fetch_add(1, Ordering::AcqRel);
                } else {
                    // Of a removed directory whose number this one got.
                    d.insert(Arc::new(fresh));
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Arc::new(fresh));
            }
        }
    }

    /// The upper directory `key` (st_dev, st_ino) was removed: nothing
    /// of it is left to make durable, and a later sync could not even
    /// reopen it (its handle is stale).
    pub fn dir_removed(&self, key: (u64, u64)) {
        let gone = self.dirs.lock().remove(&key);
        if let Some(d) = gone {
            crate::heap::freed(d.footprint());
        }
    }

    /// Makes upper directory `fd` durable now (a copied-up directory, or a
    /// copy-up's entry, outside volatile mode). A failure fails the
    /// copy-up: it is the caller's.
    pub fn sync_dir_now(&self, ov: &Overlay, fd: BorrowedFd<'_>) -> sys::SysResult<()> {
        let d = short_of_descriptors_retry(ov, || {
            ov.stack.proc.reopen(fd, OFlags::RDONLY | OFlags::DIRECTORY)
        })?;
        rustix::fs::fsync(&d)
    }

    /// Volatile mode: checks this mount's dirty files for errors of
    /// background writeback, without starting any (E5).
    pub fn check_background(&self, ov: &Overlay) {
        let files: Vec<Arc<DirtyFile>> = self.files.lock().values().cloned().collect();
        for df in files {
            let held = df.fd.lock().clone();
            let fd = match held {
                Some(fd) => fd,
                // Parked for want of descriptors, perhaps with writeback
                // (or, open for writing through passthrough, writes the
                // daemon never sees) still to come: checked through a new
                // descriptor, which is told an error nobody has seen. One
                // parked after a clean writeback cannot change before an
                // open for writing unparks it.
                None if !df.parked_written_back.load(Ordering::Acquire) => match df.reopen(ov) {
                    Ok(fd) => Arc::new(fd),
                    Err(_) => continue,
                },
                None => continue,
            };
            if let Err(e) = sys::check_writeback(fd.as_fd()) {
                let path = df.current_path(ov);
                self.record(Some(&df.errs), &path, wb_errno(e));
            }
        }
    }

    /// fsync or fsyncdir in volatile mode (E5): nothing reaches the upper
    /// filesystem; the background check runs, and after the mount's first
    /// writeback error every call returns it.
    fn fsync_volatile(&self, ov: &Overlay) -> Result<(), Errno> {
        self.check_background(ov);
        match *self.sticky.lock() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// fsync of the upper object `up` of `node` that this mount did not
    /// dirty (reopened with `flags`), recording an error it meets as
    /// `node`'s. Failing to reopen it (out of descriptors) is not a
    /// writeback error: it is returned.
    fn fsync_upper(
        &self,
        ov: &Overlay,
        node: &Node,
        up: BorrowedFd<'_>,
        flags: OFlags,
    ) -> Result<(), Errno> {
        let fd =
            short_of_descriptors_retry(ov, || ov.stack.proc.reopen(up, flags)).map_err(wb_errno)?;
        if let Err(e) = rustix::fs::fsync(&fd) {
            self.record(
                Some(&self.wb_of(node).errs()),
                &ov.path_of(node),
                wb_errno(e),
            );
        }
        Ok(())
    }

    /// fsync/fdatasync through observer `obs` of `node` (E1; E5 when
    /// volatile).
    pub fn fsync(
        &self,
        ov: &Overlay,
        node: &NodeRef,
        obs: &Observer,
        datasync: bool,
    ) -> Result<(), Errno> {
        if self.mode == Mode::Volatile {
            return self.fsync_volatile(ov);
        }
        if let Some(up) = node.upper_fd().ok().flatten() {
            let df = self.dirty_of(node);
            match df {
                Some(df) => {
                    let epoch = df.epoch.load(Ordering::Acquire);
                    if self.sync_file(ov, &df, datasync)? {
                        self.settle(&df, epoch);
                    }
                }
                None => {
                    // Not dirtied by this mount: make its metadata durable.
                    let flags = if node.is_dir() {
                        OFlags::RDONLY | OFlags::DIRECTORY
                    } else {
                        OFlags::RDONLY
                    };
                    self.fsync_upper(ov, node, up.as_fd(), flags)?;
                }
            }
        }
        self.wb_of(node)
            .errs()
            .check_and_advance(&mut obs.file.lock())
    }

    /// fsync of a directory through observer `obs`: its entries, and the
    /// directory's own errors (E1 for directories).
    pub fn fsyncdir(&self, ov: &Overlay, node: &NodeRef, obs: &Observer) -> Result<(), Errno> {
        if self.mode == Mode::Volatile {
            return self.fsync_volatile(ov);
        }
        if let Some(up) = node.upper_fd().ok().flatten() {
            if let Ok(st) = sys::stat_fd(up.as_fd()) {
                if let Some(d) = self.dir_entry((st.st_dev, st.st_ino), node.upper().as_ref()) {
                    self.sync_dir(ov, &d)?;
                } else {
                    self.fsync_upper(ov, node, up.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)?;
                }
            }
        }
        self.wb_of(node)
            .errs()
            .check_and_advance(&mut obs.file.lock())
    }

    /// fsync of one dirty file; records an error it meets. True when it
    /// succeeded and nothing unseen by rovl could write the file meanwhile
    /// (see [`MountWb::written_unseen`]): then the entry may settle.
    ///
    /// A parked file is reopened for the fsync only. Failing to reopen it
    /// (out of descriptors) is not a writeback error: it is returned.
    fn sync_file(&self, ov: &Overlay, df: &DirtyFile, datasync: bool) -> Result<bool, Errno> {
        let held = df.fd.lock().clone();
        let fd = match held {
            Some(fd) => fd,
            None => match df.reopen(ov) {
                Ok(fd) => Arc::new(fd),
                // Deleted since: nothing of it left to make durable.
                Err(sys::Errno::STALE | sys::Errno::NOENT) => return Ok(true),
                Err(e) => return Err(wb_errno(e)),
            },
        };
        // Before the fsync: a writer unseen then may have written behind
        // it. One that appears later is an open, which changes the epoch.
        let unseen = df.writers.load(Ordering::Acquire) == 0 && self.written_unseen(fd.as_fd());
        let r = if datasync {
            rustix::fs::fdatasync(&*fd)
        } else {
            rustix::fs::fsync(&*fd)
        };
        match r {
            Ok(()) => Ok(!unseen),
            Err(e) => {
                self.record(Some(&df.errs), &df.current_path(ov), wb_errno(e));
                Ok(false)
            }
        }
    }

    /// fsync of one dirty directory; records an error it meets. Failing
    /// to reopen it (out of descriptors) is not a writeback error: it is
    /// returned.
    fn sync_dir(&self, ov: &Overlay, d: &DirtyDir) -> Result<bool, Errno> {
        let epoch = d.epoch.load(Ordering::Acquire);
        let opened = short_of_descriptors_retry(ov, || {
            let o = d.obj.fd()?;
            ov.stack
                .proc
                .reopen(o.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)
        });
        let fsynced = match opened {
            Ok(fd) => rustix::fs::fsync(&fd),
            // Removed since, and its descriptor no longer cached: nothing
            // of it is left to make durable.
            Err(sys::Errno::STALE | sys::Errno::NOENT) => Ok(()),
            Err(e) => return Err(wb_errno(e)),
        };
        match fsynced {
            Ok(()) => {
                let mut dirs = self.dirs.lock();
                let settled = dirs
                    .get(&d.key)
                    .is_some_and(|x| x.epoch.load(Ordering::Acquire) == epoch);
                if settled {
                    dirs.remove(&d.key);
                }
                drop(dirs);
                if settled {
                    crate::heap::freed(d.footprint());
                }
                Ok(true)
            }
            Err(e) => {
                let path = d
                    .node
                    .upgrade()
                    .map(|n| ov.path_of(&n))
                    .unwrap_or_else(|| d.path.clone());
                self.record(Some(&d.errs), &path, wb_errno(e));
                Ok(false)
            }
        }
    }

    /// After a successful fsync that began at `epoch`: a file nobody has
    /// open for writing and that did not change since is durable and
    /// leaves the dirty set. Decided under the map's lock, under which
    /// every change and open for writing is registered ([`DirtyFile::mark`]).
    fn settle(&self, df: &Arc<DirtyFile>, epoch: u64) {
        if self.mode == Mode::Volatile {
            return;
        }
        let mut files = self.files.lock();
        if df.writers.load(Ordering::Acquire) != 0 || df.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let settled = files.get(&df.key).is_some_and(|x| Arc::ptr_eq(x, df));
        if settled {
            files.remove(&df.key);
        }
        drop(files);
        if settled {
            // Not under the map's lock: this may trim the heap.
            crate::heap::freed(df.footprint());
        }
        let node = df.node.lock().upgrade();
        if let Some(wb) = node.and_then(|n| self.nodes.get(n.generation())) {
            let mut s = wb.slots.lock();
            if s.dirty.as_ref().is_some_and(|x| Arc::ptr_eq(x, df)) {
                s.dirty = None;
            }
        }
    }

    /// Whether the upper file `fd` (rovl's read-only descriptor of a file
    /// no open of this mount has for writing) may still be written without
    /// rovl knowing: with passthrough, a shared writable mapping maps the
    /// upper file itself and outlives the file's last close, whose RELEASE
    /// ended rovl's count of writers (tests/FINDINGS.md F29). Such a file
    /// must neither leave the dirty set nor be parked as written back.
    ///
    /// Without passthrough the mapping is of the FUSE file, whose RELEASE
    /// waits for the mapping to go. Where no lease can be taken to probe
    /// with (a filesystem without leases, `fs.leases-enable=0`), every
    /// file counts as possibly written.
    fn written_unseen(&self, fd: BorrowedFd<'_>) -> bool {
        if self.writeback_cache.load(Ordering::Acquire) {
            return false;
        }
        match sys::open_for_writing(fd) {
            Ok(open) => open,
            Err(e) => {
                if !self.no_leases.swap(true, Ordering::AcqRel) {
                    warn!(
                        ?e,
                        "cannot probe upper files with a lease: files written through passthrough stay in the dirty set"
                    );
                }
                true
            }
        }
    }

    /// Flushes the pages the kernel still caches for this mount, so that
    /// they reach the upper files before they are synced. Must not run on
    /// a FUSE request thread (it sends requests to us).
    ///
    /// With the writeback cache, a syncfs(2) of the mount writes the dirty
    /// pages back but, on Linux 6.18, does not wait for FUSE pages already
    /// under writeback: a big write through a file still open is on its
    /// way to rovl in the background, and the sync found it neither in the
    /// upper file nor dirty (tests/FINDINGS.md F30). With passthrough the
    /// kernel caches pages only of opens answered without it (a writer
    /// whose writes must clear setuid bits), stored through a shared
    /// mapping; a sync left them out altogether (F31). Both can only be
    /// pages of files open for writing (a close writes back and waits with
    /// the writeback cache, an munmap without it), so each of those is then
    /// written back and waited for through an open of it on the mount.
    fn flush_kernel_cache(&self, ov: &Overlay) -> Result<(), Errno> {
        let dev = self.mount_dev.load(Ordering::Acquire);
        if dev == 0 {
            return Ok(());
        }
        let fd = rustix::fs::open(
            &self.mountpoint,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            sys::Mode::empty(),
        )
        .map_err(wb_errno)?;
        // Only ever our own mount: a syncfs of what lies under the
        // mountpoint could be the shared upper filesystem (E3, E4).
        if sys::stat_fd(fd.as_fd()).map(|s| s.st_dev).ok() != Some(dev) {
            return Ok(());
        }
        if self.writeback_cache.load(Ordering::Acquire) {
            // An error here is the kernel's record of a failed FUSE_WRITE,
            // already told to the writers' observers by the kernel itself.
            let _ = rustix::fs::syncfs(&fd);
        }
        let writing: Vec<Arc<DirtyFile>> = self
            .files
            .lock()
            .values()
            .filter(|df| df.writers.load(Ordering::Acquire) != 0)
            .cloned()
            .collect();
        for df in writing {
            let Some(node) = df.node.lock().upgrade() else {
                continue;
            };
            let path = ov.path_of(&node);
            let rel = path.strip_prefix("/").unwrap_or(&path);
            // Only that very file of this mount (a rename may have moved
            // it since the path was read; a removed one has nothing left
            // to make durable).
            let Ok(f) = sys::open_beneath(fd.as_fd(), rel, OFlags::RDONLY) else {
                continue;
            };
            match sys::stat_fd(f.as_fd()) {
                Ok(st) if st.st_dev == dev && st.st_ino == node.id() => {}
                _ => continue,
            }
            // An error is the kernel's record of a failed FUSE_WRITE,
            // which it tells the file's writers itself.
            let _ = sys::write_back_and_wait(f.as_fd());
        }
        Ok(())
    }

    /// Writes back everything this mount dirtied and makes it durable; the
    /// result for observer `obs` (E2). Volatile: checks only (E5).
    pub fn sync(&self, ov: &Overlay, obs: Option<&Observer>) -> Result<(), Errno> {
        if self.mode == Mode::Volatile {
            self.check_background(ov);
            if self.sticky.lock().is_some() {
                return Err(Errno::EIO);
            }
            return Ok(());
        }
        let _g = self.sync_lock.lock();
        let start = Instant::now();
        self.flush_kernel_cache(ov)?;
        let files: Vec<Arc<DirtyFile>> = self.files.lock().values().cloned().collect();
        let dirs: Vec<Arc<DirtyDir>> = self.dirs.lock().values().cloned().collect();
        // Start writeback of every file first, so the fsyncs below find the
        // I/O already in flight, then fsync from several threads so the
        // upper filesystem can commit them together.
        for df in &files {
            if let Some(fd) = df.fd.lock().clone() {
                let _ = sys::start_writeback(fd.as_fd());
            }
        }
        let epochs: Vec<u64> = files
            .iter()
            .map(|f| f.epoch.load(Ordering::Acquire))
            .collect();
        let chunk = files.len().div_ceil(SYNC_PARALLELISM).max(1);
        let failed: Mutex<Option<Errno>> = Mutex::new(None);
        std::thread::scope(|s| {
            for (part, ep) in files.chunks(chunk).zip(epochs.chunks(chunk)) {
                let failed = &failed;
                s.spawn(move || {
                    for (df, e) in part.iter().zip(ep) {
                        match self.sync_file(ov, df, false) {
                            Ok(true) => self.settle(df, *e),
                            Ok(false) => {}
                            Err(err) => {
                                failed.lock().get_or_insert(err);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner() {
            // Could not even try (out of descriptors): not a writeback
            // error, but the sync did not make everything durable.
            return Err(e);
        }
        for d in &dirs {
            // As for the files: a directory that could not be reopened
            // fails this sync, without being anybody's writeback error.
            self.sync_dir(ov, d)?;
        }
        let result = match obs {
            Some(o) => self.errs.check_and_advance(&mut o.mount.lock()),
            None => Ok(()),
        };
        *self.last_sync.lock() = Some(SyncRecord {
            time: SystemTime::now(),
            duration: start.elapsed(),
            files: files.len(),
            dirs: dirs.len(),
            result,
        });
        result
    }

    /// One pass of background work: checks files whose writeback finished
    /// and parks them (closing their fd).
    pub fn background_pass(&self, ov: &Overlay) {
        let files: Vec<Arc<DirtyFile>> = self.files.lock().values().cloned().collect();
        for df in &files {
            if df.writers.load(Ordering::Acquire) != 0 {
                continue;
            }
            let fd = df.fd.lock().clone();
            let Some(fd) = fd else { continue };
            // First: with no writer, nothing can dirty it again unseen
            // after the checks below (an open changes the epoch).
            if self.written_unseen(fd.as_fd()) {
                continue;
            }
            let Ok(cs) = sys::cachestat(fd.as_fd()) else {
                continue;
            };
            if cs.dirty != 0 || cs.writeback != 0 {
                continue;
            }
            let epoch = df.epoch.load(Ordering::Acquire);
            match sys::check_writeback(fd.as_fd()) {
                Err(e) => self.record(Some(&df.errs), &df.current_path(ov), wb_errno(e)),
                Ok(()) => {
                    // Written back without error; only a commit of its
                    // metadata may be missing, which the next sync does by
                    // reopening it. Park it: close the fd.
                    // Under the map's lock, like every open for writing
                    // (which unparks): one racing this either comes first
                    // and is seen, or finds the file parked.
                    let _files = self.files.lock();
                    if df.writers.load(Ordering::Acquire) == 0
                        && df.epoch.load(Ordering::Acquire) == epoch
                    {
                        drop(fd);
                        df.park(true);
                    }
                }
            }
        }
    }

    /// Dirty files and bytes (bytes from the page cache of the upper files).
    pub fn dirty_summary(&self, ov: &Overlay) -> Vec<(PathBuf, u64)> {
        let files: Vec<Arc<DirtyFile>> = self.files.lock().values().cloned().collect();
        files
            .iter()
            .map(|df| {
                let bytes = df
                    .fd
                    .lock()
                    .as_ref()
                    .and_then(|fd| sys::cachestat(fd.as_fd()).ok())
                    .map(|c| (c.dirty + c.writeback) * 4096)
                    .unwrap_or(0);
                (df.current_path(ov), bytes)
            })
            .collect()
    }

    /// Errors met since mount (peeked: never hides one from an observer).
    pub fn errors_since_mount(&self) -> Vec<ErrorRecord> {
        if self.errs.check(self.baseline).is_none() {
            return Vec::new();
        }
        self.errors.lock().clone()
    }

    /// Total writeback errors met since mount.
    pub fn error_count(&self) -> u64 {
        self.error_count.load(Ordering::Acquire)
    }

    /// The last sync's record.
    pub fn last_sync(&self) -> Option<SyncRecord> {
        self.last_sync.lock().clone()
    }

    /// Volatile mode's sticky error.
    pub fn sticky(&self) -> Option<Errno> {
        *self.sticky.lock()
    }

    /// Files this (volatile) session dirtied, for the session record.
    pub fn dirtied(&self, ov: &Overlay) -> Vec<session::Dirtied> {
        let files: Vec<Arc<DirtyFile>> = self.files.lock().values().cloned().collect();
        files
            .iter()
            .filter_map(|df| {
                let h = df.handle.as_ref()?;
                Some(session::Dirtied::new(
                    df.current_path(ov).to_string_lossy().into_owned(),
                    h,
                ))
            })
            .collect()
    }

    /// Adopts files a previous clean volatile session left dirty (E6).
    pub fn adopt(&self, ov: &Overlay, files: &[session::Dirtied]) {
        let Some(upper) = ov.stack.upper_root() else {
            return;
        };
        for f in files {
            let Some(h) = f.file_handle() else { continue };
            let Ok(p) = sys::open_by_handle(upper, &h) else {
                continue;
            };
            let Ok(fd) = ov.stack.proc.reopen(p.as_fd(), OFlags::RDONLY) else {
                continue;
            };
            let Ok(st) = sys::stat_fd(fd.as_fd()) else {
                continue;
            };
            let key = (st.st_dev, st.st_ino);
            let df = Arc::new(DirtyFile {
                key,
                errs: Arc::new(ErrSeq::new()),
                fd: Mutex::new(Some(Arc::new(fd))),
                handle: Some(h),
                node: Mutex::new(WeakNode::new()),
                path: Mutex::new(PathBuf::from(&f.path)),
                writers: AtomicUsize::new(0),
                parked_written_back: AtomicBool::new(false),
                epoch: AtomicU64::new(1),
                open_fds: self.open_fds.clone(),
            });
            self.open_fds.fetch_add(1, Ordering::AcqRel);
            self.files.lock().insert(key, df.clone());
            self.now_held(&df);
            self.make_room();
        }
        info!(
            files = files.len(),
            "adopted files of the previous volatile session"
        );
    }

    /// The daemon is unmounting: a final sync (normal mode), then the
    /// result the daemon exits with.
    pub fn unmounting(&self, ov: &Overlay) {
        let result = match self.mode {
            Mode::Normal => {
                let before = self.errs.peek();
                // The mount is gone: the kernel flushed its cache before the
                // connection ended, and the mountpoint is no longer ours.
                self.mount_dev.store(0, Ordering::Release);
                let _ = self.sync(ov, None);
                match self.errs.check(before) {
                    Some(e) => Err(format!(
                        "final sync failed: {} (see the error journal)",
                        e.name()
                    )),
                    None => Ok(()),
                }
            }
            Mode::Volatile => {
                self.check_background(ov);
                match self.sticky() {
                    Some(e) => Err(format!(
                        "{} writeback error(s) during the volatile session, first {} (see the error journal)",
                        self.error_count(),
                        e.name()
                    )),
                    None => Ok(()),
                }
            }
        };
        *self.exit.lock() = Some(result);
    }

    /// The unmount's result, once `unmounting` ran.
    pub fn exit_result(&self) -> Option<Result<(), String>> {
        self.exit.lock().clone()
    }
}

/// Converts between the two errno types of the crate.
pub fn to_sys(e: Errno) -> sys::Errno {
    sys_errno(e)
}
