//! Keeps vhost-user devices alive across backend restarts: an event-loop
//! subscriber per device watches its socket for the backend hanging up,
//! then retries the connection on a timer until a backend listens on the
//! same path again and the device has handed its rings over (see
//! `VhostUserDevice::reconnect`). The guest keeps running meanwhile. It
//! also serves the backend's request channel (config-change messages).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::mmio::MmioTransport;
use super::vhost_user::VhostUserDevice;
use crate::devices::bus::lock;

/// Time between connection attempts.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How often a still-failing reconnect is reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A shared vhost-user device on virtio-mmio.
pub type SharedDevice = Arc<Mutex<MmioTransport<VhostUserDevice>>>;

/// Watches one device's backend connection.
#[derive(Debug)]
pub struct BackendWatch {
    dev: SharedDevice,
    timer: TimerFd,
    /// The socket being watched (None while disconnected).
    socket: Option<RawFd>,
    /// The backend request channel being watched.
    requests: Option<RawFd>,
    lost_at: Option<Instant>,
    last_report: Option<Instant>,
}

/// Only a hang-up counts: replies to requests made by vCPU threads (config
/// reads) make the socket readable without meaning anything here.
fn hangup_events() -> EventSet {
    EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR
}

impl BackendWatch {
    /// A watcher for `dev`.
    pub fn new(dev: SharedDevice) -> std::io::Result<Self> {
        Ok(Self {
            dev,
            timer: TimerFd::new()?,
            socket: None,
            requests: None,
            lost_at: None,
            last_report: None,
        })
    }

    fn watch_socket(&mut self, ops: &mut EventOps) {
        let (fd, req) = {
            let dev = lock(&self.dev);
            (
                dev.backend().socket_fd(),
                dev.backend().backend_request_fd(),
            )
        };
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
        let result = lock(&self.dev).backend_mut().handle_backend_request();
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
        let mut dev = lock(&self.dev);
        let path = dev.backend().socket_path().display().to_string();
        dev.backend_mut().mark_disconnected();
        drop(dev);
        log::warn!("vhost-user backend {path} disconnected; the guest keeps running, reconnecting");
        self.lost_at = Some(Instant::now());
        self.last_report = self.lost_at;
        if let Err(e) = self.timer.reset(RETRY_INTERVAL, Some(RETRY_INTERVAL)) {
            log::error!("cannot arm the reconnect timer: {e}");
        }
    }

    fn on_timer(&mut self, ops: &mut EventOps) {
        // The expiry count does not matter: one attempt per wake-up.
        let _ = self.timer.wait();
        let mut dev = lock(&self.dev);
        let path = dev.backend().socket_path().display().to_string();
        match dev.backend_mut().reconnect() {
            Ok(()) => {
                drop(dev);
                if let Err(e) = self.timer.clear() {
                    log::warn!("cannot disarm the reconnect timer: {e}");
                }
                let after = self.lost_at.map_or(0, |t| t.elapsed().as_millis());
                log::warn!("vhost-user backend {path} reconnected after {after} ms");
                self.watch_socket(ops);
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
        if lock(&self.dev).backend().is_connected() {
            self.watch_socket(ops);
        }
    }
}
