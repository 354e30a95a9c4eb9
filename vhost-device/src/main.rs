//! `kt-vhost-device`: parse flags, set up logging, run the daemon, print
//! stats or ask a running daemon to reload. Every error ends as one line on stderr and exit code 1.

use std::process::ExitCode;

use clap::Parser;
use kt_vhost_device::args::{Cli, Command, LogLevel, ReloadArgs, StatsArgs, StatsFormat};
use kt_vhost_device::config::Config;
use kt_vhost_device::stats::DaemonSnapshot;
use kt_vhost_device::{control, daemon};

fn init_log(level: LogLevel) {
    env_logger::Builder::new()
        .filter_level(level.into())
        .parse_default_env()
        .format_timestamp_millis()
        .init();
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("kt-vhost-device: {msg}");
    ExitCode::from(1)
}

fn stats(a: &StatsArgs) -> ExitCode {
    let mut s = match control::query(&a.control) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Some(name) = &a.vm {
        match s.vm(name) {
            Some(v) => {
                s = DaemonSnapshot {
                    vms: vec![v.clone()],
                }
            }
            None => {
                let names: Vec<&str> = s.vms.iter().map(|v| v.vm.as_str()).collect();
                return fail(format_args!(
                    "no vm {name:?} on {} (it serves: {})",
                    a.control.display(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ));
            }
        }
    }
    let text = match a.format() {
        StatsFormat::Table => s.table(),
        StatsFormat::Prometheus => s.prometheus(),
        StatsFormat::Json => match serde_json::to_string_pretty(&s) {
            Ok(j) => j + "\n",
            Err(e) => return fail(e),
        },
    };
    // An unwritable stdout (full disk under a textfile collector) must
    // fail the command, so a wrapper does not install a partial file.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("writing stats: {e}")),
    }
}

fn reload(a: &ReloadArgs) -> ExitCode {
    match control::reload(&a.control) {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph, folded onto one line (usage and tips
            // follow after an empty line).
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            return fail(line.join(" ").trim_start_matches("error: "));
        }
    };
    let run = match cli.command {
        Some(Command::Stats(a)) => return stats(&a),
        Some(Command::Reload(a)) => return reload(&a),
        Some(Command::Run(r)) => r,
        None => cli.run,
    };
    init_log(run.log_level);
    let config = match Config::try_from(run) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
