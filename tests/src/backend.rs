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
//! policy while it runs (the discovery test). With [`BackendBuilder::vm`]
//! it instead writes a config file (`kt.toml`, one `[[vm]]` section per
//! VM, each with its own policy, vhost-user and `--listen` socket) and
//! starts `kt-vhost-device --config kt.toml --control P`, one process
//! serving them all (the multi-VM test); [`Backend::vm_stats`] reads one
//! VM's counters. Owns the backend's command line and lifetime, not its
//! behaviour.

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
    vms: Vec<VmSpec>,
}

/// One `[[vm]]` section of a config-file backend.
#[derive(Clone, Debug)]
struct VmSpec {
    name: String,
    guest_id: u32,
    services: Vec<(String, PathBuf)>,
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
            vms: Vec::new(),
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

    /// Serves VM `name` (config space `guest_id`) whose policy allows
    /// exactly `services` (name, socket). Any call switches the backend to
    /// a config file (`--config kt.toml`): [`Self::service`],
    /// [`Self::policy_text`] and [`Self::no_listen`] are then unused, and
    /// each VM gets `NAME.vhost`, `NAME-listen.sock` and `NAME-policy.toml`
    /// in the directory.
    pub fn vm(mut self, name: &str, guest_id: u32, services: &[(&str, &Path)]) -> BackendBuilder {
        self.vms.push(VmSpec {
            name: name.to_string(),
            guest_id,
            services: services
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect(),
        });
        self
    }

    /// The config file text this builder writes (empty without
    /// [`Self::vm`]); its paths are relative to the file's directory.
    pub fn config(&self) -> String {
        self.vms
            .iter()
            .map(|vm| {
                format!(
                    "[[vm]]\nname = {}\nguest_id = {}\nsocket_path = {}\npolicy = {}\n\
                     listen = {}\n\n",
                    toml_string(&vm.name),
                    vm.guest_id,
                    toml_string(&format!("{}.vhost", vm.name)),
                    toml_string(&format!("{}-policy.toml", vm.name)),
                    toml_string(&format!("{}-listen.sock", vm.name)),
                )
            })
            .collect()
    }

    /// VM `name`'s vhost-user socket (config-file backends).
    pub fn vm_socket_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.vhost"))
    }

    /// VM `name`'s `--listen` socket (config-file backends).
    pub fn vm_listen_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-listen.sock"))
    }

    /// The vhost-user sockets the backend creates once it serves.
    fn vhost_sockets(&self) -> Vec<PathBuf> {
        if self.vms.is_empty() {
            vec![self.socket_path()]
        } else {
            self.vms
                .iter()
                .map(|vm| self.vm_socket_path(&vm.name))
                .collect()
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("kt.toml")
    }

    /// Writes the policy file, or the config file and each VM's policy.
    fn write_files(&self) -> Result<()> {
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text).map_err(|source| BackendError::Policy { path, source })
        };
        if self.vms.is_empty() {
            return write(self.policy_path(), self.policy());
        }
        for vm in &self.vms {
            let policy = policy_toml(
                vm.services
                    .iter()
                    .map(|(name, socket)| (name.as_str(), socket.as_path())),
            );
            write(self.dir.join(format!("{}-policy.toml", vm.name)), policy)?;
        }
        write(self.config_path(), self.config())
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
        if !self.vms.is_empty() {
            let mut args: Vec<OsString> = vec!["--config".into(), self.config_path().into()];
            if let Some(p) = self.control_path() {
                args.push("--control".into());
                args.push(p.into());
            }
            args.extend(self.extra.iter().cloned());
            return args;
        }
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

    /// Writes the policy (or config) files and starts the backend;
    /// returns once its vhost-user sockets exist.
    pub fn spawn(self) -> Result<Backend> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => env::vhost_device()?,
        };
        self.write_files()?;
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
        let sockets = self.builder.vhost_sockets();
        // A socket file left by a killed instance would look like readiness.
        for socket in &sockets {
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BackendError::Log(LogError::Io {
                        path: socket.clone(),
                        source,
                    }))
                }
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
        while let Some(socket) = sockets.iter().find(|s| !s.exists()).cloned() {
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

    /// The vhost-user socket (for [`crate::Qemu::vhost_user_socket`]) of a
    /// single-VM backend; a config-file backend has
    /// [`Backend::vm_socket_path`] instead.
    pub fn socket_path(&self) -> PathBuf {
        self.builder.socket_path()
    }

    /// VM `name`'s vhost-user socket (config-file backends).
    pub fn vm_socket_path(&self, name: &str) -> PathBuf {
        self.builder.vm_socket_path(name)
    }

    /// VM `name`'s `--listen` socket (config-file backends).
    pub fn vm_listen_path(&self, name: &str) -> PathBuf {
        self.builder.vm_listen_path(name)
    }

    /// The `--listen` socket for host programs (see
    /// [`crate::connect_to_guest`]), if enabled; single-VM backends (a
    /// config-file backend has [`Backend::vm_listen_path`]).
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
        let mut vms = self.all_stats()?;
        // The daemon answers a list of VMs; this backend serves one.
        if vms.len() == 1 {
            return Ok(vms.remove(0));
        }
        Err(BackendError::Stats {
            path: self.control_path().unwrap_or_default(),
            why: format!("{} VMs, not exactly one", vms.len()),
        })
    }

    /// The counters of VM `name` (`vm`, `guest_id`, `active`, `device`,
    /// ...) of a config-file backend.
    pub fn vm_stats(&self, name: &str) -> Result<serde_json::Value> {
        let vms = self.all_stats()?;
        let names: Vec<String> = vms.iter().map(|v| v["vm"].to_string()).collect();
        vms.into_iter()
            .find(|v| v["vm"] == name)
            .ok_or_else(|| BackendError::Stats {
                path: self.control_path().unwrap_or_default(),
                why: format!("no VM {name:?} among {names:?}"),
            })
    }

    /// The control socket stats are read from; an error when `--control`
    /// is off.
    fn stats_control_path(&self) -> Result<PathBuf> {
        self.control_path().ok_or_else(|| BackendError::Stats {
            path: PathBuf::new(),
            why: "--control is off".to_string(),
        })
    }

    /// Every VM's counters, in the daemon's order (`vms` of `stats --json`).
    pub fn all_stats(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.stats_control_path()?;
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
        match all["vms"].take() {
            serde_json::Value::Array(vms) => Ok(vms),
            _ => Err(fail(format!("no list of VMs in {line:?}"))),
        }
    }

    /// Every VM's counters as the user's command prints them:
    /// `kt-vhost-device stats --control PATH --json`, run as a child
    /// process (the CLI path, where [`Backend::all_stats`] talks to the
    /// socket itself).
    pub fn cli_stats(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.stats_control_path()?;
        let fail = |why: String| BackendError::Stats {
            path: path.clone(),
            why,
        };
        let out = std::process::Command::new(self.binary())
            .arg("stats")
            .arg("--control")
            .arg(&path)
            .arg("--json")
            .output()
            .map_err(|e| fail(format!("run {}: {e}", self.binary().display())))?;
        if !out.status.success() {
            return Err(fail(format!(
                "kt-vhost-device stats: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            )));
        }
        let mut all: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| fail(format!("{e} in {:?}", String::from_utf8_lossy(&out.stdout))))?;
        match all["vms"].take() {
            serde_json::Value::Array(vms) => Ok(vms),
            other => Err(fail(format!("no list of VMs: {other}"))),
        }
    }

    /// Replaces the policy file of a single-VM backend with `toml`; the
    /// backend reads it on the next [`Backend::reload`] (or restart).
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
    fn a_config_file_for_several_vms() {
        let dir = TempDir::new("backend-vms").expect("tempdir");
        let b = BackendBuilder::new(&dir)
            .vm("a", 1, &[("echo-a", Path::new("/s/a.sock"))])
            .vm("b", 2, &[("echo-b", Path::new("/s/b.sock"))])
            .args(["--log-level", "info"]);
        assert_eq!(
            b.config(),
            "[[vm]]\nname = \"a\"\nguest_id = 1\nsocket_path = \"a.vhost\"\n\
             policy = \"a-policy.toml\"\nlisten = \"a-listen.sock\"\n\n\
             [[vm]]\nname = \"b\"\nguest_id = 2\nsocket_path = \"b.vhost\"\n\
             policy = \"b-policy.toml\"\nlisten = \"b-listen.sock\"\n\n"
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
                "--config".to_string(),
                format!("{d}/kt.toml"),
                "--control".to_string(),
                format!("{d}/control.sock"),
                "--log-level".to_string(),
                "info".to_string(),
            ]
        );
        assert_eq!(b.vm_socket_path("b"), dir.join("b.vhost"));
        assert_eq!(b.vm_listen_path("a"), dir.join("a-listen.sock"));
        b.write_files().expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.join("b-policy.toml")).expect("b's policy"),
            "[[service]]\nname = \"echo-b\"\nsocket = \"/s/b.sock\"\n\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("kt.toml")).expect("config"),
            b.config()
        );
        assert!(!dir.join("policy.toml").exists());

        // The backend is ready once every VM's socket exists.
        let script = dir.join("fake-daemon.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntouch {d}/a.vhost\nsleep 0.3\ntouch {d}/b.vhost\nexec sleep 30\n"),
        )
        .expect("write script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut backend = b.binary(&script).spawn().expect("spawn");
        assert!(dir.join("b.vhost").exists());
        assert_eq!(backend.vm_socket_path("a"), dir.join("a.vhost"));
        backend.kill().expect("kill");
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
