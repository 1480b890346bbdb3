//! The session record (SPEC E6): how the last mount of a stack ended, so a
//! volatile stack is re-mounted only when nothing can have been lost.
//!
//! `WORKDIR/rovl/session.json` says `running` from mount until a clean
//! unmount rewrites it as `clean` (or `errors`), with the boot id and the
//! files the session dirtied. A daemon killed at any moment leaves
//! `running`; a reboot changes the boot id.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sys::{self, Mode, OFlags, SysResult};

/// File name of the record inside `WORKDIR/rovl/`.
pub const SESSION: &str = "session.json";

/// How a session ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Mounted, or the daemon died without recording an end.
    Running,
    /// Clean unmount, no writeback error seen.
    Clean,
    /// Unmounted, but writeback errors happened.
    Errors,
}

/// A file a session dirtied, as the next session finds it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirtied {
    /// Path relative to the mount, for messages.
    pub path: String,
    /// `name_to_handle_at` type of the upper file.
    pub handle_type: i32,
    /// The handle bytes, hex.
    pub handle: String,
}

impl Dirtied {
    /// The upper file's handle.
    pub fn file_handle(&self) -> Option<sys::FileHandle> {
        let s = self.handle.as_bytes();
        if s.len() % 2 != 0 {
            return None;
        }
        let bytes = s
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(sys::FileHandle {
            kind: self.handle_type,
            bytes,
        })
    }

    /// Describes `handle` for the record.
    pub fn new(path: String, handle: &sys::FileHandle) -> Dirtied {
        Dirtied {
            path,
            handle_type: handle.kind,
            handle: handle.bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// The record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// How the session ended.
    pub state: State,
    /// Whether it was a volatile mount.
    pub volatile: bool,
    /// `/proc/sys/kernel/random/boot_id` at mount.
    pub boot_id: String,
    /// Daemon pid.
    pub pid: u32,
    /// Mount time (RFC 3339).
    pub started: String,
    /// Unmount time (RFC 3339), when it ended.
    pub ended: Option<String>,
    /// Writeback errors seen.
    pub errors: u64,
    /// Files the session dirtied and left to background writeback.
    pub dirtied: Vec<Dirtied>,
    /// Why the unmount failed, when it did.
    #[serde(default)]
    pub result: Option<String>,
}

/// Writes the record into state directory `dir` atomically. Not synced: a
/// record lost to a power cut goes with a new boot id anyway.
pub fn write(dir: BorrowedFd<'_>, rec: &Record) -> SysResult<()> {
    let tmp = OsStr::new("session.json.tmp");
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let data = serde_json::to_vec_pretty(rec).map_err(|_| sys::Errno::INVAL)?;
    let mut off = 0;
    while off < data.len() {
        off += rustix::io::write(&fd, &data[off..])?;
    }
    drop(fd);
    sys::rename_at(
        dir,
        tmp,
        dir,
        OsStr::new(SESSION),
        sys::RenameFlags::empty(),
    )
}

/// Reads the record of the stack whose state directory is `dir`.
pub fn read(dir: &Path) -> Option<Record> {
    let data = std::fs::read(dir.join(SESSION)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Decides whether a stack whose volatile marker exists may be mounted
/// again, and returns the files to adopt as dirty. `upper` is the upper
/// layer's root; `state_dir` is `WORKDIR/rovl`.
pub fn check_reuse(
    proc: &sys::ProcSelfFd,
    state_dir: &Path,
    upper: BorrowedFd<'_>,
    marker: &Path,
) -> Result<Vec<Dirtied>, String> {
    let how = format!(
        "to recover, discard the upper layer (its content may be incomplete), or remove {} to accept it as it is",
        marker.display()
    );
    let Some(rec) = read(state_dir) else {
        return Err(format!(
            "{} exists and there is no record of how its volatile session ended; {how}",
            marker.display()
        ));
    };
    match rec.state {
        State::Running => {
            return Err(format!(
                "the previous volatile session (pid {}) did not end cleanly: its daemon was killed or crashed; {how}",
                rec.pid
            ));
        }
        State::Errors => {
            return Err(format!(
                "the previous volatile session lost data to {} writeback error(s) (see `rovl status {}`); {how}",
                rec.errors,
                state_dir.parent().unwrap_or(state_dir).display()
            ));
        }
        State::Clean => {}
    }
    if rec.boot_id != sys::boot_id() {
        return Err(format!(
            "the machine rebooted since the previous volatile session, so its unsynced data may be gone; {how}"
        ));
    }
    for f in &rec.dirtied {
        let Some(h) = f.file_handle() else { continue };
        // Gone since (deleted by hand): nothing of it to lose.
        let Ok(fd) = sys::open_by_handle(upper, &h) else {
            continue;
        };
        let Ok(file) = proc.reopen(fd.as_fd(), OFlags::RDONLY) else {
            continue;
        };
        if let Err(e) = sys::check_writeback(file.as_fd()) {
            return Err(format!(
                "{} (written by the previous volatile session) has a writeback error ({}); {how}",
                f.path,
                std::io::Error::from(e)
            ));
        }
    }
    Ok(rec.dirtied)
}
