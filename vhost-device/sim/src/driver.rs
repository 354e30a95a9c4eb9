//! The simulated guest driver: what `kerntransport.ko` does, in user space
//! over the simulated rings. Posts rx and event buffers, sends tx chains
//! (single, split or indirect descriptors), reassembles rx fragments,
//! checks every rule of SPEC §4/§5 on what the device sends (violations go
//! to `errors`), keeps per-channel credit and sequence numbers, and exposes
//! raw access for hostile-guest tests. This file holds the state, start-up
//! and polling; the receive side is `driver/rx.rs`, the transmit side and
//! channel API `driver/tx.rs`.

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

mod rx;
mod tx;

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
}
