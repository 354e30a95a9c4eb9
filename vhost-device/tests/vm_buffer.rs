//! The VM-wide budget on held guest data (`--vm-buffer`), against the real
//! daemon: channels whose host service never reads hold no more than the
//! budget between them while the guest keeps trying, a channel to a
//! reading service keeps flowing meanwhile, and once the stuck service
//! reads, every message arrives, in order.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

const STUCK: usize = 8;
/// The flowing channel's number in its messages.
const FLOW: usize = 99;
/// Messages the flowing channel moves alone and again beside the stuck
/// ones: 25 times the budget, so it must keep getting credit back.
const FLOW_MSGS: u64 = 1000;
const MSG: usize = 1000;
/// Nine windows of one 4 KiB message (4128 credit bytes) fit; the default
/// `--channel-buffer` (4 × 4128) would let the stuck channels hold
/// 8 × 16512 = 132096.
const BUDGET: u64 = 40_000;

/// Message `seq` of stuck channel `chan`: both numbers, then filler.
fn body(chan: usize, seq: u32) -> Vec<u8> {
    let mut b = vec![(seq as u8) ^ (chan as u8); MSG];
    b[..4].copy_from_slice(&(chan as u32).to_le_bytes());
    b[4..8].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Reads the flowing channel's host end until `stop`, checking that
/// message `n` is `body(FLOW, n)`; counts them in `got`.
fn reader(s: SeqPacket, got: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = vec![0u8; 8192];
        while !stop.load(Ordering::SeqCst) {
            match s.recv(&mut buf) {
                Ok(Recv::Msg(n)) => {
                    let seq = got.load(Ordering::SeqCst) as u32;
                    assert_eq!(&buf[..n], &body(FLOW, seq)[..], "flowing message {seq}");
                    got.fetch_add(1, Ordering::SeqCst);
                }
                Ok(other) => panic!("flowing channel: {other:?}"),
                Err(_) => {}
            }
        }
    })
}

/// Sends on the flowing channel as far as its credit goes.
fn top_up(d: &mut kt_sim::Driver, id: u32, sent: &mut u32) {
    while d.try_send(id, &body(FLOW, *sent)).unwrap() {
        *sent += 1;
    }
}

/// Keeps the flowing channel topped up until its reader has `target`
/// messages (within 30 s, a hang bound, not a rate); meanwhile every
/// channel of `stuck` must have no credit.
fn flow_until(
    d: &mut kt_sim::Driver,
    id: u32,
    sent: &mut u32,
    got: &AtomicU64,
    target: u64,
    stuck: &[(u32, SeqPacket)],
    stuck_sent: &[u32],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < deadline,
            "the flowing channel moved {} of {target} messages in 30 s",
            got.load(Ordering::SeqCst)
        );
        for (i, (sid, _)) in stuck.iter().enumerate() {
            assert!(
                !d.try_send(*sid, &body(i, stuck_sent[i])).unwrap(),
                "stuck {i} got credit"
            );
        }
        top_up(d, id, sent);
        d.poll(Duration::from_millis(1)).unwrap();
    }
}

#[test]
fn stuck_channels_hold_at_most_the_budget_and_others_keep_flowing() {
    let fx = Fixture::new(
        "vmbuf",
        &["--max-msg-size", "4096", "--vm-buffer", &BUDGET.to_string()],
    );
    let manual = fx.manual_service();
    let mut d = fx.driver();
    let flow = d.open("manual").unwrap().unwrap();
    let (got, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let read = reader(manual.accept_blocking().unwrap(), got.clone(), stop.clone());
    let stuck: Vec<(u32, SeqPacket)> = (0..STUCK)
        .map(|_| {
            let id = d.open("manual").unwrap().unwrap();
            (id, manual.accept_blocking().unwrap())
        })
        .collect();
    assert_eq!(fx.stats().vm_buffer, BUDGET);
    let mut flow_sent = 0u32;
    // The flowing channel alone first.
    flow_until(&mut d, flow, &mut flow_sent, &got, FLOW_MSGS, &[], &[]);
    let mut sent = vec![0u32; STUCK];
    // The guest keeps trying on every channel until the stuck ones have
    // had no credit for a while.
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_millis(800) {
        for (i, (id, _)) in stuck.iter().enumerate() {
            while d.try_send(*id, &body(i, sent[i])).unwrap() {
                sent[i] += 1;
                last_progress = Instant::now();
            }
        }
        top_up(&mut d, flow, &mut flow_sent);
        d.poll(Duration::from_millis(5)).unwrap();
        let s = fx.stats();
        assert!(s.buffered <= BUDGET, "held {} > {BUDGET}", s.buffered);
        assert!(s.buffer_granted <= BUDGET, "granted {}", s.buffer_granted);
    }
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");
    let held = fx.stats().buffered;
    assert!(held > 0 && held <= BUDGET, "held {held}");
    // The flowing channel keeps moving while the others are stuck: many
    // times the budget goes through it, none of the stuck ones gets
    // credit meanwhile.
    let before = got.load(Ordering::SeqCst);
    flow_until(
        &mut d,
        flow,
        &mut flow_sent,
        &got,
        before + FLOW_MSGS,
        &stuck,
        &sent,
    );
    assert!(fx.stats().buffered <= BUDGET);
    // The stuck service reads: everything arrives, in order, intact.
    for (_, s) in &stuck {
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    }
    let mut got_stuck = vec![0u32; STUCK];
    let mut buf = vec![0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got_stuck != sent {
        assert!(Instant::now() < deadline, "got {got_stuck:?} of {sent:?}");
        for (i, (_, s)) in stuck.iter().enumerate() {
            while got_stuck[i] < sent[i] {
                match s.recv(&mut buf) {
                    Ok(Recv::Msg(n)) => {
                        let want = body(i, got_stuck[i]);
                        assert_eq!(&buf[..n], &want[..], "channel {i} message {}", got_stuck[i]);
                        got_stuck[i] += 1;
                    }
                    Ok(other) => panic!("channel {i}: {other:?}"),
                    Err(_) => break,
                }
            }
        }
        d.poll(Duration::from_millis(1)).unwrap();
    }
    // And the channels flow again: more goes through each.
    for (i, (id, s)) in stuck.iter().enumerate() {
        d.send(*id, &body(i, sent[i])).unwrap();
        d.flush().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(s.recv(&mut buf).unwrap(), Recv::Msg(MSG));
        assert_eq!(&buf[..MSG], &body(i, sent[i])[..]);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.load(Ordering::SeqCst) < u64::from(flow_sent) {
        assert!(
            Instant::now() < deadline,
            "the flowing channel lost messages"
        );
        d.poll(Duration::from_millis(5)).unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    read.join().unwrap();
    assert_eq!(got.load(Ordering::SeqCst), u64::from(flow_sent));
    assert_eq!(fx.stats().buffered, 0);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn a_vm_buffer_below_one_message_is_refused() {
    let out = std::process::Command::new(common::bin())
        .args([
            "--socket-path",
            "/nonexistent/x.sock",
            "--policy",
            "/nonexistent/p.toml",
        ])
        .args(["--max-msg-size", "4096", "--vm-buffer", "4000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vm-buffer"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn the_queue_pairs_share_one_budget() {
    const SHARED: u64 = 20_000;
    let fx = Fixture::new(
        "vmbuf-mq",
        &[
            "--queue-pairs",
            "2",
            "--max-msg-size",
            "4096",
            "--vm-buffer",
            &SHARED.to_string(),
        ],
    );
    let manual = fx.manual_service();
    let o = kt_sim::DriverOptions::default();
    let opts = kt_sim::DriverOptions {
        features: o.features | (1 << kt_proto::consts::F_MULTIQUEUE),
        ..o
    };
    let mut ds = kt_sim::connect_pairs(&fx.sock, opts, 2).unwrap();
    assert_eq!(ds.len(), 2, "two pairs started");
    // Two stuck channels on each pair: 4 × 4128 fit the budget; with a
    // budget per pair, each pair's two would grow to 10000 each.
    let mut chans = Vec::new();
    for (p, d) in ds.iter_mut().enumerate() {
        for _ in 0..2 {
            let id = d.open("manual").unwrap().unwrap();
            chans.push((p, id, manual.accept_blocking().unwrap()));
        }
    }
    // All four windows, both pairs', come from the one budget.
    assert_eq!(fx.stats().buffer_granted, 4 * 4128);
    let mut sent = vec![0u32; chans.len()];
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_millis(800) {
        for (i, (p, id, _)) in chans.iter().enumerate() {
            while ds[*p].try_send(*id, &body(i, sent[i])).unwrap() {
                sent[i] += 1;
                last_progress = Instant::now();
            }
        }
        for d in &mut ds {
            d.poll(Duration::from_millis(2)).unwrap();
        }
        let s = fx.stats();
        assert!(s.buffered <= SHARED, "held {}", s.buffered);
        assert!(s.buffer_granted <= SHARED, "granted {}", s.buffer_granted);
    }
    assert!(fx.stats().buffered > 0);
    // Everything arrives once the service reads.
    let mut buf = vec![0u8; 8192];
    for (i, (p, _, s)) in chans.iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for seq in 0..sent[i] {
            // The pair's driver must keep taking credit updates meanwhile.
            if seq % 8 == 0 {
                ds[*p].poll(Duration::from_millis(0)).unwrap();
            }
            assert_eq!(s.recv(&mut buf).unwrap(), Recv::Msg(MSG));
            assert_eq!(&buf[..MSG], &body(i, seq)[..], "channel {i} message {seq}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fx.stats().buffered != 0 {
        assert!(Instant::now() < deadline, "data left in the daemon");
        std::thread::sleep(Duration::from_millis(10));
    }
}
