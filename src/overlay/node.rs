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
//! an image, tens of thousands), so a node is kept small: one allocation
//! with its name inline (short names), directory layers behind a shared
//! pointer, writeback state only once needed, and the name index stores
//! no copy of the name.

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap as HashMap;

use crate::layers::lookup::DirLayers;
use crate::layers::object::Obj;
use crate::sys::FileType;

/// A FUSE node id, which is also the inode number users see. 1 is the root.
pub type NodeId = u64;

/// The root's node id (fixed by the FUSE protocol).
pub const ROOT_ID: NodeId = 1;

/// First id of the range handed out when an object's natural id is taken.
const FALLBACK_BASE: NodeId = 1 << 63;

/// Where a node's object lives in the layers.
#[derive(Debug, Clone)]
pub enum Layers {
    /// A directory: its upper directory and merged lower directories
    /// (shared: lookups in the directory take a reference, not a copy).
    Dir(Arc<DirLayers>),
    /// Anything else: the upper object, or else the one lower object.
    NonDir {
        /// The upper object.
        upper: Option<Obj>,
        /// The lower object the node shows (or was copied up from).
        lower: Option<Obj>,
    },
}

impl Layers {
    /// The upper object, when there is one.
    pub fn upper(&self) -> Option<&Obj> {
        match self {
            Layers::Dir(d) => d.upper.as_ref(),
            Layers::NonDir { upper, .. } => upper.as_ref(),
        }
    }

    /// The object whose data and attributes the merged view shows.
    pub fn top(&self) -> Option<&Obj> {
        match self {
            Layers::Dir(d) => d
                .upper
                .as_ref()
                .or_else(|| d.lowers.first().map(|l| &l.obj)),
            Layers::NonDir { upper, lower } => upper.as_ref().or(lower.as_ref()),
        }
    }

    /// True when the object has a lower-layer part (a merged or lower
    /// directory, or a file copied up from or still in a lower layer).
    pub fn has_lowers(&self) -> bool {
        match self {
            Layers::Dir(d) => !d.lowers.is_empty(),
            Layers::NonDir { lower, .. } => lower.is_some(),
        }
    }
}

/// Longest name kept inside the node itself.
const INLINE_NAME: usize = 22;

/// A node's name: short names (nearly all) inline, longer ones on the
/// heap. Dereferences to `OsStr`.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeName {
    /// Up to [`INLINE_NAME`] bytes.
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

/// Milliseconds since the first call (a compact monotonic time for rare
/// per-node marks; never 0).
fn now_ms() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    (start.elapsed().as_millis() as u32).max(1)
}

/// Mutable state of a node.
#[derive(Debug)]
pub struct NodeState {
    /// Parent of the name this node was last known by.
    pub parent: NodeId,
    /// That name. Empty for the root.
    pub name: NodeName,
    /// Where the object lives.
    pub layers: Layers,
    /// (st_dev, st_ino) of the object that defines this node's identity:
    /// the upper object, or else the top lower one.
    pub ident: (u64, u64),
    /// The upper directory carries an opaque marker.
    pub opaque: bool,
    /// No name leads to this node any more (unlinked or replaced); it lives
    /// on for the files still open on it.
    pub unlinked: bool,
    /// The upper directory is marked impure (holds copied-up entries).
    pub impure: bool,
    /// When (see `now_ms`; 0: never) a hard-linked lower file asked to be
    /// copied up through one of its names; the kernel is retrying with a
    /// fresh lookup, and the name it looks up gets its own copy (see
    /// `Overlay::lookup`).
    split_mark: u32,
}

impl NodeState {
    /// A state with no split pending.
    pub fn new(
        parent: NodeId,
        name: &OsStr,
        layers: Layers,
        ident: (u64, u64),
        opaque: bool,
    ) -> NodeState {
        NodeState {
            parent,
            name: NodeName::from(name),
            layers,
            ident,
            opaque,
            unlinked: false,
            impure: false,
            split_mark: 0,
        }
    }

    /// Marks a split pending from now on.
    pub fn mark_split(&mut self) {
        self.split_mark = now_ms();
    }

    /// Clears a pending split.
    pub fn clear_split(&mut self) {
        self.split_mark = 0;
    }

    /// How long ago a split was marked, if one is pending.
    pub fn split_age(&self) -> Option<std::time::Duration> {
        if self.split_mark == 0 {
            return None;
        }
        let ms = now_ms().wrapping_sub(self.split_mark);
        Some(std::time::Duration::from_millis(u64::from(ms)))
    }
}

/// One object of the merged view the kernel holds a reference to.
#[derive(Debug)]
pub struct Node {
    /// FUSE node id and inode number.
    pub id: NodeId,
    /// FUSE generation: distinguishes objects that reuse an id over time.
    pub generation: u64,
    /// Everything that changes.
    pub state: RwLock<NodeState>,
    /// Kernel lookup count.
    pub lookups: AtomicU64,
    /// Per-inode writeback state (errors, dirty tracking).
    pub wb: crate::writeback::InodeWb,
    /// File type (never changes for a node).
    pub kind: FileType,
    /// Serializes copy-up of this node.
    pub copy_up_lock: Mutex<()>,
    /// The kernel reads this node's lower file directly (FUSE passthrough)
    /// for some open file. Its FUSE inode is then tied to that lower file,
    /// so the node must never be copied up in place: a writer sharing the
    /// inode would reach the lower file through mmap. Set and cleared under
    /// `copy_up_lock`.
    pub lower_pinned: AtomicBool,
}

impl Node {
    /// A node in no table yet.
    pub fn new(
        id: NodeId,
        generation: u64,
        kind: FileType,
        state: NodeState,
        wb: crate::writeback::InodeWb,
    ) -> Node {
        Node {
            id,
            generation,
            kind,
            state: RwLock::new(state),
            lookups: AtomicU64::new(0),
            copy_up_lock: Mutex::new(()),
            lower_pinned: AtomicBool::new(false),
            wb,
        }
    }

    /// The inode number users see.
    pub fn ino(&self) -> u64 {
        self.id
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
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

    /// An `O_PATH` descriptor of the object the merged view shows.
    pub fn top_fd(&self) -> crate::sys::SysResult<Arc<OwnedFd>> {
        let top = self.state.read().layers.top().cloned();
        top.ok_or(crate::sys::Errno::STALE)?.fd()
    }

    /// The directory layers (for directories): a shared reference.
    pub fn dir_layers(&self) -> Option<Arc<DirLayers>> {
        match &self.state.read().layers {
            Layers::Dir(d) => Some(d.clone()),
            Layers::NonDir { .. } => None,
        }
    }
}

/// Nodes by id (a pointer per slot: the id is in the node).
#[derive(Debug, Default)]
struct NodeMap(HashTable<Arc<Node>>);

fn id_hash(id: NodeId) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(id)
}

impl NodeMap {
    fn get(&self, id: &NodeId) -> Option<&Arc<Node>> {
        self.0.find(id_hash(*id), |n| n.id == *id)
    }

    fn contains_key(&self, id: &NodeId) -> bool {
        self.get(id).is_some()
    }

    fn insert(&mut self, id: NodeId, node: Arc<Node>) {
        match self.0.find_mut(id_hash(id), |n| n.id == id) {
            Some(slot) => *slot = node,
            None => {
                self.0.insert_unique(id_hash(id), node, |n| id_hash(n.id));
            }
        }
    }

    fn remove(&mut self, id: &NodeId) -> Option<Arc<Node>> {
        let e = self.0.find_entry(id_hash(*id), |n| n.id == *id).ok()?;
        Some(e.remove().0)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.0.iter()
    }
}

/// One name of the index: the node it leads to, and the hash of
/// `(parent, name)` (the name itself is the node's, or one of its aliases).
#[derive(Debug, Clone, Copy)]
struct NameRef {
    hash: u64,
    id: NodeId,
}

fn name_hash(parent: NodeId, name: &OsStr) -> u64 {
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write_u64(parent);
    h.write(name.as_bytes());
    h.finish()
}

/// True when node `id` is reachable as `parent/name`.
fn has_name(
    nodes: &NodeMap,
    aliases: &HashMap<NodeId, Vec<(NodeId, OsString)>>,
    id: NodeId,
    parent: NodeId,
    name: &OsStr,
) -> bool {
    if let Some(n) = nodes.get(&id) {
        let st = n.state.read();
        if st.parent == parent && st.name == name {
            return true;
        }
    }
    aliases
        .get(&id)
        .is_some_and(|v| v.iter().any(|(p, n)| *p == parent && n == name))
}

/// The table of nodes and the names that lead to them.
#[derive(Debug)]
pub struct NodeTable {
    nodes: NodeMap,
    names: HashTable<NameRef>,
    /// Further names of nodes with several links.
    aliases: HashMap<NodeId, Vec<(NodeId, OsString)>>,
    next_fallback: NodeId,
    next_generation: u64,
}

impl Default for NodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> Self {
        NodeTable {
            nodes: NodeMap::default(),
            names: HashTable::new(),
            aliases: HashMap::default(),
            next_fallback: FALLBACK_BASE,
            next_generation: 1,
        }
    }

    /// A fresh generation number.
    pub fn next_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// The node id the name `parent/name` leads to in the index.
    fn name_get(&self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        let hash = name_hash(parent, name);
        let (nodes, aliases) = (&self.nodes, &self.aliases);
        self.names
            .find(hash, |r| {
                r.hash == hash && has_name(nodes, aliases, r.id, parent, name)
            })
            .map(|r| r.id)
    }

    /// Removes `parent/name` from the index (it must still be one of the
    /// node's names, as the node's state or aliases say); returns its node.
    fn name_remove(&mut self, parent: NodeId, name: &OsStr) -> Option<NodeId> {
        let hash = name_hash(parent, name);
        let (nodes, aliases) = (&self.nodes, &self.aliases);
        let e = self
            .names
            .find_entry(hash, |r| {
                r.hash == hash && has_name(nodes, aliases, r.id, parent, name)
            })
            .ok()?;
        Some(e.remove().0.id)
    }

    /// Removes `parent/name` from the index if it leads to `id`.
    fn name_remove_if(&mut self, parent: NodeId, name: &OsStr, id: NodeId) {
        if self.name_get(parent, name) == Some(id) {
            self.name_remove(parent, name);
        }
    }

    /// Makes `parent/name` lead to `id` (which must have that name by the
    /// time the index is next asked), replacing what it led to.
    fn name_set(&mut self, parent: NodeId, name: &OsStr, id: NodeId) {
        let hash = name_hash(parent, name);
        let (nodes, aliases) = (&self.nodes, &self.aliases);
        if let Some(r) = self.names.find_mut(hash, |r| {
            r.hash == hash && has_name(nodes, aliases, r.id, parent, name)
        }) {
            r.id = id;
            return;
        }
        self.names
            .insert_unique(hash, NameRef { hash, id }, |r| r.hash);
    }

    /// The id for an object whose natural id is `want` and whose identity
    /// is `ident`: `Ok(node)` when the table already holds that very
    /// object, `Err(id)` with an id free for a new node otherwise.
    pub fn claim(&mut self, want: NodeId, ident: (u64, u64)) -> Result<Arc<Node>, NodeId> {
        match self.nodes.get(&want) {
            None if want != 0 && want < FALLBACK_BASE => Err(want),
            Some(n) if n.state.read().ident == ident && !n.state.read().unlinked => Ok(n.clone()),
            _ => {
                while self.nodes.contains_key(&self.next_fallback) {
                    self.next_fallback += 1;
                }
                let id = self.next_fallback;
                self.next_fallback += 1;
                Err(id)
            }
        }
    }

    /// The node with id `id`.
    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes.get(&id).cloned()
    }

    /// The node the name `parent/name` leads to, when known.
    pub fn child(&self, parent: NodeId, name: &OsStr) -> Option<Arc<Node>> {
        let id = self.name_get(parent, name)?;
        self.nodes.get(&id).cloned()
    }

    /// Inserts a new node reachable as `parent/name` (its state's name).
    pub fn insert(&mut self, node: Arc<Node>, parent: NodeId, name: &OsStr) {
        let id = node.id;
        self.nodes.insert(id, node);
        if !name.is_empty() {
            self.name_set(parent, name, id);
        }
    }

    /// Adds `parent/name` as another name of `node`.
    pub fn add_alias(&mut self, node: &Node, parent: NodeId, name: &OsStr) {
        // Whatever the name led to before, it leads to `node` now; first
        // make it one of `node`'s names so that the index can find it.
        if self.name_get(parent, name).is_some_and(|o| o != node.id) {
            self.name_remove(parent, name);
        }
        {
            let mut st = node.state.write();
            if st.unlinked {
                st.parent = parent;
                st.name = NodeName::from(name);
                st.unlinked = false;
            } else if !(st.parent == parent && st.name == name) {
                let v = self.aliases.entry(node.id).or_default();
                if !v.iter().any(|(p, n)| *p == parent && n == name) {
                    v.push((parent, name.to_owned()));
                }
            }
        }
        if self.name_get(parent, name) != Some(node.id) {
            self.name_set(parent, name, node.id);
        }
    }

    /// All names the kernel may know `node` by.
    pub fn names_of(&self, node: &Node) -> Vec<(NodeId, OsString)> {
        let st = node.state.read();
        let mut v = Vec::new();
        if !st.unlinked {
            v.push((st.parent, st.name.to_os_string()));
        }
        if let Some(a) = self.aliases.get(&node.id) {
            v.extend(a.iter().cloned());
        }
        v
    }

    /// Forgets the name `parent/name`; the node it led to moves to another
    /// of its names, or is marked unlinked when it has none left.
    pub fn remove_name(&mut self, parent: NodeId, name: &OsStr) {
        let Some(id) = self.name_remove(parent, name) else {
            return;
        };
        let Some(node) = self.nodes.get(&id).cloned() else {
            return;
        };
        let mut st = node.state.write();
        if st.parent == parent && st.name == name {
            match self.aliases.get_mut(&id).and_then(|v| v.pop()) {
                Some((p, n)) => {
                    st.parent = p;
                    st.name = NodeName::from(n);
                }
                None => st.unlinked = true,
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
        let Some(id) = self.name_remove(old_parent, old_name) else {
            return;
        };
        if let Some(node) = self.nodes.get(&id).cloned() {
            let mut st = node.state.write();
            if st.parent == old_parent && st.name == old_name {
                st.parent = new_parent;
                st.name = NodeName::from(new_name);
                st.unlinked = false;
            } else if let Some(v) = self.aliases.get_mut(&id) {
                for a in v.iter_mut() {
                    if a.0 == old_parent && a.1 == old_name {
                        *a = (new_parent, new_name.to_owned());
                    }
                }
            }
        }
        self.name_set(new_parent, new_name, id);
    }

    /// Counts one kernel reference to `node`, reached as `parent/name`,
    /// atomically with forgets: a node that a racing FORGET removed between
    /// its lookup and now is entered again (or, should its id have been
    /// taken meanwhile, the node now holding it is used). Returns the node
    /// the reference was counted on.
    pub fn take_ref(&mut self, node: &Arc<Node>, parent: NodeId, name: &OsStr) -> Arc<Node> {
        let n = match self.nodes.get(&node.id) {
            Some(n) => n.clone(),
            None => {
                self.nodes.insert(node.id, node.clone());
                if !name.is_empty() && self.name_get(parent, name).is_none() {
                    let has = {
                        let st = node.state.read();
                        st.parent == parent && st.name == name
                    } || self
                        .aliases
                        .get(&node.id)
                        .is_some_and(|v| v.iter().any(|(p, n)| *p == parent && n == name));
                    if has {
                        self.name_set(parent, name, node.id);
                    }
                }
                node.clone()
            }
        };
        n.lookups.fetch_add(1, Ordering::AcqRel);
        n
    }

    /// Drops `n` kernel references to node `id`; removes the node when none
    /// remain. Returns the removed node.
    pub fn forget(&mut self, id: NodeId, n: u64) -> Option<Arc<Node>> {
        if id == ROOT_ID {
            return None;
        }
        let node = self.nodes.get(&id)?;
        let prev = node
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(n))
            })
            .unwrap_or(0);
        if prev > n {
            return None;
        }
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
        self.nodes.remove(&id)
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
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_stay_small() {
        // The kernel holds one per entry it has seen: with the Arc's
        // counts, at most 152 bytes (a 160-byte malloc chunk).
        assert!(
            std::mem::size_of::<Node>() <= 136,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn names_index_follows_renames_and_aliases() {
        let mut t = NodeTable::new();
        let mk = |id: NodeId, parent: NodeId, name: &str| {
            Arc::new(Node::new(
                id,
                id,
                FileType::RegularFile,
                NodeState::new(
                    parent,
                    OsStr::new(name),
                    Layers::NonDir {
                        upper: None,
                        lower: None,
                    },
                    (1, id),
                    false,
                ),
                Default::default(),
            ))
        };
        let a = mk(10, ROOT_ID, "a");
        t.insert(a.clone(), ROOT_ID, OsStr::new("a"));
        assert_eq!(t.child(ROOT_ID, OsStr::new("a")).map(|n| n.id), Some(10));
        t.add_alias(&a, 5, OsStr::new("b"));
        assert_eq!(t.child(5, OsStr::new("b")).map(|n| n.id), Some(10));
        t.move_name(ROOT_ID, OsStr::new("a"), 5, OsStr::new("c"));
        assert!(t.child(ROOT_ID, OsStr::new("a")).is_none());
        assert_eq!(t.child(5, OsStr::new("c")).map(|n| n.id), Some(10));
        t.remove_name(5, OsStr::new("c"));
        assert!(t.child(5, OsStr::new("c")).is_none());
        assert_eq!(t.child(5, OsStr::new("b")).map(|n| n.id), Some(10));
        assert_eq!(a.state.read().name.as_os_str(), OsStr::new("b"));
        let long = "x".repeat(200);
        let l = mk(11, 5, &long);
        t.insert(l, 5, OsStr::new(&long));
        assert_eq!(t.child(5, OsStr::new(&long)).map(|n| n.id), Some(11));
        a.lookups.store(1, Ordering::Release);
        assert!(t.forget(10, 1).is_some());
        assert!(t.child(5, OsStr::new("b")).is_none());
        for i in 0..5000u64 {
            let n = mk(100 + i, 7, &format!("n{i}"));
            t.insert(n, 7, OsStr::new(&format!("n{i}")));
        }
        for i in 0..5000u64 {
            assert_eq!(
                t.child(7, OsStr::new(&format!("n{i}"))).map(|n| n.id),
                Some(100 + i)
            );
        }
    }
}
