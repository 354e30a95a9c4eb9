//! Multiqueue end to end (issue 11, SPEC §1.4; workload `multiqueue`,
//! docs/e2e.md). One real TCG guest with 2 vCPUs per case:
//!
//! - **two pairs**: `kt-vhost-device --queue-pairs 2` behind QEMU with the
//!   five queues of two pairs. The driver must set up 2 pairs; a verified
//!   echo soak pinned to each vCPU and a host soak of a guest listener run
//!   at once; nothing is lost, no message arrives on a wrong pair (guest
//!   counter), and the device's per-pair totals show traffic both ways on
//!   both pairs, adding up to its device totals.
//! - **VMM without the queues**: the same device (it offers
//!   `KT_F_MULTIQUEUE`) behind QEMU with three queues: the driver falls
//!   back to one pair and everything works.
//! - **device without multiqueue**: `--queue-pairs 1` (the bit is not
//!   offered): one pair, everything works.
//!
//! Needs the artifacts scripts/e2e.sh builds; ignored by a plain
//! `cargo test`.

use std::path::Path;
use std::time::{Duration, Instant};

use kt::soak::Tally;
use kt_tests::qemu::{KtDevice, BOOT_TIMEOUT};
use kt_tests::{
    connect_to_guest_when_ready, Backend, BackendBuilder, KtProcess, KtTool, Qemu, TempDir,
};

/// Each step after boot (TCG guests are slow).
const T: Duration = Duration::from_secs(120);

/// Messages each guest soak sends (over its two channels).
const GUEST_COUNT: u64 = 4000;

/// Messages the host soak sends into the guest listener.
const HOST_COUNT: u64 = 2000;

/// Parses the `KT-SOAK LABEL:` line in `text` and checks that nothing was
/// lost, reordered, duplicated, corrupted or refused.
fn clean_soak(text: &str, label: &str) -> Tally {
    let prefix = format!("KT-SOAK {label}: ");
    let line = text
        .lines()
        .find_map(|l| l.find(&prefix).map(|i| l[i..].trim_end().to_string()))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"));
    let t = Tally::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(
        t.clean() && t.refused == 0 && t.failed == 0 && t.delivered == t.sent,
        "nothing lost, refused or failed: {line}"
    );
    t
}

/// A host soak of guest service `name` through `listen`, `HOST_COUNT`
/// messages.
fn host_soak(tool: &KtTool, listen: &Path, name: &str) -> KtProcess {
    let count = HOST_COUNT.to_string();
    tool.spawn(
        "host-uecho",
        [
            "--host".as_ref(),
            listen.as_os_str(),
            "soak".as_ref(),
            name.as_ref(),
            "--channels".as_ref(),
            "2".as_ref(),
            "--count".as_ref(),
            count.as_ref(),
            "--max-size".as_ref(),
            "4096".as_ref(),
            "--label".as_ref(),
            "host-uecho".as_ref(),
        ],
    )
    .expect("start kt soak on the host")
}

/// The device's totals per queue pair (`pairs` of `stats`, closed
/// channels included; empty with one pair): (msgs to host, msgs to guest)
/// each, after checking that they add up to the device's totals.
fn pair_msgs(backend: &Backend) -> Vec<(u64, u64)> {
    let s = backend.stats().expect("stats");
    let n =
        |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let pairs: Vec<(u64, u64)> = s["pairs"]
        .as_array()
        .unwrap_or_else(|| panic!("no per-pair totals in the stats: {s}"))
        .iter()
        .map(|p| (n(p, "msgs_to_host"), n(p, "msgs_to_guest")))
        .collect();
    if !pairs.is_empty() {
        let sum = pairs
            .iter()
            .fold((0, 0), |(h, g), &(ph, pg)| (h + ph, g + pg));
        let dev = &s["device"];
        assert_eq!(
            sum,
            (n(dev, "msgs_to_host"), n(dev, "msgs_to_guest")),
            "the pairs' totals add up to the device's: {s}"
        );
    }
    pairs
}

/// Waits until the device reports `name` among the guest's listeners.
fn wait_guest_listener(backend: &Backend, name: &str) {
    let deadline = Instant::now() + T;
    loop {
        let s = backend.stats().expect("stats");
        let names = s["guest_listeners"].as_array().cloned().unwrap_or_default();
        if names.iter().any(|n| n == name) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never announced listener {name}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Boots one guest on a backend with `--queue-pairs device_pairs` behind
/// QEMU with the queues of `vmm_pairs` pairs, expects the driver to use
/// `want` pairs, runs the workload to its end and returns the backend's
/// per-pair message counters.
fn run_case(case: &str, device_pairs: u16, vmm_pairs: u16, want: u16) -> Vec<(u64, u64)> {
    let started = Instant::now();
    let dir = TempDir::new(&format!("e2e-mq-{case}")).expect("temp dir");
    let tool = KtTool::new(&dir).expect("host build of kt");
    let echo_sock = dir.join("echo.sock");
    let mut echo = tool
        .serve("echo", &echo_sock, "echo")
        .expect("kt serve echo");
    let mut backend = BackendBuilder::new(&dir)
        .service("echo", &echo_sock)
        .args(["--queue-pairs", &device_pairs.to_string()])
        .spawn()
        .expect("start kt-vhost-device");
    let listen = backend.listen_path().expect("--listen is on by default");
    let mut guest = Qemu::new("multiqueue")
        .expect("QEMU and guest image configured")
        .label(case)
        .device(KtDevice::with_pairs(&backend.socket_path(), vmm_pairs))
        .smp(2)
        .memory_mb(512)
        .append(&format!("kt.pairs={want}"))
        .append(&format!("kt.mq_count={GUEST_COUNT}"))
        .append("kt.timeout=900")
        .spawn(&dir)
        .expect("start QEMU");
    guest
        .wait_for(&format!("KT: queue pairs {want}"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{case}: the driver uses {want} pair(s): {e}"));
    guest.wait_for("KT: listening", T).expect("guest listeners");
    wait_guest_listener(&backend, "uecho");
    let mut host = host_soak(&tool, &listen, "uecho");
    guest.wait_for("KT: soaks done", T).expect("guest soaks");
    let log = guest.serial_log();
    let cpu0 = clean_soak(&log, "cpu0");
    let cpu1 = clean_soak(&log, "cpu1");
    let out = host.wait_success(T).expect("host soak of uecho");
    let h = clean_soak(&out, "host-uecho");
    let ctl = connect_to_guest_when_ready(&listen, "ctl", T).expect("CONNECT ctl");
    ctl.conn.send(b"bye").expect("send bye");
    guest
        .wait_for("KT: counters ok", T)
        .expect("no message on a wrong pair");
    guest.expect_pass(T).expect("workload multiqueue");
    guest.wait_exit(T).expect("guest powers off");
    assert!(echo.is_running(), "kt serve echo died: {}", echo.output());
    let pairs = pair_msgs(&backend);
    backend.kill().expect("stop kt-vhost-device");
    println!(
        "e2e_multiqueue {case}: {want} pair(s); guest soaks {} + {} echoes, host soak {}; \
         per pair (to host, to guest): {pairs:?}; {:.0?}",
        cpu0.delivered,
        cpu1.delivered,
        h.delivered,
        started.elapsed()
    );
    pairs
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn two_pairs_carry_both_vcpus_channels() {
    let pairs = run_case("two-pairs", 2, 2, 2);
    // The cpu0 soak's channels live on pair 0 with the host's channels
    // into uecho (the device opens its channels there) and the "bye"; the
    // cpu1 soak's on pair 1. Every message of each is counted on its own
    // pair and nowhere else.
    let (g, h) = (GUEST_COUNT, HOST_COUNT);
    assert_eq!(
        pairs,
        [(g + h, g + h + 1), (g, g)],
        "per pair (to host, to guest)"
    );
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn one_pair_when_the_vmm_has_only_three_queues() {
    let pairs = run_case("vmm-three-queues", 2, 1, 1);
    // The device serves what the driver set up: pair 0 only.
    assert_eq!(pairs.len(), 2, "a two-pair device: {pairs:?}");
    assert!(pairs[0].0 > 0 && pairs[0].1 > 0, "{pairs:?}");
    assert_eq!(pairs[1], (0, 0), "traffic on pair 1: {pairs:?}");
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn one_pair_with_a_device_without_multiqueue() {
    let pairs = run_case("device-one-pair", 1, 1, 1);
    assert!(
        pairs.is_empty(),
        "a one-pair device has no per-pair totals: {pairs:?}"
    );
}
