//! End-to-end service discovery, host side (SPEC §2.2, §9; workload
//! `listeners`): the guest listens on two names with `kt listen`; the host
//! sees exactly those names in `kt-vhost-device stats --control … --json`
//! and through `LIST` on `--listen`, and after the guest stopped one of
//! them only the other. Needs the artifacts scripts/e2e.sh builds; ignored
//! by a plain `cargo test`.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::{
    connect_to_guest_when_ready, list_guest_services, Backend, BackendBuilder, Qemu, TempDir,
};

/// Wait for each guest step and each answer.
const T: Duration = Duration::from_secs(60);

/// `guest_listeners` of the one VM, as `kt-vhost-device stats --control
/// PATH --json` prints it.
fn stats_names(backend: &Backend) -> Vec<String> {
    let vms = backend.cli_stats().expect("kt-vhost-device stats --json");
    vms[0]["guest_listeners"]
        .as_array()
        .expect("guest_listeners is a list")
        .iter()
        .map(|n| n.as_str().expect("a name").to_owned())
        .collect()
}

/// Waits until both the stats and `LIST` show exactly `want` (the
/// announcements travel asynchronously), then checks they agree.
fn wait_for_names(backend: &Backend, listen: &Path, want: &[&str]) {
    let deadline = Instant::now() + T;
    loop {
        let listed = list_guest_services(listen, T).expect("LIST on --listen");
        let stats = stats_names(backend);
        if listed == want && stats == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {T:?}: LIST gives {listed:?}, stats give {stats:?}, want {want:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// One echo exchange with guest service `name`, then the channel closes.
fn session(listen: &Path, name: &str) {
    let ch = connect_to_guest_when_ready(listen, name, T)
        .unwrap_or_else(|e| panic!("CONNECT {name}: {e}"));
    let msg = format!("hello {name}");
    ch.conn.send(msg.as_bytes()).expect("send");
    let got = ch.conn.recv(T).expect("echo");
    assert_eq!(got, msg.as_bytes(), "echo from {name}");
}

#[test]
#[ignore = "needs the guest image: run make test"]
fn host_sees_the_names_the_guest_listens_on() {
    let dir = TempDir::new("e2e-listeners").expect("temp dir");
    // One service, so the policy is a real one; the guest opens none.
    let backend = BackendBuilder::new(&dir)
        .service("echo", &dir.join("echo.sock"))
        .spawn()
        .expect("start kt-vhost-device");
    let listen = backend.listen_path().expect("--listen is on by default");
    let mut guest = Qemu::new("listeners")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .spawn(&dir)
        .expect("start QEMU");
    guest
        .wait_for("KT: listening on svc-a and svc-b", BOOT_TIMEOUT)
        .expect("guest listeners started");

    wait_for_names(&backend, &listen, &["svc-a", "svc-b"]);
    session(&listen, "svc-a");
    guest
        .wait_for("KT: stopped svc-a", T)
        .expect("guest stops svc-a");
    wait_for_names(&backend, &listen, &["svc-b"]);
    session(&listen, "svc-b");
    guest.expect_pass(T).expect("listeners workload");

    let stats = backend.stats().expect("stats");
    assert_eq!(stats["device"]["malformed"], 0, "{stats}");
    assert_eq!(stats["listen_refused"], 0, "{stats}");
}
