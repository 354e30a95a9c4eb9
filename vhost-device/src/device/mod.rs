//! The device's protocol engine (SPEC §3–§9): channel table, OPEN/CLOSE,
//! credit both ways, rx framing and fragmentation, the event queue (RESET),
//! malformed-input handling, and host socket I/O driven by its own epoll
//! set (nested into the vhost-user worker's epoll by `backend.rs`).
//!
//! It sees virtqueues only as `virtio_queue::Queue` plus guest memory, so
//! unit tests drive it with `MockSplitQueue`. It never blocks and never
//! panics on guest or host input; memory is bounded by the channel limit,
//! the per-channel credit window and the control-queue limit. Each pass
//! is budgeted (a wake-up eventfd brings the worker back for the rest);
//! deadlines (handshake and open timeouts, accept pauses) run off one
//! timerfd in the same epoll set; a spare descriptor keeps the listener
//! drained when the process runs out of descriptors.
//!
//! One message's path, file by file: `tx.rs` takes guest tx chains and
//! dispatches each message (OPEN, DATA, CLOSE, credit) towards host
//! sockets; `host.rs` reads host sockets within the guest's credit;
//! `rx.rs` frames and fragments what goes to the guest into rx buffers and
//! runs the event queue, `rxshare.rs` keeps each channel's share of the
//! rx ring; `listener.rs` owns `--listen` (accept, the
//! `CONNECT`/`LIST` handshake, timeouts); `listening.rs` keeps the names
//! the guest's listeners serve (`LISTEN`/`UNLISTEN`). This file holds the state, set-up and
//! the budgeted pass (`Device::run`) that drives them.
//!
//! One `Device` serves one queue pair (SPEC §1.4). Pair 0's engine also
//! owns the event queue, `--listen` and the `LISTEN`/`UNLISTEN` set and
//! opens the device's channels; an engine of pair k ≥ 1 has its own
//! channel table and host epoll set and nothing else. The engines of a VM
//! share its counters, policy and `max_channels` budget.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kt_proto::consts::{CHAN_DEVICE_BIT, CHAN_TRANSPORT, HDR_F_MORE, HDR_SIZE, MIN_RX_BUF_SIZE};
use kt_proto::{handshake, name, DecodeError, DeviceConfig, ErrorCode, Header, Limits, MsgType};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::budget::{ChannelBudget, VmBuffer};
use crate::chain::{parse_tx, Mem, RxBuf, TxError, TxMsg};
use crate::channel::{Channel, Event, State};
use crate::policy::PolicyCell;
use crate::seqpacket::{Recv, SeqListener, SeqPacket};
use crate::stats::{add, Counters, Opener, Stats};

mod burst;
mod discovery;
mod host;
mod listener;
mod listening;
mod loglimit;
mod rx;
mod rxshare;
#[cfg(test)]
mod tests;
mod tx;

pub use discovery::MAX_FEEDS;
use listener::{new_timer, open_spare};
use loglimit::LogLimit;

/// Control messages queued towards the guest above which tx is not read
/// (the guest must post rx buffers first). Bounds device memory against a
/// guest that floods tx and never posts rx buffers.
pub const CTRL_LIMIT: usize = 256;
/// Host connections waiting for their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// Longest handshake line accepted.
const HANDSHAKE_MAX: usize = 128;

/// How long the listener stays out of epoll after an accept error the
/// device cannot get past at once (no spare descriptor, `ENOBUFS`), so a
/// connection left queued cannot spin the worker.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// tx chains one [`Device::run`] may take before yielding to the event
/// loop, so a guest that keeps its tx ring full cannot hold the worker (and
/// the backend lock vhost-user requests need) and starve host events.
pub const TX_BUDGET: usize = 128;
/// rx buffers one [`Device::run`] may fill before yielding (host data and
/// control messages towards the guest).
pub const RX_BUDGET: usize = 128;
/// Host connections accepted per pass (the listener stays readable).
const ACCEPT_BUDGET: usize = 64;

const LISTENER_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;
const WAKE_TOKEN: u64 = u64::MAX - 2;
const POLICY_TOKEN: u64 = u64::MAX - 3;
const HANDSHAKE_BIT: u64 = 1 << 32;

/// Static parameters of the device.
#[derive(Clone, Debug)]
pub struct Params {
    /// The VM's name (logs, the `identify` first message).
    pub vm_name: String,
    /// Config space values.
    pub config: DeviceConfig,
    /// Window granted per channel for guest → host data.
    pub channel_buffer: u32,
    /// Time a host connection has to send its `CONNECT` line.
    pub handshake_timeout: Duration,
    /// Time the guest has to answer the `OPEN` of a host connection.
    pub open_timeout: Duration,
    /// A channel holds at most 1/`rx_share` of a contended rx ring.
    pub rx_share: u16,
}

/// The queues the engine may use in one call; `None` = not ready.
#[derive(Debug, Default)]
pub struct Rings<'a> {
    /// rx queue (device → driver).
    pub rx: Option<&'a mut Queue>,
    /// tx queue (driver → device).
    pub tx: Option<&'a mut Queue>,
    /// event queue.
    pub ev: Option<&'a mut Queue>,
}

/// Which queues need their call eventfd signalled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// rx.
    pub rx: bool,
    /// tx.
    pub tx: bool,
    /// event.
    pub ev: bool,
}

/// One message (or the rest of one) on its way into rx buffers.
#[derive(Debug)]
struct Outgoing {
    hdr: Header,
    payload: Vec<u8>,
    off: usize,
    /// Fill the channel's current credit into the header when it is sent.
    fill: bool,
}

#[derive(Debug)]
struct Handshake {
    sock: SeqPacket,
    registered: bool,
    /// When it is closed with `ERR 110` if no `CONNECT` line came.
    deadline: Instant,
}

/// The device engine of one queue pair.
#[derive(Debug)]
pub struct Device {
    params: Params,
    /// The queue pair this engine serves (0: also the event queue,
    /// `--listen` and `LISTEN`/`UNLISTEN`).
    pair: u16,
    /// The VM's `max_channels`, shared by its engines.
    budget: Arc<ChannelBudget>,
    /// The VM's `--vm-buffer`, shared by its engines (from the stats).
    buffer: Arc<VmBuffer>,
    /// This engine's signal of a policy replacement.
    policy_changed: Arc<EventFd>,
    limits: Limits,
    policy: Arc<PolicyCell>,
    stats: Arc<Stats>,
    epoll: Epoll,
    listener: Option<SeqListener>,
    handshakes: HashMap<u64, Handshake>,
    next_handshake: u64,
    channels: HashMap<u32, Channel>,
    ctrl: VecDeque<Outgoing>,
    partial: Option<Outgoing>,
    ready: VecDeque<u32>,
    /// Each channel's un-consumed rx ring entries (`rxshare.rs`).
    share: rxshare::RxShare,
    /// Channels wait for their share; the ring stops counting as
    /// contended then, and the timer brings the worker back in case the
    /// driver posts no buffer before (no kick comes).
    share_wait: Option<Instant>,
    next_dev_id: u32,
    guest_listen: bool,
    /// KT_F_LISTEN_NOTIFY acked: the driver announces its listeners.
    listen_notify: bool,
    /// The names it announced since the device was last activated.
    guest_listeners: listening::GuestListeners,
    listen_limit: LogLimit,
    seen: [bool; 3],
    active: bool,
    reset_pending: bool,
    log_limit: LogLimit,
    refuse_limit: LogLimit,
    /// Receive buffer for host messages (max_msg_size + 1 bytes).
    scratch: Vec<u8>,
    /// Whether the listener and waiting handshakes are in epoll.
    listener_armed: bool,
    /// Whether the listener fd itself is in epoll (armed and not paused).
    listener_polled: bool,
    /// The listener is out of epoll until then after an accept error.
    listener_paused_until: Option<Instant>,
    /// A descriptor kept open (on /dev/null) so that a connection can still
    /// be accepted, answered and closed when the process is out of
    /// descriptors (`EMFILE`/`ENFILE`).
    spare_fd: Option<OwnedFd>,
    /// One timer for every deadline (listener pause, timeouts).
    timer: TimerFd,
    /// The deadline `timer` is armed for.
    timer_at: Option<Instant>,
    fd_limit_log: LogLimit,
    /// Handshake deadlines in the order they fall (the timeout is fixed),
    /// checked lazily: an entry whose handshake is gone is skipped.
    handshake_deadlines: VecDeque<(Instant, u64)>,
    /// Deadlines of host-opened channels waiting for the guest's answer,
    /// in order, checked lazily like `handshake_deadlines`.
    open_deadlines: VecDeque<(Instant, u32)>,
    /// Written when a pass stopped on its budget with work left: makes the
    /// host epoll fd readable, so the worker comes back (`HOST_EVENT`)
    /// after serving whatever else is ready. Nothing is lost: the work
    /// simply waits in the rings and queues.
    wake: EventFd,
    /// `wake` is written and not yet consumed.
    wake_pending: bool,
    /// The last pass stopped on a budget.
    more: bool,
    /// The worker busy-polls the tx ring after this pass: an empty ring
    /// does not re-enable guest notifications (kicks); the poller does that
    /// before it sleeps ([`Device::set_polling`]).
    polling: bool,
    /// The `kt.services` channels' kept ends and the names they list.
    discovery: discovery::Discovery,
}

impl Device {
    /// A device of one pair with no driver yet. `listener` is the host →
    /// guest socket.
    pub fn new(
        params: Params,
        policy: Arc<PolicyCell>,
        stats: Arc<Stats>,
        listener: Option<SeqListener>,
    ) -> io::Result<Device> {
        let budget = Arc::new(ChannelBudget::new(params.config.max_channels));
        Device::for_pair(params, policy, stats, listener, 0, budget)
    }

    /// The engine of queue pair `pair` of a VM whose engines share
    /// `budget`. Only pair 0 may have a `listener`.
    pub fn for_pair(
        params: Params,
        policy: Arc<PolicyCell>,
        stats: Arc<Stats>,
        listener: Option<SeqListener>,
        pair: u16,
        budget: Arc<ChannelBudget>,
    ) -> io::Result<Device> {
        if pair != 0 && listener.is_some() {
            return Err(io::Error::other("only pair 0 serves --listen"));
        }
        let epoll = Epoll::new()?;
        let timer = new_timer()?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TIMER_TOKEN),
        )?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE_TOKEN),
        )?;
        let policy_changed = policy.subscribe()?;
        epoll.ctl(
            ControlOperation::Add,
            policy_changed.as_raw_fd(),
            EpollEvent::new(EventSet::IN, POLICY_TOKEN),
        )?;
        let discovery = discovery::Discovery::new(&policy.get());
        let min_window = params.config.max_msg_size + kt_proto::consts::MSG_OVERHEAD;
        let buffer = stats.buffer(params.channel_buffer, min_window);
        let share = rxshare::RxShare::new(params.rx_share);
        Ok(Device {
            limits: Limits {
                max_msg_size: params.config.max_msg_size,
            },
            params,
            pair,
            budget,
            buffer,
            policy_changed,
            policy,
            stats,
            epoll,
            listener,
            handshakes: HashMap::new(),
            next_handshake: 0,
            channels: HashMap::new(),
            ctrl: VecDeque::new(),
            partial: None,
            ready: VecDeque::new(),
            share,
            share_wait: None,
            next_dev_id: 0,
            guest_listen: false,
            listen_notify: false,
            guest_listeners: listening::GuestListeners::default(),
            listen_limit: LogLimit::new("guest-listener-limit"),
            seen: Self::unseen(pair),
            active: false,
            reset_pending: false,
            log_limit: LogLimit::new("malformed-input"),
            refuse_limit: LogLimit::new("refused-OPEN"),
            scratch: Vec::new(),
            listener_armed: false,
            listener_polled: false,
            listener_paused_until: None,
            // Only pair 0 accepts host connections.
            spare_fd: if pair == 0 { Some(open_spare()?) } else { None },
            timer,
            timer_at: None,
            fd_limit_log: LogLimit::new("out-of-descriptors"),
            handshake_deadlines: VecDeque::new(),
            open_deadlines: VecDeque::new(),
            wake,
            wake_pending: false,
            more: false,
            polling: false,
            discovery,
        })
    }

    /// The queues of this engine not seen ready yet, by role (rx, tx,
    /// event): an engine of pair k ≥ 1 has no event queue.
    fn unseen(pair: u16) -> [bool; 3] {
        [false, false, pair != 0]
    }

    /// The queue pair this engine serves.
    pub fn pair(&self) -> u16 {
        self.pair
    }

    /// The epoll fd that becomes readable when host sockets need service.
    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    /// Config space bytes.
    pub fn config_bytes(&self) -> [u8; kt_proto::consts::CONFIG_SIZE] {
        self.params.config.encode()
    }

    /// Whether a host listening socket is configured (KT_F_GUEST_LISTEN is
    /// offered only then).
    pub fn offers_guest_listen(&self) -> bool {
        self.listener.is_some()
    }

    /// Records the features the driver acked.
    pub fn set_features(&mut self, acked: u64) {
        self.guest_listen = acked & (1 << kt_proto::consts::F_GUEST_LISTEN) != 0;
        self.listen_notify = acked & (1 << kt_proto::consts::F_LISTEN_NOTIFY) != 0;
    }

    /// The policy was replaced (reload): later OPENs see it; channels
    /// already open keep going, whatever the new policy says of them;
    /// open `kt.services` channels get a new listing if the set of names
    /// changed.
    fn on_policy_changed(&mut self) {
        let policy = self.policy.get();
        log::info!(
            "guest {}: policy reloaded: {} service(s); {} channel(s) open stay open",
            self.params.config.guest_id,
            policy.len(),
            self.channels.len()
        );
        self.discovery_policy_changed();
    }

    /// Number of channels in the table (open or closing).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether all the engine's queues (rx, tx and, on pair 0, event) have
    /// been seen ready since the last reset.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Called once per activation for each queue (by role: 0 rx, 1 tx,
    /// 2 event) when it is first seen ready, with the avail index it
    /// starts from. A non-zero start means the driver has channel state
    /// this device does not: send RESET (pair 0's event queue; the driver
    /// has posted rx buffers on pair 0 too, so pair 0 sees it as well).
    pub fn queue_started(&mut self, idx: usize, next_avail: u16) {
        if idx >= self.seen.len() || self.seen[idx] {
            return;
        }
        self.seen[idx] = true;
        if next_avail != 0 && self.pair != 0 {
            log::info!(
                "guest {}: pair {} queue {idx} starts at avail index {next_avail}",
                self.params.config.guest_id,
                self.pair
            );
        } else if next_avail != 0 && !self.reset_pending {
            log::info!(
                "guest {}: queue {idx} starts at avail index {next_avail}; the driver has state \
                 this device lost, sending RESET",
                self.params.config.guest_id
            );
            self.reset_pending = true;
        }
        if self.seen.iter().all(|s| *s) && !self.active {
            self.active = true;
            if self.pair == 0 {
                self.stats.active.store(true, Relaxed);
            }
            self.arm_listener(true);
            if self.pair == 0 {
                log::info!("guest {}: device active", self.params.config.guest_id);
            } else {
                log::info!(
                    "guest {}: pair {} active",
                    self.params.config.guest_id,
                    self.pair
                );
            }
        }
    }

    /// Whether `queue_started` has been called for `idx` since the last reset.
    pub fn queue_seen(&self, idx: usize) -> bool {
        self.seen.get(idx).copied().unwrap_or(true)
    }

    /// The driver went away or reset the device: every channel of this
    /// pair is closed (host sockets see EOF, pending host connections get
    /// `ERR`), host listeners are kept.
    pub fn deactivate(&mut self) {
        if self.active {
            log::info!(
                "guest {}: {} stopped, closing {} channel(s)",
                self.params.config.guest_id,
                if self.pair == 0 {
                    "device".to_owned()
                } else {
                    format!("pair {}", self.pair)
                },
                self.channels.len()
            );
        }
        self.budget.release(self.channels.len() as u32);
        for (id, mut ch) in self.channels.drain() {
            self.stats.close_channel(id);
            host::unwatch(&self.epoll, &mut ch);
            if let Some(sock) = ch.sock.take() {
                if ch.state == State::Opening {
                    let _ = sock.send(&handshake::err_msg(ErrorCode::ConnReset, "transport reset"));
                }
            }
            let was = ch.state;
            let _ = ch.apply(Event::Reset);
            log::debug!("channel {id:#x} ({was:?}) reset by device stop");
        }
        self.forget_feeds();
        if self.pair == 0 {
            // The next driver (or this one after its reset) announces again.
            self.clear_guest_listeners();
            self.stats.active.store(false, Relaxed);
        }
        self.ctrl.clear();
        self.partial = None;
        self.ready.clear();
        self.share.reset();
        self.share_wait = None;
        self.seen = Self::unseen(self.pair);
        self.active = false;
        self.reset_pending = false;
        self.arm_listener(false);
        self.rearm_timer();
    }

    fn malformed(&mut self, ch: Option<u32>, what: &dyn std::fmt::Display) {
        add(&self.stats.totals(self.pair).malformed, 1);
        if let Some(c) = ch.and_then(|id| self.channels.get(&id)) {
            add(&c.counters.malformed, 1);
        }
        if self.log_limit.allow() {
            log::warn!(
                "guest {}: malformed input: {what}",
                self.params.config.guest_id
            );
        }
    }

    // ---------------------------------------------------------------- run

    /// Does one pass of pending work: host socket events (when `host` is
    /// set, or they are waiting while channels are ready for rx), tx
    /// messages, rx delivery and the event queue. A pass takes at
    /// most [`TX_BUDGET`] tx chains, fills at most [`RX_BUDGET`] rx buffers
    /// and serves one batch of host events; if work is left it arms the
    /// wake-up eventfd ([`Device::more_work`]) and returns, so the worker
    /// serves other events and vhost-user requests first.
    pub fn run(&mut self, rings: Rings<'_>, mem: &Mem, host: bool) -> Notify {
        let mut n = Notify::default();
        self.more = false;
        // While channels wait in the ready queue, host events are served
        // by every pass that finds them waiting, not only by passes the
        // host epoll fd woke: a pass started by a guest kick would
        // otherwise fill a whole rx budget from those channels before a
        // channel that became readable meanwhile joins the round-robin
        // (the wait a quiet channel sees next to a flooding one,
        // tests/fair_channels.rs). With none waiting (guest -> host
        // traffic) the check is skipped: nothing can get ahead of a new
        // reader, and the worker's epoll brings the host events next.
        if host || (!self.ready.is_empty() && self.host_ready()) {
            self.host_events();
        }
        let Rings { mut rx, mut tx, ev } = rings;
        let (mut tx_left, mut rx_left) = (TX_BUDGET, RX_BUDGET);
        loop {
            let mut progress = false;
            if let Some(q) = tx.as_deref_mut() {
                progress |= self.process_tx(q, mem, &mut n, &mut tx_left);
            }
            if let Some(q) = rx.as_deref_mut() {
                progress |= self.pump_rx(q, mem, &mut n, &mut rx_left);
            }
            if !progress {
                break;
            }
        }
        if let Some(q) = ev {
            self.pump_event(q, mem, &mut n);
        }
        if self.more && !self.wake_pending {
            match self.wake.write(1) {
                Ok(()) => self.wake_pending = true,
                Err(e) => log::warn!("wake-up eventfd: {e}"),
            }
        }
        self.rearm_timer();
        n
    }

    /// Whether the worker polls the tx ring itself after passes from now
    /// on (guest kicks stay off while it does). Whoever sets it must turn
    /// it off and re-enable tx notifications before the worker sleeps.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
    }

    /// Whether input may arrive that is worth polling for: the driver is
    /// live and a channel is open (host data or guest messages in flight).
    pub fn may_expect_input(&self) -> bool {
        self.active && !self.channels.is_empty()
    }

    /// Whether host events (socket input, timer, wake-up) are waiting,
    /// without serving them.
    pub fn host_ready(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.epoll.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, no timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    /// Whether the last [`Device::run`] stopped on a budget with work left
    /// (the host epoll fd is then readable until the next pass).
    pub fn more_work(&self) -> bool {
        self.more
    }

    fn signal(q: &mut Queue, mem: &Mem) -> bool {
        q.needs_notification(mem).unwrap_or(true)
    }

    // ----------------------------------------------------------------- tx

    /// Bytes the device holds for `id` (pending host writes), for tests.
    pub fn pending_bytes(&self, id: u32) -> usize {
        self.channels
            .get(&id)
            .map(|c| c.pending.iter().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Control messages queued towards the guest, for tests.
    pub fn ctrl_len(&self) -> usize {
        self.ctrl.len()
    }

    /// Open `kt.services` channels (kept socket ends), for tests.
    pub fn feed_count(&self) -> usize {
        self.discovery.len()
    }

    /// Counters of channel `id`, for tests.
    pub fn channel_counters(&self, id: u32) -> Option<Arc<Counters>> {
        self.channels.get(&id).map(|c| c.counters.clone())
    }
}
