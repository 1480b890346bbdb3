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

/// Names `dir` lists (without `.` and `..`), read from its current
/// position to the end.
fn names_from(dir: &mut rustix::fs::Dir) -> Vec<String> {
    let mut out: Vec<String> = dir
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    out.sort();
    out
}

/// rewinddir after a change shows the change (POSIX), and so do later
/// listings. rovl answered the rewound read with the listing it had taken
/// at the first read of that descriptor, and the kernel, whose directory
/// cache had just been reset by the change, cached that for every later
/// reader: a file created in the directory did not show up in any
/// listing until the directory changed again.
#[test]
fn a_rewound_listing_shows_what_changed_and_so_do_later_listings() {
    for mode in ["passthrough=on", "passthrough=off"] {
        let s = Scratch::new().unwrap();
        let st = Stack::under(s.path(), 1);
        put(&st.lower(0, "d/a"), "a");
        let _m = mount_rovl(&st, mode);
        let fd = rustix::fs::open(
            st.m("d"),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let mut dir = rustix::fs::Dir::read_from(&fd).unwrap();
        assert_eq!(names_from(&mut dir), ["a"], "{mode}");
        put(&st.m("d/new"), "n");
        std::fs::remove_file(st.m("d/a")).unwrap();
        dir.rewind();
        assert_eq!(names_from(&mut dir), ["new"], "{mode}: rewound");
        let fresh: Vec<String> = {
            let mut v: Vec<String> = std::fs::read_dir(st.m("d"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(fresh, ["new"], "{mode}: a listing after that");
    }
}
