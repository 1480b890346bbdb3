//! Scratch directories under one recognizable root, named after their owner.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, Proc, log_warn};

/// Environment variable that overrides the root of all scratch directories.
pub const ROOT_ENV: &str = "ROVL_TESTBED_ROOT";

/// Default root of all scratch directories.
pub const DEFAULT_ROOT: &str = "/tmp/rovl-testbed";

/// The root under which every fixture of every process lives:
/// `$ROVL_TESTBED_ROOT`, or `/tmp/rovl-testbed`. It must be on a real disk
/// filesystem (not tmpfs) for [`crate::Ext4Disk`] to mean anything.
pub fn root() -> PathBuf {
    let root = std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    // Canonical, because paths get compared with mountinfo's.
    fs::canonicalize(&root).unwrap_or(root)
}

/// `<pid>-<starttime>` of this process: the start time makes the tag
/// unique even when the pid gets reused by a later process.
pub(crate) fn owner_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        let start = Proc::get(pid).map_or(0, |p| p.start);
        format!("{pid}-{start}")
    })
}

/// Parses a scratch directory name `<pid>-<start>-<n>` into its owner.
pub(crate) fn parse_owner(name: &str) -> Option<Proc> {
    let mut it = name.split('-');
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    it.next()?.parse::<u64>().ok()?;
    it.next().is_none().then_some(Proc { pid, start })
}

/// A fresh directory `<root>/<pid>-<starttime>-<n>/`, removed on drop.
///
/// Drop first unmounts whatever is still mounted beneath it (children
/// first; busy mounts lazily, FUSE mounts after aborting their connection),
/// then removes the tree without ever crossing into another filesystem: if
/// something could not be unmounted, that part is left alone and reported
/// on stderr. Leftovers of killed processes are swept by
/// [`sweep_stale`](crate::sweep_stale), which runs once per process before
/// the first scratch directory is made.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Makes a new scratch directory (after sweeping stale ones, once per
    /// process).
    pub fn new() -> io::Result<Scratch> {
        crate::sweep::sweep_once();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let root = root();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(|e| sys::ctx(e, format!("mkdir {}", root.display())))?;
        let root = fs::canonicalize(root)?;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = root.join(format!("{}-{n}", owner_tag()));
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => return Ok(Scratch { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(sys::ctx(e, format!("mkdir {}", path.display()))),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates the directory `rel` (and its parents) inside and returns its
    /// path.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).map_err(|e| sys::ctx(e, format!("mkdir {}", p.display())))?;
        Ok(p)
    }

    /// The directory's name, `<pid>-<starttime>-<n>`.
    pub(crate) fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        destroy_dir(&self.path);
    }
}

/// Frees everything below `dir` and removes it: detaches loop devices
/// backed by files in there (before the unmounts, which could hide their
/// paths; one still under a mount is freed by the kernel with that mount),
/// unmounts everything (children first), removes the tree. Logs instead of
/// failing. Returns (loop devices detached, mounts unmounted).
pub(crate) fn destroy_dir(dir: &Path) -> (usize, usize) {
    let mut loops = 0;
    for (dev, backing) in sys::loop_devices() {
        if backing.starts_with(dir) {
            match sys::detach_loop_if(&dev, &backing) {
                Ok(()) => loops += 1,
                Err(e) => log_warn!("cleaning {}: {e}", dev.display()),
            }
        }
    }
    let before = sys::mounts_under(dir).map_or(0, |m| m.len());
    for e in sys::unmount_all_under(dir) {
        log_warn!("cleaning {}: {e}", dir.display());
    }
    let mounts = before.saturating_sub(sys::mounts_under(dir).map_or(0, |m| m.len()));
    if let Err(e) = remove_tree(dir) {
        log_warn!("removing {}: {e}", dir.display());
    }
    (loops, mounts)
}

/// Removes `dir` recursively, refusing to descend into anything on another
/// filesystem than `dir` itself (a mount that could not be removed).
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    let dev = match fs::symlink_metadata(dir) {
        Ok(m) => m.dev(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_on_dev(dir, dev)
}

fn remove_on_dev(dir: &Path, dev: u64) -> io::Result<()> {
    let mut first_err = None;
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(sys::ctx(e, format!("read {}", dir.display()))),
    };
    for ent in entries {
        let ent = ent?;
        let p = ent.path();
        let res = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && m.dev() != dev => Err(io::Error::other(format!(
                "{} is still a mount point, leaving it",
                p.display()
            ))),
            Ok(m) if m.is_dir() => remove_on_dev(&p, dev),
            Ok(_) => fs::remove_file(&p).map_err(|e| sys::ctx(e, format!("rm {}", p.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(sys::ctx(e, format!("rmdir {}", dir.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_round_trip() {
        let p = parse_owner(&format!("{}-7", owner_tag())).unwrap();
        assert_eq!(p.pid, std::process::id());
        assert!(p.alive());
        assert!(parse_owner("12-34").is_none());
        assert!(parse_owner("12-34-5-6").is_none());
        assert!(parse_owner("x-34-5").is_none());
    }

    #[test]
    fn scratch_is_removed_on_drop() {
        let s = Scratch::new().unwrap();
        let p = s.mkdir("a/b").unwrap();
        fs::write(p.join("f"), b"x").unwrap();
        let dir = s.path().to_path_buf();
        assert!(dir.starts_with(root()));
        drop(s);
        assert!(!dir.exists());
    }
}
