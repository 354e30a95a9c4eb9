//! The command line: help for every flag, one-line errors with exit code 1
//! for bad arguments and bad policy files, and `stats` against a live
//! daemon (table, JSON and Prometheus text).

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{bin, Fixture};
use kt_sim::TempDir;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_error(args: &[&str], needle: &str) {
    let (code, _, err) = run(args);
    assert_eq!(code, 1, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

#[test]
fn help_lists_every_flag() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for f in [
        "--socket-path",
        "--policy",
        "--listen",
        "--control",
        "--max-msg-size",
        "--max-channels",
        "--rx-buf-size",
        "--channel-buffer",
        "--handshake-timeout",
        "--open-timeout",
        "--guest-id",
        "--log-level",
    ] {
        assert!(out.contains(f), "--help lacks {f}");
    }
    let (code, out, _) = run(&["stats", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--control") && out.contains("--json"));
    assert!(
        out.contains("--format") && out.contains("prometheus"),
        "{out}"
    );
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let dir = TempDir::new("cli").unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[[service]]\nname = \"echo\"\nsocket = \"/tmp/e.sock\"\n",
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[service]]\nname = \"echo\"\nsocket = \"/tmp/e.sock\"\nport = 5\n",
    )
    .unwrap();
    let dup = dir.join("dup.toml");
    std::fs::write(
        &dup,
        "[[service]]\nname = \"a\"\nsocket = \"/x\"\n[[service]]\nname = \"a\"\nsocket = \"/y\"\n",
    )
    .unwrap();
    let sock = dir.join("v.sock");
    let (s, g, b, d) = (
        sock.to_str().unwrap(),
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        dup.to_str().unwrap(),
    );
    one_line_error(&[], "--socket-path");
    one_line_error(&["--socket-path", s], "--policy");
    one_line_error(&["--socket-path", s, "--policy", g, "--bogus"], "--bogus");
    one_line_error(
        &["--socket-path", s, "--policy", g, "--max-msg-size", "lots"],
        "lots",
    );
    one_line_error(
        &["--socket-path", s, "--policy", g, "--max-msg-size", "0"],
        "--max-msg-size 0",
    );
    one_line_error(
        &["--socket-path", s, "--policy", g, "--rx-buf-size", "100"],
        "--rx-buf-size 100",
    );
    one_line_error(
        &["--socket-path", s, "--policy", g, "--channel-buffer", "10"],
        "--channel-buffer 10",
    );
    one_line_error(
        &[
            "--socket-path",
            s,
            "--policy",
            g,
            "--handshake-timeout",
            "0",
        ],
        "--handshake-timeout 0: must be between 1 and 3600",
    );
    for n in ["0", "17"] {
        one_line_error(
            &["--socket-path", s, "--policy", g, "--queue-pairs", n],
            &format!("--queue-pairs {n}: must be between 1 and 16"),
        );
    }
    for n in ["0", "65"] {
        one_line_error(
            &["--socket-path", s, "--policy", g, "--rx-share", n],
            &format!("--rx-share {n}: must be between 1 and 64"),
        );
    }
    one_line_error(
        &["--socket-path", s, "--policy", g, "--open-timeout", "soon"],
        "soon",
    );
    one_line_error(
        &["--socket-path", s, "--policy", g, "--log-level", "loud"],
        "loud",
    );
    one_line_error(
        &["--socket-path", s, "--policy", b],
        &format!("{b}: line 4: unknown field `port`"),
    );
    one_line_error(
        &["--socket-path", s, "--policy", d],
        "line 5: duplicate service name",
    );
    one_line_error(
        &["--socket-path", s, "--policy", "/nonexistent.toml"],
        "/nonexistent.toml",
    );
    one_line_error(
        &["--socket-path", "/nonexistent/dir/v.sock", "--policy", g],
        "/nonexistent/dir/v.sock",
    );
    one_line_error(
        &["stats", "--control", "/nonexistent.sock"],
        "/nonexistent.sock",
    );
}

#[test]
fn stats_table_and_json() {
    let fx = Fixture::new("cli-stats", &[]);
    let mut d = fx.driver();
    let id = d.open("echo").unwrap().unwrap();
    d.send(id, b"abc").unwrap();
    assert_eq!(d.recv(id).unwrap(), b"abc");
    let ctl = fx.control.to_str().unwrap();
    let (code, out, err) = run(&["stats", "--control", ctl]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("echo") && out.contains("total") && out.contains("guest 7"),
        "{out}"
    );
    for json in [&["--json"][..], &["--format", "json"][..]] {
        let mut args = vec!["stats", "--control", ctl];
        args.extend_from_slice(json);
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let all: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(all["vms"].as_array().map(Vec::len), Some(1), "{out}");
        let v = &all["vms"][0];
        assert_eq!(v["vm"], "vm7");
        assert_eq!(v["guest_id"], 7);
        assert_eq!(v["channels"][0]["service"], "echo");
        assert_eq!(v["channels"][0]["msgs_to_host"], 1);
        assert_eq!(v["device"]["bytes_to_guest"], 3);
    }
    let (code, out, err) = run(&["stats", "--control", ctl, "--vm", "vm7", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"guest_id\": 7"), "{out}");
    let (code, _, err) = run(&["stats", "--control", ctl, "--vm", "web"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("kt-vhost-device: no vm \"web\" on {ctl} (it serves: vm7)\n")
    );
}

#[test]
fn stats_prometheus() {
    let fx = Fixture::new("cli-prom", &[]);
    let mut d = fx.driver();
    let id = d.open("echo").unwrap().unwrap();
    d.send(id, b"abcd").unwrap();
    assert_eq!(d.recv(id).unwrap(), b"abcd");
    assert!(
        d.open("nosuch").unwrap().is_err(),
        "nosuch is not in the policy"
    );
    let ctl = fx.control.to_str().unwrap();
    let (code, out, err) = run(&["stats", "--control", ctl, "--format", "prometheus"]);
    assert_eq!(code, 0, "{err}");
    let ex = kt_prom::check::check(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(
        ex.families.keys().all(|f| f.starts_with("kt_device_")),
        "{out}"
    );
    let g = ("guest", "7");
    assert_eq!(ex.value("kt_device_active", &[g]), Some(1.0), "{out}");
    assert_eq!(
        ex.value("kt_device_channels_opened_total", &[g]),
        Some(1.0),
        "{out}"
    );
    assert_eq!(
        ex.value("kt_device_opens_refused_total", &[g]),
        Some(1.0),
        "{out}"
    );
    assert_eq!(
        ex.value("kt_device_open_channels", &[g]),
        Some(1.0),
        "{out}"
    );
    let up = ("direction", "to_host");
    let down = ("direction", "to_guest");
    assert_eq!(ex.value("kt_device_messages_total", &[g, up]), Some(1.0));
    assert_eq!(ex.value("kt_device_bytes_total", &[g, down]), Some(4.0));
    let chan = format!("{id:#x}");
    let echo = [
        g,
        ("channel", chan.as_str()),
        ("service", "echo"),
        ("opener", "guest"),
    ];
    let mut l = echo.to_vec();
    l.push(up);
    assert_eq!(
        ex.value("kt_device_channel_messages_total", &l),
        Some(1.0),
        "{out}"
    );
    l.pop();
    l.push(down);
    assert_eq!(
        ex.value("kt_device_channel_bytes_total", &l),
        Some(4.0),
        "{out}"
    );
    assert_eq!(
        ex.value("kt_device_channel_malformed_total", &echo),
        Some(0.0)
    );
}

/// Runs the daemon with its RLIMIT_NOFILE set to `soft`/`hard` before exec.
fn run_with_nofile(args: &[&str], soft: u64, hard: u64) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let set_limit = move || {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe,
    // and allocates nothing on success.
    unsafe {
        cmd.pre_exec(set_limit);
    }
    cmd.spawn().unwrap()
}

/// Soft RLIMIT_NOFILE of `pid` from /proc/PID/limits.
fn soft_nofile(pid: u32) -> u64 {
    let l = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = l.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn open_file_limit_is_raised_or_start_refused() {
    let dir = TempDir::new("cli-nofile").unwrap();
    let policy = dir.join("p.toml");
    std::fs::write(
        &policy,
        "[[service]]\nname = \"echo\"\nsocket = \"/tmp/e.sock\"\n",
    )
    .unwrap();
    let sock = dir.join("v.sock");
    let args = [
        "--socket-path",
        sock.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    // A hard limit too small for the default 1024 channels: refused with
    // both numbers on one line.
    let mut child = run_with_nofile(&args, 256, 256);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the daemon started with too few descriptors for its channels");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.contains("--max-channels 1024 needs 1152 open files")
            && err.contains("hard RLIMIT_NOFILE is 256"),
        "{err:?}"
    );
    assert!(!sock.exists(), "a refused daemon bound its socket");
    // Fewer channels fit the same limit.
    let mut few = args.to_vec();
    few.extend(["--max-channels", "100"]);
    let mut child = run_with_nofile(&few, 256, 256);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(soft_nofile(child.id()), 256);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&sock).unwrap();
    // A low soft limit under a higher hard one is raised to what 1024
    // channels need.
    let mut child = run_with_nofile(&args, 256, 4096);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(soft_nofile(child.id()), 1152);
    child.kill().unwrap();
    child.wait().unwrap();
}
