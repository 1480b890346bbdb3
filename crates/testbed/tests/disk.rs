//! The failing disk, the benchmark disk and power-cut copies. Needs root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use testbed::{DiskOptions, Ext4Disk, FailingDisk};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write_file(path: &Path, data: &[u8]) -> File {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f
}

fn errno(r: io::Result<()>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().expect("an errno"))
}

fn is_write_error(e: Option<i32>) -> bool {
    e == Some(libc::EIO) || e == Some(libc::ENOSPC)
}

#[test]
fn fsync_fails_after_balloon_and_works_after_heal() {
    balloon_then_heal(true);
}

#[test]
fn buffered_loop_device_fails_the_same_way() {
    balloon_then_heal(false);
}

fn balloon_then_heal(direct_io: bool) {
    let mut disk = FailingDisk::with_options(DiskOptions {
        direct_io,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        disk.direct_io(),
        direct_io,
        "loop device direct I/O on tmpfs"
    );
    let a = write_file(&disk.path().join("a"), &pattern(MIB, 1));
    a.sync_all().unwrap();

    let taken = disk.balloon().unwrap();
    assert!(taken > 0);
    assert_eq!(disk.free_bytes().unwrap(), 0);

    let b = write_file(&disk.path().join("b"), &pattern(MIB, 2));
    let t = Instant::now();
    let first = errno(b.sync_all());
    eprintln!(
        "direct_io={direct_io}: fsync after balloon: errno {first:?} in {:?}",
        t.elapsed()
    );
    assert!(
        is_write_error(first),
        "fsync after balloon returned {first:?}"
    );
    // Told once: the next fsync on the same file description is clean.
    let second = errno(b.sync_all());
    eprintln!(
        "second fsync: errno {second:?}; aborted: {}",
        disk.is_aborted()
    );

    disk.heal().unwrap();
    assert!(disk.free_bytes().unwrap() > 0);
    if disk.is_aborted() {
        disk.recreate().unwrap();
    }
    let c = write_file(&disk.path().join("c"), &pattern(MIB, 3));
    c.sync_all().unwrap();
    assert_eq!(fs::read(disk.path().join("c")).unwrap(), pattern(MIB, 3));
}

#[test]
fn punched_holes_make_overwrites_fail() {
    let mut disk = FailingDisk::new().unwrap();
    let path = disk.path().join("data");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&pattern(MIB, 4), 0).unwrap();
    f.sync_all().unwrap();

    // Without holes, an overwrite of existing blocks survives a balloon.
    disk.balloon().unwrap();
    f.write_all_at(&pattern(MIB, 5), 0).unwrap();
    f.sync_all()
        .expect("overwriting allocated blocks needs no new space");

    let punched = disk.punch_holes_under(&path).unwrap();
    assert_eq!(punched, MIB as u64);
    assert_eq!(disk.free_bytes().unwrap(), 0, "balloon topped up");
    f.write_all_at(&pattern(MIB, 6), 0).unwrap();
    let t = Instant::now();
    let e = errno(f.sync_all());
    eprintln!(
        "fsync of overwrite over holes: errno {e:?} in {:?}",
        t.elapsed()
    );
    assert!(is_write_error(e), "overwrite fsync returned {e:?}");
}

#[test]
fn punching_unsynced_data_is_refused() {
    let mut disk = FailingDisk::new().unwrap();
    let path = disk.path().join("dirty");
    let _f = write_file(&path, &pattern(MIB, 7));
    let e = disk.punch_holes_under(&path).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn journal_abort_is_detected_and_recreate_recovers() {
    let mut disk = FailingDisk::new().unwrap();
    let root = disk.path().to_path_buf();
    disk.balloon().unwrap();
    // New metadata blocks cannot be checkpointed: keep making some and
    // syncing until ext4 gives up.
    let t = Instant::now();
    let mut rounds = 0;
    while !disk.is_aborted() && rounds < 200 {
        let d = root.join(format!("d{rounds}"));
        if fs::create_dir(&d).is_ok() {
            for i in 0..64 {
                let _ = File::create(d.join(i.to_string()));
            }
        }
        let dir = File::open(&root).unwrap();
        // SAFETY: syncfs on an fd we own.
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) };
        rounds += 1;
    }
    eprintln!(
        "journal aborted: {} after {rounds} rounds, {:?}",
        disk.is_aborted(),
        t.elapsed()
    );
    assert!(disk.is_aborted());
    let e = File::create(root.join("after")).unwrap_err();
    eprintln!("create after abort: {e}");
    assert!(
        matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EIO)),
        "{e}"
    );

    disk.recreate().unwrap();
    assert!(!disk.is_aborted());
    assert!(!disk.is_ballooned());
    assert_eq!(disk.path(), root);
    let f = write_file(&root.join("fresh"), &pattern(MIB, 8));
    f.sync_all().unwrap();
}

#[test]
fn power_cut_keeps_fsynced_data_only() {
    let t = Instant::now();
    let disk = FailingDisk::new().unwrap();
    eprintln!("FailingDisk::new took {:?}", t.elapsed());
    let synced = pattern(2 * MIB, 9);
    let unsynced = pattern(MIB, 10);
    let a = write_file(&disk.path().join("synced"), &synced);
    a.sync_all().unwrap();
    File::open(disk.path()).unwrap().sync_all().unwrap();
    // Plain buffered write: stays in the page cache (dirty_expire is 30 s).
    let _b = write_file(&disk.path().join("unsynced"), &unsynced);

    let t = Instant::now();
    let cut = disk.power_cut().unwrap();
    eprintln!("power_cut took {:?}", t.elapsed());
    assert_ne!(cut.path(), disk.path());
    assert_eq!(fs::read(cut.path().join("synced")).unwrap(), synced);
    match fs::read(cut.path().join("unsynced")) {
        Ok(data) => assert_ne!(data, unsynced, "unsynced data must not survive"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
    }
    // The original is untouched and still complete.
    assert_eq!(fs::read(disk.path().join("unsynced")).unwrap(), unsynced);
}

#[test]
fn power_cut_after_write_error_shows_old_data() {
    let mut disk = FailingDisk::new().unwrap();
    let path = disk.path().join("f");
    let old = pattern(MIB, 11);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&old, 0).unwrap();
    f.sync_all().unwrap();
    disk.punch_holes_under(&path).unwrap();
    disk.balloon().unwrap();
    f.write_all_at(&pattern(MIB, 12), 0).unwrap();
    assert!(f.sync_all().is_err());
    // The rewrite never reached the disk; the old data was punched away.
    let cut = disk.power_cut().unwrap();
    let got = fs::read(cut.path().join("f")).unwrap();
    assert_eq!(got.len(), MIB);
    assert!(
        got.iter().all(|&b| b == 0),
        "punched blocks read back as zeros"
    );
}

#[test]
fn ext4_disk_for_benchmarks() {
    let disk = Ext4Disk::new(128 << 20).unwrap();
    eprintln!("Ext4Disk direct I/O: {}", disk.direct_io());
    let image = disk.image().to_path_buf();
    assert!(image.starts_with(testbed::root()));
    let data = pattern(4 * MIB, 13);
    let f = write_file(&disk.path().join("x"), &data);
    f.sync_all().unwrap();
    let cut = disk.power_cut().unwrap();
    assert_eq!(fs::read(cut.path().join("x")).unwrap(), data);
    let dev = disk.device().to_path_buf();
    drop(f);
    drop(cut);
    drop(disk);
    assert!(!image.exists());
    assert_ne!(loop_backing(&dev).as_deref(), Some(image.as_path()));
}

#[test]
fn options_reach_mkfs_and_mount() {
    let disk = FailingDisk::with_options(DiskOptions {
        tmpfs_size: 48 << 20,
        block_size: 4096,
        mount_options: "errors=remount-ro,noatime".into(),
        direct_io: false,
        ..Default::default()
    })
    .unwrap();
    assert!(!disk.direct_io());
    let m = testbed::mounts()
        .unwrap()
        .into_iter()
        .find(|m| m.mount_point == disk.path())
        .unwrap();
    assert_eq!(m.fs_type, "ext4");
    assert!(m.mount_options.contains("noatime"), "{m:?}");
    assert!(m.super_options.contains("errors=remount-ro"), "{m:?}");
    assert!(
        FailingDisk::with_options(DiskOptions {
            tmpfs_size: 256 << 20,
            ..Default::default()
        })
        .is_err()
    );
}

fn loop_backing(dev: &Path) -> Option<std::path::PathBuf> {
    let name = dev.file_name()?;
    let s =
        fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file")).ok()?;
    Some(s.trim_end().into())
}

#[test]
fn many_disks_in_parallel_get_their_own_loop_devices() {
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let mut disk = FailingDisk::with_options(DiskOptions {
                    tmpfs_size: 48 << 20,
                    ..Default::default()
                })
                .unwrap();
                let f = write_file(&disk.path().join("x"), &pattern(64 << 10, i));
                disk.balloon().unwrap();
                drop(f);
                (disk.device().to_path_buf(), disk.image().to_path_buf())
            })
        })
        .collect();
    let mut devs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (dev, image) in &devs {
        assert!(!image.exists());
        assert_ne!(loop_backing(dev).as_deref(), Some(image.as_path()));
    }
    devs.sort();
    devs.dedup_by(|a, b| a.0 == b.0);
    eprintln!("{} distinct loop devices used", devs.len());
}

#[test]
fn punching_covers_every_extent_of_a_fragmented_file() {
    let mut disk = FailingDisk::new().unwrap();
    let path = disk.path().join("sparse");
    let f = File::create(&path).unwrap();
    // 300 separate extents: one block, then a hole, and so on (more than
    // one FIEMAP batch).
    for i in 0..300u64 {
        f.write_all_at(&[7; 4096], i * 8192).unwrap();
    }
    f.sync_all().unwrap();
    assert_eq!(disk.punch_holes_under(&path).unwrap(), 300 * 4096);
}
