//! Unit tests of the device's own service `kt.services` (`discovery.rs`):
//! OPEN answered without the policy, listings and their framing, new
//! listings on policy changes and on guest requests, a full socket buffer,
//! the channel limit, and the kept socket end closed with the channel.

use std::os::fd::AsFd;

use kt_proto::listing::Reader;

use super::*;
use crate::policy::Policy;

const SERVICES: &[u8] = b"kt.services";

/// A policy naming `names`, all at `socket`.
fn policy_of(names: &[&str], socket: &str) -> Policy {
    let mut text = String::new();
    for n in names {
        text.push_str(&format!(
            "[[service]]\nname = \"{n}\"\nsocket = \"{socket}\"\n"
        ));
    }
    Policy::parse(std::path::Path::new("t.toml"), &text).unwrap()
}

/// Sends OPEN `name` on channel `id` with window `buf_alloc` and runs.
fn open_name(r: &mut Rig<'_>, id: u32, name: &[u8], buf_alloc: u32) {
    let mut h = Header::with_payload(MsgType::Open, id, name.len() as u32);
    h.buf_alloc = buf_alloc;
    r.send(&h, name);
    r.run(true);
}

/// Runs passes, as the worker does while its host epoll fd is readable,
/// until a pass puts nothing into rx buffers and no host event waits
/// (policy changes, guest requests and kept-end writes travel through
/// host events).
fn settle(r: &mut Rig<'_>) -> Vec<(Header, Vec<u8>)> {
    let mut got = vec![];
    loop {
        r.run(true);
        let more = r.take_used(0);
        if more.is_empty() && !host_fd_readable(&r.dev) {
            return got;
        }
        got.extend(more);
    }
}

/// The DATA messages of channel `id` in `got`, fragments joined, checking
/// sequence numbers from `seq`.
fn data_of(got: &[(Header, Vec<u8>)], id: u32, seq: &mut u32) -> Vec<Vec<u8>> {
    let mut msgs = vec![];
    let mut cur: Option<Vec<u8>> = None;
    for (h, p) in got.iter().filter(|(h, _)| h.channel == id) {
        if h.msg_type != MsgType::Data {
            continue;
        }
        assert_eq!(h.seq, *seq, "DATA out of sequence");
        let buf = cur.get_or_insert_with(Vec::new);
        buf.extend_from_slice(p);
        if !h.more() {
            let m = cur.take().unwrap_or_default();
            assert_eq!(m.len(), h.msg_len as usize);
            msgs.push(m);
            *seq = seq.wrapping_add(1);
        }
    }
    assert!(cur.is_none(), "a message was cut");
    msgs
}

/// Every complete listing in `msgs`, in order; checks none is left open.
fn listings(msgs: &[Vec<u8>]) -> Vec<Vec<String>> {
    let mut r = Reader::default();
    let mut out = vec![];
    for m in msgs {
        if let Some(names) = r.push(m).unwrap() {
            out.push(names);
        }
    }
    assert!(msgs.last().map_or(true, Vec::is_empty), "listing not ended");
    out
}

#[test]
fn opening_kt_services_gets_open_ok_and_the_listing() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    open_name(&mut r, 5, SERVICES, 1 << 20);
    let got = r.take_used(0);
    assert_eq!(got[0].0.msg_type, MsgType::OpenOk, "{got:?}");
    assert_eq!(got[0].0.channel, 5);
    let mut seq = 0;
    let msgs = data_of(&got, 5, &mut seq);
    assert_eq!(msgs, [b"svc\n".to_vec(), vec![]]);
    assert_eq!(r.dev.feed_count(), 1);
    assert_eq!(r.dev.channel_count(), 1);
    let s = r.stats.snapshot();
    assert_eq!((s.device.malformed, s.open_refused), (0, 0));
    // Nothing more comes without a change or a request.
    assert!(settle(&mut r).is_empty());
}

#[test]
fn other_device_names_are_refused_and_the_channel_limit_applies() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(64, 256);
    open_name(&mut r, 1, b"kt.nothing", 1 << 20);
    let got = r.take_used(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.msg_type, MsgType::OpenErr);
    assert_eq!(got[0].0.arg, ErrorCode::NoEnt as u32);
    // kt.services counts against max_channels (8 in the rig) like any
    // channel.
    for id in 10..18 {
        open_name(&mut r, id, SERVICES, 1 << 20);
    }
    open_name(&mut r, 18, SERVICES, 1 << 20);
    let got = r.take_used(0);
    let refusals: Vec<&Header> = got
        .iter()
        .map(|(h, _)| h)
        .filter(|h| h.msg_type == MsgType::OpenErr)
        .collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        (refusals[0].channel, refusals[0].arg),
        (18, ErrorCode::MFile as u32)
    );
    assert_eq!(r.dev.feed_count(), 8);
}

#[test]
fn a_policy_change_sends_a_new_listing_only_when_the_names_change() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(64, 256);
    open_name(&mut r, 3, SERVICES, 1 << 20);
    open_name(&mut r, 4, SERVICES, 1 << 20);
    let mut seqs = [0u32; 2];
    let got = settle(&mut r);
    assert_eq!(listings(&data_of(&got, 3, &mut seqs[0])), [["svc"]]);
    assert_eq!(listings(&data_of(&got, 4, &mut seqs[1])), [["svc"]]);
    // Same names, another socket: no listing.
    r.dev.policy.replace(policy_of(&["svc"], "/elsewhere"));
    assert!(settle(&mut r).is_empty());
    // New names: every open kt.services channel gets the sorted set.
    r.dev
        .policy
        .replace(policy_of(&["zeta", "alpha", "svc"], "/x"));
    let got = settle(&mut r);
    let want = [vec!["alpha", "svc", "zeta"]];
    assert_eq!(listings(&data_of(&got, 3, &mut seqs[0])), want);
    assert_eq!(listings(&data_of(&got, 4, &mut seqs[1])), want);
    // An empty policy is an empty listing (one empty message).
    r.dev.policy.replace(policy_of(&[], "/x"));
    let got = settle(&mut r);
    assert_eq!(data_of(&got, 3, &mut seqs[0]), [Vec::<u8>::new()]);
    // A channel opened after the change lists the new set at once.
    r.dev.policy.replace(policy_of(&["b", "a"], "/x"));
    open_name(&mut r, 9, SERVICES, 1 << 20);
    let got = settle(&mut r);
    let mut seq9 = 0;
    assert_eq!(listings(&data_of(&got, 9, &mut seq9)), [["a", "b"]]);
    assert_eq!(listings(&data_of(&got, 3, &mut seqs[0])), [["a", "b"]]);
    assert_eq!(r.stats.snapshot().device.malformed, 0);
}

#[test]
fn a_small_max_msg_size_cuts_lines_and_ends_the_listing_with_an_empty_message() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.dev.params.config.max_msg_size = 5;
    r.dev.limits.max_msg_size = 5;
    let long = "l".repeat(63);
    r.dev
        .policy
        .replace(policy_of(&["a", "bcdefgh", &long], "/x"));
    r.post_rx(64, 256);
    open_name(&mut r, 2, SERVICES, 1 << 20);
    let got = settle(&mut r);
    let mut seq = 0;
    let msgs = data_of(&got, 2, &mut seq);
    assert!(msgs.iter().all(|m| m.len() <= 5), "{msgs:?}");
    // "bcdefgh\n" does not fit one message: it is cut, from where "a\n"
    // left off.
    assert_eq!(msgs[0], b"a\nbcd");
    assert_eq!(msgs.last(), Some(&vec![]));
    assert_eq!(
        listings(&msgs),
        [vec!["a".to_string(), "bcdefgh".to_string(), long]]
    );
}

#[test]
fn any_guest_message_asks_for_the_listing_again() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(64, 256);
    open_name(&mut r, 7, SERVICES, 1 << 20);
    let mut seq = 0;
    assert_eq!(listings(&data_of(&settle(&mut r), 7, &mut seq)).len(), 1);
    for (i, body) in [&b"again"[..], b"", b"x"].iter().enumerate() {
        let mut h = Header::with_payload(MsgType::Data, 7, body.len() as u32);
        h.seq = i as u32;
        h.buf_alloc = 1 << 20;
        r.send(&h, body);
        // Each request is served before the next one arrives.
        let got = settle(&mut r);
        assert_eq!(listings(&data_of(&got, 7, &mut seq)), [["svc"]], "{i}");
    }
    assert_eq!(r.stats.snapshot().device.malformed, 0);
}

#[test]
fn listings_that_do_not_fit_the_socket_wait_and_the_newest_arrives_whole() {
    let m = mem();
    let mut r = Rig::new(&m);
    let big: Vec<String> = (0..3000)
        .map(|i| format!("service-{i:05}-{}", "p".repeat(40)))
        .collect();
    let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
    // No rx buffers yet: nothing leaves the channel's socket.
    open_name(&mut r, 1, SERVICES, 1 << 30);
    for round in 0..6 {
        let names: Vec<&str> = if round % 2 == 0 {
            big_refs.clone()
        } else {
            big_refs[..2999].to_vec()
        };
        r.dev.policy.replace(policy_of(&names, "/x"));
        r.run(false);
        r.run(false);
    }
    assert_eq!(
        r.dev.discovery.waiting(1),
        Some(true),
        "the socket took everything; the test needs a larger listing"
    );
    // Buffers arrive: every listing the guest gets is complete, and the
    // last one is the policy in force (round 5's: 2999 names).
    let mut got = vec![];
    for _ in 0..40 {
        r.post_rx(200, 4096);
        let more = settle(&mut r);
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    let mut seq = 0;
    let all = listings(&data_of(&got, 1, &mut seq));
    assert!(all.len() >= 2, "{}", all.len());
    assert!(all.len() <= 8, "listings were not coalesced: {}", all.len());
    assert_eq!(all.last().unwrap().len(), 2999);
    assert_eq!(r.dev.feed_count(), 1);
    assert_eq!(r.dev.discovery.waiting(1), Some(false));
}

#[test]
fn closing_the_channel_closes_the_kept_socket_end() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    for id in [1, 2] {
        open_name(&mut r, id, SERVICES, 1 << 20);
    }
    settle(&mut r);
    assert_eq!(r.dev.feed_count(), 2);
    // A second descriptor on channel 1's end of the pair: it sees EOF only
    // once the device has closed the other end.
    let probe = |r: &Rig<'_>, id: u32| {
        let fd = r.dev.channels[&id]
            .sock
            .as_ref()
            .unwrap()
            .as_fd()
            .try_clone_to_owned()
            .unwrap();
        SeqPacket::from_fd(fd)
    };
    let p1 = probe(&r, 1);
    let p2 = probe(&r, 2);
    assert!(matches!(
        p1.recv(&mut [0u8; 8]),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    ));
    // The guest closes channel 1: answered, forgotten, kept end closed.
    r.send(&Header::new(MsgType::Close, 1), &[]);
    let got = settle(&mut r);
    assert!(got
        .iter()
        .any(|(h, _)| h.channel == 1 && h.msg_type == MsgType::Close));
    assert_eq!(r.dev.channel_count(), 1);
    assert_eq!(r.dev.feed_count(), 1);
    assert_eq!(p1.recv(&mut [0u8; 8]).unwrap(), Recv::Eof);
    // The device stops (guest reset): the other one goes too.
    r.dev.deactivate();
    assert_eq!(r.dev.feed_count(), 0);
    assert_eq!(p2.recv(&mut [0u8; 8]).unwrap(), Recv::Eof);
}
