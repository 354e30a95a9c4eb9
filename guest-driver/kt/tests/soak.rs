//! `kt soak` on the host without a VM (`--direct` to a host echo service):
//! it reopens channels after its echo service is killed and restarted and
//! still accounts for every message, and it fails, naming the loss, when
//! the service drops a message.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::{kt, stderr, stdout, wait_for, Proc, TempDir};
use kt::channel::{NbStats, Recv};
use kt::host::Listener;
use kt::soak::Tally;

const LIMIT: Duration = Duration::from_secs(120);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn echo_server(sock: &Path) -> Proc {
    let p = Proc::spawn(&["serve", "--socket", s(sock), "--mode", "echo"]);
    wait_for(sock);
    p
}

/// The totals of the final `KT-SOAK` line.
fn final_tally(out: &str) -> Tally {
    let line = out
        .lines()
        .find(|l| l.starts_with("KT-SOAK "))
        .unwrap_or_else(|| panic!("no KT-SOAK line in {out}"));
    Tally::parse(line).expect("KT-SOAK line parses")
}

#[test]
fn soak_accounts_for_every_message_across_a_killed_echo_service() {
    let t = TempDir::new("soak-kill");
    let sock = t.path("echo.sock");
    let server = echo_server(&sock);
    let log = t.path("soak.out");
    let child = kt()
        .args([
            "soak",
            "echo",
            "--direct",
            s(&sock),
            "--channels",
            "4",
            "--count",
            "30000",
            "--max-size",
            "2048",
            "--report-secs",
            "0.1",
        ])
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("log file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kt soak");
    let soak = Proc::new(child);
    // Kill the service once traffic flows, then start a new one.
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let flowing = text
            .lines()
            .filter_map(|l| l.strip_prefix("KT-SOAK-PROGRESS "))
            .filter_map(|l| Tally::parse(l).ok())
            .any(|t| t.delivered >= 200);
        if flowing {
            break;
        }
        assert!(Instant::now() < deadline, "no traffic: {text}");
        thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    std::fs::remove_file(&sock).expect("remove the dead service's socket");
    thread::sleep(Duration::from_millis(300));
    let server = echo_server(&sock);
    let out = soak.wait_output(LIMIT);
    let text = std::fs::read_to_string(&log).expect("soak output");
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let tally = final_tally(&text);
    assert_eq!(tally.sent, 30000, "{tally}");
    assert!(tally.balanced() && tally.clean(), "{tally}");
    assert!(tally.failed >= 1, "the kill cut no stream short: {tally}");
    assert!(
        tally.delivered > 0 && tally.streams > tally.failed,
        "{tally}"
    );
    drop(server);
}

#[test]
fn soak_fails_and_names_the_loss_when_the_service_drops_a_message() {
    let t = TempDir::new("soak-lossy");
    let sock = t.path("lossy.sock");
    let mut listener = Listener::bind(&sock, 65536).expect("bind");
    // Echoes every message of each connection except the 4th.
    let server = thread::spawn(move || {
        for _ in 0..2 {
            if !listener.wait(Some(LIMIT)).expect("wait") {
                return;
            }
            let ch = listener.accept().expect("accept");
            let mut buf = ch.recv_buffer();
            let mut nb = NbStats::default();
            let mut n = 0;
            while let Ok(Recv::Msg(len)) = ch.recv(&mut buf, &mut nb) {
                n += 1;
                if n != 4 && ch.send(&buf[..len], &mut nb).is_err() {
                    break;
                }
            }
        }
    });
    let out = common::run(&[
        "soak",
        "lossy",
        "--direct",
        s(&sock),
        "--channels",
        "1",
        "--count",
        "20",
        "--min-stream",
        "10",
        "--max-stream",
        "10",
        "--min-size",
        "20",
        "--report-secs",
        "0",
    ]);
    let text = stdout(&out);
    let tally = final_tally(&text);
    assert_eq!(
        (tally.sent, tally.lost, tally.streams),
        (20, 2, 2),
        "{tally}"
    );
    assert!(tally.balanced(), "{tally}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(stderr(&out).contains("2 lost"), "{}", stderr(&out));
    server.join().expect("server thread");
}

#[test]
fn soak_rejects_a_window_smaller_than_a_message() {
    let out = common::run(&[
        "soak",
        "x",
        "--direct",
        "/nonexistent",
        "--max-size",
        "4096",
        "--window",
        "100",
    ]);
    common::assert_fails_with(&out, "--window 100 is smaller than --max-size 4096");
}
