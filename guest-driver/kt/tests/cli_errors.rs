//! `kt` fails with one clear line and exit status 1: no device, bad usage,
//! oversized messages, missing sockets and sysfs directories.

mod common;

use common::{assert_fails_with, run, TempDir};

#[test]
fn no_device_names_the_module() {
    let t = TempDir::new("nodev");
    let dev = t.path("kerntransport");
    let d = dev.to_str().unwrap();
    for args in [
        &["--device", d, "send", "echo", "hi"][..],
        &["--device", d, "gen", "echo", "--count", "1"][..],
        &["--device", d, "listen", "svc"][..],
        &["--device", d, "info"][..],
        &["--device", d, "list"][..],
        &["--device", d, "list", "--wait", "echo"][..],
    ] {
        let out = run(args);
        assert_fails_with(
            &out,
            &format!("kt: {d}: no such file — is kerntransport.ko loaded?"),
        );
    }
    if !std::path::Path::new("/dev/kerntransport").exists() {
        let out = run(&["recv", "echo"]);
        assert_fails_with(
            &out,
            "kt: /dev/kerntransport: no such file — is kerntransport.ko loaded?",
        );
    }
}

#[test]
fn usage_errors_are_one_line_exit_1() {
    for (args, want) in [
        (&[][..], "a subcommand is required"),
        (&["gen", "svc"][..], "--count"),
        (&["frobnicate"][..], "unrecognized subcommand"),
        (
            &["gen", "svc", "--count", "1", "--min-size", "0"][..],
            "--min-size must be at least 1",
        ),
        (
            &[
                "gen",
                "svc",
                "--count",
                "1",
                "--min-size",
                "9",
                "--max-size",
                "3",
            ][..],
            "larger than --max-size",
        ),
        (&["recv", "svc", "--timeout=-1"][..], "--timeout"),
        (
            &["--host", "/x", "listen", "svc"][..],
            "listen is guest-side",
        ),
        (
            &["--host", "/x", "gen", "--socket", "/y", "--count", "1"][..],
            "exclude each other",
        ),
        (
            &["gen", "svc", "--socket", "/y", "--count", "1"][..],
            "not used with --socket",
        ),
        (
            &["serve", "--socket", "/tmp/x", "--mode", "loud"][..],
            "invalid value 'loud'",
        ),
        (
            &["--host", "/x", "list", "--wait", "svc"][..],
            "--wait is guest-side",
        ),
        (
            &["list", "--wait", "kt.services"][..],
            "the device's own and never listed",
        ),
        (&["list", "--wait", "a\tb"][..], "invalid service name"),
        (&["list", "--timeout=-1"][..], "--timeout"),
        (&["list", "extra"][..], "unexpected argument 'extra'"),
    ] {
        let out = run(args);
        assert_fails_with(&out, want);
    }
}

#[test]
fn help_exits_0() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verify"));
}

#[test]
fn host_side_errors() {
    let t = TempDir::new("hosterr");
    let missing = t.path("missing.sock");
    let m = missing.to_str().unwrap();
    assert_fails_with(
        &run(&["--host", m, "send", "echo", "x"]),
        &format!("kt: {m}: no such socket — is kt-vhost-device running?"),
    );
    assert_fails_with(
        &run(&["--host", m, "send", "bad\tname", "x"]),
        "invalid service name",
    );
    assert_fails_with(
        &run(&["--max-msg-size", "10", "send", "--direct", m, "x"]),
        "connect",
    );
}

#[test]
fn oversized_host_message_is_emsgsize() {
    let t = TempDir::new("big");
    let sock = t.path("s.sock");
    let mut l = kt::host::Listener::bind(&sock, 10).unwrap();
    // The accepted channel stays open until kt has exited.
    let acceptor = std::thread::spawn(move || l.accept());
    let out = run(&[
        "--max-msg-size",
        "10",
        "send",
        "--direct",
        sock.to_str().unwrap(),
        "0123456789",
        "0123456789A",
    ]);
    assert_fails_with(
        &out,
        "kt: message of 11 bytes is too big: the limit is 10 bytes (EMSGSIZE)",
    );
    let ch = acceptor.join().unwrap().unwrap();
    let mut buf = ch.recv_buffer();
    let got = ch
        .recv(&mut buf, &mut kt::channel::NbStats::default())
        .unwrap();
    assert_eq!(got, kt::channel::Recv::Msg(10), "the legal message arrives");
}

#[test]
fn stats_without_driver() {
    let t = TempDir::new("stats");
    let dir = t.path("kerntransport");
    let d = dir.to_str().unwrap();
    assert_fails_with(
        &run(&["stats", "--sysfs", d]),
        &format!("kt: {d}: no such directory — is kerntransport.ko loaded?"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    assert_fails_with(
        &run(&["stats", "--sysfs", d]),
        "no kerntransport device is bound",
    );
}
