//! Host socket events reach the guest on their own: a host hang-up becomes
//! CLOSE and a host `CONNECT` becomes OPEN with the guest never kicking a
//! queue (a real guest sleeps in `read()`/`accept()` and has nothing to
//! kick), in both directions and on a channel stalled for credit.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::ErrorCode;
use kt_sim::host::connect_guest;
use kt_sim::{Driver, DriverOptions};
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

/// How long a host event may take to reach a guest that does not kick.
/// Generous for a loaded machine; the bug this guards against waits
/// forever.
const BOUND: Duration = Duration::from_secs(3);

fn listening_driver(fx: &Fixture, buf_alloc: u32) -> Driver {
    fx.driver_with(DriverOptions {
        listen: vec!["gsvc".into()],
        buf_alloc,
        ..DriverOptions::default()
    })
}

fn host_recv(s: &SeqPacket) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 70_000];
    match s.recv(&mut buf).unwrap() {
        Recv::Msg(n) => buf[..n].to_vec(),
        Recv::Eof => panic!("unexpected EOF"),
    }
}

/// A host `CONNECT` from another thread; returns the host socket once the
/// guest accepted it without any kick, and the channel id.
fn host_connect_without_kick(fx: &Fixture, d: &mut Driver) -> (SeqPacket, u32) {
    let listen = fx.listen.clone();
    let host = std::thread::spawn(move || connect_guest(&listen, "gsvc").unwrap().unwrap());
    d.wait_without_kicks("OPEN for a host CONNECT", BOUND, |d| !d.accepted.is_empty())
        .unwrap();
    let (id, name) = d.accepted.pop_front().unwrap();
    assert_eq!(name, "gsvc");
    // Our OPEN_OK was kicked when the wait ended: the host gets OK.
    let (s, hid) = host.join().unwrap();
    assert_eq!(hid, id);
    (s, id)
}

#[test]
fn host_close_of_guest_opened_channel_needs_no_kick() {
    let fx = Fixture::new("wake-g", &[]);
    let svc = fx.manual_service();
    let mut d = fx.driver();
    let id = d.open("manual").unwrap().unwrap();
    let host = svc.accept_blocking().unwrap();
    d.send(id, b"ping").unwrap();
    assert_eq!(host_recv(&host), b"ping");
    host.send(b"pong").unwrap();
    assert_eq!(d.recv(id).unwrap(), b"pong");
    // The host service hangs up while the guest waits quietly.
    drop(host);
    d.wait_without_kicks("CLOSE after host hang-up", BOUND, |d| {
        d.closed(id).is_some()
    })
    .unwrap();
    assert_eq!(d.closed(id), Some(0));

    // Again with a last message sent right before the hang-up: it arrives
    // first, then CLOSE.
    let id = d.open("manual").unwrap().unwrap();
    let host = svc.accept_blocking().unwrap();
    d.send(id, b"ping").unwrap();
    assert_eq!(host_recv(&host), b"ping");
    host.send(b"last words").unwrap();
    drop(host);
    d.wait_without_kicks("data and CLOSE after host hang-up", BOUND, |d| {
        d.closed(id).is_some()
    })
    .unwrap();
    assert_eq!(d.inbox_len(id), 1);
    assert_eq!(d.try_recv(id).unwrap().unwrap(), b"last words");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn host_connect_and_close_need_no_kick() {
    let fx = Fixture::new("wake-h", &[]);
    let mut d = listening_driver(&fx, 256 * 1024);
    let (host, id) = host_connect_without_kick(&fx, &mut d);
    host.send(b"hello").unwrap();
    d.wait_without_kicks("host data", BOUND, |d| d.inbox_len(id) == 1)
        .unwrap();
    assert_eq!(d.try_recv(id).unwrap().unwrap(), b"hello");
    d.send(id, b"back").unwrap();
    d.flush().unwrap();
    assert_eq!(host_recv(&host), b"back");
    // Host program closes its connection: CLOSE without any guest kick.
    drop(host);
    d.wait_without_kicks("CLOSE after host hang-up", BOUND, |d| {
        d.closed(id).is_some()
    })
    .unwrap();
    assert_eq!(d.closed(id), Some(0));

    // A host program that connects, sends and hangs up at once.
    let listen = fx.listen.clone();
    let (go, wait) = mpsc::channel::<()>();
    let host = std::thread::spawn(move || {
        let (s, id) = connect_guest(&listen, "gsvc").unwrap().unwrap();
        wait.recv().unwrap();
        s.send(b"bye").unwrap();
        id
    });
    d.wait_without_kicks("second OPEN", BOUND, |d| !d.accepted.is_empty())
        .unwrap();
    let (id2, _) = d.accepted.pop_front().unwrap();
    go.send(()).unwrap();
    assert_eq!(host.join().unwrap(), id2);
    d.wait_without_kicks("data and CLOSE", BOUND, |d| d.closed(id2).is_some())
        .unwrap();
    assert_eq!(d.try_recv(id2).unwrap().unwrap(), b"bye");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn host_close_on_a_stalled_channel_comes_after_all_data() {
    const MSG: usize = 1000;
    const N: u32 = 40;
    let fx = Fixture::new("wake-stall", &["--max-msg-size", "1024"]);
    // Room for four messages: the device stalls long before the host is done.
    let mut d = listening_driver(&fx, 4 * (1024 + 32));
    let listen = fx.listen.clone();
    let host = std::thread::spawn(move || {
        let (s, id) = connect_guest(&listen, "gsvc").unwrap().unwrap();
        for i in 0..N {
            let mut m = vec![(i % 251) as u8; MSG];
            m[..4].copy_from_slice(&i.to_le_bytes());
            s.send(&m).unwrap();
        }
        id
    });
    d.wait_until("host connection", |d| !d.accepted.is_empty())
        .unwrap();
    let (id, _) = d.accepted.pop_front().unwrap();
    // The guest does not read: the window fills, the device stops reading.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.stats().device.credit_stalls == 0 {
        assert!(Instant::now() < deadline, "no stall: {:?}", fx.stats());
        d.poll(Duration::from_millis(20)).unwrap();
    }
    assert!(d.closed(id).is_none(), "CLOSE before the data");
    // Read everything while the host finishes and hangs up (its thread
    // ends and drops the socket once all messages are queued).
    for i in 0..N {
        let m = d.recv(id).unwrap();
        assert_eq!(m.len(), MSG);
        assert_eq!(u32::from_le_bytes([m[0], m[1], m[2], m[3]]), i);
    }
    assert_eq!(host.join().unwrap(), id);
    // All data is in; the hang-up follows on its own.
    d.wait_without_kicks("CLOSE after the last message", BOUND, |d| {
        d.closed(id).is_some()
    })
    .unwrap();
    assert_eq!(d.closed(id), Some(0));
    assert_eq!(d.inbox_len(id), 0);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn host_close_while_stalled_and_idle_guest() {
    // The host hangs up while its last messages wait for credit and the
    // guest is not reading yet: nothing may be lost or reordered, and once
    // the guest returns credit the rest and then CLOSE arrive.
    const N: u32 = 12;
    let fx = Fixture::new("wake-stall2", &["--max-msg-size", "1024"]);
    let mut d = listening_driver(&fx, 4 * (1024 + 32));
    let (host, id) = host_connect_without_kick(&fx, &mut d);
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            host.send(&i.to_le_bytes().repeat(250)).unwrap();
        }
        // Dropped here: hang-up with messages still queued in the socket.
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.stats().device.credit_stalls == 0 {
        assert!(Instant::now() < deadline, "no stall: {:?}", fx.stats());
        d.poll(Duration::from_millis(20)).unwrap();
    }
    sender.join().unwrap();
    // Give the device every chance to (wrongly) close early.
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        d.poll(Duration::from_millis(20)).unwrap();
    }
    assert!(d.closed(id).is_none(), "CLOSE overtook stalled data");
    for i in 0..N {
        let m = d.recv(id).unwrap();
        assert_eq!(m, i.to_le_bytes().repeat(250), "message {i}");
    }
    d.wait_without_kicks("CLOSE after the stalled data", BOUND, |d| {
        d.closed(id).is_some()
    })
    .unwrap();
    assert_eq!(d.closed(id), Some(0));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn host_reply_then_close_with_unread_guest_data_is_delivered() {
    // The host service answers and closes without reading the guest's
    // second message: the kernel reports ECONNRESET once, but the reply
    // is still queued and must reach the guest before CLOSE.
    let fx = Fixture::new("wake-reset", &[]);
    let svc = fx.manual_service();
    let mut d = fx.driver();
    let id = d.open("manual").unwrap().unwrap();
    let host = svc.accept_blocking().unwrap();
    d.send(id, b"request").unwrap();
    assert_eq!(host_recv(&host), b"request");
    d.send(id, b"never read").unwrap();
    d.flush().unwrap();
    // Wait until the device has written it to the host socket.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.stats().device.msgs_to_host < 2 {
        assert!(Instant::now() < deadline, "{:?}", fx.stats());
        d.poll(Duration::from_millis(20)).unwrap();
    }
    host.send(b"reply").unwrap();
    drop(host);
    d.wait_without_kicks("reply and CLOSE", BOUND, |d| d.closed(id).is_some())
        .unwrap();
    assert_eq!(d.try_recv(id).unwrap().as_deref(), Some(&b"reply"[..]));
    // The guest learns that part of what it sent was never read.
    assert_eq!(d.closed(id), Some(ErrorCode::ConnReset as u32));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn guest_write_after_host_close_does_not_drop_stalled_data() {
    // The host sent more than the guest's window and hung up; the guest
    // writes before reading. Its message cannot be delivered (the host is
    // gone) but everything the host sent still arrives, then CLOSE.
    const N: u32 = 12;
    let fx = Fixture::new("wake-epipe", &["--max-msg-size", "1024"]);
    let mut d = listening_driver(&fx, 4 * (1024 + 32));
    let (host, id) = host_connect_without_kick(&fx, &mut d);
    for i in 0..N {
        host.send(&i.to_le_bytes().repeat(250)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.stats().device.credit_stalls == 0 {
        assert!(Instant::now() < deadline, "no stall: {:?}", fx.stats());
        d.poll(Duration::from_millis(20)).unwrap();
    }
    drop(host);
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        d.poll(Duration::from_millis(20)).unwrap();
    }
    d.send(id, b"x").unwrap();
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        d.poll(Duration::from_millis(20)).unwrap();
    }
    for i in 0..N {
        let m = d.recv(id).unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(m, i.to_le_bytes().repeat(250), "message {i}");
    }
    d.wait_without_kicks("CLOSE after the data", BOUND, |d| d.closed(id).is_some())
        .unwrap();
    assert_eq!(d.closed(id), Some(ErrorCode::ConnReset as u32));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

/// `--busy-poll-us`: the worker polls the tx ring (guest kicks off) and the
/// host sockets for a while after its work. Round trips go through while
/// it polls, and once it has given up and slept, the guest's kick wakes it
/// again (notifications were turned back on): nothing waits for a timeout.
#[test]
fn busy_poll_serves_round_trips_and_sleeps_with_kicks_back_on() {
    let fx = Fixture::new("busypoll", &["--busy-poll-us", "200"]);
    let mut d = fx.driver();
    let id = d.open("echo").unwrap().unwrap();
    for i in 0..2000u32 {
        let msg = i.to_le_bytes().repeat(1 + (i % 50) as usize);
        d.send(id, &msg).unwrap();
        assert_eq!(d.recv(id).unwrap(), msg, "round trip {i}");
    }
    for i in 0..20u32 {
        // Longer than the poll: the worker is asleep when this is sent.
        std::thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        d.send(id, &i.to_le_bytes()).unwrap();
        assert_eq!(d.recv(id).unwrap(), i.to_le_bytes());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "message {i} after the poll took {:?}",
            t.elapsed()
        );
    }
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}
