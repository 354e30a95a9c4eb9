//! Starts the real daemon and drives it as a VMM + guest would: open, echo
//! both ways, policy refusal, host-initiated channels, stats.

mod common;

use common::Fixture;
use kt_proto::ErrorCode;

#[test]
fn echo_round_trip_and_refusals() {
    let fx = Fixture::new("basic", &[]);
    let mut d = fx.driver();
    assert_eq!(d.config.guest_id, 7);
    assert_eq!(d.config.max_msg_size, 65536);
    let id = d.open("echo").unwrap().unwrap();
    for (i, len) in [0usize, 1, 100, 4064, 4065, 10_000, 65536].into_iter().enumerate() {
        let msg: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
        d.send(id, &msg).unwrap();
        assert_eq!(d.recv(id).unwrap(), msg, "len {len}");
    }
    assert_eq!(d.open("nope").unwrap(), Err(ErrorCode::NoEnt));
    assert_eq!(d.open("down").unwrap(), Err(ErrorCode::ConnRefused));
    let l1 = d.open("limited").unwrap().unwrap();
    assert_eq!(d.open("limited").unwrap(), Err(ErrorCode::MFile));
    d.close(l1).unwrap();
    d.wait_until("CLOSE answer", |d| d.closed(l1).is_some()).unwrap();
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let s = fx.stats();
    assert!(s.active);
    assert_eq!(s.open_refused, 3);
    assert!(s.device.msgs_to_host >= 7);
}
