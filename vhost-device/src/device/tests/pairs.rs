//! Unit tests of the engines of several queue pairs (SPEC §1.4): a pair
//! k ≥ 1 engine is live without an event queue, refuses LISTEN, shares
//! `max_channels` with the other pairs' engines, and its reset leaves the
//! other pairs' channels (and their stats) alone.

use super::*;
use kt_proto::consts::F_LISTEN_NOTIFY;

/// An engine of `pair` with the rig's parameters, policy and stats.
fn engine(r: &Rig<'_>, pair: u16, budget: &Arc<ChannelBudget>) -> Device {
    Device::for_pair(
        r.dev.params.clone(),
        r.dev.policy.clone(),
        r.stats.clone(),
        None,
        pair,
        budget.clone(),
    )
    .unwrap()
}

#[test]
fn a_pair_1_engine_is_live_without_an_event_queue_and_refuses_listen() {
    let m = mem();
    let mut r = Rig::new(&m);
    // The rig's own pair 0 engine went live; this test has none.
    r.dev.deactivate();
    let budget = Arc::new(ChannelBudget::new(8));
    let mut dev = engine(&r, 1, &budget);
    dev.set_features(1 << F_LISTEN_NOTIFY);
    assert!(!dev.is_active());
    dev.queue_started(0, 0);
    dev.queue_started(1, 0);
    assert!(dev.is_active(), "rx and tx are all a pair k engine has");
    r.dev = dev;
    r.post_rx(8, 256);
    r.send(&Header::with_payload(MsgType::Listen, 0, 3), b"svc");
    r.run(true);
    let s = r.stats.snapshot();
    assert_eq!(s.device.malformed, 1);
    assert!(s.guest_listeners.is_empty());
    // The chain went back; nothing answered; no RESET on any queue.
    assert_eq!(r.used_idx(1), 1);
    assert!(r.take_used(0).is_empty());
    assert!(r.take_used(2).is_empty());
    // Not the engine's to say the driver is live: pair 0 says that.
    assert!(!s.active);
}

#[test]
fn only_pair_0_may_have_the_listener() {
    let m = mem();
    let r = Rig::new(&m);
    let path = r._dir.join("l.sock");
    let e = Device::for_pair(
        r.dev.params.clone(),
        r.dev.policy.clone(),
        r.stats.clone(),
        Some(SeqListener::bind(&path).unwrap()),
        1,
        Arc::new(ChannelBudget::new(8)),
    );
    assert!(e.is_err());
}

#[test]
fn engines_share_max_channels_and_reset_only_their_own() {
    let m = mem();
    let mut r = Rig::new(&m);
    let budget = Arc::new(ChannelBudget::new(2));
    let mut p0 = engine(&r, 0, &budget);
    let mut p1 = engine(&r, 1, &budget);
    for i in 0..3 {
        p0.queue_started(i, 0);
        p1.queue_started(i, 0);
    }
    r.post_rx(16, 256);
    // Two channels on pair 0's engine: the budget is spent.
    r.dev = p0;
    let _a = r.open(1, 1 << 16);
    let _b = r.open(3, 1 << 16);
    assert_eq!(budget.used(), 2);
    // An OPEN on pair 1 is refused for the channels of pair 0.
    p0 = std::mem::replace(&mut r.dev, p1);
    r.send(&Header::with_payload(MsgType::Open, 5, 3), b"svc");
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.msg_type, MsgType::OpenErr);
    assert_eq!(got[0].0.arg, ErrorCode::MFile as u32);
    assert_eq!(r.dev.channel_count(), 0);
    assert_eq!(budget.used(), 2, "a refused OPEN gives its slot back");
    // Pair 1's reset leaves pair 0's channels, slots and stats.
    r.dev.deactivate();
    assert_eq!(budget.used(), 2);
    assert_eq!(r.stats.snapshot().channels.len(), 2);
    // Pair 0's reset gives both slots back.
    p0.deactivate();
    assert_eq!(budget.used(), 0);
    assert!(r.stats.snapshot().channels.is_empty());
    // And pair 1 may open again.
    p1 = std::mem::replace(&mut r.dev, p0);
    drop(r.dev);
    r.dev = p1;
    r.dev.queue_started(0, 0);
    r.dev.queue_started(1, 0);
    let _c = r.open(7, 1 << 16);
    let s = r.stats.snapshot();
    assert_eq!(s.channels.len(), 1);
    assert_eq!(s.channels[0].pair, 1);
}
