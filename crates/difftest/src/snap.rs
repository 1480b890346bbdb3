//! What a user of a mount sees, captured as a value, and the differences
//! between two such captures.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::DirEntryExt;
use std::path::Path;

use crate::rng;
use crate::spec::ERA;
use crate::sys::{self, errno, errno_name};

/// A time as compared: set on purpose (before [`ERA`]) exactly, or "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tm {
    /// seconds, nanoseconds
    Set(i64, i64),
    /// some time after [`ERA`]
    Now,
}

impl Tm {
    fn of(s: i64, ns: i64) -> Tm {
        if s < ERA { Tm::Set(s, ns) } else { Tm::Now }
    }
}

/// One object of the tree as seen through its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    /// `d`, `f`, `l`, `p`, `c`, `b`, `s`, or `?` when lstat failed.
    pub kind: char,
    /// Permission bits.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u64,
    /// Size (not for directories).
    pub size: Option<u64>,
    /// Content fingerprint of regular files.
    pub hash: Option<u64>,
    /// Symlink target.
    pub target: Option<String>,
    /// Device numbers.
    pub rdev: Option<(u32, u32)>,
    /// Every xattr the mount lists, with its value.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time.
    pub mtime: Tm,
    /// Access time.
    pub atime: Tm,
    /// Inode number (compared only as equality classes).
    pub ino: u64,
    /// readdir's d_ino equals lstat's st_ino.
    pub dino_ok: bool,
    /// readdir's d_ino (for messages).
    pub dino: u64,
    /// readdir's d_type agrees with lstat.
    pub dtype_ok: bool,
    /// Errors met while looking at it.
    pub errors: Vec<String>,
}

impl Obj {
    /// A listed name that lstat could not reach.
    fn unreadable(errors: Vec<String>) -> Obj {
        Obj {
            kind: '?',
            perm: 0,
            uid: 0,
            gid: 0,
            nlink: 0,
            size: None,
            hash: None,
            target: None,
            rdev: None,
            xattrs: BTreeMap::new(),
            mtime: Tm::Now,
            atime: Tm::Now,
            ino: 0,
            dino_ok: true,
            dino: 0,
            dtype_ok: true,
            errors,
        }
    }
}

/// A whole tree, plus the open descriptors' inodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Path ("" is the root) to object.
    pub objs: BTreeMap<String, Obj>,
    /// Inode-number equality classes with more than one member (paths,
    /// and `fd<N>` for open slots).
    pub classes: Vec<Vec<String>>,
}

/// Deepest directory level walked (renames can nest directories).
const MAX_DEPTH: usize = 24;

fn kind_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

fn content_hash(p: &Path) -> Result<u64, String> {
    let fd = sys::open(p, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME, 0)
        .map_err(|e| format!("open: {}", errno_name(errno(&e))))?;
    let mut h = Vec::new();
    let mut off = 0u64;
    let r = loop {
        match sys::pread(fd, 1 << 20, off) {
            Ok(b) if b.is_empty() => break Ok(()),
            Ok(b) => {
                off += b.len() as u64;
                h.extend_from_slice(&rng::fnv(&b).to_le_bytes());
            }
            Err(e) => break Err(format!("read: {}", errno_name(errno(&e)))),
        }
    };
    let _ = sys::close(fd);
    r.map(|()| rng::fnv(&h) ^ off)
}

fn look(p: &Path, errors: &mut Vec<String>) -> Option<Obj> {
    let st = match sys::lstat(p) {
        Ok(st) => st,
        Err(e) => {
            errors.push(format!("lstat: {}", errno_name(errno(&e))));
            return None;
        }
    };
    let kind = kind_char(st.st_mode);
    let mut o = Obj {
        kind,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
        size: (kind != 'd').then_some(st.st_size as u64),
        hash: None,
        target: None,
        rdev: matches!(kind, 'c' | 'b').then(|| (libc::major(st.st_rdev), libc::minor(st.st_rdev))),
        xattrs: BTreeMap::new(),
        mtime: Tm::of(st.st_mtime, st.st_mtime_nsec),
        atime: Tm::of(st.st_atime, st.st_atime_nsec),
        ino: st.st_ino,
        dino_ok: true,
        dino: st.st_ino,
        dtype_ok: true,
        errors: Vec::new(),
    };
    match kind {
        'f' => match content_hash(p) {
            Ok(h) => o.hash = Some(h),
            Err(e) => o.errors.push(e),
        },
        'l' => match sys::readlink(p) {
            Ok(t) => o.target = Some(String::from_utf8_lossy(&t).into_owned()),
            Err(e) => o
                .errors
                .push(format!("readlink: {}", errno_name(errno(&e)))),
        },
        _ => {}
    }
    match sys::llistxattr(p) {
        Ok(names) => {
            for n in names {
                match sys::lgetxattr(p, &n) {
                    Ok(v) => {
                        o.xattrs.insert(n, v);
                    }
                    Err(e) => o
                        .errors
                        .push(format!("getxattr {n}: {}", errno_name(errno(&e)))),
                }
            }
        }
        Err(e) => o
            .errors
            .push(format!("listxattr: {}", errno_name(errno(&e)))),
    }
    Some(o)
}

fn walk(root: &Path, rel: &str, depth: usize, out: &mut BTreeMap<String, Obj>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) => {
            if let Some(o) = out.get_mut(rel) {
                o.errors.push(format!("readdir: {}", errno_name(errno(&e))));
            }
            return;
        }
    };
    let mut subdirs = Vec::new();
    for ent in rd {
        let ent = match ent {
            Ok(e) => e,
            Err(e) => {
                if let Some(o) = out.get_mut(rel) {
                    o.errors.push(format!("readdir: {}", errno_name(errno(&e))));
                }
                break;
            }
        };
        let name = ent.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let mut errors = Vec::new();
        let o = match look(&ent.path(), &mut errors) {
            Some(mut o) => {
                o.dino_ok = ent.ino() == o.ino;
                o.dino = ent.ino();
                o.dtype_ok = match ent.file_type() {
                    Ok(t) => {
                        let c = if t.is_dir() {
                            'd'
                        } else if t.is_file() {
                            'f'
                        } else if t.is_symlink() {
                            'l'
                        } else {
                            o.kind
                        };
                        c == o.kind
                    }
                    Err(_) => false,
                };
                o.errors.extend(errors);
                o
            }
            None => Obj::unreadable(errors),
        };
        if o.kind == 'd' {
            subdirs.push(path.clone());
        }
        out.insert(path, o);
    }
    if depth < MAX_DEPTH {
        for d in subdirs {
            walk(root, &d, depth + 1, out);
        }
    }
}

impl Snapshot {
    /// Captures the tree at `root` and the inodes of the open `fds`
    /// (slot, fd).
    pub fn take(root: &Path, fds: &[(usize, i32)]) -> Snapshot {
        let mut objs = BTreeMap::new();
        let mut errors = Vec::new();
        match look(root, &mut errors) {
            Some(mut o) => {
                o.errors.extend(errors);
                objs.insert(String::new(), o);
            }
            None => {
                objs.insert(String::new(), Obj::unreadable(errors));
            }
        }
        walk(root, "", 0, &mut objs);
        let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (p, o) in &objs {
            if o.kind != '?' {
                by_ino.entry(o.ino).or_default().push(p.clone());
            }
        }
        for (slot, fd) in fds {
            if let Ok(st) = sys::fstat(*fd) {
                by_ino
                    .entry(st.st_ino)
                    .or_default()
                    .push(format!("fd{slot}"));
            }
        }
        let mut classes: Vec<Vec<String>> = by_ino.into_values().filter(|v| v.len() > 1).collect();
        for c in &mut classes {
            c.sort();
        }
        classes.sort();
        Snapshot { objs, classes }
    }

    /// The object `path` reaches when every symlink on the way, the last
    /// one included, is followed (relative targets within the tree; None:
    /// missing, absolute, or a loop).
    pub fn resolve(&self, path: &str) -> Option<String> {
        self.walk_to(path, true)
    }

    /// The object `path` names, following symlinks on the way but not a
    /// last one (what rename, unlink and lstat act on).
    pub fn resolve_parent(&self, path: &str) -> Option<String> {
        self.walk_to(path, false)
    }

    /// The object a call on `path` acts on: [`resolve`](Self::resolve)
    /// when it follows a last symlink, else
    /// [`resolve_parent`](Self::resolve_parent).
    pub fn object(&self, path: &str, follow: bool) -> Option<&Obj> {
        self.walk_to(path, follow).and_then(|p| self.objs.get(&p))
    }

    fn walk_to(&self, path: &str, follow_last: bool) -> Option<String> {
        let mut todo: std::collections::VecDeque<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        let mut here = String::new();
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            let next = if here.is_empty() {
                name
            } else {
                format!("{here}/{name}")
            };
            let o = self.objs.get(&next)?;
            if o.kind == 'l' && (follow_last || !todo.is_empty()) {
                hops += 1;
                let t = o.target.as_deref()?;
                if hops > 40 || t.starts_with('/') || t.split('/').any(|c| c == "..") {
                    return None;
                }
                for c in t.split('/').rev().filter(|c| !c.is_empty() && *c != ".") {
                    todo.push_front(c.to_string());
                }
            } else {
                here = next;
            }
        }
        Some(here)
    }

    /// True when `dir` (a path of this snapshot, symlinks resolved) is a
    /// directory the walk listed and found empty.
    pub fn is_empty_dir(&self, dir: &str) -> bool {
        let listed = dir.split('/').filter(|c| !c.is_empty()).count() <= MAX_DEPTH;
        let prefix = format!("{dir}/");
        listed
            && !dir.is_empty()
            && self.objs.get(dir).is_some_and(|o| o.kind == 'd')
            && !self.objs.keys().any(|k| k.starts_with(&prefix))
    }

    /// Paths of regular files.
    pub fn files(&self) -> impl Iterator<Item = &String> {
        self.objs
            .iter()
            .filter(|(_, o)| o.kind == 'f')
            .map(|(p, _)| p)
    }
}

/// One difference between the kernel's view and rovl's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Where ("" is the root; `#classes` for inode classes).
    pub path: String,
    /// Which field.
    pub field: &'static str,
    /// What the kernel shows.
    pub kernel: String,
    /// What rovl shows.
    pub rovl: String,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(
            f,
            "{p}: {}: kernel {} / rovl {}",
            self.field, self.kernel, self.rovl
        )
    }
}

fn fmt_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let v: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", v.join(", "))
}

fn fmt_obj(o: &Obj) -> String {
    let mut s = format!("{} 0{:o} {}:{}", o.kind, o.perm, o.uid, o.gid);
    if let Some(sz) = o.size {
        s.push_str(&format!(" size {sz}"));
    }
    if let Some(t) = &o.target {
        s.push_str(&format!(" -> {t:?}"));
    }
    s
}

/// Fields that can be left out of the comparison (known divergences).
pub const FIELDS: [&str; 16] = [
    "kind",
    "perm",
    "owner",
    "nlink",
    "size",
    "content",
    "target",
    "rdev",
    "xattrs",
    "mtime",
    "atime",
    "d_ino",
    "d_type",
    "errors",
    "exists",
    "inode-classes",
];

/// The differences between `k` (kernel) and `r` (rovl), leaving out the
/// fields in `ignore`.
pub fn diff(k: &Snapshot, r: &Snapshot, ignore: &[String]) -> Vec<Diff> {
    let on = |f: &str| !ignore.iter().any(|i| i == f);
    let mut out = Vec::new();
    let mut push = |path: &str, field: &'static str, kv: String, rv: String| {
        out.push(Diff {
            path: path.to_string(),
            field,
            kernel: kv,
            rovl: rv,
        })
    };
    for (p, ko) in &k.objs {
        let Some(ro) = r.objs.get(p) else {
            if on("exists") {
                push(p, "exists", fmt_obj(ko), "absent".into());
            }
            continue;
        };
        macro_rules! cmp {
            ($field:literal, $a:expr, $b:expr) => {
                if on($field) && $a != $b {
                    push(p, $field, format!("{:?}", $a), format!("{:?}", $b));
                }
            };
        }
        cmp!("kind", ko.kind, ro.kind);
        if ko.kind != ro.kind {
            continue;
        }
        if on("perm") && ko.perm != ro.perm {
            push(
                p,
                "perm",
                format!("0{:o}", ko.perm),
                format!("0{:o}", ro.perm),
            );
        }
        cmp!("owner", (ko.uid, ko.gid), (ro.uid, ro.gid));
        cmp!("nlink", ko.nlink, ro.nlink);
        cmp!("size", ko.size, ro.size);
        if on("content") && ko.hash != ro.hash && ko.size == ro.size {
            push(p, "content", "differs".into(), "differs".into());
        }
        cmp!("target", ko.target, ro.target);
        cmp!("rdev", ko.rdev, ro.rdev);
        if on("xattrs") && ko.xattrs != ro.xattrs {
            push(p, "xattrs", fmt_xattrs(&ko.xattrs), fmt_xattrs(&ro.xattrs));
        }
        cmp!("mtime", ko.mtime, ro.mtime);
        cmp!("atime", ko.atime, ro.atime);
        // What users need is d_ino == st_ino. Kernel overlayfs itself
        // breaks it for some hard links made in the upper layer (K5); only
        // rovl breaking it is a divergence.
        if on("d_ino") && ko.dino_ok && !ro.dino_ok {
            let f = |o: &Obj| format!("d_ino {} st_ino {}", o.dino, o.ino);
            push(p, "d_ino", f(ko), f(ro));
        }
        cmp!("d_type", ko.dtype_ok, ro.dtype_ok);
        cmp!("errors", ko.errors, ro.errors);
    }
    for (p, ro) in &r.objs {
        if !k.objs.contains_key(p) && on("exists") {
            push(p, "exists", "absent".into(), fmt_obj(ro));
        }
    }
    if on("inode-classes") && k.classes != r.classes {
        let only = |a: &Vec<Vec<String>>, b: &Vec<Vec<String>>| -> String {
            let v: Vec<String> = a
                .iter()
                .filter(|c| !b.contains(c))
                .map(|c| format!("[{}]", c.join(" ")))
                .collect();
            v.join(" ")
        };
        push(
            "#classes",
            "inode-classes",
            only(&k.classes, &r.classes),
            only(&r.classes, &k.classes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: char, target: Option<&str>) -> Obj {
        let mut o = Obj::unreadable(Vec::new());
        o.kind = kind;
        o.target = target.map(str::to_string);
        o
    }

    fn snap(entries: &[(&str, char, Option<&str>)]) -> Snapshot {
        let mut objs = BTreeMap::new();
        objs.insert(String::new(), obj('d', None));
        for (p, k, t) in entries {
            objs.insert(p.to_string(), obj(*k, *t));
        }
        Snapshot {
            objs,
            classes: Vec::new(),
        }
    }

    #[test]
    fn resolve_follows_symlinks_on_the_way_and_at_the_end_when_asked() {
        let s = snap(&[
            ("d", 'd', None),
            ("d/f", 'f', None),
            ("d/l", 'l', Some("f")),
            ("d/ll", 'l', Some("l")),
            ("to_d", 'l', Some("d")),
            ("loop", 'l', Some("loop")),
            ("abs", 'l', Some("/etc")),
            ("up", 'l', Some("../d")),
        ]);
        assert_eq!(s.resolve("d/ll").as_deref(), Some("d/f"));
        assert_eq!(s.resolve_parent("d/ll").as_deref(), Some("d/ll"));
        assert_eq!(s.resolve("to_d/l").as_deref(), Some("d/f"));
        assert_eq!(s.resolve_parent("to_d/l").as_deref(), Some("d/l"));
        assert_eq!(s.resolve("d/missing"), None);
        assert_eq!(s.resolve("loop"), None);
        assert_eq!(s.resolve("abs"), None);
        assert_eq!(s.resolve("up"), None);
        assert_eq!(s.resolve_parent("loop").as_deref(), Some("loop"));
    }

    #[test]
    fn an_empty_dir_is_one_the_walk_listed_with_nothing_in_it() {
        let s = snap(&[("d", 'd', None), ("e", 'd', None), ("e/x", 'f', None)]);
        assert!(s.is_empty_dir("d"));
        assert!(!s.is_empty_dir("e"));
        assert!(!s.is_empty_dir("e/x"));
        assert!(!s.is_empty_dir("missing"));
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let s = snap(&[(&deep, 'd', None)]);
        assert!(!s.is_empty_dir(&deep), "not listed: unknown");
    }
}
