//! Assertions for reproducers: the same steps on a kernel mount and a rovl
//! mount must give the same outcomes and views.

use std::path::Path;

use crate::ops::{Applier, Step};
use crate::snap::{Snapshot, diff};

/// Applies `steps` to both mounts, comparing every outcome and the views
/// before the first step and after each; panics at the first divergence.
/// Leaves every slot closed. Returns the kernel's final view.
pub fn same_steps(kernel: &Path, rovl: &Path, steps: &[Step]) -> Snapshot {
    same_steps_but(kernel, rovl, steps, &[])
}

/// [`same_steps`], leaving the fields in `ignore` out of the comparison
/// (e.g. `atime`, a documented divergence).
pub fn same_steps_but(kernel: &Path, rovl: &Path, steps: &[Step], ignore: &[&str]) -> Snapshot {
    let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
    let mut ka = Applier::new(kernel);
    let mut ra = Applier::new(rovl);
    let d = diff(
        &Snapshot::take(kernel, &[]),
        &Snapshot::take(rovl, &[]),
        &ignore,
    );
    assert!(d.is_empty(), "views differ before any step:\n{}", lines(&d));
    for (i, s) in steps.iter().enumerate() {
        let (ko, ro) = (ka.apply(s), ra.apply(s));
        assert_eq!(ko, ro, "step {i} {}: kernel {ko} / rovl {ro}", s.to_rust());
        let d = diff(
            &Snapshot::take(kernel, &ka.open_fds()),
            &Snapshot::take(rovl, &ra.open_fds()),
            &ignore,
        );
        assert!(
            d.is_empty(),
            "views differ after step {i} {}:\n{}",
            s.to_rust(),
            lines(&d)
        );
    }
    ka.close_all();
    ra.close_all();
    let k = Snapshot::take(kernel, &[]);
    let d = diff(&k, &Snapshot::take(rovl, &[]), &ignore);
    assert!(d.is_empty(), "views differ at the end:\n{}", lines(&d));
    k
}

/// Panics unless the view at `root` is `want` (the "rovl" side of the
/// message is `root`).
pub fn same_view(want: &Snapshot, root: &Path) {
    let d = diff(want, &Snapshot::take(root, &[]), &[]);
    assert!(d.is_empty(), "views differ:\n{}", lines(&d));
}

fn lines(d: &[crate::snap::Diff]) -> String {
    d.iter().map(|x| format!("  {x}\n")).collect()
}

/// Panics unless the lower layers are as they were (`before` and `after`
/// from [`crate::run::lower_state`]).
pub fn lowers_unchanged(before: &crate::run::LowerState, after: &crate::run::LowerState) {
    let d = crate::run::lower_diffs(before, after, &[]);
    assert!(d.is_empty(), "lower layers changed:\n{}", lines(&d));
}
