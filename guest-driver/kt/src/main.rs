//! `kt` entry point: parse, install the signal handler, run the verb; any
//! error is one line on stderr and exit status 1.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match kt::cli::parse(std::env::args_os()) {
        Ok(Ok(cli)) => cli,
        Ok(Err(help)) => {
            print!("{help}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("kt: {msg}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = kt::signal::install() {
        eprintln!("kt: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    match kt::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kt: {e}");
            ExitCode::from(1)
        }
    }
}
