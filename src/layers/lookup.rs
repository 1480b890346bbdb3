//! Looking a name up through the layers, the way kernel overlayfs does
//! (`fs/overlayfs/namei.c`), extended to the whiteout and opaque forms of
//! fuse-overlayfs and containers/storage.
//!
//! Rules, top layer first:
//! - a whiteout (0/0 device, `.wh.NAME`, or an xattr whiteout inside a
//!   directory marked `x`) hides the name in every layer below;
//! - a non-directory hides everything below it;
//! - directories merge until one is opaque (or a non-directory or a
//!   whiteout is met below);
//! - a directory with a redirect is continued, in the layers below, at the
//!   redirect's path (absolute from the layer roots, or a name in the
//!   parent's lower directories).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::markers::{self, DirMarks, Redirect};
use super::object::Obj;
use super::{LayerId, Real, Stack};
use crate::sys::{self, FileType, SysResult};

/// One directory of one lower layer that contributes to a merged directory.
#[derive(Debug, Clone)]
pub struct LayerDir {
    /// The layer.
    pub layer: LayerId,
    /// The directory.
    pub obj: Obj,
    /// Its entries may be xattr whiteouts.
    pub xwhiteouts: bool,
}

/// Where a directory is in the lower layers (what a redirect to it says):
/// its name under its parent's path, which it shares with the parent and
/// its siblings (a directory the kernel holds keeps one of these).
#[derive(Debug)]
pub struct LowerPath {
    parent: Option<Arc<LowerPath>>,
    name: Box<OsStr>,
}

impl LowerPath {
    /// The layer roots.
    pub fn root() -> Arc<LowerPath> {
        Arc::new(LowerPath {
            parent: None,
            name: Box::from(OsStr::new("")),
        })
    }

    /// The path of `name` in this directory.
    pub fn child(self: &Arc<Self>, name: &OsStr) -> Arc<LowerPath> {
        Arc::new(LowerPath {
            parent: Some(self.clone()),
            name: Box::from(name),
        })
    }

    /// The path with these components from the roots.
    pub fn from_components(path: &[OsString]) -> Arc<LowerPath> {
        path.iter().fold(LowerPath::root(), |p, c| p.child(c))
    }

    /// The components from the roots.
    pub fn components(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        let mut cur = self;
        while let Some(p) = &cur.parent {
            v.push(cur.name.to_os_string());
            cur = p;
        }
        v.reverse();
        v
    }
}

impl Drop for LowerPath {
    /// Iteratively: a deep path whose last holder goes must not recurse.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(p) = next {
            next = Arc::into_inner(p).and_then(|mut inner| inner.parent.take());
        }
    }
}

/// Where a directory of the merged view takes its entries from.
#[derive(Debug, Clone, Default)]
pub struct DirLayers {
    /// The upper directory, when it exists.
    pub upper: Option<Obj>,
    /// The upper directory may hold xattr whiteouts.
    pub upper_xwhiteouts: bool,
    /// Lower directories merged below it, top first.
    pub lowers: Vec<LayerDir>,
    /// Path of this directory in the lower layers (what a redirect to it
    /// says); `None` for a directory that exists only in the upper layer.
    pub lower_path: Option<Arc<LowerPath>>,
    /// Whether the upper directory is known to have no default ACL.
    pub no_default_acl: AbsenceHint,
}

/// A cached "known absent" for one fact about an object (say, that a
/// directory has no default ACL), so that a hot path can skip the syscall
/// that would find it absent again. Only absence is cached; every change
/// that could make the fact present calls [`AbsenceHint::forget`].
/// A generation makes a check that raced with a `forget` not stick:
/// [`AbsenceHint::note_absent`] takes the value `check` returned before
/// the syscall. A clone starts unknown.
#[derive(Debug, Default)]
pub struct AbsenceHint(AtomicU32);

impl AbsenceHint {
    const ABSENT: u32 = 1;

    /// `Ok(())` when the fact is known absent; otherwise the ticket to
    /// hand to `note_absent` after looking.
    pub fn check(&self) -> Result<(), u32> {
        let v = self.0.load(Ordering::Acquire);
        if v & Self::ABSENT != 0 {
            Ok(())
        } else {
            Err(v)
        }
    }

    /// Records absence, seen by a look that started at `ticket`; a no-op
    /// when a `forget` came in between.
    pub fn note_absent(&self, ticket: u32) {
        let _ = self.0.compare_exchange(
            ticket,
            ticket | Self::ABSENT,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The fact may have become present: look again next time.
    pub fn forget(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some((v & !Self::ABSENT).wrapping_add(2))
            });
    }
}

impl Clone for AbsenceHint {
    fn clone(&self) -> Self {
        AbsenceHint::default()
    }
}

/// What a lookup found.
#[derive(Debug)]
pub struct Found {
    /// Type of the visible object.
    pub kind: FileType,
    /// The upper object, when the name exists in the upper layer.
    pub upper: Option<Real>,
    /// Lower objects: for a non-directory without an upper copy, the one
    /// visible file; for a directory, every lower directory merged into it,
    /// top first.
    pub lowers: Vec<(LayerId, Real, DirMarks)>,
    /// Marks of the upper directory (opaque, xattr whiteouts).
    pub upper_marks: DirMarks,
    /// The upper directory carries a redirect.
    pub redirected: bool,
    /// For directories with lower layers: their path in the lower layers.
    pub lower_path: Option<Arc<LowerPath>>,
}

impl Found {
    /// The layers of a found directory, as a parent for further lookups.
    pub fn into_dir_layers(self, stack: &Stack) -> DirLayers {
        let mut lowers: Vec<LayerDir> = self
            .lowers
            .into_iter()
            .map(|(layer, real, marks)| LayerDir {
                layer,
                obj: stack.objs.adopt(layer, real.fd, true),
                xwhiteouts: marks.xwhiteouts,
            })
            .collect();
        // The collect reuses the (much larger) buffer of `self.lowers`;
        // the directory keeps this for as long as the kernel holds it.
        lowers.shrink_to_fit();
        DirLayers {
            upper: self.upper.map(|u| stack.objs.adopt(0, u.fd, true)),
            upper_xwhiteouts: self.upper_marks.xwhiteouts,
            lowers,
            lower_path: self.lower_path,
            no_default_acl: AbsenceHint::default(),
        }
    }

    /// The object whose attributes the merged view shows.
    pub fn top(&self) -> &Real {
        match &self.upper {
            Some(u) => u,
            None => &self.lowers[0].1,
        }
    }
}

/// What to look for in the layers below the current one.
#[derive(Debug, Clone)]
enum Next {
    /// A name in the parent's directory of each layer.
    Name(OsString),
    /// A path from each layer's root (after an absolute redirect).
    Abs(Vec<OsString>),
}

fn is_whiteout(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &sys::Stat,
    xwhiteouts: bool,
) -> SysResult<bool> {
    if markers::is_whiteout_stat(st) {
        return Ok(true);
    }
    if xwhiteouts {
        return markers::is_xattr_whiteout(dir, name, st);
    }
    Ok(false)
}

/// True when `dir` holds `.wh.NAME`. `known` is the directory's object,
/// when at hand: a directory known to hold no `.wh.` name is not asked.
fn has_wh_file(dir: BorrowedFd<'_>, known: Option<&Obj>, name: &OsStr) -> SysResult<bool> {
    if known.and_then(Obj::has_wh_names) == Some(false) {
        return Ok(false);
    }
    let wh = markers::whiteout_name(name);
    if wh.len() > 255 {
        // A name too long for its `.wh.` form cannot have one.
        return Ok(false);
    }
    Ok(sys::stat_at(dir, &wh)?.is_some())
}

/// Looks `name` up in the merged directory `parent`.
///
/// Returns `None` when the name is absent or whited out.
pub fn lookup(stack: &Stack, parent: &DirLayers, name: &OsStr) -> SysResult<Option<Found>> {
    sys::check_name(name)?;
    if markers::is_marker_name(name) {
        // `.wh.*` names are layer markers, never entries of the merged view.
        return Ok(None);
    }
    let mut found = Found {
        kind: FileType::Unknown,
        upper: None,
        lowers: Vec::new(),
        upper_marks: DirMarks::default(),
        redirected: false,
        lower_path: None,
    };
    let mut next = Next::Name(name.to_owned());
    if let Some(upobj) = &parent.upper {
        let upfd = upobj.fd()?;
        let up = upfd.as_fd();
        match Real::open(up, name)? {
            Some(real) => {
                if is_whiteout(up, name, &real.stat, parent.upper_xwhiteouts)? {
                    return Ok(None);
                }
                let kind = FileType::from_raw_mode(real.stat.st_mode);
                found.kind = kind;
                if kind == FileType::Directory {
                    // The `.wh..wh..opq` form is looked for only if a lower
                    // directory turns up below (see `opaque_file_above`).
                    let (marks, redirect) = markers::dir_xattr_marks(real.fd.as_fd())?;
                    found.upper_marks = marks;
                    if let Some(r) = redirect {
                        found.redirected = true;
                        next = match r {
                            Redirect::Absolute(p) => Next::Abs(p),
                            Redirect::Relative(n) => Next::Name(n),
                        };
                    }
                    let stop = found.upper_marks.opaque || has_wh_file(up, Some(upobj), name)?;
                    found.upper = Some(real);
                    if stop {
                        return Ok(Some(found));
                    }
                } else {
                    found.upper = Some(real);
                    return Ok(Some(found));
                }
            }
            None => {
                if has_wh_file(up, Some(upobj), name)? {
                    return Ok(None);
                }
            }
        }
    }
    // A recent listing of the directory tells which lower layer holds the
    // name, if any (the upper layer was asked above).
    let mut start = None;
    // Only for the name itself: an upper directory's redirect sends the
    // search elsewhere.
    if matches!(&next, Next::Name(n) if n == name) {
        let first = parent
            .upper
            .as_ref()
            .or(parent.lowers.first().map(|l| &l.obj));
        if let Some(h) = first.and_then(|f| stack.objs.hints(f)) {
            match h.layer_of(name) {
                Some(l) if !stack.is_upper(l) => start = Some(l),
                Some(_) => {}
                None if found.upper.is_none() => return Ok(None),
                None => {}
            }
        }
    }
    found.lower_path = match &next {
        Next::Name(n) => parent.lower_path.as_ref().map(|p| p.child(n)),
        Next::Abs(p) => Some(LowerPath::from_components(p)),
    };
    search_lowers(stack, parent, next, start, &mut found)?;
    if found.upper.is_none() && found.lowers.is_empty() {
        return Ok(None);
    }
    if found.lowers.is_empty() {
        found.lower_path = None;
    }
    Ok(Some(found))
}

/// True when the directory found last (above the one about to be merged
/// below it) is opaque by a `.wh..wh..opq` file, which is then recorded in
/// its marks. Asked only here, when there is something to hide: most
/// directories exist in one layer only, and looking for an absent name
/// searches the whole directory.
fn opaque_file_above(found: &mut Found) -> SysResult<bool> {
    if let Some((_, real, marks)) = found.lowers.last_mut() {
        if markers::has_opaque_file(real.fd.as_fd())? {
            marks.opaque = true;
            return Ok(true);
        }
        return Ok(false);
    }
    if let Some(up) = &found.upper {
        if markers::has_opaque_file(up.fd.as_fd())? {
            found.upper_marks.opaque = true;
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when `name` is visible in the lower layers of `parent` (so that
/// removing it from the merged view needs a whiteout).
pub fn lower_positive(stack: &Stack, parent: &DirLayers, name: &OsStr) -> SysResult<bool> {
    let mut found = Found {
        kind: FileType::Unknown,
        upper: None,
        lowers: Vec::new(),
        upper_marks: DirMarks::default(),
        redirected: false,
        lower_path: None,
    };
    search_lowers(stack, parent, Next::Name(name.to_owned()), None, &mut found)?;
    Ok(!found.lowers.is_empty())
}

/// Outcome of resolving an absolute redirect path in one layer.
enum AbsBase {
    /// The parent directory of the last component, and its marks.
    Dir(OwnedFd, bool),
    /// The path is absent in this layer: try the next one.
    Missing,
    /// A whiteout or non-directory on the way: stop the search.
    Stop,
}

/// How an absolute redirect path went in one layer.
struct AbsWalk {
    base: AbsBase,
    /// A redirect on a directory on the way rewrote the path for the
    /// layers below.
    rewritten: Option<Vec<OsString>>,
    /// An opaque directory on the way: the layers below are not searched
    /// (unless an absolute redirect further down started over).
    last_layer: bool,
}

/// Resolves the directories of absolute redirect `path` (all but its last
/// component) in `layer`, as the kernel does: the walk in this layer goes
/// on through redirected and opaque directories, while a redirect on the
/// way rewrites the path for the layers below and an opaque directory
/// makes this layer the last one searched.
fn resolve_abs_parent(stack: &Stack, layer: LayerId, path: &[OsString]) -> SysResult<AbsWalk> {
    let walk = |base, rewritten, last_layer| AbsWalk {
        base,
        rewritten,
        last_layer,
    };
    let Some((_, comps)) = path.split_last() else {
        return Ok(walk(AbsBase::Missing, None, false));
    };
    let mut rewritten: Option<Vec<OsString>> = None;
    let mut last_layer = false;
    let mut cur = sys::dup(stack.layers[layer].root.as_fd())?;
    let mut xwh = markers::dir_marks(cur.as_fd())?.xwhiteouts;
    for (i, c) in comps.iter().enumerate() {
        let Some(real) = Real::open(cur.as_fd(), c)? else {
            return Ok(walk(AbsBase::Missing, rewritten, last_layer));
        };
        if is_whiteout(cur.as_fd(), c, &real.stat, xwh)? {
            return Ok(walk(AbsBase::Stop, None, true));
        }
        if FileType::from_raw_mode(real.stat.st_mode) != FileType::Directory {
            return Ok(walk(AbsBase::Stop, None, true));
        }
        let marks = markers::dir_marks(real.fd.as_fd())?;
        if marks.opaque {
            last_layer = true;
        }
        if let (_, Some(r)) = markers::dir_xattr_marks(real.fd.as_fd())? {
            if matches!(r, Redirect::Absolute(_)) {
                last_layer = false;
            }
            // The components after this one stay; what leads to it changes.
            let base = rewritten.as_deref().unwrap_or(path);
            let keep = path.len() - 1 - i;
            let head = &base[..base.len() - keep];
            let mut new: Vec<OsString> = match r {
                Redirect::Absolute(q) => q,
                Redirect::Relative(n) => {
                    let mut v = head[..head.len().saturating_sub(1)].to_vec();
                    v.push(n);
                    v
                }
            };
            new.extend_from_slice(&base[base.len() - keep..]);
            rewritten = Some(new);
        }
        xwh = marks.xwhiteouts;
        cur = real.fd;
    }
    Ok(walk(AbsBase::Dir(cur, xwh), rewritten, last_layer))
}

/// Searches the lower layers, from `start` down when given (a listing
/// showed that the layers above it do not have the name).
fn search_lowers(
    stack: &Stack,
    parent: &DirLayers,
    mut next: Next,
    start: Option<LayerId>,
    found: &mut Found,
) -> SysResult<()> {
    for layer in stack.lower_ids() {
        if start.is_some_and(|s| layer < s) {
            continue;
        }
        let holder: Arc<OwnedFd>;
        // An opaque directory on an absolute redirect's way: this layer is
        // the last one searched.
        let mut last_layer = false;
        let (base, known, name, xwh): (BorrowedFd<'_>, Option<&Obj>, OsString, bool) = match &next {
            Next::Name(n) => match parent.lowers.iter().find(|d| d.layer == layer) {
                Some(d) => {
                    holder = d.obj.fd()?;
                    (holder.as_fd(), Some(&d.obj), n.clone(), d.xwhiteouts)
                }
                None => continue,
            },
            Next::Abs(p) => {
                let Some(last) = p.last().cloned() else {
                    return Ok(());
                };
                let w = resolve_abs_parent(stack, layer, p)?;
                last_layer = w.last_layer;
                let base = match w.base {
                    AbsBase::Dir(fd, x) => {
                        holder = Arc::new(fd);
                        (holder.as_fd(), None, last, x)
                    }
                    AbsBase::Missing if last_layer => return Ok(()),
                    AbsBase::Missing => {
                        if let Some(r) = w.rewritten {
                            next = Next::Abs(r);
                        }
                        continue;
                    }
                    AbsBase::Stop => return Ok(()),
                };
                if let Some(r) = w.rewritten {
                    next = Next::Abs(r);
                }
                base
            }
        };
        // Opened even when only its stat is used now: the node keeps
        // showing this very object should the layer change behind rovl's
        // back (a held descriptor, then its handle).
        let Some(real) = Real::open(base, &name)? else {
            if last_layer || has_wh_file(base, known, &name)? {
                return Ok(());
            }
            continue;
        };
        if is_whiteout(base, &name, &real.stat, xwh)? {
            return Ok(());
        }
        let kind = FileType::from_raw_mode(real.stat.st_mode);
        let have_dir_above = found.kind == FileType::Directory;
        if kind != FileType::Directory {
            if found.kind == FileType::Unknown {
                found.kind = kind;
                found.lowers.push((layer, real, DirMarks::default()));
            }
            // A non-directory below a directory is hidden, and it hides
            // everything below itself.
            return Ok(());
        }
        if found.kind != FileType::Unknown && !have_dir_above {
            return Ok(());
        }
        if have_dir_above && opaque_file_above(found)? {
            return Ok(());
        }
        found.kind = FileType::Directory;
        let (marks, redirect) = markers::dir_xattr_marks(real.fd.as_fd())?;
        let stop = marks.opaque || has_wh_file(base, known, &name)?;
        found.lowers.push((layer, real, marks));
        if stop {
            return Ok(());
        }
        if let Some(r) = redirect {
            next = match r {
                Redirect::Absolute(p) => Next::Abs(p),
                Redirect::Relative(n) => match next {
                    Next::Name(_) => Next::Name(n),
                    Next::Abs(mut p) => {
                        p.pop();
                        p.push(n);
                        Next::Abs(p)
                    }
                },
            };
        }
        if last_layer {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_paths_share_their_parents() {
        let root = LowerPath::root();
        assert!(root.components().is_empty());
        let a = root.child(OsStr::new("a"));
        let b = a.child(OsStr::new("b"));
        let c = a.child(OsStr::new("c"));
        assert_eq!(
            b.components(),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert_eq!(
            c.components(),
            vec![OsString::from("a"), OsString::from("c")]
        );
        let abs = LowerPath::from_components(&b.components());
        assert_eq!(abs.components(), b.components());
        drop(a);
        assert_eq!(b.components().len(), 2, "children keep their parents");
    }

    #[test]
    fn a_deep_lower_path_drops_without_recursion() {
        let mut p = LowerPath::root();
        for _ in 0..1_000_000 {
            p = p.child(OsStr::new("d"));
        }
        drop(p);
    }
}
