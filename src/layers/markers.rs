//! The on-disk vocabulary of overlay layers: whiteouts, opaque markers,
//! redirects and origins, in every form SPEC §2 lists.
//!
//! Read side: every form kernel overlayfs, fuse-overlayfs and
//! containers/storage write. Write side: the kernel's forms (0/0 character
//! device whiteouts, `trusted.overlay.*` xattrs), so an upper written by rovl
//! mounts under kernel overlayfs unchanged.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::sys::{self, Errno, FileType, Stat, SysResult, xattr};

/// Prefix of the kernel's private xattrs (hidden from users).
pub const TRUSTED_OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// Prefix of the user-namespace variant of the private xattrs.
pub const USER_OVERLAY_PREFIX: &[u8] = b"user.overlay.";
/// Prefix of fuse-overlayfs' private xattrs.
pub const USER_FUSEOVERLAYFS_PREFIX: &[u8] = b"user.fuseoverlayfs.";

/// Opaque marker xattrs, in the order they are consulted.
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// The opaque xattr rovl writes.
pub const OPAQUE: &str = "trusted.overlay.opaque";
/// Redirect xattrs (kernel form first).
pub const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];
/// The redirect xattr rovl writes.
pub const REDIRECT: &str = "trusted.overlay.redirect";
/// The origin xattr (file handle of the lower object an upper was copied from).
pub const ORIGIN: &str = "trusted.overlay.origin";
/// Marks an upper directory that holds copied-up entries (whose st_ino is
/// their origin's, not their own).
pub const IMPURE: &str = "trusted.overlay.impure";
/// Xattr whiteout markers (kernel 6.7+), found on zero-size regular files
/// inside a directory whose opaque xattr is `x`.
pub const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
/// Prefix of whiteout files written by containers/storage and rootless tools.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Opaque-directory marker file written by containers/storage.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// Where a user's `trusted.overlay.X` is stored: `trusted.overlay.overlay.X`
/// (the kernel's escaping, so that an overlay nested on this one keeps its
/// own markers without changing what the layers mean here).
const TRUSTED_OVERLAY_ESCAPED: &[u8] = b"trusted.overlay.overlay";

fn is_escaped_xattr(b: &[u8]) -> bool {
    b.starts_with(TRUSTED_OVERLAY_ESCAPED)
}

/// True for xattr names that belong to an overlay implementation: never
/// shown to users, never copied up.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    (b.starts_with(TRUSTED_OVERLAY_PREFIX) && !is_escaped_xattr(b))
        || b.starts_with(USER_OVERLAY_PREFIX)
        || b.starts_with(USER_FUSEOVERLAYFS_PREFIX)
}

/// The name in the layers of an xattr a user names `name`: `trusted.overlay.X`
/// is escaped as the kernel does; `user.overlay.*` and `user.fuseoverlayfs.*`
/// (markers rovl reads in every layer) cannot be reached (`None`).
pub fn xattr_to_layer(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    if let Some(rest) = b.strip_prefix(TRUSTED_OVERLAY_PREFIX) {
        let mut v = TRUSTED_OVERLAY_ESCAPED.to_vec();
        v.push(b'.');
        v.extend_from_slice(rest);
        return Some(OsString::from_vec(v));
    }
    if b.starts_with(USER_OVERLAY_PREFIX) || b.starts_with(USER_FUSEOVERLAYFS_PREFIX) {
        return None;
    }
    Some(name.to_owned())
}

/// The name users see for xattr `name` of a layer, `None` when it is
/// private.
pub fn xattr_from_layer(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    if let Some(rest) = b.strip_prefix(TRUSTED_OVERLAY_ESCAPED) {
        let rest = rest.strip_prefix(b".")?;
        let mut v = TRUSTED_OVERLAY_PREFIX.to_vec();
        v.extend_from_slice(rest);
        return Some(OsString::from_vec(v));
    }
    if is_private_xattr(name) {
        return None;
    }
    Some(name.to_owned())
}

/// True when `st` is a kernel-style whiteout: a character device 0/0.
pub fn is_whiteout_stat(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// For a `.wh.NAME` entry, the NAME it whites out; `None` for other names
/// and for the opaque marker `.wh..wh..opq`.
pub fn whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == WH_OPAQUE {
        return None;
    }
    b.strip_prefix(WH_PREFIX)
        .filter(|rest| !rest.is_empty())
        .map(OsStr::from_bytes)
}

/// True for names a layer uses as markers (`.wh.*`): never shown, and never
/// creatable through the mount since they would change meaning on remount.
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// The `.wh.NAME` name that whites out `name`.
pub fn whiteout_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// What a directory in a layer says about the layers below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirMarks {
    /// Lower layers are hidden below this directory.
    pub opaque: bool,
    /// Entries may be xattr whiteouts (opaque xattr value `x`).
    pub xwhiteouts: bool,
}

/// Reads the opaque markers of directory `dir` (an fd of the directory).
pub fn dir_marks(dir: BorrowedFd<'_>) -> SysResult<DirMarks> {
    let (mut marks, _) = dir_xattr_marks(dir)?;
    if !marks.opaque && has_opaque_file(dir)? {
        marks.opaque = true;
    }
    Ok(marks)
}

/// The markers directory `dir` carries as xattrs (opaque, xattr
/// whiteouts) and its redirect, asking only for the marker xattrs it has:
/// one `listxattr` instead of a `getxattr` per marker name (most layer
/// directories have none). The `.wh..wh..opq` file form is separate
/// ([`has_opaque_file`]): looking for an absent name means searching the
/// whole directory, which a lookup does only when there is a directory
/// below to hide.
pub fn dir_xattr_marks(dir: BorrowedFd<'_>) -> SysResult<(DirMarks, Option<Redirect>)> {
    let names = xattr::list(dir)?;
    let has = |n: &str| names.iter().any(|x| x.as_bytes() == n.as_bytes());
    let mut marks = DirMarks::default();
    for name in OPAQUE_XATTRS {
        if !has(name) {
            continue;
        }
        match xattr::get(dir, OsStr::new(name))? {
            Some(v) if v == b"y" => marks.opaque = true,
            Some(v) if v == b"x" => marks.xwhiteouts = true,
            _ => {}
        }
    }
    let mut redirect = None;
    for name in REDIRECT_XATTRS {
        if !has(name) {
            continue;
        }
        if let Some(v) = xattr::get(dir, OsStr::new(name))? {
            redirect = parse_redirect(&v);
            break;
        }
    }
    Ok((marks, redirect))
}

/// True when directory `dir` holds the `.wh..wh..opq` opaque marker file.
pub fn has_opaque_file(dir: BorrowedFd<'_>) -> SysResult<bool> {
    Ok(sys::stat_at(dir, OsStr::from_bytes(WH_OPAQUE))?.is_some())
}

/// True when entry `name` of `dir` (already stat'ed as `st`) is an xattr
/// whiteout. Only meaningful inside a directory with `xwhiteouts`.
pub fn is_xattr_whiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> SysResult<bool> {
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size != 0 {
        return Ok(false);
    }
    let fd = match sys::open_path_at(dir, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    for x in WHITEOUT_XATTRS {
        if xattr::get(std::os::fd::AsFd::as_fd(&fd), OsStr::new(x))?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A redirect as stored on a renamed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Path from the root of the lower layers.
    Absolute(Vec<OsString>),
    /// A name in the parent's lower directories.
    Relative(OsString),
}

/// Longest redirect path rovl follows (components).
const MAX_REDIRECT_DEPTH: usize = 256;

/// Parses a redirect value. Hostile values (`..`, empty components, NUL,
/// absurd depth) are rejected as `None`: they are treated as no redirect.
pub fn parse_redirect(v: &[u8]) -> Option<Redirect> {
    if v.is_empty() || v.contains(&0) {
        return None;
    }
    if let Some(rest) = v.strip_prefix(b"/") {
        let mut comps = Vec::new();
        for c in rest.split(|b| *b == b'/') {
            if c.is_empty() {
                continue;
            }
            if c == b"." || c == b".." || c.len() > 255 {
                return None;
            }
            comps.push(OsString::from_vec(c.to_vec()));
        }
        if comps.len() > MAX_REDIRECT_DEPTH {
            return None;
        }
        Some(Redirect::Absolute(comps))
    } else {
        if v == b"." || v == b".." || v.contains(&b'/') || v.len() > 255 {
            return None;
        }
        Some(Redirect::Relative(OsString::from_vec(v.to_vec())))
    }
}

/// Reads the redirect of directory `dir`, if any.
pub fn read_redirect(dir: BorrowedFd<'_>) -> SysResult<Option<Redirect>> {
    for name in REDIRECT_XATTRS {
        if let Some(v) = xattr::get(dir, OsStr::new(name))? {
            return Ok(parse_redirect(&v));
        }
    }
    Ok(None)
}

/// Encodes an absolute redirect value.
pub fn encode_redirect(path: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for c in path {
        v.push(b'/');
        v.extend_from_slice(c.as_bytes());
    }
    if v.is_empty() {
        v.push(b'/');
    }
    v
}

/// An origin record: which lower object an upper object was copied from, in
/// the kernel's `struct ovl_fb` layout (version 0, magic 0xfb).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// UUID of the lower filesystem (zero when it has none).
    pub uuid: [u8; 16],
    /// The exportfs file handle of the lower object.
    pub handle: sys::FileHandle,
}

const OVL_FB_HEADER: usize = 21;
const OVL_FH_MAGIC: u8 = 0xfb;
#[cfg(target_endian = "big")]
const OVL_FH_FLAG_CPU_ENDIAN: u8 = 1;
#[cfg(target_endian = "little")]
const OVL_FH_FLAG_CPU_ENDIAN: u8 = 0;
const OVL_FH_FLAG_ANY_ENDIAN: u8 = 2;

impl Origin {
    /// The xattr value, as the kernel writes it.
    pub fn encode(&self) -> Vec<u8> {
        let len = OVL_FB_HEADER + self.handle.bytes.len();
        let mut v = Vec::with_capacity(len);
        v.push(0); // version
        v.push(OVL_FH_MAGIC);
        v.push(len as u8);
        v.push(OVL_FH_FLAG_CPU_ENDIAN);
        v.push(self.handle.kind as u8);
        v.extend_from_slice(&self.uuid);
        v.extend_from_slice(&self.handle.bytes);
        v
    }

    /// Parses an origin xattr value; `None` when it is not one rovl can use.
    pub fn decode(v: &[u8]) -> Option<Origin> {
        if v.len() < OVL_FB_HEADER || v.len() > OVL_FB_HEADER + 128 {
            return None;
        }
        if v[0] != 0 || v[1] != OVL_FH_MAGIC || v[2] as usize != v.len() {
            return None;
        }
        let flags = v[3];
        if flags & OVL_FH_FLAG_ANY_ENDIAN == 0 && (flags & 1) != OVL_FH_FLAG_CPU_ENDIAN {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&v[5..21]);
        Some(Origin {
            uuid,
            handle: sys::FileHandle {
                kind: i32::from(v[4]),
                bytes: v[21..].to_vec(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(
            whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(whiteout_target(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(whiteout_target(OsStr::new("foo")), None);
        assert_eq!(whiteout_name(OsStr::new("a b")), OsString::from(".wh.a b"));
        assert!(is_marker_name(OsStr::new(".wh.x")));
        assert!(!is_marker_name(OsStr::new(".whx")));
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(OsStr::new("trusted.overlay.opaque")));
        assert!(is_private_xattr(OsStr::new("user.overlay.redirect")));
        assert!(is_private_xattr(OsStr::new("user.fuseoverlayfs.opaque")));
        assert!(!is_private_xattr(OsStr::new("user.mine")));
        assert!(!is_private_xattr(OsStr::new("trusted.overlayx")));
        assert!(!is_private_xattr(OsStr::new(
            "trusted.overlay.overlay.opaque"
        )));
    }

    #[test]
    fn xattr_escaping_like_the_kernel() {
        let to = |s: &str| xattr_to_layer(OsStr::new(s)).map(|o| o.into_string().unwrap());
        let from = |s: &str| xattr_from_layer(OsStr::new(s)).map(|o| o.into_string().unwrap());
        assert_eq!(
            to("trusted.overlay.opaque").as_deref(),
            Some("trusted.overlay.overlay.opaque")
        );
        assert_eq!(to("user.x").as_deref(), Some("user.x"));
        assert_eq!(to("user.overlay.opaque"), None);
        assert_eq!(to("user.fuseoverlayfs.opaque"), None);
        assert_eq!(
            from("trusted.overlay.overlay.opaque").as_deref(),
            Some("trusted.overlay.opaque")
        );
        assert_eq!(
            from("trusted.overlay.overlay.overlay.x").as_deref(),
            Some("trusted.overlay.overlay.x")
        );
        assert_eq!(from("trusted.overlay.opaque"), None);
        assert_eq!(from("user.overlay.whiteout"), None);
        assert_eq!(
            from("security.capability").as_deref(),
            Some("security.capability")
        );
        for n in ["trusted.overlay.a", "trusted.overlay.overlay.b", "user.c"] {
            assert_eq!(
                from(&to(n).unwrap()).as_deref(),
                Some(n),
                "round trip of {n}"
            );
        }
    }

    #[test]
    fn redirects_parse_and_reject_hostile_values() {
        assert_eq!(
            parse_redirect(b"/a/b"),
            Some(Redirect::Absolute(vec!["a".into(), "b".into()]))
        );
        assert_eq!(parse_redirect(b"x"), Some(Redirect::Relative("x".into())));
        assert_eq!(parse_redirect(b"/a/../b"), None);
        assert_eq!(parse_redirect(b".."), None);
        assert_eq!(parse_redirect(b"a/b"), None);
        assert_eq!(parse_redirect(b""), None);
        assert_eq!(parse_redirect(b"/a\0b"), None);
        assert_eq!(encode_redirect(&["a".into(), "b".into()]), b"/a/b".to_vec());
    }

    #[test]
    fn origin_round_trip() {
        let o = Origin {
            uuid: [7; 16],
            handle: sys::FileHandle {
                kind: 1,
                bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
            },
        };
        let v = o.encode();
        assert_eq!(v.len(), 29);
        assert_eq!(Origin::decode(&v), Some(o));
        assert_eq!(Origin::decode(&v[..20]), None);
        let mut bad = v.clone();
        bad[1] = 0;
        assert_eq!(Origin::decode(&bad), None);
    }
}
