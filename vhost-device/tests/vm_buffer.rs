//! The VM-wide budget on held guest data (`--vm-buffer`), against the real
//! daemon: channels whose host service never reads hold no more than the
//! budget between them while the guest keeps trying, a channel to a
//! reading service keeps flowing meanwhile, and once the stuck service
//! reads, every message arrives, in order.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_vhost_device::seqpacket::{Recv, SeqPacket};

const STUCK: usize = 8;
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

#[test]
fn stuck_channels_hold_at_most_the_budget_and_others_keep_flowing() {
    let fx = Fixture::new(
        "vmbuf",
        &["--max-msg-size", "4096", "--vm-buffer", &BUDGET.to_string()],
    );
    let manual = fx.manual_service();
    let mut d = fx.driver();
    let sink = d.open("sink").unwrap().unwrap();
    let stuck: Vec<(u32, SeqPacket)> = (0..STUCK)
        .map(|_| {
            let id = d.open("manual").unwrap().unwrap();
            (id, manual.accept_blocking().unwrap())
        })
        .collect();
    let s = fx.stats();
    assert_eq!(s.vm_buffer, BUDGET);
    let flow = vec![0x5au8; MSG];
    let mut sent = vec![0u32; STUCK];
    let mut sink_sent = 0u64;
    // The guest keeps trying on every channel until the stuck ones have
    // had no credit for a while.
    let mut last_progress = Instant::now();
    let mut worst = 0;
    while last_progress.elapsed() < Duration::from_millis(800) {
        for (i, (id, _)) in stuck.iter().enumerate() {
            while d.try_send(*id, &body(i, sent[i])).unwrap() {
                sent[i] += 1;
                last_progress = Instant::now();
            }
        }
        while d.try_send(sink, &flow).unwrap() {
            sink_sent += 1;
        }
        d.poll(Duration::from_millis(5)).unwrap();
        let s = fx.stats();
        assert!(s.buffered <= BUDGET, "held {} > {BUDGET}", s.buffered);
        assert!(s.buffer_granted <= BUDGET, "granted {}", s.buffer_granted);
        worst = worst.max(s.buffered);
    }
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");
    // The daemon holds data for the stuck channels, within the budget.
    assert!(worst > 0);
    // The flowing channel keeps its rate while the others are stuck.
    let before = fx.sink.msgs.load(Ordering::SeqCst);
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        for (i, (id, _)) in stuck.iter().enumerate() {
            assert!(
                !d.try_send(*id, &body(i, sent[i])).unwrap(),
                "stuck {i} got credit"
            );
        }
        while d.try_send(sink, &flow).unwrap() {
            sink_sent += 1;
        }
        d.poll(Duration::from_millis(2)).unwrap();
    }
    let moved = fx.sink.msgs.load(Ordering::SeqCst) - before;
    assert!(
        moved >= 200,
        "the flowing channel moved {moved} messages in 0.5 s"
    );
    assert!(fx.stats().buffered <= BUDGET);
    // The stuck service reads: everything arrives, in order, intact.
    for (_, s) in &stuck {
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    }
    let mut got = vec![0u32; STUCK];
    let mut buf = vec![0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got != sent {
        assert!(Instant::now() < deadline, "got {got:?} of {sent:?}");
        for (i, (_, s)) in stuck.iter().enumerate() {
            while got[i] < sent[i] {
                match s.recv(&mut buf) {
                    Ok(Recv::Msg(n)) => {
                        assert_eq!(
                            &buf[..n],
                            &body(i, got[i])[..],
                            "channel {i} message {}",
                            got[i]
                        );
                        got[i] += 1;
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
    while fx.sink.msgs.load(Ordering::SeqCst) < sink_sent {
        assert!(Instant::now() < deadline, "sink lost messages");
        d.poll(Duration::from_millis(5)).unwrap();
    }
    assert_eq!(fx.sink.bytes.load(Ordering::SeqCst), sink_sent * MSG as u64);
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
