//! End-to-end transport reset with channels open (workload
//! `reset-channel`): kt-vhost-device is killed and restarted while the
//! guest has a blocked reader, a blocked writer and a listener. The host
//! ends of the old channels see EOF, the guest reader and writer end with
//! ECONNRESET, the listener survives, and traffic continues both ways on
//! new channels (data checked). Needs the artifacts scripts/e2e.sh builds;
//! ignored by a plain `cargo test`.

use std::time::{Duration, Instant};

use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::seqpacket::SocketError;
use kt_tests::{
    connect_to_guest_when_ready, verify_stream, verify_until_eof, BackendBuilder, Qemu,
    SeqpacketListener, Stream, TempDir,
};

/// Per-message wait on the host side, and for guest progress lines.
const T: Duration = Duration::from_secs(90);

#[test]
#[ignore = "needs the guest image: run make test"]
fn open_channels_get_econnreset_on_a_backend_restart_and_traffic_continues() {
    let started = Instant::now();
    let dir = TempDir::new("e2e-reset").expect("temp dir");
    let hold = SeqpacketListener::bind(&dir.join("hold.sock")).expect("hold socket");
    let stall = SeqpacketListener::bind(&dir.join("stall.sock")).expect("stall socket");
    let sink = SeqpacketListener::bind(&dir.join("sink.sock")).expect("sink socket");
    let mut backend = BackendBuilder::new(&dir)
        .service("hold", hold.path())
        .service("stall", stall.path())
        .service("sink", sink.path())
        .spawn()
        .expect("start kt-vhost-device");
    let listen = backend.listen_path().expect("--listen is on by default");
    let mut guest = Qemu::new("reset-channel")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .append("kt.timeout=240")
        .spawn(&dir)
        .expect("start QEMU");

    // Before: a reader blocked after one message, a writer blocked by a
    // host that does not read.
    let hold_conn = hold
        .accept(BOOT_TIMEOUT)
        .expect("the guest connects to hold");
    hold_conn.send(b"before-reset").expect("send to hold");
    let stall_conn = stall.accept(T).expect("the guest connects to stall");
    guest
        .wait_for("KT: ready for backend restart", T)
        .expect("guest reader and writer blocked");

    backend.restart().expect("restart kt-vhost-device");

    // The host ends of the old channels: EOF, after only intact messages.
    match hold_conn.recv(T) {
        Err(SocketError::Closed) => {}
        other => panic!("hold: expected EOF when the backend died, got {other:?}"),
    }
    let stall_stream = Stream::new("stall", 41, 1024, 1024, 100_000).expect("stream");
    let before = verify_until_eof(&stall_conn, &stall_stream, T)
        .expect("stall: messages written before the restart are intact, then EOF");
    assert!(before.messages < stall_stream.count(), "{before:?}");

    // The guest: reset seen, blocked calls ended with ECONNRESET.
    guest
        .wait_for("KT: transport reset seen", T)
        .expect("the driver gets a transport reset");
    for label in ["hold", "stall"] {
        let line = guest
            .wait_for(&format!("KT: {label} after the reset:"), T)
            .unwrap_or_else(|e| panic!("{label}: {e}"))
            .line;
        assert!(line.contains("ECONNRESET"), "{line}");
    }
    backend
        .wait_for("RESET sent", T)
        .expect("the new backend sends RESET");

    // After: guest -> host on a new channel, host -> guest through the
    // listener that survived.
    let sink_stream = Stream::new("sink", 42, 1, 4096, 1000).expect("stream");
    let conn = sink.accept(T).expect("the guest connects to sink");
    let got = verify_stream(&conn, &sink_stream, T).expect("sink after the reset");
    guest
        .wait_for(
            &format!(
                "KT: sink after the reset: sent 1000 messages, {} bytes",
                got.bytes
            ),
            T,
        )
        .expect("guest sink report");
    guest
        .wait_for("KT: ready for host after reset", T)
        .expect("guest ready for the host");
    let echo = Stream::new("g-echo", 43, 1, 4096, 100).expect("stream");
    let ch = connect_to_guest_when_ready(&listen, "g-echo", T).expect("CONNECT g-echo");
    for seq in 0..echo.count() {
        let msg = echo.message(seq);
        ch.conn.send(&msg).expect("send to g-echo");
        let back = ch.conn.recv(T).expect("echo from g-echo");
        assert!(back == msg, "g-echo: message {seq} came back different");
    }
    drop(ch);
    guest
        .wait_for("KT: g-echo served the host after the reset", T)
        .expect("guest saw the host session end");
    guest.expect_pass(T).expect("reset-channel workload");
    let stats = backend.stats().expect("backend stats");
    assert_eq!(stats["resets"], 1, "{stats}");
    eprintln!(
        "reset: {} stall messages before the restart; done in {:.1?}",
        before.messages,
        started.elapsed()
    );
}
