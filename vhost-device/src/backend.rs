//! The vhost-user side: `VhostUserBackend` for the device. Owns feature
//! and protocol-feature negotiation, config space, the queue-to-thread
//! layout (one vhost-user worker thread per queue pair: thread 0 serves
//! pair 0 and the event queue, thread k the rx and tx queues of pair k)
//! and the fan-out of vhost-user requests to the pairs' engines. Each
//! pair's [`Engine`] has its own lock, so the workers run in parallel;
//! the frontend thread takes the engine locks one at a time, never two
//! at once and never while it holds a vring lock. Holds no protocol logic.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kt_proto::consts::{
    num_vqs, vq_rx, vq_tx, CONFIG_SIZE, F_GUEST_LISTEN, F_LISTEN_NOTIFY, F_MULTIQUEUE,
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VQ_EVENT, VQ_RX, VQ_TX,
};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::Device;
use crate::engine::Engine;
use crate::stats::Stats;

/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// The queues worker thread `thread` serves, as the bit mask
/// `queues_per_thread` wants: pair 0 with the event queue on thread 0,
/// pair k on thread k.
pub fn thread_queues(thread: u16) -> u64 {
    if thread == 0 {
        (1 << VQ_RX) | (1 << VQ_TX) | (1 << VQ_EVENT)
    } else {
        (1 << vq_rx(thread)) | (1 << vq_tx(thread))
    }
}

/// The vhost-user backend of one VM: one engine per queue pair plus
/// negotiation state.
#[derive(Debug)]
pub struct KtBackend {
    engines: Vec<Mutex<Engine>>,
    stats: Arc<Stats>,
    config: [u8; CONFIG_SIZE],
    guest_listen: bool,
    acked: AtomicU64,
}

impl KtBackend {
    /// Wraps the engines of pairs 0, 1, … (`devices[k]` serves pair k;
    /// at least one, at most 16), each busy-polling for `busy_poll`.
    pub fn new(devices: Vec<Device>, stats: Arc<Stats>, busy_poll: Duration) -> io::Result<Self> {
        let Some(first) = devices.first() else {
            return Err(io::Error::other("a backend needs pair 0"));
        };
        if devices.len() > usize::from(kt_proto::consts::MAX_QUEUE_PAIRS)
            || devices
                .iter()
                .enumerate()
                .any(|(k, d)| usize::from(d.pair()) != k)
        {
            return Err(io::Error::other(
                "engines must serve pairs 0, 1, … in order",
            ));
        }
        let config = first.config_bytes();
        let guest_listen = first.offers_guest_listen();
        Ok(KtBackend {
            engines: devices
                .into_iter()
                .map(|d| Mutex::new(Engine::new(d, busy_poll)))
                .collect(),
            stats,
            config,
            guest_listen,
            acked: AtomicU64::new(0),
        })
    }

    /// Queue pairs served.
    pub fn pairs(&self) -> u16 {
        // At most 16 (checked in `new`).
        self.engines.len() as u16
    }

    /// `handle_event` id of the host epoll fds (ids 0..=num_queues are the
    /// queues and the exit event).
    pub fn host_event(&self) -> u16 {
        // At most 33.
        num_vqs(self.pairs()) as u16 + 1
    }

    /// The fd to nest into worker `thread`'s epoll with id
    /// [`KtBackend::host_event`]: pair `thread`'s host epoll set.
    pub fn host_epoll_fd(&self, thread: usize) -> Option<i32> {
        self.engines
            .get(thread)
            .map(|e| lock(e).device().epoll_fd())
    }

    /// A frontend connected.
    pub fn connected(&self) {
        crate::stats::add(&self.stats.events.frontends, 1);
    }

    /// The frontend went away: every pair forgets its memory and all
    /// channel state.
    pub fn disconnected(&self) {
        for e in &self.engines {
            let mut e = lock(e);
            e.device_mut().deactivate();
            e.set_memory(None);
        }
        self.acked.store(0, Ordering::Release);
    }

    /// Runs `f` on each engine in turn, one lock at a time.
    fn each(&self, mut f: impl FnMut(&mut Engine)) {
        for e in &self.engines {
            f(&mut lock(e));
        }
    }

    /// Channels open on pair `pair`, for tests.
    pub fn channel_count(&self, pair: usize) -> Option<usize> {
        self.engines
            .get(pair)
            .map(|e| lock(e).device().channel_count())
    }
}

/// An engine's lock; a worker that panicked cannot leave the engine in a
/// state worse than a reset, which the next frontend request brings.
fn lock(e: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    e.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VhostUserBackend for KtBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        num_vqs(self.pairs())
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
        if self.guest_listen {
            f |= 1 << F_GUEST_LISTEN;
        }
        if self.pairs() > 1 {
            f |= 1 << F_MULTIQUEUE;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Release);
        self.each(|e| e.device_mut().set_features(features));
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

    fn reset_device(&self) {
        self.each(|e| e.device_mut().deactivate());
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = &self.config;
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.each(|e| e.set_memory(Some(mem.clone())));
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs()).map(thread_queues).collect()
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

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE of any queue: the driver is being stopped (reset,
        // reboot, shutdown); the channel state of every pair is gone (as
        // RESET ends every pair's channels, SPEC §1.4).
        self.each(|e| e.device_mut().deactivate());
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(e) = self.engines.get(thread_id) else {
            return Err(io::Error::other(format!(
                "no engine for worker {thread_id}"
            )));
        };
        lock(e).run(vrings, device_event == self.host_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ChannelBudget;
    use crate::device::Params;
    use crate::policy::{Policy, PolicyCell};
    use kt_proto::DeviceConfig;
    use std::time::Instant;

    fn backend(pairs: u16) -> Arc<KtBackend> {
        let policy = Arc::new(PolicyCell::new(Policy::default()).unwrap());
        let stats = Arc::new(Stats::new(1).with_pairs(pairs));
        let budget = Arc::new(ChannelBudget::new(8));
        let params = Params {
            vm_name: "t".into(),
            config: DeviceConfig {
                max_queue_pairs: pairs,
                ..DeviceConfig::default()
            },
            channel_buffer: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            rx_share: crate::config::DEFAULT_RX_SHARE as u16,
        };
        let devices = (0..pairs)
            .map(|k| {
                Device::for_pair(
                    params.clone(),
                    policy.clone(),
                    stats.clone(),
                    None,
                    k,
                    budget.clone(),
                )
                .unwrap()
            })
            .collect();
        Arc::new(KtBackend::new(devices, stats, Duration::ZERO).unwrap())
    }

    #[test]
    fn a_busy_pair_does_not_hold_up_another() {
        let b = backend(2);
        assert_eq!(b.num_queues(), 5);
        assert_ne!(b.features() & (1 << F_MULTIQUEUE), 0);
        assert_eq!(b.queues_per_thread(), [0b111, 0b11000]);
        // Pair 0's worker is in the middle of a pass.
        let held = lock(&b.engines[0]);
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.handle_event(0, EventSet::IN, &[], 1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "pair 1 waited for pair 0's lock");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        t.join().unwrap().unwrap();
        assert!(b.handle_event(0, EventSet::IN, &[], 2).is_err());
    }

    #[test]
    fn one_pair_is_the_device_of_before() {
        let b = backend(1);
        assert_eq!(b.num_queues(), 3);
        assert_eq!(b.features() & (1 << F_MULTIQUEUE), 0);
        assert_eq!(b.queues_per_thread(), [0b111]);
        assert_eq!(b.host_event(), 4);
    }

    #[test]
    fn each_thread_serves_one_pair() {
        assert_eq!(thread_queues(0), 0b111);
        assert_eq!(thread_queues(1), 0b11000);
        assert_eq!(thread_queues(15), (1 << 31) | (1 << 32));
        // Every queue of 16 pairs on exactly one thread.
        let all = (0..16).map(thread_queues).fold(0u64, |acc, m| {
            assert_eq!(acc & m, 0, "overlap at {m:#b}");
            acc | m
        });
        assert_eq!(all, (1 << num_vqs(16)) - 1);
    }
}
