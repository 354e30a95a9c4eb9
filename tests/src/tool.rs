//! The host build of the `kt` tool as a test child process (`kt serve`,
//! `kt verify --socket`, `kt --host ... gen`): [`KtTool::spawn`] starts it
//! with stdout and stderr in a log file of the test's directory, and a
//! [`KtProcess`] is killed on drop and prints its log when dropped during a
//! panic. Owns the tool's lifetime and output, not its behaviour.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::children::{describe_status, ChildError, ChildProcess};
use crate::env::{self, EnvError};
use crate::log::{LogError, LogFile, Match};
use crate::tempdir::TempDir;

/// Errors from running the tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The binary is not configured or built.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// It could not be started or controlled.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Its log could not be created, or a wait on it failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// It did not exit in time.
    #[error("{label}: still running after {timeout:?}")]
    NoExit {
        /// Which run.
        label: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// It exited unsuccessfully where success was expected.
    #[error("{label}: exited with {status}: {output}")]
    Failed {
        /// Which run.
        label: String,
        /// How it exited.
        status: String,
        /// Its output.
        output: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ToolError>;

/// Where the tool is and where its logs go.
#[derive(Clone, Debug)]
pub struct KtTool {
    binary: PathBuf,
    dir: PathBuf,
}

impl KtTool {
    /// The tool from `KT_TOOL` / cargo's target dir, logging into `dir`.
    pub fn new(dir: &TempDir) -> Result<KtTool> {
        Ok(KtTool {
            binary: env::kt_tool()?,
            dir: dir.path().to_path_buf(),
        })
    }

    /// The binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts `kt ARGS...`; `label` names it in errors and its log file
    /// (`kt-<label>.log`).
    pub fn spawn<I, S>(&self, label: &str, args: I) -> Result<KtProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = self.dir.join(format!("kt-{label}.log"));
        let (log, out) = LogFile::create_stdio(&format!("kt {label}"), &path)?;
        let err = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| LogError::Io {
                path: path.clone(),
                source,
            })?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::from(err));
        let proc = ChildProcess::spawn(&format!("kt {label}"), &mut cmd)?;
        Ok(KtProcess {
            label: label.to_string(),
            proc,
            log,
        })
    }
}

impl KtTool {
    /// Starts `kt serve --socket SOCKET --mode MODE` (a stale socket file
    /// is removed first) and waits until the socket exists.
    pub fn serve(&self, label: &str, socket: &Path, mode: &str) -> Result<KtProcess> {
        let _ = std::fs::remove_file(socket);
        let mut p = self.spawn(
            label,
            [
                "serve".as_ref(),
                "--socket".as_ref(),
                socket.as_os_str(),
                "--mode".as_ref(),
                OsStr::new(mode),
            ],
        )?;
        let deadline = Instant::now() + SERVE_READY;
        while !socket.exists() {
            if !p.is_running() || Instant::now() >= deadline {
                let status = p.proc.kill().map(describe_status).unwrap_or_default();
                return Err(ToolError::Failed {
                    label: label.to_string(),
                    status: format!("no socket at {} ({status})", socket.display()),
                    output: p.output(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }
}

/// How long [`KtTool::serve`] waits for the socket.
const SERVE_READY: Duration = Duration::from_secs(30);

/// A running `kt`. Killed on drop; its output is printed when dropped
/// during a panic.
#[derive(Debug)]
pub struct KtProcess {
    label: String,
    proc: ChildProcess,
    log: LogFile,
}

impl KtProcess {
    /// Waits up to `timeout` for it to exit; returns the status and its
    /// output (stdout and stderr interleaved).
    pub fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        match self.proc.wait_timeout(timeout)? {
            Some(status) => Ok((status, self.log.contents())),
            None => Err(ToolError::NoExit {
                label: self.label.clone(),
                timeout,
            }),
        }
    }

    /// Waits for it to exit successfully; returns its output.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<String> {
        let (status, output) = self.wait(timeout)?;
        if status.success() {
            Ok(output)
        } else {
            Err(ToolError::Failed {
                label: self.label.clone(),
                status: describe_status(status),
                output,
            })
        }
    }

    /// Waits for an output line containing `pattern`; fails early if it
    /// exits.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Match> {
        let proc = &mut self.proc;
        Ok(self
            .log
            .wait_for_after(0, pattern, timeout, || match proc.try_wait() {
                Ok(Some(status)) => Some(format!("kt exited with {}", describe_status(status))),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            })?)
    }

    /// Stops it with SIGTERM (then SIGKILL after `grace`); returns its
    /// output.
    pub fn stop(&mut self, grace: Duration) -> Result<String> {
        self.proc.terminate(grace)?;
        Ok(self.log.contents())
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        self.log.contents()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

impl Drop for KtProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            self.log.dump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in binary, so the wrapper is tested without a build of kt.
    fn fake_tool(dir: &TempDir, body: &str) -> KtTool {
        let script = dir.join("fake-kt.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        KtTool {
            binary: script,
            dir: dir.path().to_path_buf(),
        }
    }

    #[test]
    fn output_status_and_waits() {
        let dir = TempDir::new("tool").expect("tempdir");
        let tool = fake_tool(&dir, "echo \"args: $*\"; echo oops >&2; exit ${EXIT:-0}");
        let mut p = tool.spawn("ok", ["gen", "x"]).expect("spawn");
        let out = p.wait_success(Duration::from_secs(10)).expect("success");
        assert!(out.contains("args: gen x") && out.contains("oops"), "{out}");

        let tool = fake_tool(&dir, "echo started; exec sleep 30");
        let mut p = tool.spawn("slow", ["serve"]).expect("spawn");
        p.wait_for("started", Duration::from_secs(10))
            .expect("line");
        assert!(matches!(
            p.wait(Duration::from_millis(50)),
            Err(ToolError::NoExit { .. })
        ));
        assert!(p.is_running());
        p.stop(Duration::from_secs(5)).expect("stop");
        assert!(!p.is_running());

        let tool = fake_tool(&dir, "echo bad >&2; exit 1");
        let mut p = tool.spawn("fail", ["x"]).expect("spawn");
        let err = p.wait_success(Duration::from_secs(10)).expect_err("fails");
        assert!(err.to_string().contains("exit code 1"), "{err}");
    }
}
