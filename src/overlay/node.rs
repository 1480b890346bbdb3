//! The inode table: one [`Node`] per object the kernel knows, plus the name
//! index the kernel's dentries correspond to.
//!
//! A node's id is both its FUSE node id and the `st_ino` users see (the
//! FUSE library ties the two together). Ids are therefore derived from the
//! layers (see `Overlay::ino_of`) and stable across remounts; the rare
//! object whose id is already taken by a different object (only hostile
//! layers produce that) gets one from a reserved range instead.
//!
//! Memory: the kernel holds a node for every entry it has seen (a walk of
//! an image, tens of thousands), so a node is kept small: one slot of a
//! slab (no allocation of its own) with its name inline (short names),
//! directory layers behind a shared pointer, writeback state only once
//! needed; the tables hold 4-byte slot indices, and the name index stores
//! no copy of the name.

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::keylocks::{KeyGuard, KeyLocks};
use rustc_hash::FxHashMap as HashMap;

use crate::layers::lookup::DirLayers;
use crate::layers::object::{LowerObj, Obj, ObjRef, Objects, small_key};
use crate::sys::FileType;
use crate::writeback::NodeWbs;

/// A FUSE node id, which is also the inode number users see. 1 is the root.
pub type NodeId = u64;

/// The root's node id (fixed by the FUSE protocol).
pub const ROOT_ID: NodeId = 1;

/// More parents than any real tree has (a path holds at most 2,048 names):
/// a walk up the table that goes further has met a loop.
pub const MAX_DEPTH: usize = 4096;

/// First id of the range handed out when an object's natural id is taken.
const FALLBACK_BASE: NodeId = 1 << 63;

/// Where a node's object lives in the layers (16 bytes: every node the
/// kernel holds has one).
#[derive(Debug, Clone)]
pub enum Layers {
    /// A directory: its upper directory and merged lower directories
    /// (shared: lookups in the directory take a reference, not a copy).
    Dir(Arc<DirLayers>),
    /// A non-directory only in a lower layer.
    Lower(LowerObj),
    /// A non-directory only in the upper layer.
    Upper(Obj),
    /// A non-directory with an upper copy and the lower object it shows
    /// (or was copied up from).
    Both(Box<(Obj, LowerObj)>),
    /// A non-directory with no object (a free slot).
    Nothing,
}

impl Layers {
    /// A non-directory's layers.
    pub fn non_dir(upper: Option<Obj>, lower: Option<LowerObj>) -> Layers {
        match (upper, lower) {
            (Some(u), Some(l)) => Layers::Both(Box::new((u, l))),
            (Some(u), None) => Layers::Upper(u),
            (None, Some(l)) => Layers::Lower(l),
            (None, None) => Layers::Nothing,
        }
    }

    /// The upper object, when there is one.
    pub fn upper(&self) -> Option<&Obj> {
        match self {
            Layers::Dir(d) => d.upper.as_ref(),
            Layers::Upper(u) => Some(u),
            Layers::Both(b) => Some(&b.0),
            Layers::Lower(_) | Layers::Nothing => None,
        }
    }

    /// The file handle of the object that defines the node's identity
    /// (the upper one, or else the top lower one), when it has one.
    fn top_handle(&self) -> Option<crate::sys::FileHandle> {
        match self {
            Layers::Dir(d) => match &d.upper {
                Some(u) => u.handle(),
                None => d.lowers.first().and_then(|l| l.obj.handle()),
            },
            Layers::Upper(u) => u.handle(),
            Layers::Both(b) => b.0.handle(),
            Layers::Lower(l) => l.handle(),
            Layers::Nothing => None,
        }
    }

    /// Whether the identity objects of both are the same inode, told apart
    /// by handle: a number alone may be a removed inode's, handed out again
    /// by the upper filesystem. Without handles, they count as the same.
    pub fn same_top_inode(&self, other: &Layers) -> bool {
        match (self.top_handle(), other.top_handle()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// A non-directory's lower object, when it has one.
    pub fn lower(&self) -> Option<&LowerObj> {
        match self {
            Layers::Lower(l) => Some(l),
            Layers::Both(b) => Some(&b.1),
            Layers::Dir(_) | Layers::Upper(_) | Layers::Nothing => None,
        }
    }

    /// Records the upper copy of the object.
    pub fn set_upper(&mut self, obj: Obj) {
        let lower = match std::mem::replace(self, Layers::Nothing) {
            Layers::Dir(mut d) => {
                Arc::make_mut(&mut d).upper = Some(obj);
                *self = Layers::Dir(d);
                return;
            }
            Layers::Lower(l) => Some(l),
            Layers::Both(b) => Some(b.1),
            Layers::Upper(_) | Layers::Nothing => None,
        };
        *self = Layers::non_dir(Some(obj), lower);
    }

    /// The object whose data and attributes the merged view shows (`key`:
    /// the holding node's [`Node::small_key`]).
    pub fn top(&self, key: u64) -> Option<ObjRef> {
        match self {
            Layers::Dir(d) => d
                .upper
                .as_ref()
                .or_else(|| d.lowers.first().map(|l| &l.obj))
                .cloned()
                .map(ObjRef::Shared),
            Layers::Upper(u) => Some(ObjRef::Shared(u.clone())),
            Layers::Both(b) => Some(ObjRef::Shared(b.0.clone())),
            Layers::Lower(l) => Some(l.to_ref(key)),
            Layers::Nothing => None,
        }
    }

    /// True when a small lower object is kept by value (its descriptor is
    /// cached under the node's key).
    fn has_small(&self) -> bool {
        matches!(self.lower(), Some(LowerObj::Small(_)))
    }

    /// True when the object has a lower-layer part (a merged or lower
    /// directory, or a file copied up from or still in a lower layer).
    pub fn has_lowers(&self) -> bool {
        match self {
            Layers::Dir(d) => !d.lowers.is_empty(),
            _ => self.lower().is_some(),
        }
    }
}

/// Longest name kept inside the node itself.
const INLINE_NAME: usize = 22;

/// A node's name: short names (nearly all) inline, longer ones on the
/// heap. Dereferences to `OsStr`.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeName {
    /// Up to `INLINE_NAME` (22) bytes.
    Inline {
        /// Length.
        len: u8,
        /// Bytes (the first `len`).
        bytes: [u8; INLINE_NAME],
    },
    /// Anything longer.
    Heap(Box<[u8]>),
}

impl NodeName {
    /// The name as an `OsStr`.
    pub fn as_os_str(&self) -> &OsStr {
        match self {
            NodeName::Inline { len, bytes } => OsStr::from_bytes(&bytes[..usize::from(*len)]),
            NodeName::Heap(b) => OsStr::from_bytes(b),
        }
    }

    /// An owned copy.
    pub fn to_os_string(&self) -> OsString {
        self.as_os_str().to_owned()
    }
}

impl From<&OsStr> for NodeName {
    fn from(s: &OsStr) -> NodeName {
        let b = s.as_bytes();
        if b.len() <= INLINE_NAME {
            let mut bytes = [0u8; INLINE_NAME];
            bytes[..b.len()].copy_from_slice(b);
            NodeName::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            NodeName::Heap(b.into())
        }
    }
}

impl From<OsString> for NodeName {
    fn from(s: OsString) -> NodeName {
        NodeName::from(s.as_os_str())
    }
}

impl std::ops::Deref for NodeName {
    type Target = OsStr;
    fn deref(&self) -> &OsStr {
        self.as_os_str()
    }
}

impl AsRef<OsStr> for NodeName {
    fn as_ref(&self) -> &OsStr {
        self.as_os_str()
    }
}

impl PartialEq<OsStr> for NodeName {
    fn eq(&self, other: &OsStr) -> bool {
        self.as_os_str() == other
    }
}

impl PartialEq<&OsStr> for NodeName {
    fn eq(&self, other: &&OsStr) -> bool {
        self.as_os_str() == *other
    }
}

impl std::fmt::Debug for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_os_str().fmt(f)
    }
}

/// Bits of [`NodeState`]'s `bits` below the split mark.
const OPAQUE: u32 = 1;
const UNLINKED: u32 = 2;
const IMPURE: u32 = 4;
const FLAG_BITS: u32 = 3;
/// The split mark: ticks of 8 ms, 29 bits (wraps after 49.7 days, as a
/// 32-bit count of milliseconds would).
const TICK_MS: u64 = 8;
const TICKS: u32 = u32::MAX >> FLAG_BITS;

/// Ticks since the first call (a compact monotonic time for rare per-node
/// marks; never 0).
fn now_ticks() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    let t = (start.elapsed().as_millis() as u64 / TICK_MS) as u32 & TICKS;
    t.max(1)
}

/// A device number in 32 bits: the kernel's dev_t is 32 bits (12 major,
/// 20 minor), whatever the width of st_dev, so this loses nothing.
fn dev32(dev: u64) -> u32 {
    u32::try_from(dev).unwrap_or(u32::MAX)
}

/// Mutable state of a node (64 bytes: every node the kernel holds has
/// one).
#[derive(Debug)]
pub struct NodeState {
    /// Parent of the name this node was last known by.
    pub parent: NodeId,
    /// st_ino of the object that defines this node's identity (see
    /// [`NodeState::ident`]).
    ident_ino: u64,
    /// That name. Empty for the root.
    pub name: NodeName,
    /// Where the object lives.
    pub layers: Layers,
    /// st_dev of the identity object (Linux device numbers are 32 bits).
    ident_dev: u32,
    /// `OPAQUE`, `UNLINKED`, `IMPURE`, and above them the split mark: when
    /// (in ticks, see `now_ticks`; 0: never) a hard-linked lower file
    /// asked to be copied up through one of its names; the kernel is
    /// retrying with a fresh lookup, and the name it looks up gets its own
    /// copy (see `Overlay::lookup`).
    bits: u32,
}

impl NodeState {
    /// About how much heap this state holds beyond the node's slot (for
    /// [`crate::heap::freed`]): a long name, the layer objects.
    fn footprint(&self) -> usize {
        let name = match &self.name {
            NodeName::Heap(b) => b.len(),
            NodeName::Inline { .. } => 0,
        };
        name + 64
    }

    /// A state with no split pending.
    pub fn new(
        parent: NodeId,
        name: &OsStr,
        layers: Layers,
        ident: (u64, u64),
        opaque: bool,
    ) -> NodeState {
        let mut st = NodeState {
            parent,
            ident_ino: 0,
            name: NodeName::from(name),
            layers,
            ident_dev: 0,
            bits: 0,
        };
        st.set_ident(ident);
        st.set_opaque(opaque);
        st
    }

    /// The state of a free slot (holds nothing).
    fn vacant() -> NodeState {
        NodeState {
            parent: 0,
            ident_ino: 0,
            name: NodeName::from(OsStr::new("")),
            layers: Layers::Nothing,
            ident_dev: 0,
            bits: UNLINKED,
        }
    }

    /// (st_dev, st_ino) of the object that defines this node's identity:
    /// the upper object, or else the top lower one.
    pub fn ident(&self) -> (u64, u64) {
        (u64::from(self.ident_dev), self.ident_ino)
    }

    /// Sets the identity object's (st_dev, st_ino).
    pub fn set_ident(&mut self, (dev, ino): (u64, u64)) {
        self.ident_dev = dev32(dev);
        self.ident_ino = ino;
    }

    /// True when `ident` is this node's identity object.
    pub fn same_ident(&self, (dev, ino): (u64, u64)) -> bool {
        self.ident_dev == dev32(dev) && self.ident_ino == ino
    }

    /// Whether this node stands for the object with identity `ident` and
    /// layers `layers`: `None` when the identity differs, `Some(false)`
    /// when the node is a removed object's that only shares the number
    /// (the upper filesystem handed it out again: the handles differ),
    /// `Some(true)` when it is the same object. The handles decide also
    /// for a node that still has a name: a node whose object was removed
    /// through another of its names keeps the one it had, and taking it
    /// for a new object with its number gave that object the removed
    /// one's layers (a directory looked up as the removed regular file,
    /// ESTALE, and left out of listings). A nameless node whose handle is
    /// the object's stands for it: the object has a name the table did not
    /// know (an upper hard link made before this mount, a lower hard
    /// link).
    pub fn stands_for(&self, ident: (u64, u64), layers: &Layers) -> Option<bool> {
        if !self.same_ident(ident) {
            return None;
        }
        Some(self.layers.same_top_inode(layers))
    }

    fn flag(&self, f: u32) -> bool {
        self.bits & f != 0
    }

    fn set_flag(&mut self, f: u32, on: bool) {
        if on {
            self.bits |= f;
        } else {
            self.bits &= !f;
        }
    }

    /// The upper directory carries an opaque marker.
    pub fn opaque(&self) -> bool {
        self.flag(OPAQUE)
    }

    /// Records whether the upper directory carries an opaque marker.
    pub fn set_opaque(&mut self, on: bool) {
        self.set_flag(OPAQUE, on);
    }

    /// No name leads to this node any more (unlinked or replaced); it lives
    /// on for the files still open on it.
    pub fn unlinked(&self) -> bool {
        self.flag(UNLINKED)
    }

    /// Records whether a name still leads to this node.
    pub fn set_unlinked(&mut self, on: bool) {
        self.set_flag(UNLINKED, on);
    }

    /// The upper directory is marked impure (holds copied-up entries).
    pub fn impure(&self) -> bool {
        self.flag(IMPURE)
    }

    /// Records that the upper directory is marked impure.
    pub fn set_impure(&mut self, on: bool) {
        self.set_flag(IMPURE, on);
    }

    fn split_mark(&self) -> u32 {
        self.bits >> FLAG_BITS
    }

    fn set_split_mark(&mut self, t: u32) {
        self.bits = (self.bits & ((1 << FLAG_BITS) - 1)) | ((t & TICKS) << FLAG_BITS);
    }

    /// Marks a split pending from now on.
    pub fn mark_split(&mut self) {
        self.set_split_mark(now_ticks());
    }

    /// Clears a pending split.
    pub fn clear_split(&mut self) {
        self.set_split_mark(0);
    }

    /// How long ago a split was marked, if one is pending.
    pub fn split_age(&self) -> Option<std::time::Duration> {
        let mark = self.split_mark();
        if mark == 0 {
            return None;
        }
        let ticks = now_ticks().wrapping_sub(mark) & TICKS;
        Some(std::time::Duration::from_millis(u64::from(ticks) * TICK_MS))
    }
}

/// One object of the merged view the kernel holds a reference to: a slot
/// of the node slab, reached through [`NodeRef`]s. A slot is reused for
/// another node once no reference to it is left, so what identifies the
/// node (id, generation, type) is set when the slot is taken.
#[derive(Debug)]
pub struct Node {
    /// Two counts in one word, so that a node is 96 bytes: in the low
    /// half the references ([`NodeRef`]s and the table's) to this slot's
    /// node; in the high half the kernel's lookup count, changed only
    /// under the table's lock, which keeps what exceeds 32 bits aside
    /// (`NodeTable::spilled`).
    counts: AtomicU64,
    /// FUSE node id and inode number.
    id: AtomicU64,
    /// From bit 8 up, the FUSE generation: distinguishes objects that
    /// reuse an id over time (unique to each node of the slab, so it also
    /// tells the nodes a slot held apart; 56 bits last 2,000 years at a
    /// million new nodes a second). Bits 0–3: the file type (`S_IFMT` >>
    /// 12), fixed for the node. Bit 4: [`PINNED`].
    ident: AtomicU64,
    /// Everything that changes.
    pub state: RwLock<NodeState>,
}

/// The references half of [`Node::counts`].
const REFS: u64 = u32::MAX as u64;
/// The file type bits of [`Node::ident`].
const KIND: u64 = 0xf;
/// In [`Node::ident`]: the kernel reads this node's lower file directly
/// (FUSE passthrough) for some open file. Its FUSE inode is then tied to
/// that lower file, so the node must never be copied up in place: a
/// writer sharing the inode would reach the lower file through mmap. Set
/// and cleared under the node's copy-up lock ([`NodeRef::lock_copy_up`]).
const PINNED: u64 = 1 << 4;
/// Where the generation starts in [`Node::ident`].
const GENERATION_SHIFT: u32 = 8;

impl Node {
    fn vacant() -> Node {
        Node {
            counts: AtomicU64::new(0),
            id: AtomicU64::new(0),
            ident: AtomicU64::new(0),
            state: RwLock::new(NodeState::vacant()),
        }
    }

    /// FUSE node id and inode number.
    pub fn id(&self) -> NodeId {
        self.id.load(Ordering::Relaxed)
    }

    /// FUSE generation.
    pub fn generation(&self) -> u64 {
        self.ident.load(Ordering::Relaxed) >> GENERATION_SHIFT
    }

    /// File type (never changes for a node).
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(((self.ident.load(Ordering::Relaxed) & KIND) as u32) << 12)
    }

    /// True while passthrough readers hold this node's lower file (the
    /// `PINNED` bit of its identity word).
    pub fn lower_pinned(&self) -> bool {
        self.ident.load(Ordering::Acquire) & PINNED != 0
    }

    /// Marks or unmarks the lower file as held by passthrough readers;
    /// the caller holds the node's copy-up lock.
    pub fn set_lower_pinned(&self, pinned: bool) {
        if pinned {
            self.ident.fetch_or(PINNED, Ordering::Release);
        } else {
            self.ident.fetch_and(!PINNED, Ordering::Release);
        }
    }

    /// The kernel's lookup count as far as the node keeps it (the table
    /// keeps any excess over `u32::MAX`).
    fn lookups32(&self) -> u32 {
        (self.counts.load(Ordering::Acquire) >> 32) as u32
    }

    /// Sets the node's part of the kernel's lookup count. Only the table
    /// (under its lock) and the making of the root call this.
    pub fn set_lookups(&self, n: u32) {
        let _ = self
            .counts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some((c & REFS) | (u64::from(n) << 32))
            });
    }

    /// The inode number users see.
    pub fn ino(&self) -> u64 {
        self.id()
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.kind() == FileType::Directory
    }

    /// The upper object, when there is one.
    pub fn upper(&self) -> Option<Obj> {
        self.state.read().layers.upper().cloned()
    }

    /// True when the node has an upper copy.
    pub fn has_upper(&self) -> bool {
        self.state.read().layers.upper().is_some()
    }

    /// An `O_PATH` descriptor of the upper object, when there is one.
    pub fn upper_fd(&self) -> crate::sys::SysResult<Option<Arc<OwnedFd>>> {
        self.upper().map(|o| o.fd()).transpose()
    }

    /// The descriptor-cache key of this node's small lower object.
    pub fn small_key(&self) -> u64 {
        small_key(self.generation())
    }

    /// The directory layers (for directories): a shared reference.
    pub fn dir_layers(&self) -> Option<Arc<DirLayers>> {
        match &self.state.read().layers {
            Layers::Dir(d) => Some(d.clone()),
            _ => None,
        }
    }
}

/// Slots per chunk of the slab (a power of two).
const CHUNK_BITS: u32 = 9;
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: u32 = (1 << CHUNK_BITS) - 1;

/// A fixed block of slots. Chunks are never moved or freed while the slab
/// lives, so a reference holds its chunk and an index, with no lock.
#[derive(Debug)]
pub struct Chunk {
    slots: Box<[Node]>,
    slab: Weak<SlabShared>,
    /// The objects of the stack (descriptors of small lower objects).
    pool: Option<Arc<Objects>>,
    /// The mount's per-node writeback state.
    wbs: Option<Arc<NodeWbs>>,
    /// Each node's copy-up lock, by slot, kept here rather than in every
    /// node.
    copying: KeyLocks<u32>,
}

impl Chunk {
    fn slot(&self, idx: u32) -> &Node {
        &self.slots[(idx & CHUNK_MASK) as usize]
    }

    /// The last reference to slot `idx` went away: empty it (dropping what
    /// the node held, so its descriptors close now) and make it free.
    fn release(&self, idx: u32) {
        let n = self.slot(idx);
        let old = std::mem::replace(&mut *n.state.write(), NodeState::vacant());
        if old.layers.has_small() {
            if let Some(p) = &self.pool {
                p.forget_small(n.small_key());
            }
        }
        if let Some(w) = &self.wbs {
            w.remove(n.generation());
        }
        // No reference is left, so no one else changes the counts: clear
        // the lookups the table may have left.
        n.counts.store(0, Ordering::Relaxed);
        crate::heap::freed(old.footprint());
        drop(old);
        if let Some(s) = self.slab.upgrade() {
            s.inner.lock().free.push(idx);
        }
    }
}

#[derive(Debug, Default)]
struct SlabInner {
    chunks: Vec<Arc<Chunk>>,
    /// Free slots below `used`.
    free: Vec<u32>,
    /// Slots ever handed out (the first free index never used).
    used: u32,
}

#[derive(Debug)]
struct SlabShared {
    inner: Mutex<SlabInner>,
    next_generation: AtomicU64,
    pool: Option<Arc<Objects>>,
    wbs: Option<Arc<NodeWbs>>,
}

/// Where nodes live: slots in fixed chunks, each node one slot of the
/// node's own size (no allocation per node, and 4-byte indices in the
/// table instead of pointers). Cheap to clone (a shared handle).
#[derive(Debug, Clone)]
pub struct Slab(Arc<SlabShared>);

impl Slab {
    /// An empty slab for nodes of objects of `pool`, whose writeback
    /// state `wbs` keeps (a freed node's entry is dropped there).
    pub fn new(pool: Option<Arc<Objects>>, wbs: Option<Arc<NodeWbs>>) -> Slab {
        Slab(Arc::new(SlabShared {
            inner: Mutex::new(SlabInner::default()),
            next_generation: AtomicU64::new(1),
            pool,
            wbs,
        }))
    }

    /// A fresh generation number (never 0).
    pub fn next_generation(&self) -> u64 {
        self.0.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// A new node with a fresh generation, referenced once (by the
    /// returned reference).
    pub fn alloc(&self, id: NodeId, kind: FileType, state: NodeState) -> NodeRef {
        let generation = self.next_generation();
        self.alloc_with(id, generation, kind, state)
    }

    /// [`Slab::alloc`] with a given generation (the root's is 0).
    pub fn alloc_with(
        &self,
        id: NodeId,
        generation: u64,
        kind: FileType,
        state: NodeState,
    ) -> NodeRef {
        let (chunk, idx) = {
            let mut inner = self.0.inner.lock();
            let idx = match inner.free.pop() {
                Some(i) => i,
                None => {
                    let i = inner.used;
                    if (i >> CHUNK_BITS) as usize >= inner.chunks.len() {
                        let slots: Box<[Node]> = (0..CHUNK).map(|_| Node::vacant()).collect();
                        inner.chunks.push(Arc::new(Chunk {
                            slots,
                            slab: Arc::downgrade(&self.0),
                            pool: self.0.pool.clone(),
                            wbs: self.0.wbs.clone(),
                            copying: KeyLocks::default(),
                        }));
                    }
                    // Indices are u32: 4 billion live nodes is beyond any
                    // kernel's inode cache.
                    inner.used = i.checked_add(1).unwrap_or_else(|| std::process::abort());
                    i
                }
            };
            (inner.chunks[(idx >> CHUNK_BITS) as usize].clone(), idx)
        };
        let n = chunk.slot(idx);
        n.id.store(id, Ordering::Relaxed);
        let k = u64::from(kind.as_raw_mode() >> 12) & KIND;
        n.ident
            .store((generation << GENERATION_SHIFT) | k, Ordering::Relaxed);
        *n.state.write() = state;
        // One reference, no lookups yet.
        n.counts.store(1, Ordering::Release);
        NodeRef { chunk, idx }
    }

    /// Every chunk (a snapshot).
    fn chunks(&self) -> Vec<Arc<Chunk>> {
        self.0.inner.lock().chunks.clone()
    }
}

/// A counted reference to a node (what `Arc<Node>` was): the node stays in
/// its slot while one exists.
pub struct NodeRef {
    chunk: Arc<Chunk>,
    idx: u32,
}

impl NodeRef {
    fn slot(&self) -> &Node {
        self.chunk.slot(self.idx)
    }

    /// True when both refer to the same node.
    pub fn ptr_eq(a: &NodeRef, b: &NodeRef) -> bool {
        a.idx == b.idx && Arc::ptr_eq(&a.chunk, &b.chunk)
    }

    /// The object the merged view shows, to be opened outside the lock.
    pub fn top(&self) -> Option<ObjRef> {
        self.state.read().layers.top(self.small_key())
    }

    /// An `O_PATH` descriptor of `obj`, an object of this node.
    pub fn open(&self, obj: &ObjRef) -> crate::sys::SysResult<Arc<OwnedFd>> {
        match (obj, &self.chunk.pool) {
            (ObjRef::Shared(o), _) => o.fd(),
            (ObjRef::Small { .. }, Some(p)) => obj.fd(p),
            (ObjRef::Small { .. }, None) => Err(crate::sys::Errno::STALE),
        }
    }

    /// An `O_PATH` descriptor of the object the merged view shows.
    pub fn top_fd(&self) -> crate::sys::SysResult<Arc<OwnedFd>> {
        let top = self.top().ok_or(crate::sys::Errno::STALE)?;
        self.open(&top)
    }

    /// Takes this node's copy-up lock, which serializes copying the node
    /// up with pinning its lower file for passthrough readers.
    pub fn lock_copy_up(&self) -> CopyUpGuard<'_> {
        CopyUpGuard {
            _held: self.chunk.copying.lock(self.idx),
        }
    }

    /// Takes this node's copy-up lock if nobody holds it (a copy-up of
    /// the node may be under way otherwise).
    pub fn try_lock_copy_up(&self) -> Option<CopyUpGuard<'_>> {
        self.chunk
            .copying
            .try_lock(self.idx)
            .map(|held| CopyUpGuard { _held: held })
    }

    /// A reference that does not keep the node alive.
    pub fn downgrade(&self) -> WeakNode {
        WeakNode {
            chunk: Arc::downgrade(&self.chunk),
            idx: self.idx,
            generation: self.generation(),
        }
    }
}

/// A node's copy-up lock, held (see [`NodeRef::lock_copy_up`]).
#[must_use]
pub struct CopyUpGuard<'a> {
    _held: KeyGuard<'a, u32>,
}

fn count_ref(n: &Node) {
    // As `Arc`: far more references than could ever exist is a leak loop
    // (and here it would run into the lookup count).
    if n.counts.fetch_add(1, Ordering::Relaxed) & REFS > REFS / 2 {
        std::process::abort();
    }
}

impl Clone for NodeRef {
    fn clone(&self) -> Self {
        count_ref(self.slot());
        NodeRef {
            chunk: self.chunk.clone(),
            idx: self.idx,
        }
    }
}

impl Drop for NodeRef {
    fn drop(&mut self) {
        if self.slot().counts.fetch_sub(1, Ordering::Release) & REFS != 1 {
            return;
        }
        std::sync::atomic::fence(Ordering::Acquire);
        self.chunk.release(self.idx);
    }
}

impl std::ops::Deref for NodeRef {
    type Target = Node;
    fn deref(&self) -> &Node {
        self.slot()
    }
}

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRef")
            .field("id", &self.id())
            .field("generation", &self.generation())
            .finish()
    }
}

/// A reference to a node that does not keep it (what `Weak<Node>` was).
#[derive(Debug, Clone, Default)]
pub struct WeakNode {
    chunk: Weak<Chunk>,
    idx: u32,
    generation: u64,
}

impl WeakNode {
    /// A reference to nothing.
    pub fn new() -> WeakNode {
        WeakNode::default()
    }

    /// The node, while it lives.
    pub fn upgrade(&self) -> Option<NodeRef> {
        let chunk = self.chunk.upgrade()?;
        let n = chunk.slot(self.idx);
        let mut c = n.counts.load(Ordering::Relaxed);
        loop {
            if c & REFS == 0 {
                return None;
            }
            match n
                .counts
                .compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(x) => c = x,
            }
        }
        let r = NodeRef {
            chunk,
            idx: self.idx,
        };
        // The slot may hold another node by now (generations are unique).
        (r.generation() == self.generation).then_some(r)
    }
}

/// The table's view of the slab: slot indices to nodes.
#[derive(Debug)]
struct Slots {
    slab: Slab,
    chunks: Vec<Arc<Chunk>>,
}

impl Slots {
    fn at(&self, idx: u32) -> &Node {
        self.chunks[(idx >> CHUNK_BITS) as usize].slot(idx)
    }

    /// Counts a reference the table keeps to `r`'s node; returns its index.
    fn hold(&mut self, r: &NodeRef) -> u32 {
        let c = (r.idx >> CHUNK_BITS) as usize;
        if c >= self.chunks.len() {
            self.chunks = self.slab.chunks();
        }
        debug_assert!(
            Arc::ptr_eq(&self.chunks[c], &r.chunk),
            "node of another slab"
        );
        count_ref(r);
        r.idx
    }

    /// A new reference to the node at `idx` (which the table holds).
    fn share(&self, idx: u32) -> NodeRef {
        count_ref(self.at(idx));
        self.take(idx)
    }

    /// The table's own reference to the node at `idx`, handed over.
    fn take(&self, idx: u32) -> NodeRef {
        NodeRef {
            chunk: self.chunks[(idx >> CHUNK_BITS) as usize].clone(),
            idx,
        }
    }
}

fn id_hash(id: NodeId) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(id)
}

/// One name of the index: the slot of the node it leads to, and a hash of
/// `(parent, name)` (the name itself is the node's, or one of its aliases).
/// Each entry holds a reference to its node.
#[derive(Debug, Clone, Copy)]
struct NameRef {
    hash: u32,
    slot: u32,
}

/// The 32 bits of a name's hash kept in the index.
fn name_hash(parent: NodeId, name: &OsStr) -> u32 {
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write_u64(parent);
    h.write(name.as_bytes());
    (h.finish() >> 32) as u32
}

/// The table hash of a kept name hash (spreads it over 64 bits: the
/// table takes its buckets from the low bits, its tags from the top).
fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// True when the node at `slot` is reachable as `parent/name`.
fn has_name(
    slots: &Slots,
    aliases: &HashMap<NodeId, Vec<(NodeId, OsString)>>,
    slot: u32,
    parent: NodeId,
    name: &OsStr,
) -> bool {
    let n = slots.at(slot);
    {
        let st = n.state.read();
        if st.parent == parent && st.name == name {
            return true;
        }
    }
    aliases
        .get(&n.id())
        .is_some_and(|v| v.iter().any(|(p, n)| *p == parent && n == name))
}

/// The table of nodes and the names that lead to them.
#[derive(Debug)]
pub struct NodeTable {
    slots: Slots,
    /// Slots of the nodes by id; each entry holds a reference.
    nodes: HashTable<u32>,
    names: HashTable<NameRef>,
    /// Further names of nodes with several links.
    aliases: HashMap<NodeId, Vec<(NodeId, OsString)>>,
    /// By slot: what a node's kernel lookup count holds beyond the
    /// `u32::MAX` the node itself keeps (the kernel counts in 64 bits, and
    /// a name listed nonstop can pass 2^32 lookups in days).
    spilled: HashMap<u32, u64>,
    next_fallback: NodeId,
}

impl NodeTable {
    /// An empty table of nodes of `slab`.
    pub fn new(slab: Slab) -> Self {
        NodeTable {
            slots: Slots {
                slab,
                chunks: Vec::new(),
            },
            nodes: HashTable::new(),
            names: HashTable::new(),
            aliases: HashMap::default(),
            spilled: HashMap::default(),
            next_fallback: FALLBACK_BASE,
        }
    }

    /// The slot of node `id` in the table.
    fn slot_of(&self, id: NodeId) -> Option<u32> {
        let slots = &self.slots;
        self.nodes
            .find(id_hash(id), |&s| slots.at(s).id() == id)
            .copied()
    }

    /// Enters `node` under its id, replacing the node that had it.
    fn nodes_insert(&mut self, node: &NodeRef) -> Option<NodeRef> {
        let id = node.id();
        let idx = self.slots.hold(node);
        let slots = &self.slots;
        let old = match self
            .nodes
            .find_mut(id_hash(id), |&s| slots.at(s).id() == id)
        {
            Some(s) => Some(std::mem::replace(s, idx)),
            None => {
                self.nodes
                    .insert_unique(id_hash(id), idx, |&s| id_hash(slots.at(s).id()));
                None
            }
        };
        old.map(|s| {
            self.spilled.remove(&s);
            self.slots.take(s)
        })
    }

    /// Takes node `id` out of the table; returns the table's reference.
    fn nodes_remove(&mut self, id: NodeId) -> Option<NodeRef> {
        let slots = &self.slots;
        let e = self
            .nodes
            .find_entry(id_hash(id), |&s| slots.at(s).id() == id)
            .ok()?;
        let s = e.remove().0;
        self.spilled.remove(&s);
        Some(self.slots.take(s))
    }

    /// The kernel's lookup count of the node at `slot`.
    fn lookups(&self, slot: u32) -> u64 {
        u64::from(self.slots.at(slot).lookups32()) + self.spilled.get(&slot).copied().unwrap_or(0)
    }

    /// Sets the kernel's lookup count of the node at `slot`.
    fn set_lookups(&mut self, slot: u32, n: u64) {
        let kept = u32::try_from(n).unwrap_or(u32::MAX);
        self.slots.at(slot).set_lookups(kept);
        if n > u64::from(kept) {
            self.spilled.insert(slot, n - u64::from(kept));
        } else {
            self.spilled.remove(&slot);
        }
    }

    /// The slot the name `parent/name` leads to in the index.
    fn name_get(&self, parent: NodeId, name: &OsStr) -> Option<u32> {
        let hash = name_hash(parent, name);
        let (slots, aliases) = (&self.slots, &self.aliases);
        self.names
            .find(spread(hash), |r| {
                r.hash == hash && has_name(slots, aliases, r.slot, parent, name)
            })
            .map(|r| r.slot)
    }

    /// Removes `parent/name` from the index (it must still be one of the
    /// node's names, as the node's state or aliases say); returns the
    /// entry's reference to its node.
    fn name_remove(&mut self, parent: NodeId, name: &OsStr) -> Option<NodeRef> {
        let hash = name_hash(parent, name);
        let (slots, aliases) = (&self.slots, &self.aliases);
        let e = self
            .names
            .find_entry(spread(hash), |r| {
                r.hash == hash && has_name(slots, aliases, r.slot, parent, name)
            })
            .ok()?;
        let s = e.remove().0.slot;
        Some(self.slots.take(s))
    }

    /// Removes `parent/name` from the index if it leads to node `id`.
    fn name_remove_if(&mut self, parent: NodeId, name: &OsStr, id: NodeId) {
        if self
            .name_get(parent, name)
            .is_some_and(|s| self.slots.at(s).id() == id)
        {
            self.name_remove(parent, name);
        }
    }

    /// Makes `parent/name` lead to `node` (which must have that name by
    /// the time the index is next asked), replacing what it led to.
    fn name_set(&mut self, parent: NodeId, name: &OsStr, node: &NodeRef) {
        let hash = name_hash(parent, name);
        let idx = self.slots.hold(node);
        let (slots, aliases) = (&self.slots, &self.aliases);
        let old = match self.names.find_mut(spread(hash), |r| {
            r.hash == hash && has_name(slots, aliases, r.slot, parent, name)
        }) {
            Some(r) => Some(std::mem::replace(&mut r.slot, idx)),
            None => {
                self.names
                    .insert_unique(spread(hash), NameRef { hash, slot: idx }, |r| {
                        spread(r.hash)
                    });
                None
            }
        };
        drop(old.map(|s| self.slots.take(s)));
    }

    /// A fresh generation number.
    pub fn next_generation(&mut self) -> u64 {
        self.slots.slab.next_generation()
    }

    /// The id for an object whose natural id is `want`, whose identity is
    /// `ident` and whose layers are `layers`: `Ok(node)` when the table
    /// already holds that very object, `Err(id)` with an id free for a new
    /// node otherwise (see [`NodeState::stands_for`]; a nameless node
    /// taken this way gets the name).
    pub fn claim(
        &mut self,
        want: NodeId,
        ident: (u64, u64),
        layers: &Layers,
    ) -> Result<NodeRef, NodeId> {
        let same = |n: &NodeRef| n.state.read().stands_for(ident, layers) == Some(true);
        match self.get(want) {
            None if want != 0 && want < FALLBACK_BASE => Err(want),
            Some(n) if same(&n) => Ok(n),
            _ => {
                while self.slot_of(self.next_fallback).is_some() {
                    self.next_fallback += 1;
                }
                let id = self.next_fallback;
                self.next_fallback += 1;
                Err(id)
            }
        }
    }

    /// Whether id `want` is held by the node of a removed object with the
    /// identity `ident` but another inode: the upper filesystem gave the
    /// removed object's inode number to a new one before the kernel forgot
    /// the old node.
    pub fn held_by_removed(&self, want: NodeId, ident: (u64, u64), layers: &Layers) -> bool {
        self.get(want)
            .is_some_and(|n| n.state.read().stands_for(ident, layers) == Some(false))
    }

    /// The node with id `id`.
    pub fn get(&self, id: NodeId) -> Option<NodeRef> {
        self.slot_of(id).map(|s| self.slots.share(s))
    }

    /// The node the name `parent/name` leads to, when known.
    pub fn child(&self, parent: NodeId, name: &OsStr) -> Option<NodeRef> {
        self.name_get(parent, name).map(|s| self.slots.share(s))
    }

    /// Inserts a new node reachable as `parent/name` (its state's name).
    pub fn insert(&mut self, node: &NodeRef, parent: NodeId, name: &OsStr) {
        let old = self.nodes_insert(node);
        if !name.is_empty() {
            self.name_set(parent, name, node);
        }
        drop(old);
    }

    /// Whether directory `dir` is `id` or above it: the walk from `id` up
    /// its parents meets `dir`. A chain longer than any real tree counts
    /// as meeting it. The caller must not hold the state lock of a node on
    /// that chain.
    fn is_at_or_above(&self, dir: NodeId, mut id: NodeId) -> bool {
        for _ in 0..MAX_DEPTH {
            if id == dir {
                return true;
            }
            if id == ROOT_ID {
                return false;
            }
            let Some(n) = self.get(id) else {
                return false;
            };
            let st = n.state.read();
            if st.unlinked() {
                return false;
            }
            id = st.parent;
        }
        true
    }

    /// Adds `parent/name` as another name of `node`.
    ///
    /// Only layers changed under the mount give a directory a second
    /// name (an object found where another node already stands for it).
    /// A name inside the directory itself is refused, as the kernel
    /// refuses the dentry (ELOOP): a node must never become its own
    /// ancestor.
    pub fn add_alias(&mut self, node: &NodeRef, parent: NodeId, name: &OsStr) {
        let id = node.id();
        if node.is_dir() && self.is_at_or_above(id, parent) {
            return;
        }
        // Whatever the name led to before, it leads to `node` now; first
        // make it one of `node`'s names so that the index can find it.
        let other = self
            .name_get(parent, name)
            .is_some_and(|s| self.slots.at(s).id() != id);
        if other {
            self.name_remove(parent, name);
        }
        {
            let mut st = node.state.write();
            if st.unlinked() {
                st.parent = parent;
                st.name = NodeName::from(name);
                st.set_unlinked(false);
            } else if !(st.parent == parent && st.name == name) {
                let v = self.aliases.entry(id).or_default();
                if !v.iter().any(|(p, n)| *p == parent && n == name) {
                    v.push((parent, name.to_owned()));
                }
            }
        }
        let leads_here = self
            .name_get(parent, name)
            .is_some_and(|s| self.slots.at(s).id() == id);
        if !leads_here {
            self.name_set(parent, name, node);
        }
    }

    /// All names the kernel may know `node` by.
    pub fn names_of(&self, node: &Node) -> Vec<(NodeId, OsString)> {
        let st = node.state.read();
        let mut v = Vec::new();
        if !st.unlinked() {
            v.push((st.parent, st.name.to_os_string()));
        }
        if let Some(a) = self.aliases.get(&node.id()) {
            v.extend(a.iter().cloned());
        }
        v
    }

    /// Forgets the name `parent/name`; the node it led to moves to another
    /// of its names, or is marked unlinked when it has none left.
    pub fn remove_name(&mut self, parent: NodeId, name: &OsStr) {
        let Some(node) = self.name_remove(parent, name) else {
            return;
        };
        let id = node.id();
        let primary = {
            let st = node.state.read();
            st.parent == parent && st.name == name
        };
        // A directory's other names (layers changed under the mount) may
        // have come to lie inside it since: those are dropped, not made
        // its place.
        let mut next = None;
        while primary && next.is_none() {
            match self.aliases.get_mut(&id).and_then(|v| v.pop()) {
                Some((p, n)) if node.is_dir() && self.is_at_or_above(id, p) => {
                    if self.child(p, &n).is_some_and(|c| c.id() == id) {
                        self.name_remove(p, &n);
                    }
                }
                Some(a) => next = Some(a),
                None => break,
            }
        }
        let mut st = node.state.write();
        if primary {
            match next {
                Some((p, n)) => {
                    st.parent = p;
                    st.name = NodeName::from(n);
                }
                None => st.set_unlinked(true),
            }
        } else if let Some(v) = self.aliases.get_mut(&id) {
            v.retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// Moves the name `old_parent/old_name` to `new_parent/new_name` (the
    /// target name must have been removed first).
    pub fn move_name(
        &mut self,
        old_parent: NodeId,
        old_name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
    ) {
        let Some(node) = self.name_remove(old_parent, old_name) else {
            return;
        };
        let id = node.id();
        {
            let mut st = node.state.write();
            if st.parent == old_parent && st.name == old_name {
                st.parent = new_parent;
                st.name = NodeName::from(new_name);
                st.set_unlinked(false);
            } else if let Some(v) = self.aliases.get_mut(&id) {
                for a in v.iter_mut() {
                    if a.0 == old_parent && a.1 == old_name {
                        *a = (new_parent, new_name.to_owned());
                    }
                }
            }
        }
        self.name_set(new_parent, new_name, &node);
    }

    /// Counts one kernel reference to `node`, reached as `parent/name`,
    /// atomically with forgets: a node that a racing FORGET removed between
    /// its lookup and now is entered again (or, should its id have been
    /// taken meanwhile, the node now holding it is used). Returns the node
    /// the reference was counted on.
    pub fn take_ref(&mut self, node: &NodeRef, parent: NodeId, name: &OsStr) -> NodeRef {
        let n = match self.get(node.id()) {
            Some(n) => n,
            None => {
                let old = self.nodes_insert(node);
                debug_assert!(old.is_none());
                if !name.is_empty() && self.name_get(parent, name).is_none() {
                    let has = {
                        let st = node.state.read();
                        st.parent == parent && st.name == name
                    } || self
                        .aliases
                        .get(&node.id())
                        .is_some_and(|v| v.iter().any(|(p, n)| *p == parent && n == name));
                    if has {
                        self.name_set(parent, name, node);
                    }
                }
                node.clone()
            }
        };
        let slot = n.idx;
        let count = self.lookups(slot);
        self.set_lookups(slot, count.saturating_add(1));
        n
    }

    /// Drops `n` kernel references to node `id`; removes the node when none
    /// remain. Returns the table's reference to the removed node.
    pub fn forget(&mut self, id: NodeId, n: u64) -> Option<NodeRef> {
        if id == ROOT_ID {
            return None;
        }
        let slot = self.slot_of(id)?;
        let prev = self.lookups(slot);
        self.set_lookups(slot, prev.saturating_sub(n));
        if prev > n {
            return None;
        }
        let node = self.slots.at(slot);
        let (parent, name) = {
            let st = node.state.read();
            (st.parent, st.name.clone())
        };
        // The index finds names through the node: drop them while it is
        // still in the table.
        self.name_remove_if(parent, &name, id);
        if let Some(v) = self.aliases.get(&id).cloned() {
            for (p, nm) in v {
                self.name_remove_if(p, &nm, id);
            }
        }
        self.aliases.remove(&id);
        self.nodes_remove(id)
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when only the root (or nothing) is left.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Every live node.
    pub fn all(&self) -> Vec<NodeRef> {
        self.nodes.iter().map(|&s| self.slots.share(s)).collect()
    }
}

impl Drop for NodeTable {
    fn drop(&mut self) {
        // Give back the references the entries hold, so that the nodes
        // (and the descriptors their objects keep) go with the table.
        let names: Vec<u32> = self.names.drain().map(|r| r.slot).collect();
        let nodes: Vec<u32> = self.nodes.drain().collect();
        for s in names.into_iter().chain(nodes) {
            drop(self.slots.take(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_states_stay_small() {
        assert_eq!(std::mem::size_of::<Layers>(), 16);
        assert_eq!(std::mem::size_of::<NodeState>(), 64);
    }

    #[test]
    fn nodes_stay_small() {
        // The kernel holds one per entry it has seen.
        assert!(
            std::mem::size_of::<Node>() <= 96,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn lookup_counts_past_32_bits_are_kept_and_leave_references_alone() {
        let slab = Slab::new(None, None);
        let mut t = NodeTable::new(slab.clone());
        let a = mk(&slab, 10, ROOT_ID, "a");
        t.insert(&a, ROOT_ID, OsStr::new("a"));
        let refs = a.counts.load(Ordering::Relaxed) & REFS;
        a.set_lookups(u32::MAX - 1);
        for _ in 0..3 {
            drop(t.take_ref(&a, ROOT_ID, OsStr::new("a")));
        }
        let slot = a.idx;
        assert_eq!(t.lookups(slot), u64::from(u32::MAX) + 2);
        assert_eq!(a.lookups32(), u32::MAX);
        assert_eq!(t.spilled.get(&slot), Some(&2));
        assert_eq!(a.counts.load(Ordering::Relaxed) & REFS, refs);
        // Forgetting all but one keeps the node; the excess is gone.
        assert!(t.forget(10, u64::from(u32::MAX) + 1).is_none());
        assert_eq!(t.lookups(slot), 1);
        assert!(t.spilled.is_empty());
        assert_eq!(t.child(ROOT_ID, OsStr::new("a")).map(|n| n.id()), Some(10));
        // A count past 32 bits forgotten at once removes the node.
        a.set_lookups(u32::MAX);
        drop(t.take_ref(&a, ROOT_ID, OsStr::new("a")));
        assert_eq!(t.spilled.len(), 1);
        assert!(t.forget(10, u64::from(u32::MAX) + 1).is_some());
        assert!(t.spilled.is_empty());
        assert!(t.child(ROOT_ID, OsStr::new("a")).is_none());
        assert_eq!(a.counts.load(Ordering::Relaxed) & REFS, 1);
    }

    #[test]
    fn type_generation_and_pin_share_a_word_without_mixing() {
        let slab = Slab::new(None, None);
        let a = slab.alloc(
            10,
            FileType::Directory,
            NodeState::new(ROOT_ID, OsStr::new("d"), Layers::Nothing, (1, 10), false),
        );
        let g = a.generation();
        assert!(!a.lower_pinned());
        a.set_lower_pinned(true);
        assert!(a.lower_pinned());
        assert_eq!((a.generation(), a.kind()), (g, FileType::Directory));
        a.set_lower_pinned(false);
        assert!(!a.lower_pinned());
        assert_eq!((a.generation(), a.kind()), (g, FileType::Directory));
        // A reused slot starts unpinned.
        a.set_lower_pinned(true);
        let idx = a.idx;
        drop(a);
        let b = mk(&slab, 11, ROOT_ID, "b");
        assert_eq!(b.idx, idx);
        assert!(!b.lower_pinned());
        assert_eq!(b.kind(), FileType::RegularFile);
    }

    #[test]
    fn copy_up_locks_exclude_per_node_only() {
        use std::sync::atomic::AtomicBool;
        let slab = Slab::new(None, None);
        let a = mk(&slab, 10, ROOT_ID, "a");
        let b = mk(&slab, 11, ROOT_ID, "b");
        let held = a.lock_copy_up();
        // Another node of the same chunk is not held up.
        drop(b.lock_copy_up());
        let entered = Arc::new(AtomicBool::new(false));
        let a2 = a.clone();
        let e2 = entered.clone();
        let th = std::thread::spawn(move || {
            let _g = a2.lock_copy_up();
            e2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "the lock excludes");
        drop(held);
        th.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
        assert!(a.chunk.copying.all_free());
    }

    fn mk(slab: &Slab, id: NodeId, parent: NodeId, name: &str) -> NodeRef {
        slab.alloc(
            id,
            FileType::RegularFile,
            NodeState::new(parent, OsStr::new(name), Layers::Nothing, (1, id), false),
        )
    }

    fn mkdir(slab: &Slab, t: &mut NodeTable, id: NodeId, parent: NodeId, name: &str) -> NodeRef {
        let d = slab.alloc(
            id,
            FileType::Directory,
            NodeState::new(parent, OsStr::new(name), Layers::Nothing, (1, id), false),
        );
        t.insert(&d, parent, OsStr::new(name));
        d
    }

    /// The chain of parents from `id` up to the root, or `None` if it
    /// does not reach the root.
    fn chain(t: &NodeTable, mut id: NodeId) -> Option<Vec<NodeId>> {
        let mut v = vec![id];
        while id != ROOT_ID {
            id = t.get(id)?.state.read().parent;
            if v.contains(&id) {
                return None;
            }
            v.push(id);
        }
        Some(v)
    }

    /// Layers changed under the mount can show a directory's object inside
    /// the directory itself (moved there in a lower layer while the kernel
    /// still had the old place): that name is refused, and a second name
    /// that came to lie inside the directory later is dropped, not made
    /// its place, so no node ever becomes its own ancestor.
    #[test]
    fn a_directory_never_becomes_its_own_ancestor() {
        let slab = Slab::new(None, None);
        let mut t = NodeTable::new(slab.clone());
        let a = mkdir(&slab, &mut t, 10, ROOT_ID, "a");
        let x = mkdir(&slab, &mut t, 11, 10, "x");
        t.add_alias(&a, 11, OsStr::new("a2"));
        assert!(t.child(11, OsStr::new("a2")).is_none());
        assert_eq!(t.names_of(&a), vec![(ROOT_ID, OsString::from("a"))]);
        t.add_alias(&a, 10, OsStr::new("self"));
        assert!(t.child(10, OsStr::new("self")).is_none());
        // A second name elsewhere is kept and takes over when the first
        // goes.
        let y = mkdir(&slab, &mut t, 12, ROOT_ID, "y");
        t.add_alias(&a, 12, OsStr::new("a3"));
        assert_eq!(t.child(12, OsStr::new("a3")).map(|n| n.id()), Some(10));
        // ... unless it has come to lie inside the directory since.
        t.move_name(ROOT_ID, OsStr::new("y"), 11, OsStr::new("y"));
        assert_eq!(chain(&t, 12), Some(vec![12, 11, 10, ROOT_ID]));
        t.remove_name(ROOT_ID, OsStr::new("a"));
        assert!(a.state.read().unlinked());
        assert!(t.child(12, OsStr::new("a3")).is_none());
        for n in [&x, &y] {
            assert!(chain(&t, n.id()).is_some() || n.state.read().unlinked());
        }
        // A file has no inside: any second name is kept.
        let f = mk(&slab, 20, 11, "f");
        t.insert(&f, 11, OsStr::new("f"));
        t.add_alias(&f, 11, OsStr::new("g"));
        assert_eq!(t.child(11, OsStr::new("g")).map(|n| n.id()), Some(20));
    }

    #[test]
    fn names_index_follows_renames_and_aliases() {
        let slab = Slab::new(None, None);
        let mut t = NodeTable::new(slab.clone());
        let a = mk(&slab, 10, ROOT_ID, "a");
        t.insert(&a, ROOT_ID, OsStr::new("a"));
        assert_eq!(t.child(ROOT_ID, OsStr::new("a")).map(|n| n.id()), Some(10));
        t.add_alias(&a, 5, OsStr::new("b"));
        assert_eq!(t.child(5, OsStr::new("b")).map(|n| n.id()), Some(10));
        t.move_name(ROOT_ID, OsStr::new("a"), 5, OsStr::new("c"));
        assert!(t.child(ROOT_ID, OsStr::new("a")).is_none());
        assert_eq!(t.child(5, OsStr::new("c")).map(|n| n.id()), Some(10));
        t.remove_name(5, OsStr::new("c"));
        assert!(t.child(5, OsStr::new("c")).is_none());
        assert_eq!(t.child(5, OsStr::new("b")).map(|n| n.id()), Some(10));
        assert_eq!(a.state.read().name.as_os_str(), OsStr::new("b"));
        let long = "x".repeat(200);
        let l = mk(&slab, 11, 5, &long);
        t.insert(&l, 5, OsStr::new(&long));
        assert_eq!(t.child(5, OsStr::new(&long)).map(|n| n.id()), Some(11));
        a.set_lookups(1);
        assert!(t.forget(10, 1).is_some());
        assert!(t.child(5, OsStr::new("b")).is_none());
        for i in 0..5000u64 {
            let n = mk(&slab, 100 + i, 7, &format!("n{i}"));
            t.insert(&n, 7, OsStr::new(&format!("n{i}")));
        }
        for i in 0..5000u64 {
            assert_eq!(
                t.child(7, OsStr::new(&format!("n{i}"))).map(|n| n.id()),
                Some(100 + i)
            );
        }
    }

    #[test]
    fn a_freed_node_takes_its_writeback_state_with_it() {
        let wbs = Arc::new(NodeWbs::default());
        let slab = Slab::new(None, Some(wbs.clone()));
        let a = mk(&slab, 10, ROOT_ID, "a");
        let b = mk(&slab, 11, ROOT_ID, "b");
        let errs = wbs.get_or_make(a.generation()).errs();
        wbs.get_or_make(b.generation());
        assert_eq!(wbs.len(), 2);
        let weak = a.downgrade();
        let again = weak.upgrade().unwrap();
        drop(a);
        assert_eq!(wbs.len(), 2, "a node still referenced keeps its state");
        assert!(Arc::ptr_eq(
            &wbs.get_or_make(again.generation()).errs(),
            &errs
        ));
        drop(again);
        assert_eq!(wbs.len(), 1);
        // The slot is reused by a new node, which starts with no state.
        let c = mk(&slab, 12, ROOT_ID, "c");
        assert!(wbs.get(c.generation()).is_none());
        drop(b);
        assert!(wbs.is_empty());
    }

    #[test]
    fn slots_are_reused_only_once_unreferenced() {
        let slab = Slab::new(None, None);
        let mut t = NodeTable::new(slab.clone());
        let a = mk(&slab, 10, ROOT_ID, "a");
        let weak = a.downgrade();
        t.insert(&a, ROOT_ID, OsStr::new("a"));
        a.set_lookups(1);
        let removed = t.forget(10, 1);
        assert!(removed.is_some());
        drop(removed);
        // `a` still holds the node: the slot stays, the weak reference too.
        assert_eq!(weak.upgrade().map(|n| n.id()), Some(10));
        let gen_a = a.generation();
        drop(a);
        assert!(weak.upgrade().is_none());
        // The freed slot serves the next node, which the old weak
        // reference does not reach.
        let b = mk(&slab, 20, ROOT_ID, "b");
        assert_ne!(b.generation(), gen_a);
        assert!(weak.upgrade().is_none());
        assert_eq!(b.state.read().name.as_os_str(), OsStr::new("b"));
        assert_eq!(b.kind(), FileType::RegularFile);
        // Nodes past one chunk, then all freed and taken again.
        let many: Vec<NodeRef> = (0..3 * CHUNK as u64)
            .map(|i| mk(&slab, 100 + i, 7, &format!("n{i}")))
            .collect();
        for (i, n) in many.iter().enumerate() {
            t.insert(n, 7, OsStr::new(&format!("n{i}")));
        }
        for (i, n) in many.iter().enumerate() {
            assert_eq!(
                t.get(100 + i as u64).map(|m| NodeRef::ptr_eq(&m, n)),
                Some(true)
            );
        }
        drop(many);
        let again: Vec<NodeRef> = (0..3 * CHUNK as u64)
            .map(|i| mk(&slab, 100_000 + i, 7, "x"))
            .collect();
        assert_eq!(again.len(), 3 * CHUNK);
        assert_eq!(t.len(), 3 * CHUNK);
    }
}
