//! Thin wrappers over the kernel interfaces the fixtures need: mountinfo,
//! mount/umount, loop devices, FIEMAP, hole punching and /proc scanning.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

/// Prints a warning to stderr. Used where failing is not an option (Drop).
macro_rules! log_warn {
    ($($arg:tt)*) => {
        eprintln!("testbed: {}", format_args!($($arg)*))
    };
}
pub(crate) use log_warn;

/// Wraps `err` with a description of what was being done, keeping its kind.
pub(crate) fn ctx(err: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------- mountinfo

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique mount ID (field 1).
    pub id: u32,
    /// Device number of the mounted filesystem (`major:minor`, field 3). For
    /// FUSE the minor is the connection number in `/sys/fs/fuse/connections`.
    pub dev: (u32, u32),
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// Per-mount options, e.g. `rw,relatime`.
    pub mount_options: String,
    /// Filesystem type, e.g. `ext4`, `overlay`, `fuse.rovl`.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/loop3`.
    pub source: String,
    /// Per-superblock options, e.g. `rw,emergency_ro` after an ext4 abort.
    pub super_options: String,
}

impl MountEntry {
    /// True for FUSE mounts (`fuse`, `fuse.NAME`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// Undoes the octal escaping (`\040` for a space, ...) of mountinfo fields.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        return None;
    }
    let (maj, min) = l[2].split_once(':')?;
    Some(MountEntry {
        id: l[0].parse().ok()?,
        dev: (maj.parse().ok()?, min.parse().ok()?),
        mount_point: PathBuf::from(unescape(l[4])),
        mount_options: l[5].to_string(),
        fs_type: r[0].to_string(),
        source: unescape(r[1]).to_string_lossy().into_owned(),
        super_options: r[2].to_string(),
    })
}

/// All mounts of this process's mount namespace, in mount order (parents
/// before children, lower before stacked-on-top).
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// Mounts whose mount point is `dir` or lies beneath it.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<MountEntry>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect())
}

/// Our mount: the one with ID `id` at `path`. The kernel reuses the IDs
/// of unmounted mounts (other tests mount all the time), so an ID alone
/// may name someone else's mount.
pub(crate) fn mount_by_id(id: u32, path: &Path) -> Option<MountEntry> {
    mounts()
        .ok()?
        .into_iter()
        .find(|m| m.id == id && m.mount_point == path)
}

/// The topmost mount exactly at `path`.
pub(crate) fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

// ---------------------------------------------------------- mount / umount

/// mount(2) with a comma-separated option string, `mount(8)`-style: the
/// generic per-mount flags (`ro`, `nodev`, `noatime`, ...) become mount
/// flags, everything else goes to the filesystem. The error is the raw errno.
pub(crate) fn mount_fs(source: &str, target: &Path, fstype: &str, options: &str) -> io::Result<()> {
    let mut flags: libc::c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "lazytime" => flags |= libc::MS_LAZYTIME,
            "defaults" => {}
            other => data.push(other),
        }
    }
    let src = CString::new(source).map_err(|_| io::Error::from(ErrorKind::InvalidInput))?;
    let fst = CString::new(fstype).map_err(|_| io::Error::from(ErrorKind::InvalidInput))?;
    let data =
        CString::new(data.join(",")).map_err(|_| io::Error::from(ErrorKind::InvalidInput))?;
    let tgt = cpath(target)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(())
}

fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: p is a valid C string.
    cvt(unsafe { libc::umount2(p.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) })?;
    Ok(())
}

/// How an unmount went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unmounted {
    /// Plain unmount succeeded.
    Clean,
    /// The mount was busy and got detached lazily (`umount -l`).
    Lazily,
    /// Nothing was mounted there.
    NotMounted,
}

/// Unmounts `path`, falling back to a lazy unmount when busy. Never blocks
/// on anything but the filesystem's own sync (see [`crate::FuseMount`] for
/// mounts that can hang).
pub(crate) fn unmount(path: &Path) -> io::Result<Unmounted> {
    match umount2(path, 0) {
        Ok(()) => Ok(Unmounted::Clean),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.kind() == ErrorKind::NotFound => {
            Ok(Unmounted::NotMounted)
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            log_warn!("{} is busy, detaching it lazily", path.display());
            umount2(path, libc::MNT_DETACH)
                .map_err(|e| ctx(e, format!("umount -l {}", path.display())))?;
            Ok(Unmounted::Lazily)
        }
        Err(e) => Err(ctx(e, format!("umount {}", path.display()))),
    }
}

/// Lazily detaches `path` right away.
pub(crate) fn detach(path: &Path) -> io::Result<()> {
    match umount2(path, libc::MNT_DETACH) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
            Err(ctx(e, format!("umount -l {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Unmounts the mount with ID `id` (mounted at `path`), also unmounting
/// whatever was stacked on top of it at the same place. While the mount is
/// busy, retries for `patience`, then detaches it lazily. Returns whether
/// a lazy unmount was needed.
pub(crate) fn unmount_id(path: &Path, id: u32, patience: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + patience;
    for _ in 0..1000 {
        if mount_by_id(id, path).is_none() {
            return Ok(false);
        }
        match umount2(path, 0) {
            Ok(()) => continue,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                sleep(Duration::from_millis(20))
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
            Err(e) => return Err(ctx(e, format!("umount {}", path.display()))),
        }
    }
    for _ in 0..16 {
        if mount_by_id(id, path).is_none() {
            return Ok(true);
        }
        log_warn!("{} is busy, detaching it lazily", path.display());
        detach(path)?;
    }
    if mount_by_id(id, path).is_none() {
        Ok(true)
    } else {
        Err(io::Error::other(format!(
            "could not unmount {}",
            path.display()
        )))
    }
}

/// A mount made by us, unmounted on drop (lazily if it stays busy).
#[derive(Debug)]
pub(crate) struct MountGuard {
    pub path: PathBuf,
    id: Option<u32>,
}

impl MountGuard {
    /// Mounts (see [`mount_fs`]) and remembers the new mount's ID.
    /// `target` must be canonical (it is compared with mountinfo).
    pub fn mount(
        source: &str,
        target: &Path,
        fstype: &str,
        options: &str,
    ) -> io::Result<MountGuard> {
        mount_fs(source, target, fstype, options)?;
        let id = mount_at(target).map(|m| m.id);
        if id.is_none() {
            log_warn!(
                "mounted {} but cannot find it in mountinfo",
                target.display()
            );
        }
        Ok(MountGuard {
            path: target.to_path_buf(),
            id,
        })
    }

    pub fn entry(&self) -> Option<MountEntry> {
        mount_by_id(self.id?, &self.path)
    }

    /// Unmounts now (idempotent); returns whether it had to be lazy.
    pub fn unmount(&mut self, patience: Duration) -> io::Result<bool> {
        match self.id {
            Some(id) => {
                let lazy = unmount_id(&self.path, id, patience)?;
                self.id = None;
                Ok(lazy)
            }
            None => Ok(false),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.unmount(Duration::from_secs(2)) {
            log_warn!("{e}");
        }
    }
}

/// Unmounts every mount at or below `dir`, children first; busy ones are
/// detached lazily, FUSE ones get their connection aborted first so that
/// nothing can hang on a dead or stuck daemon.
pub(crate) fn unmount_all_under(dir: &Path) -> Vec<io::Error> {
    match mounts_under(dir) {
        Ok(list) => unmount_list(&list),
        Err(e) => vec![e],
    }
}

/// Unmounts `list` (in mountinfo order) from last to first, as
/// [`unmount_all_under`] does.
pub(crate) fn unmount_list(list: &[MountEntry]) -> Vec<io::Error> {
    let mut errs = Vec::new();
    for m in list.iter().rev() {
        if mount_by_id(m.id, &m.mount_point).is_none() {
            continue; // went away with a lazily detached parent
        }
        let res = if m.is_fuse() {
            let _ = fuse_abort(m.dev.1);
            detach(&m.mount_point)
        } else {
            unmount(&m.mount_point).map(|_| ())
        };
        if let Err(e) = res {
            errs.push(e);
        }
    }
    errs
}

// ------------------------------------------------------------------- FUSE

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Makes sure fusectl is mounted (it is not on every system).
pub(crate) fn ensure_fusectl() -> io::Result<()> {
    if mounts()?.iter().any(|m| m.fs_type == "fusectl") {
        return Ok(());
    }
    match mount_fs("fusectl", Path::new(FUSECTL), "fusectl", "") {
        Err(e) if e.raw_os_error() != Some(libc::EBUSY) => Err(ctx(e, "mount fusectl")),
        _ => Ok(()),
    }
}

/// Aborts FUSE connection `conn`: every pending and future request fails
/// with ENOTCONN, so nothing can hang on the daemon any more.
pub(crate) fn fuse_abort(conn: u32) -> io::Result<()> {
    ensure_fusectl()?;
    let p = Path::new(FUSECTL).join(conn.to_string()).join("abort");
    match fs::write(&p, b"1") {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()), // already gone
        r => r.map_err(|e| ctx(e, format!("write {}", p.display()))),
    }
}

// ------------------------------------------------------------------- loop

/// From <linux/loop.h>.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;

/// A loop device held open by us, so that it cannot be detached and reused
/// by anyone else while we use it; once marked autoclear, the kernel frees
/// it when the last user (the mount, this handle) goes, even if we are
/// killed.
#[derive(Debug)]
pub(crate) struct LoopDev {
    pub path: PathBuf,
    file: Option<File>,
}

impl LoopDev {
    /// `losetup --find --show [--direct-io=on] IMAGE`, retried: parallel
    /// processes race for free devices, and losetup can lose that race.
    /// (The device it prints is the one it set up for us: nobody else
    /// detaches a device whose backing file belongs to a live owner.)
    pub fn attach(image: &Path, direct_io: bool) -> io::Result<LoopDev> {
        let mut last = None;
        for attempt in 0..20u64 {
            let mut cmd = Command::new("losetup");
            cmd.arg("--find").arg("--show");
            if direct_io {
                cmd.arg("--direct-io=on");
            }
            cmd.arg(image);
            match crate::try_run(&mut cmd) {
                Ok(out) => {
                    let path = PathBuf::from(out.trim());
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)
                        .map_err(|e| ctx(e, format!("open {}", path.display())))?;
                    return Ok(LoopDev {
                        path,
                        file: Some(file),
                    });
                }
                Err(e) => last = Some(e),
            }
            sleep(Duration::from_millis(20 + 30 * attempt));
        }
        Err(last.unwrap_or_else(|| io::Error::other("losetup failed")))
    }

    fn sys_dir(&self) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default();
        Path::new("/sys/block").join(name).join("loop")
    }

    /// Whether the kernel really does direct I/O on the backing file.
    pub fn direct_io(&self) -> bool {
        fs::read_to_string(self.sys_dir().join("dio")).is_ok_and(|s| s.trim() == "1")
    }

    /// Asks the kernel to detach the device once nobody uses it any more
    /// (`losetup -d` semantics): immediately if only we hold it, else when
    /// the last user — typically the mount — goes away.
    pub fn set_autoclear(&self) -> io::Result<()> {
        if let Some(f) = &self.file {
            // SAFETY: plain ioctl without argument on an fd we own.
            match cvt(unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) }) {
                Err(e) if e.raw_os_error() != Some(libc::ENXIO) => {
                    return Err(ctx(e, format!("losetup -d {}", self.path.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Detaches the device (once unused) and closes our handle.
    pub fn release(&mut self) {
        if let Err(e) = self.set_autoclear() {
            log_warn!("{e}");
        }
        self.file = None;
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        self.release();
    }
}

fn read_backing_file(sys_loop_dir: &Path) -> Option<PathBuf> {
    let s = fs::read(sys_loop_dir.join("backing_file")).ok()?;
    let s = s.strip_suffix(b"\n").unwrap_or(&s);
    Some(PathBuf::from(OsStr::from_bytes(s)))
}

/// All bound loop devices with their backing files.
pub(crate) fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        if let Some(b) = read_backing_file(&e.path().join("loop")) {
            out.push((Path::new("/dev").join(&name), b));
        }
    }
    out
}

/// Detaches a loop device we do not hold (sweeping), if it is still backed
/// by `expected`.
pub(crate) fn detach_loop_if(dev: &Path, expected: &Path) -> io::Result<()> {
    let f = match OpenOptions::new().read(true).open(dev) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx(e, format!("open {}", dev.display()))),
    };
    let name = dev.file_name().unwrap_or_default();
    let still = read_backing_file(&Path::new("/sys/block").join(name).join("loop"));
    if still.as_deref() != Some(expected) {
        return Ok(());
    }
    // SAFETY: plain ioctl without argument on an fd we own.
    match cvt(unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) }) {
        Err(e) if e.raw_os_error() != Some(libc::ENXIO) => {
            Err(ctx(e, format!("losetup -d {}", dev.display())))
        }
        _ => Ok(()),
    }
}

// ------------------------------------------------------------ files, holes

/// One physical extent of a file, in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

pub(crate) const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub(crate) const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
pub(crate) const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
pub(crate) const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
pub(crate) const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
pub(crate) const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;

/// `struct fiemap` of <linux/fiemap.h> followed by room for `BATCH`
/// `struct fiemap_extent`s.
#[repr(C)]
struct FiemapBuf {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; FIEMAP_BATCH],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

const FIEMAP_BATCH: usize = 128;
/// _IOWR('f', 11, struct fiemap); the header alone is 32 bytes.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;

/// The extents of `file` as FIEMAP reports them, without FIEMAP_FLAG_SYNC
/// (a sync here could consume writeback errors a test wants to see).
pub(crate) fn fiemap(file: &File) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut start: u64 = 0;
    loop {
        let mut buf = Box::new(FiemapBuf {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: 0,
            fm_mapped_extents: 0,
            fm_extent_count: FIEMAP_BATCH as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); FIEMAP_BATCH],
        });
        // SAFETY: buf is a valid struct fiemap with room for
        // fm_extent_count extents.
        cvt(unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut *buf as *mut FiemapBuf,
            )
        })?;
        let mapped = (buf.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if mapped == 0 {
            return Ok(out);
        }
        let mut last = false;
        for fe in &buf.fm_extents[..mapped] {
            let e = Extent {
                logical: fe.fe_logical,
                physical: fe.fe_physical,
                length: fe.fe_length,
                flags: fe.fe_flags,
            };
            start = e.logical + e.length;
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
            out.push(e);
        }
        if last {
            return Ok(out);
        }
    }
}

/// `EXT4_IOC_CHECKPOINT`: `_IOW('f', 43, __u32)`.
const EXT4_IOC_CHECKPOINT: libc::c_ulong = 0x4004_662b;

/// Commits ext4's journal and writes every journaled metadata block to its
/// place (`EXT4_IOC_CHECKPOINT`, Linux 5.13), through any file of the
/// filesystem. Writes no file data that is not already being written.
pub(crate) fn ext4_checkpoint(file: &File) -> io::Result<()> {
    let flags: u32 = 0;
    // SAFETY: the argument points to a valid u32 for the call.
    cvt(unsafe { libc::ioctl(file.as_raw_fd(), EXT4_IOC_CHECKPOINT as _, &flags) })?;
    Ok(())
}

pub(crate) fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Copies `src` to a new file `dst`, keeping holes as holes (reads only the
/// data segments, found with SEEK_DATA/SEEK_HOLE).
pub(crate) fn copy_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    let s = File::open(src).map_err(|e| ctx(e, format!("open {}", src.display())))?;
    let d = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| ctx(e, format!("create {}", dst.display())))?;
    let size = s.metadata()?.len();
    d.set_len(size)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: plain lseek on an fd we own.
        let data = unsafe { libc::lseek(s.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(s.as_raw_fd(), data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size } else { hole as u64 };
        let mut off = data as u64;
        while off < hole {
            let n = ((hole - off) as usize).min(buf.len());
            let got = s.read_at(&mut buf[..n], off)?;
            if got == 0 {
                break;
            }
            d.write_all_at(&buf[..got], off)?;
            off += got as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// Block size and free bytes of the filesystem holding `path`.
pub(crate) fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    let p = cpath(path)?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is a valid C string, st a valid out-pointer.
    cvt(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    Ok((st.f_bsize as u64, st.f_bavail as u64 * st.f_frsize as u64))
}

// ---------------------------------------------------------------- processes

/// State letter and start time (clock ticks since boot) of a process.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain anything, so split after its last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); starttime is field 22.
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// A process identified robustly against pid reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Proc {
    pub pid: u32,
    pub start: u64,
}

impl Proc {
    pub fn get(pid: u32) -> Option<Proc> {
        proc_stat(pid).map(|(_, start)| Proc { pid, start })
    }

    /// Running (not exited, not a zombie) and still the same process.
    pub fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((st, start)) if start == self.start && st != 'Z' && st != 'X')
    }

    /// Exited with all its threads: a killed process's leader is a zombie
    /// at once, while its other threads may still be exiting (and holding
    /// descriptors such as /dev/fuse).
    pub fn exited(&self) -> bool {
        match proc_stat(self.pid) {
            Some((st, start)) if start == self.start && (st == 'Z' || st == 'X') => {
                std::fs::read_dir(format!("/proc/{}/task", self.pid))
                    .map_or(true, |d| d.count() <= 1)
            }
            Some((_, start)) if start == self.start => false,
            // Reaped, or the pid now belongs to another process.
            _ => true,
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        if self.alive() {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }
}

/// Processes (other than this one) whose environment holds `KEY=VALUE`
/// with VALUE equal to `value`, or starting with it if `prefix`.
pub(crate) fn procs_with_env(key: &str, value: &str, prefix: bool) -> Vec<Proc> {
    let needle = format!("{key}={value}");
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = fs::read(e.path().join("environ")) else {
            continue;
        };
        let hit = env.split(|&b| b == 0).any(|v| {
            if prefix {
                v.starts_with(needle.as_bytes())
            } else {
                v == needle.as_bytes()
            }
        });
        if hit {
            if let Some(p) = Proc::get(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// Processes holding a `/dev/fuse` descriptor of FUSE connection `conn`,
/// found through the `fuse_connection:` line Linux (6.x) shows in
/// `/proc/PID/fdinfo/FD` of a /dev/fuse descriptor.
pub(crate) fn fuse_conn_holders(conn: u32) -> Vec<Proc> {
    let me = std::process::id();
    let want = format!("fuse_connection:\t{conn}\n");
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse"))
                && fs::read_to_string(e.path().join("fdinfo").join(fd.file_name()))
                    .is_ok_and(|info| info.contains(&want))
        });
        if holds {
            out.extend(Proc::get(pid));
        }
    }
    out
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let l = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue";
        let m = parse_mountinfo_line(l).unwrap();
        assert_eq!(m.id, 36);
        assert_eq!(m.dev, (98, 0));
        assert_eq!(m.mount_point, Path::new("/mnt/a b"));
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");
        assert!(!m.is_fuse());
    }

    #[test]
    fn own_process_is_alive_and_has_a_start_time() {
        let me = Proc::get(std::process::id()).unwrap();
        assert!(me.alive());
        let fake = Proc {
            start: me.start + 1,
            ..me
        };
        assert!(!fake.alive());
    }
}
