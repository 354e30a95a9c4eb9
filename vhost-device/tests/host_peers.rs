//! Hostile or careless host peers on the `--listen` socket: descriptors
//! passed with the handshake, connection floods past the fd limit, idle
//! connections that never finish the handshake. The daemon's descriptors,
//! CPU time and handshake slots stay bounded, and peers get an `ERR` line.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::F_GUEST_LISTEN;
use kt_proto::handshake::{self, Reply};
use kt_sim::DriverOptions;
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits up to 10 s for `cond`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Receives the handshake reply on `s` (blocking, 10 s at most).
fn reply(s: &SeqPacket) -> Option<Reply> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    match s.recv(&mut buf).unwrap() {
        Recv::Msg(n) => Some(handshake::parse_reply(&buf[..n.min(buf.len())]).unwrap()),
        Recv::Eof => None,
    }
}

/// Driver options of a guest that does not accept host connections: every
/// `CONNECT` is answered `ERR 111` by the device itself, at once.
fn no_listen() -> DriverOptions {
    let d = DriverOptions::default();
    DriverOptions {
        features: d.features & !(1 << F_GUEST_LISTEN),
        ..d
    }
}

#[test]
fn descriptors_passed_by_host_peers_are_closed() {
    let fx = Fixture::new("peer-fds", &[]);
    let _d = fx.driver_with(no_listen());
    wait_for("device active", || fx.stats().active);
    let pid = fx.daemon.pid();
    let baseline = fd_count(pid);
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let fds = [w.as_fd(), w.as_fd(), r.as_fd(), r.as_fd()];
    let mut peers = Vec::new();
    for _ in 0..50 {
        let s = SeqPacket::connect(&fx.listen, false).unwrap();
        s.send_with_fds(&handshake::connect_msg("gsvc"), &fds)
            .unwrap();
        match reply(&s) {
            Some(Reply::Err { code, .. }) => assert_eq!(code.errno(), 111),
            other => panic!("unexpected reply {other:?}"),
        }
        // Peers stay connected: only the daemon's side is measured.
        peers.push(s);
        let now = fd_count(pid);
        assert!(
            now <= baseline + 8,
            "daemon holds {now} fds after {} peers, baseline {baseline}",
            peers.len()
        );
    }
    drop(peers);
    wait_for("fd count back to baseline", || fd_count(pid) <= baseline);
    assert_eq!(fx.stats().passed_fds_closed, 200);
}
