//! The daemon: from a checked mount request to a live mount, serving it,
//! and the unmount work (SPEC §1, E6, E7).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::cli::{Switch, SyncMode};
use crate::fuse::{FuseConfig, RovlFs};
use crate::layers::Stack;
use crate::mount::{self, Checked, Ready, STATE_DIR, WORK_DIR};
use crate::overlay::{Options, Overlay};
use crate::sys;
use crate::writeback::{Journal, Mode, MountWb, journal::rfc3339, session};

/// Default entry/attribute cache timeout: layers do not change under a
/// live mount, and rovl invalidates what it changes itself.
const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// How often background writeback checks run.
const BACKGROUND_PERIOD: Duration = Duration::from_secs(1);
/// Most descriptors the cache of layer objects keeps open. Each pins a
/// `struct file` and its dentry in the kernel and ~90 bytes of the
/// daemon's heap; the cache only saves a reopen by handle (a few µs) for
/// an object used again soon, so it need not grow with the descriptor
/// limit (with a hard limit of 2^20 that was 65,536 descriptors and
/// 5 MiB per mount).
const OBJECT_CACHE: usize = 1024;
/// Most directory descriptors the cache keeps open, beside the others:
/// the directories of a container image (a few thousand) stay open
/// through a walk of the files in them, which would otherwise evict them
/// and make each directory's next GETATTR or lookup a reopen by handle.
const DIR_OBJECT_CACHE: usize = 4096;
/// Descriptors left out of the budgets: the device's clones, the layer
/// roots, the work and state directories, the journal and the log, and
/// what requests open while they run (a copy-up's files, a reopen for a
/// sync). The budgets must fit in the limit with these, however low it is.
const RESERVED_FDS: usize = 64;

/// What the parent of a daemonized mount is waiting for.
pub enum Notify {
    /// `-f`: report on stderr.
    Foreground,
    /// The pipe to the waiting parent.
    Parent(Ready),
}

impl Notify {
    fn fail(self, msg: &str) -> i32 {
        match self {
            Notify::Foreground => eprintln!("rovl: {msg}"),
            Notify::Parent(r) => r.fail(msg),
        }
        1
    }

    fn ok(self) {
        if let Notify::Parent(r) = self {
            r.ok();
        }
    }
}

/// State the daemon holds for the life of the mount.
struct Held {
    state: Option<OwnedFd>,
    _lock: Option<(std::fs::File, OwnedFd)>,
    record: Option<session::Record>,
}

fn max_stack_depth(stack: &Stack) -> u32 {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let stacked = stack.layers.iter().any(|l| {
        rustix::fs::fstatfs(&l.root)
            .map(|s| {
                let t = s.f_type;
                t == OVERLAYFS_SUPER_MAGIC || t == FUSE_SUPER_MAGIC
            })
            .unwrap_or(false)
    });
    if stacked { 2 } else { 1 }
}

/// Prepares WORKDIR (state and work directories, lock, leftovers, volatile
/// marker, session record). Runs only after every check passed.
fn prepare_workdir(
    c: &Checked,
    wd: Option<BorrowedFd<'_>>,
    stack: &Stack,
    adopt_ok: bool,
) -> Result<Held, String> {
    let (Some(workdir), Some(wd)) = (&c.workdir, wd) else {
        return Ok(Held {
            state: None,
            _lock: None,
            record: None,
        });
    };
    let state = mount::ensure_dir(wd, STATE_DIR, 0o700)
        .map_err(|e| format!("cannot create {}/{STATE_DIR}: {e}", workdir.display()))?;
    let upper = stack.upper_root().ok_or("no upper layer")?;
    let lock = mount::lock_stack(state.as_fd(), upper)?;
    let work = mount::ensure_dir(wd, WORK_DIR, 0o700)
        .map_err(|e| format!("cannot create {}/{WORK_DIR}: {e}", workdir.display()))?;
    match mount::clean_work(&stack.proc, work.as_fd()) {
        Ok(0) => {}
        Ok(n) => info!(
            n,
            "removed leftovers of an earlier daemon from the work directory"
        ),
        Err(e) => {
            return Err(format!(
                "cannot clean {}/{WORK_DIR}: {e}",
                workdir.display()
            ));
        }
    }
    let volatile = c.opts.sync_mode == SyncMode::Volatile;
    if volatile {
        // The kernel's layout: kernel overlayfs refuses these directories
        // too while the marker exists.
        let incompat = mount::ensure_dir(work.as_fd(), "incompat", 0o700)
            .map_err(|e| format!("cannot create the volatile marker: {e}"))?;
        let vol = mount::ensure_dir(incompat.as_fd(), "volatile", 0o700)
            .map_err(|e| format!("cannot create the volatile marker: {e}"))?;
        mount::ensure_dir(vol.as_fd(), "dirty", 0o700)
            .map_err(|e| format!("cannot create the volatile marker: {e}"))?;
    } else if adopt_ok {
        // A normal mount of a stack a clean volatile session left: the
        // adopted files are synced right after mount, then the marker goes.
    }
    let record = session::Record {
        state: session::State::Running,
        volatile,
        boot_id: sys::boot_id(),
        pid: std::process::id(),
        started: rfc3339(SystemTime::now()),
        ended: None,
        errors: 0,
        dirtied: Vec::new(),
        result: None,
    };
    session::write(state.as_fd(), &record)
        .map_err(|e| format!("cannot write the session record: {e}"))?;
    Ok(Held {
        state: Some(state),
        _lock: Some(lock),
        record: Some(record),
    })
}

fn open_work(c: &Checked, wd: Option<BorrowedFd<'_>>) -> Result<Option<OwnedFd>, String> {
    match (&c.workdir, wd) {
        (Some(w), Some(wd)) => sys::open_dir_at(wd, std::ffi::OsStr::new(WORK_DIR))
            .map(Some)
            .map_err(|e| format!("{}/{WORK_DIR}: {e}", w.display())),
        _ => Ok(None),
    }
}

/// The upper layer's root and the workdir, open.
struct UpperWork {
    upper: OwnedFd,
    workdir: OwnedFd,
}

/// Opens the upper layer and the workdir through one private clone of the
/// mount that holds both (as root), rooted at their common ancestor: like
/// kernel overlayfs, rovl then never crosses a mount inside the upper layer
/// (not even its own mountpoint placed there), and renames from the work
/// directory into the upper layer stay within one mount. Without the
/// privilege, or when the two are not reachable through one mount (a bind
/// mount between them), the directories are opened as given.
fn open_upper_and_work(upper: &Path, workdir: &Path) -> Result<UpperWork, String> {
    let direct = UpperWork {
        upper: sys::open_dir_path(upper)
            .map_err(|e| format!("{}: cannot open layer: {e}", upper.display()))?,
        workdir: sys::open_dir_path(workdir)
            .map_err(|e| format!("workdir {}: {e}", workdir.display()))?,
    };
    Ok(through_private_clone(upper, workdir, &direct).unwrap_or(direct))
}

fn through_private_clone(upper: &Path, workdir: &Path, direct: &UpperWork) -> Option<UpperWork> {
    // Both paths are canonical (mount::check), so their common prefix is a
    // directory and the rest holds no symlink and no `..`.
    let base: PathBuf = upper
        .components()
        .zip(workdir.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let clone = sys::private_clone(&base, false).ok()?;
    let walk = |rel: &Path| -> Option<OwnedFd> {
        let mut cur = sys::dup(clone.as_fd()).ok()?;
        for c in rel.components() {
            let std::path::Component::Normal(name) = c else {
                return None;
            };
            cur = sys::open_dir_at(cur.as_fd(), name).ok()?;
        }
        Some(cur)
    };
    let same = |a: &OwnedFd, b: &OwnedFd| match (sys::stat_fd(a.as_fd()), sys::stat_fd(b.as_fd())) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    };
    let uw = UpperWork {
        upper: walk(upper.strip_prefix(&base).ok()?)?,
        workdir: walk(workdir.strip_prefix(&base).ok()?)?,
    };
    (same(&uw.upper, &direct.upper) && same(&uw.workdir, &direct.workdir)).then_some(uw)
}

/// Sets up logging to the file `to`, else to stderr, of what `level`
/// (`debug`, `info`, `warn`) lets through, unless `ROVL_LOG` says otherwise.
pub fn init_logging(level: &str, to: Option<&Path>) {
    match to.and_then(open_log) {
        Some(f) => init_writer(level, Arc::new(f)),
        None => init_writer(level, std::io::stderr),
    }
}

/// A daemonized rovl logs to `file` (`WORKDIR/rovl/rovl.log`). Without one
/// (a stack of lowers has no workdir) or when it cannot be opened, it logs
/// to syslog; with no syslog listening either, only warnings go to stderr,
/// which is the caller's until the mount is up, so that a mount that works
/// says nothing there, as fuse-overlayfs does.
fn init_daemon_logging(debug: bool, file: Option<&Path>) {
    let level = if debug { "debug" } else { "info" };
    if let Some(f) = file.and_then(open_log) {
        init_writer(level, Arc::new(f));
    } else if let Some(s) = crate::syslog::Syslog::connect() {
        init_writer(level, s);
    } else {
        init_writer(if debug { "debug" } else { "warn" }, std::io::stderr);
    }
}

fn open_log(p: &Path) -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .ok()
}

fn init_writer<W>(level: &str, w: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ROVL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(w)
        .try_init();
}

/// Set once any thread of the daemon panicked.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// True once any thread of the daemon panicked.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::Acquire)
}

/// Makes a panic visible where a daemon's messages go: a daemonized
/// rovl's stderr is /dev/null, so without this a panic in a request
/// handler would leave no trace (its thread ends, the requests it held fail
/// with ECONNABORTED). The panic goes to the log with its thread, place and
/// a backtrace, and the daemon's exit status and session record say the
/// session was not clean. The previous hook still runs (stderr in the
/// foreground).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::Release);
        let thread = std::thread::current();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let trace = std::backtrace::Backtrace::force_capture();
        error!(
            thread = thread.name().unwrap_or("?"),
            place, "panic: {what}\n{trace}"
        );
        previous(info);
    }));
}

/// Runs the daemon for a checked request. Returns the exit status.
pub fn run(c: Checked, notify: Notify, daemonized: bool, debug: bool) -> i32 {
    sys::limit_malloc_arenas(1);
    // Descriptors: of what the limit leaves after RESERVED_FDS, a quarter
    // each for cached layer objects (at most OBJECT_CACHE non-directories
    // and DIR_OBJECT_CACHE directories), dirty files' tracking and open
    // files; the rest, with the reserve, for everything else.
    let nofile = sys::raise_nofile_limit() as usize;
    let budget = (nofile.saturating_sub(RESERVED_FDS) / 4).clamp(4, 1 << 16);
    rustix::process::umask(sys::Mode::empty());
    sys::block_termination_signals();
    sys::ignore_lease_breaks();

    let (upper, wd) = match (&c.upperdir, &c.workdir) {
        (Some(u), Some(w)) => match open_upper_and_work(u, w) {
            Ok(uw) => (Some((u.as_path(), uw.upper)), Some(uw.workdir)),
            Err(e) => return notify.fail(&e),
        },
        _ => (None, None),
    };
    let stack = match Stack::open(upper, &c.lowerdirs) {
        Ok(s) => s,
        Err(e) => return notify.fail(&e),
    };
    let files = (budget / 2).min(OBJECT_CACHE);
    stack
        .objs
        .set_capacity(files, (budget - files).min(DIR_OBJECT_CACHE));
    let adopt = match adopt_list(&c, &stack) {
        Ok(a) => a,
        Err(e) => return notify.fail(&e),
    };
    let mut held =
        match prepare_workdir(&c, wd.as_ref().map(|w| w.as_fd()), &stack, adopt.is_some()) {
            Ok(h) => h,
            Err(e) => return notify.fail(&e),
        };
    if daemonized {
        let log = c
            .workdir
            .as_ref()
            .map(|w| w.join(STATE_DIR).join("rovl.log"));
        init_daemon_logging(debug, log.as_deref());
    }
    install_panic_hook();
    let work = match open_work(&c, wd.as_ref().map(|w| w.as_fd())) {
        Ok(w) => w,
        Err(e) => return notify.fail(&e),
    };
    let volatile = c.opts.sync_mode == SyncMode::Volatile;
    let journal = match &held.state {
        Some(s) => match Journal::open(s.as_fd()) {
            Ok(j) => Some(j),
            Err(e) => return notify.fail(&format!("cannot open the error journal: {e}")),
        },
        None => None,
    };
    let mode = if volatile {
        Mode::Volatile
    } else {
        Mode::Normal
    };
    let wb = MountWb::new(mode, journal, c.mountpoint.clone());
    wb.set_fd_budget(budget);
    let readonly = c.upperdir.is_none() || c.opts.ro;
    let root = rustix::process::geteuid().is_root();
    let passthrough = match c.opts.passthrough {
        Switch::Off => false,
        Switch::On => true,
        Switch::Auto => root,
    };
    let max_depth = max_stack_depth(&stack);
    let opts = Options { volatile, readonly };
    let ov = match Overlay::new(stack, work, opts, wb) {
        Ok(ov) => Arc::new(ov),
        Err(e) => return notify.fail(&format!("cannot set up the overlay: {e}")),
    };
    if let Some(files) = &adopt {
        ov.wb.adopt(&ov, files);
    }
    let cfg = FuseConfig {
        ttl: c
            .opts
            .timeout
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_TTL),
        passthrough,
        max_stack_depth: max_depth,
        workdir: c.workdir.clone(),
        open_fd_budget: budget,
    };
    let allow_other = root || c.opts.allow_other || c.opts.allow_root;
    let dev = match mount::fuse_mount(&c.opts, &c.mountpoint, readonly, allow_other) {
        Ok(d) => d,
        Err(e) => return notify.fail(&e),
    };
    let minor = mount::fuse_connection(&c.mountpoint);
    let mut config = fuser::Config::default();
    config.n_threads = Some(c.opts.threads.unwrap_or_else(default_threads));
    config.clone_fd = true;
    config.acl = if allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let fs = RovlFs::new(ov.clone(), cfg);
    let session = match fuser::Session::from_fd(fs, dev, config.acl, config) {
        Ok(s) => s,
        Err(e) => {
            let _ = rustix::mount::unmount(&c.mountpoint, rustix::mount::UnmountFlags::DETACH);
            return notify.fail(&format!("FUSE handshake failed: {e}"));
        }
    };
    ov.set_invalidate(crate::fuse::notify::start(session.notifier()));
    if volatile || adopt.is_none() {
        // Nothing to do: the adopted files of a volatile session stay dirty.
    } else if let Err(e) = ov.wb.sync(&ov, None) {
        warn!(%e, "syncing the files adopted from the volatile session failed");
    } else if let Some(w) = &c.workdir {
        let _ = std::fs::remove_dir_all(mount::volatile_marker(w));
    }
    // Only now may a sync flush the kernel's cache through the mount: the
    // sync above ran before any request is served, and an open of the
    // mount would have waited for an answer forever. Nothing was written
    // through the mount yet, so it had nothing to flush.
    if let Some(minor) = minor {
        ov.wb.set_mount_dev(rustix::fs::makedev(0, minor));
    }
    info!(mountpoint = %c.mountpoint.display(), "mounted");
    notify.ok();
    if daemonized {
        sys::stdio_to_null();
    }

    let done = Arc::new(AtomicBool::new(false));
    spawn_background(ov.clone(), done.clone());
    let signal_unmount = spawn_signal_watch(c.mountpoint.clone());

    if let Err(e) = session.run() {
        error!(%e, "FUSE session ended with an error");
    }
    done.store(true, Ordering::Release);
    // `destroy` ran the unmount work; if the session ended without it (the
    // connection was aborted), run it now.
    if ov.wb.exit_result().is_none() {
        ov.wb.unmounting(&ov);
    }
    // A signal's unmount may still be detaching the mount: the process
    // must not end under it.
    drop(signal_unmount.lock());
    finish(&ov, &mut held)
}

fn default_threads() -> usize {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (n * 2).clamp(4, 16)
}

/// The files to adopt from a previous clean volatile session, when its
/// marker exists; an error refuses the mount (E6).
fn adopt_list(c: &Checked, stack: &Stack) -> Result<Option<Vec<session::Dirtied>>, String> {
    let Some(w) = &c.workdir else { return Ok(None) };
    let marker = mount::volatile_marker(w);
    if !marker.exists() {
        return Ok(None);
    }
    let upper = stack.upper_root().ok_or("no upper layer")?;
    session::check_reuse(&stack.proc, &w.join(STATE_DIR), upper, &marker).map(Some)
}

fn finish(ov: &Overlay, held: &mut Held) -> i32 {
    let mut result = ov.wb.exit_result().unwrap_or(Ok(()));
    if result.is_ok() && panicked() {
        result = Err("a request handler panicked (see the log); the mount is not clean".into());
    }
    if let (Some(state), Some(rec)) = (&held.state, held.record.as_mut()) {
        rec.ended = Some(rfc3339(SystemTime::now()));
        rec.errors = ov.wb.error_count();
        rec.state = if result.is_ok() && rec.errors == 0 {
            session::State::Clean
        } else {
            session::State::Errors
        };
        rec.result = result.as_ref().err().cloned();
        if rec.volatile {
            rec.dirtied = ov.wb.dirtied(ov);
        }
        if let Err(e) = session::write(state.as_fd(), rec) {
            error!(%e, "cannot write the session record");
        }
    }
    match result {
        Ok(()) => {
            info!("unmounted cleanly");
            0
        }
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

fn spawn_background(ov: Arc<Overlay>, done: Arc<AtomicBool>) {
    let r = std::thread::Builder::new()
        .name("rovl-writeback".into())
        .spawn(move || {
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(BACKGROUND_PERIOD);
                if done.load(Ordering::Acquire) {
                    break;
                }
                if ov.wb.mode() == Mode::Volatile {
                    ov.wb.check_background(&ov);
                }
                ov.wb.background_pass(&ov);
                crate::heap::settle();
            }
        });
    if let Err(e) = r {
        warn!(%e, "cannot start the background writeback thread");
    }
}

/// On SIGTERM/SIGINT/SIGHUP: unmount (if busy: cut the connection, then
/// detach lazily), so the daemon runs its unmount work and exits. The
/// returned lock is held while that unmount runs.
fn spawn_signal_watch(mountpoint: PathBuf) -> Arc<parking_lot::Mutex<()>> {
    // Not stat(2): the mount is not served yet, that would wait forever.
    let conn = mount::fuse_connection(&mountpoint);
    let busy = Arc::new(parking_lot::Mutex::new(()));
    let held = busy.clone();
    let r = std::thread::Builder::new()
        .name("rovl-signals".into())
        .spawn(move || {
            let sig = sys::wait_termination_signal();
            let _unmounting = held.lock();
            info!(sig, "signal: unmounting");
            if rustix::mount::unmount(&mountpoint, rustix::mount::UnmountFlags::empty()).is_err() {
                // Abort before detaching, and only while the mount there
                // still carries our number: the kernel frees the number
                // with the mount, and another FUSE mount may get it.
                if let Some(minor) =
                    conn.filter(|c| mount::fuse_connection(&mountpoint) == Some(*c))
                {
                    let p = format!("/sys/fs/fuse/connections/{minor}/abort");
                    let _ = std::fs::write(p, "1");
                }
                let _ = rustix::mount::unmount(&mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        });
    if let Err(e) = r {
        warn!(%e, "cannot start the signal thread");
    }
    busy
}

/// Exit code and message of `rovl umount`, from the session record the
/// daemon left.
pub fn unmount_result(workdir: &Path) -> Result<(), String> {
    match session::read(&workdir.join(STATE_DIR)) {
        Some(r) => match r.result {
            Some(msg) => Err(msg),
            None if r.state == session::State::Running => {
                Err("the daemon exited without recording how the unmount went".into())
            }
            None => Ok(()),
        },
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test in this binary that sets the global subscriber and
    /// the panic hook.
    #[test]
    fn a_panic_in_any_thread_reaches_the_log_and_marks_the_session() {
        let dir = std::env::temp_dir().join(format!("rovl-panic-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("rovl.log");
        init_logging("info", Some(&log));
        install_panic_hook();
        let r = std::thread::Builder::new()
            .name("rovl-test-panicker".into())
            .spawn(|| panic!("deliberate panic number {}", 42))
            .unwrap()
            .join();
        assert!(r.is_err());
        assert!(panicked());
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.contains("panic: deliberate panic number 42"), "{text}");
        assert!(text.contains("rovl-test-panicker"), "{text}");
        assert!(text.contains("daemon.rs"), "{text}");
    }
}
