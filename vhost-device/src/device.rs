//! The device's protocol engine (SPEC §3–§9): channel table, OPEN/CLOSE,
//! credit both ways, rx framing and fragmentation, the event queue (RESET),
//! malformed-input handling, and host socket I/O driven by its own epoll
//! set (nested into the vhost-user worker's epoll by `backend.rs`).
//!
//! It sees virtqueues only as `virtio_queue::Queue` plus guest memory, so
//! unit tests drive it with `MockSplitQueue`. It never blocks and never
//! panics on guest or host input; memory is bounded by the channel limit,
//! the per-channel credit window and the control-queue limit.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use kt_proto::consts::{CHAN_DEVICE_BIT, CHAN_TRANSPORT, HDR_F_MORE, HDR_SIZE, MIN_RX_BUF_SIZE};
use kt_proto::{handshake, name, DecodeError, DeviceConfig, ErrorCode, Header, Limits, MsgType};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::chain::{parse_tx, Mem, RxBuf, TxError, TxMsg};
use crate::channel::{Channel, State};
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

const LISTENER_TOKEN: u64 = u64::MAX;
const HANDSHAKE_BIT: u64 = 1 << 32;

/// Static parameters of the device.
#[derive(Clone, Debug)]
pub struct Params {
    /// Config space values.
    pub config: DeviceConfig,
    /// Window granted per channel for guest → host data.
    pub channel_buffer: u32,
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
}

#[derive(Debug)]
struct LogLimit {
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl LogLimit {
    fn allow(&mut self) -> bool {
        if self.window.elapsed().as_secs() >= 1 {
            if self.suppressed > 0 {
                log::warn!("{} more malformed-input messages suppressed", self.suppressed);
            }
            self.window = Instant::now();
            self.count = 0;
            self.suppressed = 0;
        }
        self.count += 1;
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
        Ok(Device {
            limits: Limits {
                max_msg_size: params.config.max_msg_size,
            },
            params,
            policy,
            stats,
            epoll: Epoll::new()?,
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
            log_limit: LogLimit {
                window: Instant::now(),
                count: 0,
                suppressed: 0,
            },
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
            log::debug!("channel {id:#x} closed by device stop");
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
    }

    /// Adds or removes the listener and waiting handshakes from epoll: host
    /// connections are only served while a driver is live.
    fn arm_listener(&mut self, on: bool) {
        let op = || {
            if on {
                ControlOperation::Add
            } else {
                ControlOperation::Delete
            }
        };
        if let Some(l) = &self.listener {
            if let Err(e) = self.epoll.ctl(
                op(),
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            ) {
                log::warn!("listening socket epoll: {e}");
            }
        }
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

    fn malformed(&mut self, ch: Option<u32>, what: &dyn std::fmt::Display) {
        add(&self.stats.device.malformed, 1);
        if let Some(c) = ch.and_then(|id| self.channels.get(&id)) {
            add(&c.counters.malformed, 1);
        }
        if self.log_limit.allow() {
            log::warn!("guest {}: malformed input: {what}", self.params.config.guest_id);
        }
    }

    // ---------------------------------------------------------------- run

    /// Does all pending work: host socket events (when `host` is set or
    /// always cheaply), tx messages, rx delivery and the event queue.
    pub fn run(&mut self, rings: Rings<'_>, mem: &Mem, host: bool) -> Notify {
        let mut n = Notify::default();
        if host {
            self.host_events();
        }
        let Rings { mut rx, mut tx, ev } = rings;
        loop {
            let mut progress = false;
            if let Some(q) = tx.as_deref_mut() {
                progress |= self.process_tx(q, mem, &mut n);
            }
            if let Some(q) = rx.as_deref_mut() {
                progress |= self.pump_rx(q, mem, &mut n);
            }
            if !progress {
                break;
            }
        }
        if let Some(q) = ev {
            self.pump_event(q, mem, &mut n);
        }
        n
    }

    fn signal(q: &mut Queue, mem: &Mem) -> bool {
        q.needs_notification(mem).unwrap_or(true)
    }

    // ----------------------------------------------------------------- tx

    fn process_tx(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify) -> bool {
        let mut progress = false;
        loop {
            if self.ctrl.len() >= CTRL_LIMIT {
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
                    (MsgType::Data, DecodeError::TooLarge { .. } | DecodeError::LengthMismatch { .. })
                        if self.known(id) =>
                    {
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
            TxError::Chain(_) | TxError::Short(_) | TxError::Decode(_) => self.malformed(None, &e),
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
        if ch.stalled && ch.send.available() > 0 {
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
                self.malformed(None, &format_args!("{:?} for channel {:#x} that is not opening", h.msg_type, h.channel));
            }
            _ => {
                self.malformed(None, &format_args!("{:?} for unknown channel {:#x}", h.msg_type, h.channel));
                let mut c = Header::new(MsgType::Close, h.channel);
                c.arg = ErrorCode::ConnReset as u32;
                self.queue_ctrl(c, Vec::new(), false);
            }
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
            self.malformed(None, &format_args!("OPEN with id {id:#x} in use or not the driver's"));
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
            log::warn!("guest {gid}: refused OPEN {name:?} ({id:#x}): too many channels");
            self.refuse_open(id, ErrorCode::MFile);
            return;
        }
        let Some(svc) = self.policy.get(&name) else {
            log::warn!("guest {gid}: refused OPEN {name:?} ({id:#x}): not in policy");
            self.refuse_open(id, ErrorCode::NoEnt);
            return;
        };
        if let Some(max) = svc.max_channels {
            let open = self.channels.values().filter(|c| c.service == name).count();
            if open >= max as usize {
                log::warn!("guest {gid}: refused OPEN {name:?} ({id:#x}): service limit of {max} channels");
                self.refuse_open(id, ErrorCode::MFile);
                return;
            }
        }
        let sock = match SeqPacket::connect(&svc.socket, true) {
            Ok(s) => s,
            Err(e) => {
                let code = err_code_for_connect(&e);
                log::warn!(
                    "guest {gid}: refused OPEN {name:?} ({id:#x}): connect {}: {e}",
                    svc.socket.display()
                );
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
        if ch.state != State::Opening {
            self.malformed(Some(id), &format_args!("OPEN_OK for channel {id:#x} that is not opening"));
            return;
        }
        ch.state = State::Open;
        let sent = ch
            .sock
            .as_ref()
            .map(|s| s.send(&handshake::ok_msg(id)));
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
        let opening = self.channels.get(&id).map(|c| c.state == State::Opening);
        if opening != Some(true) {
            self.malformed(Some(id), &format_args!("OPEN_ERR for channel {id:#x} that is not opening"));
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
        if ch.sent_close && !ch.recv_close {
            // The reader is gone; late data is discarded (SPEC §3.2).
            log::debug!("DATA on closing channel {id:#x} discarded");
            return;
        }
        if ch.recv_close || ch.state != State::Open {
            self.malformed(Some(id), &format_args!("DATA on channel {id:#x} that is not open"));
            self.close_by_device(id, ErrorCode::Proto);
            return;
        }
        if h.seq != ch.rx_seq {
            let want = ch.rx_seq;
            self.malformed(Some(id), &format_args!("DATA seq {} on channel {id:#x}, expected {want}", h.seq));
            self.close_by_device(id, ErrorCode::Proto);
            return;
        }
        if let Err(e) = ch.recv.on_receive(h.msg_len) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            self.close_by_device(id, ErrorCode::Proto);
            return;
        }
        ch.rx_seq = ch.rx_seq.wrapping_add(1);
        ch.pending.push_back(payload);
        self.flush_pending(id);
    }

    fn on_close(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.state == State::Opening {
            // The guest closed before accepting: treat it as a refusal.
            self.malformed(Some(id), &format_args!("CLOSE on channel {id:#x} before OPEN_OK"));
            if let Some(ch) = self.remove_channel(id) {
                if let Some(s) = &ch.sock {
                    let _ = s.send(&handshake::err_msg(ErrorCode::ConnReset, "guest closed"));
                }
            }
            return;
        }
        if ch.recv_close {
            self.malformed(Some(id), &format_args!("second CLOSE on channel {id:#x}"));
            return;
        }
        ch.recv_close = true;
        let answer = !ch.sent_close;
        ch.sent_close = true;
        if answer {
            self.queue_ctrl(Header::new(MsgType::Close, id), Vec::new(), true);
        }
        // Deliver what the guest sent before CLOSE, then hang up.
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
        if ch.update_queued || ch.sent_close || !(force || ch.recv.needs_update()) {
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
        if !ch.sent_close {
            ch.sent_close = true;
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

    /// Drains the host epoll set (never blocks).
    fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("host epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let tok = ev.data();
                let set = EventSet::from_bits_truncate(ev.events());
                if tok == LISTENER_TOKEN {
                    self.accept_hosts();
                } else if tok & HANDSHAKE_BIT != 0 {
                    self.handshake_event(tok);
                } else if let Ok(id) = u32::try_from(tok) {
                    self.channel_event(id, set);
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn channel_event(&mut self, id: u32, set: EventSet) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Reported whatever the interest: stop polling this fd for good,
            // read what is left, then the receive sees EOF.
            if let Some(sock) = &ch.sock {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), 0),
                );
            }
            ch.registered = 0;
            ch.hup = true;
            ch.readable = true;
            let reader = ch.wants_host_input();
            let pending = !ch.pending.is_empty();
            if pending {
                // Fails with EPIPE and closes, or delivers if still possible.
                self.flush_pending(id);
            }
            if reader {
                self.push_ready(id);
            } else {
                self.close_from_host(id, ErrorCode::ConnReset);
            }
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

    fn accept_hosts(&mut self) {
        loop {
            let Some(l) = &self.listener else {
                return;
            };
            let sock = match l.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("listening socket accept: {e}");
                    return;
                }
            };
            add(&self.stats.events.host_connects, 1);
            if self.handshakes.len() >= MAX_HANDSHAKES {
                let _ = sock.send(&handshake::err_msg(ErrorCode::MFile, "too many pending connections"));
                continue;
            }
            self.next_handshake = self.next_handshake.wrapping_add(1) & 0xffff_ffff;
            let tok = HANDSHAKE_BIT | self.next_handshake;
            let registered = self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, tok),
                )
                .is_ok();
            self.handshakes.insert(tok, Handshake { sock, registered });
        }
    }

    fn handshake_event(&mut self, tok: u64) {
        let Some(h) = self.handshakes.get(&tok) else {
            return;
        };
        let mut buf = [0u8; HANDSHAKE_MAX];
        let r = h.sock.recv(&mut buf);
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
            reply_err(ErrorCode::ConnRefused, "guest does not accept host connections");
            return;
        }
        if self.channels.len() >= self.params.config.max_channels as usize {
            reply_err(ErrorCode::MFile, "too many channels");
            return;
        }
        let id = self.alloc_device_id();
        let counters = self.stats.open_channel(id, &name, Opener::Host);
        let _ = h.sock.set_send_buffer(2 * (self.params.config.max_msg_size as usize + 4096));
        let ch = Channel::new(
            &name,
            Opener::Host,
            State::Opening,
            h.sock,
            self.params.channel_buffer,
            0,
            counters,
        );
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
        if let Some(mut o) = self.ctrl.pop_front() {
            if o.fill {
                let mut h = o.hdr;
                self.fill_credit(&mut h);
                o.hdr = h;
            }
            return Some(o);
        }
        while let Some(id) = self.ready.pop_front() {
            if let Some(o) = self.read_host(id) {
                return Some(o);
            }
        }
        None
    }

    /// Reads one host message of channel `id` if the guest has credit.
    fn read_host(&mut self, id: u32) -> Option<Outgoing> {
        let max = self.params.config.max_msg_size as usize;
        let ch = self.channels.get_mut(&id)?;
        ch.in_ready = false;
        if !ch.wants_host_input() || !ch.readable {
            return None;
        }
        let sock = ch.sock.as_ref()?;
        let len = match sock.peek_len() {
            Ok(Recv::Msg(len)) => len,
            Ok(Recv::Eof) => {
                self.close_from_host(id, ErrorCode::Ok);
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ch.readable = false;
                if ch.hup {
                    // Hung up and drained without EOF: nothing more comes.
                    self.close_from_host(id, ErrorCode::Ok);
                } else {
                    self.update_interest(id);
                }
                return None;
            }
            Err(e) => {
                log::debug!("channel {id:#x}: host receive: {e}");
                self.close_from_host(id, ErrorCode::ConnReset);
                return None;
            }
        };
        if len > max {
            add(&ch.counters.malformed, 1);
            add(&self.stats.device.malformed, 1);
            log::warn!(
                "channel {id:#x} ({:?}): host sent a {len}-byte message, max is {max}; closing",
                ch.service
            );
            self.close_from_host(id, ErrorCode::MsgSize);
            return None;
        }
        let len32 = len as u32;
        if !ch.send.can_send(len32) {
            if !ch.stalled {
                ch.stalled = true;
                add(&ch.counters.credit_stalls, 1);
                add(&self.stats.device.credit_stalls, 1);
                self.queue_ctrl(Header::new(MsgType::CreditRequest, id), Vec::new(), true);
            }
            return None;
        }
        let mut payload = vec![0u8; len];
        match sock.recv(&mut payload) {
            Ok(Recv::Msg(n)) if n == len => {}
            Ok(Recv::Msg(n)) => {
                // The peek said otherwise: never forward a cut message.
                log::warn!("channel {id:#x}: host message changed size ({len} then {n}); closing");
                self.close_from_host(id, ErrorCode::Proto);
                return None;
            }
            Ok(Recv::Eof) => {
                self.close_from_host(id, ErrorCode::Ok);
                return None;
            }
            Err(e) => {
                log::debug!("channel {id:#x}: host receive: {e}");
                self.close_from_host(id, ErrorCode::ConnReset);
                return None;
            }
        }
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
    fn pop_rx<'m>(&mut self, q: &mut Queue, mem: &'m Mem, n: &mut Notify) -> Option<RxBuf<'m>> {
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
                    self.malformed(None, &format_args!("rx buffer of {cap} bytes (minimum {MIN_RX_BUF_SIZE})"));
                }
                Err(e) => self.malformed(None, &format_args!("rx chain: {e}")),
            }
            if q.add_used(mem, head, 0).is_err() {
                return None;
            }
            n.rx = true;
        }
    }

    fn pump_rx(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify) -> bool {
        let mut used = false;
        loop {
            if self.partial.is_none() {
                self.partial = self.next_outgoing();
                if self.partial.is_none() {
                    break;
                }
            }
            let Some(mut buf) = self.pop_rx(q, mem, n) else {
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
            if let Err(e) = q.add_used(mem, head, len) {
                self.malformed(None, &format_args!("rx used ring: {e}"));
                break;
            }
            used = true;
        }
        if used {
            n.rx |= Self::signal(q, mem);
        } else if n.rx {
            n.rx = Self::signal(q, mem);
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

