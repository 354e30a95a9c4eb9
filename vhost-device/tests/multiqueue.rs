//! Several queue pairs (`--queue-pairs`, KT_F_MULTIQUEUE, SPEC §1.4)
//! through the real daemon and the simulated guest: channels on each pair
//! carry traffic both ways in order, each from its own guest thread; a
//! channel lives on its own pair only; max_channels and a service's limit
//! count every pair; LISTEN travels on pair 0 only; `kt.services` works
//! on any pair and hears reloads on each; drivers and devices without
//! the feature keep to pair 0 as before.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{check_message, listing, message, Fixture};
use kt_proto::consts::{F_LISTEN_NOTIFY, F_MULTIQUEUE};
use kt_proto::{ErrorCode, Header, MsgType};
use kt_sim::{connect_pairs, reattach_pairs, Driver, DriverOptions};

fn mq_opts() -> DriverOptions {
    let o = DriverOptions::default();
    DriverOptions {
        features: o.features | (1 << F_MULTIQUEUE) | (1 << F_LISTEN_NOTIFY),
        ..o
    }
}

/// Two pairs of a guest that acks KT_F_MULTIQUEUE.
fn two_pairs(fx: &Fixture) -> (Driver, Driver) {
    let mut ds = connect_pairs(&fx.sock, mq_opts(), 2).unwrap();
    assert_eq!(ds.len(), 2, "two pairs started");
    let p1 = ds.pop().unwrap();
    let p0 = ds.pop().unwrap();
    assert_ne!(p0.acked & (1 << F_MULTIQUEUE), 0);
    assert_eq!(p0.config.max_queue_pairs, 2);
    assert_eq!((p0.pair, p1.pair), (0, 1));
    (p0, p1)
}

/// Polls `d` until `cond` holds (10 s at most).
fn wait_for(d: &mut Driver, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        d.poll(Duration::from_millis(20)).unwrap();
    }
}

/// Sends `n` stream messages through the echo service on `d`'s pair and
/// checks that they come back complete and in order.
fn echo_stream(d: &mut Driver, n: u64) -> u32 {
    let id = d.open("echo").unwrap().unwrap();
    let mut next = 0;
    for i in 0..n {
        d.send(id, &message(i, 8192)).unwrap();
        while let Some(m) = d.try_recv(id).unwrap() {
            assert_eq!(check_message(&m, 8192).unwrap(), next, "pair {}", d.pair);
            next += 1;
        }
    }
    while next < n {
        let m = d.recv(id).unwrap();
        assert_eq!(check_message(&m, 8192).unwrap(), next, "pair {}", d.pair);
        next += 1;
    }
    assert!(d.errors.is_empty(), "pair {}: {:?}", d.pair, d.errors);
    id
}

#[test]
fn channels_on_two_pairs_carry_traffic_both_ways_in_order() {
    let fx = Fixture::new("mq-traffic", &["--queue-pairs", "2"]);
    let (mut p0, mut p1) = two_pairs(&fx);
    // Each pair from its own thread, as vCPUs would.
    let t1 = std::thread::spawn(move || {
        let id = echo_stream(&mut p1, 2000);
        (p1, id)
    });
    let id0 = echo_stream(&mut p0, 2000);
    let (mut p1, id1) = t1.join().unwrap();
    assert_ne!(id0, id1);
    let s = fx.stats();
    let pair_of = |id: u32| s.channels.iter().find(|c| c.id == id).map(|c| c.pair);
    assert_eq!(pair_of(id0), Some(0), "{:?}", s.channels);
    assert_eq!(pair_of(id1), Some(1), "{:?}", s.channels);
    for c in &s.channels {
        assert_eq!(c.counters.msgs_to_host, 2000, "{c:?}");
        assert_eq!(c.counters.msgs_to_guest, 2000, "{c:?}");
    }
    let per_pair = s.per_pair();
    assert_eq!(per_pair[&0].0, 1);
    assert_eq!(per_pair[&1].0, 1);
    assert!(s.table().contains("pair 1"), "{}", s.table());
    assert_eq!(s.device.malformed, 0);
    p0.close(id0).unwrap();
    p1.close(id1).unwrap();
    wait_for(&mut p1, "pair 1's channel gone", || {
        fx.stats().channels.iter().all(|c| c.pair == 0)
    });
    wait_for(&mut p0, "channels gone", || fx.stats().channels.is_empty());
    // The totals per pair keep the closed channels' traffic.
    let s = fx.stats();
    assert_eq!(s.pairs.len(), 2);
    for p in &s.pairs {
        assert_eq!((p.msgs_to_host, p.msgs_to_guest), (2000, 2000), "{p:?}");
    }
}

#[test]
fn a_message_of_a_pair_1_channel_on_pair_0_is_an_unknown_channel() {
    let fx = Fixture::new("mq-wrong-pair", &["--queue-pairs", "2"]);
    let (mut p0, mut p1) = two_pairs(&fx);
    let id = p1.open("echo").unwrap().unwrap();
    p1.send(id, b"before").unwrap();
    assert_eq!(p1.recv(id).unwrap(), b"before");
    // DATA of the pair-1 channel sent on pair 0.
    let mut h = Header::with_payload(MsgType::Data, id, 5);
    h.seq = 1;
    p0.send_raw(&h, b"stray").unwrap();
    p0.wait_until("the answer on pair 0", |d| d.saw_close(id).is_some())
        .unwrap();
    assert_eq!(p0.saw_close(id), Some(ErrorCode::ConnReset as u32));
    let s = fx.stats();
    assert_eq!(s.device.malformed, 1);
    assert_eq!((s.pairs[0].malformed, s.pairs[1].malformed), (1, 0));
    let c = s.channels.iter().find(|c| c.id == id).unwrap();
    assert_eq!((c.pair, c.counters.malformed), (1, 0), "{c:?}");
    // The channel on pair 1 is unharmed and its order intact.
    for m in [&b"after"[..], b"and more"] {
        p1.send(id, m).unwrap();
        assert_eq!(p1.recv(id).unwrap(), m);
    }
    assert_eq!(p1.closed(id), None);
    assert!(p1.errors.is_empty(), "{:?}", p1.errors);
}

#[test]
fn max_channels_and_service_limits_count_every_pair() {
    let fx = Fixture::new("mq-limits", &["--queue-pairs", "2", "--max-channels", "3"]);
    let (mut p0, mut p1) = two_pairs(&fx);
    let _e0 = p0.open("echo").unwrap().unwrap();
    let e1 = p1.open("echo").unwrap().unwrap();
    let _l0 = p0.open("limited").unwrap().unwrap();
    assert_eq!(p1.open("echo").unwrap(), Err(ErrorCode::MFile));
    assert_eq!(p0.open("echo").unwrap(), Err(ErrorCode::MFile));
    p1.close(e1).unwrap();
    p1.wait_until("CLOSE answer", |d| d.closed(e1).is_some())
        .unwrap();
    wait_for(&mut p1, "the slot back", || fx.stats().channels.len() == 2);
    // "limited" allows one channel: the one on pair 0 counts on pair 1.
    assert_eq!(p1.open("limited").unwrap(), Err(ErrorCode::MFile));
    let e2 = p1.open("echo").unwrap().unwrap();
    p1.send(e2, b"third").unwrap();
    assert_eq!(p1.recv(e2).unwrap(), b"third");
    assert_eq!(fx.stats().open_refused, 3);
}

#[test]
fn a_frontend_disconnect_ends_every_pair_and_gives_the_slots_back() {
    let fx = Fixture::new(
        "mq-disconnect",
        &["--queue-pairs", "2", "--max-channels", "2"],
    );
    for round in 0..2 {
        let (mut p0, mut p1) = two_pairs(&fx);
        let a = p0.open("echo").unwrap();
        let b = p1.open("echo").unwrap();
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        assert_eq!(fx.stats().channels.len(), 2);
        drop(p1);
        drop(p0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fx.stats().channels.is_empty() {
            assert!(Instant::now() < deadline, "channels left after disconnect");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn listen_travels_on_pair_0_only() {
    let fx = Fixture::new("mq-listen", &["--queue-pairs", "2"]);
    let (mut p0, mut p1) = two_pairs(&fx);
    let name = b"gsvc";
    p1.send_raw(&Header::with_payload(MsgType::Listen, 0, 4), name)
        .unwrap();
    wait_for(&mut p1, "malformed LISTEN", || {
        fx.stats().device.malformed == 1
    });
    assert!(fx.stats().guest_listeners.is_empty());
    p0.send_raw(&Header::with_payload(MsgType::Listen, 0, 4), name)
        .unwrap();
    wait_for(&mut p0, "LISTEN on pair 0", || {
        fx.stats().guest_listeners == ["gsvc"]
    });
    assert_eq!(fx.stats().device.malformed, 1);
}

#[test]
fn kt_services_works_on_every_pair_and_each_hears_a_reload() {
    let fx = Fixture::new("mq-services", &["--queue-pairs", "2"]);
    let (mut p0, mut p1) = two_pairs(&fx);
    let want = ["down", "echo", "limited", "manual", "sink"];
    let s0 = p0.open("kt.services").unwrap().unwrap();
    let s1 = p1.open("kt.services").unwrap().unwrap();
    assert_eq!(listing(&mut p0, s0), want);
    assert_eq!(listing(&mut p1, s1), want);
    let policy = fx.dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[service]]\nname = \"metrics\"\nsocket = \"{}\"\n",
            fx.dir.join("echo.sock").display()
        ),
    )
    .unwrap();
    kt_vhost_device::control::reload(&fx.control).unwrap();
    // Both pairs' engines were told, each on its own.
    assert_eq!(listing(&mut p1, s1), ["metrics"]);
    assert_eq!(listing(&mut p0, s0), ["metrics"]);
    assert!(p0.errors.is_empty() && p1.errors.is_empty());
}

#[test]
fn a_driver_without_the_feature_uses_pair_0_as_before() {
    let fx = Fixture::new("mq-old-driver", &["--queue-pairs", "2"]);
    let mut ds = connect_pairs(&fx.sock, DriverOptions::default(), 2).unwrap();
    assert_eq!(ds.len(), 1, "no KT_F_MULTIQUEUE acked: pair 0 only");
    let mut d = ds.pop().unwrap();
    assert_eq!(d.acked & (1 << F_MULTIQUEUE), 0);
    echo_stream(&mut d, 200);
    // Host connections (opened by the device on pair 0) work too.
    drop(d);
    let mut d = fx.driver_with(DriverOptions {
        listen: vec!["gsvc".into()],
        ..DriverOptions::default()
    });
    let listen = fx.listen.clone();
    let host = std::thread::spawn(move || {
        let (s, _) = kt_sim::host::connect_guest(&listen, "gsvc")
            .unwrap()
            .unwrap();
        s.send(b"hello guest").unwrap();
    });
    d.wait_until("host connection", |d| !d.accepted.is_empty())
        .unwrap();
    let (id, _) = d.accepted.pop_front().unwrap();
    assert_eq!(d.recv(id).unwrap(), b"hello guest");
    host.join().unwrap();
    assert!(fx.stats().active);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn a_one_pair_device_does_not_offer_the_feature() {
    let fx = Fixture::new("mq-old-device", &[]);
    let mut ds = connect_pairs(&fx.sock, mq_opts(), 2).unwrap();
    assert_eq!(ds.len(), 1, "the device offers one pair");
    let mut d = ds.pop().unwrap();
    assert_eq!(d.acked & (1 << F_MULTIQUEUE), 0);
    echo_stream(&mut d, 200);
    assert_eq!(fx.stats().device.malformed, 0);
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == name)
        .count()
}

#[test]
fn each_pair_has_its_own_worker_thread() {
    for (pairs, want) in [("1", 1), ("3", 3)] {
        let fx = Fixture::new("mq-threads", &["--queue-pairs", pairs]);
        let ds = connect_pairs(&fx.sock, mq_opts(), 3).unwrap();
        assert_eq!(ds.len(), want);
        let pid = fx.daemon.pid();
        // A new thread takes its name when it first runs: give the
        // workers a moment on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads_named(pid, "vring_worker") < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            threads_named(pid, "vring_worker"),
            want,
            "--queue-pairs {pairs}"
        );
    }
}

#[test]
fn a_backend_restart_resets_through_pair_0_and_every_pair_serves_again() {
    let mut fx = Fixture::new("mq-restart", &["--queue-pairs", "2"]);
    let (mut p0, mut p1) = two_pairs(&fx);
    let a = p0.open("echo").unwrap().unwrap();
    let b = p1.open("echo").unwrap().unwrap();
    for (d, id) in [(&mut p0, a), (&mut p1, b)] {
        d.send(id, b"before").unwrap();
        assert_eq!(d.recv(id).unwrap(), b"before");
    }
    // The backend dies under the running guest; the VMM reconnects.
    fx.restart_daemon();
    let mut ds = vec![p0, p1];
    reattach_pairs(&mut ds, &fx.sock).unwrap();
    let [p0, p1] = &mut ds[..] else {
        unreachable!("two drivers")
    };
    p0.wait_until("RESET", |d| !d.events.is_empty()).unwrap();
    assert_eq!(p0.events[0].msg_type, MsgType::Reset);
    assert!(p0.chans.is_empty());
    // Pair 1 resumed from a non-zero index: live, no RESET of its own. A
    // message of its channel from before is an unknown channel there.
    p1.send(b, b"stale").unwrap();
    p1.wait_until("the answer on pair 1", |d| d.saw_close(b).is_some())
        .unwrap();
    assert_eq!(p1.saw_close(b), Some(ErrorCode::ConnReset as u32));
    // What a driver does on RESET for its other pairs.
    p1.chans.clear();
    for d in [p0, p1] {
        let id = d.open("echo").unwrap().unwrap();
        d.send(id, b"after").unwrap();
        assert_eq!(d.recv(id).unwrap(), b"after");
        assert!(d.errors.is_empty(), "pair {}: {:?}", d.pair, d.errors);
    }
    let s = fx.stats();
    assert_eq!((s.resets, s.device.malformed), (1, 1));
    assert_eq!(s.per_pair().len(), 2, "{:?}", s.channels);
}
