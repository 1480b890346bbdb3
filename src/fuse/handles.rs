//! Handle tables: open files and directories by FUSE file handle, and the
//! bound on the descriptors the open files hold.
//!
//! Open files past the budget lose their descriptors in least recently
//! used order (a clock with a second chance); the overlay reopens one on
//! its next use. Passthrough opens come first: the kernel reads and writes
//! their backing file without the daemon's descriptor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::{Errno as FErrno, FileHandle};
use parking_lot::Mutex;

use super::DirHandle;
use crate::overlay::node::NodeId;
use crate::overlay::open_file::held_descriptors;
use crate::overlay::{OpenFile, Overlay};

#[derive(Debug, Default)]
struct Files {
    by_fh: HashMap<u64, Arc<OpenFile>>,
    /// Handles in eviction order (released ones are dropped lazily).
    clock: VecDeque<u64>,
    /// Open files per node.
    per_node: HashMap<NodeId, usize>,
    /// Nodes that lost a name while open, and what keeps their file alive
    /// until the last open file is released.
    keep: HashMap<NodeId, Keep>,
}

/// What keeps a file that lost a name while open alive.
#[derive(Debug)]
enum Keep {
    /// Its open files' descriptors, never evicted.
    Descriptors,
    /// A link in the work directory (used under descriptor pressure, so
    /// that its descriptors can still be evicted and reopened by handle).
    Orphan(std::ffi::OsString),
}

/// Handle tables.
#[derive(Debug)]
pub(super) struct Handles {
    files: Mutex<Files>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
    /// Descriptors open files may hold before the least recently used
    /// are closed.
    fd_budget: usize,
}

impl Handles {
    pub fn new(fd_budget: usize) -> Handles {
        Handles {
            files: Mutex::default(),
            dirs: Mutex::default(),
            next: AtomicU64::new(0),
            fd_budget: fd_budget.max(1),
        }
    }

    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_file(&self, f: OpenFile) -> (u64, Arc<OpenFile>) {
        let fh = self.next_fh();
        let f = Arc::new(f);
        let mut t = self.files.lock();
        t.by_fh.insert(fh, f.clone());
        t.clock.push_back(fh);
        *t.per_node.entry(f.node.id()).or_insert(0) += 1;
        (fh, f)
    }

    pub fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, FErrno> {
        self.files
            .lock()
            .by_fh
            .get(&fh.0)
            .cloned()
            .ok_or(FErrno::EBADF)
    }

    pub fn remove_file(&self, ov: &Overlay, fh: FileHandle) -> Option<Arc<OpenFile>> {
        let mut t = self.files.lock();
        let f = t.by_fh.remove(&fh.0)?;
        let node = f.node.id();
        if let Some(n) = t.per_node.get_mut(&node) {
            *n -= 1;
            if *n == 0 {
                t.per_node.remove(&node);
                if let Some(Keep::Orphan(name)) = t.keep.remove(&node) {
                    ov.drop_orphan(&name);
                }
            }
        }
        if t.clock.len() > 2 * t.by_fh.len() + 64 {
            let Files { by_fh, clock, .. } = &mut *t;
            clock.retain(|fh| by_fh.contains_key(fh));
        }
        Some(f)
    }

    pub fn add_dir(&self, d: DirHandle) -> u64 {
        let fh = self.next_fh();
        self.dirs.lock().insert(fh, Arc::new(d));
        fh
    }

    pub fn dir(&self, fh: FileHandle) -> Result<Arc<DirHandle>, FErrno> {
        self.dirs.lock().get(&fh.0).cloned().ok_or(FErrno::EBADF)
    }

    /// Forgets the directory handle `fh` and hands it back.
    pub fn remove_dir(&self, fh: FileHandle) -> Option<Arc<DirHandle>> {
        self.dirs.lock().remove(&fh.0)
    }

    /// Closes the descriptors of the least recently used open files while
    /// more than the budget are held.
    pub fn trim(&self) {
        if held_descriptors() <= self.fd_budget {
            return;
        }
        let mut t = self.files.lock();
        let mut steps = 2 * t.clock.len();
        while steps > 0 && held_descriptors() > self.fd_budget {
            steps -= 1;
            let Some(fh) = t.clock.pop_front() else { break };
            let Some(f) = t.by_fh.get(&fh).cloned() else {
                continue;
            };
            t.clock.push_back(fh);
            let pinned = matches!(t.keep.get(&f.node.id()), Some(Keep::Descriptors));
            if !f.holds_fd() || f.take_used() || pinned {
                continue;
            }
            f.evict();
        }
    }

    /// A name of `node` is about to be removed (unlink, rename over it):
    /// if it is open, its file must outlive the name for as long as it is
    /// open. Its open files keep (or get back) their descriptors; under
    /// descriptor pressure, or when some were already evicted, the file
    /// gets a link in the work directory instead, so that descriptors can
    /// still be closed and reopened by handle.
    pub fn removing(&self, ov: &Overlay, node: NodeId) {
        let mut t = self.files.lock();
        if !t.per_node.contains_key(&node) || t.keep.contains_key(&node) {
            return;
        }
        let evicted = t
            .by_fh
            .values()
            .any(|f| f.node.id() == node && !f.holds_fd());
        if !evicted && held_descriptors() < self.fd_budget {
            t.keep.insert(node, Keep::Descriptors);
            return;
        }
        match ov.orphan(node) {
            Ok(Some(name)) => {
                t.keep.insert(node, Keep::Orphan(name));
            }
            // Only in a lower layer: the file stays where it is.
            Ok(None) => {}
            Err(_) => {
                t.keep.insert(node, Keep::Descriptors);
                for f in t.by_fh.values() {
                    if f.node.id() == node && !f.holds_fd() {
                        // A failure here is what a later read would get
                        // anyway.
                        let _ = ov.file_fd(f);
                    }
                }
            }
        }
    }
}
