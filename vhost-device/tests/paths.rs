//! Socket paths: a second daemon started on a live daemon's paths is
//! refused with one clear line and the first keeps serving; socket files
//! left by a dead daemon are reclaimed; a path that is not a socket is
//! refused and left alone.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, Fixture};
use kt_sim::{DaemonProc, TempDir};

/// Runs the daemon binary with `args`, expecting it to exit within 10 s;
/// (exit code, stderr). A daemon still running then has taken the paths:
/// it is killed and the test fails.
fn run_to_exit(args: &[String]) -> (i32, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started on paths it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn second_daemon_on_live_paths_is_refused() {
    let fx = Fixture::new("paths-live", &[]);
    let mut d = fx.driver();
    let id = d.open("echo").unwrap().unwrap();
    // The same flags, i.e. the same vhost-user, listen and control paths.
    let (code, err) = run_to_exit(&fx.args);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    let want = format!(
        "another kt-vhost-device is listening on {}",
        fx.sock.display()
    );
    assert!(err.contains(&want), "{err:?} lacks {want:?}");
    // Only the host listening socket shared: refused on that one.
    let mut args = fx.args.clone();
    let other_sock = fx.dir.join("other.sock");
    let other_ctl = fx.dir.join("other-ctl.sock");
    for (flag, val) in [("--socket-path", &other_sock), ("--control", &other_ctl)] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = val.display().to_string();
    }
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "another kt-vhost-device is listening on {}",
            fx.listen.display()
        )),
        "{err:?}"
    );
    assert!(
        !other_sock.exists() && !other_ctl.exists(),
        "a refused daemon left sockets behind"
    );
    // The first daemon still owns and serves all three.
    assert!(fx.sock.exists() && fx.listen.exists() && fx.control.exists());
    d.send(id, b"still here").unwrap();
    assert_eq!(d.recv(id).unwrap(), b"still here");
    let s = fx.stats();
    assert_eq!(s.guest_id, 7);
    assert_eq!(s.channels.len(), 1);
}

#[test]
fn stale_socket_files_are_reclaimed_and_other_files_refused() {
    let dir = TempDir::new("paths-stale").unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[service]]\nname = \"echo\"\nsocket = \"{}\"\n",
            dir.join("echo.sock").display()
        ),
    )
    .unwrap();
    let (sock, listen, control) = (dir.join("v.sock"), dir.join("l.sock"), dir.join("c.sock"));
    // Socket files nobody listens on, as a killed daemon leaves them.
    for p in [&sock, &listen, &control] {
        drop(UnixListener::bind(p).unwrap());
        assert!(p.exists());
    }
    let args: Vec<String> = [
        "--socket-path",
        sock.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--listen",
        listen.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A regular file in place of the control socket: refused, untouched.
    std::fs::remove_file(&control).unwrap();
    std::fs::write(&control, b"keep me").unwrap();
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{} exists and is not a socket", control.display())),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&control).unwrap(), b"keep me");
    std::fs::remove_file(&control).unwrap();
    drop(UnixListener::bind(&control).unwrap());
    // DaemonProc::spawn removes the vhost-user socket itself; the listen
    // and control files are stale and must be reclaimed by the daemon.
    let _daemon = DaemonProc::spawn(&bin(), &sock, &args).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        match kt_vhost_device::control::query(&control) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert!(!stats.vms[0].active);
    kt_vhost_device::seqpacket::SeqPacket::connect(&listen, false).unwrap();
}

/// Kills the daemon it holds when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn control_socket_answers_only_once_the_vms_are_up() {
    let dir = TempDir::new("paths-ctl-early").unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    let control = dir.join("c.sock");
    // Asked from the moment the daemon starts, as fast as it can: every
    // answer, the first included, lists the VM (the control socket is up
    // before the VMs are; it used to answer with none meanwhile).
    for round in 0..10 {
        let sock = dir.join(&format!("v{round}.sock"));
        let child = Command::new(bin())
            .arg("--socket-path")
            .arg(&sock)
            .arg("--policy")
            .arg(&policy)
            .arg("--control")
            .arg(&control)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _daemon = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let stats = loop {
            if let Ok(s) = kt_vhost_device::control::query(&control) {
                break s;
            }
            assert!(Instant::now() < deadline, "no answer in 10 s");
        };
        assert_eq!(stats.vms.len(), 1, "round {round}: {stats:?}");
    }
}
