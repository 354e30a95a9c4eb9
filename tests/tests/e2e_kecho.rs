//! End-to-end with the guest kernel's own service and module reloads
//! (workload `kecho-reload`): a host program exchanges messages of every
//! size with `k.echo` (kt_kecho.ko) through the backend's `--listen`
//! socket, one at a time and in bursts, every echo checked byte for byte;
//! then the guest unloads and reloads kerntransport.ko and kt_kecho.ko
//! while idle, and both directions work again (guest -> host service
//! `kt serve --mode echo`, host -> k.echo), without a transport reset.
//! Needs the artifacts scripts/e2e.sh builds; ignored by a plain
//! `cargo test`.

use std::time::{Duration, Instant};

use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::{
    connect_to_guest_when_ready, BackendBuilder, GuestChannel, KtTool, Qemu, Stream, TempDir,
};

/// The device's default `max_msg_size`.
const MAX: usize = 65536;
/// Per-message wait on the host side, and for guest progress lines.
const T: Duration = Duration::from_secs(60);

/// Sends each message of `stream` and checks its echo, `burst` messages
/// in flight at a time.
fn echo_stream(ch: &GuestChannel, stream: &Stream, burst: u64) {
    let mut seq = 0;
    while seq < stream.count() {
        let end = (seq + burst).min(stream.count());
        for s in seq..end {
            ch.conn
                .send(&stream.message(s))
                .unwrap_or_else(|e| panic!("{stream}: send {s}: {e}"));
        }
        for s in seq..end {
            let want = stream.message(s);
            let got = ch
                .conn
                .recv(T)
                .unwrap_or_else(|e| panic!("{stream}: echo of {s}: {e}"));
            assert!(
                got == want,
                "{stream}: echo of message {s} differs ({} bytes, sent {})",
                got.len(),
                want.len()
            );
        }
        seq = end;
    }
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn host_exchanges_messages_with_k_echo_across_a_module_reload() {
    let started = Instant::now();
    let dir = TempDir::new("e2e-kecho").expect("temp dir");
    let echo_sock = dir.join("echo.sock");
    let tool = KtTool::new(&dir).expect("host build of kt");
    let mut serve = tool
        .spawn(
            "serve",
            [
                "serve".as_ref(),
                "--socket".as_ref(),
                echo_sock.as_os_str(),
                "--mode".as_ref(),
                "echo".as_ref(),
            ],
        )
        .expect("start kt serve");
    let deadline = Instant::now() + T;
    while !echo_sock.exists() {
        assert!(serve.is_running(), "kt serve exited: {}", serve.output());
        assert!(Instant::now() < deadline, "kt serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let backend = BackendBuilder::new(&dir)
        .service("echo", &echo_sock)
        .spawn()
        .expect("start kt-vhost-device");
    let listen = backend.listen_path().expect("--listen is on by default");
    let mut guest = Qemu::new("kecho-reload")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .append("kt.timeout=240")
        .spawn(&dir)
        .expect("start QEMU");
    guest
        .wait_for("KT: echo round trip: before-reload", BOOT_TIMEOUT)
        .expect("guest -> kt serve echo round trip");
    guest
        .wait_for("KT: ready for k.echo", T)
        .expect("guest ready");

    let ch = connect_to_guest_when_ready(&listen, "k.echo", T).expect("CONNECT k.echo");
    // Edge sizes: tiny, around the 16-byte prefix, the rx buffer (4096 −
    // 32-byte header), and the maximum.
    for (i, size) in [1, 2, 15, 16, 17, 4063, 4064, 4065, 4096, MAX - 1, MAX]
        .into_iter()
        .enumerate()
    {
        let s = Stream::new(&format!("edge-{size}"), 50 + i as u64, size, size, 2).expect("stream");
        echo_stream(&ch, &s, 1);
    }
    echo_stream(
        &ch,
        &Stream::new("ping-pong", 61, 1, MAX, 200).expect("stream"),
        1,
    );
    echo_stream(
        &ch,
        &Stream::new("bursts", 62, 1, 4096, 512).expect("stream"),
        16,
    );
    drop(ch);

    guest
        .wait_for("KT: modules unloaded", T)
        .expect("rmmod kt_kecho kerntransport");
    let reloaded = guest
        .wait_for("KT: modules reloaded", T)
        .expect("insmod kerntransport kt_kecho");
    assert!(
        reloaded.line.contains("resets 0") && reloaded.line.contains("open_channels 0"),
        "a reload starts clean, without a transport reset: {}",
        reloaded.line
    );
    guest
        .wait_for("KT: echo round trip: after-reload", T)
        .expect("guest -> host after the reload");
    guest
        .wait_for("KT: ready for k.echo after reload", T)
        .expect("guest ready after the reload");
    let ch = connect_to_guest_when_ready(&listen, "k.echo", T).expect("CONNECT k.echo again");
    echo_stream(
        &ch,
        &Stream::new("after-reload", 63, 1, MAX, 50).expect("stream"),
        4,
    );
    drop(ch);
    guest.expect_pass(T).expect("kecho-reload workload");

    let stats = backend.stats().expect("backend stats");
    assert_eq!(stats["resets"], 0, "{stats}");
    assert_eq!(stats["device"]["malformed"], 0, "{stats}");
    assert!(serve.is_running(), "kt serve died: {}", serve.output());
    // SIGTERM ends `kt serve` with "kt: interrupted"; anything else is an
    // error it met while serving.
    let out = serve.stop(Duration::from_secs(5)).expect("stop kt serve");
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("kt: ") && *l != "kt: interrupted")
        .collect();
    assert!(errors.is_empty(), "kt serve reported errors: {out}");
    eprintln!("kecho: done in {:.1?}", started.elapsed());
}
