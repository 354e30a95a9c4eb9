//! Descriptor chains in and out: parses one tx chain into a checked message
//! (SPEC §4, §8) whose payload stays in guest memory (`iov::GuestBytes`),
//! and writes one header plus payload into an rx or event chain.
//! Everything read from guest memory is untrusted: the header is copied out
//! before it is decoded and checked; the payload is only passed through.

use kt_proto::consts::HDR_SIZE;
use kt_proto::{DecodeError, Header, Limits, Path};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryMmap, Permissions};

use crate::iov::GuestBytes;

/// Guest memory as the backend maps it.
pub type Mem = GuestMemoryMmap<()>;

/// A tx chain that could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// Device-writable descriptor, loop or unreadable table.
    #[error("bad descriptor chain: {0}")]
    Chain(&'static str),
    /// Descriptors pointing outside guest memory (or overflowing).
    #[error("bad descriptor chain: {0}")]
    Memory(#[source] virtio_queue::Error),
    /// Reading the chain failed part way.
    #[error("reading the chain: {0}")]
    Read(#[source] std::io::Error),
    /// Fewer than 32 bytes.
    #[error("chain of {0} bytes is shorter than a header")]
    Short(usize),
    /// Header did not decode (unknown type or flags).
    #[error("undecodable header: {0}")]
    Decode(DecodeError),
    /// Header decoded but breaks a rule; the header is kept so the caller
    /// can answer on its channel.
    #[error("bad {:?} on channel {}: {err}", .hdr.msg_type, .hdr.channel)]
    Semantic {
        /// The header.
        hdr: Header,
        /// The rule it broke.
        err: DecodeError,
    },
    /// `len` differs from the payload bytes actually present.
    #[error("{:?} on channel {} claims {} payload bytes, {present} present", .hdr.msg_type, .hdr.channel, .hdr.len)]
    Length {
        /// The header.
        hdr: Header,
        /// Bytes after the header.
        present: usize,
    },
}

/// A checked tx message.
#[derive(Debug)]
pub struct TxMsg<'m> {
    /// Its header (copied out of guest memory, decoded and checked for the
    /// tx path).
    pub hdr: Header,
    /// Exactly `hdr.len` payload bytes, still in guest memory.
    pub payload: GuestBytes<'m>,
}

/// Checks the chain's shape: only device-readable descriptors, and it ends
/// with a descriptor without NEXT (a loop or a bad index truncates it).
fn check_readable_chain(chain: &DescriptorChain<&Mem>) -> Result<(), TxError> {
    let mut last_has_next = false;
    let mut n = 0usize;
    for d in chain.clone() {
        if d.is_write_only() {
            return Err(TxError::Chain("device-writable descriptor in a tx chain"));
        }
        last_has_next = d.has_next();
        n += 1;
    }
    if n == 0 {
        return Err(TxError::Chain("empty or unreadable chain"));
    }
    if last_has_next {
        return Err(TxError::Chain("chain loops or points outside its table"));
    }
    Ok(())
}

/// Parses one tx chain: header, semantic checks, exact payload. The
/// payload is not copied: it is returned as slices of guest memory.
pub fn parse_tx<'m>(
    chain: DescriptorChain<&'m Mem>,
    mem: &'m Mem,
    limits: &Limits,
) -> Result<TxMsg<'m>, TxError> {
    check_readable_chain(&chain)?;
    let mut all = GuestBytes::new();
    for d in chain {
        all.push(mem, d.addr(), d.len() as usize, Permissions::Read)
            .map_err(|e| TxError::Memory(virtio_queue::Error::GuestMemoryError(e)))?;
    }
    let total = all.len();
    if total < HDR_SIZE {
        return Err(TxError::Short(total));
    }
    // The header is copied out before it is looked at: the guest may
    // change its memory at any time.
    let mut hb = [0u8; HDR_SIZE];
    all.copy_to(0, &mut hb);
    let hdr = Header::decode(&hb).map_err(TxError::Decode)?;
    hdr.check(limits, Path::Tx)
        .map_err(|err| TxError::Semantic { hdr, err })?;
    let present = total - HDR_SIZE;
    if present != hdr.len as usize {
        return Err(TxError::Length { hdr, present });
    }
    Ok(TxMsg {
        hdr,
        payload: all.tail(HDR_SIZE),
    })
}

/// A writable chain ready for one header and its payload: its
/// device-writable bytes as guest-memory slices (readable descriptors in
/// it are skipped, as `virtio_queue::Writer` does).
pub struct RxBuf<'a> {
    /// Descriptor head index, for the used ring.
    pub head: u16,
    bytes: GuestBytes<'a>,
}

impl std::fmt::Debug for RxBuf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBuf")
            .field("head", &self.head)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl<'a> RxBuf<'a> {
    /// Wraps a device-writable chain; fails on descriptors outside memory
    /// or a total length that overflows.
    pub fn new(
        chain: DescriptorChain<&'a Mem>,
        mem: &'a Mem,
    ) -> Result<RxBuf<'a>, virtio_queue::Error> {
        let head = chain.head_index();
        let mut bytes = GuestBytes::new();
        for d in chain.writable() {
            bytes
                .push(mem, d.addr(), d.len() as usize, Permissions::Write)
                .map_err(virtio_queue::Error::GuestMemoryError)?;
        }
        Ok(RxBuf { head, bytes })
    }

    /// Writable bytes in the chain.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// Slices (iovecs) the chain's bytes take.
    pub fn segments(&self) -> usize {
        self.bytes.segments()
    }

    /// The bytes after the header's place, where a payload goes.
    pub fn payload_area(&self) -> GuestBytes<'a> {
        self.bytes.tail(HDR_SIZE)
    }

    /// Writes `hdr` then `payload`; returns the used length.
    pub fn put(&mut self, hdr: &Header, payload: &[u8]) -> std::io::Result<u32> {
        if HDR_SIZE + payload.len() > self.capacity() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "rx buffer too small",
            ));
        }
        self.put_header(hdr)?;
        self.bytes.copy_from(HDR_SIZE, payload);
        Ok((HDR_SIZE + payload.len()) as u32)
    }

    /// Writes `hdr` alone, for a payload already received into
    /// [`RxBuf::payload_area`]; returns the used length.
    pub fn put_header(&mut self, hdr: &Header) -> std::io::Result<u32> {
        if self.bytes.copy_from(0, &hdr.encode()) != HDR_SIZE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "rx buffer shorter than a header",
            ));
        }
        Ok(HDR_SIZE as u32 + hdr.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kt_proto::MsgType;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const LIM: Limits = Limits { max_msg_size: 4096 };

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    fn put_msg(m: &Mem, addr: u64, hdr: &Header, payload: &[u8]) -> u32 {
        m.write_slice(&hdr.encode(), GuestAddress(addr)).unwrap();
        m.write_slice(payload, GuestAddress(addr + 32)).unwrap();
        32 + payload.len() as u32
    }

    #[test]
    fn parses_split_message() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let hdr = Header::with_payload(MsgType::Data, 5, 10);
        put_msg(&m, 0x10000, &hdr, b"0123456789");
        // Header and payload split at byte 20.
        let chain = vq
            .build_desc_chain(&[desc(0x10000, 20, 0), desc(0x10014, 22, 0)])
            .unwrap();
        let msg = parse_tx(chain, &m, &LIM).unwrap();
        assert_eq!(msg.hdr, hdr);
        assert_eq!(msg.payload.to_vec(), b"0123456789");
    }

    #[test]
    fn rejects_hostile_chains() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let hdr = Header::with_payload(MsgType::Data, 5, 10);
        let n = put_msg(&m, 0x10000, &hdr, b"0123456789");
        let cases: Vec<(Vec<RawDescriptor>, &str)> = vec![
            (vec![desc(0x10000, n, VRING_DESC_F_WRITE)], "writable"),
            (vec![desc(0x10000, 16, 0)], "short"),
            (vec![desc(0xfff_0000, n, 0)], "outside"),
            (vec![desc(0x10000, n + 5, 0)], "length"),
            (vec![desc(0x10000, 32, 0)], "truncated"),
            (vec![desc(0x10000, u32::MAX, 0)], "huge"),
        ];
        for (descs, what) in cases {
            let chain = vq.build_desc_chain(&descs).unwrap();
            assert!(parse_tx(chain, &m, &LIM).is_err(), "{what}");
        }
    }

    #[test]
    fn rejects_descriptor_loop() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let hdr = Header::new(MsgType::CreditUpdate, 5);
        put_msg(&m, 0x10000, &hdr, b"");
        // Two descriptors pointing at each other.
        let d0 = RawDescriptor::from(SplitDescriptor::new(
            0x10000,
            16,
            VRING_DESC_F_NEXT as u16,
            1,
        ));
        let d1 = RawDescriptor::from(SplitDescriptor::new(
            0x10010,
            16,
            VRING_DESC_F_NEXT as u16,
            0,
        ));
        vq.add_desc_chains(&[d0, d1], 0).unwrap();
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        let chain = virtio_queue::QueueT::pop_descriptor_chain(&mut q, &m).unwrap();
        assert!(matches!(parse_tx(chain, &m, &LIM), Err(TxError::Chain(_))));
        let vq = MockSplitQueue::new(&m, 16);
        let chain = vq.build_desc_chain(&[desc(0xfff_0000, 64, 0)]).unwrap();
        assert!(matches!(parse_tx(chain, &m, &LIM), Err(TxError::Memory(_))));
    }

    #[test]
    fn semantic_errors_keep_the_header() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut hdr = Header::with_payload(MsgType::Data, 9, 4);
        hdr.msg_len = 5;
        let n = put_msg(&m, 0x10000, &hdr, b"abcd");
        let chain = vq.build_desc_chain(&[desc(0x10000, n, 0)]).unwrap();
        match parse_tx(chain, &m, &LIM) {
            Err(TxError::Semantic { hdr: h, .. }) => assert_eq!(h.channel, 9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_rx_buffer() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chain = vq
            .build_desc_chain(&[
                desc(0x20000, 16, VRING_DESC_F_WRITE),
                desc(0x30000, 256, VRING_DESC_F_WRITE),
            ])
            .unwrap();
        let mut b = RxBuf::new(chain, &m).unwrap();
        assert_eq!(b.capacity(), 272);
        let hdr = Header::with_payload(MsgType::Data, 1, 3);
        assert_eq!(b.put(&hdr, b"xyz").unwrap(), 35);
        let mut got = [0u8; 32];
        m.read_slice(&mut got[..16], GuestAddress(0x20000)).unwrap();
        m.read_slice(&mut got[16..], GuestAddress(0x30000)).unwrap();
        assert_eq!(Header::decode(&got).unwrap(), hdr);
    }
}
