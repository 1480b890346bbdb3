//! The command line: fuse-overlayfs compatible mount syntax, plus the
//! `umount`, `sync` and `status` commands (SPEC §1).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// rovl: an overlay filesystem for containers that never loses a writeback
/// error.
#[derive(Debug, Parser)]
#[command(
    name = "rovl",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Mount:  rovl [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W [SOURCE] MOUNTPOINT"
)]
pub struct Cli {
    /// Command other than mounting.
    #[command(subcommand)]
    pub cmd: Option<Command>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Debug log to stderr (implies -f).
    #[arg(short = 'd')]
    pub debug: bool,
    /// Mount options, comma-separated (may be repeated).
    #[arg(short = 'o', value_name = "OPTS", action = clap::ArgAction::Append)]
    pub opts: Vec<String>,
    /// MOUNTPOINT, optionally after a SOURCE word (accepted and ignored).
    #[arg(value_name = "MOUNTPOINT", required = true, num_args = 1..=2)]
    pub positional: Vec<OsString>,
}

/// Commands besides mounting.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Unmount MOUNTPOINT, wait for the daemon to finish, return its result.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Make everything the mount(s) holding PATH wrote durable; report
    /// writeback errors.
    Sync {
        /// Files or directories on rovl mounts.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show mode, dirty data, writeback errors and last sync of a mount, or
    /// the error journal of an unmounted stack given its workdir.
    Status {
        /// A mount point or a workdir.
        target: PathBuf,
        /// Print JSON (schema in the README).
        #[arg(long)]
        json: bool,
    },
}

/// Writeback mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Normal: fsync and sync reach the upper filesystem.
    #[default]
    Normal,
    /// Volatile: never force writeback while mounted (E5).
    Volatile,
}

/// A `passthrough=` or similar on/off/auto switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Switch {
    /// Decide from the environment.
    #[default]
    Auto,
    /// Forced on.
    On,
    /// Forced off.
    Off,
}

/// Parsed mount options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOptions {
    /// Lower layers, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// Upper layer.
    pub upperdir: Option<PathBuf>,
    /// Work directory.
    pub workdir: Option<PathBuf>,
    /// Writeback mode.
    pub sync_mode: SyncMode,
    /// Read-only mount.
    pub ro: bool,
    /// Let other users in (`allow_other`; on by default when root).
    pub allow_other: bool,
    /// `allow_root`.
    pub allow_root: bool,
    /// `noatime` and friends, `nodev`, `nosuid`, `noexec`, as VFS flags.
    pub noatime: bool,
    /// `nodev`.
    pub nodev: bool,
    /// `nosuid`.
    pub nosuid: bool,
    /// `noexec`.
    pub noexec: bool,
    /// `dirsync`/`sync` requested.
    pub sync_io: bool,
    /// FUSE passthrough: `passthrough=on|off|auto`.
    pub passthrough: Switch,
    /// Entry/attribute cache timeout in seconds (`timeout=`).
    pub timeout: Option<f64>,
    /// Number of FUSE threads (`threads=`).
    pub threads: Option<usize>,
    /// Unknown options, warned about and ignored.
    pub ignored: Vec<String>,
}

/// Splits `s` at unescaped `sep`; `\sep` and `\\` are unescaped.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep || n == '\\' => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Undoes the escapes of a single path value (`upperdir=`, `workdir=`):
/// `\\` and `\:` stand for `\` and `:`, as in `lowerdir=` and as kernel
/// overlayfs reads them; an unescaped `:` is kept as it is.
fn unescape_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(n) if n == ':' || n == '\\' => out.push(n),
            Some(n) => {
                out.push('\\');
                out.push(n);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Splits one `-o` argument into options; `\,` escapes a comma (and keeps
/// other escapes for the option's own parser).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(',') => cur.push(','),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            }
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

const ROOTLESS: [&str; 6] = [
    "uidmapping",
    "gidmapping",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
];

/// Options the kernel or FUSE understand and rovl accepts as they are.
const ACCEPTED: [&str; 22] = [
    "rw",
    "atime",
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "dev",
    "suid",
    "exec",
    "async",
    "default_permissions",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "kernel_cache",
    "auto_cache",
];

/// Parses the `-o` arguments of a mount.
pub fn parse_mount_options(args: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    let mut volatile = false;
    let mut normal: Option<String> = None;
    for arg in args {
        for opt in split_options(arg) {
            if opt.is_empty() {
                continue;
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            if ROOTLESS.contains(&key) {
                return Err(format!(
                    "option '{key}' is not supported yet (rootless mode does not exist yet)"
                ));
            }
            let need = |v: Option<&str>| -> Result<String, String> {
                match v {
                    Some(v) if !v.is_empty() => Ok(v.to_string()),
                    _ => Err(format!("option '{key}' needs a value")),
                }
            };
            match key {
                "lowerdir" => {
                    let v = need(value)?;
                    let dirs: Vec<PathBuf> = split_escaped(&v, ':')
                        .into_iter()
                        .map(PathBuf::from)
                        .collect();
                    if dirs.iter().any(|d| d.as_os_str().is_empty()) {
                        return Err(format!("lowerdir '{v}' has an empty layer"));
                    }
                    o.lowerdirs = dirs;
                }
                "lowerdir+" => o.lowerdirs.push(PathBuf::from(need(value)?)),
                "upperdir" => o.upperdir = Some(PathBuf::from(unescape_path(&need(value)?))),
                "workdir" => o.workdir = Some(PathBuf::from(unescape_path(&need(value)?))),
                "volatile" if value.is_none() => volatile = true,
                "fsync" => match value.unwrap_or("") {
                    "0" | "volatile" => volatile = true,
                    "1" | "auto" | "strict" => normal = Some(opt.clone()),
                    other => {
                        return Err(format!(
                            "invalid value '{other}' for fsync= (use 0, 1, auto, strict or volatile)"
                        ));
                    }
                },
                "ro" if value.is_none() => o.ro = true,
                "allow_other" if value.is_none() => o.allow_other = true,
                "allow_root" if value.is_none() => o.allow_root = true,
                "noatime" if value.is_none() => o.noatime = true,
                "nodev" if value.is_none() => o.nodev = true,
                "nosuid" if value.is_none() => o.nosuid = true,
                "noexec" if value.is_none() => o.noexec = true,
                "sync" | "dirsync" if value.is_none() => o.sync_io = true,
                "context" | "fscontext" | "defcontext" | "rootcontext" | "fsname" | "subtype" => {}
                "passthrough" => {
                    o.passthrough = match value.unwrap_or("on") {
                        "on" | "1" | "true" => Switch::On,
                        "off" | "0" | "false" => Switch::Off,
                        "auto" => Switch::Auto,
                        other => {
                            return Err(format!(
                                "invalid value '{other}' for passthrough= (use on, off or auto)"
                            ));
                        }
                    }
                }
                "timeout" => {
                    let v = need(value)?;
                    let t: f64 = v
                        .parse()
                        .ok()
                        .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                        .ok_or_else(|| format!("invalid value '{v}' for timeout="))?;
                    o.timeout = Some(t);
                }
                "threads" => {
                    let v = need(value)?;
                    let n: usize = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| format!("invalid value '{v}' for threads= (1 to 256)"))?;
                    o.threads = Some(n);
                }
                k if ACCEPTED.contains(&k) && value.is_none() => {}
                _ => o.ignored.push(opt.clone()),
            }
        }
    }
    if volatile {
        if let Some(n) = normal {
            return Err(format!("conflicting options: volatile and {n}"));
        }
        o.sync_mode = SyncMode::Volatile;
    }
    if o.lowerdirs.is_empty() {
        return Err("no lowerdir given (need -o lowerdir=DIR[:DIR...])".into());
    }
    if o.upperdir.is_some() != o.workdir.is_some() {
        return Err(if o.upperdir.is_some() {
            "upperdir needs workdir".into()
        } else {
            "workdir needs upperdir".into()
        });
    }
    if o.upperdir.is_none() && o.sync_mode == SyncMode::Volatile {
        return Err("volatile needs upperdir (a stack of lowers is read-only)".into());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Result<MountOptions, String> {
        parse_mount_options(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn podman_options() {
        let o =
            parse(&["lowerdir=l/AAA:l/BBB,upperdir=ID/diff,workdir=ID/work,,volatile"]).unwrap();
        assert_eq!(
            o.lowerdirs,
            vec![PathBuf::from("l/AAA"), PathBuf::from("l/BBB")]
        );
        assert_eq!(o.upperdir, Some(PathBuf::from("ID/diff")));
        assert_eq!(o.workdir, Some(PathBuf::from("ID/work")));
        assert_eq!(o.sync_mode, SyncMode::Volatile);
    }

    #[test]
    fn escaped_colon_and_comma() {
        let o = parse(&[r"lowerdir=a\:b:c,upperdir=u\,x,workdir=w"]).unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("a:b"), PathBuf::from("c")]);
        assert_eq!(o.upperdir, Some(PathBuf::from("u,x")));
        let o = parse(&[r"lowerdir=a,upperdir=u\\b\:c:d,workdir=w\n"]).unwrap();
        assert_eq!(o.upperdir, Some(PathBuf::from(r"u\b:c:d")));
        assert_eq!(o.workdir, Some(PathBuf::from(r"w\n")));
    }

    #[test]
    fn repeated_o_and_spellings_of_volatile() {
        let o = parse(&["lowerdir=a", "upperdir=u,workdir=w", "fsync=0"]).unwrap();
        assert_eq!(o.sync_mode, SyncMode::Volatile);
        let o = parse(&["lowerdir=a,upperdir=u,workdir=w,fsync=volatile"]).unwrap();
        assert_eq!(o.sync_mode, SyncMode::Volatile);
        let o = parse(&["lowerdir=a,upperdir=u,workdir=w,fsync=strict"]).unwrap();
        assert_eq!(o.sync_mode, SyncMode::Normal);
    }

    #[test]
    fn unknown_options_are_ignored_not_fatal() {
        let o = parse(&["lowerdir=a,frobnicate,metacopy=on,noatime,nodev,context=\"x\""]).unwrap();
        assert_eq!(
            o.ignored,
            vec!["frobnicate".to_string(), "metacopy=on".to_string()]
        );
        assert!(o.noatime && o.nodev);
    }

    #[test]
    fn bad_and_conflicting_options_fail() {
        assert!(
            parse(&["upperdir=u,workdir=w"])
                .unwrap_err()
                .contains("lowerdir")
        );
        assert!(
            parse(&["lowerdir=a,upperdir=u"])
                .unwrap_err()
                .contains("workdir")
        );
        assert!(
            parse(&["lowerdir=a,workdir=w"])
                .unwrap_err()
                .contains("upperdir")
        );
        assert!(
            parse(&["lowerdir=a,upperdir=u,workdir=w,volatile,fsync=1"])
                .unwrap_err()
                .contains("conflicting")
        );
        assert!(
            parse(&["lowerdir=a,upperdir=u,workdir=w,fsync=maybe"])
                .unwrap_err()
                .contains("fsync")
        );
        assert!(parse(&["lowerdir=a::b"]).unwrap_err().contains("empty"));
        assert!(parse(&["lowerdir="]).unwrap_err().contains("value"));
        assert!(
            parse(&["lowerdir=a,volatile"])
                .unwrap_err()
                .contains("upperdir")
        );
        for r in ROOTLESS {
            let e = parse(&[&format!("lowerdir=a,{r}=1")]).unwrap_err();
            assert!(e.contains("not supported yet"), "{e}");
        }
    }
}
