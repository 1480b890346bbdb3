//! Telling the kernel what changed behind its back, from a thread of its
//! own: a notification sent from a request thread could wait for a lock
//! the kernel holds while it waits for that very request.

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;
use tracing::warn;

use crate::overlay::Invalidate;
use crate::overlay::node::NodeId;

/// Sends the overlay's invalidations to the kernel.
#[derive(Debug)]
pub struct Invalidator {
    tx: Mutex<Sender<NodeId>>,
}

impl Invalidate for Invalidator {
    fn attributes(&self, ino: NodeId) {
        let _ = self.tx.lock().send(ino);
    }
}

/// Starts the notification thread over the session's notifier.
pub fn start(notifier: Notifier) -> Arc<Invalidator> {
    let (tx, rx) = channel::<NodeId>();
    let spawned = std::thread::Builder::new()
        .name("rovl-notify".into())
        .spawn(move || {
            for ino in rx {
                // Offset -1: attributes only, the page cache stays.
                if let Err(e) = notifier.inval_inode(INodeNo(ino), -1, 0) {
                    warn!(%e, ino, "attribute invalidation failed");
                }
            }
        });
    if let Err(e) = spawned {
        warn!(%e, "cannot start the notification thread");
    }
    Arc::new(Invalidator { tx: Mutex::new(tx) })
}
