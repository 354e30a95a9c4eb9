//! Protocol constants. Every value mirrors `proto/include/kerntransport.h`;
//! `tests/c_layout.rs` compiles the header and proves that they agree.

/// virtio device ID of kerntransport (unassigned in virtio 1.4).
pub const VIRTIO_ID: u32 = 60;
/// Feature bit: the device may open channels towards the driver.
pub const F_GUEST_LISTEN: u64 = 0;
/// Feature bit: the driver announces the names its listeners serve
/// (`LISTEN`/`UNLISTEN` on tx, SPEC §2.2).
pub const F_LISTEN_NOTIFY: u64 = 1;
/// Feature bit: more than one rx/tx queue pair (`max_queue_pairs` in
/// config space, SPEC §1.2).
pub const F_MULTIQUEUE: u64 = 2;
/// Most queue pairs a device may offer (`max_queue_pairs`).
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// Guest listener names a device keeps per driver; further `LISTEN`s are
/// counted and dropped (SPEC §2.2).
pub const MAX_GUEST_LISTENERS: usize = 1024;
/// `VIRTIO_RING_F_INDIRECT_DESC` feature bit.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 28;
/// `VIRTIO_RING_F_EVENT_IDX` feature bit.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 29;
/// `VIRTIO_F_VERSION_1` feature bit (required).
pub const VIRTIO_F_VERSION_1: u64 = 32;
/// `VIRTIO_F_ACCESS_PLATFORM` feature bit: the driver maps buffers through
/// the platform's DMA API (bounce buffers in confidential guests).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 33;

/// Receive queue index (device to driver).
pub const VQ_RX: u16 = 0;
/// Transmit queue index (driver to device).
pub const VQ_TX: u16 = 1;
/// Event queue index (device to driver).
pub const VQ_EVENT: u16 = 2;
/// Number of virtqueues without `F_MULTIQUEUE` (one pair plus the event
/// queue).
pub const NUM_VQS: usize = 3;

/// Queue index of pair `pair`'s rx queue (pair 0: 0; pair k ≥ 1: 2k + 1).
pub const fn vq_rx(pair: u16) -> u16 {
    if pair == 0 {
        VQ_RX
    } else {
        2 * pair + 1
    }
}

/// Queue index of pair `pair`'s tx queue (pair 0: 1; pair k ≥ 1: 2k + 2).
pub const fn vq_tx(pair: u16) -> u16 {
    if pair == 0 {
        VQ_TX
    } else {
        2 * pair + 2
    }
}

/// Number of virtqueues of a device with `pairs` queue pairs.
pub const fn num_vqs(pairs: u16) -> usize {
    1 + 2 * pairs as usize
}

/// The pair a queue index belongs to and whether it is that pair's rx
/// queue; `None` for the event queue.
pub const fn vq_pair(idx: u16) -> Option<(u16, bool)> {
    match idx {
        VQ_RX => Some((0, true)),
        VQ_TX => Some((0, false)),
        VQ_EVENT => None,
        i => Some(((i - 1) / 2, i % 2 == 1)),
    }
}

/// Size of `struct kt_hdr` on the wire.
pub const HDR_SIZE: usize = 32;
/// Size of `struct kt_config` on the wire.
pub const CONFIG_SIZE: usize = 20;
/// Config bytes a device without `F_MULTIQUEUE` needs to show (the fields
/// before `max_queue_pairs`).
pub const CONFIG_SIZE_V1: usize = 16;
/// Longest service name in bytes (no NUL).
pub const NAME_MAX: usize = 63;
/// Smallest rx buffer a driver may post.
pub const MIN_RX_BUF_SIZE: u32 = 256;
/// Largest rx buffer size a driver honours from config space.
pub const MAX_RX_BUF_SIZE: u32 = 65536;
/// Largest value `max_msg_size` may take.
pub const MAX_MSG_SIZE_LIMIT: u32 = 1 << 20;
/// Default `max_msg_size`.
pub const DEFAULT_MAX_MSG_SIZE: u32 = 65536;
/// Default `rx_buf_size`.
pub const DEFAULT_RX_BUF_SIZE: u32 = 4096;
/// Default `max_channels`.
pub const DEFAULT_MAX_CHANNELS: u32 = 1024;
/// Credit charged per message on top of its payload bytes.
pub const MSG_OVERHEAD: u32 = HDR_SIZE as u32;

/// Channel id of the transport itself.
pub const CHAN_TRANSPORT: u32 = 0;
/// Bit set in ids of channels opened by the device.
pub const CHAN_DEVICE_BIT: u32 = 0x8000_0000;

/// Header flag: more fragments of this message follow (rx only).
pub const HDR_F_MORE: u16 = 0x0001;
/// Every header flag this version knows.
pub const HDR_F_KNOWN: u16 = HDR_F_MORE;

/// Service-name prefix reserved for guest kernel services.
pub const KERNEL_NAME_PREFIX: &str = "k.";
/// Service-name prefix reserved for services the device itself implements
/// (SPEC §2.1); host policies may not name them.
pub const DEVICE_NAME_PREFIX: &str = "kt.";
/// The device's service listing the names the guest may open (SPEC §3.3).
pub const SERVICES_NAME: &str = "kt.services";
/// Most payload bytes one DATA message of a `kt.services` listing carries
/// (fewer when `max_msg_size` is smaller).
pub const LISTING_CHUNK_MAX: usize = 4096;

/// `ioctl` magic of `/dev/kerntransport`.
pub const IOC_MAGIC: u8 = b'k';
/// Size of `struct kt_ioc_name`.
pub const IOC_NAME_SIZE: usize = NAME_MAX + 1;
/// Size of `struct kt_ioc_info`.
pub const IOC_INFO_SIZE: usize = 16;
/// Size of `struct kt_ioc_next`.
pub const IOC_NEXT_SIZE: usize = 16;
/// `struct kt_ioc_next` flag: a message is queued, `len` is its length.
pub const NEXT_F_MSG: u32 = 0x1;
/// `struct kt_ioc_next` flag: the channel ended; once the queue is empty
/// `read()` returns 0 (EOF) or fails with `error`.
pub const NEXT_F_ENDED: u32 = 0x2;

/// Size of `struct kt_ioc_msg` (one message of a batch).
pub const IOC_MSG_SIZE: usize = 16;
/// Size of `struct kt_ioc_msgvec` (the argument of a batch ioctl).
pub const IOC_MSGVEC_SIZE: usize = 16;
/// `KT_IOC_VEC_MAX`: most messages per `KT_IOC_SENDV` / `KT_IOC_RECVV`.
pub const IOC_VEC_MAX: usize = 64;
/// `struct kt_ioc_msg` flag (`KT_IOC_RECVV` result): the buffer was too
/// small, `len` is the message's length, the message stays queued.
pub const MSG_F_TRUNC: u32 = 0x1;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Linux `_IOC(dir, type, nr, size)` encoding (x86).
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32 & 0x3fff) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `KT_IOC_CONNECT`: connect the file to a host service.
pub const IOC_CONNECT: u32 = ioc(IOC_WRITE, IOC_MAGIC, 1, IOC_NAME_SIZE);
/// `KT_IOC_LISTEN`: listen on a name for host-initiated channels.
pub const IOC_LISTEN: u32 = ioc(IOC_WRITE, IOC_MAGIC, 2, IOC_NAME_SIZE);
/// `KT_IOC_ACCEPT`: returns a new fd for the next incoming channel.
pub const IOC_ACCEPT: u32 = ioc(0, IOC_MAGIC, 3, 0);
/// `KT_IOC_INFO`: reads `struct kt_ioc_info`.
pub const IOC_INFO: u32 = ioc(IOC_READ, IOC_MAGIC, 4, IOC_INFO_SIZE);
/// `KT_IOC_NEXT`: reads `struct kt_ioc_next` (the next `read()`'s result).
pub const IOC_NEXT: u32 = ioc(IOC_READ, IOC_MAGIC, 5, IOC_NEXT_SIZE);
/// `KT_IOC_SENDV`: sends up to [`IOC_VEC_MAX`] messages, returns how many.
pub const IOC_SENDV: u32 = ioc(IOC_WRITE, IOC_MAGIC, 6, IOC_MSGVEC_SIZE);
/// `KT_IOC_RECVV`: receives up to [`IOC_VEC_MAX`] messages, returns how many.
pub const IOC_RECVV: u32 = ioc(IOC_WRITE, IOC_MAGIC, 7, IOC_MSGVEC_SIZE);

/// Endpoint states reported by `KT_IOC_INFO`.
pub mod state {
    /// Fresh file, not connected.
    pub const IDLE: u32 = 0;
    /// `KT_IOC_CONNECT` in progress.
    pub const CONNECTING: u32 = 1;
    /// Channel open.
    pub const OPEN: u32 = 2;
    /// Listening for host-initiated channels.
    pub const LISTENING: u32 = 3;
    /// Channel closed by either side.
    pub const CLOSED: u32 = 4;
}

// Any OPEN fits one minimal rx buffer; defaults are within limits.
const _: () = assert!(MIN_RX_BUF_SIZE as usize > HDR_SIZE + NAME_MAX);
const _: () = assert!(DEFAULT_MAX_MSG_SIZE <= MAX_MSG_SIZE_LIMIT);
const _: () =
    assert!(DEFAULT_RX_BUF_SIZE >= MIN_RX_BUF_SIZE && DEFAULT_RX_BUF_SIZE <= MAX_RX_BUF_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_encoding() {
        // Values computed by hand from _IOW('k', 1, 64 bytes) etc.
        assert_eq!(IOC_CONNECT, 0x4040_6b01);
        assert_eq!(IOC_LISTEN, 0x4040_6b02);
        assert_eq!(IOC_ACCEPT, 0x0000_6b03);
        assert_eq!(IOC_INFO, 0x8010_6b04);
        assert_eq!(IOC_NEXT, 0x8010_6b05);
        assert_eq!(IOC_SENDV, 0x4010_6b06);
        assert_eq!(IOC_RECVV, 0x4010_6b07);
    }

    #[test]
    fn queue_layout_keeps_pair_zero_and_the_event_queue_in_place() {
        assert_eq!((vq_rx(0), vq_tx(0)), (VQ_RX, VQ_TX));
        assert_eq!((vq_rx(1), vq_tx(1)), (3, 4));
        assert_eq!((vq_rx(15), vq_tx(15)), (31, 32));
        assert_eq!(num_vqs(1), NUM_VQS);
        assert_eq!(num_vqs(MAX_QUEUE_PAIRS), 33);
        assert_eq!(vq_pair(VQ_EVENT), None);
        for p in 0..MAX_QUEUE_PAIRS {
            assert_eq!(vq_pair(vq_rx(p)), Some((p, true)));
            assert_eq!(vq_pair(vq_tx(p)), Some((p, false)));
        }
    }
}
