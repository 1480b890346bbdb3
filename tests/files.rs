//! File operations through a real rovl mount: read/write, fsync family,
//! fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range, locks, shared mmap,
//! O_APPEND, an early read-only open seeing a later copy-up. Kernel
//! overlayfs is the oracle where the outcome is the same by definition.

mod common;
mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::*;
use support::*;

fn setup(s: &Scratch) -> Stack {
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "small"), "0123456789");
    put(&st.lower(0, "dir/in"), "inside");
    // 4 MiB sparse: data at 0 and at 3 MiB.
    let f = std::fs::File::create(st.lower(0, "sparse")).unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    f.write_all_at(&[2u8; 4096], 3 << 20).unwrap();
    f.set_len(4 << 20).unwrap();
    f.sync_all().unwrap();
    st
}

fn seek(f: &std::fs::File, off: i64, whence: i32) -> std::io::Result<i64> {
    // SAFETY: plain lseek on an fd we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fallocate(f: &std::fs::File, mode: i32, off: i64, len: i64) -> std::io::Result<()> {
    // SAFETY: plain fallocate on an fd we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
fn writes_through_one_open_are_read_through_another_and_land_in_the_upper() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = mount_rovl(&st, "");
    let mut w = open(&st.m("small"), libc::O_RDWR).unwrap();
    let r = open(&st.m("small"), libc::O_RDONLY).unwrap();
    w.seek(SeekFrom::Start(4)).unwrap();
    w.write_all(b"AB").unwrap();
    let mut buf = vec![0u8; 10];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"0123AB6789");
    // 3 MiB in one go, read back in odd pieces.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    w.write_all_at(&big, 12345).unwrap();
    let mut back = vec![0u8; big.len()];
    r.read_exact_at(&mut back, 12345).unwrap();
    assert!(back == big, "large write read back differently");
    drop((w, r));
    drop(m);
    assert_eq!(
        &std::fs::read(st.upper.join("small")).unwrap()[..10],
        b"0123AB6789"
    );
    assert_eq!(get(&st.lower(0, "small")), "0123456789");
}

#[test]
fn a_read_only_open_made_before_copy_up_sees_later_writes() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        let r = open(&root.join("small"), libc::O_RDONLY).unwrap();
        let mut buf = [0u8; 10];
        r.read_exact_at(&mut buf, 0).unwrap();
        l.v("before", buf);
        {
            let w = open(&root.join("small"), libc::O_WRONLY).unwrap();
            w.write_all_at(b"xyz", 0).unwrap();
        }
        let mut buf = [0u8; 10];
        l.r("read after", r.read_at(&mut buf, 0));
        l.v("after", buf);
        l
    });
}

#[test]
fn append_mode_appends_even_after_others_wrote() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        let mut a = open(&root.join("small"), libc::O_WRONLY | libc::O_APPEND).unwrap();
        a.write_all(b"-one").unwrap();
        {
            let o = open(&root.join("small"), libc::O_WRONLY).unwrap();
            o.write_all_at(b"-----------------two", 0).unwrap();
        }
        a.write_all(b"-three").unwrap();
        l.r("read", std::fs::read(root.join("small")));
        l
    });
}

#[test]
fn open_with_o_trunc_empties_a_lower_file_and_keeps_the_lower_layer() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        l.r(
            "open trunc",
            open(&root.join("small"), libc::O_WRONLY | libc::O_TRUNC),
        );
        l.v("size", lstat(&root.join("small")).unwrap().len());
        l.r(
            "creat existing",
            open(
                &root.join("dir/in"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            ),
        );
        l.v("size in", lstat(&root.join("dir/in")).unwrap().len());
        l
    });
    assert_eq!(get(&st.lower(0, "small")), "0123456789");
}

#[test]
fn fsync_fdatasync_fsyncdir_flush_and_release_succeed() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let f = open(&st.m("small"), libc::O_RDWR).unwrap();
    f.write_all_at(b"z", 0).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    let n = open(&st.m("dir/new"), libc::O_RDWR | libc::O_CREAT).unwrap();
    n.write_all_at(b"n", 0).unwrap();
    n.sync_all().unwrap();
    for d in ["", "dir"] {
        let dir = open(&st.m(d), libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        dir.sync_all().unwrap();
    }
    // close(2) = flush + release; a dup keeps the file open.
    // SAFETY: dup of an fd we own.
    let d = unsafe { libc::dup(f.as_raw_fd()) };
    assert!(d >= 0);
    drop(f);
    // SAFETY: d is ours.
    assert_eq!(unsafe { libc::close(d) }, 0);
    drop(n);
    // Read-only files fsync too.
    open(&st.m("dir/in"), libc::O_RDONLY)
        .unwrap()
        .sync_all()
        .unwrap();
}

#[test]
fn seek_data_and_seek_hole_find_the_extents_of_a_sparse_file() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        let p = root.join("sparse");
        // The kernel copies data in 1 MiB chunks (the tail of a chunk is
        // written as zeros), rovl extent by extent: only what both keep is
        // compared after copy-up; copy_up_keeps_a_sparse_file_sparse checks
        // rovl's exact extents.
        let probe = |l: &mut Log, tag: &str, f: &std::fs::File, exact: bool| {
            l.r(format!("{tag} data@0"), seek(f, 0, libc::SEEK_DATA));
            l.r(format!("{tag} hole@0"), seek(f, 0, libc::SEEK_HOLE));
            l.r(format!("{tag} data@8k"), seek(f, 8192, libc::SEEK_DATA));
            if exact {
                l.r(format!("{tag} hole@3M"), seek(f, 3 << 20, libc::SEEK_HOLE));
                l.r(
                    format!("{tag} data past data"),
                    seek(f, (3 << 20) + 8192, libc::SEEK_DATA),
                );
            }
            l.r(format!("{tag} past end"), seek(f, 5 << 20, libc::SEEK_DATA));
            l.r(format!("{tag} end"), seek(f, 0, libc::SEEK_END));
        };
        let r = open(&p, libc::O_RDONLY).unwrap();
        probe(&mut l, "lower", &r, true);
        let w = open(&p, libc::O_RDWR).unwrap();
        probe(&mut l, "copied up", &w, false);
        w.write_all_at(b"mid", 2 << 20).unwrap();
        w.sync_all().unwrap();
        l.r("new data@1M", seek(&w, 1 << 20, libc::SEEK_DATA));
        l
    });
}

#[test]
fn copy_up_keeps_a_sparse_file_sparse() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = mount_rovl(&st, "");
    chmod(&st.m("sparse"), 0o600).unwrap(); // copy-up without a data write
    let up = lstat(&st.upper.join("sparse")).unwrap();
    assert_eq!(up.len(), 4 << 20);
    assert!(
        up.blocks() * 512 <= 64 << 10,
        "copied-up sparse file takes {} bytes",
        up.blocks() * 512
    );
    let f = open(&st.m("sparse"), libc::O_RDONLY).unwrap();
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE).unwrap(), 4096);
    assert_eq!(seek(&f, 4096, libc::SEEK_DATA).unwrap(), 3 << 20);
    assert_eq!(
        seek(&f, 3 << 20, libc::SEEK_HOLE).unwrap(),
        (3 << 20) + 4096
    );
    assert_eq!(
        fails(seek(&f, (3 << 20) + 4096, libc::SEEK_DATA)),
        libc::ENXIO
    );
    drop(f);
    let data = std::fs::read(st.m("sparse")).unwrap();
    assert!(data[..4096].iter().all(|b| *b == 1));
    assert!(data[4096..3 << 20].iter().all(|b| *b == 0));
    assert!(data[3 << 20..(3 << 20) + 4096].iter().all(|b| *b == 2));
    drop(m);
}

#[test]
fn fallocate_allocates_keeps_size_and_punches_holes() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        let f = open(&root.join("small"), libc::O_RDWR).unwrap();
        l.r("allocate", fallocate(&f, 0, 0, 65536));
        l.v("size", lstat(&root.join("small")).unwrap().len());
        l.r(
            "keep size",
            fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20),
        );
        l.v("size kept", lstat(&root.join("small")).unwrap().len());
        l.r(
            "punch",
            fallocate(
                &f,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                2,
                4,
            ),
        );
        l.r(
            "read",
            std::fs::read(root.join("small")).map(|d| d[..10].to_vec()),
        );
        l.r(
            "punch without keep size",
            fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096),
        );
        let ro = open(&root.join("dir/in"), libc::O_RDONLY).unwrap();
        l.r("on read-only fd", fallocate(&ro, 0, 0, 4096));
        l
    });
}

#[test]
fn copy_file_range_between_files_of_the_mount() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        let src = open(&root.join("small"), libc::O_RDONLY).unwrap();
        let dst = open(&root.join("dst"), libc::O_RDWR | libc::O_CREAT).unwrap();
        let mut oi: i64 = 2;
        let mut oo: i64 = 100;
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, 5, 0)
        };
        l.v("copied", n);
        l.v("offsets", (oi, oo));
        l.r("read", std::fs::read(root.join("dst")));
        // Into a lower file: copies it up first.
        let lower = open(&root.join("dir/in"), libc::O_WRONLY).unwrap();
        let mut oi: i64 = 0;
        // SAFETY: as above.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut oi,
                lower.as_raw_fd(),
                std::ptr::null_mut(),
                3,
                0,
            )
        };
        l.v("copied into lower", n);
        l.r("read in", std::fs::read(root.join("dir/in")));
        l
    });
}

#[test]
fn posix_ofd_and_flock_locks_conflict_between_opens() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let a = open(&st.m("small"), libc::O_RDWR).unwrap();
    let b = open(&st.m("small"), libc::O_RDWR).unwrap();
    let lk = |ty: i32| libc::flock {
        l_type: ty as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 5,
        l_pid: 0,
    };
    let mut w = lk(libc::F_WRLCK);
    // SAFETY: fcntl with a valid struct flock.
    assert_eq!(
        unsafe { libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &mut w) },
        0
    );
    let mut probe = lk(libc::F_WRLCK);
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fcntl(b.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) },
        0
    );
    assert_eq!(probe.l_type, libc::F_WRLCK as i16, "conflict not reported");
    let mut w2 = lk(libc::F_WRLCK);
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_OFD_SETLK, &mut w2) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EAGAIN)
    );
    // flock(2) locks conflict between the two opens too.
    let c = open(&st.m("dir/in"), libc::O_RDONLY).unwrap();
    let d = open(&st.m("dir/in"), libc::O_RDONLY).unwrap();
    // SAFETY: plain flock calls.
    unsafe {
        assert_eq!(libc::flock(c.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(
            libc::flock(d.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(libc::flock(c.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(d.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    }
}

#[test]
fn shared_mmap_writes_reach_readers_and_the_upper_layer() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let m = mount_rovl(&st, "");
    let f = open(&st.m("small"), libc::O_RDWR).unwrap();
    // SAFETY: a shared mapping of 10 bytes of a file we hold open; unmapped
    // below before the file is closed.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            10,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let s = std::slice::from_raw_parts_mut(p.cast::<u8>(), 10);
        assert_eq!(s, b"0123456789");
        s[0..3].copy_from_slice(b"MAP");
        assert_eq!(libc::msync(p, 10, libc::MS_SYNC), 0);
        libc::munmap(p, 10);
    }
    let mut r = open(&st.m("small"), libc::O_RDONLY).unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "MAP3456789");
    drop((f, r));
    drop(m);
    assert_eq!(get(&st.upper.join("small")), "MAP3456789");
}

#[test]
fn a_mapping_of_a_lower_file_reads_its_data() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    let _m = mount_rovl(&st, "");
    let f = open(&st.m("dir/in"), libc::O_RDONLY).unwrap();
    // SAFETY: read-only private mapping of a file we hold open.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            6,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(std::slice::from_raw_parts(p.cast::<u8>(), 6), b"inside");
        libc::munmap(p, 6);
    }
}

#[test]
fn unlinked_open_files_stay_readable_and_writable() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root| {
        let mut l = Log::default();
        let f = open(&root.join("small"), libc::O_RDWR).unwrap();
        let g = open(&root.join("dir/in"), libc::O_RDONLY).unwrap();
        l.r("unlink", std::fs::remove_file(root.join("small")));
        l.r(
            "unlink lower-only",
            std::fs::remove_file(root.join("dir/in")),
        );
        l.r("write", f.write_all_at(b"after", 0));
        let mut b = [0u8; 10];
        l.r("read", f.read_at(&mut b, 0));
        l.v("data", b);
        let mut c = [0u8; 6];
        l.r("read lower", g.read_at(&mut c, 0));
        l.v("data lower", c);
        l.r("fstat", f.metadata().map(|m| m.nlink()));
        l
    });
}

#[test]
fn open_file_on_a_path_that_is_renamed_keeps_working() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle(&s, &st, |root: &Path| {
        let mut l = Log::default();
        let f = open(&root.join("dir/in"), libc::O_RDWR).unwrap();
        l.r(
            "rename dir",
            rename2(&root.join("dir"), &root.join("moved"), 0),
        );
        l.r("write", f.write_all_at(b"IN", 0));
        l.r("read new path", std::fs::read(root.join("moved/in")));
        l
    });
}

/// The same with a lower file large enough for rovl to pass reads through
/// to the lower file (FUSE passthrough), and with passthrough off.
fn lower_file_read_then_written(size: usize, rovl_opts: &str) {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    put(&st.lower(0, "big"), &"b".repeat(size));
    oracle_with(&s, &st, rovl_opts, |root| {
        let mut l = Log::default();
        let r = open(&root.join("big"), libc::O_RDONLY).unwrap();
        let mut buf = [0u8; 4];
        l.r("read before", r.read_at(&mut buf, 0));
        l.v("before", buf);
        let w = open(&root.join("big"), libc::O_RDWR);
        l.r("write", w.and_then(|w| w.write_all_at(b"WXYZ", 0)));
        let mut buf = [0u8; 4];
        l.r("read after", r.read_at(&mut buf, 0));
        l.v("old open sees", buf);
        l.v(
            "new open sees",
            std::fs::read(root.join("big")).unwrap()[..4].to_vec(),
        );
        l.v("same inode", {
            let a = r.metadata().unwrap();
            let b = lstat(&root.join("big")).unwrap();
            (a.ino() == b.ino(), a.dev() == b.dev())
        });
        l
    });
}

/// A reader of a lower file whose name is removed, or replaced by a
/// rename (how package managers install a new version), can still fsync,
/// read and stat it, as under kernel overlayfs. Under the writeback cache
/// the kernel first flushes the times it keeps for the file, and rovl
/// answered that flush with ESTALE (nowhere to copy the file up to), so
/// the reader's fsync failed.
#[test]
fn a_reader_of_a_removed_lower_file_can_fsync_it() {
    for opts in ["passthrough=on", "passthrough=off"] {
        let s = Scratch::new().unwrap();
        let st = setup(&s);
        put(&st.lower(0, "gone"), "old");
        put(&st.lower(0, "replaced"), "old");
        put(&st.lower(0, "new"), "new");
        oracle_with(&s, &st, opts, |root| {
            let mut l = Log::default();
            let gone = open(&root.join("gone"), libc::O_RDONLY).unwrap();
            let replaced = open(&root.join("replaced"), libc::O_RDONLY).unwrap();
            l.r("unlink", std::fs::remove_file(root.join("gone")));
            l.r(
                "rename over",
                std::fs::rename(root.join("new"), root.join("replaced")),
            );
            for (what, f) in [("removed", &gone), ("replaced", &replaced)] {
                l.r(format!("{what}: fsync"), f.sync_all());
                l.r(format!("{what}: fdatasync"), f.sync_data());
                let mut buf = [0u8; 3];
                l.r(format!("{what}: read"), f.read_at(&mut buf, 0));
                l.v(format!("{what}: data"), buf);
                l.v(
                    format!("{what}: mode and links"),
                    f.metadata().map(|m| (m.mode(), m.nlink())).ok(),
                );
            }
            l.v("names", names(root));
            l
        });
    }
}

/// Below 1 MiB rovl never passes lower files through, so a reader of a
/// lower file sees what a writer writes after copy-up, on the same inode,
/// as under kernel overlayfs.
#[test]
fn a_lower_file_open_for_reading_can_be_written_and_the_reader_sees_it() {
    lower_file_read_then_written((1 << 20) - 1, "");
}

#[test]
fn a_big_lower_file_open_for_reading_can_be_written_without_passthrough() {
    lower_file_read_then_written(1 << 20, "passthrough=off");
}

/// A lower file of 1 MiB or more that a reader holds through passthrough
/// (the kernel then keeps the lower file as the inode's backing file) is
/// copied up to a new inode when written: the documented divergence from
/// kernel overlayfs (README). The reader keeps the old data; the lower
/// layer is never written; new opens see the new data, and the name's new
/// inode number is the one it keeps across remounts.
#[test]
fn a_big_lower_file_held_through_passthrough_is_copied_up_to_a_new_inode() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    put(&st.lower(0, "big"), &"b".repeat(1 << 20));
    let ino_after = {
        let m = mount_rovl(&st, "passthrough=on");
        let r = open(&st.m("big"), libc::O_RDONLY).unwrap();
        let before = r.metadata().unwrap().ino();
        let w = open(&st.m("big"), libc::O_RDWR).unwrap();
        w.write_all_at(b"WXYZ", 0).unwrap();
        let mut buf = [0u8; 4];
        r.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"bbbb", "the reader keeps the lower file");
        assert_eq!(&std::fs::read(st.m("big")).unwrap()[..4], b"WXYZ");
        assert_eq!(
            w.metadata().unwrap().ino(),
            lstat(&st.m("big")).unwrap().ino()
        );
        let after = lstat(&st.m("big")).unwrap().ino();
        assert_ne!(before, after, "the name moved to a new inode");
        assert_eq!(r.metadata().unwrap().ino(), before);
        drop((r, w, m));
        after
    };
    assert_eq!(get(&st.lower(0, "big")), "b".repeat(1 << 20));
    let _m = mount_rovl(&st, "passthrough=on");
    assert_eq!(lstat(&st.m("big")).unwrap().ino(), ino_after);
    assert_eq!(&std::fs::read(st.m("big")).unwrap()[..4], b"WXYZ");
}

/// Opening for writing a lower file that needs a new node (a big file a
/// reader holds through passthrough, or one of several hard links) makes
/// rovl answer ESTALE and rely on the kernel's one retry. The caller must
/// never see ESTALE, also when many such opens run at once.
#[test]
fn opening_pinned_or_hard_linked_lower_files_for_writing_never_fails_with_estale() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    const N: usize = 64;
    for i in 0..N {
        let big = st.lower(0, &format!("big{i}"));
        put(&big, "");
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        put(&st.lower(0, &format!("hl{i}")), "linked");
        link(
            &st.lower(0, &format!("hl{i}")),
            &st.lower(0, &format!("hl{i}-2")),
        )
        .unwrap();
    }
    let _m = mount_rovl(&st, "");
    let errors: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let st = &st;
                sc.spawn(move || {
                    let mut errs = Vec::new();
                    for i in (t..N).step_by(4) {
                        let big = st.m(&format!("big{i}"));
                        let _reader = open(&big, libc::O_RDONLY).unwrap();
                        if let Err(e) = open(&big, libc::O_RDWR) {
                            errs.push(format!("big{i}: {e}"));
                        }
                        if let Err(e) = open(&st.m(&format!("hl{i}")), libc::O_RDWR) {
                            errs.push(format!("hl{i}: {e}"));
                        }
                        if let Err(e) = chmod(&st.m(&format!("hl{i}-2")), 0o600) {
                            errs.push(format!("chmod hl{i}-2: {e}"));
                        }
                    }
                    errs
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(errors.is_empty(), "{} failures: {errors:?}", errors.len());
}

/// After each way of changing a file, stat shows its new size and a new
/// mtime (set to the past before each step), as under kernel overlayfs —
/// through passthrough and through the writeback cache alike.
fn attributes_follow_changes(rovl_opts: &str) {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    oracle_with(&s, &st, rovl_opts, |root| {
        let mut l = Log::default();
        let p = root.join("small");
        let f = open(&p, libc::O_RDWR).unwrap();
        let g = open(&root.join("dir/in"), libc::O_RDONLY).unwrap();
        type Step<'a> = Box<dyn Fn() -> std::io::Result<()> + 'a>;
        let steps: Vec<(&str, Step)> = vec![
            ("pwrite inside", Box::new(|| f.write_all_at(b"ab", 2))),
            ("pwrite past end", Box::new(|| f.write_all_at(b"tail", 100))),
            ("ftruncate", Box::new(|| f.set_len(50))),
            ("truncate path", Box::new(|| truncate(&p, 7000))),
            ("fallocate", Box::new(|| fallocate(&f, 0, 0, 20000))),
            (
                "copy_file_range",
                Box::new(|| {
                    let mut oi: i64 = 0;
                    let mut oo: i64 = 30000;
                    // SAFETY: valid fds and offsets.
                    let n = unsafe {
                        libc::copy_file_range(g.as_raw_fd(), &mut oi, f.as_raw_fd(), &mut oo, 6, 0)
                    };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                }),
            ),
            ("write via other open", Box::new(|| write(&p, b"replaced"))),
        ];
        for (what, step) in steps {
            utimes(&p, (1000, 0), (1000, 0)).unwrap();
            l.r(what, step());
            let m = lstat(&p).unwrap();
            let fm = f.metadata().unwrap();
            l.v(format!("{what}: size"), m.len());
            l.v(format!("{what}: fstat size"), fm.len());
            l.v(format!("{what}: mtime moved"), m.mtime() != 1000);
        }
        l
    });
}

#[test]
fn attributes_follow_every_kind_of_change() {
    attributes_follow_changes("");
}

#[test]
fn attributes_follow_every_kind_of_change_without_passthrough() {
    attributes_follow_changes("passthrough=off");
}

/// The daemon needs descriptors for what the kernel holds open; with a low
/// hard limit (containers often get `nofile=1024:1024`) it must degrade,
/// not hand EMFILE to programs: kernel overlayfs has no such shared limit.
/// Thousands of lookups and reads already work within 256 descriptors;
/// many files open at once must too.
#[test]
fn many_open_files_work_under_a_low_descriptor_limit() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    for d in 0..20 {
        for i in 0..100 {
            put(&st.lower(0, &format!("d{d}/f{i}")), &format!("{d}-{i}"));
        }
    }
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=256:256")
        .arg(rovl_bin())
        .arg("-o")
        .arg(st.opts())
        .arg(&st.mnt);
    let _m = FuseMount::spawn(cmd, &st.mnt).unwrap();
    // Lookups and reads of 2000 files, one after the other.
    for d in 0..20 {
        for i in 0..100 {
            assert_eq!(get(&st.m(&format!("d{d}/f{i}"))), format!("{d}-{i}"));
        }
    }
    // 400 files open at once, half of them for writing (copied up).
    let mut open_files = Vec::new();
    let mut errors = Vec::new();
    for d in 0..4 {
        for i in 0..100 {
            let flags = if i % 2 == 0 {
                libc::O_RDONLY
            } else {
                libc::O_RDWR
            };
            match open(&st.m(&format!("d{d}/f{i}")), flags) {
                Ok(f) => open_files.push(f),
                Err(e) => errors.push(e.raw_os_error()),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} of 400 opens failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    for f in &open_files {
        let mut b = [0u8; 8];
        assert!(f.read_at(&mut b, 0).unwrap() > 0);
    }
    // Names removed while their files are open (the daemon's descriptor may
    // be all that keeps such a file alive): the open files still read and
    // write, the names are gone.
    for d in 0..4 {
        for i in (0..100).step_by(3) {
            std::fs::remove_file(st.m(&format!("d{d}/f{i}"))).unwrap();
        }
    }
    std::fs::rename(st.m("d0/f1"), st.m("d0/f4")).unwrap();
    for d in 0..20 {
        for i in 0..100 {
            let _ = std::fs::metadata(st.m(&format!("d{d}/f{i}")));
        }
    }
    for (n, f) in open_files.iter().enumerate() {
        let (d, i) = (n / 100, n % 100);
        let mut b = [0u8; 16];
        let got = f.read_at(&mut b, 0).unwrap();
        assert_eq!(
            std::str::from_utf8(&b[..got]).unwrap(),
            format!("{d}-{i}"),
            "d{d}/f{i} after the names went"
        );
        if i % 2 == 1 {
            f.write_at(b"W", 0).unwrap();
            f.read_at(&mut b[..1], 0).unwrap();
            assert_eq!(&b[..1], b"W", "d{d}/f{i} written after the names went");
        }
    }
    assert!(!st.m("d0/f3").exists());
    assert!(!st.m("d0/f1").exists());
    assert_eq!(get(&st.m("d0/f4")), "W-1");
    // Under descriptor pressure those files were kept alive by links in the
    // work directory, which go with the last close.
    let orphans = || {
        std::fs::read_dir(st.work.join("work"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("orphan-")
            })
            .count()
    };
    assert!(orphans() > 0, "the work directory kept no removed file");
    drop(open_files);
    let t = std::time::Instant::now();
    while orphans() > 0 && t.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(orphans(), 0, "links left in the work directory");
}

/// A program running from the mount cannot be opened for writing (ETXTBSY)
/// — from a lower layer and after copy-up — and can once it exited; the
/// same as under kernel overlayfs.
#[test]
fn running_programs_are_text_busy_like_under_the_kernel() {
    let s = Scratch::new().unwrap();
    let st = setup(&s);
    std::fs::copy("/bin/sleep", st.lower(0, "sleeper")).unwrap();
    std::fs::copy("/bin/sleep", st.lower(0, "copied")).unwrap();
    let log = oracle(&s, &st, |r| {
        let mut l = Log::default();
        // One copied up before it runs, one run straight from the lower layer.
        chmod(&r.join("copied"), 0o755).unwrap();
        for n in ["sleeper", "copied"] {
            let p = r.join(n);
            let mut child = std::process::Command::new(&p).arg("5").spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            l.r(
                format!("{n}: open for writing while running"),
                open(&p, libc::O_WRONLY),
            );
            l.r(
                format!("{n}: read while running"),
                std::fs::read(&p).map(|d| d.len()),
            );
            child.kill().unwrap();
            child.wait().unwrap();
            l.r(
                format!("{n}: open for writing after"),
                open(&p, libc::O_WRONLY),
            );
        }
        l
    });
    for n in ["sleeper", "copied"] {
        let w = format!("{n}: open for writing while running");
        assert_eq!(log.errno(&w), libc::ETXTBSY, "{w}");
        assert_eq!(log.errno(&format!("{n}: open for writing after")), 0);
    }
}

/// Writing more than the upper filesystem holds: write(2) fails with ENOSPC
/// (passthrough, the default as root) like under the kernel; without
/// passthrough the kernel's writeback cache accepts the write and the error
/// comes with fsync (SPEC §3), never silently.
#[test]
fn a_full_upper_filesystem_reports_enospc() {
    let s = Scratch::new().unwrap();
    for opts in ["", "passthrough=off"] {
        let fs = s.mkdir(format!("fs{}", opts.len())).unwrap();
        testbed::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
                .arg(&fs),
        );
        let mut st = Stack::under(&fs.join("stack"), 1);
        st.upper = fs.join("upper");
        st.work = fs.join("work");
        mkdirs(&st.upper);
        mkdirs(&st.work);
        let _m = mount_rovl(&st, opts);
        let mut f = open(&st.m("new"), libc::O_WRONLY | libc::O_CREAT).unwrap();
        let chunk = vec![7u8; 256 << 10];
        let mut write_err = None;
        for _ in 0..8 {
            if let Err(e) = f.write_all(&chunk) {
                write_err = e.raw_os_error();
                break;
            }
        }
        let sync_err = f.sync_all().err().and_then(|e| e.raw_os_error());
        if opts.is_empty() {
            assert_eq!(write_err, Some(libc::ENOSPC), "passthrough: write");
        } else {
            assert!(
                write_err == Some(libc::ENOSPC) || sync_err == Some(libc::ENOSPC),
                "writeback cache: write {write_err:?}, fsync {sync_err:?}"
            );
        }
    }
}
