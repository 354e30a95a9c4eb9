//! A guest that keeps its tx ring busy does not starve host-side events:
//! while the simulated guest floods tx from its own thread, host programs'
//! handshakes on `--listen` are still answered within a bound, and the
//! flood itself loses nothing (the device takes tx in budgeted passes and
//! yields to the event loop in between, `device.rs`). The deterministic
//! check that one pass is bounded is the unit test
//! `a_full_tx_ring_is_taken_in_budgeted_passes_and_host_input_gets_in`;
//! this one runs the budgeted path end to end against the real daemon.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::F_GUEST_LISTEN;
use kt_proto::handshake::{self, Reply};
use kt_proto::{Header, MsgType};
use kt_sim::DriverOptions;
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

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
    let id = d.open("sink").unwrap().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // The cheapest message for the guest to publish: the device
            // keeps taking chains as long as the ring has any.
            let mut h = Header::new(MsgType::CreditRequest, id);
            h.buf_alloc = d.opts.buf_alloc;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Reap used descriptors as soon as the device returns
                // them, so the ring never runs dry on the guest's side.
                if d.rings[1].free_count() == 0 {
                    d.process().unwrap();
                    continue;
                }
                d.send_raw(&h, &[]).unwrap();
                sent += 1;
            }
            (d, sent)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let start = Instant::now();
        let s = SeqPacket::connect(&fx.listen, false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.send(&handshake::connect_msg("gsvc")).unwrap();
        let mut buf = [0u8; 256];
        let n = match s.recv(&mut buf) {
            Ok(Recv::Msg(n)) => n.min(buf.len()),
            other => panic!("no handshake reply while the guest floods: {other:?}"),
        };
        match handshake::parse_reply(&buf[..n]).unwrap() {
            Reply::Err { code, .. } => assert_eq!(code.errno(), 111),
            other => panic!("unexpected reply {other:?}"),
        }
        worst = worst.max(start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let (d, sent) = flood.join().unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(sent > 1000, "the guest sent only {sent} messages");
    assert!(
        worst < Duration::from_secs(1),
        "a handshake took {worst:?} while the guest flooded ({sent} messages)"
    );
    assert_eq!(fx.stats().device.malformed, 0);
}
