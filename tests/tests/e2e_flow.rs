//! End-to-end flow control and abrupt ends in one guest boot (workload
//! `flow`): a host service that stops reading makes the guest writer block
//! (and get EAGAIN with `--nonblock`) with nothing lost once it reads again;
//! a stopped guest reader makes the host's non-blocking sends get EAGAIN,
//! with nothing lost once it resumes; a guest `kt gen` killed with SIGKILL
//! mid-stream closes the channel, and the host receives exactly the
//! messages the driver sent, then EOF. Needs the artifacts scripts/e2e.sh
//! builds; ignored by a plain `cargo test`.

use std::time::{Duration, Instant};

use kt_tests::qemu::{Guest, BOOT_TIMEOUT};
use kt_tests::{
    connect_to_guest_when_ready, verify_stream, verify_until_eof, BackendBuilder, Qemu,
    SeqpacketListener, Stream, TempDir,
};

/// Per-message wait on the host side, and for guest progress lines.
const T: Duration = Duration::from_secs(90);
/// A host sender that cannot send for this long is blocked for good.
const STUCK: Duration = Duration::from_secs(2);

/// The number after `key` in a guest line such as `... stalled after 9
/// messages`.
fn number_after(line: &str, key: &str) -> u64 {
    let rest = line
        .split_once(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
        .1;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key:?} in {line:?}"))
}

/// One guest writer step on service "stall": the host accepts the channel
/// and does not read until the guest reports its writer stalled; then it
/// verifies the whole stream. Returns the guest's final report line.
fn stalled_writer(guest: &mut Guest, stall: &SeqpacketListener, label: &str, seed: u64) -> String {
    let stream = Stream::new(label, seed, 1024, 1024, 2000).expect("stream");
    let conn = stall
        .accept(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{label}: the guest never connected to stall: {e}"));
    let stalled = guest
        .wait_for(&format!("KT: {label} writer stalled"), T)
        .unwrap_or_else(|e| {
            panic!("{label}: guest writer should block while the host does not read: {e}")
        });
    let tx_at_stall = number_after(&stalled.line, "stalled after");
    assert!(
        tx_at_stall < stream.count(),
        "{label}: the writer stalled only after sending everything ({tx_at_stall})"
    );
    let got = verify_stream(&conn, &stream, T).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(got.messages, stream.count());
    let done = guest
        .wait_for(&format!("KT: {label} writer done:"), T)
        .unwrap_or_else(|e| panic!("{label}: guest writer should finish once the host reads: {e}"));
    assert!(
        done.line.contains(&format!(
            "sent {} messages, {} bytes",
            stream.count(),
            got.bytes
        )),
        "{}",
        done.line
    );
    done.line
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn backpressure_both_ways_and_a_killed_sender() {
    let started = Instant::now();
    let dir = TempDir::new("e2e-flow").expect("temp dir");
    let stall = SeqpacketListener::bind(&dir.join("stall.sock")).expect("stall socket");
    let doomed = SeqpacketListener::bind(&dir.join("doomed.sock")).expect("doomed socket");
    let backend = BackendBuilder::new(&dir)
        .service("stall", stall.path())
        .service("doomed", doomed.path())
        .spawn()
        .expect("start kt-vhost-device");
    let listen = backend.listen_path().expect("--listen is on by default");
    let mut guest = Qemu::new("flow")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .append("kt.timeout=240")
        .spawn(&dir)
        .expect("start QEMU");

    // 1, 2: guest -> host with a host that stops reading.
    stalled_writer(&mut guest, &stall, "block", 31);
    let nonblock = stalled_writer(&mut guest, &stall, "nonblock", 32);
    let eagain = number_after(&nonblock, "bytes,");
    assert!(
        eagain > 0 && nonblock.contains("EAGAIN"),
        "the non-blocking writer should have met EAGAIN: {nonblock}"
    );

    // 3: host -> guest with a guest reader that stops reading.
    let slow = Stream::new("h-slow", 33, 1024, 1024, 3000).expect("stream");
    let ch = connect_to_guest_when_ready(&listen, "h-slow", T).expect("CONNECT h-slow");
    guest
        .wait_for("KT: h-slow reader stopped", T)
        .expect("guest stops its reader");
    let (mut seq, mut eagain, mut sent_when_blocked) = (0u64, 0u64, None);
    let mut resume = None;
    while seq < slow.count() {
        if ch.conn.try_send(&slow.message(seq)).expect("send h-slow") {
            seq += 1;
            continue;
        }
        eagain += 1;
        if sent_when_blocked.is_none() {
            // A full socket queue can be a moment's delay in the device;
            // blocked for STUCK with the reader stopped is backpressure.
            if ch.conn.writable(STUCK).expect("poll") {
                continue;
            }
            sent_when_blocked = Some(seq);
            let r = connect_to_guest_when_ready(&listen, "resume", T).expect("CONNECT resume");
            r.conn.send(b"go").expect("send go");
            resume = Some(r);
        } else {
            ch.conn.writable(T).expect("poll");
        }
    }
    let blocked_at = sent_when_blocked.unwrap_or_else(|| {
        panic!(
            "h-slow: all {} messages went out while the guest reader was stopped",
            slow.count()
        )
    });
    // Where it blocks: the guest's window (256 KiB, about 250 of these
    // messages) plus what the host socket's send buffer holds (about 1 MiB
    // here); well before the end of the stream either way.
    eprintln!("h-slow: blocked after {blocked_at} messages, {eagain} EAGAIN");
    drop(resume);
    let resumed = guest
        .wait_for("KT: h-slow reader resumed", T)
        .expect("guest reader resumes");
    assert!(
        resumed.line.contains("'go'")
            && resumed.line.contains(&format!(
                "verified {} messages, 0 lost, 0 corrupt",
                slow.count()
            )),
        "{}",
        resumed.line
    );
    drop(ch);

    // 4: a guest sender killed mid-stream.
    let doomed_stream = Stream::new("doomed", 34, 16, 256, 1_000_000_000).expect("stream");
    let conn = doomed.accept(T).expect("the guest connects to doomed");
    let got = verify_until_eof(&conn, &doomed_stream, T)
        .unwrap_or_else(|e| panic!("doomed: the host should see every message, then EOF: {e}"));
    let killed = guest
        .wait_for("KT: doomed: kt gen killed", T)
        .expect("guest kills its writer");
    assert!(killed.line.contains("(status 137)"), "{}", killed.line);
    assert_eq!(
        got.messages,
        number_after(&killed.line, "after"),
        "messages the host got vs sent by the driver: {}",
        killed.line
    );
    assert!(got.messages >= 1000, "{}", got.messages);
    guest.expect_pass(T).expect("flow workload");
    eprintln!("flow: done in {:.1?}", started.elapsed());
}
