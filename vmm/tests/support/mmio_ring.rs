//! Shared by the vhost-user frontend tests: the guest-memory layout of the
//! one test virtqueue, register access to a virtio-mmio transport, and a
//! bounded wait. Owns no processes and no assertions about behaviour.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use kt_vmm::devices::bus::BusDevice;
use kt_vmm::virtio::mmio::MmioTransport;
use kt_vmm::virtio::vhost_user::VhostUserDevice;

/// Descriptor table of the test queue.
pub const DESC: u64 = 0x10000;
/// Available ring.
pub const AVAIL: u64 = 0x11000;
/// Used ring.
pub const USED: u64 = 0x12000;
/// First buffer; buffer `i` is at `BUF + i * BUF_LEN`.
pub const BUF: u64 = 0x20000;
/// Size of each buffer.
pub const BUF_LEN: u32 = 64;
/// `VIRTQ_DESC_F_WRITE`.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Polls `f` every 5 ms for up to 10 s; panics naming `what` on timeout.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes a 32-bit register.
pub fn wr(t: &mut MmioTransport<VhostUserDevice>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Reads a 32-bit register.
pub fn rd(t: &mut MmioTransport<VhostUserDevice>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 64-bit address as its low and high registers.
pub fn set_u64(t: &mut MmioTransport<VhostUserDevice>, low: u64, v: u64) {
    wr(t, low, v as u32);
    wr(t, low + 4, (v >> 32) as u32);
}
