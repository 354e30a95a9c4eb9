//! A vhost-user device as the MMIO bus sees it: the virtio-mmio transport
//! behind its lock, except that a config-space read asks the backend
//! (GET_CONFIG, up to the request timeout) without holding that lock, so
//! while a backend is slow or stuck the device's other registers
//! (InterruptStatus, Status), other vCPUs and the main thread's backend
//! watch are not held up. Owns only this locking; register semantics live
//! in `mmio`, the vhost-user protocol in `vhost_user`.

use super::mmio::reg;
use super::reconnect::SharedDevice;
use crate::devices::bus::{lock, BusDevice, SelfLockingDevice};

/// The bus entry of one vhost-user device.
#[derive(Debug)]
pub struct VhostUserMmio {
    dev: SharedDevice,
}

impl VhostUserMmio {
    /// Wraps `dev` (the same device the backend watch holds).
    pub fn new(dev: SharedDevice) -> Self {
        Self { dev }
    }
}

impl SelfLockingDevice for VhostUserMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset < reg::CONFIG {
            lock(&self.dev).read(offset, data);
            return;
        }
        let cfg = offset - reg::CONFIG;
        let pending = lock(&self.dev).backend().begin_config_read(cfg, data.len());
        let Some(p) = pending else {
            // Served from the cache (or zeros): no request.
            lock(&self.dev).read(offset, data);
            return;
        };
        let answer = p.run();
        let mut t = lock(&self.dev);
        t.backend_mut().finish_config_read(&p, answer, data);
        t.check_failure();
    }

    fn write(&self, offset: u64, data: &[u8]) {
        lock(&self.dev).write(offset, data);
    }
}
