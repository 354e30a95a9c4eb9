//! The simulated guest driver: what `kerntransport.ko` does, in user space
//! over the simulated rings. Posts rx and event buffers, sends tx chains
//! (single, split or indirect descriptors), reassembles rx fragments,
//! checks every rule of SPEC §4/§5 on what the device sends (violations go
//! to `errors`), keeps per-channel credit and sequence numbers, and exposes
//! raw access for hostile-guest tests.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use kt_proto::consts::{
    F_GUEST_LISTEN, HDR_SIZE, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use kt_proto::{
    DeviceConfig, ErrorCode, Header, Limits, MsgType, Path as HdrPath, RecvCredit, SendCredit,
};
use vhost::vhost_user::Frontend;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use crate::frontend;
use crate::memory::{memfd_memory, Layout};
use crate::ring::{Desc, Ring, F_WRITE};

/// How tx chains are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One descriptor.
    Single,
    /// Header and payload split over three descriptors at odd offsets.
    Split,
    /// An indirect table of two descriptors.
    Indirect,
    /// A pseudo-random mix of the above.
    Mixed,
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Features to ack if offered.
    pub features: u64,
    /// Receive window granted per channel (credit bytes).
    pub buf_alloc: u32,
    /// tx chain layout.
    pub shape: Shape,
    /// Guest services that accept host connections.
    pub listen: Vec<String>,
    /// rx buffer size posted.
    pub rx_buf: u32,
    /// Largest message the tx slots can hold.
    pub max_msg: u32,
    /// Event buffers posted.
    pub event_bufs: u16,
    /// Timeout of blocking helpers.
    pub timeout: Duration,
    /// Publish tx chains without kicking; kicks happen in `poll`/`flush`
    /// (batching, like a driver with more packets queued).
    pub defer_kicks: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            features: (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
                | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << F_GUEST_LISTEN),
            buf_alloc: 256 * 1024,
            shape: Shape::Single,
            listen: Vec::new(),
            rx_buf: 4096,
            max_msg: 65536,
            event_bufs: 8,
            timeout: Duration::from_secs(20),
            defer_kicks: false,
        }
    }
}

/// One channel, guest side.
#[derive(Debug)]
pub struct GuestChannel {
    /// Credit towards the device.
    pub send: SendCredit,
    /// Credit granted to the device.
    pub recv: RecvCredit,
    /// Next seq to send.
    pub tx_seq: u32,
    /// Next seq expected.
    pub rx_seq: u32,
    /// Received, unread messages.
    pub inbox: VecDeque<Vec<u8>>,
    /// CLOSE received (with its arg).
    pub closed: Option<u32>,
    /// CLOSE sent.
    pub sent_close: bool,
}

impl GuestChannel {
    fn new(buf_alloc: u32, peer: &Header) -> GuestChannel {
        let mut send = SendCredit::new(peer.buf_alloc);
        send.on_peer(peer.buf_alloc, peer.fwd_cnt);
        GuestChannel {
            send,
            recv: RecvCredit::new(buf_alloc),
            tx_seq: 0,
            rx_seq: 0,
            inbox: VecDeque::new(),
            closed: None,
            sent_close: false,
        }
    }
}

const CTRL_LOG: usize = 4096;

/// The simulated guest (one queue pair of it: see `multiqueue.rs`).
pub struct Driver {
    /// The queue pair this driver drives (0: also the event queue and the
    /// vhost-user connection).
    pub pair: u16,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Memory layout.
    pub layout: Layout,
    /// rx, tx, event.
    pub rings: [Ring; 3],
    frontend: Option<Frontend>,
    /// Config space read at start.
    pub config: DeviceConfig,
    /// Features acked.
    pub acked: u64,
    /// Settings.
    pub opts: DriverOptions,
    /// Open channels.
    pub chans: HashMap<u32, GuestChannel>,
    opens: HashMap<u32, Option<Result<(), ErrorCode>>>,
    /// Headers received on the event queue.
    pub events: Vec<Header>,
    /// Recent non-DATA headers received on rx.
    pub ctrl: VecDeque<Header>,
    /// Rule violations seen in what the device sent.
    pub errors: Vec<String>,
    /// Host connections accepted (channel id, service name).
    pub accepted: VecDeque<(u32, String)>,
    partial: Option<(Header, Vec<u8>)>,
    next_id: u32,
    rng: u64,
    /// While set, nothing kicks the device (see [`Driver::wait_without_kicks`]).
    hold_kicks: bool,
    /// rx used entries reaped since connecting (rx buffers the device
    /// filled and this driver has seen).
    pub rx_reaped: u64,
    /// tx used entries reaped since connecting (chains the device took).
    pub tx_reaped: u64,
    /// When `Some`, each complete DATA message appends its channel and
    /// the rx entry count at its last buffer ([`Driver::rx_reaped`]): the
    /// order the device delivered in (fairness tests).
    pub arrivals: Option<Vec<(u32, u64)>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.config)
            .field("acked", &self.acked)
            .field("channels", &self.chans.len())
            .field("connected", &self.frontend.is_some())
            .finish()
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn timeout_err(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out waiting for {what}"),
    )
}

impl Driver {
    /// Builds guest memory and rings, connects to the daemon at `path` and
    /// starts the device from avail index 0.
    pub fn connect(path: &Path, opts: DriverOptions) -> io::Result<Driver> {
        let layout = Self::layout_at(0, &opts);
        let mem = memfd_memory(layout.size)?;
        let mut d = Driver::build(mem, layout, opts, 0)?;
        d.attach(path, [0; 3])?;
        d.post_all()?;
        Ok(d)
    }

    /// The memory layout of one pair's rings and buffers at `base`.
    pub(crate) fn layout_at(base: u64, opts: &DriverOptions) -> Layout {
        Layout::at(
            base,
            u64::from(opts.rx_buf),
            u64::from(opts.max_msg) + HDR_SIZE as u64,
            64,
        )
    }

    /// A driver of pair `pair` over `layout` in `mem`, not started. The
    /// channel ids it picks start at `pair << 24`, so the pairs of one
    /// guest never pick the same id (SPEC §1.4: one id space).
    pub(crate) fn build(
        mem: GuestMemoryMmap,
        layout: Layout,
        opts: DriverOptions,
        pair: u16,
    ) -> io::Result<Driver> {
        let rings = [
            Ring::new(layout.ring[0], layout.indirect[0])?,
            Ring::new(layout.ring[1], layout.indirect[1])?,
            Ring::new(layout.ring[2], layout.indirect[2])?,
        ];
        Ok(Driver {
            pair,
            mem,
            layout,
            rings,
            frontend: None,
            config: DeviceConfig::default(),
            acked: 0,
            opts,
            chans: HashMap::new(),
            opens: HashMap::new(),
            events: Vec::new(),
            ctrl: VecDeque::new(),
            errors: Vec::new(),
            accepted: VecDeque::new(),
            partial: None,
            next_id: u32::from(pair) << 24,
            rng: 0x9e37_79b9_7f4a_7c15,
            hold_kicks: false,
            rx_reaped: 0,
            tx_reaped: 0,
            arrivals: None,
        })
    }

    /// Records what the start negotiated; pair 0 keeps the connection.
    pub(crate) fn started(&mut self, acked: u64, config: DeviceConfig, fe: Option<Frontend>) {
        self.acked = acked;
        self.config = config;
        self.frontend = fe;
    }

    fn attach(&mut self, path: &Path, bases: [u16; 3]) -> io::Result<()> {
        let fe = frontend::connect(path, self.opts.timeout)?;
        let s = frontend::start(fe, &self.mem, &mut self.rings, self.opts.features, bases)?;
        self.config = s.config;
        self.acked = s.acked;
        self.frontend = Some(s.frontend);
        Ok(())
    }

    /// Posts every free rx and (pair 0) the event buffers, then kicks.
    pub(crate) fn post_all(&mut self) -> io::Result<()> {
        while self.rings[0].free_count() > 0 {
            self.post_rx()?;
        }
        if self.pair != 0 {
            return self.rings[0].kick(&self.mem);
        }
        for _ in 0..self.opts.event_bufs {
            self.post_event()?;
        }
        self.rings[0].kick(&self.mem)?;
        self.rings[2].kick(&self.mem)
    }

    fn post_rx(&mut self) -> io::Result<()> {
        let Some(idx) = self.rings[0].peek_free() else {
            return Ok(());
        };
        let d = Desc {
            addr: self.layout.slot(0, idx).0,
            len: self.opts.rx_buf,
            flags: F_WRITE,
        };
        if let Some(h) = self.rings[0].add_chain(&self.mem, &[d])? {
            self.rings[0].publish(&self.mem, h)?;
        }
        Ok(())
    }

    fn post_event(&mut self) -> io::Result<()> {
        let Some(idx) = self.rings[2].peek_free() else {
            return Ok(());
        };
        let d = Desc {
            addr: self.layout.slot(2, idx).0,
            len: 64,
            flags: F_WRITE,
        };
        if let Some(h) = self.rings[2].add_chain(&self.mem, &[d])? {
            self.rings[2].publish(&self.mem, h)?;
        }
        Ok(())
    }

    /// The backend was restarted while this guest kept running: connect to
    /// the new daemon and resume every queue where the used ring is.
    pub fn reattach(&mut self, path: &Path) -> io::Result<()> {
        self.process()?;
        self.frontend = None;
        for r in &mut self.rings {
            r.new_eventfds()?;
        }
        let bases = [
            self.rings[0].last_used(),
            self.rings[1].last_used(),
            self.rings[2].last_used(),
        ];
        self.attach(path, bases)?;
        self.rings[0].force_kick()?;
        self.rings[2].force_kick()
    }

    /// A guest reboot on the same connection: the VMM stops the queues
    /// (GET_VRING_BASE), the new driver instance starts them from 0.
    pub fn reboot(&mut self) -> io::Result<()> {
        let fe = self
            .frontend
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        frontend::stop(fe)?;
        for r in &mut self.rings {
            r.reset(&self.mem)?;
            r.new_eventfds()?;
        }
        self.chans.clear();
        self.opens.clear();
        self.partial = None;
        let fe = self
            .frontend
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        let (acked, config) =
            frontend::start_queues(fe, &self.mem, &mut self.rings, self.opts.features, [0; 3])?;
        self.acked = acked;
        self.config = config;
        self.post_all()
    }

    /// Stops the queues and disconnects (VMM shutdown).
    pub fn shutdown(&mut self) -> io::Result<()> {
        if let Some(fe) = self.frontend.as_mut() {
            frontend::stop(fe)?;
        }
        self.frontend = None;
        Ok(())
    }

    /// Drops the connection without stopping the queues (VMM crash).
    pub fn disconnect(&mut self) {
        self.frontend = None;
    }

    // ------------------------------------------------------------ polling

    /// Reaps every used ring; returns whether anything arrived.
    pub fn process(&mut self) -> io::Result<bool> {
        let mut any = false;
        while self.rings[1].pop_used(&self.mem)?.is_some() {
            any = true;
            self.tx_reaped += 1;
        }
        let mut reposted = false;
        while let Some((head, len)) = self.rings[0].pop_used(&self.mem)? {
            any = true;
            self.rx_reaped += 1;
            self.on_rx(head, len)?;
            self.post_rx()?;
            reposted = true;
        }
        while self.pair == 0 {
            let Some((head, len)) = self.rings[2].pop_used(&self.mem)? else {
                break;
            };
            any = true;
            self.on_event(head, len)?;
            self.post_event()?;
            reposted = true;
        }
        if reposted && !self.hold_kicks {
            self.rings[0].kick(&self.mem)?;
            self.rings[2].kick(&self.mem)?;
        }
        Ok(any)
    }

    /// rx buffers the device has filled since connecting, reaped or not:
    /// [`Driver::rx_reaped`] plus what waits in the used ring.
    pub fn rx_device_total(&self) -> io::Result<u64> {
        let ahead = self.rings[0]
            .device_used(&self.mem)?
            .wrapping_sub(self.rings[0].last_used());
        Ok(self.rx_reaped + u64::from(ahead))
    }

    /// tx chains the device has taken since connecting, reaped or not.
    pub fn tx_device_total(&self) -> io::Result<u64> {
        let ahead = self.rings[1]
            .device_used(&self.mem)?
            .wrapping_sub(self.rings[1].last_used());
        Ok(self.tx_reaped + u64::from(ahead))
    }

    /// Processes used rings, waiting up to `timeout` for a call if nothing
    /// is there yet. Returns whether anything arrived.
    pub fn poll(&mut self, timeout: Duration) -> io::Result<bool> {
        self.flush()?;
        if self.process()? {
            return Ok(true);
        }
        for r in &mut self.rings {
            r.arm(&self.mem)?;
        }
        if self.process()? {
            return Ok(true);
        }
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ring in &self.rings {
            let _ = ring.call.read();
        }
        self.process()
    }

    /// Kicks tx if the device wants it (deferred kicks).
    pub fn flush(&mut self) -> io::Result<()> {
        self.rings[1].kick(&self.mem)
    }

    /// Polls until `cond` holds or the timeout passes.
    pub fn wait_until(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&mut Driver) -> bool,
    ) -> io::Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        while !cond(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout_err(what));
            }
            self.poll(left.min(Duration::from_millis(50)))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for `cond` with the device never kicked: used
    /// entries are reaped and buffers reposted (and anything the driver
    /// answers is queued on tx), but no queue is kicked until `cond` holds
    /// or the time is up. What arrives meanwhile was brought by the device
    /// on its own (host socket events), as a guest that sleeps in `read()`
    /// would see it. Pending kicks are delivered before returning.
    pub fn wait_without_kicks(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&mut Driver) -> bool,
    ) -> io::Result<()> {
        self.flush()?;
        self.hold_kicks = true;
        let r = self.wait_held(what, timeout, &mut cond);
        self.hold_kicks = false;
        for i in 0..3 {
            self.rings[i].kick(&self.mem)?;
        }
        r
    }

    fn wait_held(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: &mut dyn FnMut(&mut Driver) -> bool,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process()?;
            for r in &mut self.rings {
                r.arm(&self.mem)?;
            }
            self.process()?;
            if cond(self) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout_err(what));
            }
            let mut fds: Vec<libc::pollfd> = self
                .rings
                .iter()
                .map(|r| libc::pollfd {
                    fd: r.call.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: `fds` is a valid array of pollfd for the call's duration.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for ring in &self.rings {
                let _ = ring.call.read();
            }
        }
    }

    // ----------------------------------------------------------------- rx

    fn error(&mut self, e: String) {
        if self.errors.len() < 100 {
            self.errors.push(e);
        }
    }

    fn on_event(&mut self, head: u16, len: u32) -> io::Result<()> {
        if len as usize != HDR_SIZE {
            self.error(format!("event used length {len}"));
            return Ok(());
        }
        let mut b = [0u8; HDR_SIZE];
        self.mem
            .read_slice(&mut b, self.layout.slot(2, head))
            .map_err(io::Error::other)?;
        match Header::decode(&b) {
            Ok(h) if h.msg_type == MsgType::Reset => {
                // SPEC §6: forget every channel.
                for c in self.chans.values_mut() {
                    c.closed.get_or_insert(ErrorCode::ConnReset as u32);
                }
                self.chans.clear();
                self.opens.clear();
                self.events.push(h);
            }
            Ok(h) => self.error(format!("unexpected event {h:?}")),
            Err(e) => self.error(format!("bad event: {e}")),
        }
        Ok(())
    }

    fn on_rx(&mut self, head: u16, len: u32) -> io::Result<()> {
        let len = len as usize;
        if len < HDR_SIZE || len > self.opts.rx_buf as usize {
            self.error(format!("rx used length {len}"));
            return Ok(());
        }
        let slot = self.layout.slot(0, head);
        let mut hb = [0u8; HDR_SIZE];
        self.mem
            .read_slice(&mut hb, slot)
            .map_err(io::Error::other)?;
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(e) => {
                self.error(format!("rx header: {e}"));
                return Ok(());
            }
        };
        let lim = Limits {
            max_msg_size: self.config.max_msg_size,
        };
        if let Err(e) = h.check(&lim, HdrPath::Rx) {
            self.error(format!("rx {h:?}: {e}"));
            return Ok(());
        }
        if h.len as usize != len - HDR_SIZE {
            self.error(format!("rx used length {len} but len {}", h.len));
            return Ok(());
        }
        let plen = len - HDR_SIZE;
        let at = slot.unchecked_add(HDR_SIZE as u64);
        if h.msg_type == MsgType::Data {
            let (first, mut data) = match self.partial.take() {
                Some((f, d)) => {
                    if f.channel != h.channel || f.seq != h.seq || f.msg_len != h.msg_len {
                        self.error(format!("fragment of {h:?} interleaved with {f:?}"));
                        return Ok(());
                    }
                    (f, d)
                }
                None => (h, Vec::with_capacity(h.msg_len as usize)),
            };
            // The payload is read once, straight into the message being
            // reassembled (as a driver copies it to its reader once).
            let start = data.len();
            if start + plen > first.msg_len as usize {
                self.error(format!("fragments exceed msg_len {}", first.msg_len));
                return Ok(());
            }
            data.resize(start + plen, 0);
            self.mem
                .read_slice(&mut data[start..], at)
                .map_err(io::Error::other)?;
            if h.more() {
                self.partial = Some((first, data));
                return Ok(());
            }
            if data.len() != first.msg_len as usize {
                self.error(format!(
                    "message of {} bytes, msg_len {}",
                    data.len(),
                    first.msg_len
                ));
                return Ok(());
            }
            self.deliver(first, data);
            return Ok(());
        }
        let mut payload = vec![0u8; plen];
        self.mem
            .read_slice(&mut payload, at)
            .map_err(io::Error::other)?;
        if let Some((f, _)) = self.partial.take() {
            self.error(format!("{:?} between fragments of {f:?}", h.msg_type));
        }
        self.on_ctrl(h, &payload)
    }

    fn deliver(&mut self, h: Header, data: Vec<u8>) {
        let Some(c) = self.chans.get_mut(&h.channel) else {
            self.error(format!("DATA for unknown channel {:#x}", h.channel));
            return;
        };
        if c.closed.is_some() {
            // SPEC §3.2: nothing follows a CLOSE on its channel.
            self.error(format!("DATA on channel {:#x} after its CLOSE", h.channel));
            return;
        }
        c.send.on_peer(h.buf_alloc, h.fwd_cnt);
        if h.seq != c.rx_seq {
            let want = c.rx_seq;
            self.error(format!(
                "channel {:#x}: seq {} expected {want}",
                h.channel, h.seq
            ));
            return;
        }
        c.rx_seq = c.rx_seq.wrapping_add(1);
        if let Err(e) = c.recv.on_receive(h.msg_len) {
            self.error(format!(
                "channel {:#x}: device overran credit: {e}",
                h.channel
            ));
            return;
        }
        c.inbox.push_back(data);
        if let Some(log) = self.arrivals.as_mut() {
            log.push((h.channel, self.rx_reaped));
        }
    }

    fn on_ctrl(&mut self, h: Header, payload: &[u8]) -> io::Result<()> {
        if self.ctrl.len() >= CTRL_LOG {
            self.ctrl.pop_front();
        }
        self.ctrl.push_back(h);
        let id = h.channel;
        if let Some(c) = self.chans.get_mut(&id) {
            if h.msg_type != MsgType::OpenErr {
                c.send.on_peer(h.buf_alloc, h.fwd_cnt);
            }
        }
        match h.msg_type {
            MsgType::OpenOk => {
                if let Some(slot) = self.opens.get_mut(&id) {
                    *slot = Some(Ok(()));
                    let c = GuestChannel::new(self.opts.buf_alloc, &h);
                    self.chans.insert(id, c);
                } else {
                    self.error(format!("OPEN_OK for {id:#x} not opening"));
                }
            }
            MsgType::OpenErr => {
                if let Some(slot) = self.opens.get_mut(&id) {
                    *slot = Some(Err(ErrorCode::from_wire(h.arg)));
                } else {
                    self.error(format!("OPEN_ERR for {id:#x} not opening"));
                }
            }
            MsgType::Close => {
                let answer = match self.chans.get_mut(&id) {
                    Some(c) => {
                        c.closed = Some(h.arg);
                        let a = !c.sent_close;
                        c.sent_close = true;
                        a
                    }
                    None => false,
                };
                if answer {
                    self.send_raw(&Header::new(MsgType::Close, id), &[])?;
                }
            }
            MsgType::CreditUpdate => {}
            MsgType::CreditRequest => {
                if self.chans.contains_key(&id) {
                    self.send_credit_update(id)?;
                }
            }
            MsgType::Open => {
                let name = String::from_utf8_lossy(payload).into_owned();
                if self.opts.listen.contains(&name) {
                    let c = GuestChannel::new(self.opts.buf_alloc, &h);
                    self.chans.insert(id, c);
                    let mut r = Header::new(MsgType::OpenOk, id);
                    r.buf_alloc = self.opts.buf_alloc;
                    self.send_raw(&r, &[])?;
                    self.accepted.push_back((id, name));
                } else {
                    let mut r = Header::new(MsgType::OpenErr, id);
                    r.arg = ErrorCode::NoEnt as u32;
                    self.send_raw(&r, &[])?;
                }
            }
            // LISTEN/UNLISTEN never pass the rx checks (tx only).
            MsgType::Data | MsgType::Reset | MsgType::Listen | MsgType::Unlisten => {}
        }
        Ok(())
    }

    // ----------------------------------------------------------------- tx

    /// Sends one raw chain holding `hdr` and `payload` (no checks at all),
    /// waiting for free descriptors.
    pub fn send_raw(&mut self, hdr: &Header, payload: &[u8]) -> io::Result<()> {
        let total = HDR_SIZE + payload.len();
        if total as u64 > self.layout.slot_size[1] {
            return Err(io::Error::other("message larger than a tx slot"));
        }
        let shape = match self.opts.shape {
            Shape::Mixed => match xorshift(&mut self.rng) % 3 {
                0 => Shape::Single,
                1 => Shape::Split,
                _ => Shape::Indirect,
            },
            s => s,
        };
        let need = if shape == Shape::Split { 3 } else { 1 };
        let deadline = Instant::now() + self.opts.timeout;
        while self.rings[1].free_count() < need {
            if Instant::now() > deadline {
                return Err(timeout_err("tx descriptors"));
            }
            self.poll(Duration::from_millis(50))?;
        }
        let Some(idx) = self.rings[1].peek_free() else {
            return Err(timeout_err("tx descriptors"));
        };
        let slot = self.layout.slot(1, idx);
        self.mem
            .write_slice(&hdr.encode(), slot)
            .map_err(io::Error::other)?;
        self.mem
            .write_slice(payload, slot.unchecked_add(HDR_SIZE as u64))
            .map_err(io::Error::other)?;
        let a = slot.0;
        let t = total as u32;
        let head = match shape {
            Shape::Single | Shape::Mixed => self.rings[1].add_chain(
                &self.mem,
                &[Desc {
                    addr: a,
                    len: t,
                    flags: 0,
                }],
            )?,
            Shape::Split => {
                let c1 = (t / 3).min(13);
                let c2 = (t - c1) / 2;
                self.rings[1].add_chain(
                    &self.mem,
                    &[
                        Desc {
                            addr: a,
                            len: c1,
                            flags: 0,
                        },
                        Desc {
                            addr: a + u64::from(c1),
                            len: c2,
                            flags: 0,
                        },
                        Desc {
                            addr: a + u64::from(c1 + c2),
                            len: t - c1 - c2,
                            flags: 0,
                        },
                    ],
                )?
            }
            Shape::Indirect => {
                let c1 = t.min(20);
                self.rings[1].add_indirect(
                    &self.mem,
                    &[
                        Desc {
                            addr: a,
                            len: c1,
                            flags: 0,
                        },
                        Desc {
                            addr: a + u64::from(c1),
                            len: t - c1,
                            flags: 0,
                        },
                    ],
                )?
            }
        };
        let head = head.ok_or_else(|| timeout_err("tx descriptors"))?;
        self.rings[1].publish(&self.mem, head)?;
        if self.opts.defer_kicks || self.hold_kicks {
            Ok(())
        } else {
            self.rings[1].kick(&self.mem)
        }
    }

    fn fill(&mut self, hdr: &mut Header) {
        if let Some(c) = self.chans.get_mut(&hdr.channel) {
            hdr.buf_alloc = c.recv.buf_alloc;
            hdr.fwd_cnt = c.recv.fwd_cnt;
            c.recv.advertised();
        }
    }

    fn send_credit_update(&mut self, id: u32) -> io::Result<()> {
        let mut h = Header::new(MsgType::CreditUpdate, id);
        self.fill(&mut h);
        self.send_raw(&h, &[])
    }

    /// Opens a channel to host service `name`: `Ok(Ok(id))` or the device's
    /// refusal.
    pub fn open(&mut self, name: &str) -> io::Result<Result<u32, ErrorCode>> {
        self.next_id = self.next_id % 0x7fff_ffff + 1;
        let id = self.next_id;
        self.open_id(id, name.as_bytes())
    }

    /// Sends OPEN with an explicit id and raw name bytes without waiting.
    pub fn open_async(&mut self, id: u32, name: &[u8]) -> io::Result<()> {
        self.opens.insert(id, None);
        let mut h = Header::with_payload(MsgType::Open, id, name.len() as u32);
        h.buf_alloc = self.opts.buf_alloc;
        self.send_raw(&h, name)
    }

    /// The answer to an `open_async`, once it arrived (then forgotten).
    pub fn open_result(&mut self, id: u32) -> Option<Result<(), ErrorCode>> {
        let r = self.opens.get(&id).copied().flatten()?;
        self.opens.remove(&id);
        Some(r)
    }

    /// Sends OPEN with an explicit id and raw name bytes and waits for the
    /// answer.
    pub fn open_id(&mut self, id: u32, name: &[u8]) -> io::Result<Result<u32, ErrorCode>> {
        self.open_async(id, name)?;
        self.wait_until("OPEN answer", |d| {
            d.opens.get(&id).is_some_and(Option::is_some)
        })?;
        match self.opens.remove(&id).flatten() {
            Some(Ok(())) => Ok(Ok(id)),
            Some(Err(e)) => Ok(Err(e)),
            None => Err(timeout_err("OPEN answer")),
        }
    }

    /// Sends one DATA message if credit allows; `Ok(false)` when it does not.
    pub fn try_send(&mut self, id: u32, data: &[u8]) -> io::Result<bool> {
        let Some(c) = self.chans.get_mut(&id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("channel {id:#x} not open"),
            ));
        };
        if c.closed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("channel {id:#x} closed"),
            ));
        }
        let len = data.len() as u32;
        if !c.send.can_send(len) {
            return Ok(false);
        }
        let mut h = Header::with_payload(MsgType::Data, id, len);
        h.seq = c.tx_seq;
        c.tx_seq = c.tx_seq.wrapping_add(1);
        c.send.on_send(len);
        self.fill(&mut h);
        self.send_raw(&h, data)?;
        Ok(true)
    }

    /// Sends one DATA message, waiting for credit.
    pub fn send(&mut self, id: u32, data: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        while !self.try_send(id, data)? {
            if Instant::now() > deadline {
                return Err(timeout_err("send credit"));
            }
            self.poll(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Takes one received message if there is one, returning its credit.
    pub fn try_recv(&mut self, id: u32) -> io::Result<Option<Vec<u8>>> {
        let Some(c) = self.chans.get_mut(&id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("channel {id:#x} not open"),
            ));
        };
        let Some(m) = c.inbox.pop_front() else {
            if c.closed.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("channel {id:#x} closed"),
                ));
            }
            return Ok(None);
        };
        c.recv.on_consume(m.len() as u32);
        if c.recv.needs_update() && !c.sent_close {
            self.send_credit_update(id)?;
        }
        Ok(Some(m))
    }

    /// Receives one message, waiting for it.
    pub fn recv(&mut self, id: u32) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            if let Some(m) = self.try_recv(id)? {
                return Ok(m);
            }
            if Instant::now() > deadline {
                return Err(timeout_err("a message"));
            }
            self.poll(Duration::from_millis(50))?;
        }
    }

    /// Sends CLOSE on `id`.
    pub fn close(&mut self, id: u32) -> io::Result<()> {
        if let Some(c) = self.chans.get_mut(&id) {
            c.sent_close = true;
        }
        let mut h = Header::new(MsgType::Close, id);
        self.fill(&mut h);
        self.send_raw(&h, &[])
    }

    /// Messages waiting unread on `id`.
    pub fn inbox_len(&self, id: u32) -> usize {
        self.chans.get(&id).map_or(0, |c| c.inbox.len())
    }

    /// The CLOSE arg received on `id`, if any.
    pub fn closed(&self, id: u32) -> Option<u32> {
        self.chans.get(&id).and_then(|c| c.closed)
    }

    /// Whether CLOSE with any arg arrived for `id` (also for channels the
    /// driver does not know).
    pub fn saw_close(&self, id: u32) -> Option<u32> {
        self.ctrl
            .iter()
            .rev()
            .find(|h| h.channel == id && h.msg_type == MsgType::Close)
            .map(|h| h.arg)
    }
}
