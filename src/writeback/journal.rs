//! The error journal (SPEC E7): `WORKDIR/rovl/journal`, one JSON object per
//! line, appended for every writeback error and kept across unmount and
//! daemon death.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::sys::{Mode, OFlags, SysResult};

/// File name of the journal inside `WORKDIR/rovl/`.
pub const JOURNAL: &str = "journal";

/// One writeback error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When rovl met it (RFC 3339, UTC).
    pub time: String,
    /// Path relative to the mount (`/` is the mount root).
    pub path: String,
    /// Errno name (`EIO`, `ENOSPC`, ...).
    pub errno: String,
}

/// The open journal of a live mount.
#[derive(Debug)]
pub struct Journal {
    file: Mutex<File>,
}

impl Journal {
    /// Opens (creating) the journal in the state directory `dir`.
    pub fn open(dir: BorrowedFd<'_>) -> SysResult<Journal> {
        let fd = rustix::fs::openat(
            dir,
            JOURNAL,
            OFlags::CREATE | OFlags::WRONLY | OFlags::APPEND | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(Journal {
            file: Mutex::new(File::from(fd)),
        })
    }

    /// Appends `entry` and makes it durable. The upper filesystem may be the
    /// one failing: the caller logs what this returns.
    pub fn append(&self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut f = self.file.lock();
        f.write_all(&line)?;
        rustix::fs::fdatasync(f.as_fd())?;
        Ok(())
    }
}

/// Reads every entry of the journal in state directory `dir` (a missing
/// journal is empty; unreadable lines are skipped).
pub fn read(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let f = match File::open(dir.join(JOURNAL)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if let Ok(e) = serde_json::from_str::<Entry>(&line) {
            out.push(e);
        }
    }
    Ok(out)
}

/// `t` as RFC 3339 UTC with seconds (`2026-11-24T01:02:03Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_482_123)),
            "2026-11-24T01:02:03Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
