//! The merged listing of a directory: every layer's entries, top first,
//! without whiteouts, markers, or anything a layer above hides.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};

use super::lookup::DirLayers;
use super::markers;
use super::object::ListingHints;
use super::{LayerId, Stack};
use crate::sys::{self, FileType, SysResult};

/// One entry of a merged directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedEntry {
    /// Entry name.
    pub name: OsString,
    /// Type of the visible object.
    pub kind: FileType,
    /// Layer holding the visible object.
    pub layer: LayerId,
    /// Inode number of the visible object on its layer's filesystem.
    pub real_ino: u64,
}

/// Lists directory `dir` of the merged view.
///
/// Within one layer an entry wins over a `.wh.` file of the same name (the
/// whiteout hides only what lies below); across layers, whatever a higher
/// layer holds, whiteouts included, hides the same name below.
pub fn merge(stack: &Stack, dir: &DirLayers) -> SysResult<Vec<MergedEntry>> {
    let mut out = Vec::new();
    let mut decided: HashSet<OsString> = HashSet::new();
    let mut dirs = Vec::with_capacity(dir.lowers.len() + 1);
    if let Some(u) = &dir.upper {
        dirs.push((0usize, u, u.fd()?, dir.upper_xwhiteouts));
    }
    for d in &dir.lowers {
        dirs.push((d.layer, &d.obj, d.obj.fd()?, d.xwhiteouts));
    }
    let mut complete = true;
    for (layer, obj, fd, xwh) in &dirs {
        match merge_layer(stack, *layer, fd.as_fd(), *xwh, &mut decided, &mut out)? {
            // Lookups in this directory need not look for `.wh.NAME`
            // whiteouts when it has no `.wh.` name at all.
            Some(wh) => obj.set_wh_names(wh),
            None => complete = false,
        }
    }
    if complete && !dir.lowers.is_empty() {
        if let Some((_, first, _, _)) = dirs.first() {
            let mut hints = ListingHints::default();
            for e in &out {
                hints.add(&e.name, e.layer);
            }
            stack.objs.set_hints(first, hints);
        }
    }
    Ok(out)
}

/// Adds the entries of one layer's directory; returns whether it holds
/// `.wh.` names (`None` when it could not be read).
fn merge_layer(
    stack: &Stack,
    layer: LayerId,
    fd: BorrowedFd<'_>,
    xwhiteouts: bool,
    decided: &mut HashSet<OsString>,
    out: &mut Vec<MergedEntry>,
) -> SysResult<Option<bool>> {
    let entries = match sys::read_dir(&stack.proc, fd) {
        Ok(e) => e,
        // A layer directory that vanished underneath us contributes nothing.
        Err(sys::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hidden_below: Vec<OsString> = Vec::new();
    let mut wh_names = false;
    for e in entries {
        if markers::is_marker_name(&e.name) {
            wh_names = true;
            if let Some(target) = markers::whiteout_target(&e.name) {
                hidden_below.push(target.to_owned());
            }
            continue;
        }
        if decided.contains(&e.name) {
            continue;
        }
        let mut kind = e.kind;
        let needs_stat = matches!(kind, FileType::Unknown | FileType::CharacterDevice)
            || (xwhiteouts && kind == FileType::RegularFile);
        if needs_stat {
            let Some(st) = sys::stat_at(fd, &e.name)? else {
                continue;
            };
            kind = FileType::from_raw_mode(st.st_mode);
            let whiteout = markers::is_whiteout_stat(&st)
                || (xwhiteouts && markers::is_xattr_whiteout(fd, &e.name, &st)?);
            if whiteout {
                hidden_below.push(e.name);
                continue;
            }
        }
        decided.insert(e.name.clone());
        out.push(MergedEntry {
            name: e.name,
            kind,
            layer,
            real_ino: e.ino,
        });
    }
    decided.extend(hidden_below);
    Ok(Some(wh_names))
}

/// True when directory `dir` of the merged view has no entries.
pub fn is_empty(stack: &Stack, dir: &DirLayers) -> SysResult<bool> {
    Ok(merge(stack, dir)?.is_empty())
}
