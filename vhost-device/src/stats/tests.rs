//! Unit tests of the counters, the snapshot and its table, JSON and
//! Prometheus renderings.

use super::*;

#[test]
fn snapshot_and_table() {
    let st = Stats::new(7);
    let c = st.open_channel(3, "echo", Opener::Guest);
    add(&c.msgs_to_host, 2);
    add(&st.device.msgs_to_host, 2);
    let s = st.snapshot();
    assert_eq!(s.channels.len(), 1);
    assert_eq!(s.channels[0].counters.msgs_to_host, 2);
    let t = s.table();
    assert!(t.contains("echo"), "{t}");
    assert!(!t.contains("pair 0"), "one pair: no per-pair rows\n{t}");
    assert!(s.pairs.is_empty() && st.pair(0).is_none());
    let d = st.open_channel_on(1, 5, "echo", Opener::Guest);
    add(&d.msgs_to_guest, 4);
    st.open_channel_on(1, 6, "log", Opener::Guest);
    assert_eq!(st.open_channels_of("echo"), 2);
    // Reservations count against a limit, show in no snapshot, and
    // are dropped only by their pair and only while reservations.
    assert!(!st.reserve_channel(1, 8, "echo", 2));
    assert!(st.reserve_channel(1, 8, "echo", 3));
    assert!(!st.reserve_channel(0, 9, "echo", 3));
    assert!(!st.snapshot().channels.iter().any(|c| c.id == 8));
    st.drop_reservation(0, 8);
    assert_eq!(st.open_channels_of("echo"), 3);
    st.drop_reservation(1, 8);
    assert_eq!(st.open_channels_of("echo"), 2);
    st.drop_reservation(1, 5);
    assert_eq!(
        st.open_channels_of("echo"),
        2,
        "a channel is no reservation"
    );
    let s2 = st.snapshot();
    let pp = s2.per_pair();
    assert_eq!(pp[&0].0, 1);
    assert_eq!(pp[&0].1.msgs_to_host, 2);
    assert_eq!(pp[&1].0, 2);
    assert_eq!(pp[&1].1.msgs_to_guest, 4);
    // Totals per pair are kept with more than one pair.
    let mq = Stats::new(8).with_pairs(2);
    mq.open_channel_on(1, 5, "echo", Opener::Guest);
    add(&mq.pair(1).unwrap().msgs_to_guest, 4);
    mq.close_channel(5);
    mq.open_channel_on(1, 6, "echo", Opener::Guest);
    let s3 = mq.snapshot();
    assert_eq!(s3.pairs.len(), 2);
    assert_eq!(s3.pairs[1].msgs_to_guest, 4, "closed channels still count");
    let t3 = s3.table();
    let row1 = t3.lines().find(|l| l.starts_with("pair 1")).unwrap();
    assert!(row1.contains("1 open") && row1.contains(" 4 "), "{t3}");
    assert!(t3.lines().any(|l| l.starts_with("pair 0")), "{t3}");
    let text = s3.prometheus();
    let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let pair1 = [("pair", "1"), ("direction", "to_guest")];
    assert_eq!(ex.value("kt_device_pair_messages_total", &pair1), Some(4.0));
    assert_eq!(ex.value("kt_device_pair_bytes_total", &pair1), Some(0.0));
    assert!(
        !s.prometheus().contains("kt_device_pair_"),
        "one pair: no per-pair families"
    );
    st.close_channel(5);
    st.close_channel(6);
    assert!(
        t.lines()
            .nth(1)
            .unwrap()
            .starts_with("host peers: passed fds closed 0"),
        "{t}"
    );
    assert!(t.lines().last().unwrap().starts_with("total"), "{t}");
    assert!(t.contains("guest listeners (0): -"), "{t}");
    let json = serde_json::to_string(&s).unwrap();
    let back: StatsSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    st.close_channel(3);
    assert!(st.snapshot().channels.is_empty());
}

#[test]
fn guest_listeners_in_every_format() {
    let st = Stats::new(7);
    st.guest_listener_added("svc-b");
    st.guest_listener_added("svc-a");
    st.guest_listener_added("gone");
    st.guest_listener_removed("gone");
    add(&st.events.listen_refused, 2);
    let s = st.snapshot();
    assert_eq!(s.guest_listeners, ["svc-a", "svc-b"]);
    assert!(
        s.table().contains("guest listeners (2): svc-a svc-b"),
        "{}",
        s.table()
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(
        json["guest_listeners"],
        serde_json::json!(["svc-a", "svc-b"])
    );
    assert_eq!(json["listen_refused"], 2);
    // Older snapshots (without the fields) still parse.
    let mut old = json.clone();
    let o = old.as_object_mut().unwrap();
    o.remove("guest_listeners");
    o.remove("listen_ignored");
    o.remove("listen_refused");
    let back: StatsSnapshot = serde_json::from_value(old).unwrap();
    assert!(back.guest_listeners.is_empty());
    let text = s.prometheus();
    let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(ex.families["kt_device_guest_listeners"].kind, "gauge");
    assert_eq!(ex.value("kt_device_guest_listeners", &[]), Some(2.0));
    assert_eq!(
        ex.value("kt_device_guest_listen_refused_total", &[]),
        Some(2.0)
    );
    st.clear_guest_listeners();
    assert!(st.snapshot().guest_listeners.is_empty());
}

#[test]
fn prometheus_parses_back() {
    let st = Stats::new(7);
    st.active.store(true, Relaxed);
    add(&st.events.frontends, 2);
    add(&st.events.opened, 3);
    add(&st.events.passed_fds_closed, 8);
    let a = st.open_channel(1, "echo", Opener::Guest);
    let b = st.open_channel(0x40000002, "we\"ird\\name", Opener::Host);
    add(&a.msgs_to_host, 5);
    add(&a.bytes_to_host, 500);
    add(&b.msgs_to_guest, 9);
    add(&b.credit_stalls, 1);
    add(&st.device.msgs_to_host, 5);
    add(&st.device.msgs_to_guest, 9);
    add(&st.device.malformed, 4);
    let text = st.snapshot().prometheus();
    let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for f in ex.families.keys() {
        assert!(f.starts_with("kt_device_"), "{f}");
    }
    assert!(ex
        .samples
        .iter()
        .all(|s| s.labels[0] == ("vm".into(), "vm7".into())
            && s.labels[1] == ("guest".into(), "7".into())));
    assert_eq!(ex.families["kt_device_messages_total"].kind, "counter");
    assert_eq!(ex.families["kt_device_active"].kind, "gauge");
    assert_eq!(ex.value("kt_device_active", &[]), Some(1.0));
    assert_eq!(ex.value("kt_device_frontends_total", &[]), Some(2.0));
    assert_eq!(ex.value("kt_device_channels_opened_total", &[]), Some(3.0));
    assert_eq!(ex.value("kt_device_open_channels", &[]), Some(2.0));
    assert_eq!(
        ex.value("kt_device_passed_fds_closed_total", &[]),
        Some(8.0)
    );
    assert_eq!(ex.value("kt_device_malformed_total", &[]), Some(4.0));
    let to_guest = [("direction", "to_guest")];
    assert_eq!(ex.value("kt_device_messages_total", &to_guest), Some(9.0));
    let echo_up = [("service", "echo"), ("direction", "to_host")];
    assert_eq!(
        ex.value("kt_device_channel_messages_total", &echo_up),
        Some(5.0)
    );
    assert_eq!(
        ex.value("kt_device_channel_bytes_total", &echo_up),
        Some(500.0)
    );
    // The odd name comes back unescaped, on the channel it belongs to.
    let odd = [
        ("channel", "0x40000002"),
        ("service", "we\"ird\\name"),
        ("opener", "host"),
    ];
    assert_eq!(
        ex.value("kt_device_channel_credit_stalls_total", &odd),
        Some(1.0)
    );
    assert!(text.contains(r#"service="we\"ird\\name""#), "{text}");
    assert_eq!(kt_prom::label_value("a\nb\"c\\"), r#"a\nb\"c\\"#);
}

#[test]
fn several_vms_share_one_exposition_and_table() {
    let a = Stats::for_vm("web", 1).with_pairs(2);
    let b = Stats::for_vm("db", 2).with_pairs(3);
    add(&b.pair(2).unwrap().msgs_to_host, 6);
    add(&a.events.opened, 3);
    add(&b.events.opened, 5);
    b.open_channel(4, "echo", Opener::Guest);
    let all = DaemonSnapshot {
        vms: vec![a.snapshot(), b.snapshot()],
    };
    let text = all.prometheus();
    let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let opened = "kt_device_channels_opened_total";
    assert_eq!(ex.value(opened, &[("vm", "web")]), Some(3.0));
    let db2 = [("vm", "db"), ("pair", "2"), ("direction", "to_host")];
    assert_eq!(ex.value("kt_device_pair_messages_total", &db2), Some(6.0));
    let web1 = [("vm", "web"), ("pair", "1"), ("direction", "to_host")];
    assert_eq!(ex.value("kt_device_pair_messages_total", &web1), Some(0.0));
    assert_eq!(ex.value(opened, &[("vm", "db"), ("guest", "2")]), Some(5.0));
    assert_eq!(
        ex.value("kt_device_open_channels", &[("vm", "db")]),
        Some(1.0)
    );
    assert_eq!(text.matches("# TYPE kt_device_active").count(), 1, "{text}");
    let t = all.table();
    assert!(t.starts_with("vm web  guest 1"), "{t}");
    assert!(t.contains("\nvm db  guest 2"), "{t}");
    assert_eq!(all.vm("db").map(|v| v.guest_id), Some(2));
    assert!(all.vm("nope").is_none());
    let json = serde_json::to_string(&all).unwrap();
    assert_eq!(serde_json::from_str::<DaemonSnapshot>(&json).unwrap(), all);
}

#[test]
fn prometheus_without_channels_has_no_channel_families() {
    let text = Stats::new(0).snapshot().prometheus();
    let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(!text.contains("kt_device_channel_"), "{text}");
    assert_eq!(ex.value("kt_device_active", &[("guest", "0")]), Some(0.0));
    assert_eq!(ex.value("kt_device_open_channels", &[]), Some(0.0));
}

#[test]
fn the_vm_buffer_in_every_format() {
    let buf = Arc::new(crate::budget::VmBuffer::new(100_000, 20_000, 5_000));
    let st = Stats::new(3).with_buffer(buf.clone());
    let w = buf.open();
    buf.hold(1234);
    let s = st.snapshot();
    assert_eq!(
        (s.buffered, s.buffer_granted, s.vm_buffer),
        (1234, u64::from(w), 100_000)
    );
    assert!(
        s.table()
            .contains("guest data held: 1234 bytes  windows granted 5000  vm-buffer 100000"),
        "{}",
        s.table()
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["buffered"], 1234);
    assert_eq!(json["vm_buffer"], 100_000);
    let mut old = json.clone();
    let o = old.as_object_mut().unwrap();
    o.remove("buffered");
    o.remove("buffer_granted");
    o.remove("vm_buffer");
    let back: StatsSnapshot = serde_json::from_value(old).unwrap();
    assert_eq!(back.vm_buffer, 0);
    let text = s.prometheus();
    let ex = kt_prom::check::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(ex.families["kt_device_buffered_bytes"].kind, "gauge");
    assert_eq!(ex.value("kt_device_buffered_bytes", &[]), Some(1234.0));
    assert_eq!(ex.value("kt_device_vm_buffer_bytes", &[]), Some(100_000.0));
    // Without a budget: the table says so, the JSON says 0.
    let none = Stats::new(4).snapshot();
    assert_eq!(none.vm_buffer, 0);
    assert!(none.table().contains("vm-buffer -"), "{}", none.table());
}
