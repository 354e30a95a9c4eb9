//! One queue pair's worker glue: a [`Device`] (the protocol engine of the
//! pair) with the guest memory it reads, driven from the vrings of its
//! vhost-user worker thread (pair 0: rx, tx and the event queue; pair
//! k ≥ 1: its rx and tx), plus the optional busy poll (`--busy-poll-us`)
//! before that worker sleeps. `backend.rs` keeps one of these per pair,
//! each behind its own lock; this file holds no protocol logic and knows
//! nothing of the other pairs.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::{Device, Rings};

/// A busy poll ends after this many times `--busy-poll-us` even while
/// work keeps coming, so the worker returns to its event loop (vhost-user
/// requests, the other queues' events) regularly.
const BUSY_POLL_CAP: u32 = 4;

/// Index of the rx vring in a worker's vrings (then tx, then event).
const RX: usize = 0;
/// Index of the tx vring in a worker's vrings.
const TX: usize = 1;
/// Index of the event vring in pair 0's worker's vrings.
const EV: usize = 2;

/// One pair's engine and what it needs to run.
#[derive(Debug)]
pub struct Engine {
    device: Device,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    busy_poll: Duration,
}

impl Engine {
    /// Wraps `device`; `busy_poll` as [`Engine::spin`] uses it.
    pub fn new(device: Device, busy_poll: Duration) -> Engine {
        Engine {
            device,
            mem: None,
            busy_poll,
        }
    }

    /// The protocol engine.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The protocol engine, to apply vhost-user requests to it.
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.device
    }

    /// The guest memory table changed (or went away with the frontend).
    pub fn set_memory(&mut self, mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>) {
        self.mem = mem;
    }

    /// Serves a wake-up of this pair's worker: `vrings` are the worker's
    /// (rx, tx and, on pair 0, event), `host` whether the host epoll fd
    /// woke it.
    pub fn run(&mut self, vrings: &[VringRwLock], host: bool) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            if host {
                // No memory table yet (a frontend that connected and has
                // not sent it): host events (a policy reload, a timer)
                // are still consumed, without rings, or the
                // level-triggered host epoll fd would spin this worker.
                // Nothing in guest memory can be reached: no queue is
                // ready and no channel is open.
                self.device
                    .run(Rings::default(), &GuestMemoryMmap::new(), true);
            }
            return Ok(());
        };
        let mem = atomic.memory();
        let want = if self.device.pair() == 0 { 3 } else { 2 };
        if vrings.len() < want {
            return Err(io::Error::other(format!(
                "pair {}: {} vrings, want {want}",
                self.device.pair(),
                vrings.len()
            )));
        }
        let spin = !self.busy_poll.is_zero() && self.device.may_expect_input();
        self.device.set_polling(spin);
        self.pass(vrings, &mem, host);
        if spin {
            self.spin(vrings, &mem);
        }
        Ok(())
    }

    /// One pass of the engine over its ready queues, then the calls it
    /// asks for.
    fn pass(&mut self, vrings: &[VringRwLock], mem: &GuestMemoryMmap, host: bool) {
        let mut rx = vrings[RX].get_mut();
        let mut tx = vrings[TX].get_mut();
        let mut ev = vrings.get(EV).map(VringRwLock::get_mut);
        let ready = [
            rx.get_queue().ready() && rx.is_enabled(),
            tx.get_queue().ready() && tx.is_enabled(),
            ev.as_ref()
                .is_some_and(|g| g.get_queue().ready() && g.is_enabled()),
        ];
        let starts = [
            rx.get_queue().next_avail(),
            tx.get_queue().next_avail(),
            ev.as_ref().map_or(0, |g| g.get_queue().next_avail()),
        ];
        for i in 0..ready.len() {
            if ready[i] && !self.device.queue_seen(i) {
                self.device.queue_started(i, starts[i]);
            }
        }
        let rings = Rings {
            rx: ready[RX].then(|| rx.get_queue_mut()),
            tx: ready[TX].then(|| tx.get_queue_mut()),
            ev: match ev.as_mut() {
                Some(g) if ready[EV] => Some(g.get_queue_mut()),
                _ => None,
            },
        };
        let n = self.device.run(rings, mem, host);
        drop((rx, tx, ev));
        for (i, want) in [n.rx, n.tx, n.ev].into_iter().enumerate() {
            if want {
                if let Some(Err(e)) = vrings.get(i).map(VringRwLock::signal_used_queue) {
                    log::warn!("pair {} queue {i}: signal: {e}", self.device.pair());
                }
            }
        }
    }

    /// Whether the guest has published tx chains the device has not taken.
    fn tx_pending(vrings: &[VringRwLock], mem: &GuestMemoryMmap) -> bool {
        let g = vrings[TX].get_ref();
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
    /// worker sleeps. Only this pair's lock is held: the other pairs'
    /// workers run meanwhile.
    fn spin(&mut self, vrings: &[VringRwLock], mem: &GuestMemoryMmap) {
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
                self.pass(vrings, mem, host);
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
            let mut g = vrings[TX].get_mut();
            let ready = g.get_queue().ready() && g.is_enabled();
            ready && g.get_queue_mut().enable_notification(mem).unwrap_or(true)
        };
        if more && !self.device.more_work() {
            // Published while kicks were off: serve it (this pass leaves
            // notifications on when the ring runs empty). After a pass that
            // stopped on its budget the wake-up eventfd brings the worker
            // back instead.
            self.pass(vrings, mem, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Params;
    use crate::policy::{Policy, PolicyCell};
    use crate::stats::Stats;
    use kt_proto::DeviceConfig;
    use std::sync::Arc;

    #[test]
    fn host_events_are_consumed_before_the_memory_table() {
        let policy = Arc::new(PolicyCell::new(Policy::default()).unwrap());
        let params = Params {
            vm_name: "t".into(),
            config: DeviceConfig::default(),
            channel_buffer: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            rx_share: crate::config::DEFAULT_RX_SHARE as u16,
        };
        let dev = Device::new(params, policy.clone(), Arc::new(Stats::new(1)), None).unwrap();
        let mut e = Engine::new(dev, Duration::ZERO);
        assert!(!e.device().host_ready());
        policy.replace(Policy::default());
        assert!(e.device().host_ready(), "the reload is signalled");
        e.run(&[], true).unwrap();
        assert!(
            !e.device().host_ready(),
            "the signal stays: the worker's epoll would spin on it"
        );
    }
}
