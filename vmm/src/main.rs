//! `kt-vmm` entry point: parse flags, run the VM, turn the outcome into a
//! one-line status and an exit code (0 orderly guest stop, 1 VMM error,
//! 2 guest failure).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kt_vmm::config::Args;
use kt_vmm::{error_chain, vm};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kt-vmm: {}", kt_vmm::config::one_line_clap_error(&e));
            return ExitCode::from(1);
        }
    };
    match vm::run(&args) {
        Ok(reason) => {
            let _ = std::io::stdout().flush();
            eprintln!("kt-vmm: {reason}");
            // vCPU threads are still parked in KVM: end the whole process now.
            std::process::exit(reason.code());
        }
        Err(e) => {
            eprintln!("kt-vmm: error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
