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

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kt_proto::consts::{CHAN_DEVICE_BIT, CHAN_TRANSPORT, HDR_F_MORE, HDR_SIZE, MIN_RX_BUF_SIZE};
use kt_proto::{handshake, name, DecodeError, DeviceConfig, ErrorCode, Header, Limits, MsgType};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::chain::{parse_tx, Mem, RxBuf, TxError, TxMsg};
use crate::channel::{Channel, Event, State};
use crate::policy::Policy;
use crate::seqpacket::{Recv, SeqListener, SeqPacket};
use crate::stats::{add, Counters, Opener, Stats};

/// Control messages queued towards the guest above which tx is not read
/// (the guest must post rx buffers first). Bounds device memory against a
/// guest that floods tx and never posts rx buffers.
pub const CTRL_LIMIT: usize = 256;
/// Host connections waiting for their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// Longest handshake line accepted.
const HANDSHAKE_MAX: usize = 128;
/// Malformed-input log lines per second.
const LOG_BURST: u32 = 10;

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
const HANDSHAKE_BIT: u64 = 1 << 32;

/// Static parameters of the device.
#[derive(Clone, Debug)]
pub struct Params {
    /// Config space values.
    pub config: DeviceConfig,
    /// Window granted per channel for guest → host data.
    pub channel_buffer: u32,
    /// Time a host connection has to send its `CONNECT` line.
    pub handshake_timeout: Duration,
    /// Time the guest has to answer the `OPEN` of a host connection.
    pub open_timeout: Duration,
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

#[derive(Debug)]
struct LogLimit {
    what: &'static str,
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl LogLimit {
    fn new(what: &'static str) -> LogLimit {
        LogLimit {
            what,
            window: Instant::now(),
            count: 0,
            suppressed: 0,
        }
    }

    fn allow(&mut self) -> bool {
        if self.window.elapsed().as_secs() >= 1 {
            if self.suppressed > 0 {
                log::warn!("{} more {} messages suppressed", self.suppressed, self.what);
            }
            self.window = Instant::now();
            self.count = 0;
            self.suppressed = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count <= LOG_BURST {
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The device engine.
#[derive(Debug)]
pub struct Device {
    params: Params,
    limits: Limits,
    policy: Arc<Policy>,
    stats: Arc<Stats>,
    epoll: Epoll,
    listener: Option<SeqListener>,
    handshakes: HashMap<u64, Handshake>,
    next_handshake: u64,
    channels: HashMap<u32, Channel>,
    ctrl: VecDeque<Outgoing>,
    partial: Option<Outgoing>,
    ready: VecDeque<u32>,
    next_dev_id: u32,
    guest_listen: bool,
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
}

/// What accepting with the spare descriptor gave.
enum SpareAccept {
    /// A connection was accepted, refused with `ERR 24` and closed.
    Refused,
    /// Nothing was waiting.
    Empty,
    /// It did not help; pause the listener.
    Failed,
}

fn open_spare() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
}

fn new_timer() -> io::Result<TimerFd> {
    let t = TimerFd::new()?;
    let fd = t.as_raw_fd();
    // SAFETY: F_GETFL on the timer fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // Non-blocking: a timer re-armed between epoll_wait and its read must
    // not block the worker.
    // SAFETY: F_SETFL on the timer fd we own, with flags from F_GETFL.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

/// What one attempt to take a host message gave.
#[derive(Debug)]
enum HostRead {
    /// A whole message.
    Msg(Vec<u8>),
    /// A message of this many bytes is waiting but the guest lacks credit
    /// for it.
    Stall(u32),
    /// Nothing to read now.
    WouldBlock,
    /// The host closed the connection.
    Eof,
    /// A message over `max_msg_size` (its length).
    TooBig(usize),
    /// A socket error.
    Failed(io::Error),
}

/// Takes one message from `sock` if `credit` allows. With room for the
/// largest message it receives directly (one system call); otherwise it
/// peeks the size first so a message is never taken without credit.
fn recv_host(
    sock: &SeqPacket,
    scratch: &mut Vec<u8>,
    credit: &kt_proto::SendCredit,
    max: usize,
) -> HostRead {
    let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
    if credit.can_send(max as u32) {
        if scratch.len() != max + 1 {
            scratch.resize(max + 1, 0);
        }
        return match sock.recv(scratch) {
            Ok(Recv::Msg(n)) if n > max => HostRead::TooBig(n),
            Ok(Recv::Msg(n)) => HostRead::Msg(scratch[..n].to_vec()),
            Ok(Recv::Eof) => HostRead::Eof,
            Err(e) if would_block(&e) => HostRead::WouldBlock,
            Err(e) => HostRead::Failed(e),
        };
    }
    let len = match sock.peek_len() {
        Ok(Recv::Msg(len)) => len,
        Ok(Recv::Eof) => return HostRead::Eof,
        Err(e) if would_block(&e) => return HostRead::WouldBlock,
        Err(e) => return HostRead::Failed(e),
    };
    if len > max {
        return HostRead::TooBig(len);
    }
    if !credit.can_send(len as u32) {
        return HostRead::Stall(len as u32);
    }
    let mut payload = vec![0u8; len];
    match sock.recv(&mut payload) {
        Ok(Recv::Msg(n)) if n == len => HostRead::Msg(payload),
        // The peek said otherwise: never forward a cut message.
        Ok(Recv::Msg(n)) => HostRead::Failed(io::Error::other(format!(
            "message changed size between peek ({len}) and receive ({n})"
        ))),
        Ok(Recv::Eof) => HostRead::Eof,
        Err(e) => HostRead::Failed(e),
    }
}

fn err_code_for_connect(e: &io::Error) -> ErrorCode {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => ErrorCode::Acces,
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) | Some(libc::EMFILE) | Some(libc::ENFILE) => {
            ErrorCode::NoMem
        }
        _ => ErrorCode::ConnRefused,
    }
}

impl Device {
    /// A device with no driver yet. `listener` is the host → guest socket.
    pub fn new(
        params: Params,
        policy: Arc<Policy>,
        stats: Arc<Stats>,
        listener: Option<SeqListener>,
    ) -> io::Result<Device> {
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
        Ok(Device {
            limits: Limits {
                max_msg_size: params.config.max_msg_size,
            },
            params,
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
            next_dev_id: 0,
            guest_listen: false,
            seen: [false; 3],
            active: false,
            reset_pending: false,
            log_limit: LogLimit::new("malformed-input"),
            refuse_limit: LogLimit::new("refused-OPEN"),
            scratch: Vec::new(),
            listener_armed: false,
            listener_polled: false,
            listener_paused_until: None,
            spare_fd: Some(open_spare()?),
            timer,
            timer_at: None,
            fd_limit_log: LogLimit::new("out-of-descriptors"),
            handshake_deadlines: VecDeque::new(),
            open_deadlines: VecDeque::new(),
            wake,
            wake_pending: false,
            more: false,
        })
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
    }

    /// Number of channels in the table (open or closing).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether all three queues have been seen ready since the last reset.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Called once per activation for each queue when it is first seen
    /// ready, with the avail index it starts from. A non-zero start means
    /// the driver has channel state this device does not: send RESET.
    pub fn queue_started(&mut self, idx: usize, next_avail: u16) {
        if idx >= self.seen.len() || self.seen[idx] {
            return;
        }
        self.seen[idx] = true;
        if next_avail != 0 && !self.reset_pending {
            log::info!(
                "guest {}: queue {idx} starts at avail index {next_avail}; the driver has state \
                 this device lost, sending RESET",
                self.params.config.guest_id
            );
            self.reset_pending = true;
        }
        if self.seen.iter().all(|s| *s) && !self.active {
            self.active = true;
            self.stats.active.store(true, Relaxed);
            self.arm_listener(true);
            log::info!("guest {}: device active", self.params.config.guest_id);
        }
    }

    /// Whether `queue_started` has been called for `idx` since the last reset.
    pub fn queue_seen(&self, idx: usize) -> bool {
        self.seen.get(idx).copied().unwrap_or(true)
    }

    /// The driver went away or reset the device: every channel is closed
    /// (host sockets see EOF, pending host connections get `ERR`), host
    /// listeners are kept.
    pub fn deactivate(&mut self) {
        if self.active {
            log::info!(
                "guest {}: device stopped, closing {} channel(s)",
                self.params.config.guest_id,
                self.channels.len()
            );
        }
        for (id, mut ch) in self.channels.drain() {
            if let Some(sock) = ch.sock.take() {
                if ch.registered != 0 {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        sock.as_raw_fd(),
                        EpollEvent::new(EventSet::empty(), 0),
                    );
                }
                if ch.state == State::Opening {
                    let _ = sock.send(&handshake::err_msg(ErrorCode::ConnReset, "transport reset"));
                }
            }
            let was = ch.state;
            let _ = ch.apply(Event::Reset);
            log::debug!("channel {id:#x} ({was:?}) reset by device stop");
        }
        self.stats.clear_channels();
        self.ctrl.clear();
        self.partial = None;
        self.ready.clear();
        self.seen = [false; 3];
        self.active = false;
        self.reset_pending = false;
        self.stats.active.store(false, Relaxed);
        self.arm_listener(false);
        self.rearm_timer();
    }

    /// Adds or removes the listener and waiting handshakes from epoll: host
    /// connections are only served while a driver is live.
    fn arm_listener(&mut self, on: bool) {
        if self.listener_armed == on {
            return;
        }
        self.listener_armed = on;
        let op = || {
            if on {
                ControlOperation::Add
            } else {
                ControlOperation::Delete
            }
        };
        self.poll_listener(on && self.listener_paused_until.is_none());
        for (tok, h) in self.handshakes.iter_mut() {
            if h.registered != on {
                let _ = self.epoll.ctl(
                    op(),
                    h.sock.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, *tok),
                );
                h.registered = on;
            }
        }
    }

    /// Adds or removes the listener fd itself from epoll.
    fn poll_listener(&mut self, on: bool) {
        if self.listener_polled == on {
            return;
        }
        let Some(l) = &self.listener else {
            return;
        };
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        match self.epoll.ctl(
            op,
            l.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        ) {
            Ok(()) => self.listener_polled = on,
            Err(e) => log::warn!("listening socket epoll: {e}"),
        }
    }

    /// Takes the listener out of epoll for [`ACCEPT_PAUSE`] after an accept
    /// error that would otherwise leave it readable with nothing accepted.
    fn pause_listener(&mut self, e: &io::Error) {
        if self.fd_limit_log.allow() {
            log::warn!(
                "listening socket accept: {e}; not accepting for {} ms",
                ACCEPT_PAUSE.as_millis()
            );
        }
        self.listener_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        self.poll_listener(false);
    }

    /// Whether a handshake deadline entry still applies.
    fn handshake_due(&self, (at, tok): (Instant, u64)) -> bool {
        self.handshakes.get(&tok).is_some_and(|h| h.deadline == at)
    }

    /// Whether an open deadline entry still applies: the channel is still
    /// waiting for the guest's answer with its host connection.
    fn open_due(&self, (at, id): (Instant, u32)) -> bool {
        self.channels.get(&id).is_some_and(|c| {
            c.state == State::Opening && c.open_deadline == Some(at) && c.sock.is_some()
        })
    }

    /// The earliest deadline the timer must wake the device for (entries
    /// that no longer apply are dropped from the queue fronts first).
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(e) = self.handshake_deadlines.front().copied() {
            if self.handshake_due(e) {
                break;
            }
            self.handshake_deadlines.pop_front();
        }
        while let Some(e) = self.open_deadlines.front().copied() {
            if self.open_due(e) {
                break;
            }
            self.open_deadlines.pop_front();
        }
        [
            self.listener_paused_until,
            self.handshake_deadlines.front().map(|e| e.0),
            self.open_deadlines.front().map(|e| e.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes host connections whose `CONNECT` line did not come in time.
    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(e) = self.handshake_deadlines.front().copied() {
            if e.0 > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            if !self.handshake_due(e) {
                continue;
            }
            if let Some(h) = self.drop_handshake(e.1) {
                add(&self.stats.events.handshake_timeouts, 1);
                log::debug!("host connection sent no CONNECT line in time; closed");
                let _ = h.sock.send(&handshake::err_msg(
                    ErrorCode::TimedOut,
                    "no CONNECT line in time",
                ));
            }
        }
    }

    /// Fails host-opened channels the guest did not answer in time: the
    /// host program gets `ERR 110` and its connection is closed. The
    /// channel stays until the guest answers (SPEC §3.1: the id is the
    /// guest's to answer); a late `OPEN_OK` is answered with `CLOSE`.
    fn expire_opens(&mut self, now: Instant) {
        while let Some(e) = self.open_deadlines.front().copied() {
            if e.0 > now {
                break;
            }
            self.open_deadlines.pop_front();
            if !self.open_due(e) {
                continue;
            }
            let id = e.1;
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            ch.open_deadline = None;
            add(&self.stats.events.open_timeouts, 1);
            log::info!(
                "guest did not answer host connection to {:?} ({id:#x}) in time",
                ch.service
            );
            if let Some(s) = &ch.sock {
                let _ = s.send(&handshake::err_msg(
                    ErrorCode::TimedOut,
                    "guest did not answer in time",
                ));
            }
            self.drop_socket(id);
        }
    }

    /// Arms the timer for [`Device::next_deadline`] (or disarms it).
    fn rearm_timer(&mut self) {
        let next = self.next_deadline();
        if next == self.timer_at {
            return;
        }
        let r = match next {
            Some(t) => {
                // A zero duration would disarm the timer.
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(d, None)
            }
            None => self.timer.clear(),
        };
        match r {
            Ok(()) => self.timer_at = next,
            Err(e) => log::warn!("timer: {e}"),
        }
    }

    /// The timer fired: act on every deadline that has passed.
    fn on_timer(&mut self) {
        // Consume the expiration (non-blocking; nothing to read is fine).
        let _ = self.timer.wait();
        self.timer_at = None;
        let now = Instant::now();
        if self.listener_paused_until.is_some_and(|t| t <= now) {
            self.listener_paused_until = None;
            self.poll_listener(self.listener_armed);
        }
        self.expire_handshakes(now);
        self.expire_opens(now);
    }

    fn malformed(&mut self, ch: Option<u32>, what: &dyn std::fmt::Display) {
        add(&self.stats.device.malformed, 1);
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
    /// set), tx messages, rx delivery and the event queue. A pass takes at
    /// most [`TX_BUDGET`] tx chains, fills at most [`RX_BUDGET`] rx buffers
    /// and serves one batch of host events; if work is left it arms the
    /// wake-up eventfd ([`Device::more_work`]) and returns, so the worker
    /// serves other events and vhost-user requests first.
    pub fn run(&mut self, rings: Rings<'_>, mem: &Mem, host: bool) -> Notify {
        let mut n = Notify::default();
        self.more = false;
        if host {
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

    /// Whether the last [`Device::run`] stopped on a budget with work left
    /// (the host epoll fd is then readable until the next pass).
    pub fn more_work(&self) -> bool {
        self.more
    }

    fn signal(q: &mut Queue, mem: &Mem) -> bool {
        q.needs_notification(mem).unwrap_or(true)
    }

    // ----------------------------------------------------------------- tx

    fn process_tx(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify, left: &mut usize) -> bool {
        let mut progress = false;
        loop {
            if self.ctrl.len() >= CTRL_LIMIT {
                break;
            }
            if *left == 0 {
                // Notifications stay off: the wake-up brings us back.
                self.more = true;
                break;
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.malformed(None, &format_args!("tx ring: {e}"));
                        break;
                    }
                }
            };
            let head = chain.head_index();
            let r = parse_tx(chain, mem, &self.limits);
            match r {
                Ok(msg) => self.on_tx(msg),
                Err(e) => self.on_tx_error(e),
            }
            *left -= 1;
            if let Err(e) = q.add_used(mem, head, 0) {
                self.malformed(None, &format_args!("tx used ring: {e}"));
                break;
            }
            progress = true;
        }
        if progress && Self::signal(q, mem) {
            n.tx = true;
        }
        progress
    }

    fn known(&self, id: u32) -> bool {
        self.channels.contains_key(&id)
    }

    fn on_tx_error(&mut self, e: TxError) {
        match &e {
            TxError::Semantic { hdr, err } => {
                let (id, t) = (hdr.channel, hdr.msg_type);
                self.malformed(Some(id), &e);
                match (t, err) {
                    (MsgType::Open, DecodeError::BadName(_)) => {
                        self.refuse_open(id, ErrorCode::Inval);
                    }
                    (
                        MsgType::Data,
                        DecodeError::TooLarge { .. } | DecodeError::LengthMismatch { .. },
                    ) if self.known(id) => {
                        self.close_by_device(id, err.error_code());
                    }
                    _ => {}
                }
            }
            TxError::Length { hdr, .. } => {
                let id = hdr.channel;
                self.malformed(Some(id), &e);
                if hdr.msg_type != MsgType::Open && self.known(id) {
                    self.close_by_device(id, ErrorCode::Proto);
                }
            }
            TxError::Chain(_)
            | TxError::Memory(_)
            | TxError::Read(_)
            | TxError::Short(_)
            | TxError::Decode(_) => self.malformed(None, &e),
        }
    }

    fn on_tx(&mut self, msg: TxMsg) {
        let h = msg.hdr;
        let id = h.channel;
        if h.msg_type == MsgType::Open {
            self.on_open(h, &msg.payload);
            return;
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            self.on_unknown_channel(h);
            return;
        };
        // Every header carries the sender's current credit (SPEC §5).
        ch.send.on_peer(h.buf_alloc, h.fwd_cnt);
        // Resume reading only once the waiting message fits: a smaller
        // grant would stall again at once (and count and ask again).
        if ch.stalled && ch.send.can_send(ch.stall_need) {
            ch.stalled = false;
            self.push_ready(id);
        }
        match h.msg_type {
            MsgType::OpenOk => self.on_open_ok(id),
            MsgType::OpenErr => self.on_open_err(id, h.arg),
            MsgType::Data => self.on_data(h, msg.payload),
            MsgType::Close => self.on_close(id),
            MsgType::CreditUpdate => {}
            MsgType::CreditRequest => self.queue_credit_update(id, true),
            MsgType::Open | MsgType::Reset => {}
        }
    }

    fn on_unknown_channel(&mut self, h: Header) {
        match h.msg_type {
            MsgType::Close => {
                // A late CLOSE (we already forgot the channel): no answer.
                log::debug!("CLOSE for unknown channel {:#x} ignored", h.channel);
            }
            MsgType::OpenOk | MsgType::OpenErr if !self.reset_pending => {
                self.malformed(
                    None,
                    &format_args!(
                        "{:?} for channel {:#x} that is not opening",
                        h.msg_type, h.channel
                    ),
                );
            }
            _ => {
                self.malformed(
                    None,
                    &format_args!("{:?} for unknown channel {:#x}", h.msg_type, h.channel),
                );
                let mut c = Header::new(MsgType::Close, h.channel);
                c.arg = ErrorCode::ConnReset as u32;
                self.queue_ctrl(c, Vec::new(), false);
            }
        }
    }

    fn log_refusal(&mut self, name: &str, id: u32, why: &dyn std::fmt::Display) {
        if self.refuse_limit.allow() {
            log::warn!(
                "guest {}: refused OPEN {name:?} ({id:#x}): {why}",
                self.params.config.guest_id
            );
        }
    }

    fn refuse_open(&mut self, id: u32, code: ErrorCode) {
        add(&self.stats.events.open_refused, 1);
        let mut h = Header::new(MsgType::OpenErr, id);
        h.arg = code as u32;
        self.queue_ctrl(h, Vec::new(), false);
    }

    fn on_open(&mut self, h: Header, payload: &[u8]) {
        let id = h.channel;
        let gid = self.params.config.guest_id;
        if id == CHAN_TRANSPORT || id & CHAN_DEVICE_BIT != 0 || self.known(id) {
            self.malformed(
                None,
                &format_args!("OPEN with id {id:#x} in use or not the driver's"),
            );
            self.refuse_open(id, ErrorCode::Exist);
            return;
        }
        let name = match name::validate(payload) {
            Ok(n) => n.to_owned(),
            Err(e) => {
                self.malformed(None, &format_args!("OPEN {id:#x}: {e}"));
                self.refuse_open(id, ErrorCode::Inval);
                return;
            }
        };
        if self.channels.len() >= self.params.config.max_channels as usize {
            self.log_refusal(&name, id, &"too many channels");
            self.refuse_open(id, ErrorCode::MFile);
            return;
        }
        let Some(svc) = self.policy.get(&name) else {
            self.log_refusal(&name, id, &"not in policy");
            self.refuse_open(id, ErrorCode::NoEnt);
            return;
        };
        if let Some(max) = svc.max_channels {
            let open = self.channels.values().filter(|c| c.service == name).count();
            if open >= max as usize {
                self.log_refusal(&name, id, &format_args!("service limit of {max} channels"));
                self.refuse_open(id, ErrorCode::MFile);
                return;
            }
        }
        let sock = match SeqPacket::connect(&svc.socket, true) {
            Ok(s) => s,
            Err(e) => {
                let code = err_code_for_connect(&e);
                let why = format!("connect {}: {e}", svc.socket.display());
                self.log_refusal(&name, id, &why);
                self.refuse_open(id, code);
                return;
            }
        };
        let _ = sock.set_send_buffer(2 * (self.params.config.max_msg_size as usize + 4096));
        let counters = self.stats.open_channel(id, &name, Opener::Guest);
        let mut ch = Channel::new(
            &name,
            Opener::Guest,
            State::Open,
            sock,
            self.params.channel_buffer,
            h.buf_alloc,
            counters,
        );
        ch.send.on_peer(h.buf_alloc, h.fwd_cnt);
        self.channels.insert(id, ch);
        add(&self.stats.events.opened, 1);
        log::debug!("guest {gid}: channel {id:#x} open to {name:?}");
        self.queue_ctrl(Header::new(MsgType::OpenOk, id), Vec::new(), true);
        self.update_interest(id);
    }

    fn on_open_ok(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Err(e) = ch.apply(Event::OpenOk) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            return;
        }
        ch.open_deadline = None;
        let sent = ch.sock.as_ref().map(|s| s.send(&handshake::ok_msg(id)));
        add(&self.stats.events.opened, 1);
        match sent {
            Some(Ok(_)) => {
                log::debug!("channel {id:#x} to guest service {:?} open", ch.service);
                self.update_interest(id);
            }
            _ => self.close_from_host(id, ErrorCode::ConnReset),
        }
    }

    fn on_open_err(&mut self, id: u32, arg: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Err(e) = ch.apply(Event::OpenErr) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            return;
        }
        if let Some(ch) = self.remove_channel(id) {
            let code = ErrorCode::from_wire(arg);
            log::info!("guest refused host connection to {:?}: {code}", ch.service);
            if let Some(s) = &ch.sock {
                let _ = s.send(&handshake::err_msg(code, code.text()));
            }
        }
    }

    fn on_data(&mut self, h: Header, payload: Vec<u8>) {
        let id = h.channel;
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.state == State::CloseSent {
            // The reader is gone; late data is discarded (SPEC §3.2).
            log::debug!("DATA on closing channel {id:#x} discarded");
            return;
        }
        if ch.state != State::Open {
            self.malformed(
                Some(id),
                &format_args!("DATA on channel {id:#x} that is not open"),
            );
            self.close_by_device(id, ErrorCode::Proto);
            return;
        }
        if h.seq != ch.rx_seq {
            let want = ch.rx_seq;
            self.malformed(
                Some(id),
                &format_args!("DATA seq {} on channel {id:#x}, expected {want}", h.seq),
            );
            self.close_by_device(id, ErrorCode::Proto);
            return;
        }
        if let Err(e) = ch.recv.on_receive(h.msg_len) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            self.close_by_device(id, ErrorCode::Proto);
            return;
        }
        ch.rx_seq = ch.rx_seq.wrapping_add(1);
        if ch.host_unread {
            // The host closed without reading: nobody will (SPEC §3.2,
            // the reader has gone); the credit comes back at once.
            log::debug!("DATA on channel {id:#x} discarded: the host closed");
            ch.recv.on_consume(payload.len() as u32);
            self.queue_credit_update(id, false);
            return;
        }
        ch.pending.push_back(payload);
        self.flush_pending(id);
    }

    fn on_close(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let was = ch.state;
        if let Err(e) = ch.apply(Event::GuestClose) {
            // A second CLOSE.
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            return;
        }
        if was == State::Opening {
            // The guest closed before accepting: a refusal, still counted
            // (docs/vhost-device.md, "Things SPEC leaves open" 4).
            self.malformed(
                Some(id),
                &format_args!("CLOSE on channel {id:#x} before OPEN_OK"),
            );
            if let Some(ch) = self.remove_channel(id) {
                if let Some(s) = &ch.sock {
                    let _ = s.send(&handshake::err_msg(ErrorCode::ConnReset, "guest closed"));
                }
            }
            return;
        }
        // Deliver what the guest sent before CLOSE, then hang up and answer
        // (`maybe_finish`): the answer comes only once the host has every
        // message, so the guest cannot reuse the id while the device still
        // holds data for it.
        self.flush_pending(id);
        self.update_interest(id);
        self.maybe_finish(id);
    }

    /// Writes queued guest messages to the host socket until it would block.
    fn flush_pending(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let mut failed = None;
        while let Some(msg) = ch.pending.front() {
            let Some(sock) = &ch.sock else {
                break;
            };
            match sock.send(msg) {
                Ok(_) => {
                    let len = msg.len() as u64;
                    ch.pending.pop_front();
                    ch.recv.on_consume(len as u32);
                    add(&ch.counters.msgs_to_host, 1);
                    add(&ch.counters.bytes_to_host, len);
                    add(&self.stats.device.msgs_to_host, 1);
                    add(&self.stats.device.bytes_to_host, len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            let gone = matches!(
                e.raw_os_error(),
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
            );
            if gone && ch.wants_host_input() {
                // The host closed (or stopped reading) with guest data
                // unwritten. What it sent before still goes to the guest;
                // its hang-up arrives as an epoll event and ends the
                // channel after that data.
                let n = ch.host_stopped_reading();
                log::debug!("channel {id:#x}: host stopped reading ({e}); {n} message(s) dropped");
                self.queue_credit_update(id, false);
                self.update_interest(id);
                return;
            }
            let code = if e.raw_os_error() == Some(libc::EMSGSIZE) {
                log::warn!("channel {id:#x}: host socket cannot carry a message: {e}");
                ErrorCode::MsgSize
            } else {
                log::debug!("channel {id:#x}: host send: {e}");
                ErrorCode::ConnReset
            };
            self.close_from_host(id, code);
            return;
        }
        self.queue_credit_update(id, false);
        self.update_interest(id);
        self.maybe_finish(id);
    }

    fn queue_credit_update(&mut self, id: u32, force: bool) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.update_queued || ch.state.close_sent() || !(force || ch.recv.needs_update()) {
            return;
        }
        ch.update_queued = true;
        self.queue_ctrl(Header::new(MsgType::CreditUpdate, id), Vec::new(), true);
    }

    // ------------------------------------------------------------- closing

    /// The host side went away (EOF, error, oversized message): tell the
    /// guest with CLOSE `code` and drop the socket.
    fn close_from_host(&mut self, id: u32, code: ErrorCode) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if !ch.state.close_sent() && ch.apply(Event::DeviceClose).is_ok() {
            let mut h = Header::new(MsgType::Close, id);
            h.arg = code as u32;
            self.queue_ctrl(h, Vec::new(), true);
        }
        self.drop_socket(id);
        self.maybe_finish(id);
    }

    /// The guest broke the protocol on a known channel: CLOSE `code`.
    fn close_by_device(&mut self, id: u32, code: ErrorCode) {
        self.close_from_host(id, code);
    }

    fn drop_socket(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Some(sock) = ch.sock.take() {
            if ch.registered != 0 {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), 0),
                );
                ch.registered = 0;
            }
        }
        ch.pending.clear();
    }

    fn maybe_finish(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.state == State::CloseReceived && ch.pending.is_empty() {
            // The guest's CLOSE, answered once its data is delivered.
            let _ = ch.apply(Event::DeviceClose);
            self.queue_ctrl(Header::new(MsgType::Close, id), Vec::new(), true);
        }
        if self.channels.get(&id).is_some_and(Channel::finished) {
            self.remove_channel(id);
        }
    }

    fn remove_channel(&mut self, id: u32) -> Option<Channel> {
        let mut ch = self.channels.remove(&id)?;
        if let Some(sock) = &ch.sock {
            if ch.registered != 0 {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), 0),
                );
                ch.registered = 0;
            }
        }
        self.stats.close_channel(id);
        log::debug!("channel {id:#x} ({:?}) closed", ch.service);
        Some(ch)
    }

    // --------------------------------------------------------------- epoll

    fn update_interest(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let want = ch.wanted_events();
        if want == ch.registered {
            return;
        }
        let Some(sock) = &ch.sock else {
            return;
        };
        let fd = sock.as_raw_fd();
        let ev = EpollEvent::new(EventSet::from_bits_truncate(want), u64::from(id));
        let r = match (ch.registered, want) {
            (0, _) => self.epoll.ctl(ControlOperation::Add, fd, ev),
            (_, 0) => self.epoll.ctl(ControlOperation::Delete, fd, ev),
            _ => self.epoll.ctl(ControlOperation::Modify, fd, ev),
        };
        match r {
            Ok(()) => ch.registered = want,
            Err(e) => {
                log::warn!("channel {id:#x}: epoll: {e}");
                self.close_from_host(id, ErrorCode::NoMem);
            }
        }
    }

    fn push_ready(&mut self, id: u32) {
        if let Some(ch) = self.channels.get_mut(&id) {
            if !ch.in_ready && ch.wants_host_input() {
                ch.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Serves one batch of up to 64 host events (never blocks). The set is
    /// level-triggered: events left over keep the epoll fd readable and
    /// come back in the next pass.
    fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("host epoll: {e}");
                    return;
                }
            }
        };
        for ev in &events[..n] {
            let tok = ev.data();
            let set = EventSet::from_bits_truncate(ev.events());
            if tok == LISTENER_TOKEN {
                self.accept_hosts();
            } else if tok == TIMER_TOKEN {
                self.on_timer();
            } else if tok == WAKE_TOKEN {
                // Consumed; the pass this runs in does the work left over.
                let _ = self.wake.read();
                self.wake_pending = false;
            } else if tok & HANDSHAKE_BIT != 0 {
                self.handshake_event(tok);
            } else if let Ok(id) = u32::try_from(tok) {
                self.channel_event(id, set);
            }
        }
    }

    fn channel_event(&mut self, id: u32, set: EventSet) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            self.host_hung_up(id);
            return;
        }
        if set.contains(EventSet::IN) {
            ch.readable = true;
            self.push_ready(id);
        }
        if set.contains(EventSet::OUT) {
            self.flush_pending(id);
        }
        self.update_interest(id);
    }

    /// The host closed its connection (or it failed). Registered for
    /// hang-up whatever else the channel waits for, so this runs as soon as
    /// it happens, even while input is paused for credit or rx buffers. The
    /// fd leaves epoll for good; guest data still waiting is written if the
    /// socket takes it; then what the host sent before its close is read
    /// and forwarded (credit permitting) and only then the guest gets CLOSE
    /// (`read_host` at EOF).
    fn host_hung_up(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        log::debug!("channel {id:#x} ({:?}): host hung up", ch.service);
        if let Some(sock) = &ch.sock {
            if ch.registered != 0 {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), 0),
                );
            }
        }
        ch.registered = 0;
        ch.hup = true;
        ch.readable = true;
        if !ch.pending.is_empty() {
            self.flush_pending(id);
        }
        match self.channels.get(&id) {
            Some(ch) if ch.wants_host_input() => self.push_ready(id),
            Some(_) => self.close_from_host(id, ErrorCode::ConnReset),
            None => {}
        }
    }

    fn accept_hosts(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = &self.listener else {
                return;
            };
            let sock = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match e.raw_os_error() {
                    // Interrupted, or this one connection failed: the next
                    // one may be fine.
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                    Some(libc::EMFILE | libc::ENFILE) => match self.accept_with_spare() {
                        SpareAccept::Refused => continue,
                        SpareAccept::Empty => return,
                        SpareAccept::Failed => {
                            self.pause_listener(&e);
                            return;
                        }
                    },
                    _ => {
                        self.pause_listener(&e);
                        return;
                    }
                },
            };
            add(&self.stats.events.host_connects, 1);
            if self.handshakes.len() >= MAX_HANDSHAKES {
                let _ = sock.send(&handshake::err_msg(
                    ErrorCode::MFile,
                    "too many pending connections",
                ));
                continue;
            }
            self.next_handshake = self.next_handshake.wrapping_add(1) & 0xffff_ffff;
            let tok = HANDSHAKE_BIT | self.next_handshake;
            let deadline = Instant::now() + self.params.handshake_timeout;
            let registered = self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, tok),
                )
                .is_ok();
            self.handshakes.insert(
                tok,
                Handshake {
                    sock,
                    registered,
                    deadline,
                },
            );
            self.handshake_deadlines.push_back((deadline, tok));
        }
    }

    /// Out of descriptors with a connection queued: frees the spare
    /// descriptor, accepts the connection with it, answers
    /// `ERR 24 too many open files` and closes it, then takes the spare
    /// back. The listener is thus drained instead of staying readable (a
    /// level-triggered listener would otherwise wake the worker forever).
    fn accept_with_spare(&mut self) -> SpareAccept {
        let spare = match self.spare_fd.take() {
            Some(fd) => Some(fd),
            // Lost earlier: maybe a descriptor is free again now.
            None => open_spare().ok(),
        };
        let Some(spare) = spare else {
            return SpareAccept::Failed;
        };
        drop(spare);
        let r = match self.listener.as_ref().map(SeqListener::accept) {
            Some(Ok(sock)) => {
                add(&self.stats.events.fd_limit_refusals, 1);
                add(&self.stats.events.host_connects, 1);
                let _ = sock.send(&handshake::err_msg(
                    ErrorCode::MFile,
                    "too many open files in kt-vhost-device",
                ));
                drop(sock);
                if self.fd_limit_log.allow() {
                    log::warn!("out of file descriptors: refused a host connection (ERR 24)");
                }
                SpareAccept::Refused
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => SpareAccept::Empty,
            Some(Err(_)) | None => SpareAccept::Failed,
        };
        match open_spare() {
            Ok(fd) => self.spare_fd = Some(fd),
            Err(e) => {
                if self.fd_limit_log.allow() {
                    log::warn!("cannot reopen the spare descriptor: {e}");
                }
            }
        }
        r
    }

    fn handshake_event(&mut self, tok: u64) {
        let Some(h) = self.handshakes.get(&tok) else {
            return;
        };
        let mut buf = [0u8; HANDSHAKE_MAX];
        let r = h.sock.recv(&mut buf);
        add(
            &self.stats.events.passed_fds_closed,
            h.sock.take_passed_fds_closed(),
        );
        let n = match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(Recv::Msg(n)) => n,
            Ok(Recv::Eof) | Err(_) => {
                self.drop_handshake(tok);
                return;
            }
        };
        let Some(h) = self.drop_handshake(tok) else {
            return;
        };
        let reply_err = |code: ErrorCode, text: &str| {
            let _ = h.sock.send(&handshake::err_msg(code, text));
        };
        if n > HANDSHAKE_MAX {
            reply_err(ErrorCode::Inval, "handshake line too long");
            return;
        }
        let name = match handshake::parse_connect(&buf[..n]) {
            Ok(name) => name.to_owned(),
            Err(e) => {
                reply_err(ErrorCode::Inval, &e.to_string());
                return;
            }
        };
        if !self.active || !self.guest_listen {
            log::info!("host connection to guest service {name:?} refused: guest does not accept host connections");
            reply_err(
                ErrorCode::ConnRefused,
                "guest does not accept host connections",
            );
            return;
        }
        if self.channels.len() >= self.params.config.max_channels as usize {
            reply_err(ErrorCode::MFile, "too many channels");
            return;
        }
        let id = self.alloc_device_id();
        let counters = self.stats.open_channel(id, &name, Opener::Host);
        let _ = h
            .sock
            .set_send_buffer(2 * (self.params.config.max_msg_size as usize + 4096));
        let mut ch = Channel::new(
            &name,
            Opener::Host,
            State::Opening,
            h.sock,
            self.params.channel_buffer,
            0,
            counters,
        );
        let deadline = Instant::now() + self.params.open_timeout;
        ch.open_deadline = Some(deadline);
        self.open_deadlines.push_back((deadline, id));
        self.channels.insert(id, ch);
        let payload = name.into_bytes();
        let hdr = Header::with_payload(MsgType::Open, id, payload.len() as u32);
        self.queue_ctrl(hdr, payload, true);
    }

    fn drop_handshake(&mut self, tok: u64) -> Option<Handshake> {
        let h = self.handshakes.remove(&tok)?;
        if h.registered {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.sock.as_raw_fd(),
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
        Some(h)
    }

    fn alloc_device_id(&mut self) -> u32 {
        loop {
            self.next_dev_id = (self.next_dev_id.wrapping_add(1)) & !CHAN_DEVICE_BIT;
            if self.next_dev_id == 0 {
                continue;
            }
            let id = self.next_dev_id | CHAN_DEVICE_BIT;
            if !self.channels.contains_key(&id) {
                return id;
            }
        }
    }

    // ----------------------------------------------------------------- rx

    fn queue_ctrl(&mut self, hdr: Header, payload: Vec<u8>, fill: bool) {
        self.ctrl.push_back(Outgoing {
            hdr,
            payload,
            off: 0,
            fill,
        });
    }

    /// Fills the channel's credit into `hdr` (it is being sent now).
    fn fill_credit(&mut self, hdr: &mut Header) {
        if let Some(ch) = self.channels.get_mut(&hdr.channel) {
            hdr.buf_alloc = ch.recv.buf_alloc;
            hdr.fwd_cnt = ch.recv.fwd_cnt;
            ch.recv.advertised();
            if hdr.msg_type == MsgType::CreditUpdate {
                ch.update_queued = false;
            }
        }
    }

    /// The next message for rx: control first, then host data round-robin.
    fn next_outgoing(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(mut o) = self.ctrl.pop_front() {
                if o.fill {
                    let mut h = o.hdr;
                    self.fill_credit(&mut h);
                    o.hdr = h;
                }
                return Some(o);
            }
            // Reading host input may queue control messages (CLOSE on EOF,
            // CREDIT_REQUEST on a stall): those go out first.
            let id = self.ready.pop_front()?;
            if let Some(o) = self.read_host(id) {
                return Some(o);
            }
        }
    }

    /// Reads one host message of channel `id` if the guest has credit.
    fn read_host(&mut self, id: u32) -> Option<Outgoing> {
        let max = self.params.config.max_msg_size as usize;
        let ch = self.channels.get_mut(&id)?;
        ch.in_ready = false;
        if !ch.wants_host_input() || !ch.readable {
            return None;
        }
        let mut got = recv_host(ch.sock.as_ref()?, &mut self.scratch, &ch.send, max);
        add(
            &self.stats.events.passed_fds_closed,
            ch.sock
                .as_ref()
                .map_or(0, SeqPacket::take_passed_fds_closed),
        );
        let mut stopped_reading = false;
        if matches!(&got, HostRead::Failed(e) if e.raw_os_error() == Some(libc::ECONNRESET)) {
            // The host closed with guest data unread. The kernel says so
            // once; the messages it sent before closing are still queued.
            let n = ch.host_stopped_reading();
            log::debug!(
                "channel {id:#x}: host closed with guest data unread; {n} message(s) dropped"
            );
            stopped_reading = true;
            got = recv_host(ch.sock.as_ref()?, &mut self.scratch, &ch.send, max);
            add(
                &self.stats.events.passed_fds_closed,
                ch.sock
                    .as_ref()
                    .map_or(0, SeqPacket::take_passed_fds_closed),
            );
        }
        let end = if ch.host_unread {
            ErrorCode::ConnReset
        } else {
            ErrorCode::Ok
        };
        if stopped_reading {
            self.queue_credit_update(id, false);
            self.update_interest(id);
        }
        let ch = self.channels.get_mut(&id)?;
        let payload = match got {
            HostRead::Msg(p) => p,
            HostRead::Stall(need) => {
                ch.stall_need = need;
                if !ch.stalled {
                    ch.stalled = true;
                    add(&ch.counters.credit_stalls, 1);
                    add(&self.stats.device.credit_stalls, 1);
                    self.queue_ctrl(Header::new(MsgType::CreditRequest, id), Vec::new(), true);
                }
                return None;
            }
            HostRead::WouldBlock => {
                ch.readable = false;
                if ch.hup {
                    // Hung up and drained without EOF: nothing more comes.
                    self.close_from_host(id, end);
                } else {
                    self.update_interest(id);
                }
                return None;
            }
            HostRead::Eof => {
                self.close_from_host(id, end);
                return None;
            }
            HostRead::TooBig(len) => {
                add(&ch.counters.malformed, 1);
                add(&self.stats.device.malformed, 1);
                log::warn!(
                    "channel {id:#x} ({:?}): host sent a {len}-byte message, max is {max}; closing",
                    ch.service
                );
                self.close_from_host(id, ErrorCode::MsgSize);
                return None;
            }
            HostRead::Failed(e) => {
                log::debug!("channel {id:#x}: host receive: {e}");
                self.close_from_host(id, ErrorCode::ConnReset);
                return None;
            }
        };
        let len = payload.len();
        let len32 = len as u32;
        ch.send.on_send(len32);
        let mut hdr = Header::with_payload(MsgType::Data, id, len32);
        hdr.seq = ch.tx_seq;
        ch.tx_seq = ch.tx_seq.wrapping_add(1);
        hdr.buf_alloc = ch.recv.buf_alloc;
        hdr.fwd_cnt = ch.recv.fwd_cnt;
        ch.recv.advertised();
        add(&ch.counters.msgs_to_guest, 1);
        add(&ch.counters.bytes_to_guest, len as u64);
        add(&self.stats.device.msgs_to_guest, 1);
        add(&self.stats.device.bytes_to_guest, len as u64);
        // Round-robin: back of the queue while it may have more.
        ch.in_ready = true;
        self.ready.push_back(id);
        Some(Outgoing {
            hdr,
            payload,
            off: 0,
            fill: false,
        })
    }

    /// Pops rx chains until one is usable (bad ones are returned unused).
    fn pop_rx<'m>(&mut self, q: &mut Queue, mem: &'m Mem, used: &mut bool) -> Option<RxBuf<'m>> {
        loop {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(e) => {
                        self.malformed(None, &format_args!("rx ring: {e}"));
                        return None;
                    }
                }
            };
            let head = chain.head_index();
            match RxBuf::new(chain, mem) {
                Ok(b) if b.capacity() >= MIN_RX_BUF_SIZE as usize => return Some(b),
                Ok(b) => {
                    let cap = b.capacity();
                    self.malformed(
                        None,
                        &format_args!("rx buffer of {cap} bytes (minimum {MIN_RX_BUF_SIZE})"),
                    );
                }
                Err(e) => self.malformed(None, &format_args!("rx chain: {e}")),
            }
            if q.add_used(mem, head, 0).is_err() {
                return None;
            }
            *used = true;
        }
    }

    fn pump_rx(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify, left: &mut usize) -> bool {
        let mut used = false;
        loop {
            if *left == 0 {
                self.more = true;
                break;
            }
            if self.partial.is_none() {
                self.partial = self.next_outgoing();
                if self.partial.is_none() {
                    break;
                }
            }
            let Some(mut buf) = self.pop_rx(q, mem, &mut used) else {
                break;
            };
            let Some(o) = self.partial.as_mut() else {
                break;
            };
            let room = buf.capacity() - HDR_SIZE;
            let rest = o.payload.len() - o.off;
            let chunk = rest.min(room);
            let mut hdr = o.hdr;
            hdr.len = chunk as u32;
            if chunk < rest {
                hdr.flags |= HDR_F_MORE;
            }
            let head = buf.head;
            let r = buf.put(&hdr, &o.payload[o.off..o.off + chunk]);
            o.off += chunk;
            let done = o.off >= o.payload.len();
            let len = match r {
                Ok(len) => len,
                Err(e) => {
                    self.malformed(None, &format_args!("rx write: {e}"));
                    0
                }
            };
            if done {
                self.partial = None;
            }
            *left -= 1;
            if let Err(e) = q.add_used(mem, head, len) {
                self.malformed(None, &format_args!("rx used ring: {e}"));
                break;
            }
            used = true;
        }
        // Evaluated once per batch of used entries; never reset a pending
        // signal from an earlier batch of this run.
        if used {
            n.rx |= Self::signal(q, mem);
        }
        used
    }

    fn pump_event(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify) {
        let mut used = false;
        while self.reset_pending {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            let head = chain.head_index();
            let len = match RxBuf::new(chain, mem) {
                Ok(mut b) if b.capacity() >= HDR_SIZE => {
                    match b.put(&Header::new(MsgType::Reset, CHAN_TRANSPORT), &[]) {
                        Ok(len) => {
                            self.reset_pending = false;
                            add(&self.stats.events.resets, 1);
                            log::info!("guest {}: RESET sent", self.params.config.guest_id);
                            len
                        }
                        Err(e) => {
                            self.malformed(None, &format_args!("event write: {e}"));
                            0
                        }
                    }
                }
                Ok(_) => {
                    self.malformed(None, &"event buffer shorter than a header");
                    0
                }
                Err(e) => {
                    self.malformed(None, &format_args!("event chain: {e}"));
                    0
                }
            };
            if q.add_used(mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        if used {
            n.ev = Self::signal(q, mem);
        }
    }

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

    /// Counters of channel `id`, for tests.
    pub fn channel_counters(&self, id: u32) -> Option<Arc<Counters>> {
        self.channels.get(&id).map(|c| c.counters.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use kt_proto::consts::DEFAULT_RX_BUF_SIZE;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const QSIZE: u16 = 512;
    const DATA: u64 = 0x40_0000;

    /// A directory for the rig's service socket, removed on drop.
    struct TestDir(std::path::PathBuf);

    impl TestDir {
        fn new() -> TestDir {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("kt-dev-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        fn join(&self, name: &str) -> std::path::PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Rig<'a> {
        mem: &'a Mem,
        vq: [MockSplitQueue<'a, Mem>; 3],
        q: [Queue; 3],
        off: [u16; 3],
        used_seen: [u16; 3],
        data_at: u64,
        dev: Device,
        stats: Arc<Stats>,
        listener: SeqListener,
        _dir: TestDir,
    }

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a Mem) -> Rig<'a> {
            Rig::with_window(mem, 4 * (8192 + 32))
        }

        fn with_window(mem: &'a Mem, window: u32) -> Rig<'a> {
            let dir = TestDir::new();
            let path = dir.join("svc.sock");
            let listener = SeqListener::bind(&path).unwrap();
            let text = format!(
                "[[service]]\nname = \"svc\"\nsocket = \"{}\"\n",
                path.display()
            );
            let policy = Policy::parse(std::path::Path::new("t.toml"), &text).unwrap();
            let stats = Arc::new(Stats::new(1));
            let params = Params {
                config: DeviceConfig {
                    max_msg_size: 8192,
                    max_channels: 8,
                    rx_buf_size: DEFAULT_RX_BUF_SIZE,
                    guest_id: 1,
                },
                channel_buffer: window,
                handshake_timeout: Duration::from_secs(10),
                open_timeout: Duration::from_secs(30),
            };
            let mut dev = Device::new(params, Arc::new(policy), stats.clone(), None).unwrap();
            for i in 0..3 {
                dev.queue_started(i, 0);
            }
            let vq = [
                MockSplitQueue::create(mem, GuestAddress(0x1000), QSIZE),
                MockSplitQueue::create(mem, GuestAddress(0x10_0000), QSIZE),
                MockSplitQueue::create(mem, GuestAddress(0x20_0000), QSIZE),
            ];
            let q = [
                vq[0].create_queue().unwrap(),
                vq[1].create_queue().unwrap(),
                vq[2].create_queue().unwrap(),
            ];
            Rig {
                mem,
                vq,
                q,
                off: [0; 3],
                used_seen: [0; 3],
                data_at: DATA,
                dev,
                stats,
                listener,
                _dir: dir,
            }
        }

        fn alloc(&mut self, len: u32) -> u64 {
            let a = self.data_at;
            self.data_at += u64::from(len).max(16) + 16;
            a
        }

        fn add(&mut self, q: usize, descs: &[(u64, u32, u32)]) {
            let n = descs.len() as u16;
            let base = self.off[q];
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, (a, l, f))| {
                    let last = i + 1 == descs.len();
                    let flags = if last { *f } else { *f | 1 };
                    let next = if last { 0 } else { base + i as u16 + 1 };
                    RawDescriptor::from(SplitDescriptor::new(*a, *l, flags as u16, next))
                })
                .collect();
            self.vq[q].add_desc_chains(&raw, base).unwrap();
            self.off[q] = (base + n) % QSIZE;
        }

        fn send(&mut self, hdr: &Header, payload: &[u8]) {
            let a = self.alloc(32 + payload.len() as u32);
            self.mem
                .write_slice(&hdr.encode(), GuestAddress(a))
                .unwrap();
            self.mem.write_slice(payload, GuestAddress(a + 32)).unwrap();
            self.add(1, &[(a, 32 + payload.len() as u32, 0)]);
        }

        fn post_rx(&mut self, n: usize, size: u32) {
            for _ in 0..n {
                let a = self.alloc(size);
                self.add(0, &[(a, size, VRING_DESC_F_WRITE)]);
            }
        }

        /// One pass, as the worker runs it for one event (`host`: the
        /// host epoll fd's event; otherwise a queue kick).
        fn pass(&mut self, with_rx: bool, host: bool) -> Notify {
            let [rx, tx, ev] = &mut self.q;
            let rings = Rings {
                rx: with_rx.then_some(rx),
                tx: Some(tx),
                ev: Some(ev),
            };
            self.dev.run(rings, self.mem, host)
        }

        /// Passes until no budget stops one, as the worker's event loop
        /// does when the wake-up eventfd fires.
        fn run(&mut self, with_rx: bool) -> Notify {
            let mut n = Notify::default();
            loop {
                let p = self.pass(with_rx, true);
                n.rx |= p.rx;
                n.tx |= p.tx;
                n.ev |= p.ev;
                if !self.dev.more_work() {
                    return n;
                }
            }
        }

        fn used_idx(&self, q: usize) -> u16 {
            self.mem
                .read_obj(self.vq[q].used_addr().unchecked_add(2))
                .unwrap()
        }

        /// Used rx/event entries not yet looked at: (header, payload).
        fn take_used(&mut self, q: usize) -> Vec<(Header, Vec<u8>)> {
            let mut out = vec![];
            let end = self.used_idx(q);
            while self.used_seen[q] != end {
                let at = self.vq[q]
                    .used_addr()
                    .unchecked_add(4 + 8 * u64::from(self.used_seen[q] % QSIZE));
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
                self.used_seen[q] = self.used_seen[q].wrapping_add(1);
                let d = self.vq[q].desc_table().load(id as u16).unwrap();
                let d = SplitDescriptor::from(d);
                if len == 0 {
                    continue;
                }
                let mut buf = vec![0u8; len as usize];
                self.mem.read_slice(&mut buf, d.addr()).unwrap();
                out.push((Header::decode(&buf).unwrap(), buf[32..].to_vec()));
            }
            out
        }

        fn open(&mut self, id: u32, buf_alloc: u32) -> SeqPacket {
            let mut h = Header::with_payload(MsgType::Open, id, 3);
            h.buf_alloc = buf_alloc;
            self.send(&h, b"svc");
            self.run(true);
            let host = self.listener.accept_blocking().unwrap();
            let got = self.take_used(0);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0.msg_type, MsgType::OpenOk);
            assert_eq!(got[0].0.buf_alloc, self.dev.params.channel_buffer);
            host
        }
    }

    use vm_memory::Address;

    #[test]
    fn data_both_ways_with_fragments() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.post_rx(16, 256);
        let host = r.open(1, 1 << 20);
        let mut h = Header::with_payload(MsgType::Data, 1, 5);
        h.buf_alloc = 1 << 20;
        r.send(&h, b"hello");
        r.run(true);
        let mut buf = [0u8; 64];
        assert_eq!(host.recv(&mut buf).unwrap(), Recv::Msg(5));
        assert_eq!(&buf[..5], b"hello");
        // 600 bytes into 256-byte buffers: 224 + 224 + 152. With EVENT_IDX
        // and used_event at the next entry, the batch must be signalled
        // even though later passes of the same run add nothing.
        r.q[0].set_event_idx(true);
        let used_event = r.vq[0].avail_addr().unchecked_add(4 + 2 * u64::from(QSIZE));
        r.mem.write_obj(r.used_idx(0), used_event).unwrap();
        let msg: Vec<u8> = (0..600).map(|i| i as u8).collect();
        host.send(&msg).unwrap();
        host.send(b"").unwrap();
        assert!(r.run(true).rx, "rx batch not signalled");
        let got = r.take_used(0);
        assert_eq!(got.len(), 4, "{got:?}");
        let lens: Vec<u32> = got.iter().map(|(h, _)| h.len).collect();
        assert_eq!(lens, [224, 224, 152, 0]);
        assert!(got[0].0.more() && got[1].0.more() && !got[2].0.more());
        assert!(got[..3].iter().all(|(h, _)| h.msg_len == 600 && h.seq == 0));
        assert_eq!(got[3].0.seq, 1);
        let joined: Vec<u8> = got[..3].iter().flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(joined, msg);
        // Host hangs up: CLOSE reaches the guest.
        drop(host);
        r.run(true);
        let got = r.take_used(0);
        assert_eq!(got[0].0.msg_type, MsgType::Close);
        assert_eq!(r.stats.snapshot().device.msgs_to_guest, 2);
    }

    #[test]
    fn host_input_waits_for_credit() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.post_rx(16, 256);
        // Window for exactly one 60-byte message.
        let host = r.open(2, kt_proto::credit::cost(60) + 10);
        host.send(&[1u8; 60]).unwrap();
        host.send(&[2u8; 60]).unwrap();
        r.run(true);
        let got = r.take_used(0);
        let types: Vec<MsgType> = got.iter().map(|(h, _)| h.msg_type).collect();
        assert_eq!(types, [MsgType::Data, MsgType::CreditRequest]);
        assert_eq!(r.stats.snapshot().device.credit_stalls, 1);
        r.run(true);
        assert!(r.take_used(0).is_empty(), "sent beyond credit");
        // Too little credit for the waiting message: no new stall, no new
        // CREDIT_REQUEST.
        let mut u = Header::new(MsgType::CreditUpdate, 2);
        u.buf_alloc = kt_proto::credit::cost(60) + 10;
        u.fwd_cnt = 20;
        r.send(&u, &[]);
        r.run(true);
        assert!(r.take_used(0).is_empty(), "sent beyond credit");
        assert_eq!(r.stats.snapshot().device.credit_stalls, 1);
        let mut u = Header::new(MsgType::CreditUpdate, 2);
        u.buf_alloc = kt_proto::credit::cost(60) + 10;
        u.fwd_cnt = kt_proto::credit::cost(60);
        r.send(&u, &[]);
        r.run(true);
        let got = r.take_used(0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, [2u8; 60]);
    }

    #[test]
    fn hang_up_is_seen_while_input_waits_for_credit() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.post_rx(16, 256);
        let host = r.open(2, kt_proto::credit::cost(60) + 10);
        host.send(&[1u8; 60]).unwrap();
        host.send(&[2u8; 60]).unwrap();
        r.run(true);
        let types: Vec<MsgType> = r.take_used(0).iter().map(|(h, _)| h.msg_type).collect();
        assert_eq!(types, [MsgType::Data, MsgType::CreditRequest]);
        // Paused for credit: not polled for input, still for hang-up.
        let ch = &r.dev.channels[&2];
        assert!(ch.stalled);
        assert_eq!(ch.registered, libc::EPOLLRDHUP as u32);
        drop(host);
        r.run(true);
        assert!(r.dev.channels[&2].hup, "hang-up not seen while paused");
        assert!(
            r.take_used(0).is_empty(),
            "CLOSE before the waiting message"
        );
        // Credit back: the waiting message, then CLOSE.
        let mut u = Header::new(MsgType::CreditUpdate, 2);
        u.buf_alloc = kt_proto::credit::cost(60) + 10;
        u.fwd_cnt = kt_proto::credit::cost(60);
        r.send(&u, &[]);
        r.run(true);
        let got = r.take_used(0);
        let types: Vec<MsgType> = got.iter().map(|(h, _)| h.msg_type).collect();
        assert_eq!(types, [MsgType::Data, MsgType::Close]);
        assert_eq!(got[0].1, [2u8; 60]);
        assert_eq!(got[1].0.arg, 0);
    }

    #[test]
    fn guest_close_is_answered_after_pending_data_reaches_the_host() {
        let m = mem();
        let mut r = Rig::with_window(&m, 1 << 20);
        r.post_rx(16, 256);
        let host = r.open(4, 1 << 20);
        // More messages than the host socket queues: the rest wait.
        let body = |seq: u32| {
            let mut b = vec![seq as u8; 4000];
            b[..4].copy_from_slice(&seq.to_le_bytes());
            b
        };
        for seq in 0..30u32 {
            let mut h = Header::with_payload(MsgType::Data, 4, 4000);
            h.seq = seq;
            h.buf_alloc = 1 << 20;
            r.send(&h, &body(seq));
        }
        r.send(&Header::new(MsgType::Close, 4), &[]);
        r.run(true);
        assert!(r.dev.pending_bytes(4) > 0, "host socket took everything");
        assert!(
            r.take_used(0).is_empty(),
            "CLOSE answered before the data was delivered"
        );
        let mut buf = [0u8; 8192];
        for seq in 0..30u32 {
            assert_eq!(host.recv(&mut buf).unwrap(), Recv::Msg(4000));
            assert_eq!(buf[..4000], body(seq));
            r.run(true);
        }
        let got = r.take_used(0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.msg_type, MsgType::Close);
        assert_eq!(r.dev.channel_count(), 0);
        assert_eq!(host.recv(&mut buf).unwrap(), Recv::Eof);
    }

    /// Whether the device's host epoll fd is readable (the worker will
    /// run a `HOST_EVENT` pass).
    fn host_fd_readable(dev: &Device) -> bool {
        let mut p = libc::pollfd {
            fd: dev.epoll_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_full_tx_ring_is_taken_in_budgeted_passes_and_host_input_gets_in() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.post_rx(16, 256);
        let host = r.open(1, 1 << 20);
        assert!(!r.dev.more_work() && !host_fd_readable(&r.dev));
        // (MockSplitQueue keeps fewer than 256 chains outstanding intact.)
        let n = 200u16;
        let mut h = Header::new(MsgType::CreditRequest, 1);
        h.buf_alloc = 1 << 20;
        for _ in 0..n {
            r.send(&h, &[]);
        }
        host.send(b"from host").unwrap();
        // The kick's pass takes one budget of chains and yields, with the
        // wake-up armed (and the host message waiting in epoll).
        r.pass(true, false);
        assert_eq!(usize::from(r.used_idx(1)), 1 + TX_BUDGET);
        assert!(r.dev.more_work());
        assert!(host_fd_readable(&r.dev));
        assert!(
            r.take_used(0)
                .iter()
                .all(|(h, _)| h.msg_type != MsgType::Data),
            "host data before any host event pass"
        );
        // The host-event pass serves the host socket first, then the rest.
        r.pass(true, true);
        let got = r.take_used(0);
        assert!(
            got.iter()
                .any(|(h, p)| h.msg_type == MsgType::Data && p.as_slice() == b"from host"),
            "{got:?}"
        );
        r.run(true);
        assert_eq!(r.used_idx(1), 1 + n, "tx chains lost");
        assert!(!r.dev.more_work());
        assert!(!host_fd_readable(&r.dev), "wake-up left armed");
        assert_eq!(r.stats.snapshot().device.malformed, 0);
    }

    #[test]
    fn rx_delivery_is_budgeted_too() {
        let m = mem();
        let mut r = Rig::new(&m);
        // 200 answers (CLOSE for unknown channels) queue up without rx
        // buffers, then 200 buffers arrive.
        for i in 0..200u32 {
            r.send(&Header::new(MsgType::CreditUpdate, 1000 + i), &[]);
        }
        r.run(false);
        assert_eq!(r.dev.ctrl_len(), 200);
        r.post_rx(200, 256);
        r.pass(true, true);
        assert_eq!(r.take_used(0).len(), RX_BUDGET);
        assert!(r.dev.more_work() && host_fd_readable(&r.dev));
        r.run(true);
        assert_eq!(RX_BUDGET + r.take_used(0).len(), 200);
        assert_eq!(r.dev.ctrl_len(), 0);
        assert!(!r.dev.more_work() && !host_fd_readable(&r.dev));
    }

    #[test]
    fn tx_stops_when_control_queue_is_full() {
        let m = mem();
        let mut r = Rig::new(&m);
        for i in 0..300u32 {
            let mut h = Header::with_payload(MsgType::Data, 1000 + i, 1);
            h.seq = 0;
            r.send(&h, b"x");
        }
        r.run(false);
        assert_eq!(r.dev.ctrl_len(), CTRL_LIMIT);
        assert_eq!(r.used_idx(1), CTRL_LIMIT as u16);
        // rx buffers arrive: every answer is CLOSE CONNRESET, all tx done.
        r.post_rx(400, 256);
        r.run(true);
        let got = r.take_used(0);
        assert_eq!(got.len(), 300);
        assert!(got
            .iter()
            .all(|(h, _)| h.msg_type == MsgType::Close && h.arg == ErrorCode::ConnReset as u32));
        assert_eq!(r.used_idx(1), 300);
        assert_eq!(r.stats.snapshot().device.malformed, 300);
    }

    #[test]
    fn small_rx_buffers_are_skipped_and_reset_is_sent() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.dev.deactivate();
        r.dev.queue_started(0, 0);
        r.dev.queue_started(1, 0);
        r.dev.queue_started(2, 9);
        assert!(r.dev.is_active());
        r.post_rx(1, 64);
        r.add(0, &[(0x7fff_0000_0000, 4096, VRING_DESC_F_WRITE)]);
        r.post_rx(1, 256);
        let ev = r.alloc(32);
        r.add(2, &[(ev, 32, VRING_DESC_F_WRITE)]);
        let mut h = Header::with_payload(MsgType::Open, 3, 4);
        h.buf_alloc = 1 << 16;
        r.send(&h, b"nope");
        let n = r.run(true);
        assert!(n.ev && n.rx && n.tx);
        let got = r.take_used(0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.msg_type, MsgType::OpenErr);
        assert_eq!(got[0].0.arg, ErrorCode::NoEnt as u32);
        let ev = r.take_used(2);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0.msg_type, MsgType::Reset);
        let s = r.stats.snapshot();
        assert_eq!((s.device.malformed, s.resets, s.open_refused), (2, 1, 1));
        // Both bad buffers went back unused, in order, before the good one.
        assert_eq!(r.used_idx(0), 3);
    }
}
