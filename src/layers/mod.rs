//! The layer stack on disk: layer roots, lookup through the layers,
//! whiteouts and opaque markers, the merged view of a directory.
//!
//! Everything here is a function over directory fds; nothing keeps state
//! about what the kernel has cached. The overlay engine (`crate::overlay`)
//! builds its inode table on top.

pub mod lookup;
pub mod markers;
pub mod object;
pub mod readdir;

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sys::{self, ProcSelfFd, Stat, SysResult};

/// Index of a layer in [`Stack::layers`]: the upper layer (when there is
/// one) is 0, lower layers follow from the top down.
pub type LayerId = usize;

/// One layer root, opened once at mount time.
#[derive(Debug)]
pub struct Layer {
    /// The layer's root directory.
    pub root: Arc<OwnedFd>,
    /// Path as given on the command line (for messages only).
    pub path: PathBuf,
    /// `st_dev` of the root: which filesystem holds the layer.
    pub dev: u64,
    /// Small number of that filesystem within this stack (0 for the first
    /// one seen, the upper's when there is an upper): the high bits of the
    /// inode numbers rovl reports.
    pub fsid: u32,
    /// UUID of that filesystem, when it has one.
    pub uuid: Option<[u8; 16]>,
}

/// The stack: upper (optional) and lower layers, top first.
#[derive(Debug)]
pub struct Stack {
    /// Upper layer first (when `has_upper`), then lowers from the top down.
    pub layers: Vec<Layer>,
    /// Whether `layers[0]` is a writable upper layer.
    pub has_upper: bool,
    /// `/proc/self/fd`, for reopening `O_PATH` handles.
    pub proc: ProcSelfFd,
    /// References to objects in the layers, and their descriptor cache.
    pub objs: Arc<object::Objects>,
}

/// Bits of the reported inode number that carry the filesystem number when
/// layers span several filesystems.
const FSID_SHIFT: u32 = 58;

impl Stack {
    /// Opens the layer roots. `upper` comes first when present, with its
    /// root already open (the caller reaches it and the workdir through one
    /// mount); `lowers` are top first. Symlinks in these paths are followed
    /// (they were given by the user); nothing inside a layer ever is.
    pub fn open(upper: Option<(&Path, OwnedFd)>, lowers: &[PathBuf]) -> Result<Stack, String> {
        let proc = ProcSelfFd::open().map_err(|e| format!("cannot open /proc/self/fd: {e}"))?;
        let mut layers = Vec::new();
        let mut devs: Vec<u64> = Vec::new();
        let has_upper = upper.is_some();
        let all = upper
            .into_iter()
            .map(|(p, fd)| (p, Some(fd)))
            .chain(lowers.iter().map(|p| (p.as_path(), None)));
        for (path, upper_root) in all {
            // Lower layers are reached through a private read-only, noatime
            // clone of their mount where the system allows it (as root): no
            // access time, nothing at all, changes in them because of rovl,
            // and nothing mounted inside them is ever crossed.
            let root = match upper_root {
                Some(fd) => fd,
                None => match sys::private_readonly_clone(path) {
                    Ok(clone) => clone,
                    Err(_) => sys::open_dir_path(path)
                        .map_err(|e| format!("{}: cannot open layer: {e}", path.display()))?,
                },
            };
            let st = sys::stat_fd(root.as_fd())
                .map_err(|e| format!("{}: cannot stat layer: {e}", path.display()))?;
            let fsid = match devs.iter().position(|d| *d == st.st_dev) {
                Some(i) => i as u32,
                None => {
                    devs.push(st.st_dev);
                    (devs.len() - 1) as u32
                }
            };
            let uuid = sys::fs_uuid(root.as_fd());
            layers.push(Layer {
                root: Arc::new(root),
                path: path.to_path_buf(),
                dev: st.st_dev,
                fsid,
                uuid,
            });
        }
        let objs = object::Objects::new(layers.iter().map(|l| l.root.clone()).collect());
        Ok(Stack {
            layers,
            has_upper,
            proc,
            objs,
        })
    }

    /// The upper layer's root, when the stack has one.
    pub fn upper_root(&self) -> Option<BorrowedFd<'_>> {
        if self.has_upper {
            Some(self.layers[0].root.as_fd())
        } else {
            None
        }
    }

    /// Ids of the lower layers, top first.
    pub fn lower_ids(&self) -> std::ops::Range<LayerId> {
        (if self.has_upper { 1 } else { 0 })..self.layers.len()
    }

    /// True when `id` is the upper layer.
    pub fn is_upper(&self, id: LayerId) -> bool {
        self.has_upper && id == 0
    }

    /// The inode number reported for real inode `ino` of layer `id`. All
    /// layers on one filesystem: the real number. Several filesystems: the
    /// filesystem's number goes into the top bits, so numbers never collide
    /// across filesystems and stay the same across remounts of the same
    /// stack.
    pub fn map_ino(&self, id: LayerId, ino: u64) -> u64 {
        let fsid = u64::from(self.layers[id].fsid);
        if fsid == 0 {
            ino
        } else {
            ino ^ (fsid << FSID_SHIFT)
        }
    }

    /// The reported inode number and link count of the lower object an
    /// origin record names, when it can still be found.
    pub fn origin_ino(&self, origin: &markers::Origin) -> Option<(u64, u64)> {
        let mut tried: Vec<u64> = Vec::new();
        // Filesystems whose UUID matches first, then any other lower one.
        let mut order: Vec<LayerId> = self.lower_ids().collect();
        order.sort_by_key(|id| self.layers[*id].uuid != Some(origin.uuid));
        for id in order {
            let layer = &self.layers[id];
            if tried.contains(&layer.dev) {
                continue;
            }
            tried.push(layer.dev);
            if let Ok(fd) = sys::open_by_handle(layer.root.as_fd(), &origin.handle) {
                if let Ok(st) = sys::stat_fd(fd.as_fd()) {
                    if st.st_dev == layer.dev {
                        return Some((self.map_ino(id, st.st_ino), st.st_nlink));
                    }
                }
            }
        }
        None
    }

    /// Builds the origin record for lower object `fd` of layer `id`.
    pub fn origin_of(&self, id: LayerId, fd: BorrowedFd<'_>) -> Option<markers::Origin> {
        let handle = sys::name_to_handle(fd).ok()?;
        Some(markers::Origin {
            uuid: self.layers[id].uuid.unwrap_or([0; 16]),
            handle,
        })
    }
}

/// An object found in one layer: an `O_PATH` handle on it and its stat.
#[derive(Debug)]
pub struct Real {
    /// `O_PATH|O_NOFOLLOW` handle on the object.
    pub fd: OwnedFd,
    /// Its stat at lookup time.
    pub stat: Stat,
}

impl Real {
    /// Opens `name` in `dir` when it exists.
    pub fn open(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Option<Real>> {
        let fd = match sys::optional(sys::open_path_at(dir, name))? {
            Some(fd) => fd,
            None => return Ok(None),
        };
        let stat = sys::stat_fd(fd.as_fd())?;
        Ok(Some(Real { fd, stat }))
    }
}
