//! End-to-end message traffic in both directions in one guest boot
//! (workload `messages`): messages of 1 byte up to the maximum size,
//! 100,000 messages in order with checksums, and the size limit (maximum
//! passes, maximum + 1 is refused with EMSGSIZE on a guest write, and a
//! host message over the maximum closes the channel with EMSGSIZE), and
//! zero-length messages both ways; once
//! with the default `max_msg_size` (64 KiB) and once with the protocol's
//! limit (1 MiB: messages of 256 rx-buffer fragments). The guest runs
//! `kt gen` / `kt verify`; the host side is the harness's streams in the
//! same format. Needs the artifacts scripts/e2e.sh builds; ignored by a
//! plain `cargo test`.

use std::thread;
use std::time::{Duration, Instant};

use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::seqpacket::{ensure_send_buffer_limit, SocketError};
use kt_tests::traffic::Received;
use kt_tests::{
    connect_to_guest_when_ready, send_stream, verify_stream, BackendBuilder, Qemu,
    SeqpacketListener, Stream, TempDir,
};

/// Per-message wait on the host side, and for guest progress lines.
const T: Duration = Duration::from_secs(90);
/// The guest's 100,000-message steps under TCG.
const LONG: Duration = Duration::from_secs(180);

/// One run of the workload: the device's `max_msg_size` and the sizes of
/// the `mixed` and `order` streams (`kt.mixed=`, `kt.order=`).
#[derive(Clone, Copy, Debug)]
struct Sizes {
    max: usize,
    mixed: u64,
    order: u64,
}

/// The guest → host streams of images/workloads/messages.sh, in order.
fn guest_to_host(z: Sizes) -> Vec<Stream> {
    vec![
        Stream::new("one", 11, 1, 1, 16).expect("stream"),
        Stream::new("max", 12, z.max, z.max, 16).expect("stream"),
        Stream::new("mixed", 13, 1, z.max, z.mixed).expect("stream"),
        Stream::new("order", 14, 16, 64, z.order).expect("stream"),
    ]
}

/// The host → guest streams (guest listener name = label).
fn host_to_guest(z: Sizes) -> Vec<Stream> {
    vec![
        Stream::new("h-one", 21, 1, 1, 16).expect("stream"),
        Stream::new("h-max", 22, z.max, z.max, 16).expect("stream"),
        Stream::new("h-mixed", 23, 1, z.max, z.mixed).expect("stream"),
        Stream::new("h-order", 24, 16, 64, z.order).expect("stream"),
    ]
}

/// The host service "sink": one connection per guest step, verified in
/// order; the last one carries one maximum-size message of zeros before
/// the guest's oversized write fails.
fn sink_service(
    listener: SeqpacketListener,
    z: Sizes,
) -> thread::JoinHandle<Result<Vec<Received>, String>> {
    thread::spawn(move || {
        let mut got = Vec::new();
        for stream in guest_to_host(z) {
            let conn = listener
                .accept(BOOT_TIMEOUT)
                .map_err(|e| format!("g2h {stream}: guest never connected: {e}"))?;
            let r = verify_stream(&conn, &stream, T).map_err(|e| format!("g2h: {e}"))?;
            got.push(r);
        }
        let conn = listener
            .accept(T)
            .map_err(|e| format!("g2h over: guest never connected: {e}"))?;
        let msg = conn
            .recv(T)
            .map_err(|e| format!("g2h over: the maximum-size message: {e}"))?;
        if msg.len() != z.max || msg.iter().any(|&b| b != 0) {
            return Err(format!(
                "g2h over: expected {} zero bytes, got {} bytes",
                z.max,
                msg.len()
            ));
        }
        match conn.recv(T) {
            Err(SocketError::Closed) => {}
            Ok(m) => {
                return Err(format!(
                    "g2h over: the oversized write reached the host ({} bytes)",
                    m.len()
                ))
            }
            Err(e) => return Err(format!("g2h over: expected the channel to close: {e}")),
        }
        // Zero-length messages are messages (SO_PASSCRED tells them from
        // the end of the channel).
        let conn = listener
            .accept(T)
            .map_err(|e| format!("g2h empty: guest never connected: {e}"))?;
        conn.set_passcred().map_err(|e| format!("g2h empty: {e}"))?;
        let mut buf = [0u8; 16];
        let mut empty = Vec::new();
        loop {
            match conn.recv_message(&mut buf, T) {
                Ok(Some(n)) => empty.push(buf[..n].to_vec()),
                Ok(None) => break,
                Err(e) => return Err(format!("g2h empty: after {empty:?}: {e}")),
            }
        }
        let want: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), vec![], b"b".to_vec(), vec![]];
        if empty != want {
            return Err(format!("g2h empty: got {empty:?}, want {want:?}"));
        }
        Ok(got)
    })
}

/// Boots the `messages` workload against a backend with `max_msg_size`
/// `z.max` and checks every step.
fn messages_run(name: &str, z: Sizes) {
    let started = Instant::now();
    let dir = TempDir::new(name).expect("temp dir");
    let sink = SeqpacketListener::bind(&dir.join("sink.sock")).expect("sink socket");
    let backend = BackendBuilder::new(&dir)
        .service("sink", sink.path())
        .args(["--max-msg-size".to_string(), z.max.to_string()])
        .spawn()
        .expect("start kt-vhost-device");
    let listen = backend.listen_path().expect("--listen is on by default");
    let sink = sink_service(sink, z);
    let mut guest = Qemu::new("messages")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .append("kt.timeout=280")
        .append(&format!("kt.mixed={}", z.mixed))
        .append(&format!("kt.order={}", z.order))
        .spawn(&dir)
        .expect("start QEMU");
    guest
        .wait_for(&format!("KT: max_msg_size {}", z.max), BOOT_TIMEOUT)
        .expect("the guest reports the device's max_msg_size");
    // The bounce-buffer pass (scripts/e2e.sh: iommu_platform=on,
    // swiotlb=force) only counts if the driver maps through the DMA API.
    let features = guest
        .wait_for("KT: features ", T)
        .expect("the guest reports the negotiated features")
        .line;
    if std::env::var("KT_E2E_DEVICE_PROPS").is_ok_and(|p| p.contains("iommu_platform=on")) {
        let bits = features.rsplit(' ').next().unwrap_or("");
        assert_eq!(
            bits.as_bytes().get(33),
            Some(&b'1'),
            "VIRTIO_F_ACCESS_PLATFORM (bit 33) not negotiated: {features}"
        );
    }
    guest
        .wait_for("KT: ready for host streams", T)
        .expect("guest listeners started");

    // Host -> guest: each stream on its own channel, checked by the
    // guest's `kt verify`.
    for stream in host_to_guest(z) {
        let ch = connect_to_guest_when_ready(&listen, stream.label(), T)
            .unwrap_or_else(|e| panic!("h2g {stream}: CONNECT: {e}"));
        send_stream(&ch.conn, &stream).unwrap_or_else(|e| panic!("h2g: {e}"));
    }
    // Host -> guest over the limit: one message that fits, then one byte
    // too many. The device closes this connection (SPEC section 9).
    let ch = connect_to_guest_when_ready(&listen, "h-over", T).expect("CONNECT h-over");
    ch.conn.send(b"fits").expect("send a small message");
    ch.conn
        .send(&vec![0x5au8; z.max + 1])
        .expect("send the oversized message");
    match ch.conn.recv(T) {
        Err(SocketError::Closed) => {}
        other => panic!("h2g over: the device should close the connection, got {other:?}"),
    }
    // Host -> guest zero-length messages; the channel stays open until the
    // guest has read all five.
    let empty = connect_to_guest_when_ready(&listen, "h-empty", T).expect("CONNECT h-empty");
    for m in [&b""[..], b"a", b"", b"b", b""] {
        empty.conn.send(m).expect("send to h-empty");
    }

    // The guest's verdicts: every host stream verified completely.
    for stream in host_to_guest(z) {
        let want = format!(
            "KT: h2g {}: verified {} messages, 0 lost, 0 corrupt",
            stream.label(),
            stream.count()
        );
        guest
            .wait_for(&want, LONG)
            .unwrap_or_else(|e| panic!("guest verdict on {stream}: {e}"));
    }
    let over = guest
        .wait_for("KT: h2g h-over:", T)
        .expect("guest reports the oversized host message");
    assert!(
        over.line.contains("fits") && over.line.contains("EMSGSIZE"),
        "the guest should read 'fits', then get EMSGSIZE: {}",
        over.line
    );

    guest
        .wait_for("KT: h2g h-empty: [|61||62||]", T)
        .expect("the guest reads 5 messages: empty, a, empty, b, empty");
    drop(empty);

    // Guest -> host: the guest's `kt gen` reports, the host verified.
    let got = sink
        .join()
        .expect("sink thread")
        .unwrap_or_else(|e| panic!("{e}"));
    for (stream, r) in guest_to_host(z).iter().zip(&got) {
        assert_eq!(r.messages, stream.count(), "g2h {stream}");
        let want = format!(
            "KT: g2h {}: sent {} messages, {} bytes",
            stream.label(),
            stream.count(),
            r.bytes
        );
        guest
            .wait_for(&want, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("guest report on {stream}: {e}"));
    }
    let over = guest
        .wait_for("KT: g2h over:", Duration::from_secs(1))
        .expect("guest reports its oversized write");
    assert!(
        over.line
            .contains(&format!("message of {} bytes is too big", z.max + 1))
            && over.line.contains("(EMSGSIZE)"),
        "{}",
        over.line
    );
    guest.expect_pass(T).expect("messages workload");

    // The oversized host message is the only malformed input the device saw.
    let stats = backend.stats().expect("backend stats");
    assert_eq!(
        stats["device"]["malformed"], 1,
        "device counters: {}",
        stats["device"]
    );
    eprintln!("{name}: done in {:.1?}", started.elapsed());
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn messages_of_every_size_in_order_both_ways_and_the_size_limit() {
    messages_run(
        "e2e-msgs",
        Sizes {
            max: 65536,
            mixed: 300,
            order: 100_000,
        },
    );
}

/// The same at the protocol's limit, `max_msg_size` = 1 MiB: each maximum
/// message crosses the rx queue as 256 fragments. Fewer mixed and order
/// messages keep the boot short.
#[test]
#[ignore = "needs the guest image: run make test"]
fn one_mib_messages_both_ways_and_the_size_limit() {
    // Host programs and the device need send buffers above the default
    // net.core.wmem_max (about 208 KiB) for 1 MiB SOCK_SEQPACKET messages.
    if let Err(e) = ensure_send_buffer_limit() {
        panic!("{e}");
    }
    messages_run(
        "e2e-msgs1m",
        Sizes {
            max: kt_proto::consts::MAX_MSG_SIZE_LIMIT as usize,
            mixed: 24,
            order: 2000,
        },
    );
}
