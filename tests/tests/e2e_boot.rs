//! End-to-end, guest only: the image boots under the patched QEMU and its
//! /init runs a workload and reports `KT-RESULT: PASS`. Needs the artifacts
//! scripts/e2e.sh builds (KT_QEMU, KT_KERNEL, KT_INITRAMFS), so the tests
//! are ignored by a plain `cargo test`. Tests that need kt-vhost-device live
//! in e2e_device.rs.

use std::time::Duration;

use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::{Qemu, TempDir};

/// QEMU exits shortly after the guest powers off.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs the guest image: run make test"]
fn boots_and_runs_init_without_the_device() {
    let dir = TempDir::new("e2e-boot").expect("temp dir");
    let mut guest = Qemu::new("boot")
        .expect("QEMU and guest image configured")
        .spawn(&dir)
        .expect("start QEMU");
    guest.expect_pass(BOOT_TIMEOUT).expect("boot workload");
    let serial = guest.serial_log();
    assert!(
        serial.contains("KT: boot workload ok"),
        "workload output missing"
    );
    let status = guest.wait_exit(EXIT_TIMEOUT).expect("guest powers off");
    assert!(status.success(), "QEMU exit status {status}");
}
