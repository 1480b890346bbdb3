//! Loop-backed ext4 filesystems: [`FailingDisk`] (an image on a small tmpfs
//! that can be made to fail writes), [`Ext4Disk`] (an image on the real
//! disk, for benchmarks) and [`PowerCut`] (a crash-consistent copy of
//! either).

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Scratch;
use crate::sys::{self, LoopDev, MountGuard, log_warn};

const MIB: u64 = 1 << 20;
/// tmpfs allocates and frees whole pages: holes are punched in page units.
const PAGE: u64 = 4096;

/// Knobs of [`FailingDisk`] and [`Ext4Disk`]. Build with struct update
/// syntax: `DiskOptions { tmpfs_size: 96 << 20, ..Default::default() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// Size of the sparse image file, i.e. of the ext4 filesystem.
    /// Default 256 MiB.
    pub image_size: u64,
    /// [`FailingDisk`] only: size of the tmpfs that holds the image, i.e.
    /// how many bytes of the image can really be stored. mkfs alone stores
    /// about 33 MiB of a 256 MiB image (inode tables and a 16 MiB journal,
    /// all written out because of `lazy_*_init=0`). Default 64 MiB.
    pub tmpfs_size: u64,
    /// ext4 block size (`mkfs.ext4 -b`). Default 4096, so that every block
    /// is one tmpfs page and holes can be punched under single blocks.
    pub block_size: u32,
    /// Extra ext4 mount options, comma-separated (e.g. `errors=remount-ro`,
    /// `data=journal`, `noatime`). Default: none, i.e. ext4's defaults
    /// (`errors=continue`, `data=ordered`). Never use `errors=panic`.
    pub mount_options: String,
    /// Attach the loop device with `--direct-io=on`. Default true. See the
    /// README: on tmpfs it changes neither the errors nor what a power cut
    /// keeps; on a real disk it keeps the host's page cache out of
    /// benchmarks.
    pub direct_io: bool,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            image_size: 256 * MIB,
            tmpfs_size: 64 * MIB,
            block_size: 4096,
            mount_options: String::new(),
            direct_io: true,
        }
    }
}

/// An image file, its loop device and the ext4 mounted from it.
/// Field order is drop order: unmount, then let go of the loop device.
#[derive(Debug)]
struct LoopExt4 {
    mount: Option<MountGuard>,
    dev: Option<LoopDev>,
    image: PathBuf,
    mnt: PathBuf,
}

impl LoopExt4 {
    /// Attaches `image` (creating and formatting it first if `mkfs`) and
    /// mounts it at `mnt` (an existing, canonical directory).
    fn start(image: &Path, mnt: &Path, opts: &DiskOptions, mkfs: bool) -> io::Result<LoopExt4> {
        if mkfs {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(image)
                .map_err(|e| sys::ctx(e, format!("create {}", image.display())))?;
            f.set_len(opts.image_size)?;
        }
        let mut this = LoopExt4 {
            mount: None,
            dev: Some(LoopDev::attach(image, opts.direct_io)?),
            image: image.to_path_buf(),
            mnt: mnt.to_path_buf(),
        };
        let dev = this.device().to_path_buf();
        if mkfs {
            crate::try_run(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-b"])
                    .arg(opts.block_size.to_string())
                    .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
                    // Without checksummed group descriptors every block and
                    // inode bitmap is written by mkfs: none is left to be
                    // initialized (on a never-written image block) at the
                    // first allocation in its group, which would abort the
                    // journal when it is written back while ballooned.
                    .args(["-O", "^metadata_csum,^uninit_bg"])
                    .arg(&dev),
            )?;
        }
        let src = dev.to_string_lossy();
        let m = MountGuard::mount(&src, mnt, "ext4", &opts.mount_options).map_err(|e| {
            sys::ctx(
                e,
                format!(
                    "mount -t ext4 -o '{}' {src} {}",
                    opts.mount_options,
                    mnt.display()
                ),
            )
        })?;
        this.mount = Some(m);
        // From now on the kernel frees the loop device when the mount and
        // our handle are gone, even if this process gets killed.
        if let Some(d) = &this.dev {
            d.set_autoclear()?;
        }
        Ok(this)
    }

    fn device(&self) -> &Path {
        self.dev.as_ref().map_or(Path::new(""), |d| &d.path)
    }

    fn direct_io(&self) -> bool {
        self.dev.as_ref().is_some_and(|d| d.direct_io())
    }

    /// Unmounts (lazily if still busy after a while) and lets go of the
    /// loop device. Idempotent.
    fn stop(&mut self) -> io::Result<()> {
        let res = match self.mount.as_mut() {
            Some(m) => m.unmount(Duration::from_secs(2)).map(|_| ()),
            None => Ok(()),
        };
        self.mount = None;
        if let Some(mut d) = self.dev.take() {
            d.release();
        }
        res
    }

    fn is_aborted(&self) -> bool {
        let Some(m) = self.mount.as_ref().and_then(|m| m.entry()) else {
            return false;
        };
        let mut opts = m.super_options.split(',');
        let first = opts.next();
        first == Some("ro")
            || m.super_options
                .split(',')
                .any(|o| o == "emergency_ro" || o == "shutdown")
    }

    /// Transactions the ext4 journal has committed since the mount, from
    /// `/proc/fs/jbd2/<dev>-8/info` ("N transactions (M requested), ...").
    fn journal_commits(&self) -> io::Result<u64> {
        let dev = self
            .device()
            .file_name()
            .ok_or_else(|| io::Error::other("no loop device"))?;
        let info = Path::new("/proc/fs/jbd2")
            .join(format!("{}-8", dev.to_string_lossy()))
            .join("info");
        let text = fs::read_to_string(&info).map_err(|e| sys::ctx(e, info.display()))?;
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("{}: unexpected {text:?}", info.display())))
    }

    fn power_cut(&self) -> io::Result<PowerCut> {
        let scratch = Scratch::new()?;
        let image = scratch.join("disk.img");
        sys::copy_sparse(&self.image, &image)?;
        let mnt = scratch.mkdir("mnt")?;
        let opts = DiskOptions {
            direct_io: false,
            ..Default::default()
        };
        let fs = LoopExt4::start(&image, &mnt, &opts, false)
            .map_err(|e| sys::ctx(e, "mounting the power-cut copy"))?;
        Ok(PowerCut {
            fs,
            _scratch: scratch,
        })
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log_warn!("{}: {e}", self.mnt.display());
        }
    }
}

/// A small ext4 filesystem whose writes can be made to fail for real.
///
/// The ext4 lives on a loop device backed by a sparse image file on a tmpfs
/// that is smaller than the image. [`balloon`](Self::balloon) fills the
/// rest of the tmpfs, after which every write of the loop device to a part
/// of the image that was never written before fails with ENOSPC, so ext4's
/// writeback fails and fsync reports it.
/// [`punch_holes_under`](Self::punch_holes_under) makes chosen blocks
/// "never written" again, so that overwrites of existing data fail too. See the crate README for the
/// errors this produces on Linux 6.18.
///
/// Layout: `<scratch>/tmpfs/{disk.img,balloon-N}`, ext4 at `<scratch>/mnt`.
/// Drop unmounts ext4 (lazily if busy), frees the loop device, unmounts the
/// tmpfs and removes the directory. Declare it before any mount that uses
/// it so that those are dropped first.
#[derive(Debug)]
pub struct FailingDisk {
    // Field order is drop order.
    fs: LoopExt4,
    tmpfs: MountGuard,
    balloons: u32,
    opts: DiskOptions,
    scratch: Scratch,
}

impl FailingDisk {
    /// A failing disk with the default [`DiskOptions`].
    pub fn new() -> io::Result<FailingDisk> {
        Self::with_options(DiskOptions::default())
    }

    /// A failing disk with the given options.
    pub fn with_options(opts: DiskOptions) -> io::Result<FailingDisk> {
        if opts.tmpfs_size >= opts.image_size {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "tmpfs_size must be smaller than image_size, or nothing can fail",
            ));
        }
        let scratch = Scratch::new()?;
        let tdir = scratch.mkdir("tmpfs")?;
        let tmpfs = MountGuard::mount(
            "tmpfs",
            &tdir,
            "tmpfs",
            &format!("size={},mode=0700", opts.tmpfs_size),
        )?;
        let mnt = scratch.mkdir("mnt")?;
        let fs = LoopExt4::start(&tdir.join("disk.img"), &mnt, &opts, true)?;
        Ok(FailingDisk {
            fs,
            tmpfs,
            balloons: 0,
            opts,
            scratch,
        })
    }

    /// Where the ext4 is mounted.
    pub fn path(&self) -> &Path {
        &self.fs.mnt
    }

    /// The loop device, e.g. `/dev/loop3`.
    pub fn device(&self) -> &Path {
        self.fs.device()
    }

    /// The image file on the tmpfs ("the platters").
    pub fn image(&self) -> &Path {
        &self.fs.image
    }

    /// Whether the loop device really does direct I/O on the image.
    pub fn direct_io(&self) -> bool {
        self.fs.direct_io()
    }

    /// Bytes still free on the tmpfs, i.e. how much of the image can still
    /// be written for the first time.
    pub fn free_bytes(&self) -> io::Result<u64> {
        Ok(sys::statvfs(&self.tmpfs.path)?.1)
    }

    /// Fills all remaining space of the tmpfs, so that from now on every
    /// write to a block of the image that holds no data yet fails (ENOSPC
    /// from the loop device). Returns the bytes taken. Calling it again
    /// takes whatever got freed since.
    ///
    /// First it checkpoints ext4's journal: metadata blocks allocated
    /// before (a new directory's first block, say) are written in place
    /// now, not at a later checkpoint that would fail and abort the
    /// journal. Metadata allocated while ballooned still can. File data
    /// not yet written back stays unwritten: it is what is meant to fail.
    pub fn balloon(&mut self) -> io::Result<u64> {
        if self.balloons == 0 {
            let root = File::open(self.path())?;
            sys::ext4_checkpoint(&root)
                .map_err(|e| sys::ctx(e, format!("checkpoint {}", self.path().display())))?;
        }
        let path = self.tmpfs.path.join(format!("balloon-{}", self.balloons));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| sys::ctx(e, format!("create {}", path.display())))?;
        self.balloons += 1;
        let mut size = 0;
        for chunk in [MIB, PAGE] {
            loop {
                match sys::fallocate(&f, 0, size, chunk) {
                    Ok(()) => size += chunk,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(sys::ctx(e, format!("fallocate {}", path.display()))),
                }
            }
        }
        Ok(size)
    }

    /// Whether a balloon is inflated.
    pub fn is_ballooned(&self) -> bool {
        self.balloons > 0
    }

    /// Deletes the balloon: writes to the image succeed again. (If ext4
    /// has aborted its journal meanwhile, it stays read-only: see
    /// [`recreate`](Self::recreate).)
    pub fn heal(&mut self) -> io::Result<()> {
        for n in 0..self.balloons {
            let p = self.tmpfs.path.join(format!("balloon-{n}"));
            match fs::remove_file(&p) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(sys::ctx(e, format!("rm {}", p.display())));
                }
                _ => {}
            }
        }
        self.balloons = 0;
        Ok(())
    }

    /// Frees the image blocks under the data of `file` (a file on this
    /// disk), so that with the balloon inflated, rewriting that data fails
    /// too. The data must already be on disk (fsync it first): delayed
    /// allocation extents are refused. Tops up an inflated balloon with the
    /// space this frees. Returns the bytes punched.
    ///
    /// The data is really gone from the "disk": once ext4's page cache of
    /// the file is dropped, it reads back as zeros.
    pub fn punch_holes_under(&mut self, file: impl AsRef<Path>) -> io::Result<u64> {
        let file = file.as_ref();
        let f = File::open(file).map_err(|e| sys::ctx(e, format!("open {}", file.display())))?;
        if f.metadata()?.dev() != fs::metadata(self.path())?.dev() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("{} is not on this disk", file.display()),
            ));
        }
        let extents =
            sys::fiemap(&f).map_err(|e| sys::ctx(e, format!("FIEMAP {}", file.display())))?;
        let bad = sys::FIEMAP_EXTENT_DELALLOC
            | sys::FIEMAP_EXTENT_UNKNOWN
            | sys::FIEMAP_EXTENT_ENCODED
            | sys::FIEMAP_EXTENT_DATA_INLINE
            | sys::FIEMAP_EXTENT_NOT_ALIGNED;
        if let Some(e) = extents.iter().find(|e| e.flags & bad != 0) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: extent at offset {} is not on disk yet (flags {:#x}); fsync the file first",
                    file.display(),
                    e.logical,
                    e.flags
                ),
            ));
        }
        let img = OpenOptions::new().write(true).open(self.image())?;
        let mut punched = 0;
        for e in &extents {
            // Only whole pages: a partial page is zeroed, not freed, and
            // may hold neighbouring blocks.
            let start = e.physical.div_ceil(PAGE) * PAGE;
            let end = (e.physical + e.length) / PAGE * PAGE;
            if end > start {
                sys::punch_hole(&img, start, end - start)
                    .map_err(|e| sys::ctx(e, format!("punching {}", self.image().display())))?;
                punched += end - start;
            }
        }
        if self.is_ballooned() {
            self.balloon()?;
        }
        Ok(punched)
    }

    /// Whether ext4 has given up on this disk: its journal aborted and it
    /// went read-only (`emergency_ro` in the superblock options on 6.x, or
    /// `ro` with `errors=remount-ro`). Also true if you mounted it `ro`.
    pub fn is_aborted(&self) -> bool {
        self.fs.is_aborted()
    }

    /// Throws the filesystem away and makes a fresh one at the same path:
    /// unmount (lazily if busy), deflate the balloon, delete the image,
    /// new image, mkfs, mount. Everything on the disk is lost; paths into
    /// it stay valid.
    pub fn recreate(&mut self) -> io::Result<()> {
        self.fs.stop()?;
        self.heal()?;
        let image = self.fs.image.clone();
        let mnt = self.fs.mnt.clone();
        match fs::remove_file(&image) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // If the old filesystem was busy and got detached lazily, its image
        // keeps its tmpfs pages until the last user goes: the new one may
        // then not fit.
        self.fs = LoopExt4::start(&image, &mnt, &self.opts, true)?;
        Ok(())
    }

    /// Copies the image as it is right now — what the loop device has
    /// written, nothing of what ext4 or anyone still caches — and mounts
    /// the copy (journal replayed), like the disk after a power cut at
    /// this instant. See [`PowerCut`].
    pub fn power_cut(&self) -> io::Result<PowerCut> {
        self.fs.power_cut()
    }

    /// How many transactions ext4's journal has committed on this disk
    /// since it was mounted: each fsync that finds uncommitted metadata
    /// costs one, and ext4 commits on its own every 5 seconds.
    pub fn journal_commits(&self) -> io::Result<u64> {
        self.fs.journal_commits()
    }

    /// The scratch directory holding everything.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

/// A plain loop-backed ext4 on a sparse image on the real disk (under
/// [`root()`](crate::root)), for benchmarks and tests that need a separate,
/// healthy filesystem. Same code path as [`FailingDisk`] minus the tmpfs.
#[derive(Debug)]
pub struct Ext4Disk {
    fs: LoopExt4,
    _scratch: Scratch,
}

impl Ext4Disk {
    /// An ext4 of `size` bytes with otherwise default [`DiskOptions`].
    pub fn new(size: u64) -> io::Result<Ext4Disk> {
        Self::with_options(DiskOptions {
            image_size: size,
            ..Default::default()
        })
    }

    /// An ext4 with the given options (`tmpfs_size` is ignored).
    pub fn with_options(opts: DiskOptions) -> io::Result<Ext4Disk> {
        let scratch = Scratch::new()?;
        let mnt = scratch.mkdir("mnt")?;
        let fs = LoopExt4::start(&scratch.join("disk.img"), &mnt, &opts, true)?;
        Ok(Ext4Disk {
            fs,
            _scratch: scratch,
        })
    }

    /// Where the ext4 is mounted.
    pub fn path(&self) -> &Path {
        &self.fs.mnt
    }

    /// The loop device.
    pub fn device(&self) -> &Path {
        self.fs.device()
    }

    /// The image file.
    pub fn image(&self) -> &Path {
        &self.fs.image
    }

    /// Whether the loop device really does direct I/O on the image.
    pub fn direct_io(&self) -> bool {
        self.fs.direct_io()
    }

    /// A crash-consistent copy, as for [`FailingDisk::power_cut`].
    pub fn power_cut(&self) -> io::Result<PowerCut> {
        self.fs.power_cut()
    }
}

/// A copy of a disk's image taken "at a power cut", mounted read-write on
/// its own loop device in its own scratch directory (mounting replays the
/// ext4 journal, as the next boot would). It shows every write the loop
/// device had completed when the copy was taken, and nothing that was
/// still only in a page cache. Independent of the disk it came from; drop
/// cleans up.
#[derive(Debug)]
pub struct PowerCut {
    fs: LoopExt4,
    _scratch: Scratch,
}

impl PowerCut {
    /// Where the copy is mounted.
    pub fn path(&self) -> &Path {
        &self.fs.mnt
    }

    /// The copied image file.
    pub fn image(&self) -> &Path {
        &self.fs.image
    }
}
