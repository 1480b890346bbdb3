//! The daemon under a low open-file limit: it degrades (reopens) rather
//! than fails when the kernel holds more entries, and the mount dirties
//! more files, than it may keep descriptors for (SPEC §4).

mod common;

use common::*;

const LIMIT: u32 = 512;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn walks_writes_and_syncs_more_files_than_its_descriptor_limit() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    for d in 0..20 {
        for f in 0..100 {
            let layer = (d + f) % 2;
            std::fs::create_dir_all(st.lower(layer, &format!("d{d}"))).unwrap();
            std::fs::write(st.lower(layer, &format!("d{d}/f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    let mut m = mount_rovl_limited(&st, "", LIMIT);
    let pid = m.daemon_pids()[0];
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.contains(&format!("Max open files            {LIMIT}")),
        "{limits}"
    );
    // Walk and stat everything: the kernel now holds ~2,000 entries.
    let mut seen = 0;
    for d in 0..20 {
        for e in std::fs::read_dir(st.m(&format!("d{d}"))).unwrap() {
            let e = e.unwrap();
            std::fs::symlink_metadata(e.path()).unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, 2000);
    // Dirty 1,500 files (each kept for writeback tracking until synced).
    for d in 0..15 {
        std::fs::create_dir(st.m(&format!("new{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(st.m(&format!("new{d}/f{f}")), "x").unwrap();
        }
    }
    assert!(
        open_fds(pid) < LIMIT as usize,
        "{} descriptors",
        open_fds(pid)
    );
    let (code, _, err) = run_rovl([std::path::Path::new("sync"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(get(&st.m("d7/f42")), "7/42");
    assert_eq!(get(&st.m("new14/f99")), "x");
    let log = std::fs::read_to_string(st.work.join("rovl/rovl.log")).unwrap();
    assert!(!log.contains("os error 24"), "{log}");
    assert!(
        !st.work.join("rovl/journal").exists() || get(&st.work.join("rovl/journal")).is_empty()
    );
    m.unmount().unwrap();
}

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The daemon remembers every file the mount wrote until the next sync,
/// so that the sync fsyncs exactly those, and a node for every file the
/// kernel holds. Once a sync settled the files and the kernel forgot the
/// nodes, the memory goes back to the system, not only to the allocator
/// (which keeps what is freed in the middle of its heap).
#[test]
fn memory_of_settled_files_and_forgotten_nodes_goes_back_to_the_system() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let mut m = mount_rovl(&st, "");
    let pid = m.daemon_pids()[0];
    let before = rss_kib(pid);
    let dir = st.m("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..30_000 {
        std::fs::write(dir.join(format!("file-{i}")), b"x").unwrap();
    }
    let peak = rss_kib(pid);
    assert!(
        peak > before + 8 * 1024,
        "30,000 dirty files took only {} KiB",
        peak - before
    );
    let (code, _, err) = run_rovl([std::path::Path::new("sync"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    // The kernel forgets the inodes it does not use (FORGET requests).
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let given_back = || (rss_kib(pid) - before) * 3 < (peak - before) * 2;
    let mut waited = 0;
    while !given_back() && waited < 50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    assert!(
        given_back(),
        "RSS {before} KiB at mount, {peak} KiB with 30,000 dirty files, still {} KiB after the sync and the kernel's forgets",
        rss_kib(pid)
    );
}

/// Directories this mount changed and then removed, more of them than the
/// daemon keeps descriptors for: the sync finds them gone (their handles
/// are stale) and has nothing of them to make durable. It used to record
/// ESTALE as a writeback error of each, fail the sync, and leave the
/// error in the journal for good.
#[test]
fn a_sync_after_removing_many_changed_directories_reports_no_error() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    let m = mount_rovl_limited(&st, "", LIMIT);
    for d in 0..300 {
        let dir = st.m(&format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), "x").unwrap();
    }
    for d in 0..300 {
        std::fs::remove_dir_all(st.m(&format!("d{d}"))).unwrap();
    }
    let (code, _, err) = run_rovl([std::path::Path::new("sync"), &st.mnt]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_rovl([
        std::path::Path::new("status"),
        &st.mnt,
        std::path::Path::new("--json"),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["errors_total"], 0, "{out}");
    m.unmount().unwrap();
    assert!(
        !st.work.join("rovl/journal").exists() || get(&st.work.join("rovl/journal")).is_empty()
    );
}
