//! End-to-end with the device: QEMU hosts kerntransport through
//! vhost-user-device-pci against kt-vhost-device, and the guest sees it
//! (PCI 1af4:107c, virtio device 60). Needs KT_QEMU, KT_KERNEL,
//! KT_INITRAMFS and the kt-vhost-device binary (KT_VHOST_DEVICE or cargo's
//! target dir); scripts/e2e.sh provides them. Ignored by a plain
//! `cargo test`.

use std::time::Duration;

use kt_tests::qemu::BOOT_TIMEOUT;
use kt_tests::{BackendBuilder, Qemu, TempDir};

/// QEMU exits shortly after the guest powers off.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs the guest image: run make test"]
fn guest_sees_the_kerntransport_pci_device() {
    let dir = TempDir::new("e2e-pci").expect("temp dir");
    // One service, so the policy is a real one; this test opens no channel.
    let backend = BackendBuilder::new(&dir)
        .service("echo", &dir.join("echo.sock"))
        .spawn()
        .expect("start kt-vhost-device");
    let mut guest = Qemu::new("pci-device")
        .expect("QEMU and guest image configured")
        .vhost_user_socket(&backend.socket_path())
        .spawn(&dir)
        .expect("start QEMU");
    guest
        .expect_pass(BOOT_TIMEOUT)
        .expect("pci-device workload");
    let found = guest
        .wait_for("has ID 60", Duration::from_secs(1))
        .expect("workload reports the virtio device");
    assert!(
        found.line.contains("/sys/bus/virtio/devices/"),
        "{}",
        found.line
    );
    guest.wait_exit(EXIT_TIMEOUT).expect("guest powers off");
}
