//! kt-vmm's vhost-user frontend against a backend that stops answering,
//! without KVM: a fake backend (hand-written vhost-user, below) accepts the
//! connection, answers the handshake or nothing at all, then reads every
//! request and answers none. Each frontend call must come back within the
//! request timeout with an error, the device must report DEVICE_NEEDS_RESET
//! (with a config-change interrupt for a running driver), and meanwhile
//! the device's other registers, its lock (which the main thread's backend
//! watch takes) and another device on the same bus must stay usable.

#[path = "support/mmio_ring.rs"]
mod mmio_ring;

use mmio_ring::{rd, set_u64, wr, AVAIL, DESC, USED};

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kt_vmm::config::VhostUserSpec;
use kt_vmm::devices::bus::{Bus, BusDevice};
use kt_vmm::memory;
use kt_vmm::virtio::mmio::{reg, status, MmioTransport, INT_CONFIG, VIRTIO_F_VERSION_1};
use kt_vmm::virtio::vhost_user::{Error, VhostUserDevice};
use kt_vmm::virtio::vhost_user_mmio::VhostUserMmio;

/// The request timeout these tests give the frontend.
const TIMEOUT: Duration = Duration::from_millis(1000);
/// A call that takes longer than this is hung, not merely slow.
const HUNG: Duration = Duration::from_secs(10);

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
/// VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES.
const FEATURES: u64 = (1 << 32) | (1 << 30);
/// VHOST_USER_PROTOCOL_F_CONFIG.
const PROTOCOL_CONFIG: u64 = 1 << 9;

/// What the fake backend answers before it stalls.
#[derive(Clone, Copy)]
enum Fake {
    /// Nothing at all.
    Silent,
    /// GET_FEATURES and GET_PROTOCOL_FEATURES (CONFIG only), then nothing.
    Handshake,
}

fn read_msg(s: &mut UnixStream) -> Option<u32> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let code = u32::from_le_bytes(hdr[0..4].try_into().ok()?);
    let size = u32::from_le_bytes(hdr[8..12].try_into().ok()?);
    let mut body = vec![0u8; size as usize];
    s.read_exact(&mut body).ok()?;
    Some(code)
}

fn reply_u64(s: &mut UnixStream, code: u32, v: u64) {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, reply
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&v.to_le_bytes());
    s.write_all(&m).expect("fake backend reply");
}

/// Serves one connection on `socket`; returns the request codes it read
/// (answered or not) once the frontend closes or shuts the socket down,
/// and reports each one it leaves unanswered on the receiver as it comes.
fn fake_backend(socket: &Path, mode: Fake) -> (JoinHandle<Vec<u32>>, mpsc::Receiver<u32>) {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).expect("bind");
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut seen = Vec::new();
        let mut handshake_done = matches!(mode, Fake::Silent);
        while let Some(code) = read_msg(&mut s) {
            seen.push(code);
            if handshake_done {
                let _ = tx.send(code);
                continue;
            }
            match code {
                GET_FEATURES => reply_u64(&mut s, code, FEATURES),
                GET_PROTOCOL_FEATURES => reply_u64(&mut s, code, PROTOCOL_CONFIG),
                SET_PROTOCOL_FEATURES => handshake_done = true,
                _ => {}
            }
        }
        seen
    });
    (handle, rx)
}

/// A socket path in a directory of its own (tests run in parallel).
fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kt-vmm-stuck-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("backend.sock")
}

fn cleanup(socket: &Path) {
    if let Some(dir) = socket.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn spec(socket: &Path) -> VhostUserSpec {
    VhostUserSpec {
        socket: socket.to_path_buf(),
        virtio_id: 60,
        queues: 1,
        queue_size: 16,
        config_size: 8,
    }
}

/// Runs `f` on its own thread; fails the test if it takes `HUNG`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let out = f();
        let _ = tx.send((out, start.elapsed()));
    });
    rx.recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("{what} hung (no answer within {HUNG:?})"))
}

/// A running driver: features negotiated, queue 0 ready, DRIVER_OK.
fn start_driver(t: &mut MmioTransport<VhostUserDevice>) {
    wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, (VIRTIO_F_VERSION_1 >> 32) as u32);
    wr(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    wr(t, reg::QUEUE_SEL, 0);
    wr(t, reg::QUEUE_NUM, 16);
    set_u64(t, reg::QUEUE_DESC_LOW, DESC);
    set_u64(t, reg::QUEUE_DRIVER_LOW, AVAIL);
    set_u64(t, reg::QUEUE_DEVICE_LOW, USED);
    wr(t, reg::QUEUE_READY, 1);
    wr(t, reg::STATUS, 0xf);
}

/// Whether the socket `fd` is shut down (what the backend watch sees).
fn hung_up(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
}

/// Another device on the bus: answers reads with 0x5a, records writes.
#[derive(Default)]
struct Other {
    writes: usize,
}

impl BusDevice for Other {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.writes += 1;
    }
}

const STUCK: u64 = 0x1000;
const OTHER: u64 = 0x2000;

#[test]
fn handshake_with_a_silent_backend_times_out() {
    let socket = temp_socket("silent.sock");
    let (backend, _) = fake_backend(&socket, Fake::Silent);
    let s = spec(&socket);
    let (r, took) = bounded("connect", move || VhostUserDevice::connect(&s, TIMEOUT));
    let e = match r {
        Err(e @ Error::Timeout(..)) => e,
        other => panic!("expected a GET_FEATURES timeout, got {other:?}"),
    };
    assert!(took >= TIMEOUT && took < TIMEOUT * 5, "took {took:?}");
    let msg = kt_vmm::error_chain(&e);
    assert!(
        msg.starts_with(&format!(
            "vhost-user backend {}: no answer to GET_FEATURES within {} ms",
            socket.display(),
            TIMEOUT.as_millis()
        )),
        "{msg}"
    );
    let seen = backend.join().expect("fake backend");
    assert_eq!(seen, [3, GET_FEATURES], "SET_OWNER, GET_FEATURES");
    cleanup(&socket);
}

#[test]
fn stalled_config_read_fails_the_device_not_the_bus() {
    let socket = temp_socket("config.sock");
    let (backend, unanswered) = fake_backend(&socket, Fake::Handshake);
    let mut dev = VhostUserDevice::connect(&spec(&socket), TIMEOUT).expect("connect");
    dev.attach(memory::create(16 << 20).expect("memory"))
        .expect("attach");
    let socket_fd = dev.socket_fd();
    let mut t = MmioTransport::new(dev);
    // No request the start sends needs an answer (no REPLY_ACK).
    start_driver(&mut t);
    assert_eq!(rd(&mut t, reg::STATUS), 0xf, "driver running");
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 0);

    let stuck = Arc::new(Mutex::new(t));
    let other = Arc::new(Mutex::new(Other::default()));
    let mut bus = Bus::new();
    bus.insert_self_locking(STUCK, 0x1000, Arc::new(VhostUserMmio::new(stuck.clone())))
        .expect("insert");
    bus.insert(OTHER, 0x1000, other.clone()).expect("insert");
    let bus = Arc::new(bus);

    // A vCPU reads config space: GET_CONFIG is never answered.
    let b = bus.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut data = [0xffu8; 4];
        b.read(STUCK + reg::CONFIG, &mut data);
        let _ = tx.send((data, start.elapsed()));
    });
    // Once the backend holds the unanswered GET_CONFIG, another vCPU
    // uses the same device's registers and the other device on the bus,
    // and the device's lock is free.
    loop {
        match unanswered.recv_timeout(HUNG) {
            Ok(24) => break,
            Ok(_) => {}
            Err(e) => panic!("the backend never got GET_CONFIG: {e}"),
        }
    }
    let start = Instant::now();
    let mut d = [0u8; 4];
    assert!(bus.read(STUCK + reg::STATUS, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0xf, "Status readable meanwhile");
    assert!(bus.read(STUCK + reg::INTERRUPT_STATUS, &mut d));
    assert!(stuck.try_lock().is_ok(), "the device's lock is free");
    assert!(bus.read(OTHER, &mut d));
    assert!(bus.write(OTHER + 4, &[1, 2, 3, 4]));
    let other_took = start.elapsed();
    assert_eq!(d, [0x5a; 4]);
    assert!(
        other_took < TIMEOUT / 2,
        "the other registers and device waited {other_took:?}"
    );
    assert!(
        rx.try_recv().is_err(),
        "the config read should still be waiting for the backend"
    );
    let (data, took) = rx
        .recv_timeout(HUNG)
        .unwrap_or_else(|_| panic!("config read hung (no answer within {HUNG:?})"));
    assert!(took < TIMEOUT * 5, "config read took {took:?}");
    assert_eq!(data, [0; 4], "served from the (empty) cache");
    assert_eq!(other.lock().expect("other").writes, 1);

    // The device failed: DEVICE_NEEDS_RESET, and the running driver got a
    // configuration change notification.
    let mut t = stuck.lock().expect("device");
    assert_eq!(rd(&mut t, reg::STATUS), 0xf | status::NEEDS_RESET);
    assert_ne!(rd(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 1);
    assert!(!t.backend().is_connected());
    assert!(hung_up(socket_fd), "socket shut down: the watch reconnects");

    // Disconnected now: config reads no longer wait for the backend.
    let start = Instant::now();
    let mut data = [0xffu8; 4];
    t.read(reg::CONFIG, &mut data);
    assert!(start.elapsed() < TIMEOUT / 3);
    assert_eq!(data, [0; 4]);
    // A driver reset clears the status.
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    drop(t);
    drop(stuck);
    let seen = backend.join().expect("fake backend");
    assert_eq!(seen.last(), Some(&24), "GET_CONFIG was the last request");
    cleanup(&socket);
}

#[test]
fn stalled_driver_reset_returns_in_time() {
    let socket = temp_socket("reset.sock");
    let (backend, _) = fake_backend(&socket, Fake::Handshake);
    let mut dev = VhostUserDevice::connect(&spec(&socket), TIMEOUT).expect("connect");
    dev.attach(memory::create(16 << 20).expect("memory"))
        .expect("attach");
    let mut t = MmioTransport::new(dev);
    start_driver(&mut t);
    assert_eq!(rd(&mut t, reg::STATUS), 0xf);
    // Reset: SET_VRING_ENABLE(false), then GET_VRING_BASE, never answered.
    let (mut t, took) = bounded("driver reset", move || {
        wr(&mut t, reg::STATUS, 0);
        t
    });
    assert!(took >= TIMEOUT && took < TIMEOUT * 5, "reset took {took:?}");
    assert_eq!(rd(&mut t, reg::STATUS), 0, "reset completed");
    assert!(!t.backend().is_connected());
    drop(t);
    let seen = backend.join().expect("fake backend");
    assert_eq!(
        seen.last(),
        Some(&11),
        "GET_VRING_BASE was the last request"
    );
    cleanup(&socket);
}
