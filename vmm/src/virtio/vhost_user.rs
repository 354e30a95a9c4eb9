//! A generic vhost-user device (any virtio ID, queue count and config size)
//! for the virtio-mmio transport. kt-vmm is the frontend: it negotiates
//! features, shares the memfd guest memory (SET_MEM_TABLE), and hands each
//! queue's rings plus two eventfds to the backend: the kick fd is a KVM
//! ioeventfd on QueueNotify (datamatch = queue index), the call fd a KVM
//! irqfd on the device's GSI. After that the data path is backend <-> KVM
//! <-> guest; no kt-vmm thread touches it.
//!
//! When the backend goes away (`virtio::reconnect` notices) the guest keeps
//! running: config reads return the last values, and `reconnect` redoes the
//! whole setup on a new connection, each ring resuming at the used index the
//! guest sees (what the old backend finished), so buffers it never returned
//! are offered again and the new backend sees a non-zero base.
//!
//! With the BACKEND_REQ protocol feature the backend gets a request channel;
//! its CONFIG_CHANGE_MSG sets the config-change interrupt bit, bumps the
//! config generation and raises the device's GSI (a third irqfd).
//!
//! Every request is time-limited (`virtio::deadline`): a backend that does
//! not answer in time has its socket shut down, the request fails with
//! `Error::Timeout`, and the device reports itself failed (`take_failure`:
//! the transport sets DEVICE_NEEDS_RESET) and counts as disconnected, so
//! `reconnect` takes over as for a backend that went away. A config read
//! can be made without the device's lock (`begin_config_read`,
//! `PendingConfigRead::run`, `finish_config_read`; see `vhost_user_mmio`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::{IoEventAddress, VmFd};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::deadline::{self, Watchdog};
use super::mmio::reg;
use super::{QueueConfig, VirtioBackend};
use crate::config::VhostUserSpec;
use crate::devices::bus::lock;
use crate::memory::GuestMemory;

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, never shown to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Protocol features kt-vmm uses when the backend offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::BACKEND_REQ
}

/// Config-change state shared by the backend request channel (sets it)
/// and the virtio-mmio registers (report and acknowledge it).
#[derive(Debug)]
pub struct ConfigEvents {
    pending: AtomicBool,
    generation: AtomicU32,
    irq: EventFd,
}

impl ConfigEvents {
    fn new() -> Result<Self> {
        Ok(Self {
            pending: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            irq: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?,
        })
    }
}

impl ConfigEvents {
    /// A configuration change notification: new generation, interrupt
    /// bit set until acknowledged, the device's GSI raised.
    fn raise(&self) -> io::Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.pending.store(true, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl VhostUserFrontendReqHandler for ConfigEvents {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.raise()?;
        Ok(0)
    }
}

/// The backend request channel of a device, shared with the main thread's
/// watch so serving it never waits for the device (whose lock a vCPU may
/// hold during a request).
pub type BackendRequests = Arc<Mutex<Option<FrontendReqHandler<ConfigEvents>>>>;

/// vhost-user setup failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached.
    #[error("cannot connect to vhost-user backend {0}")]
    Connect(PathBuf, #[source] io::Error),
    /// A control message failed.
    #[error("vhost-user backend {0}: {1} failed")]
    Request(PathBuf, &'static str, #[source] vhost::Error),
    /// The backend did not answer a control message in time (its socket
    /// was shut down, the error is what that left the request with).
    #[error("vhost-user backend {0}: no answer to {1} within {2} ms")]
    Timeout(PathBuf, &'static str, u128, #[source] vhost::Error),
    /// The request watchdog thread could not start.
    #[error("starting the vhost-user request watchdog")]
    Watchdog(#[source] io::Error),
    /// The peer's answer to the first request was not vhost-user at all.
    #[error("{0} does not speak vhost-user (its answer to {1} is not a vhost-user message): is it the backend's vhost-user socket?")]
    NotVhostUser(PathBuf, &'static str),
    /// The backend has fewer queues than requested.
    #[error("vhost-user backend {0} supports {1} queues, {2} requested")]
    Queues(PathBuf, u64, u16),
    /// An eventfd could not be created.
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
    /// KVM refused an ioeventfd or irqfd.
    #[error("registering {0} with KVM")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A reconnected backend lacks features the driver already uses.
    #[error("vhost-user backend {0} came back without features {1:#x} the driver uses")]
    FeaturesLost(PathBuf, u64),
    /// Rings could not be handed over on a new connection.
    #[error("vhost-user backend {0}: {1}")]
    Restart(PathBuf, String),
}

/// Runs one request on `frontend` under `watchdog`'s time limit; `what`
/// names it in errors.
fn request<T>(
    watchdog: &Watchdog,
    frontend: &mut Frontend,
    path: &Path,
    what: &'static str,
    f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
) -> Result<T> {
    let fd = frontend.as_raw_fd();
    let (r, fired) = watchdog.run(&fd, || f(frontend));
    r.map_err(|e| {
        if fired {
            Error::Timeout(path.into(), what, watchdog.timeout().as_millis(), e)
        } else {
            Error::Request(path.into(), what, e)
        }
    })
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The connection to the backend: its socket (one request at a time), the
/// watchdog bounding each request, and a generation that changes with
/// every new connection. Shared with requests made without the device's
/// lock (`PendingConfigRead`).
struct Link {
    frontend: Mutex<Frontend>,
    watchdog: Watchdog,
    path: PathBuf,
    generation: AtomicU64,
}

impl Link {
    fn request<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let mut frontend = lock(&self.frontend);
        request(&self.watchdog, &mut frontend, &self.path, what, f)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn replace(&self, frontend: Frontend) {
        *lock(&self.frontend) = frontend;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A GET_CONFIG to make without holding the device's lock: taken with
/// `VhostUserDevice::begin_config_read`, made with `run`, its result handed
/// to `finish_config_read`.
pub struct PendingConfigRead {
    link: Arc<Link>,
    generation: u64,
    offset: u64,
    len: usize,
}

impl std::fmt::Debug for PendingConfigRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingConfigRead")
            .field("generation", &self.generation)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl PendingConfigRead {
    /// Asks the backend (blocks for at most the request timeout).
    pub fn run(&self) -> Result<Vec<u8>> {
        let buf = vec![0u8; self.len];
        self.link
            .request("GET_CONFIG", |f| {
                f.get_config(
                    self.offset as u32,
                    self.len as u32,
                    VhostUserConfigFlags::empty(),
                    &buf,
                )
            })
            .map(|(_, payload)| payload)
    }
}

/// One vhost-user device.
pub struct VhostUserDevice {
    spec: VhostUserSpec,
    link: Arc<Link>,
    /// The current connection's socket.
    socket: RawFd,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    mem: Option<GuestMemory>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    started: Vec<u16>,
    /// Features and queues of the running driver (set on activate).
    running: Option<(u64, Vec<QueueConfig>)>,
    /// Config space as last read (served while the backend is away).
    config_cache: Vec<u8>,
    connected: bool,
    config_events: Arc<ConfigEvents>,
    /// The backend's request channel (BACKEND_REQ), if negotiated.
    requests: BackendRequests,
    /// A request timed out and the transport has not been told yet.
    failed: bool,
}

/// One negotiated vhost-user connection.
struct Connection {
    frontend: Frontend,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    requests: Option<FrontendReqHandler<ConfigEvents>>,
}

/// SET_OWNER, features, protocol features, queue count and the backend
/// request channel on a new socket.
fn handshake(
    spec: &VhostUserSpec,
    events: &Arc<ConfigEvents>,
    watchdog: &Watchdog,
) -> Result<Connection> {
    let path = spec.socket.clone();
    let stream = deadline::connect(&spec.socket, watchdog.timeout())
        .map_err(|e| Error::Connect(path.clone(), e))?;
    let mut frontend = Frontend::from_stream(stream, u64::from(spec.queues));
    let mut req = |what, f: &dyn Fn(&mut Frontend) -> vhost::Result<u64>| {
        request(watchdog, &mut frontend, &path, what, f)
    };
    req("SET_OWNER", &|f| f.set_owner().map(|()| 0))?;
    let features = req("GET_FEATURES", &|f| f.get_features()).map_err(|e| match e {
        Error::Request(
            p,
            what,
            vhost::Error::VhostUserProtocol(
                vhost::vhost_user::Error::InvalidMessage
                | vhost::vhost_user::Error::PartialMessage
                | vhost::vhost_user::Error::OversizedMsg,
            ),
        ) => Error::NotVhostUser(p, what),
        e => e,
    })?;
    let mut protocol = VhostUserProtocolFeatures::empty();
    if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = req("GET_PROTOCOL_FEATURES", &|f| {
            f.get_protocol_features().map(|p| p.bits())
        })?;
        protocol =
            VhostUserProtocolFeatures::from_bits_truncate(offered) & wanted_protocol_features();
        req("SET_PROTOCOL_FEATURES", &|f| {
            f.set_protocol_features(protocol).map(|()| 0)
        })?;
    }
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let n = req("GET_QUEUE_NUM", &|f| f.get_queue_num())?;
        if n < u64::from(spec.queues) {
            return Err(Error::Queues(path, n, spec.queues));
        }
    }
    let mut requests = None;
    if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
        let handler = FrontendReqHandler::new(events.clone()).map_err(|e| {
            Error::Request(
                path.clone(),
                "creating the backend request channel",
                vhost::Error::VhostUserProtocol(e),
            )
        })?;
        let fd = handler.get_tx_raw_fd();
        req("SET_BACKEND_REQ_FD", &|f| {
            f.set_backend_request_fd(&fd).map(|()| 0)
        })?;
        requests = Some(handler);
    }
    Ok(Connection {
        frontend,
        features,
        protocol,
        requests,
    })
}

/// Serves one message on a device's backend request channel.
pub fn serve_backend_request(
    requests: &BackendRequests,
) -> std::result::Result<(), vhost::vhost_user::Error> {
    match lock(requests).as_mut() {
        Some(r) => r.handle_request().map(|_| ()),
        None => Ok(()),
    }
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("spec", &self.spec)
            .field("backend_features", &self.backend_features)
            .field("protocol", &self.protocol)
            .field("started", &self.started)
            .finish()
    }
}

impl VhostUserDevice {
    /// Connects to the backend and negotiates the protocol (no guest yet).
    /// Every request, now and later, may take at most `timeout`.
    pub fn connect(spec: &VhostUserSpec, timeout: Duration) -> Result<Self> {
        let config_events = Arc::new(ConfigEvents::new()?);
        let watchdog = Watchdog::new(timeout).map_err(Error::Watchdog)?;
        let c = handshake(spec, &config_events, &watchdog)?;
        if !c.protocol.contains(VhostUserProtocolFeatures::CONFIG) && spec.config_size > 0 {
            log::warn!(
                "vhost-user backend {} lacks the CONFIG protocol feature: config space reads as zeros",
                spec.socket.display()
            );
        }
        let socket = c.frontend.as_raw_fd();
        let link = Arc::new(Link {
            frontend: Mutex::new(c.frontend),
            watchdog,
            path: spec.socket.clone(),
            generation: AtomicU64::new(0),
        });
        Ok(Self {
            spec: spec.clone(),
            link,
            socket,
            backend_features: c.features,
            protocol: c.protocol,
            mem: None,
            kicks: Vec::new(),
            calls: Vec::new(),
            started: Vec::new(),
            running: None,
            config_cache: vec![0; spec.config_size as usize],
            connected: true,
            config_events,
            requests: Arc::new(Mutex::new(c.requests)),
            failed: false,
        })
    }

    /// One request on the current connection, time-limited. A timeout
    /// marks the device failed and disconnected (its socket is shut down,
    /// so the backend watch sees a hang-up and starts reconnecting).
    fn call<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let r = self.link.request(what, f);
        if let Err(e @ Error::Timeout(..)) = &r {
            self.fail(e);
        }
        r
    }

    /// A request timed out: the device is failed (until the transport
    /// takes the failure) and disconnected (its socket is shut down, so
    /// the backend watch sees a hang-up and starts reconnecting).
    fn fail(&mut self, e: &Error) {
        log::error!(
            "{}: device marked failed (DEVICE_NEEDS_RESET), reconnecting",
            crate::error_chain(e)
        );
        self.failed = true;
        self.mark_disconnected();
    }

    /// The GET_CONFIG a config-space read of `len` bytes at `offset`
    /// needs, if any (none while disconnected, beyond `config-size` or
    /// without the CONFIG protocol feature: the read is served locally).
    pub fn begin_config_read(&self, offset: u64, len: usize) -> Option<PendingConfigRead> {
        let end = offset + len as u64;
        let asks = self.connected
            && end <= u64::from(self.spec.config_size)
            && self.protocol.contains(VhostUserProtocolFeatures::CONFIG);
        asks.then(|| PendingConfigRead {
            link: self.link.clone(),
            generation: self.link.generation(),
            offset,
            len,
        })
    }

    /// Takes the backend's answer to `p` into the config cache and fills
    /// `data` from the cache. A timeout fails the device unless it has
    /// reconnected meanwhile.
    pub fn finish_config_read(
        &mut self,
        p: &PendingConfigRead,
        answer: Result<Vec<u8>>,
        data: &mut [u8],
    ) {
        let (start, end) = (p.offset as usize, p.offset as usize + p.len);
        match answer {
            Ok(payload) if payload.len() == p.len => {
                self.config_cache[start..end].copy_from_slice(&payload);
            }
            Ok(payload) => log::warn!(
                "vhost-user GET_CONFIG returned {} bytes, {} expected",
                payload.len(),
                p.len
            ),
            Err(e @ Error::Timeout(..)) => {
                if p.generation == self.link.generation() && self.connected {
                    self.fail(&e);
                }
            }
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
        self.serve_config(p.offset, data);
    }

    /// Fills `data` from the config cache (zeros beyond it).
    fn serve_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = offset as usize;
        if let Some(cached) = self.config_cache.get(start..start + data.len()) {
            data.copy_from_slice(cached);
        }
    }

    /// The config-change state (what a CONFIG_CHANGE_MSG updates).
    pub fn config_events(&self) -> &Arc<ConfigEvents> {
        &self.config_events
    }

    /// The backend request channel, watched for CONFIG_CHANGE_MSG.
    pub fn backend_request_fd(&self) -> Option<RawFd> {
        lock(&self.requests).as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The backend request channel itself (see `serve_backend_request`).
    pub fn backend_requests(&self) -> BackendRequests {
        self.requests.clone()
    }

    /// Serves one message on the backend request channel. An error means
    /// the channel is unusable (stop watching it).
    pub fn handle_backend_request(&mut self) -> std::result::Result<(), vhost::vhost_user::Error> {
        serve_backend_request(&self.requests)
    }

    /// The backend's socket path.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.spec.socket
    }

    /// The vhost-user socket (watched for the backend hanging up).
    pub fn socket_fd(&self) -> RawFd {
        self.socket
    }

    /// Whether the backend is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The backend hung up: serve config reads from the cache and send
    /// nothing until `reconnect` succeeds.
    pub fn mark_disconnected(&mut self) {
        self.connected = false;
        self.started.clear();
    }

    /// Connects again (one attempt) and, if the driver is running, hands
    /// the rings over once more, each resuming at the used index in guest
    /// memory. On error the device stays disconnected.
    pub fn reconnect(&mut self) -> Result<()> {
        let c = handshake(&self.spec, &self.config_events, &self.link.watchdog)?;
        if let Some((features, _)) = &self.running {
            let lost = features & !c.features & !super::mmio::VIRTIO_F_VERSION_1;
            if lost != 0 {
                return Err(Error::FeaturesLost(self.spec.socket.clone(), lost));
            }
        }
        self.socket = c.frontend.as_raw_fd();
        self.link.replace(c.frontend);
        self.backend_features = c.features;
        self.protocol = c.protocol;
        *lock(&self.requests) = c.requests;
        if let Some((features, queues)) = self.running.clone() {
            self.setup_rings(features, &queues, true)
                .map_err(|e| Error::Restart(self.spec.socket.clone(), e))?;
        }
        self.connected = true;
        Ok(())
    }

    /// Gives the device guest memory and one kick and one call eventfd per queue.
    pub fn attach(&mut self, mem: GuestMemory) -> Result<()> {
        for _ in 0..self.spec.queues {
            let new =
                || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd);
            self.kicks.push(new()?);
            self.calls.push(new()?);
        }
        self.mem = Some(mem);
        Ok(())
    }

    /// Kick eventfds, by queue index (written when the guest notifies).
    pub fn kick_fds(&self) -> &[EventFd] {
        &self.kicks
    }

    /// Call eventfds, by queue index (written by the backend to interrupt).
    pub fn call_fds(&self) -> &[EventFd] {
        &self.calls
    }

    /// Wires the eventfds into KVM: each kick fd becomes an ioeventfd on the
    /// QueueNotify register at `mmio_base` matching its queue index, each
    /// call fd and the config-change fd an irqfd on `gsi`.
    pub fn register_with_kvm(&self, vm: &VmFd, mmio_base: u64, gsi: u32) -> Result<()> {
        vm.register_irqfd(&self.config_events.irq, gsi)
            .map_err(|e| Error::Kvm("config-change irqfd", e))?;
        let notify = IoEventAddress::Mmio(mmio_base + reg::QUEUE_NOTIFY);
        for (q, (kick, call)) in self.kicks.iter().zip(&self.calls).enumerate() {
            vm.register_ioevent(kick, &notify, q as u32)
                .map_err(|e| Error::Kvm("queue-notify ioeventfd", e))?;
            vm.register_irqfd(call, gsi)
                .map_err(|e| Error::Kvm("interrupt irqfd", e))?;
        }
        Ok(())
    }

    fn host_addr(mem: &GuestMemory, gpa: u64, len: u64) -> std::result::Result<u64, String> {
        let slice = mem
            .get_slice(GuestAddress(gpa), len as usize)
            .map_err(|e| format!("ring at {gpa:#x}+{len:#x} is not in guest RAM: {e}"))?;
        Ok(slice.ptr_guard().as_ptr() as u64)
    }

    fn start(&mut self, features: u64, queues: &[QueueConfig]) -> std::result::Result<(), String> {
        self.running = Some((features, queues.to_vec()));
        if !self.connected {
            log::warn!(
                "vhost-user {}: driver started while the backend is away; rings go over on reconnect",
                self.spec.socket.display()
            );
            return Ok(());
        }
        self.setup_rings(features, queues, false)
    }

    /// The ring's used index as the guest sees it: where a new backend
    /// resumes after the old one went away.
    fn used_index(mem: &GuestMemory, q: &QueueConfig) -> std::result::Result<u16, String> {
        mem.read_obj::<u16>(GuestAddress(q.used + 2))
            .map(u16::from_le)
            .map_err(|e| format!("used ring of queue {} unreadable: {e}", q.index))
    }

    /// SET_FEATURES, SET_MEM_TABLE and per ready queue
    /// NUM/ADDR/BASE/CALL/KICK/ENABLE. `resume`: base = the used index
    /// (reconnect), else 0 (fresh driver).
    fn setup_rings(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
        resume: bool,
    ) -> std::result::Result<(), String> {
        let mem = self.mem.clone().ok_or("device not attached to a VM")?;
        let proto_bit = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        let msg = |e: Error| crate::error_chain(&e);
        self.call("SET_FEATURES", |f| f.set_features(features | proto_bit))
            .map_err(msg)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("guest memory not shareable: {e}"))?;
        self.call("SET_MEM_TABLE", |f| f.set_mem_table(&regions))
            .map_err(msg)?;
        for q in queues.iter().filter(|q| q.ready) {
            let i = usize::from(q.index);
            let n = u64::from(q.size);
            let cfg = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: Self::host_addr(&mem, q.desc, 16 * n)?,
                avail_ring_addr: Self::host_addr(&mem, q.avail, 6 + 2 * n)?,
                used_ring_addr: Self::host_addr(&mem, q.used, 6 + 8 * n)?,
                log_addr: None,
            };
            self.call("SET_VRING_NUM", |f| f.set_vring_num(i, q.size))
                .map_err(msg)?;
            self.call("SET_VRING_ADDR", |f| f.set_vring_addr(i, &cfg))
                .map_err(msg)?;
            let base = if resume {
                Self::used_index(&mem, q)?
            } else {
                0
            };
            self.call("SET_VRING_BASE", |f| f.set_vring_base(i, base))
                .map_err(msg)?;
            let call = self.calls[i].try_clone().map_err(|e| e.to_string())?;
            self.call("SET_VRING_CALL", |f| f.set_vring_call(i, &call))
                .map_err(msg)?;
            let kick = self.kicks[i].try_clone().map_err(|e| e.to_string())?;
            self.call("SET_VRING_KICK", |f| f.set_vring_kick(i, &kick))
                .map_err(msg)?;
            if proto_bit != 0 {
                self.call("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))
                    .map_err(msg)?;
            }
            self.started.push(q.index);
        }
        log::info!(
            "vhost-user {}: {} {} queue(s), features {features:#x}",
            self.spec.socket.display(),
            if resume { "resumed" } else { "started" },
            self.started.len()
        );
        Ok(())
    }
}

impl VirtioBackend for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.spec.virtio_id
    }

    fn num_queues(&self) -> usize {
        usize::from(self.spec.queues)
    }

    fn queue_max_size(&self) -> u16 {
        self.spec.queue_size
    }

    fn device_features(&self) -> u64 {
        self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        match self.begin_config_read(offset, data.len()) {
            Some(p) => {
                let answer = p.run();
                self.finish_config_read(&p, answer, data);
            }
            None => self.serve_config(offset, data),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if end > u64::from(self.spec.config_size)
            || !self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
        {
            return;
        }
        if !self.connected {
            log::warn!("vhost-user backend away: config write at {offset:#x} lost");
            return;
        }
        match self.call("SET_CONFIG", |f| {
            f.set_config(offset as u32, VhostUserConfigFlags::WRITABLE, data)
        }) {
            Ok(()) | Err(Error::Timeout(..)) => {}
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
    ) -> std::result::Result<(), String> {
        self.start(features, queues)
    }

    fn config_changed(&self) -> bool {
        self.config_events.pending.load(Ordering::SeqCst)
    }

    fn ack_config_change(&mut self) {
        self.config_events.pending.store(false, Ordering::SeqCst);
    }

    fn config_generation(&self) -> u32 {
        self.config_events.generation.load(Ordering::SeqCst)
    }

    fn take_failure(&mut self) -> bool {
        std::mem::take(&mut self.failed)
    }

    fn signal_config_change(&mut self) {
        if let Err(e) = self.config_events.raise() {
            log::error!(
                "vhost-user {}: cannot raise the config-change interrupt: {e}",
                self.spec.socket.display()
            );
        }
    }

    fn reset(&mut self) {
        self.running = None;
        if !self.connected {
            self.started.clear();
            return;
        }
        for i in std::mem::take(&mut self.started) {
            let i = usize::from(i);
            // Without protocol features GET_VRING_BASE alone stops the ring.
            if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                if let Err(e) = self.call("SET_VRING_ENABLE", |f| f.set_vring_enable(i, false)) {
                    log::warn!("{}", crate::error_chain(&e));
                }
            }
            if self.connected {
                if let Err(e) = self.call("GET_VRING_BASE", |f| f.get_vring_base(i)) {
                    log::warn!("{}", crate::error_chain(&e));
                }
            }
            if !self.connected {
                // Timed out: the rest go over (or not) on reconnect.
                break;
            }
        }
    }
}
