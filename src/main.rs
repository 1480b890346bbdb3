//! `rovl`: mount an overlay (fuse-overlayfs compatible command line), or
//! `rovl umount|sync|status`.

use std::process::ExitCode;

use clap::Parser;

use rovl::cli::{Cli, Command, parse_mount_options};
use rovl::{commands, daemon, mount};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the problem (SPEC §4), not clap's usage block.
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .filter(|l| !l.is_empty())
                .collect();
            let msg = msg.join(" ");
            let msg = msg.trim_start_matches("error: ");
            eprintln!("rovl: {msg} (see rovl --help)");
            return ExitCode::from(2);
        }
    };
    let code = match &cli.cmd {
        Some(Command::Umount { mountpoint }) => commands::umount(mountpoint),
        Some(Command::Sync { paths }) => commands::sync(paths),
        Some(Command::Status { target, json }) => commands::status(target, *json),
        None => mount_cmd(&cli),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn mount_cmd(cli: &Cli) -> i32 {
    let Some(mountpoint) = cli.positional.last() else {
        eprintln!("rovl: no mountpoint given");
        return 1;
    };
    let opts = match parse_mount_options(&cli.opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rovl: {e}");
            return 1;
        }
    };
    for o in &opts.ignored {
        eprintln!("rovl: warning: unknown option '{o}' ignored");
    }
    let checked = match mount::check(opts, std::path::Path::new(mountpoint)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rovl: {e}");
            return 1;
        }
    };
    let foreground = cli.foreground || cli.debug;
    if foreground {
        daemon::init_logging(if cli.debug { "debug" } else { "info" }, None);
        return daemon::run(checked, daemon::Notify::Foreground, false, cli.debug);
    }
    match mount::daemonize() {
        Ok(ready) => daemon::run(checked, daemon::Notify::Parent(ready), true, cli.debug),
        Err(e) => {
            eprintln!("rovl: {e}");
            1
        }
    }
}
