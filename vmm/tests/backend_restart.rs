//! kt-vmm's vhost-user frontend across a backend restart, without KVM: the
//! fill backend runs as a child process (the `vhost-user-fill` example),
//! returns one buffer, is killed; its socket hangs up, the device serves
//! config reads from its cache, a new backend starts on the same path, and
//! `reconnect` hands the ring over again at the used index: the next buffer
//! is filled exactly once (a base of 0 would make the new backend fill the
//! first buffer again, used index 3 instead of 2).
//!
//! No libtest harness (`harness = false`): the backend processes are this
//! same executable started again with `KT_FILL_SOCKET` set, so the test
//! needs nothing but itself. Without libtest, clippy does not see this as
//! test code, hence the allow below (as in the other test files).
#![allow(clippy::unwrap_used)]

#[path = "support/fill_backend.rs"]
mod fill_backend;
#[path = "support/mmio_ring.rs"]
mod mmio_ring;

use mmio_ring::{set_u64, wait_for, wr, AVAIL, BUF, BUF_LEN, DESC, USED, VIRTQ_DESC_F_WRITE};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kt_vmm::config::VhostUserSpec;
use kt_vmm::devices::bus::BusDevice;
use kt_vmm::memory::{self, GuestMemory};
use kt_vmm::virtio::deadline::DEFAULT_TIMEOUT;
use kt_vmm::virtio::mmio::{reg, status, MmioTransport, VIRTIO_F_VERSION_1};
use kt_vmm::virtio::vhost_user::VhostUserDevice;
use vm_memory::{Bytes, GuestAddress};

const PATTERN: u8 = fill_backend::PATTERN;
/// Set in a backend child: the socket it serves.
const CHILD_ENV: &str = "KT_FILL_SOCKET";

/// The backend process; killed when the test ends, pass or fail.
struct Backend(Child);

impl Backend {
    fn start(socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let me = std::env::current_exe().unwrap();
        let b = Backend(Command::new(me).env(CHILD_ENV, socket).spawn().unwrap());
        wait_for("backend socket", || socket.exists());
        b
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Publishes descriptor `i` (a writable buffer) as available entry `i`.
fn post(mem: &GuestMemory, i: u16) {
    let d = DESC + 16 * u64::from(i);
    let buf = BUF + u64::from(i) * u64::from(BUF_LEN);
    mem.write_obj(buf, GuestAddress(d)).unwrap();
    mem.write_obj(BUF_LEN, GuestAddress(d + 8)).unwrap();
    mem.write_obj(VIRTQ_DESC_F_WRITE, GuestAddress(d + 12))
        .unwrap();
    mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
        .unwrap();
    mem.write_obj(i + 1, GuestAddress(AVAIL + 2)).unwrap();
}

fn used_idx(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

fn hung_up(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

fn main() {
    if let Some(socket) = std::env::var_os(CHILD_ENV) {
        if let Err(e) = fill_backend::serve(Path::new(&socket), 1, fill_backend::Options::default())
        {
            eprintln!("fill backend: {e}");
            std::process::exit(1);
        }
        return;
    }
    rings_resume_at_the_used_index_after_a_backend_restart();
    println!("test rings_resume_at_the_used_index_after_a_backend_restart ... ok");
}

fn rings_resume_at_the_used_index_after_a_backend_restart() {
    let dir: PathBuf = std::env::temp_dir().join(format!("kt-vmm-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("fill.sock");
    let first = Backend::start(&socket);
    let spec = VhostUserSpec {
        socket: socket.clone(),
        virtio_id: 4,
        queues: 1,
        queue_size: 16,
        config_size: 8,
    };
    let mut dev = VhostUserDevice::connect(&spec, DEFAULT_TIMEOUT).expect("connect");
    let mem = memory::create(16 << 20).unwrap();
    dev.attach(mem.clone()).unwrap();
    let kick = dev.kick_fds()[0].try_clone().unwrap();
    let call = dev.call_fds()[0].try_clone().unwrap();
    let mut t = MmioTransport::new(dev);

    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(
        &mut t,
        reg::DRIVER_FEATURES,
        (VIRTIO_F_VERSION_1 >> 32) as u32,
    );
    wr(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    wr(&mut t, reg::QUEUE_SEL, 0);
    wr(&mut t, reg::QUEUE_NUM, 16);
    set_u64(&mut t, reg::QUEUE_DESC_LOW, DESC);
    set_u64(&mut t, reg::QUEUE_DRIVER_LOW, AVAIL);
    set_u64(&mut t, reg::QUEUE_DEVICE_LOW, USED);
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::STATUS, 0xf);
    assert_eq!(t.status() & status::NEEDS_RESET, 0, "activation failed");
    let mut cfg = [0u8; 4];
    t.read(reg::CONFIG + 2, &mut cfg);
    assert_eq!(cfg, [2, 3, 4, 5]);

    post(&mem, 0);
    kick.write(1).unwrap();
    wait_for("the first buffer", || {
        call.read().is_ok() && used_idx(&mem) == 1
    });

    // The backend dies: its socket hangs up; config reads keep the values.
    drop(first);
    let fd = t.backend().socket_fd();
    wait_for("the hang-up", || hung_up(fd));
    t.backend_mut().mark_disconnected();
    assert!(!t.backend().is_connected());
    let mut cfg = [0u8; 4];
    t.read(reg::CONFIG + 2, &mut cfg);
    assert_eq!(cfg, [2, 3, 4, 5], "cached config while the backend is away");
    assert!(t.backend_mut().reconnect().is_err(), "nobody listens yet");

    // The guest posts meanwhile; a new backend picks it up after reconnect.
    post(&mem, 1);
    kick.write(1).unwrap();
    let _second = Backend::start(&socket);
    t.backend_mut().reconnect().expect("reconnect");
    assert!(t.backend().is_connected());
    wait_for("the second buffer", || used_idx(&mem) >= 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(used_idx(&mem), 2, "a buffer was returned twice");
    let id: u32 = mem.read_obj(GuestAddress(USED + 4 + 8)).unwrap();
    assert_eq!(id, 1, "the new backend resumed at the second buffer");
    let mut buf = vec![0u8; BUF_LEN as usize];
    mem.read_slice(&mut buf, GuestAddress(BUF + u64::from(BUF_LEN)))
        .unwrap();
    assert!(buf.iter().all(|b| *b == PATTERN));
    std::fs::remove_dir_all(&dir).unwrap();
}
