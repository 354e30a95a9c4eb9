//! Child processes owned by a test.
//!
//! [`ChildProcess`] starts a program in its own process group and, when
//! dropped (normal return or panic), kills that whole group with SIGKILL and
//! reaps the child, so no QEMU or backend outlives its test. [`Children`] is
//! a registry of named children for tests that juggle several; it drops
//! them newest first. Owns process lifetime only, not output capture.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// Errors from starting or controlling a child process.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program could not be started.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// Label of the child.
        name: String,
        /// Program path.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// Waiting on or signalling the child failed.
    #[error("{name} (pid {pid}): {op}: {source}")]
    Control {
        /// Label of the child.
        name: String,
        /// Its pid.
        pid: u32,
        /// What was attempted.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
    /// No child with that name in the registry.
    #[error("no child named {0:?}")]
    Unknown(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ChildError>;

/// How often the timed waits poll the child.
const POLL: Duration = Duration::from_millis(20);

/// A running child process, killed (with its process group) and reaped on
/// drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `cmd` in a new process group; `name` labels it in errors and
    /// logs. Retries briefly on `ETXTBSY`: a program written by the test itself
    /// can be momentarily held open by another test thread's fork.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<ChildProcess> {
        cmd.process_group(0);
        let mut attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                    attempts += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(ChildError::Spawn {
                        name: name.to_string(),
                        program: cmd.get_program().to_string_lossy().into_owned(),
                        source,
                    })
                }
            }
        };
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn control_err(&self, op: &'static str, source: io::Error) -> ChildError {
        ChildError::Control {
            name: self.name.clone(),
            pid: self.pid(),
            op,
            source,
        }
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| self.control_err("waitpid", e))?;
        }
        Ok(self.status)
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` to the child's whole process group (no-op once it has
    /// been reaped).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pgid = libc::pid_t::try_from(self.pid())
            .map_err(|e| self.control_err("pid", io::Error::other(e)))?;
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created at spawn; it touches no memory of ours.
        let rc = unsafe { libc::kill(-pgid, signal) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // The group may have vanished between try_wait and kill.
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(self.control_err("kill", err));
            }
        }
        Ok(())
    }

    /// Asks the child to stop with SIGTERM, waits up to `grace`, then kills
    /// it. Returns its exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill()
    }

    /// Kills the child's process group with SIGKILL and reaps the child.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            // Grandchildren left in the group still go.
            self.signal_group_after_exit();
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        let status = self
            .child
            .wait()
            .map_err(|e| self.control_err("waitpid", e))?;
        self.status = Some(status);
        Ok(status)
    }

    fn signal_group_after_exit(&self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.pid()) {
            // SAFETY: as in `signal`; ESRCH (group already empty) is the
            // expected outcome and is ignored.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("kt-tests: could not stop {}: {e}", self.name);
        }
    }
}

/// Describes an exit status in words ("exit code 1", "signal 9").
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// A registry of named child processes; all are killed and reaped when it
/// is dropped, newest first.
#[derive(Debug, Default)]
pub struct Children {
    procs: Vec<ChildProcess>,
}

impl Children {
    /// An empty registry.
    pub fn new() -> Children {
        Children::default()
    }

    /// Starts `cmd` under `name` and keeps it.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<&mut ChildProcess> {
        let child = ChildProcess::spawn(name, cmd)?;
        self.procs.push(child);
        let last = self.procs.len() - 1;
        Ok(&mut self.procs[last])
    }

    /// Adds an already running child.
    pub fn adopt(&mut self, child: ChildProcess) {
        self.procs.push(child);
    }

    /// The child called `name`.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut ChildProcess> {
        self.procs
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| ChildError::Unknown(name.to_string()))
    }

    /// Kills, reaps and forgets the child called `name`.
    pub fn kill(&mut self, name: &str) -> Result<ExitStatus> {
        let idx = self
            .procs
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| ChildError::Unknown(name.to_string()))?;
        let mut child = self.procs.remove(idx);
        child.kill()
    }

    /// Number of children held.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True if no child is held.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        while let Some(child) = self.procs.pop() {
            drop(child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cmd
    }

    /// True if `pid` exists and is not a zombie.
    fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn drop_kills_and_reaps() {
        let child = ChildProcess::spawn("sleeper", &mut sleeper()).expect("spawn sleep");
        let pid = child.pid();
        assert!(alive(pid));
        drop(child);
        // Reaped, so the pid no longer exists (not even as a zombie).
        assert!(!alive(pid));
    }

    #[test]
    fn drop_during_panic_kills() {
        let mut pid = 0;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let child = ChildProcess::spawn("sleeper", &mut sleeper()).expect("spawn sleep");
            pid = child.pid();
            panic!("test failure while a child runs");
        }));
        assert!(result.is_err());
        assert!(pid != 0 && !alive(pid));
    }

    #[test]
    fn kills_grandchildren_in_the_group() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo $!; wait"]);
        cmd.stdout(std::process::Stdio::piped());
        let mut child = ChildProcess::spawn("sh", &mut cmd).expect("spawn sh");
        let mut line = String::new();
        let out = child.child.stdout.take().expect("piped stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("read grandchild pid");
        let grandchild: u32 = line.trim().parse().expect("pid");
        assert!(alive(grandchild));
        drop(child);
        // The grandchild is killed; its parent (init) reaps it shortly after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        assert!(!alive(grandchild));
    }

    #[test]
    fn exit_status_is_kept() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let mut child = ChildProcess::spawn("exit3", &mut cmd).expect("spawn sh");
        let status = child
            .wait_timeout(Duration::from_secs(10))
            .expect("wait")
            .expect("exited");
        assert_eq!(describe_status(status), "exit code 3");
        assert!(!child.is_running());
        assert_eq!(child.kill().expect("kill after exit").code(), Some(3));
    }

    #[test]
    fn registry_kills_all_and_by_name() {
        let mut reg = Children::new();
        let a = reg.spawn("a", &mut sleeper()).expect("spawn a").pid();
        let b = reg.spawn("b", &mut sleeper()).expect("spawn b").pid();
        assert_eq!(reg.len(), 2);
        let status = reg.kill("a").expect("kill a");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!alive(a));
        assert!(matches!(reg.kill("a"), Err(ChildError::Unknown(_))));
        assert!(reg.get_mut("b").expect("b").is_running());
        drop(reg);
        assert!(!alive(b));
    }

    #[test]
    fn spawn_error_names_the_program() {
        let err = ChildProcess::spawn("nope", &mut Command::new("/nonexistent/kt-prog"))
            .expect_err("must fail");
        let text = err.to_string();
        assert!(
            text.contains("nope") && text.contains("/nonexistent/kt-prog"),
            "{text}"
        );
    }
}
