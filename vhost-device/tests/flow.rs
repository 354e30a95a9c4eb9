//! Backpressure both ways, host-initiated channels, and frontend
//! disconnect / backend restart / guest reboot, against the real daemon.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::HDR_SIZE;
use kt_proto::MsgType;
use kt_sim::host::connect_guest;
use kt_sim::DriverOptions;
use kt_vhost_device::seqpacket::Recv;

fn settle(d: &mut kt_sim::Driver, ms: u64) {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        d.poll(Duration::from_millis(20)).unwrap();
    }
}

#[test]
fn guest_to_host_backpressure_loses_nothing() {
    let fx = Fixture::new("bp-g2h", &[]);
    fx.sink.paused.store(true, Ordering::SeqCst);
    let mut d = fx.driver();
    let id = d.open("sink").unwrap().unwrap();
    let msg = vec![0xabu8; 1000];
    let mut sent = 0u64;
    // Send until the device stops returning credit.
    let mut stuck_since = None;
    loop {
        if d.try_send(id, &msg).unwrap() {
            sent += 1;
            stuck_since = None;
            continue;
        }
        let t = *stuck_since.get_or_insert_with(Instant::now);
        if t.elapsed() > Duration::from_millis(700) {
            break;
        }
        d.poll(Duration::from_millis(20)).unwrap();
    }
    assert!(sent > 0);
    let c = d.chans.get(&id).unwrap().send;
    assert!(!c.can_send(1000), "guest still has credit");
    // The daemon holds at most its window; the host has read nothing.
    assert_eq!(fx.sink.msgs.load(Ordering::SeqCst), 0);
    let window = fx.stats().channels[0].counters;
    assert!(window.msgs_to_host < sent, "{window:?}");
    // Resume the reader: everything arrives, and more can be sent.
    fx.sink.paused.store(false, Ordering::SeqCst);
    for _ in 0..100 {
        d.send(id, &msg).unwrap();
        sent += 1;
    }
    d.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.sink.msgs.load(Ordering::SeqCst) < sent {
        assert!(
            Instant::now() < deadline,
            "sink got {} of {sent}",
            fx.sink.msgs.load(Ordering::SeqCst)
        );
        d.poll(Duration::from_millis(20)).unwrap();
    }
    assert_eq!(fx.sink.bytes.load(Ordering::SeqCst), sent * 1000);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn host_to_guest_backpressure_and_handshake() {
    let fx = Fixture::new("bp-h2g", &[]);
    let mut d = fx.driver_with(DriverOptions {
        listen: vec!["gsvc".into()],
        buf_alloc: 64 * 1024,
        ..DriverOptions::default()
    });
    // Unknown guest service: refused with ERR.
    let listen = fx.listen.clone();
    let refused = std::thread::spawn(move || connect_guest(&listen, "nothere").unwrap());
    d.wait_until("refusal", |_| refused.is_finished()).unwrap();
    let r = refused.join().unwrap();
    assert!(matches!(&r, Err(t) if t.starts_with("2 ")), "{r:?}");

    let listen = fx.listen.clone();
    const N: u32 = 3000;
    let host = std::thread::spawn(move || {
        let (s, id) = connect_guest(&listen, "gsvc").unwrap().unwrap();
        for i in 0..N {
            let mut m = vec![(i % 251) as u8; 1000];
            m[..4].copy_from_slice(&i.to_le_bytes());
            s.send(&m).unwrap();
        }
        // Then one message back from the guest.
        let mut buf = [0u8; 64];
        let n = match s.recv(&mut buf).unwrap() {
            Recv::Msg(n) => n,
            Recv::Eof => 0,
        };
        (id, buf[..n].to_vec())
    });
    d.wait_until("host connection", |d| !d.accepted.is_empty())
        .unwrap();
    let (id, name) = d.accepted.pop_front().unwrap();
    assert_eq!(name, "gsvc");
    // Do not read: the guest's window fills, then the device stalls.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.stats().device.credit_stalls == 0 {
        assert!(
            Instant::now() < deadline,
            "no credit stall: {:?}",
            fx.stats()
        );
        d.poll(Duration::from_millis(20)).unwrap();
    }
    settle(&mut d, 200);
    let queued = d.inbox_len(id);
    assert!(queued > 0);
    assert!(
        queued * (1000 + HDR_SIZE) <= 64 * 1024,
        "{queued} messages over the window"
    );
    settle(&mut d, 300);
    assert_eq!(d.inbox_len(id), queued, "device sent beyond credit");
    // Now read everything, in order.
    for i in 0..N {
        let m = d.recv(id).unwrap();
        assert_eq!(m.len(), 1000);
        assert_eq!(u32::from_le_bytes([m[0], m[1], m[2], m[3]]), i);
    }
    d.send(id, b"thanks").unwrap();
    d.flush().unwrap();
    let (hid, back) = host.join().unwrap();
    assert_eq!(hid, id);
    assert_eq!(back, b"thanks");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn restart_reboot_and_reconnect() {
    let mut fx = Fixture::new("reconnect", &[]);
    let mut d = fx.driver_with(DriverOptions {
        listen: vec!["gsvc".into()],
        ..DriverOptions::default()
    });
    let id = d.open("echo").unwrap().unwrap();
    d.send(id, b"one").unwrap();
    assert_eq!(d.recv(id).unwrap(), b"one");
    assert!(d.events.is_empty());

    // Backend crash + restart under a running guest: RESET on the event queue.
    fx.restart_daemon();
    d.reattach(&fx.sock).unwrap();
    d.wait_until("RESET", |d| !d.events.is_empty()).unwrap();
    assert_eq!(d.events[0].msg_type, MsgType::Reset);
    assert!(d.chans.is_empty());
    let id2 = d.open("echo").unwrap().unwrap();
    d.send(id2, b"two").unwrap();
    assert_eq!(d.recv(id2).unwrap(), b"two");
    assert_eq!(fx.stats().resets, 1);

    // Guest reboot on the same connection: fresh queues, no RESET, the
    // old channel's host connection is closed.
    let echo_conns = fx.echo.conns.load(Ordering::SeqCst);
    d.reboot().unwrap();
    let id3 = d.open("echo").unwrap().unwrap();
    d.send(id3, b"three").unwrap();
    assert_eq!(d.recv(id3).unwrap(), b"three");
    assert_eq!(d.events.len(), 1);
    assert_eq!(fx.echo.conns.load(Ordering::SeqCst), echo_conns + 1);

    // VMM restart: disconnect; the daemon serves the next frontend and the
    // host listening socket still works.
    d.shutdown().unwrap();
    drop(d);
    let mut d = fx.driver_with(DriverOptions {
        listen: vec!["gsvc".into()],
        ..DriverOptions::default()
    });
    let id4 = d.open("echo").unwrap().unwrap();
    d.send(id4, b"four").unwrap();
    assert_eq!(d.recv(id4).unwrap(), b"four");
    let listen = fx.listen.clone();
    let host = std::thread::spawn(move || {
        let (s, _) = connect_guest(&listen, "gsvc").unwrap().unwrap();
        s.send(b"hello guest").unwrap();
    });
    d.wait_until("host connection", |d| !d.accepted.is_empty())
        .unwrap();
    let (hid, _) = d.accepted.pop_front().unwrap();
    assert_eq!(d.recv(hid).unwrap(), b"hello guest");
    host.join().unwrap();
    // Host closed its socket: the guest sees CLOSE.
    d.wait_until("CLOSE", |d| d.closed(hid).is_some()).unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(fx.daemon.alive());
    assert!(fx.stats().frontends >= 2);
}
