//! End-to-end service discovery (workload `discovery`, SPEC §3.3): in the
//! guest `kt list` prints exactly the names of the backend's policy; a
//! `kt list --wait newsvc` started before the host rewrites its policy and
//! reloads it (SIGHUP) returns once the device announces the new set; a
//! second `kt list` prints exactly the new names; `--wait` with a timeout
//! fails cleanly. Needs the artifacts scripts/e2e.sh builds; ignored by a
//! plain `cargo test`.

use std::time::Duration;

use kt_tests::backend::policy_toml;
use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::{BackendBuilder, Qemu, TempDir};

/// Each step after boot (TCG guests are slow).
const T: Duration = Duration::from_secs(90);
/// QEMU exits shortly after the guest powers off.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the workload prints for a listing of `names` (sorted).
fn listed(label: &str, names: &[&str]) -> String {
    let mut line = format!("KT: {label} ");
    for n in names {
        line.push_str(n);
        line.push(',');
    }
    line
}

/// The text after `KT: LABEL ` in a serial line, trimmed of the console's
/// line ending.
fn listing_of(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn kt_list_shows_the_policy_and_waits_for_a_reload() {
    let dir = TempDir::new("e2e-discovery").expect("temp dir");
    // The sockets need not exist: listing names opens nothing.
    let sock = |n: &str| dir.join(&format!("{n}.sock"));
    let mut backend = BackendBuilder::new(&dir)
        .service("zeta", &sock("zeta"))
        .service("alpha", &sock("alpha"))
        .service("beta.svc", &sock("beta"))
        .spawn()
        .expect("start kt-vhost-device");
    let mut guest = Qemu::new("discovery")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .append("kt.timeout=280")
        .spawn(&dir)
        .expect("start QEMU");

    let first = guest.wait_for("KT: list1 ", BOOT_TIMEOUT).expect("kt list");
    let line = listing_of(&first.line);
    let want = listed("list1", &["alpha", "beta.svc", "zeta"]);
    assert!(
        line.ends_with(&want),
        "kt list printed {line:?}, want {want:?}"
    );

    guest
        .wait_for("KT: waiting for newsvc", T)
        .expect("kt list --wait newsvc started");
    let (gamma, newsvc) = (sock("gamma"), sock("newsvc"));
    let (alpha, zeta) = (sock("alpha"), sock("zeta"));
    let new_policy = policy_toml([
        ("newsvc", newsvc.as_path()),
        ("alpha", alpha.as_path()),
        ("gamma", gamma.as_path()),
        ("zeta", zeta.as_path()),
    ]);
    backend
        .write_policy(&new_policy)
        .expect("rewrite the policy");
    backend.reload().expect("SIGHUP the backend");
    backend
        .wait_for("new listing on 1 kt.services channel(s)", T)
        .expect("the device announces the new names to the waiting channel");
    guest
        .wait_for("KT: wait returned 0", T)
        .expect("kt list --wait newsvc returns after the reload");

    let second = guest.wait_for("KT: list2 ", T).expect("second kt list");
    let line = listing_of(&second.line);
    let want = listed("list2", &["alpha", "gamma", "newsvc", "zeta"]);
    assert!(
        line.ends_with(&want),
        "kt list after the reload printed {line:?}, want {want:?}"
    );

    guest.expect_pass(T).expect("discovery workload");
    let serial = guest.serial_log();
    assert!(
        serial.contains("KT: never: kt: never: not listed by kt.services within 1 s (--timeout)"),
        "the timeout message is missing:\n{serial}"
    );
    let stats = backend.stats().expect("backend stats");
    let vm = &stats;
    assert_eq!(vm["device"]["malformed"], 0, "{stats}");
    // list1, the waiter, list2 and the timed-out waiter: four kt.services
    // channels, none refused, all closed again.
    assert_eq!(vm["opened"], 4, "{stats}");
    assert_eq!(vm["open_refused"], 0, "{stats}");
    assert_eq!(vm["channels"].as_array().map(Vec::len), Some(0), "{stats}");
    guest.wait_exit(EXIT_TIMEOUT).expect("guest powers off");
}
