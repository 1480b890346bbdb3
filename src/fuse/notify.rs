//! Telling the kernel what changed behind its back.
//!
//! Notifications are sent synchronously, before the reply of the request
//! that caused the change, so that the next system call already sees it.
//! That is safe here: invalidating attributes takes only spinlocks in the
//! kernel, and invalidating a directory's cached listing takes only page
//! locks, which no task holds while it waits for rovl.

use fuser::{INodeNo, Notifier};
use tracing::warn;

use crate::overlay::Invalidate;
use crate::overlay::node::NodeId;

/// Sends the overlay's invalidations to the kernel.
#[derive(Debug)]
pub struct Invalidator {
    notifier: Notifier,
}

impl Invalidate for Invalidator {
    fn attributes(&self, ino: NodeId) {
        // Offset -1: attributes only.
        if let Err(e) = self.notifier.inval_inode(INodeNo(ino), -1, 0) {
            warn!(%e, ino, "attribute invalidation failed");
        }
    }

    fn contents(&self, ino: NodeId) {
        // Offset 0, length 0: attributes and all cached pages (for a
        // directory, its cached listing).
        if let Err(e) = self.notifier.inval_inode(INodeNo(ino), 0, 0) {
            warn!(%e, ino, "cache invalidation failed");
        }
    }
}

/// The invalidator over the session's notifier.
pub fn start(notifier: Notifier) -> std::sync::Arc<Invalidator> {
    std::sync::Arc::new(Invalidator { notifier })
}
