//! Service discovery, host side, against the real daemon (SPEC §2.2, §9):
//! a simulated guest that acked `KT_F_LISTEN_NOTIFY` announces listeners
//! with `LISTEN`/`UNLISTEN`; the daemon shows them in `stats` and answers
//! `LIST` on `--listen`; a guest reboot and a backend restart forget them;
//! announcements without the feature are malformed input.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::F_LISTEN_NOTIFY;
use kt_proto::handshake::{self, ListReply};
use kt_proto::{Header, MsgType};
use kt_sim::{Driver, DriverOptions};
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

/// Waits up to 10 s for `cond`, letting the simulated guest run.
fn wait_for(d: &mut Driver, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        d.poll(Duration::from_millis(20)).unwrap();
    }
}

fn announce(d: &mut Driver, t: MsgType, name: &str) {
    d.send_raw(
        &Header::with_payload(t, 0, name.len() as u32),
        name.as_bytes(),
    )
    .unwrap();
}

/// `LIST` on the listening socket: the names, then end-of-file.
fn list(listen: &Path) -> Vec<String> {
    let s = SeqPacket::connect(listen, false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send(&handshake::list_msg()).unwrap();
    let mut buf = vec![0u8; 1 << 17];
    let Recv::Msg(n) = s.recv(&mut buf).unwrap() else {
        panic!("no answer to LIST");
    };
    assert!(
        matches!(s.recv(&mut buf).unwrap(), Recv::Eof),
        "the connection closes after the answer"
    );
    match handshake::parse_list_reply(&buf[..n]).unwrap() {
        ListReply::Names(names) => names,
        other => panic!("LIST refused: {other:?}"),
    }
}

fn notify_driver(fx: &Fixture) -> Driver {
    let o = DriverOptions::default();
    fx.driver_with(DriverOptions {
        features: o.features | (1 << F_LISTEN_NOTIFY),
        ..o
    })
}

#[test]
fn guest_listeners_are_listed_and_forgotten_on_reset() {
    let mut fx = Fixture::new("listeners", &[]);
    let mut d = notify_driver(&fx);
    wait_for(&mut d, "device active", || fx.stats().active);
    assert!(list(&fx.listen).is_empty());

    announce(&mut d, MsgType::Listen, "svc-b");
    announce(&mut d, MsgType::Listen, "svc-a");
    announce(&mut d, MsgType::Listen, "k.echo");
    wait_for(&mut d, "three names", || {
        fx.stats().guest_listeners.len() == 3
    });
    assert_eq!(fx.stats().guest_listeners, ["k.echo", "svc-a", "svc-b"]);
    assert_eq!(list(&fx.listen), ["k.echo", "svc-a", "svc-b"]);
    // CONNECT still works next to LIST (nobody serves gsvc in this guest).
    // The guest is polled meanwhile, so the socket does not block.
    let s = SeqPacket::connect(&fx.listen, true).unwrap();
    s.send(&handshake::connect_msg("gsvc")).unwrap();
    let mut buf = [0u8; 256];
    let mut got = 0;
    wait_for(&mut d, "the guest's answer", || match s.recv(&mut buf) {
        Ok(Recv::Msg(n)) => {
            got = n;
            true
        }
        _ => false,
    });
    assert!(
        matches!(
            handshake::parse_reply(&buf[..got]),
            Ok(handshake::Reply::Err { code, .. }) if code.errno() == 2
        ),
        "{:?}",
        String::from_utf8_lossy(&buf[..got])
    );

    announce(&mut d, MsgType::Unlisten, "svc-a");
    wait_for(&mut d, "svc-a gone", || {
        fx.stats().guest_listeners.len() == 2
    });
    assert_eq!(list(&fx.listen), ["k.echo", "svc-b"]);
    let s = fx.stats();
    assert_eq!((s.device.malformed, s.listen_ignored), (0, 0));

    // A guest reboot (the driver resets the device): forgotten.
    d.reboot().unwrap();
    wait_for(&mut d, "active again", || fx.stats().active);
    assert!(fx.stats().guest_listeners.is_empty());
    assert!(list(&fx.listen).is_empty());
    announce(&mut d, MsgType::Listen, "svc-b");
    wait_for(&mut d, "svc-b again", || {
        fx.stats().guest_listeners == ["svc-b"]
    });

    // A backend restart: the new daemon knows nothing until announced.
    fx.restart_daemon();
    d.reattach(&fx.sock).unwrap();
    d.wait_until("RESET", |d| !d.events.is_empty()).unwrap();
    assert!(fx.stats().guest_listeners.is_empty());
    announce(&mut d, MsgType::Listen, "svc-b");
    wait_for(&mut d, "svc-b after the restart", || {
        fx.stats().guest_listeners == ["svc-b"]
    });
    assert_eq!(list(&fx.listen), ["svc-b"]);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn announcements_without_the_feature_are_malformed() {
    let fx = Fixture::new("discovery-off", &[]);
    let mut d = fx.driver();
    wait_for(&mut d, "device active", || fx.stats().active);
    announce(&mut d, MsgType::Listen, "svc");
    wait_for(&mut d, "malformed counted", || {
        fx.stats().device.malformed == 1
    });
    assert!(fx.stats().guest_listeners.is_empty());
    assert!(list(&fx.listen).is_empty());
}
