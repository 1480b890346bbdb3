//! The kernel caches entries and attributes for a long time (rovl's
//! timeout is a day); what rovl changes behind its back must reach it.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

/// Copy-up gives the file (and its parent) a new change time; a stat right
/// after shows it, as it would on kernel overlayfs.
#[test]
fn attributes_follow_copy_up() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 1);
    put(&st.lower(0, "d/f"), "x");
    std::thread::sleep(Duration::from_millis(1100));
    let m = mount_rovl(&st, "");
    let before = std::fs::metadata(st.m("d/f")).unwrap();
    // Copy-up only: open for writing, write nothing.
    drop(OpenOptions::new().append(true).open(st.m("d/f")).unwrap());
    let upper = std::fs::metadata(st.upper.join("d/f")).unwrap();
    assert!(upper.ctime() > before.ctime());
    std::thread::sleep(Duration::from_millis(100));
    let after = std::fs::metadata(st.m("d/f")).unwrap();
    assert_eq!(
        after.ctime(),
        upper.ctime(),
        "the kernel shows the copy's change time"
    );
    assert_eq!(after.ino(), before.ino());
    drop(m);
}
