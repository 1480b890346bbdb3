//! Copy-up while the kernel reads a lower file directly (FUSE passthrough),
//! and copy-up of hard-linked lower files: the cases where one FUSE inode
//! cannot follow its name to the upper copy.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use common::*;

fn read_at(f: &mut File, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut b).unwrap();
    b
}

/// A lower file held open through passthrough, then opened for writing:
/// nothing ever reaches the lower layer (not even through a shared
/// writable mmap of the writer), new opens see the new data, and the
/// renamed-off copy keeps one inode number from then on, across remounts.
#[test]
fn writer_during_lower_passthrough_never_writes_lower() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let mut data = b"OLD!".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(st.lower(0, "big"), &data).unwrap();
    let m = mount_rovl(&st, "passthrough=on");
    let p = st.m("big");
    let mut reader = File::open(&p).unwrap();
    assert_eq!(read_at(&mut reader, 4), b"OLD!");
    let mut w = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    w.write_all(b"NEW!").unwrap();
    let map = map_shared(w.as_raw_fd(), 4096);
    assert_ne!(map, libc::MAP_FAILED);
    // SAFETY (test): the mapping is 4096 bytes long and writable.
    unsafe {
        assert_eq!(std::slice::from_raw_parts(map as *const u8, 4), b"NEW!");
        std::ptr::copy_nonoverlapping(b"MMAP".as_ptr(), (map as *mut u8).add(4), 4);
        libc::msync(map, 4096, libc::MS_SYNC);
        libc::munmap(map, 4096);
    }
    let mut fresh = File::open(&p).unwrap();
    assert_eq!(read_at(&mut fresh, 8), b"NEW!MMAP");
    assert_eq!(
        &std::fs::read(st.lower(0, "big")).unwrap()[..8],
        b"OLD!\0\0\0\0"
    );
    assert_eq!(
        &std::fs::read(st.upper.join("big")).unwrap()[..8],
        b"NEW!MMAP"
    );
    let ino = std::fs::metadata(&p).unwrap().ino();
    drop((reader, w, fresh));
    drop(m);
    let m = mount_rovl(&st, "passthrough=on");
    assert_eq!(
        std::fs::metadata(&p).unwrap().ino(),
        ino,
        "stable across remount"
    );
    assert_eq!(&std::fs::read(&p).unwrap()[..8], b"NEW!MMAP");
    drop(m);
}

/// Without readers holding it, a copied-up lower file keeps its inode
/// number before and after copy-up and across remounts.
#[test]
fn copy_up_keeps_inode_number() {
    for mode in ["passthrough=on", "passthrough=off"] {
        let s = Scratch::new().unwrap();
        let st = Stack::under(s.path(), 1);
        std::fs::write(st.lower(0, "big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(st.lower(0, "small"), b"s").unwrap();
        let m = mount_rovl(&st, mode);
        let before = [
            std::fs::metadata(st.m("big")).unwrap().ino(),
            std::fs::metadata(st.m("small")).unwrap().ino(),
        ];
        for f in ["big", "small"] {
            let mut w = OpenOptions::new().append(true).open(st.m(f)).unwrap();
            w.write_all(b"+").unwrap();
        }
        assert!(st.upper.join("big").exists() && st.upper.join("small").exists());
        let after = [
            std::fs::metadata(st.m("big")).unwrap().ino(),
            std::fs::metadata(st.m("small")).unwrap().ino(),
        ];
        assert_eq!(before, after, "{mode}");
        drop(m);
        let m = mount_rovl(&st, mode);
        let remounted = [
            std::fs::metadata(st.m("big")).unwrap().ino(),
            std::fs::metadata(st.m("small")).unwrap().ino(),
        ];
        assert_eq!(before, remounted, "{mode}: across remount");
        drop(m);
    }
}

/// Writing one name of a hard-linked lower file breaks the link like
/// kernel overlayfs with index=off: the other name keeps the old data and
/// its inode number; the written one becomes a file of its own.
#[test]
fn hard_linked_lower_file_splits_on_write() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "a"), "shared");
    std::fs::hard_link(st.lower(0, "a"), st.lower(0, "b")).unwrap();
    let m = mount_rovl(&st, "");
    let ia = std::fs::metadata(st.m("a")).unwrap().ino();
    let ib = std::fs::metadata(st.m("b")).unwrap().ino();
    assert_eq!(ia, ib, "lower hard links share an inode number");
    {
        let mut w = OpenOptions::new().append(true).open(st.m("a")).unwrap();
        w.write_all(b" + a").unwrap();
    }
    assert_eq!(get(&st.m("a")), "shared + a");
    assert_eq!(get(&st.m("b")), "shared");
    assert_eq!(std::fs::metadata(st.m("b")).unwrap().ino(), ib);
    assert_ne!(std::fs::metadata(st.m("a")).unwrap().ino(), ib);
    // The kernel, on the same layers, agrees on contents and link classes.
    let k = st.twin(&s.path().join("k"));
    let kernel = mount_kernel(&k, "");
    {
        let mut w = OpenOptions::new().append(true).open(k.m("a")).unwrap();
        w.write_all(b" + a").unwrap();
    }
    assert_eq!(get(&k.m("a")), "shared + a");
    assert_eq!(get(&k.m("b")), "shared");
    let (ka, kb) = (
        std::fs::metadata(k.m("a")).unwrap().ino(),
        std::fs::metadata(k.m("b")).unwrap().ino(),
    );
    assert_ne!(ka, kb);
    drop((kernel, m));
}

/// A reader opening a big lower file while a writer's open copies it up
/// must not hold up the rest of the mount: the first open of a file picks
/// its io mode under one mount-wide lock, and used to wait there for the
/// copy-up to finish, so that every other open and close on the mount
/// waited for the whole copy too.
#[test]
fn a_reader_opening_a_file_being_copied_up_holds_up_no_other_open() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let big = st.lower(0, "big");
    {
        let mut f = File::create(&big).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..384 {
            f.write_all(&chunk).unwrap();
        }
    }
    put(&st.lower(0, "small"), "small");
    let _m = mount_rovl(&st, "passthrough=on");
    // The lower file in the host's cache: the copy is then bound by the
    // writes to the upper layer, and takes long enough to watch.
    std::fs::read(&big).unwrap();
    let (copy_took, worst_other) = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let t = std::time::Instant::now();
            let f = OpenOptions::new().write(true).open(st.m("big")).unwrap();
            (t.elapsed(), f)
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        let reader = sc.spawn(|| File::open(st.m("big")).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut worst = std::time::Duration::ZERO;
        while !writer.is_finished() {
            let t = std::time::Instant::now();
            drop(File::open(st.m("small")).unwrap());
            worst = worst.max(t.elapsed());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (took, _w) = writer.join().unwrap();
        let mut r = reader.join().unwrap();
        assert_eq!(read_at(&mut r, 4), [0, 1, 2, 3]);
        (took, worst)
    });
    eprintln!("copy-up {copy_took:?}, worst other open {worst_other:?}");
    assert!(
        worst_other * 3 < copy_took,
        "an open of another file took {worst_other:?} while the copy-up took {copy_took:?}"
    );
}
