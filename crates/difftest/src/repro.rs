//! Printing a (shrunk) case as a Rust test for the regression suite. The
//! test goes into `tests/differential.rs` (it uses the helpers of
//! `tests/common`: `Scratch`, `Stack`, `mount_rovl`, `mount_kernel`).

use std::fmt::Write as _;

use crate::run::{Case, Failure, Phase};

/// The Rust source of a `#[test]` reproducing `failure` of `case`.
pub fn rust_test(case: &Case, failure: &Failure) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/// difftest seed {}: {}",
        case.seed,
        failure.signature(&case.steps)
    );
    for l in failure.describe(&case.steps).lines() {
        let _ = writeln!(s, "/// {l}");
    }
    let _ = writeln!(s, "#[test]");
    let _ = writeln!(s, "fn difftest_seed_{}() {{", case.seed);
    let entries: String = case.layers.entries.iter().map(|e| e.to_rust()).collect();
    let mut spec = vec!["Entry as E", "Forms", "Layers"];
    if entries.contains("Opaque::") {
        spec.push("Opaque");
    }
    if entries.contains("Wh::") {
        spec.push("Wh");
    }
    let _ = writeln!(s, "    use difftest::ops::*;");
    let _ = writeln!(s, "    use difftest::spec::{{{}}};", spec.join(", "));
    let _ = writeln!(s, "    let layers = Layers::from_entries(vec![");
    for e in &case.layers.entries {
        let _ = writeln!(s, "        {},", e.to_rust());
    }
    let _ = writeln!(s, "    ]);");
    let _ = writeln!(s, "    let steps: Vec<Step> = vec![");
    for st in &case.steps {
        let _ = writeln!(s, "        {},", st.to_rust());
    }
    let _ = writeln!(s, "    ];");
    s.push_str(
        "    let s = Scratch::new().unwrap();
    let t = difftest::Tmpfs::new(&s.path().join(\"t\")).unwrap();
    let r = Stack::under(&t.path().join(\"rovl\"), 3);
    let k = Stack::under(&t.path().join(\"kernel\"), 3);
    layers.materialize(&r.lowers, Forms::Native).unwrap();
    layers.materialize(&k.lowers, Forms::Kernel).unwrap();
    let before = difftest::run::lower_state(&r.lowers);
    let rm = mount_rovl(&r, \"\");
    let km = mount_kernel(&k, \"\");
    let want = difftest::check::same_steps(km.path(), rm.path(), &steps);
",
    );
    if !failure.phase_needs_interchange() {
        s = s.replace("    let want = difftest", "    difftest");
    }
    if failure.phase != Phase::LowerModified {
        s = s.replace(
            "    let before = difftest::run::lower_state(&r.lowers);\n",
            "",
        );
    }
    match failure.phase {
        Phase::Initial | Phase::Step | Phase::Final => {}
        Phase::Unmount => {
            s.push_str("    drop(km);\n    rm.unmount().expect(\"rovl unmounts cleanly\");\n");
        }
        Phase::LowerModified => s.push_str(
            "    drop((rm, km));
    difftest::check::lowers_unchanged(&before, &difftest::run::lower_state(&r.lowers));
",
        ),
        Phase::Remount | Phase::KernelOverRovlUpper | Phase::RovlOverKernelUpper => {
            s.push_str("    drop((rm, km));\n");
            let (lowers, upper, mount) = match failure.phase {
                Phase::Remount => ("r", "r", "mount_rovl"),
                Phase::KernelOverRovlUpper => ("k", "r", "mount_kernel"),
                _ => ("r", "k", "mount_rovl"),
            };
            let _ = writeln!(
                s,
                "    let x = Stack {{ lowers: {lowers}.lowers.clone(), upper: {upper}.upper.clone(), work: {upper}.work.clone(), mnt: t.path().join(\"x\") }};"
            );
            let _ = writeln!(s, "    std::fs::create_dir_all(&x.mnt).unwrap();");
            let _ = writeln!(s, "    let xm = {mount}(&x, \"\");");
            let _ = writeln!(s, "    difftest::check::same_view(&want, xm.path());");
        }
    }
    s.push_str("}\n");
    s
}
