//! The `kt-vhost-device` backend as a test child process.
//!
//! [`BackendBuilder`] writes the policy file (`[[service]] name/socket`
//! entries, or raw TOML), picks socket paths in the test's directory and
//! starts `kt-vhost-device --socket-path P --policy FILE --listen P
//! --control P`, waiting until the vhost-user socket exists so QEMU can be
//! started right after. A [`Backend`] is killed on drop and prints its log
//! when dropped during a panic; [`Backend::restart`] kills it and starts it
//! again with the same arguments (the transport-reset tests);
//! [`Backend::write_policy`] and [`Backend::reload`] (SIGHUP) replace its
//! policy while it runs (the discovery test). Owns the
//! backend's command line and lifetime, not its behaviour.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::children::{describe_status, ChildError, ChildProcess};
use crate::env::{self, EnvError};
use crate::log::{LogError, LogFile, Match};
use crate::tempdir::TempDir;

/// Errors from starting or watching the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The binary is not configured or built.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// It could not be started or controlled.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Its log could not be created, or a wait on it failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Writing the policy file failed.
    #[error("policy file {path}: {source}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before its vhost-user socket appeared.
    #[error("kt-vhost-device exited with {status} before listening on {socket}")]
    EarlyExit {
        /// How it exited.
        status: String,
        /// The socket it should have created.
        socket: PathBuf,
    },
    /// The control socket failed or answered something unexpected.
    #[error("stats from {path}: {why}")]
    Stats {
        /// The control socket.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// An operation needs the backend running (it was killed).
    #[error("kt-vhost-device is not running")]
    NotRunning,
    /// Its vhost-user socket did not appear in time.
    #[error("kt-vhost-device did not create {socket} within {timeout:?}")]
    NotListening {
        /// The socket.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, BackendError>;

/// How long the backend gets to create its vhost-user socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stats request may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the backend's command line.
#[derive(Clone, Debug)]
pub struct BackendBuilder {
    binary: Option<PathBuf>,
    dir: PathBuf,
    services: Vec<(String, PathBuf)>,
    policy_text: Option<String>,
    listen: bool,
    control: bool,
    extra: Vec<OsString>,
}

impl BackendBuilder {
    /// A backend whose sockets, policy and log live in `dir`: `vm.vhost`
    /// (vhost-user), `listen.sock`, `control.sock`, `policy.toml`,
    /// `backend.log`. `--listen` and `--control` are on by default.
    pub fn new(dir: &TempDir) -> BackendBuilder {
        BackendBuilder {
            binary: None,
            dir: dir.path().to_path_buf(),
            services: Vec::new(),
            policy_text: None,
            listen: true,
            control: true,
            extra: Vec::new(),
        }
    }

    /// Uses this binary instead of `KT_VHOST_DEVICE` / cargo's target dir.
    pub fn binary(mut self, path: &Path) -> BackendBuilder {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// Allows the guest to open host service `name`, served on `socket`.
    pub fn service(mut self, name: &str, socket: &Path) -> BackendBuilder {
        self.services.push((name.to_string(), socket.to_path_buf()));
        self
    }

    /// Uses `toml` as the whole policy file (overrides [`Self::service`]).
    pub fn policy_text(mut self, toml: &str) -> BackendBuilder {
        self.policy_text = Some(toml.to_string());
        self
    }

    /// Leaves out `--listen`.
    pub fn no_listen(mut self) -> BackendBuilder {
        self.listen = false;
        self
    }

    /// Leaves out `--control`.
    pub fn no_control(mut self) -> BackendBuilder {
        self.control = false;
        self
    }

    /// Adds raw arguments (e.g. `["--max-msg-size", "4096"]`).
    pub fn args<I, S>(mut self, args: I) -> BackendBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// The policy file text this builder writes.
    pub fn policy(&self) -> String {
        if let Some(text) = &self.policy_text {
            return text.clone();
        }
        policy_toml(
            self.services
                .iter()
                .map(|(name, socket)| (name.as_str(), socket.as_path())),
        )
    }

    /// The vhost-user socket QEMU connects to.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("vm.vhost")
    }

    fn listen_path(&self) -> Option<PathBuf> {
        self.listen.then(|| self.dir.join("listen.sock"))
    }

    fn control_path(&self) -> Option<PathBuf> {
        self.control.then(|| self.dir.join("control.sock"))
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    /// The argument list (without the program).
    pub fn command_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--socket-path".into(),
            self.socket_path().into(),
            "--policy".into(),
            self.policy_path().into(),
        ];
        if let Some(p) = self.listen_path() {
            args.push("--listen".into());
            args.push(p.into());
        }
        if let Some(p) = self.control_path() {
            args.push("--control".into());
            args.push(p.into());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Writes the policy and starts the backend; returns once its
    /// vhost-user socket exists.
    pub fn spawn(self) -> Result<Backend> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => env::vhost_device()?,
        };
        let policy_path = self.policy_path();
        std::fs::write(&policy_path, self.policy()).map_err(|source| BackendError::Policy {
            path: policy_path.clone(),
            source,
        })?;
        let (log, _) = LogFile::create("backend", &self.dir.join("backend.log"))?;
        let mut backend = Backend {
            binary,
            builder: self,
            proc: None,
            log,
        };
        backend.start()?;
        Ok(backend)
    }
}

/// A policy file allowing each `(name, socket)` service.
pub fn policy_toml<'a>(services: impl IntoIterator<Item = (&'a str, &'a Path)>) -> String {
    services
        .into_iter()
        .map(|(name, socket)| {
            format!(
                "[[service]]\nname = {}\nsocket = {}\n\n",
                toml_string(name),
                toml_string(&socket.to_string_lossy())
            )
        })
        .collect()
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running backend. Killed on drop; its log is printed when dropped
/// during a panic.
#[derive(Debug)]
pub struct Backend {
    binary: PathBuf,
    builder: BackendBuilder,
    proc: Option<ChildProcess>,
    log: LogFile,
}

impl Backend {
    fn start(&mut self) -> Result<()> {
        let socket = self.builder.socket_path();
        // A socket file left by a killed instance would look like readiness.
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BackendError::Log(LogError::Io {
                    path: socket,
                    source,
                }))
            }
        }
        let out = append_stdio(&self.log)?;
        let err = append_stdio(&self.log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.builder.command_args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "debug");
        }
        let mut proc = ChildProcess::spawn("kt-vhost-device", &mut cmd)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Some(status) = proc.try_wait()? {
                return Err(BackendError::EarlyExit {
                    status: describe_status(status),
                    socket,
                });
            }
            if Instant::now() >= deadline {
                return Err(BackendError::NotListening {
                    socket,
                    timeout: START_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// Kills the backend (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>> {
        match self.proc.take() {
            Some(mut p) => Ok(Some(p.kill()?)),
            None => Ok(None),
        }
    }

    /// Kills the backend and starts it again with the same arguments (its
    /// log continues in the same file).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.start()
    }

    /// True while the backend runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Waits for a log line containing `pattern`; fails early if the
    /// backend exits.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Match> {
        let proc = &mut self.proc;
        Ok(self
            .log
            .wait_for_after(0, pattern, timeout, || match proc {
                Some(p) => match p.try_wait() {
                    Ok(Some(status)) => Some(format!(
                        "kt-vhost-device exited with {}",
                        describe_status(status)
                    )),
                    Ok(None) => None,
                    Err(e) => Some(e.to_string()),
                },
                None => Some("kt-vhost-device is not running".to_string()),
            })?)
    }

    /// The backend's output so far.
    pub fn log(&self) -> String {
        self.log.contents()
    }

    /// The vhost-user socket (for [`crate::Qemu::vhost_user_socket`]).
    pub fn socket_path(&self) -> PathBuf {
        self.builder.socket_path()
    }

    /// The `--listen` socket for host programs (see
    /// [`crate::connect_to_guest`]), if enabled.
    pub fn listen_path(&self) -> Option<PathBuf> {
        self.builder.listen_path()
    }

    /// The `--control` socket, if enabled.
    pub fn control_path(&self) -> Option<PathBuf> {
        self.builder.control_path()
    }

    /// The counters of the backend's one VM, as `kt-vhost-device stats
    /// --json` prints them under `vms` (`device.malformed`, `resets`,
    /// `channels[]`, ...), read from the `--control` socket.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let path = self.control_path().ok_or_else(|| BackendError::Stats {
            path: PathBuf::new(),
            why: "--control is off".to_string(),
        })?;
        let fail = |why: String| BackendError::Stats {
            path: path.clone(),
            why,
        };
        let mut stream = UnixStream::connect(&path).map_err(|e| fail(format!("connect: {e}")))?;
        stream
            .set_read_timeout(Some(STATS_TIMEOUT))
            .map_err(|e| fail(format!("set timeout: {e}")))?;
        stream
            .write_all(b"stats\n")
            .map_err(|e| fail(format!("write: {e}")))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| fail(format!("read: {e}")))?;
        let mut all: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| fail(format!("{e} in {line:?}")))?;
        // The daemon answers a list of VMs; this backend serves one.
        match all["vms"].as_array_mut() {
            Some(vms) if vms.len() == 1 => Ok(vms.remove(0)),
            _ => Err(fail(format!("not exactly one VM in {line:?}"))),
        }
    }

    /// Replaces the policy file with `toml`; the backend reads it on the
    /// next [`Backend::reload`] (or restart).
    pub fn write_policy(&self, toml: &str) -> Result<()> {
        let path = self.builder.policy_path();
        std::fs::write(&path, toml).map_err(|source| BackendError::Policy { path, source })
    }

    /// Asks the running backend to re-read its policy file (SIGHUP).
    pub fn reload(&mut self) -> Result<()> {
        match self.proc.as_mut() {
            Some(p) => Ok(p.signal(libc::SIGHUP)?),
            None => Err(BackendError::NotRunning),
        }
    }

    /// The binary being run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

fn append_stdio(log: &LogFile) -> Result<Stdio> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(log.path())
        .map_err(|source| LogError::Io {
            path: log.path().to_path_buf(),
            source,
        })?;
    Ok(Stdio::from(file))
}

impl Drop for Backend {
    fn drop(&mut self) {
        if thread::panicking() {
            self.log.dump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_arguments() {
        let dir = TempDir::new("backend-args").expect("tempdir");
        let b = BackendBuilder::new(&dir)
            .service("echo", Path::new("/run/kt/echo.sock"))
            .service("odd\"name", Path::new("/x"))
            .args(["--max-msg-size", "4096"]);
        assert_eq!(
            b.policy(),
            "[[service]]\nname = \"echo\"\nsocket = \"/run/kt/echo.sock\"\n\n\
             [[service]]\nname = \"odd\\\"name\"\nsocket = \"/x\"\n\n"
        );
        let args: Vec<String> = b
            .command_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let d = dir.path().display();
        assert_eq!(
            args,
            [
                "--socket-path".to_string(),
                format!("{d}/vm.vhost"),
                "--policy".to_string(),
                format!("{d}/policy.toml"),
                "--listen".to_string(),
                format!("{d}/listen.sock"),
                "--control".to_string(),
                format!("{d}/control.sock"),
                "--max-msg-size".to_string(),
                "4096".to_string(),
            ]
        );
        let bare = BackendBuilder::new(&dir).no_listen().no_control();
        assert_eq!(bare.command_args().len(), 4);
    }

    #[test]
    fn waits_for_the_socket_and_reports_early_exit() {
        let dir = TempDir::new("backend-fake").expect("tempdir");
        // A stand-in binary: creates the socket path given after
        // --socket-path, then sleeps.
        let script = dir.join("fake-backend.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"fake backend $*\"\ntouch \"$2\"\nexec sleep 30\n",
        )
        .expect("write script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut backend = BackendBuilder::new(&dir)
            .binary(&script)
            .spawn()
            .expect("spawn");
        assert!(backend.socket_path().exists());
        assert!(backend.is_running());
        backend
            .wait_for("fake backend --socket-path", Duration::from_secs(10))
            .expect("log line");
        backend.restart().expect("restart");
        assert!(backend.is_running());
        backend.kill().expect("kill");
        assert!(!backend.is_running());

        let failing = dir.join("fail.sh");
        std::fs::write(&failing, "#!/bin/sh\necho bad flag >&2\nexit 1\n").expect("write");
        std::fs::set_permissions(
            &failing,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let err = BackendBuilder::new(&dir)
            .binary(&failing)
            .spawn()
            .expect_err("exits early");
        assert!(matches!(err, BackendError::EarlyExit { .. }), "{err}");
    }
}
