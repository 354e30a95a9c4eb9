//! kt-vmm's vhost-user frontend against a real vhost-user backend (the fill
//! test backend), without KVM: the virtio-mmio register handshake hands the
//! queue to the backend (features, SET_MEM_TABLE with the memfd, vring
//! addresses, kick and call eventfds); a kick makes the backend fill a
//! guest buffer and raise the call eventfd, exactly the path KVM's
//! ioeventfd and irqfd take in a VM; the backend request channel is set up
//! and a config change shows in InterruptStatus/ConfigGeneration.

#[path = "support/fill_backend.rs"]
mod fill_backend;
#[path = "support/mmio_ring.rs"]
mod mmio_ring;

use mmio_ring::{rd, set_u64, wait_for, wr, AVAIL, BUF, BUF_LEN, DESC, USED, VIRTQ_DESC_F_WRITE};

use std::path::PathBuf;

use kt_vmm::config::VhostUserSpec;
use kt_vmm::devices::bus::BusDevice;
use kt_vmm::memory;
use kt_vmm::virtio::deadline::DEFAULT_TIMEOUT;
use kt_vmm::virtio::mmio::{reg, status, MmioTransport, INT_CONFIG, INT_VRING, VIRTIO_F_VERSION_1};
use kt_vmm::virtio::vhost_user::VhostUserDevice;
use vhost::vhost_user::VhostUserFrontendReqHandler;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

#[test]
fn kick_reaches_backend_and_call_comes_back() {
    let dir = std::env::temp_dir().join(format!("kt-vmm-vu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("fill.sock");
    let sock2 = socket.clone();
    let backend = std::thread::spawn(move || {
        fill_backend::serve(&sock2, 2, fill_backend::Options::default())
    });
    wait_for("backend socket", || socket.exists());

    let spec = VhostUserSpec {
        socket: socket.clone(),
        virtio_id: 4,
        queues: 2,
        queue_size: 16,
        config_size: 8,
    };
    let mut dev = VhostUserDevice::connect(&spec, DEFAULT_TIMEOUT).expect("connect");
    let mem = memory::create(16 << 20).unwrap();
    dev.attach(mem.clone()).unwrap();
    let kick: EventFd = dev.kick_fds()[0].try_clone().unwrap();
    let call: EventFd = dev.call_fds()[0].try_clone().unwrap();
    let mut t = MmioTransport::new(dev);

    assert_eq!(rd(&mut t, reg::DEVICE_ID), 4);
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    let high = rd(&mut t, reg::DEVICE_FEATURES);
    assert_eq!(high, 1, "VERSION_1 offered");
    wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        rd(&mut t, reg::DEVICE_FEATURES) & (1 << 30),
        0,
        "protocol bit hidden"
    );
    let mut cfg = [0u8; 4];
    t.read(reg::CONFIG + 2, &mut cfg);
    assert_eq!(cfg, [2, 3, 4, 5], "config space comes from GET_CONFIG");
    let mut beyond = [9u8; 4];
    t.read(reg::CONFIG + 6, &mut beyond);
    assert_eq!(beyond, [0; 4], "reads past config-size are zero");

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
    assert_ne!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    wr(&mut t, reg::QUEUE_SEL, 0);
    wr(&mut t, reg::QUEUE_NUM, 16);
    set_u64(&mut t, reg::QUEUE_DESC_LOW, DESC);
    set_u64(&mut t, reg::QUEUE_DRIVER_LOW, AVAIL);
    set_u64(&mut t, reg::QUEUE_DEVICE_LOW, USED);
    wr(&mut t, reg::QUEUE_READY, 1);
    wr(&mut t, reg::STATUS, 0xf);
    assert_eq!(
        rd(&mut t, reg::STATUS) & status::NEEDS_RESET,
        0,
        "activation failed"
    );

    // One writable descriptor, published in the available ring.
    mem.write_obj(BUF, GuestAddress(DESC)).unwrap();
    mem.write_obj(BUF_LEN, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(VIRTQ_DESC_F_WRITE, GuestAddress(DESC + 12))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    kick.write(1).unwrap();

    wait_for("the call eventfd", || call.read().is_ok());
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, 1);
    let id: u32 = mem.read_obj(GuestAddress(USED + 4)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
    assert_eq!((id, len), (0, BUF_LEN));
    let mut buf = vec![0u8; BUF_LEN as usize];
    mem.read_slice(&mut buf, GuestAddress(BUF)).unwrap();
    assert!(buf.iter().all(|b| *b == fill_backend::PATTERN));

    // The backend request channel was set up (SET_BACKEND_REQ_FD); a
    // config change (what its CONFIG_CHANGE_MSG handler does) shows in
    // InterruptStatus until acknowledged and moves ConfigGeneration.
    assert!(t.backend().backend_request_fd().is_some());
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 0);
    t.backend()
        .config_events()
        .handle_config_change()
        .expect("config change");
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 1);
    wr(&mut t, reg::INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);

    // Driver reset stops the ring; closing the frontend ends the backend.
    wr(&mut t, reg::STATUS, 0);
    drop(t);
    backend.join().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
