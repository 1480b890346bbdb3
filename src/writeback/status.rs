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
    /// Writeback errors since mount.
    pub errors: Vec<journal::Entry>,
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
        let errors = self
            .errors_since_mount()
            .into_iter()
            .map(|e| journal::Entry {
                time: rfc3339(e.time),
                path: e.path.to_string_lossy().into_owned(),
                errno: e.errno.name().to_string(),
            })
            .collect();
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
