//! Unit tests of each channel's share of the rx ring (`rxshare.rs`): a
//! flooding channel stops at its share while another channel is being
//! served, goes on as the driver consumes (posts buffers back), and has
//! the whole ring when it is alone or the contention is over.

use super::*;

/// Data messages for `id` among used entries.
fn data_for(got: &[(Header, Vec<u8>)], id: u32) -> usize {
    got.iter()
        .filter(|(h, _)| h.msg_type == MsgType::Data && h.channel == id)
        .count()
}

fn flood(host: &SeqPacket, n: usize) {
    for i in 0..n {
        host.send(format!("f{i}").as_bytes()).unwrap();
    }
}

#[test]
fn a_flood_alone_fills_the_ring() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(300, 256);
    let host = r.open(1, 1 << 20);
    flood(&host, 200);
    r.run(true);
    assert_eq!(data_for(&r.take_used(0), 1), 200);
    assert!(r.dev.share_wait.is_none());
}

#[test]
fn a_flood_waits_at_its_share_while_another_channel_is_served() {
    let m = mem();
    let mut r = Rig::new(&m);
    let share = usize::from(QSIZE) / crate::config::DEFAULT_RX_SHARE as usize;
    r.post_rx(400, 256);
    let flooding = r.open(1, 1 << 20);
    let quiet = r.open(2, 1 << 20);
    quiet.send(b"q0").unwrap();
    r.run(true);
    assert_eq!(data_for(&r.take_used(0), 2), 1);
    // With EVENT_IDX the device asks for a kick once the driver has posted
    // half a share of buffers back.
    r.q[0].set_event_idx(true);
    flood(&flooding, 200);
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(data_for(&got, 1), share, "flood beyond its share");
    assert!(r.dev.share_wait.is_some(), "no timer for the waiting flood");
    let avail_event = r.vq[0].used_addr().unchecked_add(4 + 8 * u64::from(QSIZE));
    let avail: u16 = r
        .mem
        .read_obj(r.vq[0].avail_addr().unchecked_add(2))
        .unwrap();
    assert_eq!(
        r.mem.read_obj::<u16>(avail_event).unwrap(),
        avail + share as u16 / 2 - 1
    );
    // Free buffers remain: the quiet channel's next message goes straight
    // in, behind no more than the flood's share.
    quiet.send(b"q1").unwrap();
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.channel, got[0].1.as_slice()), (2, &b"q1"[..]));
    // The driver consumes everything so far and posts that many buffers
    // back: the flood gets a new share, no more.
    let consumed = 2 + 1 + share + 1;
    r.post_rx(consumed, 256);
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(data_for(&got, 1), share);
    // Once no other channel has had data for a while the flood has the
    // ring again, even before the driver posts anything (the timer's pass).
    std::thread::sleep(rxshare::CONTENDED + Duration::from_millis(5));
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(data_for(&got, 1), 200 - 2 * share);
    assert!(r.dev.share_wait.is_none());
}
