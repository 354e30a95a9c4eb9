//! A hostile guest: bad descriptors, lying headers, unknown channels and
//! types, credit and sequence violations, OPEN floods. Every case is counted
//! and answered per SPEC §8, the daemon's memory stays bounded, and a
//! well-behaved channel keeps working throughout.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Fixture;
use kt_proto::consts::CHAN_DEVICE_BIT;
use kt_proto::{ErrorCode, Header, MsgType};
use kt_sim::ring::{Desc, F_NEXT, F_WRITE};
use kt_sim::Driver;
use vm_memory::Bytes;

/// Publishes a raw tx chain of `(addr, len, flags)` and waits until the
/// device has returned it.
fn raw_chain(d: &mut Driver, descs: &[(u64, u32, u16)]) {
    let idxs: Vec<u16> = descs
        .iter()
        .map(|_| d.rings[1].take_free().expect("free desc"))
        .collect();
    for (k, (addr, len, flags)) in descs.iter().enumerate() {
        let next = idxs.get(k + 1).copied();
        let f = if next.is_some() {
            flags | F_NEXT
        } else {
            *flags
        };
        let desc = Desc {
            addr: *addr,
            len: *len,
            flags: f,
        };
        d.rings[1]
            .write_raw(&d.mem, idxs[k], desc, next.unwrap_or(0))
            .unwrap();
    }
    d.rings[1].claim_raw(&idxs);
    d.rings[1].publish(&d.mem, idxs[0]).unwrap();
    d.rings[1].force_kick().unwrap();
    let want = d.rings[1].avail_idx();
    d.wait_until("tx chain returned", |d| d.rings[1].last_used() == want)
        .unwrap();
}

/// Writes raw header bytes (and payload) into a spare tx slot; returns its
/// address.
fn stage(d: &mut Driver, hdr: &[u8; 32], payload: &[u8]) -> u64 {
    let slot = d.layout.slot(1, 255);
    d.mem.write_slice(hdr, slot).unwrap();
    d.mem
        .write_slice(payload, vm_memory::GuestAddress(slot.0 + 32))
        .unwrap();
    slot.0
}

fn malformed(fx: &Fixture) -> u64 {
    fx.stats().device.malformed
}

fn expect_malformed(fx: &Fixture, d: &mut Driver, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = malformed(fx);
        if m == want {
            return;
        }
        assert!(m < want, "{what}: malformed {m}, expected {want}");
        assert!(
            Instant::now() < deadline,
            "{what}: malformed {m}, expected {want}"
        );
        d.poll(Duration::from_millis(20)).unwrap();
    }
}

fn ping(d: &mut Driver, good: u32, n: u32) {
    for i in 0..n {
        let m = format!("ping {i}");
        d.send(good, m.as_bytes()).unwrap();
        assert_eq!(d.recv(good).unwrap(), m.as_bytes());
    }
}

#[test]
fn hostile_guest_is_counted_answered_and_contained() {
    let fx = Fixture::new("hostile", &["--max-channels", "64"]);
    let mut d = fx.driver();
    let good = d.open("echo").unwrap().unwrap();
    ping(&mut d, good, 3);
    let rss0 = fx.daemon.rss_kib();
    let mut want = 0u64;
    let data_hdr = |ch: u32, len: u32| Header::with_payload(MsgType::Data, ch, len);

    // Descriptors outside guest memory, zero and huge lengths, wrong
    // direction, a descriptor loop.
    let a = stage(&mut d, &data_hdr(good, 0).encode(), &[]);
    let cases: Vec<Vec<(u64, u32, u16)>> = vec![
        vec![(0x7fff_0000_0000, 64, 0)],
        vec![(a, 0, 0)],
        vec![(a, u32::MAX, 0)],
        vec![(a, 32, F_WRITE)],
        vec![(a, 16, 0), (a + 16, 16, F_WRITE)],
    ];
    for c in cases {
        raw_chain(&mut d, &c);
        want += 1;
        expect_malformed(&fx, &mut d, want, "bad descriptors");
    }
    // A loop: two descriptors pointing at each other.
    let i0 = d.rings[1].take_free().unwrap();
    let i1 = d.rings[1].take_free().unwrap();
    d.rings[1]
        .write_raw(
            &d.mem,
            i0,
            Desc {
                addr: a,
                len: 16,
                flags: F_NEXT,
            },
            i1,
        )
        .unwrap();
    d.rings[1]
        .write_raw(
            &d.mem,
            i1,
            Desc {
                addr: a + 16,
                len: 16,
                flags: F_NEXT,
            },
            i0,
        )
        .unwrap();
    d.rings[1].claim_raw(&[i0, i1]);
    d.rings[1].publish(&d.mem, i0).unwrap();
    d.rings[1].force_kick().unwrap();
    want += 1;
    expect_malformed(&fx, &mut d, want, "descriptor loop");
    ping(&mut d, good, 2);

    // Unknown type and unknown flags.
    let mut raw = data_hdr(good, 0).encode();
    raw[4] = 99;
    let a = stage(&mut d, &raw, &[]);
    raw_chain(&mut d, &[(a, 32, 0)]);
    let mut raw = data_hdr(good, 0).encode();
    raw[6] = 0x08;
    let a = stage(&mut d, &raw, &[]);
    raw_chain(&mut d, &[(a, 32, 0)]);
    want += 2;
    expect_malformed(&fx, &mut d, want, "unknown type/flags");

    // RESET on tx; payload on CREDIT_UPDATE.
    d.send_raw(&Header::new(MsgType::Reset, 0), &[]).unwrap();
    let mut h = Header::new(MsgType::CreditUpdate, good);
    h.len = 4;
    h.msg_len = 4;
    d.send_raw(&h, b"junk").unwrap();
    want += 2;
    expect_malformed(&fx, &mut d, want, "reset on tx / payload on credit");

    // A header whose length lies: the channel is closed with PROTO.
    let victim = d.open("echo").unwrap().unwrap();
    let a = stage(&mut d, &data_hdr(victim, 100).encode(), &[7u8; 10]);
    raw_chain(&mut d, &[(a, 42, 0)]);
    want += 1;
    expect_malformed(&fx, &mut d, want, "lying len");
    d.wait_until("CLOSE PROTO", |d| d.closed(victim).is_some())
        .unwrap();
    assert_eq!(d.closed(victim), Some(ErrorCode::Proto as u32));

    // Oversized message: CLOSE MSGSIZE.
    let victim = d.open("echo").unwrap().unwrap();
    let a = stage(&mut d, &data_hdr(victim, 70_000).encode(), &[]);
    raw_chain(&mut d, &[(a, 32, 0)]);
    want += 1;
    expect_malformed(&fx, &mut d, want, "too large");
    d.wait_until("CLOSE MSGSIZE", |d| d.closed(victim).is_some())
        .unwrap();
    assert_eq!(d.closed(victim), Some(ErrorCode::MsgSize as u32));

    // Wrong sequence number: CLOSE PROTO.
    let victim = d.open("echo").unwrap().unwrap();
    let mut h = data_hdr(victim, 3);
    h.seq = 5;
    d.send_raw(&h, b"abc").unwrap();
    want += 1;
    expect_malformed(&fx, &mut d, want, "bad seq");
    d.wait_until("CLOSE seq", |d| d.closed(victim).is_some())
        .unwrap();
    assert_eq!(d.closed(victim), Some(ErrorCode::Proto as u32));

    // DATA and CREDIT for an unknown channel: CLOSE CONNRESET.
    d.send_raw(&data_hdr(0x1234, 2), b"hi").unwrap();
    d.send_raw(&Header::new(MsgType::CreditRequest, 0x1235), &[])
        .unwrap();
    want += 2;
    expect_malformed(&fx, &mut d, want, "unknown channel");
    d.wait_until("CLOSE CONNRESET", |d| d.saw_close(0x1235).is_some())
        .unwrap();
    assert_eq!(d.saw_close(0x1234), Some(ErrorCode::ConnReset as u32));

    // OPEN with a bad name, a device-half id, an id in use.
    assert_eq!(d.open_id(900, b"").unwrap(), Err(ErrorCode::Inval));
    want += 1;
    expect_malformed(&fx, &mut d, want, "empty OPEN name");
    assert_eq!(d.open_id(901, b"bad\0name").unwrap(), Err(ErrorCode::Inval));
    assert_eq!(
        d.open_id(CHAN_DEVICE_BIT | 5, b"echo").unwrap(),
        Err(ErrorCode::Exist)
    );
    assert_eq!(d.open_id(good, b"echo").unwrap(), Err(ErrorCode::Exist));
    want += 3;
    expect_malformed(&fx, &mut d, want, "bad OPENs");
    ping(&mut d, good, 2);

    // OPEN flood: names outside the policy, then more channels than allowed.
    const FLOOD: u32 = 2000;
    for i in 0..FLOOD {
        d.open_async(10_000 + i, format!("flood{i}").as_bytes())
            .unwrap();
    }
    d.flush().unwrap();
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered < FLOOD {
        assert!(
            Instant::now() < deadline,
            "{answered} flood answers: {:?}",
            fx.stats()
        );
        d.poll(Duration::from_millis(20)).unwrap();
        for i in 0..FLOOD {
            if let Some(r) = d.open_result(10_000 + i) {
                assert_eq!(r, Err(ErrorCode::NoEnt));
                answered += 1;
            }
        }
    }
    let mut opened = vec![];
    let mut mfile = 0;
    for _ in 0..80 {
        match d.open("echo").unwrap() {
            Ok(id) => opened.push(id),
            Err(ErrorCode::MFile) => mfile += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(
        mfile > 0 && opened.len() < 64,
        "{} opened, {mfile} refused",
        opened.len()
    );
    for id in opened {
        d.close(id).unwrap();
    }
    ping(&mut d, good, 5);

    // Credit overrun against a host that does not read: CLOSE PROTO.
    fx.sink.paused.store(true, Ordering::SeqCst);
    let hog = d.open("sink").unwrap().unwrap();
    let big = vec![1u8; 65536];
    let before = malformed(&fx);
    for seq in 0..40u32 {
        if d.closed(hog).is_some() {
            break;
        }
        let mut h = data_hdr(hog, big.len() as u32);
        h.seq = seq;
        d.send_raw(&h, &big).unwrap();
        d.process().unwrap();
    }
    d.wait_until("CLOSE on overrun", |d| d.closed(hog).is_some())
        .unwrap();
    assert_eq!(d.closed(hog), Some(ErrorCode::Proto as u32));
    assert!(malformed(&fx) > before);
    fx.sink.paused.store(false, Ordering::SeqCst);

    // Still serving, memory bounded.
    ping(&mut d, good, 10);
    let s = fx.stats();
    assert!(s.active);
    if let (Some(r0), Some(r1)) = (rss0, fx.daemon.rss_kib()) {
        assert!(
            r1 < r0 + 32 * 1024,
            "daemon RSS grew from {r0} KiB to {r1} KiB"
        );
    }
    assert!(fx.daemon.pid() > 0);
    let ch = s.channels.iter().find(|c| c.id == good).unwrap();
    // Only the CREDIT_UPDATE with a payload named the good channel.
    assert_eq!(
        ch.counters.malformed, 1,
        "per-channel count of the good channel: {ch:?}"
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}
