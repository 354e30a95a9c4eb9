//! Recording a test that cannot run on this machine. A skipped test is
//! never silent: it prints `SKIP: <test>: <reason>` and, when `make test`
//! runs it (which sets `KT_SKIP_LOG`), appends that line to the run's skip
//! log, so `scripts/test.sh` lists and counts it in its closing line.

use std::io::Write;

/// The environment variable naming the skip log `scripts/test.sh` reads.
pub const SKIP_LOG_ENV: &str = "KT_SKIP_LOG";

/// Reports that `test` did not run, and why. The caller returns right after.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIP: {test}: {reason}");
    eprintln!("{line}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        // A skip that cannot be recorded must not pass as a pass.
        panic!("{line} (and recording it in {path:?} failed: {e})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_appended_to_the_log() {
        let dir = crate::TempDir::new("skip-log").expect("tempdir");
        let log = dir.join("skips");
        // Only this test sets the variable, and it is read inside `skip`.
        std::env::set_var(SKIP_LOG_ENV, &log);
        skip("first_test", "no widget here");
        skip("second_test", "no gadget either");
        std::env::remove_var(SKIP_LOG_ENV);
        let text = std::fs::read_to_string(&log).expect("read log");
        assert_eq!(
            text,
            "SKIP: first_test: no widget here\nSKIP: second_test: no gadget either\n"
        );
    }
}
