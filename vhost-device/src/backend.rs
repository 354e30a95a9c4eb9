//! The vhost-user side: `VhostUserBackendMut` for the device. Owns feature
//! and protocol-feature negotiation, config space, guest memory, the glue
//! from vring events (and the nested host epoll fd) to [`Device::run`],
//! and the optional busy poll (`--busy-poll-us`) before the worker sleeps.
//! Holds no protocol logic of its own.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kt_proto::consts::{
    F_GUEST_LISTEN, F_LISTEN_NOTIFY, NUM_VQS, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
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
    busy_poll: Duration,
}

/// A busy poll ends after this many times `--busy-poll-us` even while
/// work keeps coming, so the worker returns to its event loop (vhost-user
/// requests, the other queues' events) regularly.
const BUSY_POLL_CAP: u32 = 4;

impl KtBackend {
    /// Wraps `device`.
    pub fn new(device: Device, stats: Arc<Stats>) -> KtBackend {
        KtBackend {
            device,
            stats,
            mem: None,
            acked: 0,
            busy_poll: Duration::ZERO,
        }
    }

    /// Sets how long the worker polls for more work after a pass before
    /// it sleeps (`Duration::ZERO`: never).
    pub fn set_busy_poll(&mut self, d: Duration) {
        self.busy_poll = d;
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
        let spin = !self.busy_poll.is_zero() && self.device.may_expect_input();
        self.device.set_polling(spin);
        let r = self.pass(vrings, &mem, host);
        if spin {
            self.spin(vrings, &mem)?;
        }
        r
    }

    /// One pass of the engine over the ready queues, then the calls it
    /// asks for.
    fn pass(
        &mut self,
        vrings: &[VringRwLock],
        mem: &GuestMemoryMmap,
        host: bool,
    ) -> io::Result<()> {
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
        let n = self.device.run(rings, mem, host);
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

    /// Whether the guest has published tx chains the device has not taken.
    fn tx_pending(vrings: &[VringRwLock], mem: &GuestMemoryMmap) -> bool {
        let g = vrings[1].get_ref();
        let q = g.get_queue();
        q.ready()
            && g.is_enabled()
            && q.avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|i| i.0 != q.next_avail())
    }

    /// The busy poll (like vhost's busyloop): after a pass, keeps looking
    /// at the tx ring (guest kicks stay off meanwhile) and the host epoll
    /// set, serving what comes, until nothing came for `busy_poll`, no
    /// channel is open any more, a pass left work for the event loop, or
    /// [`BUSY_POLL_CAP`] times `busy_poll` passed. Then tx notifications
    /// go back on (and chains published meanwhile are served) before the
    /// worker sleeps.
    fn spin(&mut self, vrings: &[VringRwLock], mem: &GuestMemoryMmap) -> io::Result<()> {
        let start = Instant::now();
        let hard = start + self.busy_poll * BUSY_POLL_CAP;
        let mut idle_until = start + self.busy_poll;
        while !self.device.more_work() && self.device.may_expect_input() {
            let tx = Self::tx_pending(vrings, mem);
            // Host events are looked at on every turn, tx or not: a guest
            // that keeps its tx ring busy must not hold other channels'
            // host input until the poll ends (tests/fair_channels.rs).
            let host = self.device.host_ready();
            let now = Instant::now();
            if tx || host {
                self.pass(vrings, mem, host)?;
                idle_until = now + self.busy_poll;
            } else if now >= idle_until || now >= hard {
                break;
            } else {
                // Yield rather than spin: the host program or the guest that
                // will produce the awaited input may need this core.
                std::thread::yield_now();
            }
            if now >= hard {
                break;
            }
        }
        self.device.set_polling(false);
        let more = {
            let mut g1 = vrings[1].get_mut();
            let ready = g1.get_queue().ready() && g1.is_enabled();
            ready && g1.get_queue_mut().enable_notification(mem).unwrap_or(true)
        };
        if more && !self.device.more_work() {
            // Published while kicks were off: serve it (this pass leaves
            // notifications on when the ring runs empty). After a pass that
            // stopped on its budget the wake-up eventfd brings the worker
            // back instead.
            self.pass(vrings, mem, false)?;
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
        // ACCESS_PLATFORM: buffer addresses are guest-physical as the
        // platform maps them (bounce buffers in confidential guests, which
        // refuse devices without it). Without a vIOMMU they are plain
        // guest-physical addresses; behind one the VMM needs IOTLB
        // support, which this backend does not have.
        let mut f = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_ACCESS_PLATFORM)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << F_LISTEN_NOTIFY)
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
        // QEMU takes ACCESS_PLATFORM only from a backend that also offers
        // REPLY_ACK and BACKEND_REQ (both handled by the vhost crate; this
        // device sends no backend requests).
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
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
