//! References to objects in the layers that do not keep them open.
//!
//! The kernel holds a reference to every entry it has seen (a walk of an
//! image hands it tens of thousands), and a process may hold only so many
//! descriptors (the hard limit, often 20k or less, cannot be raised without
//! CAP_SYS_RESOURCE). So a node keeps an [`Obj`]: the object's file handle
//! (`name_to_handle_at`), opened again with `open_by_handle_at` on the
//! layer's filesystem when needed, through a bounded cache of `O_PATH`
//! descriptors shared by the whole mount. A handle names one inode for its
//! whole life (generation included), so what is reopened is always the same
//! object, wherever it was renamed to. An object on a filesystem that cannot
//! produce handles keeps its descriptor (pinned).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use parking_lot::Mutex;

use super::LayerId;
use crate::sys::{self, Errno, FileHandle, SysResult};

/// Longest file handle kept inline (ext4 and xfs make 8 to 16 bytes).
const SMALL_HANDLE: usize = 16;

/// What an object needs beyond an inline handle (rare).
#[derive(Debug)]
enum Extra {
    /// Its filesystem cannot make handles: the descriptor is kept.
    Pinned(Arc<OwnedFd>),
    /// A file handle too long to keep inline.
    LongHandle(FileHandle),
}

/// An object: 40 bytes, as the kernel may hold a node (and so an object)
/// for every entry it has seen. Its key in the descriptor cache is its
/// address (unique while it lives; it forgets its slot when dropped).
#[derive(Debug)]
struct Inner {
    pool: Arc<Objects>,
    extra: Option<Box<Extra>>,
    /// File handle type, and `len` bytes of it in `bytes` (when `extra` has
    /// no long handle).
    kind: i32,
    layer: u16,
    len: u8,
    /// [`DIR`] for a directory, and then whether it holds `.wh.` names
    /// ([`WH_UNKNOWN`], [`WH_NONE`], [`WH_SOME`] in the low bits).
    marks: AtomicU8,
    bytes: [u8; SMALL_HANDLE],
}

impl Inner {
    fn new(pool: &Arc<Objects>, layer: LayerId, extra: Option<Extra>, dir: bool) -> Inner {
        Inner {
            pool: pool.clone(),
            extra: extra.map(Box::new),
            kind: 0,
            layer: u16::try_from(layer).unwrap_or(u16::MAX),
            len: 0,
            marks: AtomicU8::new(if dir { DIR | WH_UNKNOWN } else { WH_UNKNOWN }),
            bytes: [0; SMALL_HANDLE],
        }
    }

    /// An object found again by handle `h`.
    fn with_handle(pool: &Arc<Objects>, layer: LayerId, h: FileHandle, dir: bool) -> Inner {
        if h.bytes.len() > SMALL_HANDLE {
            return Inner::new(pool, layer, Some(Extra::LongHandle(h)), dir);
        }
        let mut inner = Inner::new(pool, layer, None, dir);
        inner.kind = h.kind;
        inner.len = h.bytes.len() as u8;
        inner.bytes[..h.bytes.len()].copy_from_slice(&h.bytes);
        inner
    }

    fn key(&self) -> u64 {
        self as *const Inner as u64
    }

    fn is_dir(&self) -> bool {
        self.marks.load(Ordering::Relaxed) & DIR != 0
    }

    fn pinned(&self) -> Option<&Arc<OwnedFd>> {
        match self.extra.as_deref() {
            Some(Extra::Pinned(fd)) => Some(fd),
            _ => None,
        }
    }

    fn handle(&self) -> Option<FileHandle> {
        self.handle_parts().map(|(kind, bytes)| FileHandle {
            kind,
            bytes: bytes.to_vec(),
        })
    }

    /// The handle's type and bytes, borrowed (`None`: pinned, no handle).
    fn handle_parts(&self) -> Option<(i32, &[u8])> {
        match self.extra.as_deref() {
            Some(Extra::Pinned(_)) => None,
            Some(Extra::LongHandle(h)) => Some((h.kind, &h.bytes)),
            None => Some((self.kind, &self.bytes[..usize::from(self.len)])),
        }
    }
}

/// Not known whether the directory holds `.wh.` names.
const WH_UNKNOWN: u8 = 0;
/// The directory holds no `.wh.` name.
const WH_NONE: u8 = 1;
/// The directory holds `.wh.` names.
const WH_SOME: u8 = 2;
/// The object is a directory (never changes).
const DIR: u8 = 0x80;

impl Drop for Inner {
    fn drop(&mut self) {
        // Before the address can be reused by another object.
        self.pool.forget(self.key(), self.is_dir());
    }
}

/// Longest file handle a node keeps inside itself (ext4 and 32-bit-inode
/// xfs make 8 bytes, 64-bit-inode xfs and tmpfs 12).
const NODE_HANDLE: usize = 12;

/// A handle length from 0 to [`NODE_HANDLE`] (an enum, so that the types
/// holding a [`SmallHandle`] can keep their tags in its other values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Len {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
}

const LENS: [Len; NODE_HANDLE + 1] = [
    Len::L0,
    Len::L1,
    Len::L2,
    Len::L3,
    Len::L4,
    Len::L5,
    Len::L6,
    Len::L7,
    Len::L8,
    Len::L9,
    Len::L10,
    Len::L11,
    Len::L12,
];

/// A lower layer object kept by value inside a node (16 bytes, no
/// allocation): its layer and file handle. Its descriptor is cached under
/// a key the node gives (see [`ObjRef`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallHandle {
    layer: u16,
    kind: u8,
    len: Len,
    bytes: [u8; NODE_HANDLE],
}

impl SmallHandle {
    /// `h` of layer `layer`, when it fits.
    fn of(layer: LayerId, h: &FileHandle) -> Option<SmallHandle> {
        let len = *LENS.get(h.bytes.len())?;
        let kind = u8::try_from(h.kind).ok()?;
        let layer = u16::try_from(layer).ok()?;
        let mut bytes = [0u8; NODE_HANDLE];
        bytes[..h.bytes.len()].copy_from_slice(&h.bytes);
        Some(SmallHandle {
            layer,
            kind,
            len,
            bytes,
        })
    }

    fn handle(&self) -> FileHandle {
        FileHandle {
            kind: i32::from(self.kind),
            bytes: self.bytes[..self.len as usize].to_vec(),
        }
    }

    /// The layer the object is in.
    pub fn layer(&self) -> LayerId {
        LayerId::from(self.layer)
    }
}

/// A non-directory's lower object as a node keeps it: by value when its
/// handle is small, else shared.
#[derive(Debug, Clone)]
pub enum LowerObj {
    /// A small handle (nearly every lower file).
    Small(SmallHandle),
    /// Anything else (a long handle, or a pinned descriptor).
    Shared(Obj),
}

impl LowerObj {
    /// The object's file handle (`None`: pinned, it has none).
    pub fn handle(&self) -> Option<FileHandle> {
        match self {
            LowerObj::Small(h) => Some(h.handle()),
            LowerObj::Shared(o) => o.handle(),
        }
    }

    /// The object, opened through the cache under `key` when small (the
    /// key of the node holding it: see [`small_key`]).
    pub fn to_ref(&self, key: u64) -> ObjRef {
        match self {
            LowerObj::Small(h) => ObjRef::Small { key, h: *h },
            LowerObj::Shared(o) => ObjRef::Shared(o.clone()),
        }
    }
}

/// The descriptor-cache key of the small object of the node with
/// generation `generation` (unique: generations are never reused, and
/// shared objects' keys are addresses, which never have the top bit).
pub fn small_key(generation: u64) -> u64 {
    (1 << 63) | generation
}

/// An object taken out of a node to be used outside its lock.
#[derive(Debug, Clone)]
pub enum ObjRef {
    /// A shared object.
    Shared(Obj),
    /// A node's small object and its cache key.
    Small {
        /// Cache key.
        key: u64,
        /// The handle.
        h: SmallHandle,
    },
}

impl ObjRef {
    /// The layer the object is in.
    pub fn layer(&self) -> LayerId {
        match self {
            ObjRef::Shared(o) => o.layer(),
            ObjRef::Small { h, .. } => h.layer(),
        }
    }

    /// An `O_PATH` descriptor of the object (`pool`: the stack's objects).
    pub fn fd(&self, pool: &Objects) -> SysResult<Arc<OwnedFd>> {
        match self {
            ObjRef::Shared(o) => o.fd(),
            ObjRef::Small { key, h } => pool.open_small(*key, h),
        }
    }
}

/// An object in a layer (cheap to clone).
#[derive(Debug, Clone)]
pub struct Obj(Arc<Inner>);

impl Obj {
    /// The layer the object is in.
    pub fn layer(&self) -> LayerId {
        LayerId::from(self.0.layer)
    }

    /// An `O_PATH` descriptor of the object.
    pub fn fd(&self) -> SysResult<Arc<OwnedFd>> {
        match self.0.pinned() {
            Some(fd) => Ok(fd.clone()),
            None => self.0.pool.open(&self.0),
        }
    }

    /// For a directory: `Some(false)` when it is known to hold no `.wh.`
    /// name (so no `.wh.NAME` whiteout need be looked for in it), `Some(true)`
    /// when it holds some, `None` when not known.
    pub fn has_wh_names(&self) -> Option<bool> {
        match self.0.marks.load(Ordering::Relaxed) & !DIR {
            WH_NONE => Some(false),
            WH_SOME => Some(true),
            _ => None,
        }
    }

    /// Records whether the directory holds `.wh.` names (from a full
    /// listing of it, or because rovl made it empty; rovl never makes a
    /// `.wh.` name itself).
    pub fn set_wh_names(&self, some: bool) {
        let v = if some { WH_SOME } else { WH_NONE };
        let dir = self.0.marks.load(Ordering::Relaxed) & DIR;
        self.0.marks.store(dir | v, Ordering::Relaxed);
    }

    /// True when both refer to the same object reference (not merely the
    /// same inode).
    pub fn same(&self, other: &Obj) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The object's file handle (`None`: pinned, it has none).
    pub fn handle(&self) -> Option<FileHandle> {
        self.0.handle()
    }

    /// Whether `h` names this object: `None` when the object has no handle
    /// (its descriptor is pinned, which keeps the inode, and so its
    /// number, from going to another file).
    pub fn named_by(&self, h: &FileHandle) -> Option<bool> {
        self.0
            .handle_parts()
            .map(|(kind, bytes)| kind == h.kind && bytes == h.bytes.as_slice())
    }

    /// Whether both are the same inode, told apart by handle where an
    /// inode number alone could be an earlier, removed inode's (filesystems
    /// hand freed numbers out again; a handle holds a generation too).
    /// Objects without a handle are taken to be the same: the pinned
    /// descriptor keeps its inode's number from being reused.
    pub fn same_inode(&self, other: &Obj) -> bool {
        if self.same(other) {
            return true;
        }
        match (self.0.handle_parts(), other.0.handle_parts()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

#[derive(Debug)]
struct Slot {
    fd: Arc<OwnedFd>,
    used: AtomicBool,
}

/// A cache: at most `cap` descriptors by object key, evicted in
/// second-chance order.
#[derive(Debug)]
struct Cache {
    slots: HashMap<u64, Slot>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Cache {
    fn new(cap: usize) -> Cache {
        Cache {
            slots: HashMap::default(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn get(&self, key: u64) -> Option<Arc<OwnedFd>> {
        let s = self.slots.get(&key)?;
        s.used.store(true, Ordering::Relaxed);
        Some(s.fd.clone())
    }

    /// Keeps `fd` under `key`, evicting to stay within the capacity.
    fn insert(&mut self, key: u64, fd: Arc<OwnedFd>) {
        if self.slots.contains_key(&key) {
            return;
        }
        let cap = self.cap;
        // Second chance: a slot used since it was last passed over stays.
        let mut budget = self.order.len();
        while self.slots.len() >= cap && budget > 0 {
            budget -= 1;
            let Some(old) = self.order.pop_front() else {
                break;
            };
            let keep = self
                .slots
                .get(&old)
                .is_some_and(|s| s.used.swap(false, Ordering::Relaxed));
            if keep {
                self.order.push_back(old);
            } else {
                self.slots.remove(&old);
            }
        }
        while self.slots.len() >= cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.slots.remove(&old);
        }
        self.slots.insert(
            key,
            Slot {
                fd,
                used: AtomicBool::new(false),
            },
        );
        self.order.push_back(key);
    }

    fn remove(&mut self, key: u64) {
        if self.slots.remove(&key).is_some() {
            // `order` keeps the stale key; it is skipped when it comes up.
            if self.order.len() > 2 * self.slots.len() + 64 {
                let slots = &self.slots;
                let order: VecDeque<u64> = self
                    .order
                    .iter()
                    .copied()
                    .filter(|k| slots.contains_key(k))
                    .collect();
                self.order = order;
            }
        }
    }

    /// Drops the older half.
    fn halve(&mut self) {
        let n = self.slots.len() / 2;
        for _ in 0..n {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.slots.remove(&old);
        }
    }
}

/// The objects of one stack: layer roots (to reopen handles on) and the
/// bounded descriptor caches.
///
/// Directories have a cache of their own: every lookup, create and
/// listing in a directory goes through its descriptor, and a walk of a
/// tree touches twenty-odd files per directory, which would otherwise
/// push the directories out of a shared cache long before they are used
/// again.
#[derive(Debug)]
pub struct Objects {
    roots: Vec<Arc<OwnedFd>>,
    cache: Mutex<Cache>,
    dirs: Mutex<Cache>,
    /// Which layer the lookups in recently listed directories find each
    /// name in (see [`ListingHints`]).
    hints: Mutex<VecDeque<(u64, Arc<ListingHints>)>>,
}

/// How many recently listed directories keep their [`ListingHints`].
const HINTED_DIRS: usize = 8;

/// What the merged listing of a directory (with lower layers) said about
/// each name: the layer its visible object was in. Lower layers never
/// change under a mount, and rovl never makes a hidden lower name visible
/// again, so a lookup in that directory can go straight to that layer, and
/// a name the listing did not show exists in no lower layer (the upper
/// layer is always asked first). Kept for the last few directories listed
/// only, while they are open: a walk lists a directory (READDIRPLUS looks
/// each entry up as it lists it), and once the directory is closed the
/// kernel knows the names it listed.
///
/// Names are kept as 64-bit keyed hashes (SipHash with a random key), not
/// copies: a directory of 20,000 entries costs 320 KB, not 1 MB. Two names
/// of one directory would have to collide (odds about n²/2⁶⁵, and layer
/// content cannot aim at an unknown key) for a lookup to search from the
/// wrong layer.
#[derive(Debug, Default)]
pub struct ListingHints {
    keys: std::hash::RandomState,
    names: HashMap<u64, u16>,
}

impl ListingHints {
    fn key(&self, name: &std::ffi::OsStr) -> u64 {
        use std::hash::BuildHasher;
        use std::os::unix::ffi::OsStrExt;
        self.keys.hash_one(name.as_bytes())
    }

    /// Records that the listing showed `name` from layer `layer`.
    pub fn add(&mut self, name: &std::ffi::OsStr, layer: LayerId) {
        let k = self.key(name);
        let l = u16::try_from(layer).unwrap_or(u16::MAX);
        self.names.insert(k, l);
    }

    /// Frees hints dropped from the cache (when no lookup still holds
    /// them), reporting about how much heap they took to the trimmer.
    fn release(self: Arc<Self>) {
        if let Some(h) = Arc::into_inner(self) {
            // A hashbrown table: key, value and one control byte per bucket.
            let bytes = h.names.capacity() * (std::mem::size_of::<(u64, u16)>() + 1);
            drop(h);
            crate::heap::freed(bytes);
        }
    }

    /// The layer the listing showed `name` from, `None` when it did not
    /// show it.
    pub fn layer_of(&self, name: &std::ffi::OsStr) -> Option<LayerId> {
        self.names.get(&self.key(name)).map(|l| LayerId::from(*l))
    }
}

impl Objects {
    /// Objects over the given layer roots.
    pub fn new(roots: Vec<Arc<OwnedFd>>) -> Arc<Objects> {
        Arc::new(Objects {
            roots,
            cache: Mutex::new(Cache::new(4096)),
            dirs: Mutex::new(Cache::new(4096)),
            hints: Mutex::new(VecDeque::new()),
        })
    }

    /// Keeps the listing hints of the directory whose first layer object
    /// is `dir`.
    pub fn set_hints(&self, dir: &Obj, hints: ListingHints) {
        let old = {
            let mut h = self.hints.lock();
            h.retain(|(k, _)| *k != dir.0.key());
            let old = if h.len() >= HINTED_DIRS {
                h.pop_front()
            } else {
                None
            };
            h.push_back((dir.0.key(), Arc::new(hints)));
            old
        };
        if let Some((_, o)) = old {
            o.release();
        }
    }

    /// Drops the listing hints of the directory whose first layer object
    /// is `dir` (it was closed: the kernel learnt every name the listing
    /// showed from it, through READDIRPLUS, or will look them up rarely).
    pub fn drop_hints(&self, dir: &Obj) {
        let old = {
            let mut h = self.hints.lock();
            match h.iter().position(|(k, _)| *k == dir.0.key()) {
                Some(i) => h.remove(i),
                None => None,
            }
        };
        if let Some((_, o)) = old {
            o.release();
        }
    }

    /// The listing hints of the directory whose first layer object is
    /// `dir`, when it was listed recently.
    pub fn hints(&self, dir: &Obj) -> Option<Arc<ListingHints>> {
        let h = self.hints.lock();
        h.iter()
            .rev()
            .find(|(k, _)| *k == dir.0.key())
            .map(|(_, v)| v.clone())
    }

    /// Sets how many descriptors the caches may hold: `files` for
    /// non-directories, `dirs` for directories.
    pub fn set_capacity(&self, files: usize, dirs: usize) {
        self.cache.lock().cap = files.max(2);
        self.dirs.lock().cap = dirs.max(2);
    }

    /// Descriptors cached right now.
    pub fn cached(&self) -> usize {
        self.cache.lock().slots.len() + self.dirs.lock().slots.len()
    }

    /// Makes an [`Obj`] of the object `fd` (an `O_PATH` descriptor, which
    /// the directory or the other cache, as `dir` says, keeps while it has
    /// room) in layer `layer`.
    pub fn adopt(self: &Arc<Self>, layer: LayerId, fd: OwnedFd, dir: bool) -> Obj {
        match sys::name_to_handle(fd.as_fd()) {
            Ok(h) => {
                let inner = Arc::new(Inner::with_handle(self, layer, h, dir));
                self.insert(inner.key(), Arc::new(fd), dir);
                Obj(inner)
            }
            Err(_) => Obj(Arc::new(Inner::new(
                self,
                layer,
                Some(Extra::Pinned(Arc::new(fd))),
                dir,
            ))),
        }
    }

    /// Makes a non-directory's lower object of `fd` (an `O_PATH`
    /// descriptor) in layer `layer`: small when its handle fits a node,
    /// then with `fd` back for [`Objects::cache_small`] once the node's key
    /// is known.
    pub fn adopt_lower(
        self: &Arc<Self>,
        layer: LayerId,
        fd: OwnedFd,
    ) -> (LowerObj, Option<OwnedFd>) {
        match sys::name_to_handle(fd.as_fd()) {
            Ok(h) => match SmallHandle::of(layer, &h) {
                Some(small) => (LowerObj::Small(small), Some(fd)),
                None => {
                    let inner = Arc::new(Inner::with_handle(self, layer, h, false));
                    self.insert(inner.key(), Arc::new(fd), false);
                    (LowerObj::Shared(Obj(inner)), None)
                }
            },
            Err(_) => (
                LowerObj::Shared(Obj(Arc::new(Inner::new(
                    self,
                    layer,
                    Some(Extra::Pinned(Arc::new(fd))),
                    false,
                )))),
                None,
            ),
        }
    }

    /// Caches `fd` as the descriptor of the small object with key `key`.
    pub fn cache_small(&self, key: u64, fd: OwnedFd) {
        self.insert(key, Arc::new(fd), false);
    }

    /// The descriptor of the small object `h` with key `key`.
    fn open_small(&self, key: u64, h: &SmallHandle) -> SysResult<Arc<OwnedFd>> {
        if let Some(fd) = self.cache.lock().get(key) {
            return Ok(fd);
        }
        let fd = self.open_handle(h.layer(), &h.handle())?;
        self.insert(key, fd.clone(), false);
        Ok(fd)
    }

    /// The node holding the small object with key `key` is gone: its
    /// descriptor goes too.
    pub fn forget_small(&self, key: u64) {
        self.forget(key, false);
    }

    /// Makes an [`Obj`] that keeps `fd` (for layer roots and objects that
    /// must not be reopened).
    pub fn pin(self: &Arc<Self>, layer: LayerId, fd: Arc<OwnedFd>) -> Obj {
        Obj(Arc::new(Inner::new(
            self,
            layer,
            Some(Extra::Pinned(fd)),
            false,
        )))
    }

    fn open(&self, obj: &Inner) -> SysResult<Arc<OwnedFd>> {
        let key = obj.key();
        let dir = obj.is_dir();
        if let Some(fd) = self.cache_of(dir).lock().get(key) {
            return Ok(fd);
        }
        let h = &obj.handle().ok_or(Errno::STALE)?;
        let fd = self.open_handle(usize::from(obj.layer), h)?;
        self.insert(key, fd.clone(), dir);
        Ok(fd)
    }

    fn cache_of(&self, dir: bool) -> &Mutex<Cache> {
        if dir { &self.dirs } else { &self.cache }
    }

    /// Opens handle `h` on layer `layer` (not cached).
    fn open_handle(&self, layer: LayerId, h: &FileHandle) -> SysResult<Arc<OwnedFd>> {
        let root = self.roots.get(layer).ok_or(Errno::STALE)?;
        let fd = match sys::open_by_handle(root.as_fd(), h) {
            Err(Errno::MFILE | Errno::NFILE) => {
                self.shrink();
                sys::open_by_handle(root.as_fd(), h)?
            }
            r => r?,
        };
        Ok(Arc::new(fd))
    }

    fn insert(&self, key: u64, fd: Arc<OwnedFd>, dir: bool) {
        self.cache_of(dir).lock().insert(key, fd);
    }

    fn forget(&self, key: u64, dir: bool) {
        {
            let mut h = self.hints.lock();
            if h.iter().any(|(k, _)| *k == key) {
                h.retain(|(k, _)| *k != key);
            }
        }
        self.cache_of(dir).lock().remove(key);
    }

    /// Out of descriptors: drops half of each cache.
    pub fn shrink(&self) {
        self.cache.lock().halve();
        self.dirs.lock().halve();
    }
}

/// A borrowed view for code that holds the descriptor for a while.
pub fn borrow(fd: &Arc<OwnedFd>) -> BorrowedFd<'_> {
    fd.as_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempdir::Dir, Arc<Objects>) {
        let d = tempdir::Dir::new();
        let root = Arc::new(sys::open_dir_path(&d.0).unwrap());
        (d, Objects::new(vec![root]))
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "rovl-obj-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn small_handles_fit_in_a_node() {
        assert_eq!(std::mem::size_of::<SmallHandle>(), 16);
        assert_eq!(std::mem::size_of::<Option<LowerObj>>(), 16);
    }

    #[test]
    fn objects_stay_small() {
        // One per node the kernel holds: with the Arc's counts, 56 bytes
        // (a 64-byte malloc chunk).
        assert!(std::mem::size_of::<Inner>() <= 40);
    }

    #[test]
    fn objects_reopen_after_eviction_and_follow_renames() {
        let (d, pool) = dir();
        pool.set_capacity(16, 16);
        let mut objs = Vec::new();
        for i in 0..100 {
            let p = d.0.join(format!("f{i}"));
            std::fs::write(&p, format!("{i}")).unwrap();
            let fd =
                rustix::fs::open(&p, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
            objs.push((i, pool.adopt(0, fd, false)));
        }
        assert!(pool.cached() <= 16, "bounded: {}", pool.cached());
        std::fs::rename(d.0.join("f7"), d.0.join("renamed")).unwrap();
        for (i, o) in &objs {
            let fd = o.fd().unwrap();
            let st = sys::stat_fd(fd.as_fd()).unwrap();
            assert_eq!(st.st_size as usize, i.to_string().len());
        }
        let seven = objs[7].1.fd().unwrap();
        let want = std::fs::metadata(d.0.join("renamed")).unwrap();
        assert_eq!(
            sys::stat_fd(seven.as_fd()).unwrap().st_ino,
            std::os::unix::fs::MetadataExt::ino(&want)
        );
        drop(objs);
        assert_eq!(pool.cached(), 0, "dropping objects frees their descriptors");
    }

    #[test]
    fn directories_keep_their_descriptors_through_a_flood_of_files() {
        let (d, pool) = dir();
        pool.set_capacity(16, 32);
        let open = |p: &std::path::Path| {
            rustix::fs::open(p, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap()
        };
        let mut dirs = Vec::new();
        for i in 0..20 {
            let p = d.0.join(format!("d{i}"));
            std::fs::create_dir(&p).unwrap();
            let o = pool.adopt(0, open(&p), true);
            let fd = o.fd().unwrap();
            dirs.push((o, fd));
        }
        let mut files = Vec::new();
        for i in 0..200 {
            let p = d.0.join(format!("f{i}"));
            std::fs::write(&p, b"x").unwrap();
            let o = pool.adopt(0, open(&p), false);
            o.fd().unwrap();
            files.push(o);
        }
        assert_eq!(pool.cached(), 16 + 20, "files bounded, directories kept");
        for (o, fd) in &dirs {
            assert!(Arc::ptr_eq(&o.fd().unwrap(), fd), "not reopened");
        }
        // Directories are bounded too.
        for i in 20..100 {
            let p = d.0.join(format!("d{i}"));
            std::fs::create_dir(&p).unwrap();
            dirs.push((pool.adopt(0, open(&p), true), Arc::new(open(&p))));
        }
        assert_eq!(pool.cached(), 16 + 32);
        drop(files);
        drop(dirs);
        assert_eq!(pool.cached(), 0);
    }
}
