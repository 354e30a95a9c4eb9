//! Shared helpers of the `kt` integration tests: a temp directory, child
//! processes that are killed if a test fails, and waiting for a socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `kt` binary under test.
pub fn kt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kt"))
}

/// Runs `kt` to completion with a deadline.
pub fn run(args: &[&str]) -> Output {
    let child = kt()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kt");
    Proc::new(child).wait_output(Duration::from_secs(60))
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kt-it-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed when dropped (a failing test leaves no
/// stray `kt serve` behind).
pub struct Proc(Option<Child>);

impl Proc {
    pub fn new(child: Child) -> Self {
        Proc(Some(child))
    }

    /// Starts `kt args` with piped output.
    pub fn spawn(args: &[&str]) -> Self {
        let child = kt()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kt");
        Proc::new(child)
    }

    /// Waits for exit (killing the child after `limit`) and collects output.
    pub fn wait_output(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().expect("child");
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let child = self.0.take().expect("child");
        child.wait_with_output().expect("output")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a Unix socket bound to `path` is listening: its line in
/// /proc/net/unix carries `__SO_ACCEPTCON` (0x10000) in the flags field.
/// The file alone appears at bind(), before listen(): a connect in between
/// is refused.
fn listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[7] == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

/// Waits until a server listens on `path`.
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(path) {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed run: exit status 1 and exactly one stderr line that
/// contains `want`.
pub fn assert_fails_with(o: &Output, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("kt: "), "{err}");
    assert!(err.contains(want), "{err:?} lacks {want:?}");
}
