//! The mount lifecycle end to end: mount, read through, write, unmount.

mod common;
use common::*;

#[test]
fn mount_read_write_unmount() {
    let s = Scratch::new().unwrap();
    let st = Stack::under(s.path(), 2);
    put(&st.lower(1, "a"), "from l1");
    put(&st.lower(0, "b"), "from l0");
    let m = mount_rovl(&st, "");
    assert_eq!(get(&st.m("a")), "from l1");
    assert_eq!(get(&st.m("b")), "from l0");
    put(&st.m("c"), "new");
    assert_eq!(names(&st.mnt), vec!["a", "b", "c"]);
    let status = m.unmount().unwrap();
    assert!(status.is_none() || status.unwrap().success());
    assert_eq!(get(&st.upper.join("c")), "new");
}
