//! Many small locks named by a key, without a mutex each: a set of the
//! keys held and a condition variable signalled when one is given up.
//! Meant for locks that are rarely contended (one per node): a node's
//! copy-up lock, and the claim on copying a node's data ahead of it.

use parking_lot::{Condvar, Mutex};

/// The locks, by key.
#[derive(Debug, Default)]
pub struct KeyLocks<K> {
    held: Mutex<Vec<K>>,
    released: Condvar,
}

impl<K: Copy + PartialEq> KeyLocks<K> {
    /// Takes the lock of `key`, waiting while another holder has it.
    pub fn lock(&self, key: K) -> KeyGuard<'_, K> {
        let mut held = self.held.lock();
        while held.contains(&key) {
            self.released.wait(&mut held);
        }
        held.push(key);
        KeyGuard { locks: self, key }
    }

    /// Takes the lock of `key` if nobody holds it.
    pub fn try_lock(&self, key: K) -> Option<KeyGuard<'_, K>> {
        let mut held = self.held.lock();
        if held.contains(&key) {
            return None;
        }
        held.push(key);
        Some(KeyGuard { locks: self, key })
    }

    /// Whether no lock is held.
    pub fn all_free(&self) -> bool {
        self.held.lock().is_empty()
    }
}

/// The lock of one key, held until dropped.
#[must_use]
#[derive(Debug)]
pub struct KeyGuard<'a, K: Copy + PartialEq> {
    locks: &'a KeyLocks<K>,
    key: K,
}

impl<K: Copy + PartialEq> Drop for KeyGuard<'_, K> {
    fn drop(&mut self) {
        self.locks.held.lock().retain(|k| *k != self.key);
        self.locks.released.notify_all();
    }
}
