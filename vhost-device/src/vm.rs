//! One VM the daemon serves: its sockets (bound by the manager thread),
//! its engines (one per queue pair), counters and policy, and the thread
//! that serves one vhost-user frontend at a time for it. VMs share
//! nothing but the process: a VM's frontend disconnecting or misbehaving
//! resets only that VM's device, and stopping a VM (reload without it)
//! touches no other.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::KtBackend;
use crate::budget::{ChannelBudget, VmBuffer};
use crate::config::VmConfig;
use crate::device::{Device, Params};
use crate::policy::{Policy, PolicyCell, PolicyError};
use crate::seccomp::Filter;
use crate::seqpacket::SeqListener;
use crate::sockpath::claim_socket_path;
use crate::stats::Stats;

/// Why a VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The vhost-user socket could not be created.
    #[error("vhost-user socket {path}: {source}")]
    Socket {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: vhost::vhost_user::Error,
    },
    /// The host listening socket could not be created.
    #[error("listening socket {path}: {source}")]
    Listen {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A socket path is taken by a live daemon or is not a socket.
    #[error(transparent)]
    Claim(#[from] crate::sockpath::ClaimError),
    /// epoll, eventfd or thread setup failed.
    #[error("device setup: {0}")]
    Setup(#[source] std::io::Error),
}

/// How a VM's thread is told to stop.
struct Stop {
    requested: AtomicBool,
    /// Readable once stop is requested: wakes the wait for a frontend.
    fd: EventFd,
    /// The connected frontend's connection, to shut it down.
    conn: Mutex<Option<ShutdownHandle>>,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop")
            .field("requested", &self.requested())
            .finish_non_exhaustive()
    }
}

impl Stop {
    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn request(&self) {
        self.requested.store(true, Ordering::Release);
        let _ = self.fd.write(1);
        if let Some(h) = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            h.shutdown();
        }
    }

    /// Records the connection of a frontend that just connected; shuts it
    /// down at once if a stop came in between.
    fn connected(&self, h: Option<ShutdownHandle>) {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        *conn = h;
        if self.requested() {
            if let Some(h) = conn.as_ref() {
                h.shutdown();
            }
        }
    }
}

/// A VM being served.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    stats: Arc<Stats>,
    policy: Arc<PolicyCell>,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Vm {
    /// Claims and binds the VM's sockets (on the calling thread, which
    /// must be allowed to bind) and starts its thread, which installs
    /// `filter` on itself before it serves anything.
    pub fn start(config: VmConfig, filter: Filter) -> Result<Vm, VmError> {
        // Every path is checked before any is bound, so a VM refused on
        // one of them leaves nothing behind on the other.
        for path in config.paths() {
            claim_socket_path(path)?;
        }
        let min_window = config.device.max_msg_size + kt_proto::consts::MSG_OVERHEAD;
        let buffer = Arc::new(if config.vm_buffer == 0 {
            VmBuffer::unlimited(config.channel_buffer, min_window)
        } else {
            VmBuffer::new(config.vm_buffer.into(), config.channel_buffer, min_window)
        });
        let stats = Arc::new(
            Stats::for_vm(&config.name, config.device.guest_id)
                .with_pairs(config.device.max_queue_pairs)
                .with_buffer(buffer),
        );
        let policy = Arc::new(PolicyCell::new(config.policy.clone()).map_err(VmError::Setup)?);
        let listener = match &config.listen {
            Some(path) => Some(SeqListener::bind(path).map_err(|source| VmError::Listen {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let params = Params {
            vm_name: config.name.clone(),
            config: config.device,
            channel_buffer: config.channel_buffer,
            handshake_timeout: config.handshake_timeout,
            open_timeout: config.open_timeout,
            rx_share: config.rx_share,
        };
        // One engine per queue pair; pair 0 has the host listener. The
        // engines share the counters, the policy and max_channels.
        let budget = Arc::new(ChannelBudget::new(config.device.max_channels));
        let mut listener = listener;
        let mut devices = Vec::new();
        for pair in 0..config.device.max_queue_pairs {
            devices.push(
                Device::for_pair(
                    params.clone(),
                    policy.clone(),
                    stats.clone(),
                    listener.take(),
                    pair,
                    budget.clone(),
                )
                .map_err(VmError::Setup)?,
            );
        }
        let backend = Arc::new(
            KtBackend::new(devices, stats.clone(), config.busy_poll).map_err(VmError::Setup)?,
        );
        let vu_listener =
            Listener::new(&config.socket_path, false).map_err(|source| VmError::Socket {
                path: config.socket_path.clone(),
                source,
            })?;
        let stop = Arc::new(Stop {
            requested: AtomicBool::new(false),
            fd: EventFd::new(EFD_NONBLOCK).map_err(VmError::Setup)?,
            conn: Mutex::new(None),
        });
        log::info!(
            "vm {} (guest {}): serving vhost-user on {} ({} queue pair(s), {} service(s) in \
             policy{})",
            config.name,
            config.device.guest_id,
            config.socket_path.display(),
            config.device.max_queue_pairs,
            config.policy.len(),
            config
                .listen
                .as_ref()
                .map(|p| format!(", host connections on {}", p.display()))
                .unwrap_or_default()
        );
        let name = config.name.clone();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kt-vm-{name}"))
            .spawn(move || {
                if let Err(e) = filter.install() {
                    log::error!("vm {name}: {e}; not serving it");
                    return;
                }
                serve(&name, &backend, vu_listener, &thread_stop);
            })
            .map_err(VmError::Setup)?;
        Ok(Vm {
            config,
            stats,
            policy,
            stop,
            thread: Some(thread),
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration it was started with (its policy: the one in force).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Puts `policy` in force for later OPENs; returns whether it differs.
    pub fn set_policy(&mut self, policy: Policy) -> bool {
        self.config.policy = policy.clone();
        self.policy.replace(policy)
    }

    /// Reads the VM's policy file again and puts it in force.
    pub fn reload_policy(&mut self) -> Result<bool, PolicyError> {
        let policy = Policy::load(&self.config.policy_path)?;
        Ok(self.set_policy(policy))
    }

    /// Stops the VM: its frontend is disconnected (the guest's driver sees
    /// the device go away), its thread ends, its socket files are removed.
    pub fn stop(mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("vm {}: its thread panicked", self.config.name);
            }
        }
        for p in self.config.paths() {
            if let Err(e) = std::fs::remove_file(p) {
                log::warn!("vm {}: removing {}: {e}", self.config.name, p.display());
            }
        }
        log::info!("vm {}: stopped", self.config.name);
    }
}

/// Waits until the vhost-user listener has a connection (true) or a stop
/// was requested (false).
fn wait_for_frontend(listener: RawFd, stop: &Stop) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if stop.requested() {
            return false;
        }
        // SAFETY: two valid pollfds that live across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("waiting for a frontend: {e}");
            return false;
        }
        if stop.requested() {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

/// The VM thread: one frontend at a time until stopped.
fn serve(name: &str, backend: &Arc<KtBackend>, mut listener: Listener, stop: &Stop) {
    while wait_for_frontend(listener.as_raw_fd(), stop) {
        if let Err(e) = serve_one(name, backend, &mut listener, stop) {
            // The VM cannot serve (its worker could not start): say so and
            // keep trying, slowly, rather than spin or take others down.
            log::error!("vm {name}: {e}");
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

fn serve_one(
    name: &str,
    backend: &Arc<KtBackend>,
    listener: &mut Listener,
    stop: &Stop,
) -> Result<(), vhost_user_backend::Error> {
    let mut daemon = VhostUserDaemon::new(
        "kt-vhost-device".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )?;
    // Each worker thread nests its own pair's host epoll set.
    let host_event = u64::from(backend.host_event());
    for (thread, h) in daemon.get_epoll_handlers().iter().enumerate() {
        let Some(fd) = backend.host_epoll_fd(thread) else {
            continue;
        };
        h.register_listener(fd, EventSet::IN, host_event)
            .map_err(vhost_user_backend::Error::StartDaemon)?;
    }
    daemon.start(listener)?;
    stop.connected(daemon.shutdown_handle());
    backend.connected();
    log::info!("vm {name}: frontend connected");
    match daemon.wait() {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => log::info!("vm {name}: frontend disconnected"),
        Err(e) => log::warn!("vm {name}: frontend connection ended: {e}"),
    }
    stop.connected(None);
    // Dropping the daemon stops its worker threads before the next one.
    drop(daemon);
    backend.disconnected();
    Ok(())
}
