//! Known divergences, read from the "Known divergences" section of
//! FINDINGS.md, so that CI stays green while a finding is being fixed.
//! Lines there: `- seed N: why` (skip that seed) or `- ignore FIELD: why`
//! (leave a field out of every comparison).

/// The FINDINGS.md this crate was built with.
pub const FINDINGS: &str = include_str!("../FINDINGS.md");

/// What CI skips.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Seeds not run.
    pub seeds: Vec<u64>,
    /// Fields not compared.
    pub ignore: Vec<String>,
    /// A diverging seed is replayed; when the replays do not diverge it is
    /// reported as flaky instead of failing (`- retry flaky: why`).
    pub retry_flaky: bool,
}

impl Known {
    /// Parses the "Known divergences" section of a FINDINGS.md text.
    pub fn parse(text: &str) -> Known {
        let mut k = Known::default();
        let mut inside = false;
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                inside = h.trim_start().starts_with("Known divergences");
                continue;
            }
            if !inside {
                continue;
            }
            let Some(item) = line.trim().strip_prefix("- ") else {
                continue;
            };
            let head = item.split(':').next().unwrap_or("").trim();
            if let Some(n) = head.strip_prefix("seed ") {
                if let Ok(n) = n.trim().parse() {
                    k.seeds.push(n);
                }
            } else if let Some(f) = head.strip_prefix("ignore ") {
                k.ignore.push(f.trim().to_string());
            } else if head == "retry flaky" {
                k.retry_flaky = true;
            }
        }
        k
    }

    /// The known divergences of this build.
    pub fn current() -> Known {
        Known::parse(FINDINGS)
    }

    /// True when nothing is skipped.
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty() && self.ignore.is_empty() && !self.retry_flaky
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_section_only() {
        let t = "# x\n- seed 1: no\n## Known divergences (CI skips these)\n- seed 17: F1\n- ignore atime: F2\n- retry flaky: F3\n\n## F1\n- seed 3: not here\n";
        let k = Known::parse(t);
        assert_eq!(k.seeds, vec![17]);
        assert_eq!(k.ignore, vec!["atime".to_string()]);
        assert!(k.retry_flaky);
        assert!(Known::parse("## Known divergences\n\nnone\n").is_empty());
    }
}
