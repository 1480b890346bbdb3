//! `rovl-bench`: rovl against kernel overlayfs, fuse-overlayfs and the
//! native upper filesystem, side by side, on the same lower layers, each
//! measurement on a fresh ext4 upper. See BENCHMARKS.md.

mod layers;
mod report;
mod systems;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Parser;

use crate::layers::Layers;
use crate::report::Results;
use crate::systems::{Env, System, Tools};
use crate::workloads::{Ctx, JOBS, Job, Metric};

/// Benchmark rovl against kernel overlayfs, fuse-overlayfs and native ext4.
#[derive(Debug, Parser)]
#[command(name = "rovl-bench")]
struct Cli {
    /// Smaller layers and workloads, one run: for development.
    #[arg(long)]
    quick: bool,
    /// Runs of every workload (medians are reported). Default 5, or 1
    /// with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Only these workloads (comma-separated): walk, readdir, create,
    /// seqwrite, seqread, randread, copyup, chown, untar, noisy.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these systems (comma-separated): native, kernel,
    /// fuse-overlayfs, rovl.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Use this rovl binary instead of building the workspace's in release.
    #[arg(long)]
    rovl: Option<PathBuf>,
    /// The fuse-overlayfs binary.
    #[arg(long, default_value = "fuse-overlayfs")]
    fuse_overlayfs: PathBuf,
    /// Where the generated layers are cached.
    #[arg(long, default_value = "/var/tmp/rovl-bench-cache")]
    cache: PathBuf,
    /// Write the report here. Default: BENCHMARKS.md for a complete run
    /// (all workloads and systems, not --quick), else
    /// target/rovl-bench/report.md.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record perf profiles of the rovl daemon during each timed section
    /// into this directory (one perf.data per workload and run).
    #[arg(long)]
    profile: Option<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // The first Ctrl-C stops after the current measurement, whose guards
    // then clean up; a second one exits at once (the testbed sweeps what
    // is left at the next start).
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Builds rovl in release (the one command builds what it measures).
fn build_rovl() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "--release", "-p", "rovl"])
        .current_dir(workspace())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.success() {
        return Err(format!("cargo build --release -p rovl: {st}"));
    }
    Ok(target_dir().join("release/rovl"))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Machine, versions and date, as Markdown list items and as JSON.
/// The commit a binary was built from, when it lies in a git work tree
/// (`<tree>/target/release/rovl`), with a mark if that tree's `src/` has
/// uncommitted changes.
fn commit_of(bin: &Path) -> String {
    let Some(tree) = bin.canonicalize().ok().and_then(|b| {
        b.ancestors()
            .find(|d| d.join(".git").exists())
            .map(Path::to_path_buf)
    }) else {
        return "unknown commit".into();
    };
    let t = tree.to_string_lossy();
    let commit = sh("git", &["-C", &t, "rev-parse", "--short", "HEAD"]);
    let dirty = !sh("git", &["-C", &t, "status", "--porcelain", "--", "src"]).is_empty();
    format!(
        "{commit}{}",
        if dirty {
            " + uncommitted changes in src/"
        } else {
            ""
        }
    )
}

fn describe(tools: &Tools, cache: &Path) -> (String, serde_json::Value) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(String::new(), |k| {
            format!("{:.1} GiB", k as f64 / 1048576.0)
        });
    let ncpu = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = sh("uname", &["-r"]);
    let disk = sh(
        "findmnt",
        &["-no", "SOURCE,FSTYPE", "--target", &cache.to_string_lossy()],
    );
    let fo = Command::new(&tools.fuse_overlayfs)
        .arg("--version")
        .output()
        .map(|o| {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines()
                .find(|l| l.starts_with("fuse-overlayfs"))
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let rovl = commit_of(&tools.rovl);
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let md = format!(
        "- Machine: {ncpu} vCPU {cpu}, {mem} RAM, Linux {kernel}; lowers on {disk}, \
         uppers on fresh ext4 (loop device, direct I/O, sparse image on the same disk)\n\
         - Versions: rovl {rovl}; {fo}\n\
         - Date: {date}; load average at the end: {load}\n"
    );
    let json = serde_json::json!({
        "cpu": cpu, "ncpu": ncpu, "mem": mem, "kernel": kernel, "disk": disk,
        "rovl": rovl, "fuse_overlayfs": fo, "date": date, "loadavg": load,
    });
    (md, json)
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("rovl-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(true): every measurement succeeded.
fn real_main() -> Result<bool, String> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (mounts, loop devices, drop_caches)".into());
    }
    let jobs: Vec<Job> = if cli.only.is_empty() {
        JOBS.to_vec()
    } else {
        cli.only
            .iter()
            .map(|n| Job::parse(n).ok_or(format!("unknown workload '{n}'")))
            .collect::<Result<_, _>>()?
    };
    let systems: Vec<System> = if cli.systems.is_empty() {
        systems::ALL.to_vec()
    } else {
        let mut v = cli
            .systems
            .iter()
            .map(|n| System::parse(n).ok_or(format!("unknown system '{n}'")))
            .collect::<Result<Vec<_>, _>>()?;
        v.sort();
        v.dedup();
        v
    };
    let complete = !cli.quick && cli.only.is_empty() && cli.systems.is_empty();
    let runs = cli.runs.unwrap_or(if cli.quick { 1 } else { 5 }).max(1);
    let scale = if cli.quick {
        layers::QUICK
    } else {
        layers::FULL
    };

    // SAFETY: installing a handler that only touches an atomic and _exit.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }

    let rovl = match &cli.rovl {
        Some(p) => p.clone(),
        None => build_rovl()?,
    };
    let tools = Tools {
        rovl,
        fuse_overlayfs: cli.fuse_overlayfs.clone(),
    };
    let layers = layers::prepare(&cli.cache, &scale).map_err(|e| format!("layers: {e}"))?;
    let ctx = Ctx {
        profile: cli.profile.clone(),
    };

    let load_before = loadavg();
    let started = Instant::now();
    let mut results = Results::default();
    // The very first measurement of a job in a process comes out slow
    // (first large page-cache allocations, first loop device of its size):
    // one untimed round of each job on the first system absorbs that.
    for job in &jobs {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let Some(first) = systems.iter().copied().find(|s| job.measures(*s)) else {
            continue;
        };
        if let Err(e) = measure(*job, first, &tools, &layers, &ctx) {
            eprintln!("[warm-up] {} {}: {e}", job.name(), first.name());
        }
    }
    'runs: for run in 0..runs {
        for job in &jobs {
            let order: Vec<System> = run_order(systems.len(), run)
                .into_iter()
                .map(|i| systems[i])
                .collect();
            for sys in order.into_iter().filter(|s| job.measures(*s)) {
                if STOP.load(Ordering::SeqCst) {
                    results.failures.push("interrupted".into());
                    break 'runs;
                }
                match measure(*job, sys, &tools, &layers, &ctx) {
                    Ok(ms) => {
                        let shown: Vec<String> = ms
                            .iter()
                            .map(|(m, v)| {
                                format!("{} {}", m.key(), report::fmt_value(*v, m.unit()))
                            })
                            .collect();
                        eprintln!(
                            "[run {}/{runs}] {:<8} {:<14} {}",
                            run + 1,
                            job.name(),
                            sys.name(),
                            shown.join(", ")
                        );
                        for (m, v) in ms {
                            results.samples.entry((m, sys)).or_default().push(v);
                        }
                    }
                    Err(e) => {
                        let msg = format!("run {} {} {}: {e}", run + 1, job.name(), sys.name());
                        eprintln!("[FAILED] {msg}");
                        results.failures.push(msg);
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();

    let (machine, meta) = describe(&tools, &cli.cache);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = if args.is_empty() {
        "cargo run --release -p rovl-bench".to_string()
    } else {
        format!("cargo run --release -p rovl-bench -- {}", args.join(" "))
    };
    let mut table = results.markdown(&layers, &systems);
    let load_after = loadavg();
    if load_before.max(load_after) > 1.0 {
        table = format!(
            "**Noisy machine:** the 1-minute load average was {load_before:.1} at the start and \
             {load_after:.1} at the end (other processes were busy); compare within this run \
             only.\n\n{table}"
        );
    }
    let mins = elapsed.as_secs_f64() / 60.0;
    let section = format!(
        "## Results\n\n{machine}- Command: `{command}` (as root), {runs} run(s) of each \
         workload on the `{}` layer set, medians; the measurements took {mins:.1} min\n\n{table}",
        scale.name
    );
    println!("{section}");

    let interrupted = STOP.load(Ordering::SeqCst);
    let out = cli.out.clone().unwrap_or_else(|| {
        if complete && !interrupted {
            workspace().join("BENCHMARKS.md")
        } else {
            target_dir().join("rovl-bench/report.md")
        }
    });
    if let Some(d) = out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    report::splice_into(&out, &section).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut meta = meta;
    meta["command"] = command.into();
    meta["runs"] = runs.into();
    meta["scale"] = scale.name.into();
    meta["minutes"] = mins.into();
    let json_path = target_dir().join("rovl-bench/results.json");
    let _ = std::fs::create_dir_all(json_path.parent().unwrap());
    let _ = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&results.json(meta)).unwrap_or_default(),
    );
    eprintln!(
        "rovl-bench: report in {}, samples in {} ({mins:.1} min)",
        out.display(),
        json_path.display()
    );
    Ok(results.failures.is_empty())
}

/// Waits (5 s at most) until no loop device is backed by a deleted file
/// of the testbed.
/// The order of `n` systems in run `run`: a Williams design (a balanced
/// Latin square). Over `n` runs (`2n` when `n` is odd) every system goes
/// first once and follows every other system equally often. A measurement
/// inherits some of what the one before it left behind (the host still
/// writing back a slow writer's data, a cache it filled); with a plain
/// rotation each system always follows the same neighbour.
fn run_order(n: usize, run: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    // First row 0, 1, n-1, 2, n-2, …; row r adds r to every entry.
    let first = (0..n).map(|j| {
        if j % 2 == 1 {
            j.div_ceil(2)
        } else {
            (n - j / 2) % n
        }
    });
    let row = run % n;
    let mut order: Vec<usize> = first.map(|x| (x + row) % n).collect();
    if n % 2 == 1 && (run / n) % 2 == 1 {
        order.reverse();
    }
    order
}

fn wait_loops_released() {
    let root = testbed::root();
    let root = root.to_string_lossy();
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while Instant::now() < deadline {
        let busy = std::fs::read_dir("/sys/block")
            .map(|rd| {
                rd.flatten().any(|e| {
                    std::fs::read_to_string(e.path().join("loop/backing_file"))
                        .is_ok_and(|b| b.starts_with(&*root) && b.trim_end().ends_with("(deleted)"))
                })
            })
            .unwrap_or(false);
        if !busy {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One measurement: a fresh environment, the job, cleanup.
fn measure(
    job: Job,
    sys: System,
    tools: &Tools,
    layers: &Layers,
    ctx: &Ctx,
) -> Result<Vec<(Metric, f64)>, String> {
    let mut env = Env::new(sys, tools, layers, job.disk_size(layers), job.mounts())
        .map_err(|e| format!("setup: {e}"))?;
    let r = job.run(&mut env, layers, ctx).map_err(|e| e.to_string());
    let fin = env.finish().map_err(|e| format!("teardown: {e}"));
    // The image of the ext4 is deleted while its loop device may still be
    // letting go of it; the blocks (and the host filesystem's discards)
    // are freed only then. Wait for that, then write back whatever the
    // teardown left dirty, so neither lands in the next measurement (only the benchmark's filesystems: see
    // `syncfs_of`).
    wait_loops_released();
    workloads::syncfs_of(&[&testbed::root(), &layers.lowers[0]]);
    let ms = r?;
    if let Err(e) = fin {
        // The numbers are taken; the guards have cleaned up what they could
        // (seen: a mount already gone when mountinfo still listed it).
        eprintln!("[warning] {} {}: {e}", job.name(), sys.name());
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::run_order;
    use std::collections::HashMap;

    #[test]
    fn run_orders_are_balanced_for_first_place_and_neighbours() {
        for n in 1..=6 {
            let rounds = if n % 2 == 0 { n } else { 2 * n };
            let mut first = vec![0; n];
            let mut follows: HashMap<(usize, usize), usize> = HashMap::new();
            for run in 0..rounds {
                let o = run_order(n, run);
                let mut sorted = o.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n={n} run={run}: {o:?}");
                first[o[0]] += 1;
                for w in o.windows(2) {
                    *follows.entry((w[0], w[1])).or_default() += 1;
                }
            }
            let want_first = rounds / n;
            assert!(first.iter().all(|&c| c == want_first), "n={n}: {first:?}");
            if n > 1 {
                assert_eq!(follows.len(), n * (n - 1), "n={n}: every ordered pair");
                let want = rounds / n;
                assert!(follows.values().all(|&c| c == want), "n={n}: {follows:?}");
            }
        }
    }
}
