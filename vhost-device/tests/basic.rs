//! Starts the real daemon and drives it as a VMM + guest would: open, echo
//! both ways, policy refusal, host-initiated channels, stats, the
//! device's own `kt.services` under the seccomp filter.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{listing, Fixture};
use kt_proto::ErrorCode;

#[test]
fn echo_round_trip_and_refusals() {
    let fx = Fixture::new("basic", &[]);
    let mut d = fx.driver();
    assert_eq!(d.config.guest_id, 7);
    assert_eq!(d.config.max_msg_size, 65536);
    let id = d.open("echo").unwrap().unwrap();
    for (i, len) in [0usize, 1, 100, 4064, 4065, 10_000, 65536]
        .into_iter()
        .enumerate()
    {
        let msg: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
        d.send(id, &msg).unwrap();
        assert_eq!(d.recv(id).unwrap(), msg, "len {len}");
    }
    assert_eq!(d.open("nope").unwrap(), Err(ErrorCode::NoEnt));
    assert_eq!(d.open("down").unwrap(), Err(ErrorCode::ConnRefused));
    let l1 = d.open("limited").unwrap().unwrap();
    assert_eq!(d.open("limited").unwrap(), Err(ErrorCode::MFile));
    d.close(l1).unwrap();
    d.wait_until("CLOSE answer", |d| d.closed(l1).is_some())
        .unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let s = fx.stats();
    assert!(s.active);
    assert_eq!(s.open_refused, 3);
    assert!(s.device.msgs_to_host >= 7);
}

#[test]
fn oversized_host_message_closes_only_that_connection() {
    let fx = Fixture::new("oversize", &["--max-msg-size", "1024"]);
    let mut d = fx.driver_with(kt_sim::DriverOptions {
        listen: vec!["gsvc".into()],
        ..kt_sim::DriverOptions::default()
    });
    let good = d.open("echo").unwrap().unwrap();
    let listen = fx.listen.clone();
    let host = std::thread::spawn(move || {
        let (s, _) = kt_sim::host::connect_guest(&listen, "gsvc")
            .unwrap()
            .unwrap();
        s.send(&[1u8; 1024]).unwrap();
        s.send(&[2u8; 1025]).unwrap();
        // The device hangs up on us.
        let mut buf = [0u8; 2048];
        s.recv(&mut buf).unwrap()
    });
    d.wait_until("host connection", |d| !d.accepted.is_empty())
        .unwrap();
    let (id, _) = d.accepted.pop_front().unwrap();
    assert_eq!(d.recv(id).unwrap(), vec![1u8; 1024]);
    d.wait_until("CLOSE", |d| d.closed(id).is_some()).unwrap();
    assert_eq!(d.closed(id), Some(ErrorCode::MsgSize as u32));
    assert_eq!(host.join().unwrap(), kt_vhost_device::seqpacket::Recv::Eof);
    d.send(good, b"still here").unwrap();
    assert_eq!(d.recv(good).unwrap(), b"still here");
    assert_eq!(fx.stats().device.malformed, 1);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn host_connections_need_a_guest_that_listens() {
    let fx = Fixture::new("nolisten", &[]);
    // A driver that does not ack KT_F_GUEST_LISTEN.
    let mut opts = kt_sim::DriverOptions::default();
    opts.features &= !(1 << kt_proto::consts::F_GUEST_LISTEN);
    opts.listen = vec!["gsvc".into()];
    let mut d = fx.driver_with(opts);
    let listen = fx.listen.clone();
    let host = std::thread::spawn(move || kt_sim::host::connect_guest(&listen, "gsvc").unwrap());
    d.wait_until("refusal", |_| host.is_finished()).unwrap();
    let r = host.join().unwrap();
    assert!(matches!(&r, Err(t) if t.starts_with("111 ")), "{r:?}");
    assert!(d.accepted.is_empty());
    // Guest-initiated channels still work.
    let id = d.open("echo").unwrap().unwrap();
    d.send(id, b"x").unwrap();
    assert_eq!(d.recv(id).unwrap(), b"x");
}

/// The `Seccomp:` mode (0 none, 2 filter) of every thread of a process,
/// from /proc: (thread id, mode).
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        // A thread may end between the listing and the read.
        let Ok(s) = std::fs::read_to_string(t.join("status")) else {
            continue;
        };
        let mode = s
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap()
            .trim()
            .to_string();
        modes.push((t.file_name().unwrap().to_string_lossy().into_owned(), mode));
    }
    modes
}

/// Waits until every thread of the daemon runs in seccomp mode `want`.
/// The threads that serve install their filters before they serve; the
/// main thread installs its own right after it has bound the sockets, so
/// a fast client can get its answers a moment before that.
fn assert_seccomp_mode(pid: u32, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let modes = seccomp_modes(pid);
        if modes.iter().all(|(_, m)| m == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "threads (id, mode) of the daemon, want mode {want}: {modes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_daemon_serves_under_its_seccomp_filter_by_default() {
    for (flags, want) in [(&[][..], "2"), (&["--seccomp", "off"][..], "0")] {
        let fx = Fixture::new("seccomp", flags);
        let mut d = fx.driver();
        // A round trip through a host service: the daemon is in its
        // serving loop, past the point where the filter goes on.
        let id = d.open("echo").unwrap().unwrap();
        d.send(id, b"under the filter").unwrap();
        assert_eq!(d.recv(id).unwrap(), b"under the filter");
        assert_seccomp_mode(fx.daemon.pid(), want);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }
}

#[test]
fn kt_services_lists_the_policy_under_the_seccomp_filter() {
    let fx = Fixture::new("services", &[]);
    let mut d = fx.driver();
    let id = d.open("kt.services").unwrap().unwrap();
    let want = ["down", "echo", "limited", "manual", "sink"];
    assert_eq!(listing(&mut d, id), want);
    // A message on the channel asks for the listing again (the socketpair
    // the device keeps works both ways under the filter).
    d.send(id, b"again").unwrap();
    assert_eq!(listing(&mut d, id), want);
    assert_eq!(d.open("kt.other").unwrap(), Err(ErrorCode::NoEnt));
    d.close(id).unwrap();
    d.wait_until("CLOSE answer", |d| d.closed(id).is_some())
        .unwrap();
    assert_seccomp_mode(fx.daemon.pid(), "2");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let s = fx.stats();
    assert_eq!(s.device.malformed, 0);
    assert_eq!(s.open_refused, 1);
}

#[test]
fn a_reload_that_changes_the_names_sends_a_new_listing() {
    let fx = Fixture::new("services-reload", &[]);
    let mut d = fx.driver();
    let id = d.open("kt.services").unwrap().unwrap();
    assert_eq!(
        listing(&mut d, id),
        ["down", "echo", "limited", "manual", "sink"]
    );
    let policy = fx.dir.join("policy.toml");
    let echo = fx.dir.join("echo.sock");
    let text = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "[[service]]\nname = \"{n}\"\nsocket = \"{}\"\n",
                    echo.display()
                )
            })
            .collect()
    };
    // New names: a new listing on the open channel.
    std::fs::write(&policy, text(&["echo", "metrics"])).unwrap();
    kt_vhost_device::control::reload(&fx.control).unwrap();
    assert_eq!(listing(&mut d, id), ["echo", "metrics"]);
    // The same names again (another order): nothing is sent.
    std::fs::write(&policy, text(&["metrics", "echo"])).unwrap();
    kt_vhost_device::control::reload(&fx.control).unwrap();
    // A policy naming kt.* is refused by the reload and changes nothing.
    std::fs::write(&policy, text(&["echo", "kt.services"])).unwrap();
    let e = kt_vhost_device::control::reload(&fx.control).unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    // Only the request below gets an answer: no listing came in between.
    d.send(id, b"").unwrap();
    assert_eq!(listing(&mut d, id), ["echo", "metrics"]);
    // Anything sent wrongly would be in flight behind it.
    d.poll(std::time::Duration::from_millis(300)).unwrap();
    assert_eq!(d.inbox_len(id), 0);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}
