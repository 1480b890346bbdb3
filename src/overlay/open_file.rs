//! Open files of the mount and the descriptors they hold.
//!
//! Every open file description of the mount is an [`OpenFile`] holding a
//! descriptor of the real file. Descriptors are a shared, bounded resource
//! of the daemon (its hard limit may be as low as a container's 1024), so
//! the FUSE layer closes the least recently used ones when too many are
//! held ([`OpenFile::evict`]) and [`Overlay::file_fd`] reopens them on
//! demand from the node's object with the same flags: the kernel's open
//! file keeps working, only slower (SPEC §4: degrade, do not fail).
//!
//! A descriptor may be the only thing that keeps an unlinked file alive,
//! so a file whose name is being removed while it is open either keeps its
//! descriptors until it is closed or, under descriptor pressure, gets a
//! link in the work directory ([`Overlay::orphan`]) for that time.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::Overlay;
use super::node::{NodeId, NodeRef};
use crate::sys::{self, Errno, OFlags, SysResult};
use crate::writeback::Observer;

/// Descriptors the open files of this process hold (a process-wide
/// resource, so a process-wide count).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many descriptors open files hold right now.
pub fn held_descriptors() -> usize {
    HELD.load(Ordering::Acquire)
}

/// One open file description of the mount (what the kernel's FUSE file
/// handle stands for).
#[derive(Debug)]
pub struct OpenFile {
    /// The node it was opened on.
    pub node: NodeRef,
    /// The real file, or `None` while evicted.
    fd: RwLock<Option<Arc<OwnedFd>>>,
    /// Flags that reopen an equivalent descriptor (no O_CREAT, O_EXCL or
    /// O_TRUNC).
    reopen: OFlags,
    on_upper: AtomicBool,
    /// Used since the eviction clock last passed.
    used: AtomicBool,
    /// Opened for writing (the node has an upper copy).
    pub writable: bool,
    /// This observer's writeback-error cursors.
    pub observer: Observer,
}

impl OpenFile {
    pub(super) fn new(
        node: NodeRef,
        fd: Arc<OwnedFd>,
        reopen: OFlags,
        on_upper: bool,
        writable: bool,
        observer: Observer,
    ) -> OpenFile {
        HELD.fetch_add(1, Ordering::AcqRel);
        OpenFile {
            node,
            fd: RwLock::new(Some(fd)),
            reopen: reopen & !(OFlags::CREATE | OFlags::EXCL | OFlags::TRUNC),
            on_upper: AtomicBool::new(on_upper),
            used: AtomicBool::new(true),
            writable,
            observer,
        }
    }

    /// True when the real file is the upper copy.
    pub fn on_upper(&self) -> bool {
        self.on_upper.load(Ordering::Acquire)
    }

    /// Points this open at another real file (a reader moving to the upper
    /// copy).
    pub(super) fn replace_fd(&self, fd: OwnedFd, on_upper: bool) {
        let mut g = self.fd.write();
        if g.is_none() {
            HELD.fetch_add(1, Ordering::AcqRel);
        }
        *g = Some(Arc::new(fd));
        self.on_upper.store(on_upper, Ordering::Release);
    }

    /// Whether the descriptor is read-write with no flag that changes how
    /// I/O through it behaves (append, direct, sync): one the kernel can
    /// use as the backing file of every open of the node.
    pub fn plain_read_write(&self) -> bool {
        let shaping =
            OFlags::ACCMODE | OFlags::APPEND | OFlags::DIRECT | OFlags::SYNC | OFlags::DSYNC;
        self.reopen & shaping == OFlags::RDWR
    }

    /// Closes the descriptor unless a request is using it right now; the
    /// next use reopens it. True when it was closed.
    pub fn evict(&self) -> bool {
        let mut g = self.fd.write();
        match &*g {
            Some(fd) if Arc::strong_count(fd) == 1 => {
                *g = None;
                HELD.fetch_sub(1, Ordering::AcqRel);
                true
            }
            _ => false,
        }
    }

    /// True while the descriptor is open.
    pub fn holds_fd(&self) -> bool {
        self.fd.read().is_some()
    }

    /// Whether it was used since the last call (the eviction clock's
    /// second chance); clears the mark.
    pub fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::AcqRel)
    }

    /// Marks it as not needing its descriptor soon (a passthrough open: the
    /// kernel reads and writes the backing file itself).
    pub fn mark_idle(&self) {
        self.used.store(false, Ordering::Release);
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        if self.fd.get_mut().is_some() {
            HELD.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Overlay {
    /// The descriptor of open file `of`, reopened from its node when it was
    /// evicted.
    pub fn file_fd(&self, of: &OpenFile) -> SysResult<Arc<OwnedFd>> {
        of.used.store(true, Ordering::Release);
        if let Some(fd) = &*of.fd.read() {
            return Ok(fd.clone());
        }
        let mut g = of.fd.write();
        if let Some(fd) = &*g {
            return Ok(fd.clone());
        }
        // A reader of a lower file copied up since moves to the upper copy,
        // as `read` would have made it.
        let (src, up) = match of.node.upper_fd()? {
            Some(up) => (up, true),
            None if of.on_upper() => return Err(Errno::STALE),
            None => (of.node.top_fd()?, false),
        };
        let fd = Arc::new(self.stack.proc.reopen(src.as_fd(), of.reopen)?);
        of.on_upper.store(up, Ordering::Release);
        HELD.fetch_add(1, Ordering::AcqRel);
        *g = Some(fd.clone());
        Ok(fd)
    }

    /// Links the upper file of `node`, whose name is about to be removed
    /// while it is open, into the work directory, so that it outlives the
    /// name without a descriptor held. `None` when it has no upper file
    /// (a lower file stays where it is). The next mount cleans up what a
    /// killed daemon left.
    pub fn orphan(&self, node: NodeId) -> SysResult<Option<OsString>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let node = self.node(node)?;
        let (Some(work), Some(up)) = (self.work.as_ref(), node.upper_fd()?) else {
            return Ok(None);
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = OsString::from(format!("orphan-{}-{n}", node.id()));
        sys::link_fd(up.as_fd(), work.as_fd(), &name)?;
        Ok(Some(name))
    }

    /// Removes a link [`Overlay::orphan`] made, once the file is closed.
    pub fn drop_orphan(&self, name: &OsStr) {
        if let Some(work) = &self.work {
            if let Err(e) = rustix::fs::unlinkat(work, name, rustix::fs::AtFlags::empty()) {
                tracing::warn!(?name, %e, "cannot remove an orphan link from the work directory");
            }
        }
    }
}
