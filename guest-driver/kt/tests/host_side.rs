//! Host-side `kt` end to end without a VM: `kt serve` / `--socket` host
//! services and `--direct` / `--host` clients over real SOCK_SEQPACKET
//! sockets, plus a fake kt-vhost-device for the SPEC §9 handshake. Proves
//! gen/verify, message boundaries, non-blocking sends and error reporting.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_fails_with, run, stderr, stdout, wait_for, Proc, TempDir};
use kt::channel::{NbStats, Recv};
use kt::host::{connect_direct, Listener};

const LIMIT: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn gen_into_sink_delivers_every_message_and_byte() {
    let t = TempDir::new("sink");
    let sock = t.path("sink.sock");
    let server = Proc::spawn(&[
        "serve",
        "--socket",
        s(&sock),
        "--mode",
        "sink",
        "--channels",
        "1",
    ]);
    wait_for(&sock);
    let gen = run(&[
        "gen",
        "--direct",
        s(&sock),
        "--count",
        "500",
        "--min-size",
        "1",
        "--max-size",
        "5000",
    ]);
    assert!(gen.status.success(), "{gen:?}");
    let sent = stdout(&gen);
    let bytes = sent
        .trim()
        .strip_prefix("sent 500 messages, ")
        .and_then(|r| r.strip_suffix(" bytes"))
        .unwrap_or_else(|| panic!("unexpected gen output {sent:?}"));
    let out = server.wait_output(LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "connection 1 on {}: received 500 messages, {bytes} bytes",
            sock.display()
        )
    );
    assert!(!sock.exists(), "serve left its socket behind");
}

#[test]
fn gen_and_verify_in_both_directions() {
    let t = TempDir::new("both");
    let sock = t.path("v.sock");
    // Host service verifies, client generates (sizes 1..=3000, incl. < 16).
    let verifier = Proc::spawn(&[
        "verify",
        "--socket",
        s(&sock),
        "--count",
        "400",
        "--max-size",
        "3000",
        "--seed",
        "7",
        "--timeout",
        "30",
    ]);
    wait_for(&sock);
    let gen = run(&[
        "gen",
        "--direct",
        s(&sock),
        "--count",
        "400",
        "--max-size",
        "3000",
        "--seed",
        "7",
    ]);
    assert!(gen.status.success(), "{gen:?}");
    let v = verifier.wait_output(LIMIT);
    assert!(v.status.success(), "{v:?}");
    assert_eq!(
        stdout(&v).trim(),
        "verified 400 messages, 0 lost, 0 corrupt"
    );

    // Host service generates (source mode), client verifies.
    let sock2 = t.path("src.sock");
    let source = Proc::spawn(&[
        "serve",
        "--socket",
        s(&sock2),
        "--mode",
        "source",
        "--count",
        "300",
        "--min-size",
        "1",
        "--max-size",
        "20",
        "--channels",
        "1",
    ]);
    wait_for(&sock2);
    let v = run(&[
        "verify",
        "--direct",
        s(&sock2),
        "--count",
        "300",
        "--max-size",
        "20",
        "--timeout",
        "30",
    ]);
    assert!(v.status.success(), "{v:?}");
    assert_eq!(
        stdout(&v).trim(),
        "verified 300 messages, 0 lost, 0 corrupt"
    );
    assert!(source.wait_output(LIMIT).status.success());
}

#[test]
fn verify_reports_corruption_and_loss() {
    let t = TempDir::new("bad");
    let sock = t.path("v.sock");
    // Different seed: the first message differs.
    let verifier = Proc::spawn(&[
        "verify",
        "--socket",
        s(&sock),
        "--count",
        "50",
        "--seed",
        "2",
        "--min-size",
        "64",
        "--max-size",
        "64",
        "--timeout",
        "30",
    ]);
    wait_for(&sock);
    let _ = run(&[
        "gen",
        "--direct",
        s(&sock),
        "--count",
        "50",
        "--min-size",
        "64",
        "--max-size",
        "64",
    ]);
    let v = verifier.wait_output(LIMIT);
    assert_fails_with(&v, "verify: seq 0 corrupt: byte 12 of 64");
    assert_eq!(stdout(&v).trim(), "verified 0 messages, 0 lost, 1 corrupt");

    // Fewer messages than expected: the tail is lost.
    let verifier = Proc::spawn(&[
        "verify",
        "--socket",
        s(&sock),
        "--count",
        "20",
        "--timeout",
        "30",
    ]);
    wait_for(&sock);
    let g = run(&["gen", "--direct", s(&sock), "--count", "12"]);
    assert!(g.status.success());
    let v = verifier.wait_output(LIMIT);
    assert_fails_with(&v, "channel closed after 12 of 20 messages");
    assert_eq!(stdout(&v).trim(), "verified 12 messages, 8 lost, 0 corrupt");
}

#[test]
fn boundaries_are_kept_for_texts_files_and_empty_messages() {
    let t = TempDir::new("bounds");
    let sock = t.path("p.sock");
    let file = t.path("blob");
    let blob: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &blob).unwrap();
    let printer = Proc::spawn(&[
        "recv",
        "--socket",
        s(&sock),
        "--hex",
        "--count",
        "5",
        "--timeout",
        "30",
    ]);
    wait_for(&sock);
    let send = run(&[
        "send",
        "--direct",
        s(&sock),
        "a",
        "",
        "line1\nline2",
        "bb",
        "--file",
        s(&file),
    ]);
    assert!(send.status.success(), "{send:?}");
    let out = printer.wait_output(LIMIT);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        lines,
        vec![
            hex(b"a"),
            String::new(),
            hex(b"line1\nline2"),
            hex(b"bb"),
            hex(&blob)
        ]
    );
}

#[test]
fn nonblocking_gen_counts_eagain_and_loses_nothing() {
    let t = TempDir::new("nb");
    let sock = t.path("nb.sock");
    let mut listener = Listener::bind(&sock, 65536).unwrap();
    let gen = Proc::spawn(&[
        "gen",
        "--direct",
        s(&sock),
        "--nonblock",
        "--count",
        "20000",
        "--min-size",
        "1000",
        "--max-size",
        "1000",
    ]);
    let ch = listener.accept().unwrap();
    // Let the generator fill the socket before draining it.
    std::thread::sleep(Duration::from_millis(500));
    let mut v = kt::traffic::Verifier::new(kt::traffic::Params::new(1, 1000, 1000).unwrap());
    let mut buf = ch.recv_buffer();
    let mut nb = NbStats::default();
    while let Recv::Msg(n) = ch.recv(&mut buf, &mut nb).unwrap() {
        assert_eq!(v.check(&buf[..n]), kt::traffic::Outcome::Ok);
    }
    assert_eq!(v.counts().verified, 20000);
    let out = gen.wait_output(LIMIT);
    assert!(out.status.success(), "{out:?}");
    let line = stdout(&out);
    let eagain: u64 = line
        .trim()
        .strip_prefix("sent 20000 messages, 20000000 bytes, ")
        .and_then(|r| r.strip_suffix(" EAGAIN"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {line:?}"));
    assert!(eagain > 0, "20 MB into a full socket without EAGAIN");
}

/// A fake kt-vhost-device: answers one CONNECT with `reply`; after `OK`
/// relays the channel to the host service at `relay_to`.
fn fake_device(
    sock: &Path,
    want_name: &'static str,
    reply: &'static str,
    relay_to: Option<PathBuf>,
) -> std::thread::JoinHandle<()> {
    let mut listener = Listener::bind(sock, 65536).expect("bind device socket");
    std::thread::spawn(move || {
        let guest = listener.accept().expect("accept");
        let mut buf = guest.recv_buffer();
        let mut nb = NbStats::default();
        let Recv::Msg(n) = guest.recv(&mut buf, &mut nb).expect("recv CONNECT") else {
            panic!("no CONNECT")
        };
        assert_eq!(&buf[..n], format!("CONNECT {want_name}\n").as_bytes());
        guest.send(reply.as_bytes(), &mut nb).expect("send reply");
        let Some(path) = relay_to else { return };
        let service = connect_direct(&path, 65536).expect("connect service");
        while let Recv::Msg(n) = guest.recv(&mut buf, &mut nb).expect("relay recv") {
            service.send(&buf[..n], &mut nb).expect("relay send");
        }
    })
}

#[test]
fn host_connect_handshake_then_gen() {
    let t = TempDir::new("hs");
    let dev = t.path("dev.sock");
    let svc = t.path("svc.sock");
    let verifier = Proc::spawn(&[
        "verify",
        "--socket",
        s(&svc),
        "--count",
        "200",
        "--max-size",
        "2000",
        "--timeout",
        "30",
    ]);
    wait_for(&svc);
    let device = fake_device(&dev, "telemetry", "OK 2147483649\n", Some(svc.clone()));
    let gen = run(&[
        "--host",
        s(&dev),
        "gen",
        "telemetry",
        "--count",
        "200",
        "--max-size",
        "2000",
    ]);
    assert!(gen.status.success(), "{gen:?}");
    device.join().unwrap();
    let v = verifier.wait_output(LIMIT);
    assert!(v.status.success(), "{v:?}");
    assert_eq!(
        stdout(&v).trim(),
        "verified 200 messages, 0 lost, 0 corrupt"
    );
}

/// A fake device that answers one `LIST` with `reply`.
fn fake_lister(sock: &Path, reply: &'static str) -> std::thread::JoinHandle<()> {
    let mut listener = Listener::bind(sock, 65536).expect("bind device socket");
    std::thread::spawn(move || {
        let host = listener.accept().expect("accept");
        let mut buf = host.recv_buffer();
        let mut nb = NbStats::default();
        let Recv::Msg(n) = host.recv(&mut buf, &mut nb).expect("recv LIST") else {
            panic!("no LIST")
        };
        assert_eq!(&buf[..n], b"LIST\n");
        host.send(reply.as_bytes(), &mut nb).expect("send reply");
    })
}

#[test]
fn host_list_prints_the_guests_listeners_and_refuses_bad_answers() {
    let t = TempDir::new("list");
    let dev = t.path("dev.sock");
    let device = fake_lister(&dev, "OK 2\ngecho\nk.echo\n");
    let out = run(&["--host", s(&dev), "list"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "gecho\nk.echo\n");
    device.join().unwrap();
    for (reply, want) in [
        ("OK 3\na\nb\n", "kt: LIST:"),
        ("OK 1\nbad\tname\n", "kt: LIST:"),
        ("ERR 111 no driver\n", "kt: LIST: "),
    ] {
        std::fs::remove_file(&dev).ok();
        let device = fake_lister(&dev, reply);
        let out = run(&["--host", s(&dev), "list"]);
        assert_fails_with(&out, want);
        device.join().unwrap();
    }
    let out = run(&["--host", s(&dev), "list", "--wait", "x"]);
    assert_fails_with(&out, "--wait is guest-side");
}

#[test]
fn host_connect_refusals_are_one_line_errors() {
    let t = TempDir::new("refuse");
    for (reply, want) in [
        (
            "ERR 2 no such service\n",
            "kt: svc: no such service (ENOENT)",
        ),
        ("ERR 13 denied by policy\n", "kt: svc: refused (EACCES)"),
        (
            "ERR 111 nobody listens\n",
            "kt: svc: connection refused — nobody is serving it (ECONNREFUSED)",
        ),
    ] {
        let dev = t.path("dev.sock");
        let device = fake_device(&dev, "svc", reply, None);
        let out = run(&["--host", s(&dev), "send", "svc", "hello"]);
        assert_fails_with(&out, want);
        device.join().unwrap();
    }
}

#[test]
fn bench_against_an_echo_server_prints_a_table() {
    let t = TempDir::new("bench");
    let sock = t.path("echo.sock");
    let server = Proc::spawn(&[
        "serve",
        "--socket",
        s(&sock),
        "--mode",
        "echo",
        "--channels",
        "1",
    ]);
    wait_for(&sock);
    let out = run(&[
        "bench",
        "--direct",
        s(&sock),
        "--iterations",
        "50",
        "--bulk-mb",
        "1",
        "--small-count",
        "500",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for row in [
        "ping-pong latency p50 (64 B)",
        "ping-pong latency p99 (64 B)",
        "throughput, one way (65536 B messages)",
        "message rate (16 B messages)",
    ] {
        assert!(text.contains(row), "missing {row:?} in\n{text}");
    }
    assert!(server.wait_output(LIMIT).status.success());
}

#[test]
fn bench_fairness_measures_quiet_channels_idle_and_next_to_a_flood() {
    let t = TempDir::new("fairness");
    let sock = t.path("echo.sock");
    // 20 quiet channels and the flooding one, each to its end.
    let server = Proc::spawn(&[
        "serve",
        "--socket",
        s(&sock),
        "--mode",
        "echo",
        "--channels",
        "21",
    ]);
    wait_for(&sock);
    let out = run(&[
        "bench",
        "--direct",
        s(&sock),
        "--fairness",
        "21",
        "--iterations",
        "400",
        "--timeout",
        "30",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("fairness, 21 channels") && text.contains("over the 20 quiet ones"),
        "{text}"
    );
    for row in [
        "round trip p50, idle",
        "round trip p99, idle",
        "round trip p50, one channel flooding",
        "round trip p99, one channel flooding",
        "p99 flooding / idle (target <= 2x)",
        "flood rate (16 B, echoed)",
    ] {
        assert!(text.contains(row), "missing {row:?} in\n{text}");
    }
    // The flood moved messages (its rate row is not 0).
    let rate = text
        .lines()
        .find(|l| l.starts_with("flood rate"))
        .and_then(|l| l.split_whitespace().rev().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(rate > 0.0, "{text}");
    assert!(server.wait_output(LIMIT).status.success());
    // One-way floods instead of the echoed one: host -> guest from a
    // source, guest -> host into a sink.
    let src = t.path("source.sock");
    let sink = t.path("sink.sock");
    let _source = Proc::spawn(&[
        "serve",
        "--socket",
        s(&src),
        "--mode",
        "source",
        "--count",
        "100000000",
        "--min-size",
        "64",
        "--max-size",
        "64",
    ]);
    let _sink = Proc::spawn(&["serve", "--socket", s(&sink), "--mode", "sink"]);
    wait_for(&src);
    wait_for(&sink);
    for (flag, peer, want) in [
        ("--flood-from", &src, "flood rate (read from"),
        ("--flood-to", &sink, "flood rate (16 B, written to"),
    ] {
        let echo = Proc::spawn(&[
            "serve",
            "--socket",
            s(&sock),
            "--mode",
            "echo",
            "--channels",
            "20",
        ]);
        wait_for(&sock);
        let out = run(&[
            "bench",
            "--direct",
            s(&sock),
            "--fairness",
            "21",
            flag,
            s(peer),
            "--iterations",
            "400",
            "--timeout",
            "30",
        ]);
        assert!(out.status.success(), "{out:?}");
        let text = stdout(&out);
        assert!(
            text.contains("round trip p99, one channel flooding") && text.contains(want),
            "{text}"
        );
        assert!(echo.wait_output(LIMIT).status.success());
    }
    // Bad input is a usage error, not a panic.
    for (args, want) in [
        (&["--fairness", "1"][..], "at least 2 channels"),
        (&["--fairness", "3", "--direction", "both"][..], "echo peer"),
        (
            &["--fairness", "3", "--flood-from", "a", "--flood-to", "b"][..],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["bench", "--direct", s(&sock)];
        all.extend_from_slice(args);
        let out = run(&all);
        assert!(
            !out.status.success() && stderr(&out).contains(want),
            "{out:?}"
        );
    }
}

#[test]
fn bench_against_the_bench_peer_measures_each_direction() {
    let t = TempDir::new("benchpeer");
    let sock = t.path("bench.sock");
    let pids = t.path("pids");
    // A listed PID that does not exist counts nothing; this one does.
    std::fs::write(&pids, format!("{} 999999999\n", std::process::id())).unwrap();
    let server = Proc::spawn(&[
        "serve",
        "--socket",
        s(&sock),
        "--mode",
        "bench",
        "--cpu-pids",
        s(&pids),
        "--channels",
        "1",
    ]);
    wait_for(&sock);
    let out = run(&[
        "bench",
        "--direct",
        s(&sock),
        "--direction",
        "both",
        "--iterations",
        "50",
        "--bulk-size",
        "65536",
        "--bulk-size",
        "4096",
        "--bulk-mb",
        "1",
        "--small-size",
        "64",
        "--small-count",
        "500",
        "--timeout",
        "30",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let mut rows = vec![
        "ping-pong latency p50 (64 B)".to_string(),
        "ping-pong latency p99 (64 B)".to_string(),
    ];
    for way in ["to host", "from host"] {
        for size in [64, 65536, 4096] {
            for m in [
                "message rate",
                "throughput",
                "guest CPU per message",
                "host CPU per message",
                "guest CPU per MB",
                "host CPU per MB",
            ] {
                rows.push(format!("{m}, {way} ({size} B messages)"));
            }
        }
    }
    for row in &rows {
        assert!(text.contains(row.as_str()), "missing {row:?} in\n{text}");
    }
    // No echoed streams against the bench peer.
    assert!(!text.contains("one way"), "{text}");
    assert!(server.wait_output(LIMIT).status.success());
}

#[test]
fn bench_peer_refuses_plain_messages() {
    let t = TempDir::new("benchpeer-plain");
    let sock = t.path("bench.sock");
    let server = Proc::spawn(&[
        "serve",
        "--socket",
        s(&sock),
        "--mode",
        "bench",
        "--channels",
        "1",
    ]);
    wait_for(&sock);
    let ch = connect_direct(&sock, 65536).unwrap();
    ch.send(b"hello", &mut NbStats::default()).unwrap();
    let out = server.wait_output(LIMIT);
    assert!(
        common::stderr(&out).contains("expected a kt-bench request"),
        "{out:?}"
    );
}

#[test]
fn bench_watchdog_reports_a_stall() {
    let t = TempDir::new("benchstall");
    let sock = t.path("stall.sock");
    // A host service that accepts and never reads: the sender's socket
    // fills and its sends block.
    let mut l = Listener::bind(&sock, 65536).unwrap();
    let accepter = std::thread::spawn(move || {
        assert!(l.wait(Some(LIMIT)).unwrap());
        let ch = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(8));
        drop(ch);
    });
    let out = run(&[
        "bench",
        "--direct",
        s(&sock),
        "--direction",
        "to-host",
        "--iterations",
        "0",
        "--small-count",
        "0",
        "--bulk-size",
        "65536",
        "--bulk-mb",
        "100",
        "--timeout",
        "2",
    ]);
    assert!(!out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with("stalled after ") && text.contains("to host, 65536 B messages: "),
        "{text}"
    );
    assert!(
        common::stderr(&out).contains("kt: bench: stalled after "),
        "{out:?}"
    );
    accepter.join().unwrap();
}

#[test]
fn echo_mode_answers_each_message() {
    let t = TempDir::new("echo");
    let sock = t.path("echo.sock");
    let _server = Proc::spawn(&["serve", "--socket", s(&sock), "--mode", "echo"]);
    wait_for(&sock);
    let ch = connect_direct(&sock, 65536).unwrap();
    let mut nb = NbStats::default();
    let mut buf = ch.recv_buffer();
    for msg in [&b"x"[..], &[0u8; 65536][..], b"last"] {
        ch.send(msg, &mut nb).unwrap();
        assert_eq!(ch.recv(&mut buf, &mut nb).unwrap(), Recv::Msg(msg.len()));
        assert_eq!(&buf[..msg.len()], msg);
    }
}
