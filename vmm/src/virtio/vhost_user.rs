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

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::reg;
use super::{QueueConfig, VirtioBackend};
use crate::config::VhostUserSpec;
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

impl VhostUserFrontendReqHandler for ConfigEvents {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.pending.store(true, Ordering::SeqCst);
        self.irq.write(1)?;
        Ok(0)
    }
}

/// vhost-user setup failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached.
    #[error("cannot connect to vhost-user backend {0}")]
    Connect(PathBuf, #[source] vhost::Error),
    /// A control message failed.
    #[error("vhost-user backend {0}: {1} failed")]
    Request(PathBuf, &'static str, #[source] vhost::Error),
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

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One vhost-user device.
pub struct VhostUserDevice {
    spec: VhostUserSpec,
    frontend: Frontend,
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
    requests: Option<FrontendReqHandler<ConfigEvents>>,
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
fn handshake(spec: &VhostUserSpec, events: &Arc<ConfigEvents>) -> Result<Connection> {
    let path = spec.socket.clone();
    let req = |what: &'static str| {
        let p = path.clone();
        move |e| Error::Request(p, what, e)
    };
    let mut frontend = Frontend::connect(&spec.socket, u64::from(spec.queues))
        .map_err(|e| Error::Connect(path.clone(), e))?;
    frontend.set_owner().map_err(req("SET_OWNER"))?;
    let features = frontend.get_features().map_err(|e| match e {
        vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::InvalidMessage
            | vhost::vhost_user::Error::PartialMessage
            | vhost::vhost_user::Error::OversizedMsg,
        ) => Error::NotVhostUser(path.clone(), "GET_FEATURES"),
        e => Error::Request(path.clone(), "GET_FEATURES", e),
    })?;
    let mut protocol = VhostUserProtocolFeatures::empty();
    if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(req("GET_PROTOCOL_FEATURES"))?;
        protocol = offered & wanted_protocol_features();
        frontend
            .set_protocol_features(protocol)
            .map_err(req("SET_PROTOCOL_FEATURES"))?;
    }
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let n = frontend.get_queue_num().map_err(req("GET_QUEUE_NUM"))?;
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
        frontend
            .set_backend_request_fd(&handler.get_tx_raw_fd())
            .map_err(req("SET_BACKEND_REQ_FD"))?;
        requests = Some(handler);
    }
    Ok(Connection {
        frontend,
        features,
        protocol,
        requests,
    })
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
    pub fn connect(spec: &VhostUserSpec) -> Result<Self> {
        let config_events = Arc::new(ConfigEvents::new()?);
        let c = handshake(spec, &config_events)?;
        if !c.protocol.contains(VhostUserProtocolFeatures::CONFIG) && spec.config_size > 0 {
            log::warn!(
                "vhost-user backend {} lacks the CONFIG protocol feature: config space reads as zeros",
                spec.socket.display()
            );
        }
        Ok(Self {
            spec: spec.clone(),
            frontend: c.frontend,
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
            requests: c.requests,
        })
    }

    /// The config-change state (what a CONFIG_CHANGE_MSG updates).
    pub fn config_events(&self) -> &Arc<ConfigEvents> {
        &self.config_events
    }

    /// The backend request channel, watched for CONFIG_CHANGE_MSG.
    pub fn backend_request_fd(&self) -> Option<RawFd> {
        self.requests.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Serves one message on the backend request channel. An error means
    /// the channel is unusable (stop watching it).
    pub fn handle_backend_request(&mut self) -> std::result::Result<(), vhost::vhost_user::Error> {
        match self.requests.as_mut() {
            Some(r) => r.handle_request().map(|_| ()),
            None => Ok(()),
        }
    }

    /// The backend's socket path.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.spec.socket
    }

    /// The vhost-user socket (watched for the backend hanging up).
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
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
        let c = handshake(&self.spec, &self.config_events)?;
        if let Some((features, _)) = &self.running {
            let lost = features & !c.features & !super::mmio::VIRTIO_F_VERSION_1;
            if lost != 0 {
                return Err(Error::FeaturesLost(self.spec.socket.clone(), lost));
            }
        }
        self.frontend = c.frontend;
        self.backend_features = c.features;
        self.protocol = c.protocol;
        self.requests = c.requests;
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

    fn req(&self, what: &'static str) -> impl Fn(vhost::Error) -> String + '_ {
        move |e| format!("{}: {what}: {e}", self.spec.socket.display())
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
        self.frontend
            .set_features(features | proto_bit)
            .map_err(self.req("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("guest memory not shareable: {e}"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.req("SET_MEM_TABLE"))?;
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
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(self.req("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(self.req("SET_VRING_ADDR"))?;
            let base = if resume {
                Self::used_index(&mem, q)?
            } else {
                0
            };
            self.frontend
                .set_vring_base(i, base)
                .map_err(self.req("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.calls[i])
                .map_err(self.req("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kicks[i])
                .map_err(self.req("SET_VRING_KICK"))?;
            if proto_bit != 0 {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(self.req("SET_VRING_ENABLE"))?;
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
        data.fill(0);
        let end = offset + data.len() as u64;
        if end > u64::from(self.spec.config_size)
            || !self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
        {
            return;
        }
        let (start, end) = (offset as usize, end as usize);
        if self.connected {
            let buf = vec![0u8; data.len()];
            match self.frontend.get_config(
                offset as u32,
                data.len() as u32,
                VhostUserConfigFlags::empty(),
                &buf,
            ) {
                Ok((_, payload)) if payload.len() == data.len() => {
                    self.config_cache[start..end].copy_from_slice(&payload);
                }
                Ok((_, payload)) => log::warn!(
                    "vhost-user GET_CONFIG returned {} bytes, {} expected",
                    payload.len(),
                    data.len()
                ),
                Err(e) => log::warn!("vhost-user GET_CONFIG failed: {e}"),
            }
        }
        data.copy_from_slice(&self.config_cache[start..end]);
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
        if let Err(e) =
            self.frontend
                .set_config(offset as u32, VhostUserConfigFlags::WRITABLE, data)
        {
            log::warn!("vhost-user SET_CONFIG failed: {e}");
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

    fn reset(&mut self) {
        self.running = None;
        if !self.connected {
            self.started.clear();
            return;
        }
        for i in std::mem::take(&mut self.started) {
            // Without protocol features GET_VRING_BASE alone stops the ring.
            if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                if let Err(e) = self.frontend.set_vring_enable(usize::from(i), false) {
                    log::warn!("vhost-user SET_VRING_ENABLE(false) failed: {e}");
                }
            }
            if let Err(e) = self.frontend.get_vring_base(usize::from(i)) {
                log::warn!("vhost-user GET_VRING_BASE failed: {e}");
            }
        }
    }
}
