//! A tiny vhost-user backend for testing kt-vmm's frontend: every buffer the
//! driver posts on any queue is filled with `PATTERN` and returned (so with
//! virtio ID 4 the guest's virtio-rng driver reads it as entropy); config
//! space byte `i` reads as `i`, or as byte `i` of [`Options::config`] (0
//! past its end). With [`Options::realtime`] the thread that fills the
//! queues runs under `SCHED_FIFO`, so it answers every kick at once and
//! never falls behind a guest that drains its rings. Used by the frontend
//! integration test, by the `vhost-user-fill` example that runs inside the
//! KVM runner VM, and by the guest driver's `flood` test
//! (guest-driver/tests/run.sh).

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Byte every returned buffer is filled with.
pub const PATTERN: u8 = 0x5a;
/// VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES.
const FEATURES: u64 = (1 << 32) | (1 << 30);

/// What the backend serves besides the filled buffers.
#[derive(Debug, Default)]
pub struct Options {
    /// Config space contents (`None`: byte `i` reads as `i`).
    pub config: Option<Vec<u8>>,
    /// Fill from a `SCHED_FIFO` thread (needs `CAP_SYS_NICE`; without it a
    /// warning is printed and the thread keeps its policy).
    pub realtime: bool,
}

/// The backend state.
#[derive(Debug)]
pub struct FillBackend {
    queues: usize,
    opts: Options,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Whether the filling thread's policy has been set (or tried).
    realtime_tried: bool,
}

impl FillBackend {
    /// A backend with `queues` queues.
    pub fn new(queues: usize, opts: Options) -> Self {
        Self {
            queues,
            opts,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            realtime_tried: false,
        }
    }

    /// Moves the calling thread (the vring worker) to `SCHED_FIFO`, once.
    fn go_realtime(&mut self) {
        if !self.opts.realtime || self.realtime_tried {
            return;
        }
        self.realtime_tried = true;
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: `param` is a valid sched_param that outlives the call;
        // pid 0 is the calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc == 0 {
            eprintln!("vhost-user-fill: filling from a SCHED_FIFO thread");
        } else {
            eprintln!(
                "vhost-user-fill: warning: SCHED_FIFO refused ({}); filling at normal priority",
                io::Error::last_os_error()
            );
        }
    }

    fn fill(&self, vring: &VringRwLock) -> io::Result<bool> {
        let mem = self.mem.memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(|e| io::Error::other(format!("queue: {e}")))?
            .collect();
        let any = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            let mut w = chain
                .writer(&mem)
                .map_err(|e| io::Error::other(format!("descriptor chain: {e}")))?;
            let n = w.available_bytes();
            w.write_all(&vec![PATTERN; n])?;
            vring
                .add_used(head, n as u32)
                .map_err(|e| io::Error::other(format!("used ring: {e}")))?;
        }
        Ok(any)
    }
}

impl VhostUserBackendMut for FillBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // BACKEND_REQ: the frontend sets up its request channel (this
        // backend never sends on it: vhost 0.18's `Backend` cannot send
        // CONFIG_CHANGE_MSG).
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        (offset..offset.saturating_add(size))
            .map(|i| match &self.opts.config {
                Some(c) => c.get(i as usize).copied().unwrap_or(0),
                None => i as u8,
            })
            .collect()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.go_realtime();
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Ok(());
        };
        if self.fill(vring)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// Serves one frontend connection on `socket` (blocking).
pub fn serve(socket: &Path, queues: usize, opts: Options) -> Result<(), String> {
    let backend = Arc::new(RwLock::new(FillBackend::new(queues, opts)));
    let mut daemon = VhostUserDaemon::new(
        "vhost-user-fill".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| format!("daemon: {e}"))?;
    let result = daemon.serve(socket).map_err(|e| format!("serve: {e}"));
    // Dropping the daemon joins its vring worker, which (vhost-user-backend
    // 0.24) can stay parked in epoll after the frontend hung up: leak it.
    std::mem::forget(daemon);
    result
}
