//! The systems under comparison and the fresh environment each
//! measurement runs in: a new ext4 upper on a loop device, and one or more
//! mounts of the shared lowers on it. Everything is a testbed guard, so a
//! failed or interrupted measurement leaves no mount, loop device or
//! daemon behind.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testbed::{Ext4Disk, FuseMount, KernelOverlay, Scratch, escape_option_path as esc};

use crate::layers::Layers;

/// One system of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// The ext4 upper filesystem itself (reads from the lower directories
    /// where the overlays read them): the physical reference.
    Native,
    /// Kernel overlayfs, default options.
    Kernel,
    /// Debian's fuse-overlayfs, default options.
    FuseOverlayfs,
    /// rovl, default options (normal fsync mode, passthrough as root).
    Rovl,
}

/// Every system, in table order.
pub const ALL: [System; 4] = [
    System::Native,
    System::Kernel,
    System::FuseOverlayfs,
    System::Rovl,
];

impl System {
    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            System::Native => "native",
            System::Kernel => "kernel",
            System::FuseOverlayfs => "fuse-overlayfs",
            System::Rovl => "rovl",
        }
    }

    /// Parses a name given to `--systems`.
    pub fn parse(s: &str) -> Option<System> {
        ALL.into_iter().find(|x| x.name() == s)
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Programs the FUSE systems run.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The rovl binary (release build).
    pub rovl: PathBuf,
    /// The fuse-overlayfs binary.
    pub fuse_overlayfs: PathBuf,
}

#[derive(Debug)]
enum Mounted {
    Fuse(Box<FuseMount>),
    Kernel(KernelOverlay),
}

/// A fresh environment for one measurement. Field order is drop order:
/// the mounts go first, then the ext4 upper, then the scratch directory
/// holding the mount points.
#[derive(Debug)]
pub struct Env {
    mounts: Vec<Mounted>,
    views: Vec<PathBuf>,
    /// The ext4 holding the upper layers.
    pub disk: Ext4Disk,
    scratch: Scratch,
    /// Which system this is.
    pub system: System,
}

impl Env {
    /// A new ext4 upper of `disk_size` bytes and `n` mounts of `system`
    /// over `layers` on it, each with its own upper and work directory
    /// (for the native system: `n` plain directories on the ext4).
    pub fn new(
        system: System,
        tools: &Tools,
        layers: &Layers,
        disk_size: u64,
        n: usize,
    ) -> io::Result<Env> {
        let scratch = Scratch::new()?;
        let disk = Ext4Disk::new(disk_size)?;
        let mut env = Env {
            mounts: Vec::new(),
            views: Vec::new(),
            disk,
            scratch,
            system,
        };
        for i in 0..n {
            let upper = env.disk.path().join(format!("upper{i}"));
            let work = env.disk.path().join(format!("work{i}"));
            fs::create_dir(&upper)?;
            if system == System::Native {
                env.views.push(upper);
                continue;
            }
            fs::create_dir(&work)?;
            let mnt = env.scratch.mkdir(format!("mnt{i}"))?;
            let lowers: Vec<&Path> = layers.lowers.iter().map(PathBuf::as_path).collect();
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lowers.iter().map(|l| esc(l)).collect::<Vec<_>>().join(":"),
                esc(&upper),
                esc(&work)
            );
            let m = match system {
                System::Native => unreachable!(),
                System::Kernel => Mounted::Kernel(KernelOverlay::mount(
                    &lowers,
                    Some(&upper),
                    Some(&work),
                    "",
                    &mnt,
                )?),
                System::FuseOverlayfs | System::Rovl => {
                    let prog = if system == System::Rovl {
                        &tools.rovl
                    } else {
                        &tools.fuse_overlayfs
                    };
                    let mut cmd = Command::new(prog);
                    cmd.arg("-o").arg(&opts).arg(&mnt);
                    let mut fm = FuseMount::spawn(cmd, &mnt)?;
                    // rovl's unmount makes what it still holds durable
                    // (up to a few GiB here): give it time.
                    fm.set_exit_timeout(Duration::from_secs(300));
                    Mounted::Fuse(Box::new(fm))
                }
            };
            env.mounts.push(m);
            env.views.push(mnt);
        }
        Ok(env)
    }

    /// Where workloads write, in mount `i`: its mount point, or for the
    /// native system a directory on the ext4.
    pub fn view(&self, i: usize) -> &Path {
        &self.views[i]
    }

    /// The path through which the merged path `rel` is read in mount 0:
    /// in the mount, or for the native system in the lower that holds it.
    pub fn read_path(&self, layers: &Layers, rel: &str) -> PathBuf {
        match self.system {
            System::Native => layers.lower_of(rel),
            _ => self.views[0].join(rel),
        }
    }

    /// Sum of VmRSS (KiB) of the daemon processes of mount `i`, if it is a
    /// FUSE mount.
    pub fn daemon_rss_kib(&mut self, i: usize) -> Option<u64> {
        let Mounted::Fuse(fm) = self.mounts.get_mut(i)? else {
            return None;
        };
        let mut total = 0;
        for pid in fm.daemon_pids() {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())?;
            total += kib;
        }
        Some(total)
    }

    /// The daemon pids of mount `i` (for profiling).
    pub fn daemon_pids(&mut self, i: usize) -> Vec<u32> {
        match self.mounts.get_mut(i) {
            Some(Mounted::Fuse(fm)) => fm.daemon_pids(),
            _ => Vec::new(),
        }
    }

    /// Unmounts everything now and reports problems (drop does the same
    /// silently).
    pub fn finish(mut self) -> io::Result<()> {
        let mut errors = Vec::new();
        for m in self.mounts.drain(..).rev() {
            let r = match m {
                Mounted::Fuse(fm) => fm.unmount().map(|_| ()),
                Mounted::Kernel(k) => k.unmount().map(|_| ()),
            };
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(errors.join("; ")))
        }
    }
}
