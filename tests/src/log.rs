//! Output capture to files, and waiting on it.
//!
//! A [`LogFile`] is a file a child process (or QEMU's serial port) writes
//! to. Tests read it whole ([`LogFile::contents`]) or wait until a pattern
//! shows up ([`LogFile::wait_for`]), optionally only after an earlier match
//! ([`LogFile::wait_for_after`]) and while a liveness check holds, so a dead
//! writer ends the wait at once instead of at the timeout. Owns reading and
//! scanning; it never starts processes.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

/// Errors from creating or waiting on a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be created or opened.
    #[error("log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The pattern did not appear in time.
    #[error("{label}: {pattern:?} did not appear within {timeout:?}")]
    Timeout {
        /// Which log.
        label: String,
        /// What was awaited.
        pattern: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The writer went away before the pattern appeared.
    #[error("{label}: {pattern:?} never appeared: {why}")]
    WriterGone {
        /// Which log.
        label: String,
        /// What was awaited.
        pattern: String,
        /// What happened to the writer (e.g. "QEMU exited with exit code 1").
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, LogError>;

/// How often waits re-read the file.
const POLL: Duration = Duration::from_millis(25);
/// How long a matching last line without its newline must stay unchanged
/// before a wait takes it as it is.
const PARTIAL_SETTLE: Duration = Duration::from_secs(1);

/// Where a pattern was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The whole line containing the match, without the line end.
    pub line: String,
    /// Byte offset just past the matched line; pass it to
    /// [`LogFile::wait_for_after`] to wait for a later occurrence.
    pub end: usize,
}

/// A log file written by someone else and read by the test.
#[derive(Clone, Debug)]
pub struct LogFile {
    label: String,
    path: PathBuf,
}

impl LogFile {
    /// Creates (truncates) `path` and returns the log plus a writable handle
    /// for the producer.
    pub fn create(label: &str, path: &Path) -> Result<(LogFile, File)> {
        let file = File::create(path).map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok((LogFile::open(label, path), file))
    }

    /// Creates `path` and returns the log plus a [`Stdio`] that sends a
    /// child's stdout or stderr into it.
    pub fn create_stdio(label: &str, path: &Path) -> Result<(LogFile, Stdio)> {
        let (log, file) = LogFile::create(label, path)?;
        Ok((log, Stdio::from(file)))
    }

    /// A log for a file another program creates (QEMU's `-serial file:`).
    pub fn open(label: &str, path: &Path) -> LogFile {
        LogFile {
            label: label.to_string(),
            path: path.to_path_buf(),
        }
    }

    /// The label given at creation ("guest serial", "backend", ...).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything written so far (lossy UTF-8; empty if the file does not
    /// exist yet).
    pub fn contents(&self) -> String {
        fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for a line containing `pattern`.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<Match> {
        self.wait_for_after(0, pattern, timeout, || None)
    }

    /// Waits up to `timeout` for a line containing `pattern` that ends after
    /// byte `after`. `gone` is polled between reads: when it returns a
    /// reason, the writer is dead, so the wait ends after one last read.
    pub fn wait_for_after(
        &self,
        after: usize,
        pattern: &str,
        timeout: Duration,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Match> {
        let deadline = Instant::now() + timeout;
        // A match on the last line before its newline arrived: the line may
        // still be growing (a slow serial console writes a few bytes at a
        // time), so it is taken only once the file stopped growing for
        // PARTIAL_SETTLE, or the writer is gone.
        let mut partial: Option<(usize, Instant)> = None;
        loop {
            // Read before checking the writer, so its last words count.
            let why = gone();
            let bytes = fs::read(&self.path).unwrap_or_default();
            match find_line(&bytes, after, pattern) {
                Some((m, true)) => return Ok(m),
                Some((m, false)) => match partial {
                    _ if why.is_some() => return Ok(m),
                    Some((len, since)) if len == bytes.len() => {
                        if since.elapsed() >= PARTIAL_SETTLE {
                            return Ok(m);
                        }
                    }
                    _ => partial = Some((bytes.len(), Instant::now())),
                },
                None => partial = None,
            }
            if let Some(why) = why {
                return Err(LogError::WriterGone {
                    label: self.label.clone(),
                    pattern: pattern.to_string(),
                    why,
                });
            }
            if Instant::now() >= deadline {
                return Err(LogError::Timeout {
                    label: self.label.clone(),
                    pattern: pattern.to_string(),
                    timeout,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Prints the log to stderr between banner lines (for failure dumps).
    pub fn dump(&self) {
        let text = self.contents();
        eprintln!(
            "----- {} ({}) -----\n{}{}----- end of {} -----",
            self.label,
            self.path.display(),
            text,
            if text.ends_with('\n') || text.is_empty() {
                ""
            } else {
                "\n"
            },
            self.label
        );
    }
}

/// The first complete or trailing line of `bytes` that contains `pattern`
/// and ends after `after`, and whether it is complete (ends in a newline).
fn find_line(bytes: &[u8], after: usize, pattern: &str) -> Option<(Match, bool)> {
    let pat = pattern.as_bytes();
    if pat.is_empty() {
        return None;
    }
    let mut start = 0;
    while start < bytes.len() {
        let nl = bytes[start..].iter().position(|&b| b == b'\n');
        let end = nl.map_or(bytes.len(), |i| start + i);
        let next = nl.map_or(bytes.len(), |_| end + 1);
        if next > after && bytes[start..end].windows(pat.len()).any(|w| w == pat) {
            let line = String::from_utf8_lossy(&bytes[start..end]);
            let m = Match {
                line: line.trim_end_matches('\r').to_string(),
                end: next,
            };
            return Some((m, nl.is_some()));
        }
        start = next;
    }
    None
}

/// Prints every log to stderr when dropped during a panic. Keep one alive
/// in a test to get extra files (beyond the guest's and backend's own
/// dumps) shown on failure.
#[derive(Debug, Default)]
pub struct DumpOnPanic {
    logs: Vec<LogFile>,
}

impl DumpOnPanic {
    /// An empty guard.
    pub fn new() -> DumpOnPanic {
        DumpOnPanic::default()
    }

    /// Adds a log to dump on failure.
    pub fn add(&mut self, log: &LogFile) {
        self.logs.push(log.clone());
    }
}

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            for log in &self.logs {
                log.dump();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tempdir::TempDir;
    use std::io::Write;

    #[test]
    fn finds_lines_and_later_occurrences() {
        let text = b"boot\r\nKT-RESULT: PASS\r\nagain KT-RESULT: FAIL x\npartial KT-";
        let (first, complete) = find_line(text, 0, "KT-RESULT:").expect("first");
        assert_eq!(first.line, "KT-RESULT: PASS");
        assert!(complete);
        let (second, _) = find_line(text, first.end, "KT-RESULT:").expect("second");
        assert_eq!(second.line, "again KT-RESULT: FAIL x");
        assert_eq!(find_line(text, second.end, "KT-RESULT:"), None);
        // A trailing line without newline is found, marked incomplete.
        assert_eq!(
            find_line(text, 0, "partial").map(|(m, c)| (m.line, c)),
            Some(("partial KT-".to_string(), false))
        );
        assert_eq!(find_line(text, 0, ""), None);
    }

    #[test]
    fn a_line_still_being_written_is_awaited_whole() {
        let dir = TempDir::new("log-partial").expect("tempdir");
        let (log, mut file) = LogFile::create("serial", &dir.path().join("s.log")).expect("log");
        file.write_all(b"boot\nKT: h2g h-over: fits kt: the peer closed: a")
            .expect("write");
        file.flush().expect("flush");
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            file.write_all(b" message was too big (EMSGSIZE)\n")
                .expect("write");
        });
        let m = log
            .wait_for("KT: h2g h-over:", Duration::from_secs(10))
            .expect("line");
        writer.join().expect("writer");
        assert!(m.line.ends_with("(EMSGSIZE)"), "{}", m.line);
    }

    #[test]
    fn a_last_line_without_newline_counts_once_it_settles() {
        let dir = TempDir::new("log-prompt").expect("tempdir");
        let (log, mut file) = LogFile::create("prompt", &dir.path().join("p.log")).expect("log");
        file.write_all(b"login: ").expect("write");
        file.flush().expect("flush");
        let m = log
            .wait_for("login:", Duration::from_secs(10))
            .expect("prompt");
        assert_eq!(m.line, "login: ");
    }

    #[test]
    fn wait_sees_text_written_later() {
        let dir = TempDir::new("log-wait").expect("tempdir");
        let (log, mut file) = LogFile::create("writer", &dir.path().join("w.log")).expect("log");
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            file.write_all(b"hello\nready now\n").expect("write");
        });
        let m = log
            .wait_for("ready", Duration::from_secs(10))
            .expect("pattern appears");
        assert_eq!(m.line, "ready now");
        writer.join().expect("writer thread");
        assert_eq!(log.contents(), "hello\nready now\n");
    }

    #[test]
    fn wait_times_out_and_reports_dead_writer() {
        let dir = TempDir::new("log-timeout").expect("tempdir");
        let (log, _file) = LogFile::create("quiet", &dir.path().join("q.log")).expect("log");
        let err = log
            .wait_for("never", Duration::from_millis(100))
            .expect_err("times out");
        assert!(matches!(err, LogError::Timeout { .. }), "{err}");
        let err = log
            .wait_for_after(0, "never", Duration::from_secs(60), || {
                Some("writer exited".to_string())
            })
            .expect_err("writer gone");
        assert!(err.to_string().contains("writer exited"), "{err}");
    }
}
