//! Test fixtures for rovl: real resources — scratch directories, a disk that
//! fails on demand, kernel overlayfs and FUSE mounts — that always get
//! cleaned up, even when a test panics, and never leak into the next run.
//!
//! Everything lives under [`root()`] (`/tmp/rovl-testbed`) in directories
//! named `<pid>-<starttime>-<n>` after the process that owns them. Every
//! guard cleans up on drop (unmounting lazily when busy, never panicking);
//! what a killed process left behind is removed by [`sweep_stale`], which
//! runs automatically once per process before the first fixture is made
//! and never touches resources of a live process.
//!
//! All of it needs root. See the crate's README.md for how the failing disk
//! works and what errors it produces.
//!
//! ```no_run
//! use std::io::Write;
//! let mut disk = testbed::FailingDisk::new().unwrap();
//! let mut f = std::fs::File::create(disk.path().join("f")).unwrap();
//! disk.balloon().unwrap();
//! f.write_all(&[1; 65536]).unwrap();
//! assert!(f.sync_all().is_err()); // ENOSPC from writeback
//! ```

mod disk;
mod fuse;
mod overlay;
mod scratch;
mod sweep;
mod sys;

pub use disk::{DiskOptions, Ext4Disk, FailingDisk, PowerCut};
pub use fuse::FuseMount;
pub use overlay::{KernelOverlay, escape_option_path};
pub use scratch::{DEFAULT_ROOT, ROOT_ENV, Scratch, root};
pub use sweep::{OWNER_ENV, Swept, sweep_stale};
pub use sys::{MountEntry, mounts, mounts_under};

use std::io;
use std::process::Command;

/// Runs `cmd` and returns its stdout; panics with the command, its exit
/// status, stdout and stderr if it cannot be run or does not succeed.
pub fn run(cmd: &mut Command) -> String {
    match try_run(cmd) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `cmd` and returns its stdout; the error of a failed command holds
/// the command, its exit status, stdout and stderr.
pub fn try_run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| sys::ctx(e, format!("running {cmd:?}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({})\n--- stdout\n{stdout}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
