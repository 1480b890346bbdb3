//! POSIX ACL inheritance for objects rovl creates: what the kernel's
//! `posix_acl_create` does when a directory has a default ACL. rovl needs
//! it because it builds new objects in the work directory (to publish them
//! atomically), where the parent's default ACL is not there to apply.
//!
//! The xattr format (`system.posix_acl_access`, `system.posix_acl_default`)
//! is little-endian: a `u32` version (2), then entries of `u16` tag, `u16`
//! permissions, `u32` id.

/// `system.posix_acl_access`.
pub const ACCESS: &str = "system.posix_acl_access";
/// `system.posix_acl_default`.
pub const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(v: &[u8]) -> Option<Vec<Entry>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 {
        return None;
    }
    if u32::from_le_bytes(v[0..4].try_into().ok()?) != VERSION {
        return None;
    }
    let entries = v[4..]
        .chunks_exact(8)
        .map(|c| Entry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]) & 7,
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect::<Vec<_>>();
    let has = |t| entries.iter().any(|e| e.tag == t);
    if !(has(USER_OBJ) && has(GROUP_OBJ) && has(OTHER)) {
        return None;
    }
    Some(entries)
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for e in entries {
        v.extend_from_slice(&e.tag.to_le_bytes());
        v.extend_from_slice(&e.perm.to_le_bytes());
        v.extend_from_slice(&e.id.to_le_bytes());
    }
    v
}

/// What a new object inherits from its parent's default ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The object's mode bits (the requested ones, masked by the ACL).
    pub mode: u32,
    /// Its access ACL, unless the mode bits say it all.
    pub access: Option<Vec<u8>>,
    /// Its default ACL (directories only).
    pub default: Option<Vec<u8>>,
}

/// The object created with `mode` (not masked by the umask) in a directory
/// whose default ACL is `parent_default`. `None` when that value is not a
/// valid ACL (then the umask applies, as without one).
pub fn inherit(parent_default: &[u8], mode: u32, is_dir: bool) -> Option<Inherited> {
    let mut acl = parse(parent_default)?;
    let mut m = mode & 0o777;
    let mut not_equiv = false;
    let mut mask = None;
    let mut group_obj = None;
    for (i, e) in acl.iter_mut().enumerate() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((m >> 6) & 7) as u16;
                m &= (u32::from(e.perm) << 6) | !0o700;
            }
            USER | GROUP => not_equiv = true,
            GROUP_OBJ => group_obj = Some(i),
            OTHER => {
                e.perm &= (m & 7) as u16;
                m &= u32::from(e.perm) | !0o007;
            }
            MASK => {
                mask = Some(i);
                not_equiv = true;
            }
            _ => return None,
        }
    }
    let g = mask.or(group_obj)?;
    acl[g].perm &= ((m >> 3) & 7) as u16;
    m &= (u32::from(acl[g].perm) << 3) | !0o070;
    Some(Inherited {
        mode: (mode & !0o777) | (m & 0o777),
        access: not_equiv.then(|| encode(&acl)),
        default: is_dir.then(|| parent_default.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(
            &entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn minimal_default_acl_acts_like_a_umask() {
        // default: u::rwx g::r-x o::--- ; requested 0666 file.
        let d = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)]);
        let i = inherit(&d, 0o666, false).unwrap();
        assert_eq!(i.mode, 0o640);
        assert_eq!(i.access, None);
        assert_eq!(i.default, None);
    }

    #[test]
    fn named_entries_make_an_access_acl_and_the_mask_holds_the_group_bits() {
        // default: u::rwx u:1000:rw- g::r-x m::rwx o::r-x ; file 0644.
        let d = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 6, 1000),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 5, ANY),
        ]);
        let i = inherit(&d, 0o644, false).unwrap();
        assert_eq!(i.mode, 0o644);
        let a = parse(i.access.as_ref().unwrap()).unwrap();
        let mask = a.iter().find(|e| e.tag == MASK).unwrap();
        assert_eq!(mask.perm, 4, "mask = requested group bits");
        let user = a.iter().find(|e| e.tag == USER).unwrap();
        assert_eq!(
            (user.perm, user.id),
            (6, 1000),
            "named entries are kept as is"
        );
    }

    #[test]
    fn directories_inherit_the_default_acl_too() {
        let d = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 7, ANY), (OTHER, 5, ANY)]);
        let i = inherit(&d, 0o777 | 0o1000, true).unwrap();
        assert_eq!(i.mode, 0o1775, "sticky bit kept");
        assert_eq!(i.default.as_deref(), Some(&d[..]));
    }

    #[test]
    fn invalid_acls_are_refused() {
        assert_eq!(inherit(b"", 0o644, false), None);
        assert_eq!(inherit(&[1, 0, 0, 0], 0o644, false), None);
        assert_eq!(inherit(&acl(&[(USER_OBJ, 7, ANY)]), 0o644, false), None);
        let mut bad = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)]);
        bad.push(0);
        assert_eq!(inherit(&bad, 0o644, false), None);
    }
}
