//! How data flows for each open: FUSE passthrough to the real file, or
//! through the daemon and the kernel's page cache.
//!
//! The kernel keeps one io mode per FUSE inode while any file is open on it:
//! either every open is a passthrough open on the same backing file, or none
//! is. rovl therefore decides at the first open of an inode and keeps that
//! mode until the last open is released:
//! - upper files get passthrough with a read-write backing file, so writes
//!   never reach the daemon;
//! - lower files get passthrough with a read-only backing file when large
//!   enough to matter, otherwise cached reads through the daemon. While a
//!   lower backing file is attached, the node is pinned: it is never copied
//!   up in place (a writer sharing the FUSE inode would reach the lower
//!   file through mmap); the name moves to a new node instead (see
//!   `Overlay::copy_up_node`);
//! - an upper file whose read-write backing file could not be opened (a
//!   running executable) gets a read-only one; a writer sharing it is still
//!   a passthrough open of that backing file, as the kernel requires, but
//!   with `DIRECT_IO`: its reads and writes come to the daemon.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackingId, FileAttr, FileHandle, FopenFlags, Generation, ReplyCreate, ReplyOpen};
use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::overlay::node::NodeId;
use crate::overlay::{OpenFile, Overlay};
use crate::sys::OFlags;

/// Lower files smaller than this are read through the daemon (and the
/// kernel's page cache) rather than passed through, so that copying them
/// up while they are open is seamless (the same inode, and readers see
/// the new data). Larger ones are where passthrough pays.
const LOWER_PASSTHROUGH_MIN: u64 = 1 << 20;

/// close(2) needs nothing from rovl (it reports no writeback errors, and
/// the kernel keeps POSIX locks itself), so it should not cost a FLUSH
/// round trip. With the writeback cache the kernel still writes dirty pages
/// back on close.
const NO_FLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// The reply an open is waiting for.
pub(super) enum Reply {
    /// FUSE_OPEN.
    Open(ReplyOpen),
    /// FUSE_CREATE, with the entry to return.
    Create(ReplyCreate, Duration, FileAttr, Generation),
}

impl Reply {
    fn backing(&self, fd: impl AsFd) -> std::io::Result<BackingId> {
        match self {
            Reply::Open(r) => r.open_backing(fd),
            Reply::Create(r, ..) => r.open_backing(fd),
        }
    }

    fn error(self, e: fuser::Errno) {
        match self {
            Reply::Open(r) => r.error(e),
            Reply::Create(r, ..) => r.error(e),
        }
    }

    fn cached(self, fh: u64) {
        let flags = FopenFlags::FOPEN_KEEP_CACHE | NO_FLUSH;
        match self {
            Reply::Open(r) => r.opened(FileHandle(fh), flags),
            Reply::Create(r, ttl, attr, g) => r.created(&ttl, &attr, g, FileHandle(fh), flags),
        }
    }

    fn passthrough(self, fh: u64, flags: FopenFlags, b: &BackingId) {
        let flags = flags | NO_FLUSH;
        match self {
            Reply::Open(r) => r.opened_passthrough(FileHandle(fh), flags, b),
            Reply::Create(r, ttl, attr, g) => {
                r.created_passthrough(&ttl, &attr, g, FileHandle(fh), flags, b)
            }
        }
    }
}

#[derive(Debug)]
enum Mode {
    Cached,
    Passthrough {
        backing: Arc<BackingId>,
        /// The backing file is the upper copy.
        upper: bool,
        /// The backing file is open for writing.
        writable: bool,
    },
}

#[derive(Debug)]
struct NodeIo {
    opens: usize,
    mode: Mode,
}

/// Io modes of the inodes with open files.
#[derive(Debug, Default)]
pub(super) struct IoModes {
    /// Passthrough was negotiated with the kernel.
    pub passthrough: bool,
    nodes: Mutex<HashMap<NodeId, NodeIo>>,
}

impl IoModes {
    /// Replies to an open of `of` (handle `fh`). `via_daemon`: its writes
    /// must reach the daemon (they clear setuid/setgid bits, which only
    /// the daemon can do for them).
    pub fn open(&self, ov: &Overlay, fh: u64, of: &Arc<OpenFile>, via_daemon: bool, reply: Reply) {
        if !self.passthrough {
            reply.cached(fh);
            return;
        }
        let mut nodes = self.nodes.lock();
        if let Some(nio) = nodes.get_mut(&of.node.id()) {
            nio.opens += 1;
            match &nio.mode {
                Mode::Cached => reply.cached(fh),
                Mode::Passthrough {
                    backing,
                    upper,
                    writable,
                } => {
                    if of.on_upper() != *upper {
                        // Cannot happen while pinned nodes are never copied
                        // up in place; never let a write reach a lower file.
                        nio.opens -= 1;
                        reply.error(fuser::Errno::ESTALE);
                        return;
                    }
                    // FOPEN_DIRECT_IO wins over passthrough: reads and
                    // writes of this open come to the daemon.
                    let flags = if of.writable && (!*writable || via_daemon) {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        FopenFlags::empty()
                    };
                    reply.passthrough(fh, flags, backing);
                    if flags.is_empty() {
                        of.mark_idle();
                    }
                }
            }
            return;
        }
        let mode = if via_daemon {
            Mode::Cached
        } else {
            self.first_mode(ov, of, &reply)
        };
        let nio = NodeIo { opens: 1, mode };
        match &nio.mode {
            Mode::Cached => reply.cached(fh),
            Mode::Passthrough { backing, .. } => {
                reply.passthrough(fh, FopenFlags::empty(), backing);
                // The kernel reads and writes the backing file itself.
                of.mark_idle();
            }
        }
        nodes.insert(of.node.id(), nio);
    }

    fn first_mode(&self, ov: &Overlay, of: &OpenFile, reply: &Reply) -> Mode {
        let Ok(fd) = ov.file_fd(of) else {
            return Mode::Cached;
        };
        if of.on_upper() {
            // A read-write backing file serves every later open, readers
            // and writers alike.
            let rw = if of.plain_read_write() {
                Ok(fd.clone())
            } else {
                ov.stack.proc.reopen(fd.as_fd(), OFlags::RDWR).map(Arc::new)
            };
            let (bfd, writable) = match rw {
                Ok(rw) => (rw, true),
                Err(e) => {
                    debug!(?e, "no read-write backing file; passthrough read-only");
                    (fd.clone(), of.writable)
                }
            };
            match reply.backing(bfd.as_fd()) {
                Ok(b) => {
                    return Mode::Passthrough {
                        backing: Arc::new(b),
                        upper: true,
                        writable,
                    };
                }
                Err(e) => warn!(?e, "passthrough refused; serving through the daemon"),
            }
            return Mode::Cached;
        }
        let big = crate::sys::stat_fd(fd.as_fd())
            .map(|s| s.st_size as u64 >= LOWER_PASSTHROUGH_MIN)
            .unwrap_or(false);
        if !big {
            return Mode::Cached;
        }
        // The caller holds the mount's table of io modes: waiting here for
        // a copy-up of a big file would hold up every open and release of
        // the mount until the copy is done. A copy-up under way means this
        // open will read the upper copy anyway.
        let Some(_g) = of.node.try_lock_copy_up() else {
            return Mode::Cached;
        };
        if of.node.upper().is_some() {
            // Copied up since this open began: it reads the upper copy
            // through the daemon.
            return Mode::Cached;
        }
        match reply.backing(fd.as_fd()) {
            Ok(b) => {
                of.node.set_lower_pinned(true);
                Mode::Passthrough {
                    backing: Arc::new(b),
                    upper: false,
                    writable: false,
                }
            }
            Err(e) => {
                warn!(?e, "passthrough refused; serving through the daemon");
                Mode::Cached
            }
        }
    }

    /// An open of `of` (handle `fh`) was released.
    pub fn release(&self, _fh: u64, of: &OpenFile) {
        if !self.passthrough {
            return;
        }
        let mut nodes = self.nodes.lock();
        if let Some(nio) = nodes.get_mut(&of.node.id()) {
            nio.opens = nio.opens.saturating_sub(1);
            if nio.opens == 0 {
                if let Some(NodeIo {
                    mode: Mode::Passthrough { upper: false, .. },
                    ..
                }) = nodes.remove(&of.node.id())
                {
                    let _g = of.node.lock_copy_up();
                    of.node.set_lower_pinned(false);
                }
            }
        }
    }
}
