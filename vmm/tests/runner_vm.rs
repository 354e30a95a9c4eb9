//! The full boot tests, inside the KVM runner VM here or directly on a host
//! with a real /dev/kvm: `images/runner/test.sh` (Debian's stock 6.12 cloud
//! kernel under kt-vmm with 2 vCPUs and two vhost-user devices) and
//! `images/runner/test-kt-device.sh` (the project's guest image with
//! kt-vhost-device and one echo round trip) and `images/runner/test-e2e.sh`
//! (both of those checks' scope and more, in one runner boot: both
//! directions, k.echo, ordering, backpressure, backend restart). Ignored by
//! default because they take minutes:
//! `cargo test -p kt-vmm --test runner_vm -- --ignored`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Kills the test script and everything it started (its own process
/// group: QEMU, kt-vmm, backends) if the test fails or times out.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            // SAFETY: plain kill(2) on the process group this test created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

fn run_script(name: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../images/runner")
        .join(name);
    let mut g = Guard(
        Command::new(&script)
            .process_group(0)
            .spawn()
            .expect("start the runner script"),
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(s) = g.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "{name} timed out");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{name} failed: {status}");
}

#[test]
#[ignore = "boots Linux in the KVM runner VM (1-2 minutes)"]
fn stock_kernel_boots_with_vhost_user_devices() {
    run_script("test.sh");
}

#[test]
#[ignore = "builds the guest image and boots it in the KVM runner VM (3-5 minutes)"]
fn project_image_talks_through_kt_vhost_device() {
    run_script("test-kt-device.sh");
}

#[test]
#[ignore = "builds the guest image and boots it in the KVM runner VM (1-2 minutes)"]
fn project_image_end_to_end_with_backend_restart() {
    run_script("test-e2e.sh");
}
