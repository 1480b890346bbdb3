//! `rovl status`: the state of a mount, or what an unmounted stack's
//! journal and session record hold. The JSON schema is documented in the
//! README; field names are stable.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::journal::{self, rfc3339};
use super::session;
use super::{Mode, MountWb};
use crate::overlay::Overlay;

/// One dirty file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyEntry {
    /// Path relative to the mount.
    pub path: String,
    /// Bytes not yet written back (page cache of the upper file).
    pub bytes: u64,
}

/// The last sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// When it finished.
    pub time: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Files written back.
    pub files: usize,
    /// Directories made durable.
    pub dirs: usize,
    /// `ok`, or the errno name the caller got.
    pub result: String,
}

/// Status of a live mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Always true here.
    pub mounted: bool,
    /// Mount point.
    pub mountpoint: String,
    /// Workdir (empty for a read-only stack).
    pub workdir: String,
    /// Daemon pid.
    pub pid: u32,
    /// `normal` or `volatile`.
    pub mode: String,
    /// Whether data moves by FUSE passthrough.
    pub passthrough: bool,
    /// Number of files with unsynced data or metadata.
    pub dirty_files: usize,
    /// Bytes of those files not yet written back.
    pub dirty_bytes: u64,
    /// The dirty files (at most `MAX_LISTED`; `dirty_truncated` says more).
    pub dirty: Vec<DirtyEntry>,
    /// The dirty list was cut short.
    pub dirty_truncated: bool,
    /// Writeback errors since mount, oldest first (the first
    /// `errors_total` minus what `errors_truncated` left out).
    pub errors: Vec<journal::Entry>,
    /// How many writeback errors rovl met since mount.
    #[serde(default)]
    pub errors_total: u64,
    /// The error list was cut short (the journal has every one).
    #[serde(default)]
    pub errors_truncated: bool,
    /// Volatile mode: the error that now fails every fsync and sync.
    pub volatile_error: Option<String>,
    /// The last sync, if any.
    pub last_sync: Option<LastSync>,
}

/// Status of an unmounted stack, from its state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offline {
    /// Always false here.
    pub mounted: bool,
    /// The workdir.
    pub workdir: String,
    /// How the last session ended, when recorded.
    pub session: Option<session::Record>,
    /// Every error in the journal.
    pub journal: Vec<journal::Entry>,
}

/// Most dirty files listed.
pub const MAX_LISTED: usize = 64;

impl MountWb {
    /// The status of the live mount `ov`.
    pub fn status(&self, ov: &Overlay, workdir: &str, passthrough: bool) -> Status {
        let dirty = self.dirty_summary(ov);
        let dirty_bytes = dirty.iter().map(|(_, b)| *b).sum();
        let dirty_files = dirty.len();
        let dirty_truncated = dirty_files > MAX_LISTED;
        let dirty = dirty
            .into_iter()
            .take(MAX_LISTED)
            .map(|(p, bytes)| DirtyEntry {
                path: p.to_string_lossy().into_owned(),
                bytes,
            })
            .collect();
        let errors: Vec<journal::Entry> = self
            .errors_since_mount()
            .into_iter()
            .map(|e| journal::Entry {
                time: rfc3339(e.time),
                path: e.path.to_string_lossy().into_owned(),
                errno: e.errno.name().to_string(),
            })
            .collect();
        let errors_total = if errors.is_empty() {
            0
        } else {
            self.error_count().max(errors.len() as u64)
        };
        let errors_truncated = errors_total > errors.len() as u64;
        Status {
            mounted: true,
            mountpoint: self.mountpoint.to_string_lossy().into_owned(),
            workdir: workdir.to_string(),
            pid: std::process::id(),
            mode: match self.mode() {
                Mode::Normal => "normal".into(),
                Mode::Volatile => "volatile".into(),
            },
            passthrough,
            dirty_files,
            dirty_bytes,
            dirty,
            dirty_truncated,
            errors,
            errors_total,
            errors_truncated,
            volatile_error: self.sticky().map(|e| e.name().to_string()),
            last_sync: self.last_sync().map(|s| LastSync {
                time: rfc3339(s.time),
                duration_ms: s.duration.as_millis() as u64,
                files: s.files,
                dirs: s.dirs,
                result: match s.result {
                    Ok(()) => "ok".into(),
                    Err(e) => e.name().to_string(),
                },
            }),
        }
    }
}

impl Status {
    /// The status as JSON of at most `max` bytes, for a reply of fixed
    /// size (`ROVL_IOC_STATUS`): when the lists do not fit, the error list
    /// keeps its oldest entries and the dirty list its first ones, as many
    /// as fit (errors first), and the `*_truncated` flags say so. `None`
    /// only if not even the lists left empty fit.
    pub fn to_json_within(mut self, max: usize) -> Option<Vec<u8>> {
        let whole = serde_json::to_vec(&self).ok()?;
        if whole.len() <= max {
            return Some(whole);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut errors = std::mem::take(&mut self.errors);
        // Both flags may turn true below: count their text in the base.
        let (dirty_was, errors_was) = (self.dirty_truncated, self.errors_truncated);
        self.dirty_truncated = true;
        self.errors_truncated = true;
        let mut room = max.checked_sub(serde_json::to_vec(&self).ok()?.len())?;
        self.errors_truncated = keep_fitting(&mut errors, &mut room)? || errors_was;
        self.dirty_truncated = keep_fitting(&mut dirty, &mut room)? || dirty_was;
        self.dirty = dirty;
        self.errors = errors;
        let json = serde_json::to_vec(&self).ok()?;
        (json.len() <= max).then_some(json)
    }
}

/// Keeps the leading entries of `list` whose JSON, a comma each, fits in
/// `room`, and takes their size from it. Returns whether any were cut.
fn keep_fitting<T: Serialize>(list: &mut Vec<T>, room: &mut usize) -> Option<bool> {
    let mut kept = 0;
    for e in list.iter() {
        match room.checked_sub(serde_json::to_vec(e).ok()?.len() + 1) {
            Some(r) => *room = r,
            None => break,
        }
        kept += 1;
    }
    let cut = kept < list.len();
    list.truncate(kept);
    Some(cut)
}

/// The status of an unmounted stack whose workdir is `workdir`.
pub fn offline(workdir: &Path) -> std::io::Result<Offline> {
    let state = workdir.join(crate::mount::STATE_DIR);
    if !state.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{}: neither a rovl mount nor a workdir rovl used",
                workdir.display()
            ),
        ));
    }
    Ok(Offline {
        mounted: false,
        workdir: workdir.to_string_lossy().into_owned(),
        session: session::read(&state),
        journal: journal::read(&state)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dirty: usize, errors: usize, path_len: usize) -> Status {
        let path = |i: usize| format!("/{i:05}{}", "p".repeat(path_len));
        Status {
            mounted: true,
            mountpoint: "/m".into(),
            workdir: "/w".into(),
            pid: 1,
            mode: "normal".into(),
            passthrough: true,
            dirty_files: dirty,
            dirty_bytes: 4096 * dirty as u64,
            dirty: (0..dirty)
                .map(|i| DirtyEntry {
                    path: path(i),
                    bytes: 4096,
                })
                .collect(),
            dirty_truncated: false,
            errors: (0..errors)
                .map(|i| journal::Entry {
                    time: "2026-11-24T01:02:03Z".into(),
                    path: path(i),
                    errno: "ENOSPC".into(),
                })
                .collect(),
            errors_total: errors as u64,
            errors_truncated: false,
            volatile_error: None,
            last_sync: None,
        }
    }

    #[test]
    fn a_status_that_fits_is_sent_whole() {
        let s = status(3, 2, 10);
        let json = s.clone().to_json_within(16383).unwrap();
        let back: Status = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn long_lists_are_cut_to_fit_errors_first_oldest_first() {
        for (dirty, errors) in [(64, 0), (0, 4096), (64, 4096), (64, 30)] {
            let s = status(dirty, errors, 600);
            let json = s.clone().to_json_within(16383).unwrap();
            assert!(json.len() <= 16383, "{dirty} {errors}: {}", json.len());
            let back: Status = serde_json::from_slice(&json).unwrap();
            // Nearly full: fewer than one more entry's worth is left.
            assert!(json.len() > 16383 - 700, "{dirty} {errors}: {}", json.len());
            assert_eq!(back.errors[..], s.errors[..back.errors.len()]);
            assert_eq!(back.dirty[..], s.dirty[..back.dirty.len()]);
            assert_eq!(back.errors_truncated, back.errors.len() < errors);
            assert_eq!(back.dirty_truncated, back.dirty.len() < dirty);
            if back.errors.len() < errors {
                assert!(back.dirty.is_empty(), "errors are kept before dirty files");
            }
            assert_eq!(
                (back.dirty_files, back.errors_total),
                (dirty, errors as u64)
            );
        }
    }

    #[test]
    fn flags_that_were_already_set_stay_set() {
        let mut s = status(64, 3, 600);
        s.dirty_truncated = true;
        s.errors_total = 5000;
        s.errors_truncated = true;
        let back: Status = serde_json::from_slice(&s.to_json_within(16383).unwrap()).unwrap();
        assert!(back.dirty_truncated && back.errors_truncated);
        assert_eq!(back.errors.len(), 3);
    }

    #[test]
    fn nothing_fits_in_a_buffer_too_small_for_the_bare_status() {
        assert_eq!(status(1, 1, 10).to_json_within(100), None);
    }
}
