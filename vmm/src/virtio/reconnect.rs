//! Keeps vhost-user devices alive across backend restarts: an event-loop
//! subscriber per device watches its socket for the backend hanging up,
//! then retries the connection on a timer until a backend listens on the
//! same path again and the device has handed its rings over (see
//! `VhostUserDevice::reconnect`). The guest keeps running meanwhile. It
//! also serves the backend's request channel (config-change messages).
//!
//! The main thread never waits for a device a vCPU holds (a vCPU may be
//! in a vhost-user request, up to the timeout): it only `try_lock`s the
//! device and leaves the work to the next timer tick when it is busy; the
//! request channel has its own lock.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::mmio::MmioTransport;
use super::vhost_user::{self, BackendRequests, VhostUserDevice};
use crate::devices::bus::lock;

/// Time between connection attempts.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How often a still-failing reconnect is reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A shared vhost-user device on virtio-mmio.
pub type SharedDevice = Arc<Mutex<MmioTransport<VhostUserDevice>>>;

/// Watches one device's backend connection.
pub struct BackendWatch {
    dev: SharedDevice,
    /// The socket path (for messages, without locking the device).
    path: String,
    /// The device's backend request channel.
    backend_requests: BackendRequests,
    /// A hang-up seen while the device was busy: applied on a timer tick.
    hangup_pending: bool,
    timer: TimerFd,
    /// The socket being watched (None while disconnected).
    socket: Option<RawFd>,
    /// The backend request channel being watched.
    requests: Option<RawFd>,
    lost_at: Option<Instant>,
    last_report: Option<Instant>,
}

impl std::fmt::Debug for BackendWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendWatch")
            .field("path", &self.path)
            .field("socket", &self.socket)
            .field("requests", &self.requests)
            .field("hangup_pending", &self.hangup_pending)
            .finish()
    }
}

/// Only a hang-up counts: replies to requests made by vCPU threads (config
/// reads) make the socket readable without meaning anything here.
fn hangup_events() -> EventSet {
    EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR
}

/// The device if no one else holds it (a poisoned lock is recovered).
fn try_lock(dev: &SharedDevice) -> Option<MutexGuard<'_, MmioTransport<VhostUserDevice>>> {
    match dev.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl BackendWatch {
    /// A watcher for `dev`.
    pub fn new(dev: SharedDevice) -> std::io::Result<Self> {
        let (path, backend_requests) = {
            let d = lock(&dev);
            (
                d.backend().socket_path().display().to_string(),
                d.backend().backend_requests(),
            )
        };
        Ok(Self {
            dev,
            path,
            backend_requests,
            hangup_pending: false,
            timer: TimerFd::new()?,
            socket: None,
            requests: None,
            lost_at: None,
            last_report: None,
        })
    }

    fn watch_socket(&mut self, ops: &mut EventOps, fd: RawFd, req: Option<RawFd>) {
        match ops.add(Events::new_raw(fd, hangup_events())) {
            Ok(()) => self.socket = Some(fd),
            Err(e) => log::error!("cannot watch the vhost-user socket: {e}"),
        }
        if let Some(req) = req {
            match ops.add(Events::new_raw(req, EventSet::IN)) {
                Ok(()) => self.requests = Some(req),
                Err(e) => log::error!("cannot watch the vhost-user backend request channel: {e}"),
            }
        }
    }

    fn unwatch_requests(&mut self, ops: &mut EventOps) {
        if let Some(fd) = self.requests.take() {
            if let Err(e) = ops.remove(Events::new_raw(fd, EventSet::IN)) {
                log::warn!("cannot stop watching the backend request channel: {e}");
            }
        }
    }

    fn on_request(&mut self, ops: &mut EventOps) {
        let result = vhost_user::serve_backend_request(&self.backend_requests);
        if let Err(e) = result {
            // Closed with the backend (the socket's hang-up follows) or broken.
            log::debug!("vhost-user backend request channel: {e}");
            self.unwatch_requests(ops);
        }
    }

    fn on_hangup(&mut self, events: Events, ops: &mut EventOps) {
        if let Err(e) = ops.remove(events) {
            log::warn!("cannot stop watching the vhost-user socket: {e}");
        }
        self.socket = None;
        self.unwatch_requests(ops);
        match try_lock(&self.dev) {
            Some(mut dev) => dev.backend_mut().mark_disconnected(),
            // A vCPU is in a request (which fails on the dead socket).
            None => self.hangup_pending = true,
        }
        log::warn!(
            "vhost-user backend {} disconnected; the guest keeps running, reconnecting",
            self.path
        );
        self.lost_at = Some(Instant::now());
        self.last_report = self.lost_at;
        if let Err(e) = self.timer.reset(RETRY_INTERVAL, Some(RETRY_INTERVAL)) {
            log::error!("cannot arm the reconnect timer: {e}");
        }
    }

    fn on_timer(&mut self, ops: &mut EventOps) {
        // The expiry count does not matter: one attempt per wake-up.
        let _ = self.timer.wait();
        // Busy (a vCPU in a request): try again on the next tick.
        let Some(mut dev) = try_lock(&self.dev) else {
            return;
        };
        if std::mem::take(&mut self.hangup_pending) {
            dev.backend_mut().mark_disconnected();
        }
        match dev.backend_mut().reconnect() {
            Ok(()) => {
                let (fd, req) = (
                    dev.backend().socket_fd(),
                    dev.backend().backend_request_fd(),
                );
                drop(dev);
                if let Err(e) = self.timer.clear() {
                    log::warn!("cannot disarm the reconnect timer: {e}");
                }
                let after = self.lost_at.map_or(0, |t| t.elapsed().as_millis());
                log::warn!(
                    "vhost-user backend {} reconnected after {after} ms",
                    self.path
                );
                self.watch_socket(ops, fd, req);
            }
            Err(e) => {
                drop(dev);
                let now = Instant::now();
                let due = match self.last_report {
                    Some(t) => now.duration_since(t) >= REPORT_EVERY,
                    None => true,
                };
                if due {
                    self.last_report = Some(now);
                    log::warn!("still reconnecting: {}", crate::error_chain(&e));
                }
            }
        }
    }
}

impl MutEventSubscriber for BackendWatch {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            self.on_timer(ops);
        } else if Some(events.fd()) == self.socket {
            self.on_hangup(events, ops);
        } else if Some(events.fd()) == self.requests {
            self.on_request(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the reconnect timer: {e}");
        }
        let (connected, fd, req) = {
            let dev = lock(&self.dev);
            let b = dev.backend();
            (b.is_connected(), b.socket_fd(), b.backend_request_fd())
        };
        if connected {
            self.watch_socket(ops, fd, req);
        }
    }
}
