//! The workloads. Each job runs in a fresh [`Env`] and yields one or more
//! metrics; only the part between the clock reads is measured, setup
//! (warming or dropping caches, creating directories) is not.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::layers::{BIG, Layers, Rng, WIDE, visit_tree};
use crate::systems::{Env, System};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `_IO(0xE5, 1)`: rovl's sync of one mount, what `rovl sync` calls.
const ROVL_IOC_SYNCFS: libc::c_ulong = 0xE501;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Walk + lstat of the whole merged tree, caches dropped.
    WalkCold,
    /// The same walk again on the same mount.
    WalkWarm,
    /// Listing the merged wide directory (first listing on a fresh mount,
    /// host caches warm).
    Readdir,
    /// Create + write + fsync of small files.
    Create,
    /// Sequential write of a large file, final fsync.
    SeqWrite,
    /// Sequential read of the large lower file, caches dropped.
    SeqRead,
    /// Random 4 KiB reads of the large lower file (host cache warm).
    RandRead,
    /// Copy-up of the large lower file by appending one byte.
    CopyUp,
    /// `chown -R` of a lower subtree: a copy-up of every entry.
    Chown,
    /// Untar of small files.
    Untar,
    /// Sync of one mount holding one small dirty file while a neighbour
    /// mount on the same upper filesystem holds a large unsynced one.
    NoisySync,
    /// Dirty + writeback memory left after that sync (informational).
    NoisyDirtyLeft,
    /// Daemon RSS after the two walks.
    Rss,
}

/// Unit of a metric's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds (lower is better).
    Seconds,
    /// MiB of memory (lower is better).
    Mib,
}

/// A target: rovl's median divided by `vs`'s median must be at most
/// `max_ratio`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The system rovl is compared with.
    pub vs: System,
    /// Largest acceptable ratio.
    pub max_ratio: f64,
}

const fn t(vs: System, max_ratio: f64) -> Target {
    Target { vs, max_ratio }
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 13] = [
        Metric::WalkCold,
        Metric::WalkWarm,
        Metric::Readdir,
        Metric::Create,
        Metric::SeqWrite,
        Metric::SeqRead,
        Metric::RandRead,
        Metric::CopyUp,
        Metric::Chown,
        Metric::Untar,
        Metric::NoisySync,
        Metric::NoisyDirtyLeft,
        Metric::Rss,
    ];

    /// Short machine name (JSON).
    pub fn key(self) -> &'static str {
        match self {
            Metric::WalkCold => "walk_cold",
            Metric::WalkWarm => "walk_warm",
            Metric::Readdir => "readdir",
            Metric::Create => "create_fsync",
            Metric::SeqWrite => "seq_write",
            Metric::SeqRead => "seq_read_cold",
            Metric::RandRead => "rand_read_4k",
            Metric::CopyUp => "copy_up",
            Metric::Chown => "chown_tree",
            Metric::Untar => "untar",
            Metric::NoisySync => "noisy_sync",
            Metric::NoisyDirtyLeft => "noisy_dirty_left",
            Metric::Rss => "daemon_rss",
        }
    }

    /// Row label, with the sizes of `layers`.
    pub fn label(self, l: &Layers) -> String {
        let s = &l.scale;
        let size = |b: u64| {
            if b >= GIB {
                format!("{} GiB", b / GIB)
            } else {
                format!("{} MiB", b / MIB)
            }
        };
        match self {
            Metric::WalkCold => format!("metadata walk, cold ({} entries)", l.merged_entries),
            Metric::WalkWarm => format!("metadata walk, warm ({} entries)", l.merged_entries),
            Metric::Readdir => format!("readdir of the {}-entry merged dir", s.wide),
            Metric::Create => format!("create+write+fsync {} small files", s.creates),
            Metric::SeqWrite => format!("sequential write {} + fsync", size(s.write)),
            Metric::SeqRead => format!("sequential read {} lower file, cold", size(s.big)),
            Metric::RandRead => format!("{} random 4 KiB reads", s.rand_reads),
            Metric::CopyUp => format!("copy-up of the {} file (append 1 byte)", size(s.big)),
            Metric::Chown => format!("chown -R of {} lower entries (a copy-up each)", l.chown.1),
            Metric::Untar => format!("untar {} small files", s.untar_files),
            Metric::NoisySync => {
                format!("noisy-neighbour sync (neighbour: {} dirty)", size(s.write))
            }
            Metric::NoisyDirtyLeft => "… dirty memory left after that sync".to_string(),
            Metric::Rss => "daemon RSS after the walks".to_string(),
        }
    }

    /// Its unit.
    pub fn unit(self) -> Unit {
        match self {
            Metric::Rss | Metric::NoisyDirtyLeft => Unit::Mib,
            _ => Unit::Seconds,
        }
    }

    /// The targets for rovl on this metric.
    pub fn targets(self) -> &'static [Target] {
        use System::{FuseOverlayfs as F, Kernel as K};
        static META: [Target; 2] = [t(F, 0.8), t(K, 2.0)];
        static DATA: [Target; 2] = [t(F, 0.8), t(K, 1.1)];
        static COPY_UP: [Target; 1] = [t(K, 1.0)];
        static UNTAR: [Target; 1] = [t(F, 0.8)];
        static NOISY: [Target; 1] = [t(K, 1.0 / 20.0)];
        static RSS: [Target; 1] = [t(F, 0.5)];
        match self {
            Metric::WalkCold | Metric::WalkWarm | Metric::Readdir | Metric::Create => &META,
            Metric::SeqWrite | Metric::SeqRead | Metric::RandRead => &DATA,
            Metric::CopyUp => &COPY_UP,
            Metric::Untar => &UNTAR,
            Metric::NoisySync => &NOISY,
            Metric::Rss => &RSS,
            // Not one of the workloads: no target (BENCHMARKS.md
            // compares it with the kernel's durable copy-ups).
            Metric::NoisyDirtyLeft | Metric::Chown => &[],
        }
    }
}

/// A unit of work run in one fresh environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Cold walk, warm walk, RSS.
    Walk,
    /// Wide directory listing.
    Readdir,
    /// Small-file creates with fsync.
    Create,
    /// Large sequential write.
    SeqWrite,
    /// Large sequential read, cold.
    SeqRead,
    /// Random reads.
    RandRead,
    /// Copy-up of the large file.
    CopyUp,
    /// `chown -R` of a lower subtree.
    Chown,
    /// Untar.
    Untar,
    /// Noisy-neighbour sync.
    Noisy,
}

/// Every job, in run order.
pub const JOBS: [Job; 10] = [
    Job::Walk,
    Job::Readdir,
    Job::Create,
    Job::SeqWrite,
    Job::SeqRead,
    Job::RandRead,
    Job::CopyUp,
    Job::Chown,
    Job::Untar,
    Job::Noisy,
];

/// Options that affect how jobs run.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// Record a perf profile of the rovl daemon(s) during each timed
    /// section into this directory.
    pub profile: Option<PathBuf>,
}

impl Job {
    /// Its name for `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Job::Walk => "walk",
            Job::Readdir => "readdir",
            Job::Create => "create",
            Job::SeqWrite => "seqwrite",
            Job::SeqRead => "seqread",
            Job::RandRead => "randread",
            Job::CopyUp => "copyup",
            Job::Chown => "chown",
            Job::Untar => "untar",
            Job::Noisy => "noisy",
        }
    }

    /// Parses a name given to `--only`.
    pub fn parse(s: &str) -> Option<Job> {
        JOBS.into_iter().find(|j| j.name() == s)
    }

    /// Size of the ext4 upper it needs.
    pub fn disk_size(self, l: &Layers) -> u64 {
        match self {
            Job::SeqWrite | Job::Noisy => 2 * l.scale.write + GIB,
            Job::CopyUp => 2 * l.scale.big + GIB,
            _ => GIB,
        }
    }

    /// Whether it measures `system` (the chown has no native reference:
    /// nothing to copy up).
    pub fn measures(self, system: System) -> bool {
        !(self == Job::Chown && system == System::Native)
    }

    /// How many mounts it needs.
    pub fn mounts(self) -> usize {
        if self == Job::Noisy { 2 } else { 1 }
    }

    /// Runs it in `env` and returns its metrics.
    pub fn run(self, env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
        match self {
            Job::Walk => walk_job(env, l, ctx),
            Job::Readdir => readdir_job(env, l, ctx),
            Job::Create => create_job(env, l, ctx),
            Job::SeqWrite => seq_write_job(env, l, ctx),
            Job::SeqRead => seq_read_job(env, l, ctx),
            Job::RandRead => rand_read_job(env, l, ctx),
            Job::CopyUp => copy_up_job(env, l, ctx),
            Job::Chown => chown_job(env, l, ctx),
            Job::Untar => untar_job(env, l, ctx),
            Job::Noisy => noisy_job(env, l, ctx),
        }
    }
}

/// `syncfs(2)` of the filesystem holding each path (errors ignored).
/// Never a global `sync(2)`: that would also write back filesystems of
/// tests running beside the benchmark (their ballooned failing disks abort
/// their journals when forced to write).
pub fn syncfs_of(paths: &[&Path]) {
    for p in paths {
        if let Ok(d) = File::open(p) {
            // SAFETY: a descriptor we own.
            unsafe { libc::syncfs(d.as_raw_fd()) };
        }
    }
}

/// Writes back what is dirty on the benchmark's filesystems (the ext4
/// upper and the filesystem of the lowers), so that nothing left by an
/// earlier step is written during a measurement.
pub fn settle(env: &Env, l: &Layers) {
    syncfs_of(&[env.disk.path(), &l.lowers[0]]);
}

/// Empties the page, dentry and inode caches (after [`settle`]), for cold
/// measurements. Only ever called between measurements. Dropping caches
/// writes nothing back, so it does not disturb other filesystems' data.
pub fn drop_caches(env: &Env, l: &Layers) -> io::Result<()> {
    settle(env, l);
    fs::write("/proc/sys/vm/drop_caches", "3")
}

/// A perf recording of rovl's daemons, stopped on drop.
struct Profiler(Option<Child>);

impl Profiler {
    fn start(env: &mut Env, ctx: &Ctx, what: &str) -> Profiler {
        let Some(dir) = &ctx.profile else {
            return Profiler(None);
        };
        if env.system != System::Rovl {
            return Profiler(None);
        }
        let mut pids = env.daemon_pids(0);
        pids.extend(env.daemon_pids(1));
        if pids.is_empty() {
            return Profiler(None);
        }
        let _ = fs::create_dir_all(dir);
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let out = dir.join(format!("{what}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-g", "-F", "4000", "-p"])
            .arg(pids.join(","))
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                // perf needs a moment to attach.
                std::thread::sleep(Duration::from_millis(500));
                eprintln!("rovl-bench: profiling {what} into {}", out.display());
                Profiler(Some(c))
            }
            Err(e) => {
                eprintln!("rovl-bench: cannot run perf: {e}");
                Profiler(None)
            }
        }
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}

/// Runs `f` and returns how long it took, profiling rovl if asked.
fn timed<T>(
    env: &mut Env,
    ctx: &Ctx,
    what: &str,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<(f64, T)> {
    let _p = Profiler::start(env, ctx, what);
    let start = Instant::now();
    let v = f()?;
    Ok((start.elapsed().as_secs_f64(), v))
}

fn check(cond: bool, what: impl FnOnce() -> String) -> io::Result<()> {
    if cond {
        Ok(())
    } else {
        Err(io::Error::other(what()))
    }
}

/// Counts the entries below `dir` (readdir + lstat of each, recursing
/// into directories), like `find -P` does.
pub fn walk(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        // lstat relative to the directory (fstatat, no symlink following).
        let m = e.metadata()?;
        n += 1;
        if m.is_dir() {
            n += walk(&e.path())?;
        }
    }
    Ok(n)
}

/// Reads all of `p` once, so its pages are in the host's page cache.
fn warm_file(p: &Path) -> io::Result<u64> {
    let mut f = File::open(p)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            return Ok(n);
        }
        n += r as u64;
    }
}

fn walk_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let roots: Vec<PathBuf> = match env.system {
        System::Native => l.lowers.clone(),
        _ => vec![env.view(0).to_path_buf()],
    };
    let walk_all = || -> io::Result<u64> {
        let mut n = 0;
        for r in &roots {
            n += walk(r)?;
        }
        Ok(n)
    };
    drop_caches(env, l)?;
    let (cold, n) = timed(env, ctx, "walk_cold", walk_all)?;
    if env.system != System::Native {
        check(n == l.merged_entries, || {
            format!(
                "{}: walk found {n} entries, expected {}",
                env.system, l.merged_entries
            )
        })?;
    }
    let (warm, n2) = timed(env, ctx, "walk_warm", walk_all)?;
    check(n2 == n, || format!("second walk found {n2}, first {n}"))?;
    let mut out = vec![(Metric::WalkCold, cold), (Metric::WalkWarm, warm)];
    if let Some(kib) = env.daemon_rss_kib(0) {
        out.push((Metric::Rss, kib as f64 / 1024.0));
    }
    Ok(out)
}

fn count_dir(p: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(p)? {
        e?;
        n += 1;
    }
    Ok(n)
}

fn readdir_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    for low in &l.lowers {
        let d = low.join(WIDE);
        if d.exists() {
            count_dir(&d)?;
        }
    }
    settle(env, l);
    let dirs: Vec<PathBuf> = match env.system {
        System::Native => l
            .lowers
            .iter()
            .map(|low| low.join(WIDE))
            .filter(|d| d.exists())
            .collect(),
        _ => vec![env.view(0).join(WIDE)],
    };
    let (secs, n) = timed(env, ctx, "readdir", || {
        let mut n = 0;
        for d in &dirs {
            n += count_dir(d)?;
        }
        Ok(n)
    })?;
    check(n == l.scale.wide as u64, || {
        format!(
            "{}: listed {n} entries, expected {}",
            env.system, l.scale.wide
        )
    })?;
    Ok(vec![(Metric::Readdir, secs)])
}

fn create_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let dir = env.view(0).join("created");
    fs::create_dir(&dir)?;
    let mut rng = Rng::new(5000);
    let mut data = vec![0u8; 16 * 1024];
    rng.fill(&mut data);
    let sizes: Vec<usize> = (0..l.scale.creates)
        .map(|_| rng.range(1024, 16 * 1024) as usize)
        .collect();
    settle(env, l);
    let (secs, ()) = timed(env, ctx, "create", || {
        for (i, &size) in sizes.iter().enumerate() {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(dir.join(format!("f{i:05}")))?;
            f.write_all(&data[..size])?;
            f.sync_all()?;
        }
        Ok(())
    })?;
    Ok(vec![(Metric::Create, secs)])
}

fn random_buffer(seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MIB as usize];
    Rng::new(seed).fill(&mut buf);
    buf
}

/// Writes `size` bytes to a new file `p` in 1 MiB writes.
fn write_big(p: &Path, size: u64, buf: &[u8], fsync: bool) -> io::Result<()> {
    let mut f = File::create(p)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    if fsync {
        f.sync_all()?;
    }
    Ok(())
}

fn seq_write_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let buf = random_buffer(1);
    let p = env.view(0).join("written.bin");
    settle(env, l);
    let (secs, ()) = timed(env, ctx, "seq_write", || {
        write_big(&p, l.scale.write, &buf, true)
    })?;
    Ok(vec![(Metric::SeqWrite, secs)])
}

fn seq_read_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let p = env.read_path(l, BIG);
    drop_caches(env, l)?;
    let (secs, n) = timed(env, ctx, "seq_read", || warm_file(&p))?;
    check(n == l.scale.big, || {
        format!("read {n} bytes of {}", l.scale.big)
    })?;
    Ok(vec![(Metric::SeqRead, secs)])
}

fn rand_read_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    warm_file(&l.lower_of(BIG))?;
    let mut rng = Rng::new(4096);
    let blocks = l.scale.big / 4096;
    let offsets: Vec<u64> = (0..l.scale.rand_reads)
        .map(|_| rng.below(blocks) * 4096)
        .collect();
    let f = File::open(env.read_path(l, BIG))?;
    settle(env, l);
    let mut buf = vec![0u8; 4096];
    let (secs, ()) = timed(env, ctx, "rand_read", || {
        for &off in &offsets {
            f.read_exact_at(&mut buf, off)?;
        }
        Ok(())
    })?;
    Ok(vec![(Metric::RandRead, secs)])
}

/// What a durable copy-up does, on the native filesystem: copy into a
/// temporary file, fsync, rename into place, fsync the directory.
fn native_copy_up(src: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let s = File::open(src)?;
    let d = File::create(&tmp)?;
    let len = s.metadata()?.len();
    // copy_file_range refuses to cross filesystems (EXDEV) unless the
    // filesystem implements it; the kernel's overlayfs splices then, as
    // sendfile does.
    let mut cross = false;
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: valid descriptors; null offsets use the file positions.
        let r = unsafe {
            if cross {
                libc::sendfile(d.as_raw_fd(), s.as_raw_fd(), std::ptr::null_mut(), want)
            } else {
                libc::copy_file_range(
                    s.as_raw_fd(),
                    std::ptr::null_mut(),
                    d.as_raw_fd(),
                    std::ptr::null_mut(),
                    want,
                    0,
                )
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if !cross && e.raw_os_error() == Some(libc::EXDEV) {
                cross = true;
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        done += r as u64;
    }
    d.sync_all()?;
    fs::rename(&tmp, &dst)?;
    File::open(dir)?.sync_all()?;
    Ok(dst)
}

fn copy_up_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let lower = l.lower_of(BIG);
    warm_file(&lower)?;
    let native_dir = env.view(0).join("big");
    let target = env.view(0).join(BIG);
    if env.system == System::Native {
        fs::create_dir(&native_dir)?;
    }
    let system = env.system;
    settle(env, l);
    let (secs, ()) = timed(env, ctx, "copy_up", || {
        let p = if system == System::Native {
            native_copy_up(&lower, &native_dir, "file.bin")?
        } else {
            target.clone()
        };
        let mut f = OpenOptions::new().append(true).open(&p)?;
        f.write_all(b"x")?;
        Ok(())
    })?;
    let len = fs::metadata(&target)?.len();
    check(len == l.scale.big + 1, || {
        format!("{system}: size after append {len}")
    })?;
    Ok(vec![(Metric::CopyUp, secs)])
}

/// Runs `cmd` as the timed section `what`; fails unless it succeeds.
fn timed_command(env: &mut Env, ctx: &Ctx, what: &str, cmd: &mut Command) -> io::Result<f64> {
    let (secs, out) = timed(env, ctx, what, || cmd.stdin(Stdio::null()).output())?;
    check(out.status.success(), || {
        format!(
            "{}: {what} failed: {}",
            env.system,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(secs)
}

/// Reads every file under `p` (host cache warm for the copies).
fn warm_tree(p: &Path) -> io::Result<()> {
    visit_tree(p, &mut |p, md| {
        if md.is_file() {
            warm_file(p)?;
        }
        Ok(())
    })
}

/// `chown -R -h` of a rootfs subtree to another owner: every entry is
/// copied up (data included: no system here copies metadata only), and a
/// copy-up is durable on rovl and the kernel. Not run on the native
/// filesystem ([`Job::measures`]).
fn chown_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let (rel, entries) = (&l.chown.0, l.chown.1);
    for low in &l.lowers {
        let p = low.join(rel);
        if p.exists() {
            warm_tree(&p)?;
        }
    }
    let root = env.view(0).join(rel);
    settle(env, l);
    // -h: a symlink itself, never what it points to (the rootfs's links
    // are absolute).
    let mut chown = Command::new("chown");
    chown.args(["-R", "-h", "1234:1234"]).arg(&root);
    let secs = timed_command(env, ctx, "chown", &mut chown)?;
    let mut changed = 0u64;
    visit_tree(&root, &mut |_, md| {
        changed += u64::from(std::os::unix::fs::MetadataExt::uid(md) == 1234);
        Ok(())
    })?;
    check(changed == entries, || {
        format!(
            "{}: {changed} entries changed owner, expected {entries}",
            env.system
        )
    })?;
    Ok(vec![(Metric::Chown, secs)])
}

fn untar_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    warm_file(&l.tar)?;
    let dest = env.view(0).join("untar");
    fs::create_dir(&dest)?;
    settle(env, l);
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(&l.tar).arg("-C").arg(&dest);
    let secs = timed_command(env, ctx, "untar", &mut tar)?;
    let first = dest.join("pkg000/file00000.dat");
    check(first.exists(), || format!("{} missing", first.display()))?;
    Ok(vec![(Metric::Untar, secs)])
}

/// Dirty + Writeback from /proc/meminfo, in MiB.
fn dirty_mib() -> f64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = info
        .lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    kib as f64 / 1024.0
}

fn noisy_job(env: &mut Env, l: &Layers, ctx: &Ctx) -> io::Result<Vec<(Metric, f64)>> {
    let buf = random_buffer(2);
    settle(env, l);
    // The neighbour (mount 1) writes a lot and does not sync.
    write_big(&env.view(1).join("noise.bin"), l.scale.write, &buf, false)?;
    // Mount 0 writes one small file and wants it durable.
    let a = env.view(0).to_path_buf();
    let small = a.join("small.bin");
    fs::write(&small, &buf[..4096])?;
    let dir = File::open(&a)?;
    let file = File::open(&small)?;
    let system = env.system;
    let (secs, ()) = timed(env, ctx, "noisy_sync", || {
        // SAFETY: plain syscalls on descriptors we own.
        let r = unsafe {
            match system {
                System::Rovl => libc::ioctl(dir.as_raw_fd(), ROVL_IOC_SYNCFS as _),
                System::Kernel | System::FuseOverlayfs => libc::syncfs(dir.as_raw_fd()),
                // The least a program needs for durability of that file.
                System::Native => {
                    let r = libc::fsync(file.as_raw_fd());
                    if r != 0 {
                        r
                    } else {
                        libc::fsync(dir.as_raw_fd())
                    }
                }
            }
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })?;
    let left = dirty_mib();
    Ok(vec![
        (Metric::NoisySync, secs),
        (Metric::NoisyDirtyLeft, left),
    ])
}
