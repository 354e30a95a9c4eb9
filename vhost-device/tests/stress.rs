//! One million messages (KT_STRESS_MESSAGES overrides) of random sizes and
//! content through the real daemon to a host echo service and back, over
//! single, split and indirect tx chains: order and content kept, 0 lost.

// Test helpers outside #[test] functions fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{check_message, message, Fixture};
use kt_sim::{DriverOptions, Shape};

#[test]
fn million_messages_both_ways_in_order() {
    let n: u64 = std::env::var("KT_STRESS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let fx = Fixture::new("stress", &[]);
    let mut d = fx.driver_with(DriverOptions {
        shape: Shape::Mixed,
        defer_kicks: true,
        ..DriverOptions::default()
    });
    let id = d.open("echo").unwrap().unwrap();
    let max = d.config.max_msg_size as usize;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut next = message(0, max);
    let start = std::time::Instant::now();
    while got < n {
        let mut progress = false;
        while sent < n && d.try_send(id, &next).unwrap() {
            sent += 1;
            next = message(sent, max);
            progress = true;
        }
        while let Some(m) = d.try_recv(id).unwrap() {
            let i = check_message(&m, max).unwrap();
            assert_eq!(i, got, "out of order");
            got += 1;
            progress = true;
        }
        if !progress {
            d.poll(std::time::Duration::from_millis(100)).unwrap();
        }
        assert!(
            start.elapsed().as_secs() < 600,
            "stuck at sent {sent} got {got}"
        );
    }
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let s = fx.stats();
    assert_eq!(s.device.msgs_to_host, n);
    assert_eq!(s.device.msgs_to_guest, n);
    assert_eq!(s.device.malformed, 0);
    eprintln!("{n} messages each way in {:?}", start.elapsed());
}
