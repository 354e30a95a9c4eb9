//! Two real guests on one backend (issue 11; workload `vms`, docs/e2e.md):
//! one `kt-vhost-device --config` process serves VMs `a` (guest_id 1) and
//! `b` (guest_id 2) whose policies differ — `a` may open host service
//! `echo-a` only, `b` `echo-b` only, each a `kt serve --mode echo`. Both
//! TCG guests boot at once, each sees the other's service refused
//! (`ENOENT`), and both stream verified echo traffic (`kt soak`) at the
//! same time. Then VM a's QEMU is killed with SIGKILL mid-stream while b's
//! stream goes on: b must end with every message delivered in order and
//! verified, the backend must stay up, and `kt-vhost-device stats --json`
//! must show a inactive and b's counts exactly. Needs the artifacts
//! scripts/e2e.sh builds; ignored by a plain `cargo test`.

use std::thread;
use std::time::{Duration, Instant};

use kt::soak::Tally;
use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::{
    connect_to_guest_when_ready, Backend, BackendBuilder, Guest, KtTool, Qemu, TempDir,
};

/// Wait for each guest step, answer and state change.
const T: Duration = Duration::from_secs(60);

/// Echoes each guest must have had verified before VM a is killed.
const BEFORE_KILL: u64 = 5000;

/// Echoes b must have had verified after the kill before it is told to
/// stop (about 4 s of its stream on the 2-core machine).
const AFTER_KILL: u64 = 20_000;

/// Boots VM `vm` (workload `vms`) on the backend's socket for it, its
/// own service `own` and the other VM's `other`.
fn boot(backend: &Backend, dir: &TempDir, vm: &str, own: &str, other: &str) -> Guest {
    Qemu::new("vms")
        .expect("QEMU and guest image configured")
        .label(&format!("vm-{vm}"))
        .vhost_user_socket(&backend.vm_socket_path(vm))
        .smp(1)
        .memory_mb(256)
        .append(&format!("kt.own={own}"))
        .append(&format!("kt.other={other}"))
        .append("kt.timeout=600")
        .spawn(dir)
        .unwrap_or_else(|e| panic!("start QEMU for VM {vm}: {e}"))
}

/// The last `KT-SOAK-PROGRESS LABEL:` line of `guest`'s serial log, parsed
/// (zeros before the first).
fn progress(guest: &Guest, label: &str) -> Tally {
    let prefix = format!("KT-SOAK-PROGRESS {label}: ");
    guest
        .serial_log()
        .lines()
        .rev()
        .filter_map(|l| l.find(&prefix).map(|i| l[i..].to_string()))
        .find_map(|l| Tally::parse(&l).ok())
        .unwrap_or_default()
}

/// Waits until `guest`'s soak `label` has had at least `n` echoes verified.
fn wait_delivered(guest: &Guest, label: &str, n: u64) -> Tally {
    let deadline = Instant::now() + T;
    loop {
        let t = progress(guest, label);
        if t.delivered >= n {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: {} echoes verified after {T:?}, want {n}: {t}",
            t.delivered
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the backend reports VM `vm` inactive (its frontend gone).
fn wait_inactive(backend: &Backend, vm: &str) -> serde_json::Value {
    let deadline = Instant::now() + T;
    loop {
        let s = backend.vm_stats(vm).expect("stats of one VM");
        if s["active"] == false {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "VM {vm} still active {T:?} after its QEMU died: {s}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn counter(s: &serde_json::Value, path: &[&str]) -> u64 {
    let v = path.iter().fold(s, |v, key| &v[*key]);
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {} in {s}", path.join(".")))
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn two_guests_on_one_backend_and_one_killed_mid_stream() {
    let started = Instant::now();
    let dir = TempDir::new("e2e-vms").expect("temp dir");
    let tool = KtTool::new(&dir).expect("host build of kt");
    let (sock_a, sock_b) = (dir.join("echo-a.sock"), dir.join("echo-b.sock"));
    let mut echo_a = tool
        .serve("echo-a", &sock_a, "echo")
        .expect("kt serve echo-a");
    let mut echo_b = tool
        .serve("echo-b", &sock_b, "echo")
        .expect("kt serve echo-b");
    let mut backend = BackendBuilder::new(&dir)
        .vm("a", 1, &[("echo-a", sock_a.as_path())])
        .vm("b", 2, &[("echo-b", sock_b.as_path())])
        .spawn()
        .expect("start kt-vhost-device --config");

    let mut a = boot(&backend, &dir, "a", "echo-a", "echo-b");
    let mut b = boot(&backend, &dir, "b", "echo-b", "echo-a");
    for (g, id, own, other) in [
        (&mut a, 1, "echo-a", "echo-b"),
        (&mut b, 2, "echo-b", "echo-a"),
    ] {
        g.wait_for(&format!("KT: guest_id {id}"), BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("guest {id} bound to its VM: {e}"));
        g.wait_for(
            &format!("KT: {other} refused: kt: {other}: no such service (ENOENT)"),
            T,
        )
        .unwrap_or_else(|e| panic!("guest {id}: {other} refused: {e}"));
        g.wait_for(&format!("KT: streaming to {own}"), T)
            .unwrap_or_else(|e| panic!("guest {id} streams: {e}"));
    }
    // Both soaks run until told to stop, so both stream at once here.
    wait_delivered(&a, "echo-a", BEFORE_KILL);
    wait_delivered(&b, "echo-b", BEFORE_KILL);

    // VM a dies mid-stream; b's stream goes on.
    let a_before = progress(&a, "echo-a");
    let b_at_kill = progress(&b, "echo-b");
    a.kill().expect("SIGKILL VM a's QEMU");
    assert!(
        !a.serial_log().contains("KT-SOAK echo-a:"),
        "VM a's soak had ended before the kill"
    );
    let a_stats = wait_inactive(&backend, "a");
    wait_delivered(&b, "echo-b", b_at_kill.delivered + AFTER_KILL);
    assert!(backend.is_running(), "the backend died with VM a");
    assert!(b.serial_log().contains("KT-SOAK-PROGRESS echo-b:"));

    // b stops its soak, which drains and reports.
    let ctl = connect_to_guest_when_ready(&backend.vm_listen_path("b"), "ctl", T)
        .expect("CONNECT ctl in VM b");
    ctl.conn.send(b"stop").expect("send stop");
    let done = b.wait_for("KT-SOAK echo-b:", T).expect("b's soak report");
    b.wait_for("KT: soak done", T).expect("b's soak passed");
    let line = &done.line[done.line.find("KT-SOAK echo-b:").unwrap_or(0)..];
    let t = Tally::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert!(t.balanced(), "{line}");
    assert!(
        t.clean() && t.refused == 0 && t.failed == 0 && t.delivered == t.sent,
        "VM b lost nothing, nothing refused or failed: {line}"
    );
    assert!(
        t.delivered >= b_at_kill.delivered + AFTER_KILL,
        "b went on after the kill: {line}, {} at the kill",
        b_at_kill.delivered
    );

    // The daemon's view: a is gone, b's counters match what b's soak did.
    let vms = backend.cli_stats().expect("kt-vhost-device stats --json");
    let names: Vec<&str> = vms.iter().filter_map(|v| v["vm"].as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let (sa, sb) = (&vms[0], &vms[1]);
    assert_eq!(
        (sa["guest_id"].as_u64(), sb["guest_id"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(sa["active"], false, "{sa}");
    assert_eq!(sb["active"], true, "{sb}");
    for (s, vm) in [(sa, "a"), (sb, "b")] {
        assert_eq!(counter(s, &["open_refused"]), 1, "VM {vm}: {s}");
        assert_eq!(counter(s, &["device", "malformed"]), 0, "VM {vm}: {s}");
        assert_eq!(counter(s, &["resets"]), 0, "VM {vm}: {s}");
    }
    // Every echo a verified crossed the device twice; its counters stayed
    // where the kill left them.
    for key in ["msgs_to_host", "msgs_to_guest"] {
        assert!(
            counter(sa, &["device", key]) >= a_before.delivered,
            "VM a: {key} below the {} echoes verified: {sa}",
            a_before.delivered
        );
        assert_eq!(
            counter(sa, &["device", key]),
            counter(&a_stats, &["device", key]),
            "VM a's {key} changed after it died"
        );
    }
    // b's soak messages went out and came back; plus the host's "stop".
    assert_eq!(counter(sb, &["device", "msgs_to_host"]), t.sent, "{sb}");
    assert_eq!(
        counter(sb, &["device", "msgs_to_guest"]),
        t.delivered + 1,
        "{sb}"
    );

    ctl.conn.send(b"bye").expect("send bye");
    b.expect_pass(T).expect("VM b's workload");
    b.wait_exit(T).expect("VM b powers off");
    assert!(backend.is_running(), "the backend outlived both guests");
    wait_inactive(&backend, "b");
    for (p, name) in [(&mut echo_a, "echo-a"), (&mut echo_b, "echo-b")] {
        assert!(p.is_running(), "kt serve {name} died: {}", p.output());
    }
    backend.kill().expect("stop kt-vhost-device");
    println!(
        "e2e_vms: VM b: {line}; VM a killed after {} echoes; {:.0?}",
        a_before.delivered,
        started.elapsed()
    );
}
