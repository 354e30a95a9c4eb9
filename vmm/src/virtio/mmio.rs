//! The virtio-mmio (version 2) register file of one device. Feature
//! negotiation, queue setup and status live here; the device itself is a
//! `VirtioBackend` that gets the queues on DRIVER_OK. Queue notifications
//! never come here (KVM ioeventfds catch them) and interrupts are raised by
//! the backend through an irqfd, so InterruptStatus always reports "used
//! buffer", plus "config change" while the backend's change is unacknowledged.
//! A backend that reports a failure (a vhost-user request timed out) gets
//! DEVICE_NEEDS_RESET in Status and, once the driver is running, a config
//! change notification, as the virtio spec (2.1.2) requires.

use super::{QueueConfig, VirtioBackend};
use crate::devices::bus::BusDevice;

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Modern virtio-mmio.
pub const VERSION: u32 = 2;
/// Vendor ID reported to the guest ("KTVM").
pub const VENDOR_ID: u32 = 0x4d56_544b;
/// VIRTIO_F_VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: a used buffer was added.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG: u32 = 2;

/// One virtio-mmio device.
#[derive(Debug)]
pub struct MmioTransport<B: VirtioBackend> {
    backend: B,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    active: bool,
}

fn set_half(v: &mut u64, high: bool, half: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(half) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(half);
    }
}

impl<B: VirtioBackend> MmioTransport<B> {
    /// A device in reset state.
    pub fn new(backend: B) -> Self {
        let queues = (0..backend.num_queues())
            .map(|i| QueueConfig::new(i as u16, backend.queue_max_size()))
            .collect();
        Self {
            backend,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            active: false,
        }
    }

    /// Features offered to the driver (always including VERSION_1).
    pub fn device_features(&self) -> u64 {
        self.backend.device_features() | VIRTIO_F_VERSION_1
    }

    /// The backend (for tests and diagnostics).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (reconnects).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Current status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// After any call into the backend: a failed device needs a reset
    /// (DEVICE_NEEDS_RESET; a running driver also gets a config change).
    pub fn check_failure(&mut self) {
        if self.backend.take_failure() {
            self.status |= status::NEEDS_RESET;
            if self.status & status::DRIVER_OK != 0 {
                self.backend.signal_config_change();
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.backend.reset();
            // The driver is resetting anyway: the device starts afresh.
            let _ = self.backend.take_failure();
        }
        let max = self.backend.queue_max_size();
        for (i, q) in self.queues.iter_mut().enumerate() {
            *q = QueueConfig::new(i as u16, max);
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.active = false;
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let newly = v & !self.status;
        self.status = v;
        if newly & status::FEATURES_OK != 0 {
            let unknown = self.driver_features & !self.device_features();
            if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                log::warn!(
                    "virtio-mmio: driver features {:#x} refused (device offers {:#x})",
                    self.driver_features,
                    self.device_features()
                );
                self.status &= !status::FEATURES_OK;
            }
        }
        if newly & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 && !self.active
        {
            match self.backend.activate(self.driver_features, &self.queues) {
                Ok(()) => self.active = true,
                Err(e) => {
                    log::error!("virtio device activation failed: {e}");
                    self.status |= status::NEEDS_RESET;
                }
            }
            self.check_failure();
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.backend.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => {
                INT_VRING
                    | if self.backend.config_changed() {
                        INT_CONFIG
                    } else {
                        0
                    }
            }
            reg::STATUS => self.status,
            // No shared memory regions: length reads as all ones.
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.backend.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let can_setup_queue = !self.active && self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => match self.driver_features_sel {
                0 => set_half(&mut self.driver_features, false, v),
                1 => set_half(&mut self.driver_features, true, v),
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if can_setup_queue => {
                if let Some(q) = self.queue() {
                    q.size = v.min(u32::from(q.max_size)) as u16;
                }
            }
            reg::QUEUE_READY if can_setup_queue => {
                if let Some(q) = self.queue() {
                    q.ready = v == 1;
                }
            }
            reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH if can_setup_queue => {
                let high = offset & 4 != 0;
                let field = offset & !4;
                if let Some(q) = self.queue() {
                    match field {
                        reg::QUEUE_DESC_LOW => set_half(&mut q.desc, high, v),
                        reg::QUEUE_DRIVER_LOW => set_half(&mut q.avail, high, v),
                        reg::QUEUE_DEVICE_LOW => set_half(&mut q.used, high, v),
                        _ => {}
                    }
                }
            }
            reg::QUEUE_NOTIFY => {
                log::debug!("virtio-mmio: notify for queue {v} reached the VMM");
            }
            reg::INTERRUPT_ACK => {
                if v & INT_CONFIG != 0 {
                    self.backend.ack_config_change();
                }
            }
            reg::STATUS => self.write_status(v),
            _ => log::debug!("virtio-mmio: ignored write {v:#x} at {offset:#x}"),
        }
    }
}

impl<B: VirtioBackend + Send> BusDevice for MmioTransport<B> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.backend.read_config(offset - reg::CONFIG, data);
            self.check_failure();
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.backend.write_config(offset - reg::CONFIG, data);
            self.check_failure();
        } else if let (Ok(b), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_reg(offset, u32::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Mock {
        activated: Vec<(u64, Vec<QueueConfig>)>,
        resets: usize,
        fail: bool,
        config: Vec<u8>,
        config_pending: bool,
        /// The next config access fails (as a timed-out backend does).
        fail_next_access: bool,
        failed: bool,
        config_signals: usize,
    }

    impl VirtioBackend for Mock {
        fn device_type(&self) -> u32 {
            60
        }
        fn num_queues(&self) -> usize {
            2
        }
        fn queue_max_size(&self) -> u16 {
            256
        }
        fn device_features(&self) -> u64 {
            1 << 29 | 1 << 0
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            self.failed |= std::mem::take(&mut self.fail_next_access);
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
            if self.fail {
                return Err("mock failure".into());
            }
            self.activated.push((features, queues.to_vec()));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn config_changed(&self) -> bool {
            self.config_pending
        }
        fn ack_config_change(&mut self) {
            self.config_pending = false;
        }
        fn config_generation(&self) -> u32 {
            7
        }
        fn take_failure(&mut self) -> bool {
            std::mem::take(&mut self.failed)
        }
        fn signal_config_change(&mut self) {
            self.config_signals += 1;
        }
    }

    fn rd(t: &mut MmioTransport<Mock>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Mock>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport<Mock>, features: u64) {
        wr(t, reg::STATUS, status::ACKNOWLEDGE);
        wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, features as u32);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    #[test]
    fn identity_registers() {
        let mut t = MmioTransport::new(Mock::default());
        assert_eq!(rd(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 60);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1 << 29 | 1);
        wr(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 256);
        wr(&mut t, reg::QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
        let mut short = [0u8; 2];
        t.read(reg::MAGIC, &mut short);
        assert_eq!(short, [0, 0]);
    }

    #[test]
    fn full_handshake_activates_with_queue_addresses() {
        let mut t = MmioTransport::new(Mock::default());
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
        assert_ne!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        wr(&mut t, reg::QUEUE_SEL, 1);
        wr(&mut t, reg::QUEUE_NUM, 128);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, reg::QUEUE_DESC_HIGH, 0x1);
        wr(&mut t, reg::QUEUE_DRIVER_LOW, 0x2000);
        wr(&mut t, reg::QUEUE_DEVICE_LOW, 0x3000);
        wr(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        wr(&mut t, reg::STATUS, 0xf);
        let (features, queues) = &t.backend().activated[0];
        assert_eq!(*features, VIRTIO_F_VERSION_1 | 1);
        assert!(!queues[0].ready);
        let q = queues[1];
        assert_eq!(
            (q.size, q.desc, q.avail, q.used, q.ready),
            (128, 0x1_0000_1000, 0x2000, 0x3000, true)
        );
        // Queue registers are frozen once running.
        wr(&mut t, reg::QUEUE_NUM, 4);
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(t.backend().resets, 1);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        wr(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn features_without_version_1_or_unknown_are_refused() {
        let mut t = MmioTransport::new(Mock::default());
        negotiate(&mut t, 1);
        assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        wr(&mut t, reg::STATUS, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        wr(&mut t, reg::STATUS, 0xf);
        assert!(t.backend().activated.is_empty());
    }

    #[test]
    fn failed_activation_sets_needs_reset() {
        let mut t = MmioTransport::new(Mock {
            fail: true,
            ..Default::default()
        });
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, reg::STATUS, 0xf);
        assert_ne!(rd(&mut t, reg::STATUS) & status::NEEDS_RESET, 0);
    }

    #[test]
    fn backend_failure_sets_needs_reset_and_notifies_a_running_driver() {
        let mut t = MmioTransport::new(Mock::default());
        t.backend_mut().fail_next_access = true;
        let mut b = [0u8; 4];
        t.read(reg::CONFIG, &mut b);
        assert_ne!(rd(&mut t, reg::STATUS) & status::NEEDS_RESET, 0);
        assert_eq!(t.backend().config_signals, 0, "no driver to notify yet");
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, reg::STATUS, 0xf);
        t.read(reg::CONFIG, &mut b);
        assert_eq!(rd(&mut t, reg::STATUS) & status::NEEDS_RESET, 0);
        t.backend_mut().fail_next_access = true;
        t.read(reg::CONFIG, &mut b);
        assert_eq!(rd(&mut t, reg::STATUS), 0xf | status::NEEDS_RESET);
        assert_eq!(t.backend().config_signals, 1);
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0, "a driver reset clears it");
    }

    #[test]
    fn config_change_interrupt_until_acknowledged() {
        let mut t = MmioTransport::new(Mock {
            config_pending: true,
            ..Default::default()
        });
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
        assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 7);
        wr(&mut t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
        wr(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
    }

    #[test]
    fn config_space_goes_to_backend() {
        let mut t = MmioTransport::new(Mock {
            config: vec![1, 2, 3, 4, 5],
            ..Default::default()
        });
        let mut b = [0u8; 4];
        t.read(reg::CONFIG + 1, &mut b);
        assert_eq!(b, [2, 3, 4, 5]);
        let mut b = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut b);
        assert_eq!(b, [5, 0]);
    }
}
