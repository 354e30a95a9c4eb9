//! The vhost-user side: `VhostUserBackendMut` for the device. Owns feature
//! and protocol-feature negotiation, config space, guest memory, and the
//! glue from vring events (and the nested host epoll fd) to
//! [`Device::run`]. Holds no protocol logic of its own.

use std::io;
use std::sync::Arc;

use kt_proto::consts::{
    F_GUEST_LISTEN, NUM_VQS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::{Device, Rings};
use crate::stats::Stats;

/// `handle_event` id of the host epoll fd (ids 0..=NUM_VQS are taken by
/// the queues and the exit event).
pub const HOST_EVENT: u16 = NUM_VQS as u16 + 1;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// The vhost-user backend: a [`Device`] plus negotiation state.
#[derive(Debug)]
pub struct KtBackend {
    device: Device,
    stats: Arc<Stats>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    acked: u64,
}

impl KtBackend {
    /// Wraps `device`.
    pub fn new(device: Device, stats: Arc<Stats>) -> KtBackend {
        KtBackend {
            device,
            stats,
            mem: None,
            acked: 0,
        }
    }

    /// The fd to nest into the worker's epoll with id [`HOST_EVENT`].
    pub fn host_epoll_fd(&self) -> i32 {
        self.device.epoll_fd()
    }

    /// A frontend connected.
    pub fn connected(&mut self) {
        crate::stats::add(&self.stats.events.frontends, 1);
    }

    /// The frontend went away: forget its memory and all channel state.
    pub fn disconnected(&mut self) {
        self.device.deactivate();
        self.mem = None;
        self.acked = 0;
    }

    /// The engine, for tests.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn run(&mut self, vrings: &[VringRwLock], host: bool) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        if vrings.len() < NUM_VQS {
            return Err(io::Error::other("fewer vrings than queues"));
        }
        let mut g0 = vrings[0].get_mut();
        let mut g1 = vrings[1].get_mut();
        let mut g2 = vrings[2].get_mut();
        let ready = [
            g0.get_queue().ready() && g0.is_enabled(),
            g1.get_queue().ready() && g1.is_enabled(),
            g2.get_queue().ready() && g2.is_enabled(),
        ];
        let starts = [
            g0.get_queue().next_avail(),
            g1.get_queue().next_avail(),
            g2.get_queue().next_avail(),
        ];
        for i in 0..NUM_VQS {
            if ready[i] && !self.device.queue_seen(i) {
                self.device.queue_started(i, starts[i]);
            }
        }
        let rings = Rings {
            rx: ready[0].then(|| g0.get_queue_mut()),
            tx: ready[1].then(|| g1.get_queue_mut()),
            ev: ready[2].then(|| g2.get_queue_mut()),
        };
        let n = self.device.run(rings, &mem, host);
        drop((g0, g1, g2));
        for (i, want) in [n.rx, n.tx, n.ev].into_iter().enumerate() {
            if want {
                if let Err(e) = vrings[i].signal_used_queue() {
                    log::warn!("queue {i}: signal: {e}");
                }
            }
        }
        Ok(())
    }
}

impl VhostUserBackendMut for KtBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_VQS
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.device.offers_guest_listen() {
            f |= 1 << F_GUEST_LISTEN;
        }
        f
    }

    fn acked_features(&mut self, features: u64) {
        self.acked = features;
        self.device.set_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn reset_device(&mut self) {
        self.device.deactivate();
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.device.config_bytes();
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("exit event: {e}");
                None
            }
        }
    }

    fn stop_vring(&mut self, _queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the driver is being stopped (reset, reboot,
        // shutdown); its channel state is gone.
        self.device.deactivate();
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.run(vrings, device_event == HOST_EVENT)
    }
}
