//! Unit tests of the device engine, driven through `MockSplitQueue`.

use super::*;
use crate::policy::Policy;
use kt_proto::consts::DEFAULT_RX_BUF_SIZE;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

mod discovery;
mod listening;
mod pairs;
mod rx_share;
mod zero_copy;

const QSIZE: u16 = 512;
const DATA: u64 = 0x40_0000;

/// A directory for the rig's service socket, removed on drop.
struct TestDir(std::path::PathBuf);

impl TestDir {
    fn new() -> TestDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kt-dev-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Rig<'a> {
    mem: &'a Mem,
    vq: [MockSplitQueue<'a, Mem>; 3],
    q: [Queue; 3],
    off: [u16; 3],
    used_seen: [u16; 3],
    data_at: u64,
    dev: Device,
    stats: Arc<Stats>,
    listener: SeqListener,
    _dir: TestDir,
}

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

impl<'a> Rig<'a> {
    fn new(mem: &'a Mem) -> Rig<'a> {
        Rig::with_window(mem, 4 * (8192 + 32))
    }

    fn with_window(mem: &'a Mem, window: u32) -> Rig<'a> {
        let dir = TestDir::new();
        let path = dir.join("svc.sock");
        let listener = SeqListener::bind(&path).unwrap();
        let text = format!(
            "[[service]]\nname = \"svc\"\nsocket = \"{}\"\n",
            path.display()
        );
        let policy = Policy::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let stats = Arc::new(Stats::new(1));
        let params = Params {
            vm_name: "t".into(),
            config: DeviceConfig {
                max_msg_size: 8192,
                max_channels: 8,
                rx_buf_size: DEFAULT_RX_BUF_SIZE,
                guest_id: 1,
                max_queue_pairs: 1,
            },
            channel_buffer: window,
            handshake_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            rx_share: crate::config::DEFAULT_RX_SHARE as u16,
        };
        let mut dev = Device::new(
            params,
            Arc::new(crate::policy::PolicyCell::new(policy).unwrap()),
            stats.clone(),
            None,
        )
        .unwrap();
        for i in 0..3 {
            dev.queue_started(i, 0);
        }
        let vq = [
            MockSplitQueue::create(mem, GuestAddress(0x1000), QSIZE),
            MockSplitQueue::create(mem, GuestAddress(0x10_0000), QSIZE),
            MockSplitQueue::create(mem, GuestAddress(0x20_0000), QSIZE),
        ];
        let q = [
            vq[0].create_queue().unwrap(),
            vq[1].create_queue().unwrap(),
            vq[2].create_queue().unwrap(),
        ];
        Rig {
            mem,
            vq,
            q,
            off: [0; 3],
            used_seen: [0; 3],
            data_at: DATA,
            dev,
            stats,
            listener,
            _dir: dir,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.data_at;
        self.data_at += u64::from(len).max(16) + 16;
        a
    }

    fn add(&mut self, q: usize, descs: &[(u64, u32, u32)]) {
        let n = descs.len() as u16;
        let base = self.off[q];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, (a, l, f))| {
                let last = i + 1 == descs.len();
                let flags = if last { *f } else { *f | 1 };
                let next = if last { 0 } else { base + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(*a, *l, flags as u16, next))
            })
            .collect();
        self.vq[q].add_desc_chains(&raw, base).unwrap();
        self.off[q] = (base + n) % QSIZE;
    }

    fn send(&mut self, hdr: &Header, payload: &[u8]) {
        let a = self.alloc(32 + payload.len() as u32);
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(a))
            .unwrap();
        self.mem.write_slice(payload, GuestAddress(a + 32)).unwrap();
        self.add(1, &[(a, 32 + payload.len() as u32, 0)]);
    }

    fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let a = self.alloc(size);
            self.add(0, &[(a, size, VRING_DESC_F_WRITE)]);
        }
    }

    /// One pass, as the worker runs it for one event (`host`: the
    /// host epoll fd's event; otherwise a queue kick).
    fn pass(&mut self, with_rx: bool, host: bool) -> Notify {
        let [rx, tx, ev] = &mut self.q;
        let rings = Rings {
            rx: with_rx.then_some(rx),
            tx: Some(tx),
            ev: Some(ev),
        };
        self.dev.run(rings, self.mem, host)
    }

    /// Passes until no budget stops one, as the worker's event loop
    /// does when the wake-up eventfd fires.
    fn run(&mut self, with_rx: bool) -> Notify {
        let mut n = Notify::default();
        loop {
            let p = self.pass(with_rx, true);
            n.rx |= p.rx;
            n.tx |= p.tx;
            n.ev |= p.ev;
            if !self.dev.more_work() {
                return n;
            }
        }
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(self.vq[q].used_addr().unchecked_add(2))
            .unwrap()
    }

    /// Used rx/event entries not yet looked at: (header, payload).
    fn take_used(&mut self, q: usize) -> Vec<(Header, Vec<u8>)> {
        let mut out = vec![];
        let end = self.used_idx(q);
        while self.used_seen[q] != end {
            let at = self.vq[q]
                .used_addr()
                .unchecked_add(4 + 8 * u64::from(self.used_seen[q] % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
            let d = self.vq[q].desc_table().load(id as u16).unwrap();
            let d = SplitDescriptor::from(d);
            if len == 0 {
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, d.addr()).unwrap();
            out.push((Header::decode(&buf).unwrap(), buf[32..].to_vec()));
        }
        out
    }

    fn open(&mut self, id: u32, buf_alloc: u32) -> SeqPacket {
        let mut h = Header::with_payload(MsgType::Open, id, 3);
        h.buf_alloc = buf_alloc;
        self.send(&h, b"svc");
        self.run(true);
        let host = self.listener.accept_blocking().unwrap();
        let got = self.take_used(0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.msg_type, MsgType::OpenOk);
        assert_eq!(got[0].0.buf_alloc, self.dev.params.channel_buffer);
        host
    }
}

use vm_memory::Address;

#[test]
fn data_both_ways_with_fragments() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    let host = r.open(1, 1 << 20);
    let mut h = Header::with_payload(MsgType::Data, 1, 5);
    h.buf_alloc = 1 << 20;
    r.send(&h, b"hello");
    r.run(true);
    let mut buf = [0u8; 64];
    assert_eq!(host.recv(&mut buf).unwrap(), Recv::Msg(5));
    assert_eq!(&buf[..5], b"hello");
    // 600 bytes into 256-byte buffers: 224 + 224 + 152. With EVENT_IDX
    // and used_event at the next entry, the batch must be signalled
    // even though later passes of the same run add nothing.
    r.q[0].set_event_idx(true);
    let used_event = r.vq[0].avail_addr().unchecked_add(4 + 2 * u64::from(QSIZE));
    r.mem.write_obj(r.used_idx(0), used_event).unwrap();
    let msg: Vec<u8> = (0..600).map(|i| i as u8).collect();
    host.send(&msg).unwrap();
    host.send(b"").unwrap();
    assert!(r.run(true).rx, "rx batch not signalled");
    let got = r.take_used(0);
    assert_eq!(got.len(), 4, "{got:?}");
    let lens: Vec<u32> = got.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, [224, 224, 152, 0]);
    assert!(got[0].0.more() && got[1].0.more() && !got[2].0.more());
    assert!(got[..3].iter().all(|(h, _)| h.msg_len == 600 && h.seq == 0));
    assert_eq!(got[3].0.seq, 1);
    let joined: Vec<u8> = got[..3].iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(joined, msg);
    // Host hangs up: CLOSE reaches the guest.
    drop(host);
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(got[0].0.msg_type, MsgType::Close);
    assert_eq!(r.stats.snapshot().device.msgs_to_guest, 2);
}

#[test]
fn host_input_waits_for_credit() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    // Window for exactly one 60-byte message.
    let host = r.open(2, kt_proto::credit::cost(60) + 10);
    host.send(&[1u8; 60]).unwrap();
    host.send(&[2u8; 60]).unwrap();
    r.run(true);
    let got = r.take_used(0);
    let types: Vec<MsgType> = got.iter().map(|(h, _)| h.msg_type).collect();
    assert_eq!(types, [MsgType::Data, MsgType::CreditRequest]);
    assert_eq!(r.stats.snapshot().device.credit_stalls, 1);
    r.run(true);
    assert!(r.take_used(0).is_empty(), "sent beyond credit");
    // Too little credit for the waiting message: no new stall, no new
    // CREDIT_REQUEST.
    let mut u = Header::new(MsgType::CreditUpdate, 2);
    u.buf_alloc = kt_proto::credit::cost(60) + 10;
    u.fwd_cnt = 20;
    r.send(&u, &[]);
    r.run(true);
    assert!(r.take_used(0).is_empty(), "sent beyond credit");
    assert_eq!(r.stats.snapshot().device.credit_stalls, 1);
    let mut u = Header::new(MsgType::CreditUpdate, 2);
    u.buf_alloc = kt_proto::credit::cost(60) + 10;
    u.fwd_cnt = kt_proto::credit::cost(60);
    r.send(&u, &[]);
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, [2u8; 60]);
}

#[test]
fn hang_up_is_seen_while_input_waits_for_credit() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    let host = r.open(2, kt_proto::credit::cost(60) + 10);
    host.send(&[1u8; 60]).unwrap();
    host.send(&[2u8; 60]).unwrap();
    r.run(true);
    let types: Vec<MsgType> = r.take_used(0).iter().map(|(h, _)| h.msg_type).collect();
    assert_eq!(types, [MsgType::Data, MsgType::CreditRequest]);
    // Paused for credit: not polled for input, still for hang-up.
    let ch = &r.dev.channels[&2];
    assert!(ch.stalled);
    assert_eq!(ch.registered, libc::EPOLLRDHUP as u32);
    drop(host);
    r.run(true);
    assert!(r.dev.channels[&2].hup, "hang-up not seen while paused");
    assert!(
        r.take_used(0).is_empty(),
        "CLOSE before the waiting message"
    );
    // Credit back: the waiting message, then CLOSE.
    let mut u = Header::new(MsgType::CreditUpdate, 2);
    u.buf_alloc = kt_proto::credit::cost(60) + 10;
    u.fwd_cnt = kt_proto::credit::cost(60);
    r.send(&u, &[]);
    r.run(true);
    let got = r.take_used(0);
    let types: Vec<MsgType> = got.iter().map(|(h, _)| h.msg_type).collect();
    assert_eq!(types, [MsgType::Data, MsgType::Close]);
    assert_eq!(got[0].1, [2u8; 60]);
    assert_eq!(got[1].0.arg, 0);
}

#[test]
fn guest_close_is_answered_after_pending_data_reaches_the_host() {
    let m = mem();
    let mut r = Rig::with_window(&m, 1 << 20);
    r.post_rx(16, 256);
    let host = r.open(4, 1 << 20);
    // More messages than the host socket queues: the rest wait.
    let body = |seq: u32| {
        let mut b = vec![seq as u8; 4000];
        b[..4].copy_from_slice(&seq.to_le_bytes());
        b
    };
    for seq in 0..30u32 {
        let mut h = Header::with_payload(MsgType::Data, 4, 4000);
        h.seq = seq;
        h.buf_alloc = 1 << 20;
        r.send(&h, &body(seq));
    }
    r.send(&Header::new(MsgType::Close, 4), &[]);
    r.run(true);
    assert!(r.dev.pending_bytes(4) > 0, "host socket took everything");
    assert!(
        r.take_used(0).is_empty(),
        "CLOSE answered before the data was delivered"
    );
    let mut buf = [0u8; 8192];
    for seq in 0..30u32 {
        assert_eq!(host.recv(&mut buf).unwrap(), Recv::Msg(4000));
        assert_eq!(buf[..4000], body(seq));
        r.run(true);
    }
    let got = r.take_used(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.msg_type, MsgType::Close);
    assert_eq!(r.dev.channel_count(), 0);
    assert_eq!(host.recv(&mut buf).unwrap(), Recv::Eof);
}

/// Whether the device's host epoll fd is readable (the worker will
/// run a `HOST_EVENT` pass).
fn host_fd_readable(dev: &Device) -> bool {
    let mut p = libc::pollfd {
        fd: dev.epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

#[test]
fn a_full_tx_ring_is_taken_in_budgeted_passes_and_host_input_gets_in() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.post_rx(16, 256);
    let host = r.open(1, 1 << 20);
    assert!(!r.dev.more_work() && !host_fd_readable(&r.dev));
    // (MockSplitQueue keeps fewer than 256 chains outstanding intact.)
    let n = 200u16;
    let mut h = Header::new(MsgType::CreditRequest, 1);
    h.buf_alloc = 1 << 20;
    for _ in 0..n {
        r.send(&h, &[]);
    }
    host.send(b"from host").unwrap();
    // The kick's pass takes one budget of chains and yields, with the
    // wake-up armed (and the host message waiting in epoll).
    r.pass(true, false);
    assert_eq!(usize::from(r.used_idx(1)), 1 + TX_BUDGET);
    assert!(r.dev.more_work());
    assert!(host_fd_readable(&r.dev));
    assert!(
        r.take_used(0)
            .iter()
            .all(|(h, _)| h.msg_type != MsgType::Data),
        "host data before any host event pass"
    );
    // The host-event pass serves the host socket first, then the rest.
    r.pass(true, true);
    let got = r.take_used(0);
    assert!(
        got.iter()
            .any(|(h, p)| h.msg_type == MsgType::Data && p.as_slice() == b"from host"),
        "{got:?}"
    );
    r.run(true);
    assert_eq!(r.used_idx(1), 1 + n, "tx chains lost");
    assert!(!r.dev.more_work());
    assert!(!host_fd_readable(&r.dev), "wake-up left armed");
    assert_eq!(r.stats.snapshot().device.malformed, 0);
}

#[test]
fn rx_delivery_is_budgeted_too() {
    let m = mem();
    let mut r = Rig::new(&m);
    // 200 answers (CLOSE for unknown channels) queue up without rx
    // buffers, then 200 buffers arrive.
    for i in 0..200u32 {
        r.send(&Header::new(MsgType::CreditUpdate, 1000 + i), &[]);
    }
    r.run(false);
    assert_eq!(r.dev.ctrl_len(), 200);
    r.post_rx(200, 256);
    r.pass(true, true);
    assert_eq!(r.take_used(0).len(), RX_BUDGET);
    assert!(r.dev.more_work() && host_fd_readable(&r.dev));
    r.run(true);
    assert_eq!(RX_BUDGET + r.take_used(0).len(), 200);
    assert_eq!(r.dev.ctrl_len(), 0);
    assert!(!r.dev.more_work() && !host_fd_readable(&r.dev));
}

#[test]
fn tx_stops_when_control_queue_is_full() {
    let m = mem();
    let mut r = Rig::new(&m);
    for i in 0..300u32 {
        let mut h = Header::with_payload(MsgType::Data, 1000 + i, 1);
        h.seq = 0;
        r.send(&h, b"x");
    }
    r.run(false);
    assert_eq!(r.dev.ctrl_len(), CTRL_LIMIT);
    assert_eq!(r.used_idx(1), CTRL_LIMIT as u16);
    // rx buffers arrive: every answer is CLOSE CONNRESET, all tx done.
    r.post_rx(400, 256);
    r.run(true);
    let got = r.take_used(0);
    assert_eq!(got.len(), 300);
    assert!(got
        .iter()
        .all(|(h, _)| h.msg_type == MsgType::Close && h.arg == ErrorCode::ConnReset as u32));
    assert_eq!(r.used_idx(1), 300);
    assert_eq!(r.stats.snapshot().device.malformed, 300);
}

#[test]
fn small_rx_buffers_are_skipped_and_reset_is_sent() {
    let m = mem();
    let mut r = Rig::new(&m);
    r.dev.deactivate();
    r.dev.queue_started(0, 0);
    r.dev.queue_started(1, 0);
    r.dev.queue_started(2, 9);
    assert!(r.dev.is_active());
    r.post_rx(1, 64);
    r.add(0, &[(0x7fff_0000_0000, 4096, VRING_DESC_F_WRITE)]);
    r.post_rx(1, 256);
    let ev = r.alloc(32);
    r.add(2, &[(ev, 32, VRING_DESC_F_WRITE)]);
    let mut h = Header::with_payload(MsgType::Open, 3, 4);
    h.buf_alloc = 1 << 16;
    r.send(&h, b"nope");
    let n = r.run(true);
    assert!(n.ev && n.rx && n.tx);
    let got = r.take_used(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.msg_type, MsgType::OpenErr);
    assert_eq!(got[0].0.arg, ErrorCode::NoEnt as u32);
    let ev = r.take_used(2);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].0.msg_type, MsgType::Reset);
    let s = r.stats.snapshot();
    assert_eq!((s.device.malformed, s.resets, s.open_refused), (2, 1, 1));
    // Both bad buffers went back unused, in order, before the good one.
    assert_eq!(r.used_idx(0), 3);
}
