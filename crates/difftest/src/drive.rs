//! Running a batch of seeds and reporting what diverged: the common part
//! of the `difftest` binary and the CI test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::known::Known;
use crate::run::{Case, Config, Failure, SeedResult, Workspace, run_many};
use crate::shrink::shrink;

/// A batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The rovl binary.
    pub rovl: PathBuf,
    /// Steps per sequence.
    pub steps: usize,
    /// Worker threads.
    pub jobs: usize,
    /// Run the interchange checks for seeds divisible by this (0: never).
    pub interchange_every: u64,
    /// Known divergences to skip.
    pub known: Known,
    /// Extra fields to leave out.
    pub ignore: Vec<String>,
    /// Time allowed for shrinking each distinct divergence (zero: none).
    pub shrink_budget: Duration,
    /// At most this many distinct divergences are shrunk.
    pub shrink_max: usize,
    /// Print every seed as it finishes.
    pub verbose: bool,
}

/// What a batch found.
#[derive(Debug, Default)]
pub struct Report {
    /// Seeds run.
    pub ran: usize,
    /// Seeds skipped as known.
    pub skipped: Vec<u64>,
    /// Diverging seeds, with their case and divergence.
    pub failures: Vec<(Case, Failure)>,
    /// Seeds that diverged once but not on replay (with `retry_flaky`).
    pub flaky: Vec<(Case, Failure)>,
    /// Harness problems (seed, message).
    pub errors: Vec<(u64, String)>,
    /// Reproducers of the distinct divergences, shrunk.
    pub repros: Vec<String>,
    /// Wall time.
    pub took: Duration,
}

impl Report {
    /// True when nothing diverged and the harness had no trouble.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.errors.is_empty()
    }

    /// A summary with every divergence and the reproducers.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "difftest: {} seeds in {:.1?}, {} diverged, {} harness errors, {} skipped as known",
            self.ran,
            self.took,
            self.failures.len(),
            self.errors.len(),
            self.skipped.len()
        );
        for (c, f) in &self.flaky {
            let _ = writeln!(
                s,
                "seed {}: FLAKY (diverged once, not on replay) [{}]\n{}",
                c.seed,
                f.signature(&c.steps),
                f.describe(&c.steps)
            );
        }
        for (seed, e) in &self.errors {
            let _ = writeln!(s, "seed {seed}: harness error: {e}");
        }
        let mut by_sig: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (c, f) in &self.failures {
            by_sig
                .entry(f.signature(&c.steps))
                .or_default()
                .push(c.seed);
        }
        for (sig, seeds) in &by_sig {
            let _ = writeln!(s, "{sig}: seeds {seeds:?}");
        }
        if self.repros.is_empty() {
            // Nothing was shrunk: say at least what each divergence was
            // (a note such as a failed unmount has no other trace).
            for (c, f) in self.failures.iter().take(5) {
                let _ = write!(s, "seed {}: {}", c.seed, f.describe(&c.steps));
            }
        }
        for r in &self.repros {
            let _ = writeln!(s, "\n{r}");
        }
        s
    }
}

impl Batch {
    fn config(&self) -> Config {
        let mut ignore = self.known.ignore.clone();
        ignore.extend(self.ignore.iter().cloned());
        Config {
            rovl: self.rovl.clone(),
            steps: self.steps,
            ignore,
            interchange: self.interchange_every > 0,
        }
    }

    /// Runs `seeds` (known ones skipped), until `deadline` if given.
    pub fn run(&self, seeds: &[u64], deadline: Option<Instant>) -> Report {
        let t = Instant::now();
        let skipped: Vec<u64> = seeds
            .iter()
            .copied()
            .filter(|s| self.known.seeds.contains(s))
            .collect();
        let todo: Vec<u64> = seeds
            .iter()
            .copied()
            .filter(|s| !self.known.seeds.contains(s))
            .collect();
        let cfg = self.config();
        let verbose = self.verbose;
        let each = move |r: &SeedResult| {
            if !verbose {
                return;
            }
            match &r.result {
                Ok((c, None)) => eprintln!(
                    "seed {}: ok, {} steps, {:.0?}",
                    r.seed,
                    c.steps.len(),
                    r.took
                ),
                Ok((c, Some(f))) => eprintln!(
                    "seed {}: DIVERGES [{}]\n{}",
                    r.seed,
                    f.signature(&c.steps),
                    f.describe(&c.steps)
                ),
                Err(e) => eprintln!("seed {}: harness error: {e}", r.seed),
            }
        };
        let stop = move || deadline.is_some_and(|d| Instant::now() >= d);
        let results = run_many(&cfg, &todo, self.jobs, self.interchange_every, &each, &stop);
        let mut rep = Report {
            ran: results.len(),
            skipped,
            ..Report::default()
        };
        for r in results {
            match r.result {
                Ok((c, Some(f))) => rep.failures.push((c, f)),
                Ok((_, None)) => {}
                Err(e) => rep.errors.push((r.seed, e)),
            }
        }
        if self.known.retry_flaky && !rep.failures.is_empty() {
            if let Ok(mut ws) = Workspace::new() {
                let mut still = Vec::new();
                for (c, f) in std::mem::take(&mut rep.failures) {
                    let mut cfg = cfg.clone();
                    cfg.interchange = f.phase_needs_interchange();
                    let again = (0..2).any(|_| {
                        matches!(crate::run::replay(&mut ws, &cfg, &c), Ok(Some(_)) | Err(_))
                    });
                    if again {
                        still.push((c, f));
                    } else {
                        rep.flaky.push((c, f));
                    }
                }
                rep.failures = still;
            }
        }
        if !self.shrink_budget.is_zero() && !rep.failures.is_empty() {
            rep.repros = self.shrink_all(&rep.failures);
        }
        rep.took = t.elapsed();
        rep
    }

    /// Shrinks the first case of each distinct divergence.
    fn shrink_all(&self, failures: &[(Case, Failure)]) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let Ok(mut ws) = Workspace::new() else {
            return vec!["(no workspace to shrink in)".into()];
        };
        for (case, f) in failures {
            let sig = f.signature(&case.steps);
            if seen.contains(&sig) || seen.len() >= self.shrink_max {
                continue;
            }
            seen.push(sig);
            let mut cfg = self.config();
            cfg.interchange = f.phase_needs_interchange();
            let s = shrink(&mut ws, &cfg, case, f, self.shrink_budget);
            let mut text = String::new();
            if s.flaky {
                let _ = writeln!(
                    text,
                    "// seed {}: did not diverge again on replay (flaky); unshrunk:",
                    case.seed
                );
            } else {
                let _ = writeln!(
                    text,
                    "// seed {}: shrunk in {} replays from {} steps and {} layer entries",
                    case.seed,
                    s.tries,
                    case.steps.len(),
                    case.layers.entries.len()
                );
            }
            text.push_str(&crate::repro::rust_test(&s.case, &s.failure));
            out.push(text);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Phase;
    use crate::spec::Layers;

    #[test]
    fn an_unshrunk_divergence_is_described_with_its_note() {
        let case = Case {
            seed: 42,
            layers: Layers::default(),
            steps: Vec::new(),
        };
        let failure = Failure {
            phase: Phase::Unmount,
            step: None,
            result: None,
            diffs: Vec::new(),
            note: "rovl umount: exit status: 1 busy".to_string(),
        };
        let report = Report {
            ran: 1,
            failures: vec![(case, failure)],
            ..Report::default()
        };
        let text = report.text();
        assert!(text.contains("Unmount: note: seeds [42]"), "{text}");
        assert!(
            text.contains("seed 42: Unmount\n  rovl umount: exit status: 1 busy"),
            "{text}"
        );
    }
}
