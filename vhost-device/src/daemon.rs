//! The daemon's life: the manager thread (the main one) claims and binds
//! every VM's sockets, starts one thread per VM (`vm.rs`) and the control
//! socket, then serves reload requests (SIGHUP, or `reload` on the control
//! socket) forever: policy files are read again, and with a config file
//! VMs are added and removed. Host listeners and the control socket survive
//! frontend disconnects.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::config::{Config, Source, VmConfig};
use crate::control::Handler;
use crate::policy::PolicyError;
use crate::seccomp::{Filter, Role};
use crate::stats::{DaemonSnapshot, Stats};
use crate::vm::{Vm, VmError};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A VM could not be started.
    #[error("vm {name:?}: {source}")]
    Vm {
        /// Its name.
        name: String,
        /// Why.
        source: VmError,
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
    /// Signal or thread setup failed.
    #[error("daemon setup: {0}")]
    Setup(#[source] std::io::Error),
    /// The system-call filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// A request to the manager thread; the answer goes back on `reply`.
struct Reload {
    reply: Option<Sender<Result<String, String>>>,
}

/// The VMs' counters, in configuration order, for the control socket.
type Registry = Arc<RwLock<Vec<Arc<Stats>>>>;

struct ControlHandler {
    registry: Registry,
    requests: Sender<Reload>,
    ready: Arc<Ready>,
}

/// Set once the VMs the daemon starts with are up and published. The
/// control socket exists from before (a client that saw the vhost-user
/// socket can ask at once), but `stats` waits for this, so no answer
/// shows the daemon without its VMs.
#[derive(Default)]
struct Ready {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Ready {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    /// Waits for `set` at most `limit`.
    fn wait(&self, limit: Duration) {
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            self.cv
                .wait_timeout_while(done, limit, |d| !*d)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}

impl Handler for ControlHandler {
    fn snapshot(&self) -> DaemonSnapshot {
        // Starting VMs binds sockets and reads files: well under this.
        self.ready.wait(Duration::from_secs(30));
        let vms = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        DaemonSnapshot {
            vms: vms.iter().map(|s| s.snapshot()).collect(),
        }
    }

    fn reload(&self) -> Result<String, String> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(Reload { reply: Some(tx) })
            .map_err(|_| "the daemon is shutting down".to_owned())?;
        rx.recv_timeout(Duration::from_secs(50))
            .map_err(|_| "the reload did not finish in time".to_owned())?
    }
}

/// The manager thread's state.
struct Manager {
    source: Source,
    control: Option<PathBuf>,
    vms: Vec<Vm>,
    registry: Registry,
    worker_filter: Filter,
}

impl Manager {
    fn publish(&self) {
        let mut r = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *r = self.vms.iter().map(|v| v.stats().clone()).collect();
    }

    fn start_vm(&self, cfg: VmConfig) -> Result<Vm, DaemonError> {
        let name = cfg.name.clone();
        Vm::start(cfg, self.worker_filter.clone())
            .map_err(|source| DaemonError::Vm { name, source })
    }

    /// Reads the policy files (and the config file) again and applies
    /// them; returns what changed, or why nothing or only part did.
    fn reload(&mut self) -> Result<String, String> {
        match self.source.clone() {
            Source::Flags => {
                let mut done = Vec::new();
                for vm in &mut self.vms {
                    let changed = vm.reload_policy().map_err(|e: PolicyError| e.to_string())?;
                    done.push(policy_line(vm, changed));
                }
                Ok(done.join("; "))
            }
            Source::File { path, control_flag } => self.reload_file(&path, control_flag),
        }
    }

    fn reload_file(
        &mut self,
        path: &std::path::Path,
        control_flag: Option<PathBuf>,
    ) -> Result<String, String> {
        let file = crate::conffile::load(path).map_err(|e| e.to_string())?;
        if file.control.clone().or(control_flag) != self.control {
            return Err(format!(
                "config file {}: the control socket cannot change while the daemon runs \
                 (restart it)",
                path.display()
            ));
        }
        // Every check before any change: a refused reload changes nothing.
        for new in &file.vms {
            if let Some(old) = self.vms.iter().find(|v| v.name() == new.name) {
                if !old.config().same_but_policy(new) {
                    return Err(format!(
                        "config file {}: vm {:?}: only its policy can change while it runs; \
                         remove the vm, reload, then add it back",
                        path.display(),
                        new.name
                    ));
                }
            }
        }
        crate::fdlimit::ensure_all(
            file.vms
                .iter()
                .map(|v| (v.device.max_channels, v.device.max_queue_pairs)),
        )
        .map_err(|e| e.to_string())?;
        let mut done = Vec::new();
        let (keep, gone): (Vec<Vm>, Vec<Vm>) = std::mem::take(&mut self.vms)
            .into_iter()
            .partition(|v| file.vms.iter().any(|n| n.name == v.name()));
        for vm in gone {
            done.push(format!("vm {}: removed", vm.name()));
            vm.stop();
        }
        let mut keep: Vec<Option<Vm>> = keep.into_iter().map(Some).collect();
        let mut failed = Vec::new();
        for cfg in file.vms {
            let slot = keep
                .iter_mut()
                .find(|v| v.as_ref().is_some_and(|v| v.name() == cfg.name));
            if let Some(vm) = slot.and_then(Option::take) {
                let mut vm = vm;
                let changed = vm.set_policy(cfg.policy);
                done.push(policy_line(&vm, changed));
                self.vms.push(vm);
                continue;
            }
            match self.start_vm(cfg) {
                Ok(vm) => {
                    done.push(format!("vm {}: added", vm.name()));
                    self.vms.push(vm);
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        self.publish();
        let done = if done.is_empty() {
            "no VMs".to_owned()
        } else {
            done.join("; ")
        };
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(format!("{}; done: {done}", failed.join("; ")))
        }
    }

    fn serve(mut self, requests: &Receiver<Reload>) {
        for req in requests {
            let result = self.reload();
            match &result {
                Ok(what) => log::info!("reload: {what}"),
                Err(why) => log::error!("reload failed: {why}"),
            }
            if let Some(reply) = req.reply {
                let _ = reply.send(result);
            }
        }
    }
}

fn policy_line(vm: &Vm, changed: bool) -> String {
    format!(
        "vm {}: policy {} ({} service(s))",
        vm.name(),
        if changed { "changed" } else { "unchanged" },
        vm.config().policy.len()
    )
}

/// Blocks SIGHUP on this thread (and so on every thread started later)
/// and returns a signalfd that reads it.
fn sighup_fd() -> Result<std::os::fd::OwnedFd, DaemonError> {
    use std::os::fd::FromRawFd;
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid storage for a signal set.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; SIGHUP is a valid signal.
    unsafe { libc::sigaddset(&mut set, libc::SIGHUP) };
    // SAFETY: `set` is initialised; no old mask is asked for. The change
    // affects only the calling thread and those it starts.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(DaemonError::Setup(std::io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: `set` is a valid, initialised signal set.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(DaemonError::Setup(std::io::Error::last_os_error()));
    }
    // SAFETY: signalfd just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Forwards each SIGHUP read from `fd` to the manager as a reload.
fn spawn_sighup_thread(
    fd: std::os::fd::OwnedFd,
    requests: Sender<Reload>,
    filter: Filter,
) -> Result<(), DaemonError> {
    use std::io::Read;
    std::thread::Builder::new()
        .name("kt-sighup".into())
        .spawn(move || {
            if let Err(e) = filter.install() {
                log::error!("SIGHUP thread: {e}; SIGHUP will not reload");
                return;
            }
            let mut file = std::fs::File::from(fd);
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            loop {
                match file.read(&mut info) {
                    Ok(n) if n == info.len() => {
                        log::info!("SIGHUP: reloading");
                        if requests.send(Reload { reply: None }).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::error!("SIGHUP signalfd: {e}; SIGHUP will not reload");
                        return;
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(DaemonError::Setup)
}

/// Runs the daemon until a fatal error.
pub fn run(config: Config) -> Result<(), DaemonError> {
    crate::fdlimit::ensure_all(
        config
            .vms
            .iter()
            .map(|v| (v.device.max_channels, v.device.max_queue_pairs)),
    )?;
    let hup = sighup_fd()?;
    // Only a daemon that can add VMs keeps bind/unlink, on this thread.
    let manager_role = match config.source {
        Source::Flags => Role::Worker,
        Source::File { .. } => Role::Manager,
    };
    let worker_filter = Filter::new(config.seccomp, Role::Worker)?;
    let manager_filter = Filter::new(config.seccomp, manager_role)?;
    // Every path is checked before any is bound, so a daemon refused on
    // one of them leaves nothing behind on the others.
    for path in config
        .vms
        .iter()
        .flat_map(VmConfig::paths)
        .chain(config.control.as_ref())
    {
        crate::sockpath::claim_socket_path(path)?;
    }
    let registry: Registry = Arc::default();
    let (requests, incoming) = mpsc::channel();
    let mut manager = Manager {
        source: config.source.clone(),
        control: config.control.clone(),
        vms: Vec::new(),
        registry: registry.clone(),
        worker_filter: worker_filter.clone(),
    };
    let ready = Arc::new(Ready::default());
    if let Some(path) = &config.control {
        let handler = Arc::new(ControlHandler {
            registry: registry.clone(),
            requests: requests.clone(),
            ready: ready.clone(),
        });
        crate::control::spawn_server(path, handler, worker_filter.clone())?;
    }
    for cfg in config.vms {
        let vm = manager.start_vm(cfg)?;
        manager.vms.push(vm);
    }
    manager.publish();
    ready.set();
    if manager.vms.is_empty() {
        log::info!("no VMs configured yet: add them to the config file and reload");
    }
    // The manager's loop ends only when every sender is gone: keep one.
    let _keep = requests.clone();
    spawn_sighup_thread(hup, requests, worker_filter)?;
    // Every socket is bound and every thread runs under its own filter:
    // from here on this thread only reloads.
    manager_filter.install()?;
    log::debug!("seccomp filter: {:?}", config.seccomp);
    manager.serve(&incoming);
    Ok(())
}
