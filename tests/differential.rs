//! Differential test against kernel overlayfs (crates/difftest): a fixed
//! set of seeded operation sequences, each applied to rovl and to kernel
//! overlayfs over the same layers and compared after every step, with the
//! format-interchange remounts for every tenth seed. A divergence fails the
//! test with a shrunk reproducer to paste below.
//!
//! `DIFFTEST_SEEDS=N` runs another number of seeds. Known divergences
//! (listed in crates/difftest/FINDINGS.md while they are being fixed) are
//! skipped.

mod common;
use common::*;

use std::time::Duration;

use difftest::drive::Batch;
use difftest::known::Known;

#[test]
fn rovl_matches_kernel_overlayfs() {
    let n: u64 = std::env::var("DIFFTEST_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let known = Known::current();
    // At least `n` sequences really run: known seeds are replaced by later ones.
    let seeds: Vec<u64> = (0..)
        .filter(|s| !known.seeds.contains(s))
        .take(n as usize)
        .collect();
    let batch = Batch {
        rovl: rovl_bin(),
        steps: 50,
        jobs: 2,
        interchange_every: 10,
        known,
        ignore: Vec::new(),
        shrink_budget: Duration::from_secs(60),
        shrink_max: 2,
        verbose: false,
    };
    let report = batch.run(&seeds, None);
    eprintln!("{}", report.text());
    assert!(
        report.ok(),
        "rovl diverges from kernel overlayfs; reproducers above"
    );
}
