//! Unit tests of service discovery, host side: `LISTEN`/`UNLISTEN` from
//! the driver (SPEC §2.2, §8) recorded per device, mirrored into the
//! stats, forgotten on deactivation, and listed to host programs with
//! `LIST` on the listening socket (SPEC §9).

use super::*;
use kt_proto::consts::{F_LISTEN_NOTIFY, MAX_GUEST_LISTENERS};
use kt_proto::handshake::{self, ListReply};

fn announce(r: &mut Rig<'_>, t: MsgType, name: &[u8]) {
    r.send(&Header::with_payload(t, 0, name.len() as u32), name);
}

fn names(r: &Rig<'_>) -> Vec<String> {
    r.stats.snapshot().guest_listeners
}

/// A rig whose driver acked `KT_F_LISTEN_NOTIFY`.
fn notify_rig(m: &Mem) -> Rig<'_> {
    let mut r = Rig::new(m);
    r.dev.set_features(1 << F_LISTEN_NOTIFY);
    r.post_rx(8, 256);
    r
}

#[test]
fn listen_and_unlisten_keep_the_set() {
    let m = mem();
    let mut r = notify_rig(&m);
    announce(&mut r, MsgType::Listen, b"svc-b");
    announce(&mut r, MsgType::Listen, b"svc-a");
    announce(&mut r, MsgType::Listen, "télé".as_bytes());
    announce(&mut r, MsgType::Unlisten, b"svc-b");
    r.run(true);
    assert_eq!(names(&r), ["svc-a", "télé"]);
    assert_eq!(r.dev.list_reply(), "OK 2\nsvc-a\ntélé\n".as_bytes());
    // Every chain went back; nothing is answered to the guest.
    assert_eq!(r.used_idx(1), 4);
    assert!(r.take_used(0).is_empty());
    let s = r.stats.snapshot();
    assert_eq!((s.device.malformed, s.listen_ignored), (0, 0));
    // Duplicates and unknown names change nothing; counted, not malformed.
    announce(&mut r, MsgType::Listen, b"svc-a");
    announce(&mut r, MsgType::Unlisten, b"never");
    r.run(true);
    let s = r.stats.snapshot();
    assert_eq!(s.guest_listeners, ["svc-a", "télé"]);
    assert_eq!((s.device.malformed, s.listen_ignored), (0, 2));
    assert!(r.take_used(0).is_empty());
}

#[test]
fn the_set_is_forgotten_on_deactivation() {
    let m = mem();
    let mut r = notify_rig(&m);
    announce(&mut r, MsgType::Listen, b"svc");
    r.run(true);
    assert_eq!(names(&r), ["svc"]);
    r.dev.deactivate();
    assert!(names(&r).is_empty());
    assert_eq!(r.dev.list_reply(), b"OK 0\n");
}

#[test]
fn malformed_announcements_are_dropped_and_counted() {
    let m = mem();
    let mut r = notify_rig(&m);
    // Not a valid name: control character, bad UTF-8.
    announce(&mut r, MsgType::Listen, b"a\nb");
    announce(&mut r, MsgType::Listen, &[b'a', 0xff]);
    // Empty and too long (the header check).
    announce(&mut r, MsgType::Listen, b"");
    announce(&mut r, MsgType::Listen, &[b'a'; 64]);
    // Not on channel 0.
    r.send(&Header::with_payload(MsgType::Listen, 5, 3), b"svc");
    r.run(true);
    let s = r.stats.snapshot();
    assert!(s.guest_listeners.is_empty());
    assert_eq!(s.device.malformed, 5);
    assert_eq!(r.used_idx(1), 5);
    assert!(r.take_used(0).is_empty(), "no answer to the guest");
}

#[test]
fn announcements_without_the_feature_are_malformed() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(4, 256);
    announce(&mut r, MsgType::Listen, b"svc");
    announce(&mut r, MsgType::Unlisten, b"svc");
    r.run(true);
    let s = r.stats.snapshot();
    assert!(s.guest_listeners.is_empty());
    assert_eq!(s.device.malformed, 2);
    assert!(r.take_used(0).is_empty());
}

#[test]
fn at_most_the_bound_of_names_is_kept() {
    let m = mem();
    let mut r = notify_rig(&m);
    // The mock ring takes at most QSIZE chains in all, so a small bound
    // stands in for MAX_GUEST_LISTENERS (the default, tested in
    // listening.rs).
    let limit = 8;
    r.dev.guest_listeners = crate::device::listening::GuestListeners::with_limit(limit);
    for i in 0..limit + 3 {
        announce(&mut r, MsgType::Listen, format!("n{i:02}").as_bytes());
    }
    r.run(true);
    let s = r.stats.snapshot();
    assert_eq!(s.guest_listeners.len(), limit);
    assert_eq!(s.listen_refused, 3);
    assert_eq!(s.device.malformed, 0);
    assert!(!s.guest_listeners.contains(&format!("n{:02}", limit)));
    // Room again after an UNLISTEN.
    announce(&mut r, MsgType::Unlisten, b"n00");
    announce(&mut r, MsgType::Listen, b"late");
    r.run(true);
    let s = r.stats.snapshot();
    assert!(s.guest_listeners.iter().any(|n| n == "late"));
    assert_eq!(s.listen_refused, 3);
    // The largest set fits one LIST answer.
    let longest = |i: usize| format!("{i:04}{}", "x".repeat(59));
    let full: Vec<String> = (0..MAX_GUEST_LISTENERS).map(longest).collect();
    let reply = handshake::list_reply(full.iter().map(String::as_str));
    assert!(reply.len() < 2 * MAX_GUEST_LISTENERS * 64);
    match handshake::parse_list_reply(&reply) {
        Ok(ListReply::Names(n)) => assert_eq!(n, full),
        other => panic!("{other:?}"),
    }
}

fn readable(s: &SeqPacket) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, 10 ms timeout.
    unsafe { libc::poll(&mut p, 1, 10) == 1 }
}

#[test]
fn list_on_the_listening_socket() {
    let m = mem();
    let mut r = notify_rig(&m);
    let path = r._dir.join("listen.sock");
    let mut dev = Device::new(
        r.dev.params.clone(),
        r.dev.policy.clone(),
        r.stats.clone(),
        Some(SeqListener::bind(&path).unwrap()),
    )
    .unwrap();
    dev.set_features(1 << F_LISTEN_NOTIFY);
    for i in 0..3 {
        dev.queue_started(i, 0);
    }
    r.dev = dev;
    announce(&mut r, MsgType::Listen, b"svc-x");
    announce(&mut r, MsgType::Listen, b"svc-y");
    r.run(true);

    let ask = |r: &mut Rig<'_>, msg: &[u8]| -> Vec<Vec<u8>> {
        let c = SeqPacket::connect(&path, false).unwrap();
        c.send(msg).unwrap();
        let mut got = vec![];
        for _ in 0..200 {
            r.pass(true, true);
            if readable(&c) {
                let mut buf = vec![0u8; 4096];
                match c.recv(&mut buf).unwrap() {
                    Recv::Msg(n) => got.push(buf[..n].to_vec()),
                    Recv::Eof => return got,
                }
            }
        }
        panic!("the device did not close the connection; got {got:?}");
    };
    // One answer, then end-of-file.
    let got = ask(&mut r, &handshake::list_msg());
    assert_eq!(got, [b"OK 2\nsvc-x\nsvc-y\n".to_vec()]);
    assert_eq!(
        handshake::parse_list_reply(&got[0]),
        Ok(ListReply::Names(vec!["svc-x".into(), "svc-y".into()]))
    );
    announce(&mut r, MsgType::Unlisten, b"svc-x");
    r.run(true);
    assert_eq!(ask(&mut r, b"LIST"), [b"OK 1\nsvc-y\n".to_vec()]);
    // Neither LIST nor CONNECT: ERR 22.
    let got = ask(&mut r, b"LIST svc-y");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with(b"ERR 22 "), "{got:?}");
    // LIST opened no channel.
    assert_eq!(r.dev.channel_count(), 0);
}
