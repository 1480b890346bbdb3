//! Medians, ratios, targets, and the Markdown/JSON reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::layers::Layers;
use crate::systems::System;
use crate::workloads::{Metric, Unit};

/// Start and end markers of the generated part of BENCHMARKS.md.
pub const BEGIN: &str = "<!-- BEGIN rovl-bench results (generated; edit outside these markers) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- END rovl-bench results -->";

/// Every sample of a run.
#[derive(Debug, Default)]
pub struct Results {
    /// Samples per metric and system, in run order.
    pub samples: BTreeMap<(Metric, System), Vec<f64>>,
    /// Measurements that failed: (run, job, system, error).
    pub failures: Vec<String>,
}

/// Median (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// A value with its unit, readable.
pub fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Mib => format!("{v:.1} MiB"),
        Unit::Seconds if v < 1e-3 => format!("{:.0} µs", v * 1e6),
        Unit::Seconds if v < 1.0 => format!("{:.1} ms", v * 1e3),
        Unit::Seconds => format!("{v:.2} s"),
    }
}

/// A ratio, readable: `0.83`, or `1/250` when tiny.
pub fn fmt_ratio(r: f64) -> String {
    if r > 0.0 && r < 0.1 {
        format!("1/{:.0}", 1.0 / r)
    } else {
        format!("{r:.2}")
    }
}

impl Results {
    /// Median of `m` for `s`.
    pub fn median(&self, m: Metric, s: System) -> Option<f64> {
        self.samples.get(&(m, s)).and_then(|v| median(v))
    }

    /// rovl's median over `s`'s.
    pub fn ratio(&self, m: Metric, s: System) -> Option<f64> {
        let r = self.median(m, System::Rovl)?;
        let o = self.median(m, s)?;
        (o > 0.0).then(|| r / o)
    }

    /// Whether every target of `m` is met, with a description of each
    /// (`None` when nothing could be compared).
    pub fn verdict(&self, m: Metric) -> (String, Option<bool>) {
        let mut parts = Vec::new();
        let mut all = None;
        for t in m.targets() {
            let want = if m == Metric::NoisySync {
                format!("≥ {:.0}× faster than {}", 1.0 / t.max_ratio, t.vs)
            } else {
                format!("≤ {}× {}", t.max_ratio, t.vs)
            };
            match self.ratio(m, t.vs) {
                Some(r) => {
                    let ok = r <= t.max_ratio;
                    all = Some(all.unwrap_or(true) && ok);
                    parts.push(format!("{want}: {}", if ok { "met" } else { "**missed**" }));
                }
                None => parts.push(format!("{want}: n/a")),
            }
        }
        if parts.is_empty() && m.unit() == Unit::Seconds {
            parts.push("none (not one of the issue's workloads)".to_string());
        }
        (parts.join("; "), all)
    }

    /// The Markdown results table plus spreads.
    pub fn markdown(&self, layers: &Layers, systems: &[System]) -> String {
        let mut out = String::new();
        out.push_str("| workload |");
        for s in systems {
            let _ = write!(out, " {s} |");
        }
        out.push_str(" rovl/kernel | rovl/fuse-overlayfs | targets |\n|---|");
        for _ in systems {
            out.push_str("---:|");
        }
        out.push_str("---:|---:|---|\n");
        for m in Metric::ALL {
            if !systems.iter().any(|s| self.samples.contains_key(&(m, *s))) {
                continue;
            }
            let _ = write!(out, "| {} |", m.label(layers));
            for s in systems {
                let cell = self
                    .median(m, *s)
                    .map_or("–".to_string(), |v| fmt_value(v, m.unit()));
                let _ = write!(out, " {cell} |");
            }
            for vs in [System::Kernel, System::FuseOverlayfs] {
                let cell = match self.ratio(m, vs) {
                    Some(r) if !m.targets().is_empty() || m.unit() == Unit::Seconds => fmt_ratio(r),
                    _ => "–".to_string(),
                };
                let _ = write!(out, " {cell} |");
            }
            let (v, _) = self.verdict(m);
            let _ = writeln!(out, " {v} |");
        }
        out.push_str("\nSpread (min – max over the runs):\n\n| workload |");
        for s in systems {
            let _ = write!(out, " {s} |");
        }
        out.push_str("\n|---|");
        for _ in systems {
            out.push_str("---:|");
        }
        out.push('\n');
        for m in Metric::ALL {
            if !systems.iter().any(|s| self.samples.contains_key(&(m, *s))) {
                continue;
            }
            let _ = write!(out, "| {} |", m.key());
            for s in systems {
                let cell = match self.samples.get(&(m, *s)) {
                    Some(v) if !v.is_empty() => {
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        format!(
                            "{} – {} (n={})",
                            fmt_value(lo, m.unit()),
                            fmt_value(hi, m.unit()),
                            v.len()
                        )
                    }
                    _ => "–".to_string(),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        if !self.failures.is_empty() {
            out.push_str("\nFailed measurements (left out of the medians):\n\n");
            for f in &self.failures {
                let _ = writeln!(out, "- {f}");
            }
        }
        out
    }

    /// Every sample as JSON.
    pub fn json(&self, meta: serde_json::Value) -> serde_json::Value {
        let mut metrics = serde_json::Map::new();
        for ((m, s), v) in &self.samples {
            let e = metrics
                .entry(m.key().to_string())
                .or_insert_with(|| serde_json::json!({}));
            e[s.name()] = serde_json::json!({ "samples": v, "median": median(v) });
        }
        serde_json::json!({ "meta": meta, "metrics": metrics, "failures": self.failures })
    }
}

/// Replaces the generated section of the Markdown file `path` (between
/// [`BEGIN`] and [`END`]) with `section`, keeping everything else; appends
/// it if the file has no such section yet.
pub fn splice_into(path: &Path, section: &str) -> io::Result<()> {
    let old = fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", &old[..b], &old[e + END.len()..])
        }
        _ if old.is_empty() => format!("{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    fs::write(path, new)
}
