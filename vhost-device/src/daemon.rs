//! The daemon's life: claims and binds the sockets once (refusing paths a
//! live daemon owns), then serves one vhost-user frontend at a time forever;
//! host listeners and the control socket survive frontend disconnects.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{KtBackend, HOST_EVENT};
use crate::config::Config;
use crate::device::{Device, Params};
use crate::policy::PolicyCell;
use crate::seqpacket::SeqListener;
use crate::sockpath::claim_socket_path;
use crate::stats::Stats;

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
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
    /// The open-file limit cannot fit `--max-channels`.
    #[error(transparent)]
    FdLimit(#[from] crate::fdlimit::FdLimitError),
    /// A socket path is taken by a live daemon or is not a socket.
    #[error(transparent)]
    Claim(#[from] crate::sockpath::ClaimError),
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// epoll or thread setup failed.
    #[error("device setup: {0}")]
    Setup(std::io::Error),
    /// The vhost-user library failed.
    #[error("vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// Registering the host epoll fd failed.
    #[error("registering host events: {0}")]
    Register(std::io::Error),
    /// The system-call filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Runs the daemon until a fatal error.
pub fn run(config: Config) -> Result<(), DaemonError> {
    crate::fdlimit::ensure(config.device.max_channels)?;
    // Every path is checked before any is bound, so a daemon refused on one
    // of them leaves nothing behind on the others.
    for path in [
        Some(&config.socket_path),
        config.listen.as_ref(),
        config.control.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        claim_socket_path(path)?;
    }
    let stats = Arc::new(Stats::new(config.device.guest_id));
    if let Some(path) = &config.control {
        crate::control::spawn_server(path, stats.clone())?;
    }
    let listener = match &config.listen {
        Some(path) => Some(
            SeqListener::bind(path).map_err(|source| DaemonError::Listen {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let params = Params {
        config: config.device,
        channel_buffer: config.channel_buffer,
        handshake_timeout: config.handshake_timeout,
        open_timeout: config.open_timeout,
    };
    let device = Device::new(
        params,
        Arc::new(PolicyCell::new(config.policy.clone()).map_err(DaemonError::Setup)?),
        stats.clone(),
        listener,
    )
    .map_err(DaemonError::Setup)?;
    let mut backend = KtBackend::new(device, stats);
    backend.set_busy_poll(config.busy_poll);
    let backend = Arc::new(RwLock::new(backend));
    let mut vu_listener =
        Listener::new(&config.socket_path, false).map_err(|source| DaemonError::Socket {
            path: config.socket_path.clone(),
            source,
        })?;
    log::info!(
        "guest {}: serving vhost-user on {} ({} service(s) in policy{})",
        config.device.guest_id,
        config.socket_path.display(),
        config.policy.len(),
        config
            .listen
            .as_ref()
            .map(|p| format!(", host connections on {}", p.display()))
            .unwrap_or_default()
    );
    // Every socket is bound and the control thread runs: from here on the
    // daemon only serves, and the filter says so.
    crate::seccomp::install(config.seccomp)?;
    log::debug!("seccomp filter: {:?}", config.seccomp);
    loop {
        serve_one(&backend, &mut vu_listener)?;
    }
}

fn serve_one(backend: &Arc<RwLock<KtBackend>>, listener: &mut Listener) -> Result<(), DaemonError> {
    let mut daemon = VhostUserDaemon::new(
        "kt-vhost-device".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(DaemonError::Daemon)?;
    // A panic while holding the lock cannot leave the fd invalid.
    let host_fd = backend
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .host_epoll_fd();
    for h in daemon.get_epoll_handlers() {
        h.register_listener(host_fd, EventSet::IN, u64::from(HOST_EVENT))
            .map_err(DaemonError::Register)?;
    }
    daemon.start(listener).map_err(DaemonError::Daemon)?;
    backend
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .connected();
    log::info!("frontend connected");
    match daemon.wait() {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => log::info!("frontend disconnected"),
        Err(e) => log::warn!("frontend connection ended: {e}"),
    }
    // Dropping the daemon stops its worker threads before the next one.
    drop(daemon);
    backend
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .disconnected();
    Ok(())
}
