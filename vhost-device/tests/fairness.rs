//! A guest that keeps its tx ring full does not starve host-side events:
//! while a simulated guest thread republishes tx chains as fast as the
//! device returns them, host programs' handshakes on `--listen` are still
//! answered within a bounded number of tx chains taken meanwhile, and no
//! chain is lost (the device takes tx in budgeted passes and yields to the
//! event loop in between, `device/mod.rs`). Asserted by counts, not time.
//!
//! The flood is DATA on a channel the device has already closed (its host
//! hung up; the guest has not read the `CLOSE` yet): legal, discarded by
//! the device after reading it (SPEC §3.2), and cheap for the guest, which
//! republishes one staged 64 KiB message without copying it, so the ring
//! never runs dry however fast the device is.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::F_GUEST_LISTEN;
use kt_proto::handshake::{self, Reply};
use kt_proto::{Header, MsgType};
use kt_sim::memory::QUEUE_SIZE;
use kt_sim::ring::Desc;
use kt_sim::DriverOptions;
use kt_vhost_device::device::TX_BUDGET;
use kt_vhost_device::seqpacket::{Recv, SeqPacket};
use vm_memory::Bytes;

/// tx chains the device may return, in the median handshake, between a
/// host program's connect (its `CONNECT` line sent at once) and the
/// device's answer: the pass under way, one pass per queue kick in the
/// same epoll batch (rx, tx, event), the pass that accepts and the one that
/// reads the line (when it was not there yet) take at most `TX_BUDGET`
/// each; the flood thread counts used entries as it pops them, up to a ring
/// late at either end. The median, not the worst: a test thread descheduled
/// between its connect and its send, or before it reads the answer, lets
/// the device return chains for as long (1,573 seen once in CI). A device
/// that served tx until the ring ran dry would never answer (the flood
/// refills it as fast as chains come back).
fn handshake_bound() -> u64 {
    (6 * TX_BUDGET + 2 * usize::from(QUEUE_SIZE)) as u64
}

#[test]
fn host_handshakes_are_answered_while_the_guest_floods_tx() {
    let fx = Fixture::new("fair", &[]);
    // The guest does not take host connections: the device answers every
    // CONNECT itself (ERR 111), so only the device's own scheduling is
    // measured.
    let opts = DriverOptions::default();
    let mut d = fx.driver_with(DriverOptions {
        features: opts.features & !(1 << F_GUEST_LISTEN),
        ..opts
    });
    let manual = fx.manual_service();
    let id = d.open("manual").unwrap().unwrap();
    // The host hangs up: the device sends CLOSE, which the guest will not
    // read while it floods.
    drop(manual.accept_blocking().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let len = 65536u32;
    let msg = Header::with_payload(MsgType::Data, id, len);
    let slot = d.layout.slot(1, 255);
    d.mem.write_slice(&msg.encode(), slot).unwrap();
    d.mem
        .write_slice(
            &vec![0x5a; len as usize],
            vm_memory::GuestAddress(slot.0 + 32),
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let returned = Arc::new(AtomicU64::new(0));
    let flood = {
        let stop = stop.clone();
        let returned = returned.clone();
        std::thread::spawn(move || {
            let desc = Desc {
                addr: slot.0,
                len: 32 + len,
                flags: 0,
            };
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while d.rings[1].pop_used(&d.mem).unwrap().is_some() {
                    returned.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(head) = d.rings[1].add_chain(&d.mem, &[desc]).unwrap() {
                    d.rings[1].publish(&d.mem, head).unwrap();
                    d.rings[1].kick(&d.mem).unwrap();
                    sent += 1;
                }
            }
            // Every chain comes back.
            d.rings[1].force_kick().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.rings[1].last_used() != d.rings[1].avail_idx() {
                assert!(Instant::now() < deadline, "tx chains not returned");
                while d.rings[1].pop_used(&d.mem).unwrap().is_some() {}
            }
            (d, sent)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut waits = Vec::with_capacity(20);
    for i in 0..20 {
        let before = returned.load(Ordering::Relaxed);
        let s = SeqPacket::connect(&fx.listen, false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send(&handshake::connect_msg("gsvc")).unwrap();
        let mut buf = [0u8; 256];
        let n = match s.recv(&mut buf) {
            Ok(Recv::Msg(n)) => n.min(buf.len()),
            other => {
                stop.store(true, Ordering::Relaxed);
                panic!("handshake {i}: no reply within 5 s while the guest floods: {other:?}")
            }
        };
        match handshake::parse_reply(&buf[..n]).unwrap() {
            Reply::Err { code, .. } => assert_eq!(code.errno(), 111),
            other => panic!("unexpected reply {other:?}"),
        }
        waits.push(returned.load(Ordering::Relaxed) - before);
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let (d, sent) = flood.join().unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(sent > 1000, "the guest sent only {sent} messages");
    waits.sort_unstable();
    let (median, worst) = (waits[waits.len() / 2], waits[waits.len() - 1]);
    assert!(
        median <= handshake_bound(),
        "the median handshake waited while the device returned {median} tx chains (bound {}; \
         all: {waits:?}); the guest flooded {sent} messages",
        handshake_bound()
    );
    eprintln!(
        "{sent} flood messages; tx chains returned while a handshake waited: median {median} \
         (bound {}), worst {worst}",
        handshake_bound()
    );
    assert_eq!(fx.stats().device.malformed, 0);
}
