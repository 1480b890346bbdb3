//! The lower layers every system mounts, generated from a fixed seed and
//! cached on disk between runs.
//!
//! Three lowers, top first:
//! - `l0`: `big/file.bin` (the large file) and the first half of `wide/`;
//! - `l1`: an "update" layer over the rootfs: rewritten files, whiteouts
//!   (0/0 character devices), and the second half of `wide/`;
//! - `l2`: the rootfs-like tree under `usr/`.
//!
//! Next to them: `untar.tar`, the archive of small files the untar
//! workload extracts.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped whenever generation changes, so stale caches are not reused.
const FORMAT: u32 = 1;

/// Sizes of one layer set and of the workloads run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Name of the set (cache directory prefix).
    pub name: &'static str,
    /// Regular files of the rootfs tree.
    pub files: usize,
    /// Directories of the rootfs tree.
    pub dirs: usize,
    /// Symlinks in the rootfs tree.
    pub symlinks: usize,
    /// Rootfs files rewritten by the update layer.
    pub overrides: usize,
    /// Rootfs files deleted (whited out) by the update layer.
    pub whiteouts: usize,
    /// Size of the large file.
    pub big: u64,
    /// Entries of the merged wide directory (half in l0, half in l1).
    pub wide: usize,
    /// Files in the untar archive.
    pub untar_files: usize,
    /// Files created by the small-file workload.
    pub creates: usize,
    /// Random 4 KiB reads.
    pub rand_reads: usize,
    /// Size written by the sequential-write and noisy-neighbour workloads.
    pub write: u64,
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The benchmark as specified.
pub const FULL: Scale = Scale {
    name: "full",
    files: 30_000,
    dirs: 2_000,
    symlinks: 1_000,
    overrides: 2_000,
    whiteouts: 200,
    big: GIB,
    wide: 20_000,
    untar_files: 10_000,
    creates: 5_000,
    rand_reads: 100_000,
    write: GIB,
};

/// `--quick`: the same shapes, smaller, for development.
pub const QUICK: Scale = Scale {
    name: "quick",
    files: 8_000,
    dirs: 600,
    symlinks: 250,
    overrides: 500,
    whiteouts: 50,
    big: 256 * MIB,
    wide: 6_000,
    untar_files: 3_000,
    creates: 1_000,
    rand_reads: 20_000,
    write: 256 * MIB,
};

/// Relative path of the large file in the merged view (in `l0`).
pub const BIG: &str = "big/file.bin";
/// Relative path of the wide directory.
pub const WIDE: &str = "wide";

/// A generated layer set.
#[derive(Debug)]
pub struct Layers {
    /// The lowers, top first.
    pub lowers: Vec<PathBuf>,
    /// The untar archive.
    pub tar: PathBuf,
    /// Entries a full walk of the merged view must find (without the root).
    pub merged_entries: u64,
    /// The rootfs subtree the chown workload changes (merged path), and
    /// its merged entries, itself included.
    pub chown: (String, u64),
    /// What it was generated for.
    pub scale: Scale,
}

impl Layers {
    /// The lower file or directory that the merged path `rel` shows, for
    /// the native reference (top-most layer holding it).
    pub fn lower_of(&self, rel: &str) -> PathBuf {
        for l in &self.lowers {
            let p = l.join(rel);
            if fs::symlink_metadata(&p).is_ok() {
                return p;
            }
        }
        self.lowers[0].join(rel)
    }
}

/// SplitMix64: small, fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// A small-file size: mostly 1–16 KiB, some smaller, a few larger.
    pub fn file_size(&mut self) -> u64 {
        match self.below(100) {
            0..=14 => self.range(0, 1023),
            15..=89 => self.range(1024, 16 * 1024),
            90..=98 => self.range(16 * 1024, 64 * 1024),
            _ => self.range(64 * 1024, 256 * 1024),
        }
    }
}

const WORDS: &[&str] = &[
    "lib",
    "share",
    "bin",
    "doc",
    "include",
    "python3",
    "locale",
    "man",
    "x86_64-linux-gnu",
    "perl5",
    "site-packages",
    "icons",
    "zoneinfo",
    "terminfo",
    "modules",
    "firmware",
    "systemd",
    "gconv",
    "dist-packages",
    "i18n",
];

const EXTS: &[&str] = &["so", "py", "h", "txt", "gz", "mo", "conf", "pyc", "pm", ""];

/// Returns the cached layer set for `scale` under `cache`, generating it
/// first if needed (a partial set from an interrupted run is redone).
pub fn prepare(cache: &Path, scale: &Scale) -> io::Result<Layers> {
    let dir = cache.join(format!("{}-v{FORMAT}", scale.name));
    let ready = dir.join("READY");
    let layers = Layers {
        lowers: (0..3).map(|i| dir.join(format!("l{i}"))).collect(),
        tar: dir.join("untar.tar"),
        merged_entries: merged_entries(scale),
        chown: (String::new(), 0),
        scale: *scale,
    };
    if ready.exists() {
        return with_chown_tree(layers);
    }
    if dir.exists() {
        eprintln!(
            "rovl-bench: removing incomplete layer cache {}",
            dir.display()
        );
        fs::remove_dir_all(&dir)?;
    }
    eprintln!(
        "rovl-bench: generating the {} layer set in {} (once; cached)",
        scale.name,
        dir.display()
    );
    let t = std::time::Instant::now();
    fs::create_dir_all(&dir)?;
    for l in &layers.lowers {
        fs::create_dir_all(l)?;
    }
    let mut rng = Rng::new(0x726f_766c_6265_6e63 ^ u64::from(FORMAT));
    let files = rootfs(&layers.lowers[2], scale, &mut rng)?;
    update_layer(&layers.lowers[1], &files, scale, &mut rng)?;
    wide(&layers.lowers[0], &layers.lowers[1], scale.wide)?;
    big_file(&layers.lowers[0].join(BIG), scale.big, &mut rng)?;
    untar_archive(&dir, &layers.tar, scale.untar_files, &mut rng)?;
    crate::workloads::syncfs_of(&[&dir]);
    fs::write(&ready, format!("{scale:?}\n"))?;
    eprintln!("rovl-bench: layers ready in {:.1?}", t.elapsed());
    with_chown_tree(layers)
}

/// Picks the chown workload's subtree: the largest directory right under
/// `usr/` whose merged tree has at most `files / 6` entries (4,493 of the
/// full set's `usr/locale-8`).
fn with_chown_tree(mut l: Layers) -> io::Result<Layers> {
    let most = (l.scale.files / 6) as u64;
    let mut best = (String::new(), 0);
    for e in fs::read_dir(l.lowers[2].join("usr"))? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let rel = format!("usr/{}", e.file_name().to_string_lossy());
        let n = merged_subtree(&l.lowers, &rel)?;
        if n <= most && (n, &rel) > (best.1, &best.0) {
            best = (rel, n);
        }
    }
    if best.1 == 0 {
        return Err(io::Error::other("no subtree for the chown workload"));
    }
    l.chown = best;
    Ok(l)
}

/// Entries of the merged tree at `rel` (itself included), from the lowers
/// (top first): the union of their entries less the whited-out ones.
fn merged_subtree(lowers: &[PathBuf], rel: &str) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let mut seen = std::collections::HashSet::new();
    let mut gone = std::collections::HashSet::new();
    for l in lowers {
        let root = l.join(rel);
        if fs::symlink_metadata(&root).is_err() {
            continue;
        }
        visit_tree(&root, &mut |p, md| {
            let key = p.strip_prefix(l).map_err(io::Error::other)?.to_path_buf();
            if md.file_type().is_char_device() {
                gone.insert(key);
            } else if !gone.contains(&key) {
                seen.insert(key);
            }
            Ok(())
        })?;
    }
    Ok(seen.len() as u64)
}

/// Calls `f` with the path and `lstat` of `p` and of everything under it
/// (symlinks not followed), parents before their entries.
pub fn visit_tree(
    p: &Path,
    f: &mut impl FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let md = fs::symlink_metadata(p)?;
    f(p, &md)?;
    if md.is_dir() {
        for e in fs::read_dir(p)? {
            visit_tree(&e?.path(), f)?;
        }
    }
    Ok(())
}

/// Entries of the merged tree (directories, files, symlinks), root
/// excluded: rootfs dirs + files + symlinks - whiteouts, `big/` and its
/// file, `wide/` and its entries.
fn merged_entries(s: &Scale) -> u64 {
    (s.dirs + s.files + s.symlinks - s.whiteouts + 2 + 1 + s.wide) as u64
}

fn mkdir(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).recursive(true).create(p)
}

fn write_file(p: &Path, size: u64, rng: &mut Rng, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(size as usize, 0);
    rng.fill(buf);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p)?;
    f.write_all(buf)
}

/// The rootfs tree: `dirs` directories under `usr/` (depth at most 7),
/// `files` files and `symlinks` symlinks spread over them. Returns the
/// files' relative paths.
fn rootfs(l: &Path, s: &Scale, rng: &mut Rng) -> io::Result<Vec<String>> {
    let mut dirs: Vec<(String, u32)> = vec![("usr".to_string(), 1)];
    mkdir(&l.join("usr"))?;
    while dirs.len() < s.dirs {
        let (parent, depth) = dirs[rng.below(dirs.len() as u64) as usize].clone();
        if depth >= 7 {
            continue;
        }
        let word = WORDS[rng.below(WORDS.len() as u64) as usize];
        let rel = format!("{parent}/{word}-{}", dirs.len());
        mkdir(&l.join(&rel))?;
        dirs.push((rel, depth + 1));
    }
    let mut files = Vec::with_capacity(s.files);
    let mut buf = Vec::new();
    for i in 0..s.files {
        let (d, _) = &dirs[rng.below(dirs.len() as u64) as usize];
        let ext = EXTS[rng.below(EXTS.len() as u64) as usize];
        let rel = if ext.is_empty() {
            format!("{d}/file{i}")
        } else {
            format!("{d}/file{i}.{ext}")
        };
        let size = rng.file_size();
        write_file(&l.join(&rel), size, rng, &mut buf)?;
        files.push(rel);
    }
    for i in 0..s.symlinks {
        let (d, _) = &dirs[rng.below(dirs.len() as u64) as usize];
        let target = &files[rng.below(files.len() as u64) as usize];
        symlink(format!("/{target}"), l.join(format!("{d}/link{i}")))?;
    }
    Ok(files)
}

/// The update layer: rewrites `overrides` rootfs files and whites out
/// `whiteouts` others (distinct files).
fn update_layer(l: &Path, files: &[String], s: &Scale, rng: &mut Rng) -> io::Result<()> {
    let mut picked = std::collections::HashSet::new();
    let mut buf = Vec::new();
    let mut pick = |rng: &mut Rng| loop {
        let i = rng.below(files.len() as u64) as usize;
        if picked.insert(i) {
            return &files[i];
        }
    };
    for _ in 0..s.overrides {
        let rel = pick(rng);
        let p = l.join(rel);
        mkdir(p.parent().unwrap())?;
        let size = rng.file_size();
        write_file(&p, size, rng, &mut buf)?;
    }
    for _ in 0..s.whiteouts {
        let rel = pick(rng);
        let p = l.join(rel);
        mkdir(p.parent().unwrap())?;
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
            .map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated path; a 0/0 character device is
        // overlayfs's whiteout.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The wide directory: entries 0..n/2 in `a`, n/2..n in `b` (empty files).
fn wide(a: &Path, b: &Path, n: usize) -> io::Result<()> {
    for (l, range) in [(a, 0..n / 2), (b, n / 2..n)] {
        let d = l.join(WIDE);
        mkdir(&d)?;
        for i in range {
            File::create(d.join(format!("entry-{i:06}.conf")))?;
        }
    }
    Ok(())
}

fn big_file(p: &Path, size: u64, rng: &mut Rng) -> io::Result<()> {
    mkdir(p.parent().unwrap())?;
    let mut f = File::create(p)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// `n` small files in directories of 100, archived with GNU tar in a
/// reproducible way (sorted names, fixed owner and times).
fn untar_archive(dir: &Path, tar: &Path, n: usize, rng: &mut Rng) -> io::Result<()> {
    let src = dir.join("untar-src");
    let mut buf = Vec::new();
    for i in 0..n {
        let d = src.join(format!("pkg{:03}", i / 100));
        if i % 100 == 0 {
            mkdir(&d)?;
        }
        let size = rng.range(1024, 16 * 1024);
        write_file(&d.join(format!("file{i:05}.dat")), size, rng, &mut buf)?;
    }
    let out = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@1700000000",
            "-cf",
        ])
        .arg(tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "tar -c failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    fs::remove_dir_all(&src)
}
