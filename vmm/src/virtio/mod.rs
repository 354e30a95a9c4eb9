//! Virtio: the virtio-mmio transport and the vhost-user device behind it.

pub mod deadline;
pub mod mmio;
pub mod reconnect;
pub mod vhost_user;
pub mod vhost_user_mmio;

/// One virtqueue as the driver configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue index.
    pub index: u16,
    /// Largest size the device allows.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Descriptor table (guest physical).
    pub desc: u64,
    /// Available ring (driver area).
    pub avail: u64,
    /// Used ring (device area).
    pub used: u64,
    /// QueueReady.
    pub ready: bool,
}

impl QueueConfig {
    /// A queue in reset state.
    pub fn new(index: u16, max_size: u16) -> Self {
        Self {
            index,
            max_size,
            size: max_size,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
        }
    }
}

/// What a virtio device must provide to the transport. The vhost-user
/// frontend implements it; tests use a mock.
pub trait VirtioBackend: Send {
    /// Virtio device ID.
    fn device_type(&self) -> u32;
    /// Number of queues.
    fn num_queues(&self) -> usize;
    /// Largest queue size.
    fn queue_max_size(&self) -> u16;
    /// Device feature bits (VERSION_1 is added by the transport).
    fn device_features(&self) -> u64;
    /// Reads device config space.
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes device config space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the negotiated features and queues.
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String>;
    /// Stops the device (driver reset).
    fn reset(&mut self);
    /// A config change the driver has not acknowledged yet.
    fn config_changed(&self) -> bool {
        false
    }
    /// The driver acknowledged the config-change interrupt.
    fn ack_config_change(&mut self) {}
    /// Changes with every config change (ConfigGeneration).
    fn config_generation(&self) -> u32 {
        0
    }
    /// Whether the device failed (e.g. its backend stopped answering)
    /// since the last call; the transport then sets DEVICE_NEEDS_RESET.
    fn take_failure(&mut self) -> bool {
        false
    }
    /// Sends the driver a configuration change notification (new
    /// generation, config-change interrupt).
    fn signal_config_change(&mut self) {}
}
