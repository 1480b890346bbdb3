//! Removal of what killed or crashed test processes left behind.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use crate::scratch::{self, parse_owner, root};
use crate::sys::{self, MountEntry, Proc, log_warn};

/// Environment variable set on every daemon started through
/// [`FuseMount`](crate::FuseMount): `<scratch dir name>`, i.e.
/// `<pid>-<starttime>-<n>` of the test process that owns it. Daemonizing
/// programs keep their environment, so this finds them after they forked
/// away from us.
pub const OWNER_ENV: &str = "ROVL_TESTBED_OWNER";

/// What [`sweep_stale`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Scratch directories of dead owners that were removed (or emptied).
    pub dirs: Vec<PathBuf>,
    /// Mounts unmounted.
    pub mounts: usize,
    /// Loop devices detached.
    pub loops: usize,
    /// Daemon processes killed.
    pub processes: usize,
}

/// Runs [`sweep_stale`] once per process; failures are only logged.
pub(crate) fn sweep_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match sweep_stale() {
        Ok(s) if s != Swept::default() => log_warn!("swept stale resources: {s:?}"),
        Ok(_) => {}
        Err(e) => log_warn!("sweeping stale resources failed: {e}"),
    });
}

/// Holds an exclusive flock on `<root>/.sweep.lock` so that parallel test
/// processes do not sweep the same leftovers at once.
struct SweepLock {
    _file: File,
}

impl SweepLock {
    fn take(root: &Path) -> io::Result<SweepLock> {
        fs::create_dir_all(root)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".sweep.lock"))?;
        // SAFETY: flock on an fd we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SweepLock { _file: f })
    }
}

/// Finds resources under [`root()`] whose owning process (encoded in the
/// scratch directory name) is dead, and removes them: kills their FUSE
/// daemons, detaches their loop devices, unmounts their mounts (children
/// first, lazily if busy) and deletes their directories. Resources of
/// live processes are never touched. Called automatically, once, before a
/// process makes its first [`Scratch`](crate::Scratch).
pub fn sweep_stale() -> io::Result<Swept> {
    let _lock = SweepLock::take(&root())?;
    let root = root(); // canonical now that it exists
    let mut swept = Swept::default();

    // Candidate owner directories: existing ones, and ones that only
    // survive as mount points or loop backing files.
    let mut dirs = BTreeSet::new();
    for e in fs::read_dir(&root)?.flatten() {
        dirs.insert(e.path());
    }
    let owner_dir = |p: &Path| -> Option<PathBuf> {
        let first = p.strip_prefix(&root).ok()?.components().next()?;
        Some(root.join(first))
    };
    for m in sys::mounts()? {
        dirs.extend(owner_dir(&m.mount_point));
    }
    for (_, backing) in sys::loop_devices() {
        dirs.extend(owner_dir(&backing));
    }

    let dead: Vec<(PathBuf, Proc)> = dirs
        .into_iter()
        .filter_map(|dir| {
            let owner = parse_owner(dir.file_name()?.to_str()?)?;
            (!owner.alive()).then_some((dir, owner))
        })
        .collect();
    if dead.is_empty() {
        return Ok(swept);
    }
    // 1. Daemons started on a dead owner's behalf.
    let mut owners: Vec<Proc> = Vec::new();
    for (_, owner) in &dead {
        if !owners.contains(owner) {
            owners.push(*owner);
        }
    }
    for owner in &owners {
        let procs =
            sys::procs_with_env(OWNER_ENV, &format!("{}-{}-", owner.pid, owner.start), true);
        for p in &procs {
            p.signal(libc::SIGKILL);
        }
        sys::wait_until(Duration::from_secs(5), || procs.iter().all(|p| !p.alive()));
        swept.processes += procs.len();
    }
    // 2. Loop devices backed by files in there, before the unmounts (which
    //    could hide their paths): an unused one goes at once, one under a
    //    mount is freed by the kernel with that mount.
    for (dev, backing) in sys::loop_devices() {
        if dead.iter().any(|(d, _)| backing.starts_with(d)) {
            match sys::detach_loop_if(&dev, &backing) {
                Ok(()) => swept.loops += 1,
                Err(e) => log_warn!("sweeping {}: {e}", dev.display()),
            }
        }
    }
    // 3. Mounts, all dead owners' at once in reverse mount order: an
    //    overlay in one directory may sit on an ext4 in another.
    let doomed: Vec<MountEntry> = sys::mounts()?
        .into_iter()
        .filter(|m| dead.iter().any(|(d, _)| m.mount_point.starts_with(d)))
        .collect();
    swept.mounts += doomed.len();
    for e in sys::unmount_list(&doomed) {
        log_warn!("sweeping: {e}");
    }
    // 4. Whatever is left of the directories.
    for (dir, _) in dead {
        let (loops, mounts) = scratch::destroy_dir(&dir);
        swept.loops += loops;
        swept.mounts += mounts;
        swept.dirs.push(dir);
    }
    Ok(swept)
}
