//! The daemon under a low open-file limit: it degrades (reopens) rather
//! than fails when the kernel holds more entries, and the mount dirties
//! more files, than it may keep descriptors for (SPEC §4).

mod common;

use std::process::Command;

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
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={LIMIT}:{LIMIT}"))
        .arg(rovl_bin())
        .arg("-o")
        .arg(st.opts())
        .arg(&st.mnt);
    let mut m = FuseMount::spawn(cmd, &st.mnt).unwrap();
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
