//! `difftest`: seeded operation sequences on rovl and kernel overlayfs,
//! compared step by step; divergences shrunk and printed as Rust tests.
//!
//! ```text
//! difftest [--seeds N] [--first S] [--seed S] [--steps M] [--long DURATION]
//!          [--jobs J] [--rovl PATH] [--interchange-every K] [--ignore FIELD]...
//!          [--no-known] [--no-shrink] [--shrink-budget SECS] [--verbose]
//! difftest --layers S
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use difftest::drive::Batch;
use difftest::known::Known;

const USAGE: &str =
    "usage: difftest [--seeds N] [--first S] [--seed S] [--steps M] [--long DURATION]
                [--jobs J] [--rovl PATH] [--interchange-every K] [--ignore FIELD]...
                [--no-known] [--no-shrink] [--shrink-budget SECS] [--verbose]
       difftest --layers S

  --seeds N              run seeds FIRST..FIRST+N (default 200)
  --first S              first seed (default 0)
  --seed S               run only seed S, verbosely
  --steps M              steps per sequence (default 50)
  --long DURATION        run fresh seeds until DURATION has passed (30s, 10m, 2h)
  --jobs J               parallel workers (default 2)
  --rovl PATH            the rovl binary (default: next to this one, or $ROVL_BIN)
  --interchange-every K  remount checks for seeds divisible by K (default 10; 0: off)
  --ignore FIELD         leave FIELD out of comparisons (repeatable)
  --no-known             do not skip the known divergences listed in FINDINGS.md
  --no-shrink            report divergences without shrinking them
  --shrink-budget SECS   time to shrink each distinct divergence (default 120)
  --verbose              print every seed
  --layers S             print the lower layers seed S generates (as Rust) and exit";

/// Parses `30s`, `10m`, `2h`, `1d` or plain seconds.
fn duration(s: &str) -> Option<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n * mult))
}

fn default_rovl() -> PathBuf {
    if let Some(p) = std::env::var_os("ROVL_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("rovl")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("rovl"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut seeds = 200u64;
    let mut first = 0u64;
    let mut single: Option<u64> = None;
    let mut long: Option<Duration> = None;
    let mut batch = Batch {
        rovl: default_rovl(),
        steps: 50,
        jobs: 2,
        interchange_every: 10,
        known: Known::current(),
        ignore: Vec::new(),
        shrink_budget: Duration::from_secs(120),
        shrink_max: 5,
        verbose: false,
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--seeds" => seeds = val()?.parse().map_err(|e| format!("--seeds: {e}"))?,
                "--first" => first = val()?.parse().map_err(|e| format!("--first: {e}"))?,
                "--seed" => single = Some(val()?.parse().map_err(|e| format!("--seed: {e}"))?),
                "--steps" => batch.steps = val()?.parse().map_err(|e| format!("--steps: {e}"))?,
                "--long" => {
                    let v = val()?;
                    long = Some(duration(&v).ok_or(format!("--long: bad duration {v}"))?);
                }
                "--jobs" => batch.jobs = val()?.parse().map_err(|e| format!("--jobs: {e}"))?,
                "--rovl" => batch.rovl = PathBuf::from(val()?),
                "--interchange-every" => {
                    batch.interchange_every = val()?
                        .parse()
                        .map_err(|e| format!("--interchange-every: {e}"))?
                }
                "--ignore" => batch.ignore.push(val()?),
                "--no-known" => batch.known = Known::default(),
                "--no-shrink" => batch.shrink_budget = Duration::ZERO,
                "--shrink-budget" => {
                    let v: u64 = val()?
                        .parse()
                        .map_err(|e| format!("--shrink-budget: {e}"))?;
                    batch.shrink_budget = Duration::from_secs(v);
                }
                "--verbose" | "-v" => batch.verbose = true,
                "--layers" => {
                    let seed: u64 = val()?.parse().map_err(|e| format!("--layers: {e}"))?;
                    for e in difftest::spec::generate(seed).entries {
                        println!("{},", e.to_rust());
                    }
                    std::process::exit(0);
                }
                "--help" | "-h" => return Err(String::new()),
                _ => return Err(format!("unknown argument {a}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            if !e.is_empty() {
                eprintln!("difftest: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    if !batch.rovl.exists() {
        eprintln!(
            "difftest: rovl binary {} not found (--rovl or ROVL_BIN)",
            batch.rovl.display()
        );
        return ExitCode::from(2);
    }
    if !batch.known.is_empty() {
        eprintln!(
            "difftest: skipping known divergences from FINDINGS.md: seeds {:?}, fields {:?}",
            batch.known.seeds, batch.known.ignore
        );
    }
    let report = if let Some(s) = single {
        batch.verbose = true;
        batch.interchange_every = if batch.interchange_every == 0 { 0 } else { 1 };
        batch.known.seeds.clear();
        batch.run(&[s], None)
    } else if let Some(d) = long {
        // Fresh seeds each run, from the clock; printed so they can be re-run.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as u64)
            % 1_000_000_000_000;
        eprintln!("difftest: --long {d:?}: seeds from {start} on (re-run one with --seed)");
        let seeds: Vec<u64> = (start..start + 1_000_000).collect();
        batch.run(&seeds, Some(Instant::now() + d))
    } else {
        let seeds: Vec<u64> = (first..first + seeds).collect();
        batch.run(&seeds, None)
    };
    println!("{}", report.text());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
