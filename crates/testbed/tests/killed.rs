//! A test process that gets SIGKILLed leaves its mounts, loop device and
//! FUSE daemon behind; the next sweep removes them. Needs root and
//! fuse-overlayfs.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{FailingDisk, FuseMount, KernelOverlay, Scratch};

const HOLD_ENV: &str = "TESTBED_HOLD_AND_WAIT";

/// Not a test on its own: run by `leftovers_of_a_killed_process_are_swept`
/// in a child process, which it then kills.
#[test]
fn hold_resources_until_killed() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let mut disk = FailingDisk::new().unwrap();
    let s = Scratch::new().unwrap();
    let lower = s.mkdir("lower").unwrap();
    let merged = s.mkdir("merged").unwrap();
    let fmerged = s.mkdir("fmerged").unwrap();
    for d in ["upper", "work", "fupper", "fwork"] {
        fs::create_dir(disk.path().join(d)).unwrap();
    }
    let p = disk.path();
    let _ovl = KernelOverlay::mount(
        &[&lower],
        Some(&p.join("upper")),
        Some(&p.join("work")),
        "",
        &merged,
    )
    .unwrap();
    let mut c = Command::new("fuse-overlayfs");
    c.arg("-o").arg(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        p.join("fupper").display(),
        p.join("fwork").display()
    ));
    c.arg(&fmerged);
    let mut fm = FuseMount::spawn(c, &fmerged).unwrap();
    disk.balloon().unwrap();
    println!(
        "READY {} {} {} {} {}",
        disk.scratch().display(),
        s.path().display(),
        disk.device().display(),
        disk.image().display(),
        fm.daemon_pids()[0]
    );
    std::thread::sleep(Duration::from_secs(600));
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let st = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
        st != 'Z' && st != 'X'
    })
}

#[test]
fn leftovers_of_a_killed_process_are_swept() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_resources_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test NAME ... " first, on the same line.
        if let Some((_, rest)) = line.split_once("READY ") {
            ready = Some(rest.to_string());
            break;
        }
    }
    let ready = ready.expect("child did not get ready");
    let f: Vec<&str> = ready.split(' ').collect();
    let dirs = [PathBuf::from(f[0]), PathBuf::from(f[1])];
    let (dev, image, daemon) = (Path::new(f[2]), f[3], f[4].parse::<u32>().unwrap());
    assert!(!testbed::mounts_under(&dirs[0]).unwrap().is_empty());
    child.kill().unwrap();
    child.wait().unwrap();

    // Still all there: nobody cleaned up.
    assert_eq!(testbed::mounts_under(&dirs[0]).unwrap().len(), 2);
    assert_eq!(testbed::mounts_under(&dirs[1]).unwrap().len(), 2);
    assert!(alive(daemon));

    let t = Instant::now();
    let swept = testbed::sweep_stale().unwrap();
    eprintln!("swept in {:?}: {swept:?}", t.elapsed());
    for d in &dirs {
        // A test process starting meanwhile may have swept it first.
        assert!(swept.dirs.contains(d) || !d.exists(), "{swept:?}");
        assert!(testbed::mounts_under(d).unwrap().is_empty());
        assert!(!d.exists());
    }
    assert!(!alive(daemon));
    let backing = fs::read_to_string(
        Path::new("/sys/block")
            .join(dev.file_name().unwrap())
            .join("loop/backing_file"),
    );
    assert!(
        !backing.is_ok_and(|b| b.starts_with(image)),
        "loop device still attached"
    );
}
