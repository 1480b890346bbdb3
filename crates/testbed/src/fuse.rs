//! A guard for FUSE daemons (rovl, fuse-overlayfs) and their mounts.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::Scratch;
use crate::sweep::OWNER_ENV;
use crate::sys::{self, MountEntry, Proc, log_warn};

/// How long `fusermount3 -u` may take before the connection is aborted.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unmount waits out a busy mount before it detaches it.
const BUSY_PATIENCE: Duration = Duration::from_secs(1);
/// Default wait for the mount to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default wait for the daemon to exit after unmount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A FUSE mount made by a daemon that the guard started.
///
/// The guard runs the caller's [`Command`] with stdin from /dev/null,
/// stdout and stderr going to a log file ([`log`](Self::log)), and
/// `ROVL_TESTBED_OWNER=<id>` in its environment. It finds the daemon even
/// after it daemonized (fork + setsid) and left the process tree, two
/// ways: that variable survives daemonizing, and the process holding the
/// mount's FUSE connection is found through `/proc/PID/fdinfo` of its
/// `/dev/fuse` descriptor (`fuse_connection: N`, N being the minor of the
/// mount's device). [`add_daemon_pid`](Self::add_daemon_pid) covers the
/// rest.
///
/// Drop: `fusermount3 -u` (if that hangs for 10 s — a stuck daemon with
/// dirty pages — the connection is aborted; if the mount is still busy
/// a second later it is detached lazily), then waits for the daemons to exit (10 s by default,
/// see [`set_exit_timeout`](Self::set_exit_timeout)), then SIGTERMs and
/// SIGKILLs what is left and reaps its child. Never panics; problems go to
/// stderr.
#[derive(Debug)]
pub struct FuseMount {
    mountpoint: PathBuf,
    id: Option<u32>,
    conn: Option<u32>,
    child: Option<Child>,
    daemons: Vec<Proc>,
    exit_timeout: Duration,
    log: PathBuf,
    scratch: Scratch,
}

impl FuseMount {
    /// Runs `cmd` and waits (20 s at most) until a new FUSE mount shows up
    /// at `mountpoint`. Fails, with the program's output, if the program
    /// exits unsuccessfully first or nothing gets mounted in time.
    pub fn spawn(cmd: Command, mountpoint: impl AsRef<Path>) -> io::Result<FuseMount> {
        Self::spawn_timeout(cmd, mountpoint, MOUNT_TIMEOUT)
    }

    /// [`spawn`](Self::spawn) with another timeout for the mount to appear.
    pub fn spawn_timeout(
        mut cmd: Command,
        mountpoint: impl AsRef<Path>,
        timeout: Duration,
    ) -> io::Result<FuseMount> {
        let scratch = Scratch::new()?;
        let mountpoint = mountpoint.as_ref().canonicalize()?;
        let log = scratch.join("daemon.log");
        let out = File::create(&log)?;
        let before: Vec<u32> = sys::mounts()?
            .into_iter()
            .filter(|m| m.mount_point == mountpoint)
            .map(|m| m.id)
            .collect();
        cmd.env(OWNER_ENV, scratch.name())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .map_err(|e| sys::ctx(e, format!("spawning {:?}", cmd.get_program())))?;
        let mut this = FuseMount {
            mountpoint,
            id: None,
            conn: None,
            child: Some(child),
            daemons: Vec::new(),
            exit_timeout: EXIT_TIMEOUT,
            log,
            scratch,
        };
        let mut failed: Option<ExitStatus> = None;
        sys::wait_until(timeout, || {
            if let Some(m) = sys::mounts().unwrap_or_default().into_iter().find(|m| {
                m.mount_point == this.mountpoint && m.is_fuse() && !before.contains(&m.id)
            }) {
                this.id = Some(m.id);
                this.conn = Some(m.dev.1);
                return true;
            }
            if let Some(c) = this.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    this.child = None;
                    if !st.success() {
                        failed = Some(st);
                        return true;
                    }
                }
            }
            false
        });
        if this.id.is_none() {
            let why = match failed {
                Some(st) => format!("exited with {st} before mounting"),
                None => format!("mounted nothing within {timeout:?}"),
            };
            // Drop of `this` reaps whatever was started.
            return Err(io::Error::other(format!(
                "{:?} {why}; output:\n{}",
                cmd.get_program(),
                this.log()
            )));
        }
        this.refresh_daemons();
        Ok(this)
    }

    /// The mount point (canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The FUSE connection number (`/sys/fs/fuse/connections/N`).
    pub fn connection(&self) -> Option<u32> {
        self.conn
    }

    /// The connection number while it is still this mount's: once the
    /// mount is gone the kernel frees the number (with the fusectl entry),
    /// and the next FUSE mount anywhere on the machine, another test's,
    /// may get it. Aborting it or signalling its holders then would hit
    /// that mount.
    fn live_conn(&self) -> Option<u32> {
        live_conn(self.id, &self.mountpoint, self.conn)
    }

    /// The mount's mountinfo line, if it is still mounted.
    pub fn entry(&self) -> Option<MountEntry> {
        sys::mount_by_id(self.id?, &self.mountpoint)
    }

    /// Whether the mount is still there (also true for a dead mount whose
    /// daemon was killed: it stays until unmounted).
    pub fn is_mounted(&self) -> bool {
        self.entry().is_some()
    }

    /// Everything the daemon wrote to stdout/stderr so far (a daemonizing
    /// program usually stops writing here once it is in the background).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Pids of the daemon processes that are still running: the spawned
    /// child if it has not exited, the holders of the FUSE connection,
    /// everything carrying our environment marker, and pids given to
    /// [`add_daemon_pid`](Self::add_daemon_pid).
    pub fn daemon_pids(&mut self) -> Vec<u32> {
        self.refresh_daemons();
        let mut v: Vec<u32> = self
            .daemons
            .iter()
            .filter(|p| p.alive())
            .map(|p| p.pid)
            .collect();
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) && !v.contains(&c.id()) {
                v.push(c.id());
            }
        }
        v
    }

    /// Tells the guard about a daemon process it could not find itself.
    pub fn add_daemon_pid(&mut self, pid: u32) {
        if let Some(p) = Proc::get(pid) {
            if !self.daemons.contains(&p) {
                self.daemons.push(p);
            }
        }
    }

    /// How long drop and [`unmount`](Self::unmount) wait for the daemon to
    /// exit by itself after unmounting (default 10 s) before killing it.
    pub fn set_exit_timeout(&mut self, timeout: Duration) {
        self.exit_timeout = timeout;
    }

    /// Aborts the FUSE connection (`echo 1 > .../connections/N/abort`):
    /// every pending and later request fails with ENOTCONN. The last
    /// resort for a hung daemon; the mount stays until unmounted.
    pub fn abort(&self) -> io::Result<()> {
        match self.live_conn() {
            Some(c) => sys::fuse_abort(c),
            None => Ok(()),
        }
    }

    /// SIGKILLs every daemon process and waits until they are gone,
    /// leaving the dead mount behind (accesses fail with ENOTCONN) for the
    /// test to look at; drop unmounts it.
    pub fn kill9(&mut self) -> io::Result<()> {
        self.refresh_daemons();
        for p in &self.daemons {
            p.signal(libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        let daemons = self.daemons.clone();
        // Dead means every thread gone, so that the device is closed and
        // the mount reports ENOTCONN, not a connection still being aborted.
        if !sys::wait_until(Duration::from_secs(10), || {
            daemons.iter().all(|p| p.exited())
        }) {
            return Err(io::Error::other("daemon survived SIGKILL for 10 s"));
        }
        Ok(())
    }

    /// Unmounts and waits for the daemon like drop does, but reports
    /// problems: an error if the unmount had to be lazy or forced, or if
    /// the daemon had to be killed. Returns the exit status of the spawned
    /// child when that was the daemon (a program run in the foreground);
    /// `None` for a daemonizing program, whose status the guard cannot see.
    pub fn unmount(mut self) -> io::Result<Option<ExitStatus>> {
        self.shutdown()
    }

    fn refresh_daemons(&mut self) {
        let mut found = sys::procs_with_env(OWNER_ENV, self.scratch.name(), false);
        if let Some(c) = self.live_conn() {
            found.extend(sys::fuse_conn_holders(c));
        }
        for p in found {
            if !self.daemons.contains(&p) {
                self.daemons.push(p);
            }
        }
    }

    fn all_gone(&mut self) -> bool {
        let child_gone = match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        };
        child_gone && self.daemons.iter().all(|p| !p.alive())
    }

    fn shutdown(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut problems: Vec<String> = Vec::new();
        self.refresh_daemons();
        if self.is_mounted() {
            if let Err(e) = self.unmount_mount() {
                problems.push(e.to_string());
            }
        }
        self.id = None;
        let timeout = self.exit_timeout;
        if !sys::wait_until(timeout, || self.all_gone()) {
            problems.push(format!(
                "daemon still running {timeout:?} after unmount; killed it"
            ));
            let _ = self.abort();
            self.refresh_daemons();
            for p in &self.daemons {
                p.signal(libc::SIGTERM);
                p.signal(libc::SIGCONT); // a stopped daemon must see it
            }
            if let Some(c) = &self.child {
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            }
            if !sys::wait_until(Duration::from_secs(2), || self.all_gone()) {
                for p in &self.daemons {
                    p.signal(libc::SIGKILL);
                }
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                }
            }
        }
        let status = match self.child.take() {
            Some(mut c) => Some(c.wait()?),
            None => None,
        };
        if problems.is_empty() {
            Ok(status)
        } else {
            Err(io::Error::other(format!(
                "{}: {}",
                self.mountpoint.display(),
                problems.join("; ")
            )))
        }
    }

    /// fusermount3 -u, with abort on hang and lazy detach if busy.
    fn unmount_mount(&mut self) -> io::Result<()> {
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u").arg(&self.mountpoint);
        let (id, conn) = (self.id, self.conn);
        let mountpoint = self.mountpoint.clone();
        let res = run_timeout(&mut cmd, UNMOUNT_TIMEOUT, || {
            if let Some(c) = live_conn(id, &mountpoint, conn) {
                let _ = sys::fuse_abort(c);
            }
        });
        if !self.is_mounted() {
            return match res {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(io::Error::other(
                    "fusermount3 -u hung; aborted the connection",
                )),
                Err(e) => Err(e),
            };
        }
        let hung = matches!(res, Ok(None));
        let why = match res {
            Ok(Some(out)) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Ok(None) => "fusermount3 -u hung; aborted the connection".to_string(),
            Err(e) => e.to_string(),
        };
        // A mount that was busy for a moment is not a problem of the
        // daemon's: a process another test thread forked holds copies of
        // this thread's descriptors until it execs. Only a mount still
        // busy after a second is detached lazily and reported.
        let lazy = match self.id {
            Some(id) => sys::unmount_id(&self.mountpoint, id, BUSY_PATIENCE)?,
            None => true,
        };
        match (hung, lazy) {
            (false, false) => Ok(()),
            (_, true) => Err(io::Error::other(format!("{why}; detached lazily"))),
            (true, false) => Err(io::Error::other(why)),
        }
    }
}

/// `conn` if the mount `id` at `mountpoint` is still there.
fn live_conn(id: Option<u32>, mountpoint: &Path, conn: Option<u32>) -> Option<u32> {
    let entry = sys::mount_by_id(id?, mountpoint)?;
    conn.filter(|c| *c == entry.dev.1)
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log_warn!("{e}");
        }
    }
}

/// Runs `cmd` to completion, or calls `on_timeout` after `timeout` (to
/// unblock it), then kills it. `Ok(None)` if it timed out.
fn run_timeout(
    cmd: &mut Command,
    timeout: Duration,
    on_timeout: impl FnOnce(),
) -> io::Result<Option<Output>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| sys::ctx(e, format!("spawning {:?}", cmd.get_program())))?;
    let mut done = false;
    sys::wait_until(timeout, || {
        done = matches!(child.try_wait(), Ok(Some(_)));
        done
    });
    if done {
        return child.wait_with_output().map(Some);
    }
    on_timeout();
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn run_timeout_unblocks_and_kills_a_hung_command() {
        let t = Instant::now();
        let mut called = false;
        let r = run_timeout(
            Command::new("sleep").arg("30"),
            Duration::from_millis(100),
            || called = true,
        )
        .unwrap();
        assert!(r.is_none());
        assert!(called);
        assert!(t.elapsed() < Duration::from_secs(5));
        let r = run_timeout(
            Command::new("true").arg("x"),
            Duration::from_secs(5),
            || panic!("not hung"),
        );
        assert!(r.unwrap().unwrap().status.success());
    }
}
