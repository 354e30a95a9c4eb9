//! Channel fairness with one flooding channel (issue 11): the real daemon
//! and the simulated guest (kt-sim), asserted by counts, never by time.
//!
//! - rx: a host program floods one channel towards the guest (which keeps
//!   reading it) while the test, as the host end of 50 quiet channels,
//!   sends a request on each and the guest answers. Between a request
//!   landing in its host socket and its delivery into the guest's rx ring,
//!   at most a bounded number of flood messages may be delivered
//!   ([`rx_bound`]), measured in rx used-ring entries. Run with and
//!   without the worker's busy poll.
//! - tx: the guest floods one channel towards a host sink (keeping its tx
//!   ring topped up) while the same quiet round trips run; between a
//!   request landing in its host socket and the guest seeing it, the
//!   device takes a bounded number of tx chains ([`tx_bound`]).
//! - many channels: 1,200 channels open at once up to `--max-channels`,
//!   the next OPEN is refused with `KT_ERR_MFILE`, every channel still
//!   carries a round trip, and a closed slot can be opened again.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::ErrorCode;
use kt_sim::memory::QUEUE_SIZE;
use kt_sim::Driver;
use kt_vhost_device::device::{RX_BUDGET, TX_BUDGET};
use kt_vhost_device::seqpacket::{Recv, SeqListener, SeqPacket};

/// Quiet channels next to the flooding one.
const QUIET: usize = 50;
/// Rounds of one request per quiet channel.
const ROUNDS: usize = 5;
/// Size of each flood message (small: many messages per credit window).
const FLOOD_SIZE: usize = 64;

/// Flood messages the device may deliver between a quiet channel's
/// message becoming readable on its host socket (the mark is read after
/// the write) and that message's delivery. The round-robin design gives:
/// - the pass running when the message lands fills at most `RX_BUDGET`
///   rx buffers, all of them possibly flood;
/// - the next pass serves host events first (every pass does when they
///   are waiting while a channel is in the ready queue, as the flood
///   channel always is here, whatever woke the pass), which puts the
///   channel in the ready queue, served one message per channel per turn:
///   the flood channel gets at most 1 more before it.
///
/// That is `RX_BUDGET + 1` (reached in runs); the assertion allows half
/// a pass more, so that only a change of design fails it. Serving a
/// channel until it is drained gives an unbounded wait (the flood never
/// drains: the quiet channels time out); a pass started by a guest kick
/// that skipped host events gave up to `2 * RX_BUDGET + 1` (seen before
/// `Device::run` served waiting host events in every pass).
fn rx_bound() -> u64 {
    (RX_BUDGET + RX_BUDGET / 2) as u64
}

/// tx chains the device may take between a quiet channel's message
/// becoming readable on its host socket and the guest seeing it. With no
/// channel in the rx ready queue a pass started by a guest kick leaves
/// host events to the worker's next epoll round, so: the pass running
/// then, one pass per queue kick in the same epoll batch (rx, tx, event)
/// and the tx part of the pass that serves the host event take at most
/// `TX_BUDGET` each (a pass alternates tx and rx until neither moves,
/// within one budget each). The guest looks at its rx ring only between
/// topping up its tx ring, so up to a ring's worth (`QUEUE_SIZE`) more
/// may be taken before it sees the message.
fn tx_bound() -> u64 {
    (5 * TX_BUDGET + usize::from(QUEUE_SIZE)) as u64
}

/// A host program writing `FLOOD_SIZE`-byte messages on `s` as fast as
/// the device takes them, until `stop` or the connection fails; counts
/// them in `sent`.
fn flood(s: SeqPacket, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let msg = vec![0xf1u8; FLOOD_SIZE];
        while !stop.load(Ordering::Relaxed) {
            match s.try_send(&msg) {
                Ok(_) => {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = s.writable(Some(Duration::from_millis(20)));
                }
                Err(_) => return,
            }
        }
    })
}

/// Opens `n` channels to the `manual` service and accepts their host
/// ends, in order.
fn open_manual(d: &mut Driver, manual: &SeqListener, n: usize) -> Vec<(u32, SeqPacket)> {
    (0..n)
        .map(|_| {
            let id = d.open("manual").unwrap().unwrap();
            let s = manual.accept_blocking().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            (id, s)
        })
        .collect()
}

/// Reads every flood message waiting in the guest; returns how many.
fn drain(d: &mut Driver, id: u32) -> u64 {
    let mut n = 0;
    while let Some(m) = d.try_recv(id).unwrap() {
        assert_eq!(m.len(), FLOOD_SIZE, "flood message of {} bytes", m.len());
        n += 1;
    }
    n
}

/// The host end reads the guest's answer to request `tag`.
fn expect_answer(s: &SeqPacket, tag: &str) {
    let mut buf = [0u8; 256];
    match s.recv(&mut buf).unwrap() {
        Recv::Msg(n) => assert_eq!(&buf[..n], format!("re {tag}").as_bytes()),
        Recv::Eof => panic!("host end of {tag} closed"),
    }
}

fn rx_fairness(tag: &str, extra: &[&str]) {
    let fx = Fixture::new(tag, extra);
    let manual = fx.manual_service();
    let mut d = fx.driver();
    let flood_id = d.open("manual").unwrap().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = flood(
        manual.accept_blocking().unwrap(),
        stop.clone(),
        sent.clone(),
    );
    let quiet = open_manual(&mut d, &manual, QUIET);
    // The flood is flowing and the guest keeps up with it.
    let mut flood_got = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while flood_got < 5000 {
        assert!(Instant::now() < deadline, "flood did not start");
        d.poll(Duration::from_millis(10)).unwrap();
        flood_got += drain(&mut d, flood_id);
    }
    d.arrivals = Some(Vec::new());
    let mut worst = 0u64;
    for round in 0..ROUNDS {
        if let Some(log) = d.arrivals.as_mut() {
            log.clear();
        }
        // Where the device's rx used ring was when each request landed.
        let mut marks = Vec::with_capacity(QUIET);
        for (i, (_, s)) in quiet.iter().enumerate() {
            s.send(format!("{round}.{i}").as_bytes()).unwrap();
            marks.push(d.rx_device_total().unwrap());
        }
        let mut got = [false; QUIET];
        let deadline = Instant::now() + Duration::from_secs(20);
        while !got.iter().all(|g| *g) {
            assert!(
                Instant::now() < deadline,
                "round {round}: quiet channels starved by the flood: {} of {QUIET} delivered",
                got.iter().filter(|g| **g).count()
            );
            d.poll(Duration::from_millis(10)).unwrap();
            flood_got += drain(&mut d, flood_id);
            for (i, (id, _)) in quiet.iter().enumerate() {
                if let Some(m) = d.try_recv(*id).unwrap() {
                    assert!(!got[i], "two messages on quiet channel {i}");
                    assert_eq!(m, format!("{round}.{i}").as_bytes());
                    got[i] = true;
                }
            }
        }
        let log = d.arrivals.as_ref().unwrap();
        for (i, (id, _)) in quiet.iter().enumerate() {
            let at = log
                .iter()
                .find(|(c, _)| c == id)
                .map(|(_, at)| *at)
                .unwrap();
            let before = log
                .iter()
                .filter(|(c, p)| *c == flood_id && *p > marks[i] && *p < at)
                .count() as u64;
            assert!(
                before <= rx_bound(),
                "round {round}: {before} flood messages were delivered between quiet channel \
                 {i}'s request landing and its delivery (bound {})",
                rx_bound()
            );
            worst = worst.max(before);
        }
        // The guest answers each; the host ends read the answers.
        for (i, (id, _)) in quiet.iter().enumerate() {
            d.send(*id, format!("re {round}.{i}").as_bytes()).unwrap();
        }
        for (i, (_, s)) in quiet.iter().enumerate() {
            expect_answer(s, &format!("{round}.{i}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert!(
        flood_got > 5000 && sent.load(Ordering::Relaxed) >= flood_got,
        "flood: {flood_got} received of {} sent",
        sent.load(Ordering::Relaxed)
    );
    eprintln!(
        "{tag}: {flood_got} flood messages received; at most {worst} delivered while a quiet \
         request waited (bound {})",
        rx_bound()
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(fx.stats().device.malformed, 0);
}

#[test]
fn channel_fairness_with_one_flooding_channel() {
    rx_fairness("fairrx", &[]);
}

#[test]
fn channel_fairness_with_one_flooding_channel_and_busy_poll() {
    rx_fairness("fairrxbp", &["--busy-poll-us", "200"]);
}

#[test]
fn guest_tx_flood_does_not_starve_other_channels() {
    tx_fairness("fairtx", &[]);
}

#[test]
fn guest_tx_flood_does_not_starve_other_channels_with_busy_poll() {
    tx_fairness("fairtxbp", &["--busy-poll-us", "200"]);
}

fn tx_fairness(tag: &str, extra: &[&str]) {
    let fx = Fixture::new(tag, extra);
    let manual = fx.manual_service();
    let mut d = fx.driver();
    let sink = d.open("sink").unwrap().unwrap();
    let quiet = open_manual(&mut d, &manual, QUIET);
    let chunk = vec![0x7eu8; 1024];
    let mut flood_sent = 0u64;
    // Tops the tx ring up with flood messages as far as credit and free
    // descriptors allow, without waiting; returns how many it queued.
    let top_up = |d: &mut Driver| {
        let mut n = 0;
        while d.rings[1].free_count() > 0 && d.try_send(sink, &chunk).unwrap() {
            n += 1;
        }
        n
    };
    let (mut worst, mut total) = (0u64, 0u64);
    for round in 0..ROUNDS {
        flood_sent += top_up(&mut d);
        let mut marks = Vec::with_capacity(QUIET);
        for (i, (_, s)) in quiet.iter().enumerate() {
            s.send(format!("{round}.{i}").as_bytes()).unwrap();
            marks.push(d.tx_device_total().unwrap());
        }
        let mut got = [false; QUIET];
        let deadline = Instant::now() + Duration::from_secs(20);
        while !got.iter().all(|g| *g) {
            assert!(
                Instant::now() < deadline,
                "round {round}: quiet channels starved by the tx flood: {} of {QUIET} delivered",
                got.iter().filter(|g| **g).count()
            );
            flood_sent += top_up(&mut d);
            d.poll(Duration::from_millis(1)).unwrap();
            let now = d.tx_device_total().unwrap();
            for (i, (id, _)) in quiet.iter().enumerate() {
                if got[i] {
                    continue;
                }
                if let Some(m) = d.try_recv(*id).unwrap() {
                    assert_eq!(m, format!("{round}.{i}").as_bytes());
                    got[i] = true;
                    let taken = now - marks[i];
                    assert!(
                        taken <= tx_bound(),
                        "round {round}: the device took {taken} tx chains between quiet \
                         channel {i}'s request landing and the guest seeing it (bound {})",
                        tx_bound()
                    );
                    worst = worst.max(taken);
                    total += taken;
                }
            }
        }
        for (i, (id, _)) in quiet.iter().enumerate() {
            d.send(*id, format!("re {round}.{i}").as_bytes()).unwrap();
        }
        for (i, (_, s)) in quiet.iter().enumerate() {
            expect_answer(s, &format!("{round}.{i}"));
        }
    }
    // Every flood message reaches the sink.
    d.wait_until("the sink to read the flood", |_| {
        fx.sink.msgs.load(Ordering::Relaxed) >= flood_sent
    })
    .unwrap();
    // The flood was moving while quiet requests waited (how much depends
    // on the sink's pace, so only that it did is asserted).
    assert!(
        flood_sent >= ROUNDS as u64 && total > 0,
        "the guest flooded {flood_sent} messages, {total} tx chains taken while requests waited"
    );
    eprintln!(
        "{tag}: {flood_sent} flood messages; at most {worst} tx chains taken while a quiet \
         request waited (bound {})",
        tx_bound()
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(fx.stats().device.malformed, 0);
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (the
/// echo service holds one socket per channel), as far as the hard limit
/// allows; returns the soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`, which outlives the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    if r.rlim_cur < want {
        r.rlim_cur = want.min(r.rlim_max);
        // SAFETY: setrlimit reads one valid rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
    }
    r.rlim_cur
}

#[test]
fn thousands_of_channels_open_up_to_the_limit() {
    const MAX: usize = 1200;
    let soft = raise_nofile(MAX as u64 + 256);
    assert!(
        soft >= MAX as u64 + 256,
        "this test needs {} open files, the hard limit allows {soft}",
        MAX + 256
    );
    let fx = Fixture::new("many", &["--max-channels", &MAX.to_string()]);
    let mut d = fx.driver();
    let mut ids = Vec::with_capacity(MAX);
    for i in 0..MAX {
        match d.open("echo").unwrap() {
            Ok(id) => ids.push(id),
            Err(e) => panic!("OPEN {i} of {MAX} refused: {e}"),
        }
        if i % 32 == 31 {
            // The echo service accepts on one thread and starts one per
            // connection; the device's connect is refused (EAGAIN) once
            // the listen backlog is full, so let it catch up.
            let deadline = Instant::now() + Duration::from_secs(20);
            while fx.echo.conns.load(Ordering::Relaxed) < ids.len() as u64 {
                assert!(Instant::now() < deadline, "echo service stopped accepting");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    assert_eq!(d.open("echo").unwrap(), Err(ErrorCode::MFile));
    assert_eq!(fx.stats().channels.len(), MAX);
    // Every channel carries a round trip, all of them in flight at once.
    for (i, id) in ids.iter().enumerate() {
        d.send(*id, format!("m{i}").as_bytes()).unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(d.recv(*id).unwrap(), format!("m{i}").as_bytes());
    }
    // A slot freed by CLOSE can be opened again; then the table is full.
    d.close(ids[0]).unwrap();
    d.wait_until("CLOSE answer", |d| d.closed(ids[0]).is_some())
        .unwrap();
    let again = d.open("echo").unwrap().unwrap();
    d.send(again, b"again").unwrap();
    assert_eq!(d.recv(again).unwrap(), b"again");
    assert_eq!(d.open("echo").unwrap(), Err(ErrorCode::MFile));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(fx.stats().device.malformed, 0);
}
