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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::LayerId;
use crate::sys::{self, Errno, FileHandle, SysResult};

/// Longest file handle kept inline (ext4 and xfs make 8 to 16 bytes).
const SMALL_HANDLE: usize = 20;

/// A short file handle, kept inline (a node per object the kernel holds:
/// no allocation of its own).
#[derive(Debug, Clone, Copy)]
struct SmallHandle {
    kind: i32,
    len: u8,
    bytes: [u8; SMALL_HANDLE],
}

impl SmallHandle {
    fn new(h: &FileHandle) -> Option<SmallHandle> {
        if h.bytes.len() > SMALL_HANDLE {
            return None;
        }
        let mut bytes = [0u8; SMALL_HANDLE];
        bytes[..h.bytes.len()].copy_from_slice(&h.bytes);
        Some(SmallHandle {
            kind: h.kind,
            len: h.bytes.len() as u8,
            bytes,
        })
    }

    fn handle(&self) -> FileHandle {
        FileHandle {
            kind: self.kind,
            bytes: self.bytes[..usize::from(self.len)].to_vec(),
        }
    }
}

/// How an object is found again.
#[derive(Debug)]
enum Locate {
    /// By file handle on its layer's filesystem.
    Handle(SmallHandle),
    /// By a file handle too long to keep inline.
    LongHandle(Box<FileHandle>),
    /// Its filesystem cannot make handles: the descriptor is kept.
    Pinned(Arc<OwnedFd>),
}

impl Locate {
    fn by_handle(h: FileHandle) -> Locate {
        match SmallHandle::new(&h) {
            Some(s) => Locate::Handle(s),
            None => Locate::LongHandle(Box::new(h)),
        }
    }

    fn handle(&self) -> Option<FileHandle> {
        match self {
            Locate::Handle(s) => Some(s.handle()),
            Locate::LongHandle(h) => Some((**h).clone()),
            Locate::Pinned(_) => None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    key: u64,
    locate: Locate,
    pool: Arc<Objects>,
    layer: u32,
    /// For a directory: whether it holds `.wh.` names ([`WH_UNKNOWN`],
    /// [`WH_NONE`], [`WH_SOME`]).
    wh: AtomicU8,
}

/// Not known whether the directory holds `.wh.` names.
const WH_UNKNOWN: u8 = 0;
/// The directory holds no `.wh.` name.
const WH_NONE: u8 = 1;
/// The directory holds `.wh.` names.
const WH_SOME: u8 = 2;

impl Drop for Inner {
    fn drop(&mut self) {
        if !matches!(self.locate, Locate::Pinned(_)) {
            self.pool.forget(self.key);
        }
    }
}

/// An object in a layer (cheap to clone).
#[derive(Debug, Clone)]
pub struct Obj(Arc<Inner>);

impl Obj {
    /// The layer the object is in.
    pub fn layer(&self) -> LayerId {
        self.0.layer as LayerId
    }

    /// An `O_PATH` descriptor of the object.
    pub fn fd(&self) -> SysResult<Arc<OwnedFd>> {
        match &self.0.locate {
            Locate::Pinned(fd) => Ok(fd.clone()),
            _ => self.0.pool.open(self.0.key, self.layer(), &self.0.locate),
        }
    }

    /// For a directory: `Some(false)` when it is known to hold no `.wh.`
    /// name (so no `.wh.NAME` whiteout need be looked for in it), `Some(true)`
    /// when it holds some, `None` when not known.
    pub fn has_wh_names(&self) -> Option<bool> {
        match self.0.wh.load(Ordering::Relaxed) {
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
        self.0.wh.store(v, Ordering::Relaxed);
    }

    /// True when both refer to the same object reference (not merely the
    /// same inode).
    pub fn same(&self, other: &Obj) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Debug)]
struct Slot {
    fd: Arc<OwnedFd>,
    used: AtomicBool,
}

/// The cache: descriptors by object key, evicted in second-chance order.
#[derive(Debug, Default)]
struct Cache {
    slots: HashMap<u64, Slot>,
    order: VecDeque<u64>,
}

/// The objects of one stack: layer roots (to reopen handles on) and the
/// bounded descriptor cache.
#[derive(Debug)]
pub struct Objects {
    roots: Vec<Arc<OwnedFd>>,
    cache: Mutex<Cache>,
    capacity: AtomicUsize,
    next: AtomicU64,
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
/// only: a walk lists a directory, then looks its entries up.
#[derive(Debug, Default)]
pub struct ListingHints {
    names: HashMap<Box<[u8]>, LayerId>,
}

impl ListingHints {
    /// Records that the listing showed `name` from layer `layer`.
    pub fn add(&mut self, name: &std::ffi::OsStr, layer: LayerId) {
        use std::os::unix::ffi::OsStrExt;
        self.names.insert(name.as_bytes().into(), layer);
    }

    /// The layer the listing showed `name` from, `None` when it did not
    /// show it.
    pub fn layer_of(&self, name: &std::ffi::OsStr) -> Option<LayerId> {
        use std::os::unix::ffi::OsStrExt;
        self.names.get(name.as_bytes()).copied()
    }
}

impl Objects {
    /// Objects over the given layer roots.
    pub fn new(roots: Vec<Arc<OwnedFd>>) -> Arc<Objects> {
        Arc::new(Objects {
            roots,
            cache: Mutex::new(Cache::default()),
            capacity: AtomicUsize::new(4096),
            next: AtomicU64::new(1),
            hints: Mutex::new(VecDeque::new()),
        })
    }

    /// Keeps the listing hints of the directory whose first layer object
    /// is `dir`.
    pub fn set_hints(&self, dir: &Obj, hints: ListingHints) {
        let mut h = self.hints.lock();
        h.retain(|(k, _)| *k != dir.0.key);
        if h.len() >= HINTED_DIRS {
            h.pop_front();
        }
        h.push_back((dir.0.key, Arc::new(hints)));
    }

    /// The listing hints of the directory whose first layer object is
    /// `dir`, when it was listed recently.
    pub fn hints(&self, dir: &Obj) -> Option<Arc<ListingHints>> {
        let h = self.hints.lock();
        h.iter()
            .rev()
            .find(|(k, _)| *k == dir.0.key)
            .map(|(_, v)| v.clone())
    }

    /// Sets how many descriptors the cache may hold.
    pub fn set_capacity(&self, n: usize) {
        self.capacity.store(n.max(16), Ordering::Release);
    }

    /// Descriptors cached right now.
    pub fn cached(&self) -> usize {
        self.cache.lock().slots.len()
    }

    /// Makes an [`Obj`] of the object `fd` (an `O_PATH` descriptor, which
    /// the cache keeps while it has room) in layer `layer`.
    pub fn adopt(self: &Arc<Self>, layer: LayerId, fd: OwnedFd) -> Obj {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let locate = match sys::name_to_handle(fd.as_fd()) {
            Ok(h) => {
                self.insert(key, Arc::new(fd));
                Locate::by_handle(h)
            }
            Err(_) => Locate::Pinned(Arc::new(fd)),
        };
        Obj(Arc::new(Inner {
            key,
            layer: layer as u32,
            locate,
            pool: self.clone(),
            wh: AtomicU8::new(WH_UNKNOWN),
        }))
    }

    /// Makes an [`Obj`] that keeps `fd` (for layer roots and objects that
    /// must not be reopened).
    pub fn pin(self: &Arc<Self>, layer: LayerId, fd: Arc<OwnedFd>) -> Obj {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        Obj(Arc::new(Inner {
            key,
            layer: layer as u32,
            locate: Locate::Pinned(fd),
            pool: self.clone(),
            wh: AtomicU8::new(WH_UNKNOWN),
        }))
    }

    fn open(&self, key: u64, layer: LayerId, locate: &Locate) -> SysResult<Arc<OwnedFd>> {
        if let Some(s) = self.cache.lock().slots.get(&key) {
            s.used.store(true, Ordering::Relaxed);
            return Ok(s.fd.clone());
        }
        let h = &locate.handle().ok_or(Errno::STALE)?;
        let root = self.roots.get(layer).ok_or(Errno::STALE)?;
        let fd = match sys::open_by_handle(root.as_fd(), h) {
            Err(Errno::MFILE | Errno::NFILE) => {
                self.shrink();
                sys::open_by_handle(root.as_fd(), h)?
            }
            r => r?,
        };
        let fd = Arc::new(fd);
        self.insert(key, fd.clone());
        Ok(fd)
    }

    fn insert(&self, key: u64, fd: Arc<OwnedFd>) {
        let cap = self.capacity.load(Ordering::Acquire);
        let mut c = self.cache.lock();
        if c.slots.contains_key(&key) {
            return;
        }
        // Second chance: a slot used since it was last passed over stays.
        let mut budget = c.order.len();
        while c.slots.len() >= cap && budget > 0 {
            budget -= 1;
            let Some(old) = c.order.pop_front() else {
                break;
            };
            let keep = c
                .slots
                .get(&old)
                .is_some_and(|s| s.used.swap(false, Ordering::Relaxed));
            if keep {
                c.order.push_back(old);
            } else {
                c.slots.remove(&old);
            }
        }
        while c.slots.len() >= cap {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            c.slots.remove(&old);
        }
        c.slots.insert(
            key,
            Slot {
                fd,
                used: AtomicBool::new(false),
            },
        );
        c.order.push_back(key);
    }

    fn forget(&self, key: u64) {
        let mut c = self.cache.lock();
        if c.slots.remove(&key).is_some() {
            // `order` keeps the stale key; it is skipped when it comes up.
            if c.order.len() > 2 * c.slots.len() + 64 {
                let slots = &c.slots;
                let order: VecDeque<u64> = c
                    .order
                    .iter()
                    .copied()
                    .filter(|k| slots.contains_key(k))
                    .collect();
                c.order = order;
            }
        }
    }

    /// Out of descriptors: drops half of the cache.
    pub fn shrink(&self) {
        let mut c = self.cache.lock();
        let n = c.slots.len() / 2;
        for _ in 0..n {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            c.slots.remove(&old);
        }
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
    fn objects_reopen_after_eviction_and_follow_renames() {
        let (d, pool) = dir();
        pool.set_capacity(16);
        let mut objs = Vec::new();
        for i in 0..100 {
            let p = d.0.join(format!("f{i}"));
            std::fs::write(&p, format!("{i}")).unwrap();
            let fd =
                rustix::fs::open(&p, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
            objs.push((i, pool.adopt(0, fd)));
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
}
