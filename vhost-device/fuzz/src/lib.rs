//! The `tx_chain` fuzz input: how arbitrary bytes become a guest memory with
//! a split virtqueue in it, and the run of kt-vhost-device's chain handling
//! over it (`chain::parse_tx` for tx chains, `chain::RxBuf` for rx chains,
//! popped and returned the way `device.rs` does). Also builds the seed
//! inputs (`examples/seeds.rs` writes them). Must not panic on any input;
//! asserts nothing about the device beyond that and the parse rules below.
//!
//! Input layout (missing bytes read as zero):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | queue size: `1 << (b % 6)` (1..=32) |
//! | 1 | avail entries published (at most twice the queue size) |
//! | 2 | per chain, bit `i % 8`: 1 = handle chain `i` as rx, 0 as tx |
//! | 3..5 | `max_msg_size` (u16 LE) for the tx header checks |
//! | 5.. | descriptor table (16 bytes per entry, raw) |
//! | then | avail ring entries (u16 LE each) |
//! | rest | guest memory from `DATA` on |

use kt_proto::consts::HDR_SIZE;
use kt_proto::{Header, Limits, MsgType, Path};
use kt_vhost_device::chain::{parse_tx, Mem, RxBuf, TxError};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// Guest memory size (starts at guest address 0).
pub const MEM_SIZE: usize = 0x10000;
/// Where the input's tail lands in guest memory (rings sit below it).
pub const DATA: u64 = 0x1000;
/// Fixed part before the descriptor table.
const PREFIX: usize = 5;
/// Chains handled per input at most (rx writes can rewrite the rings).
const MAX_CHAINS: usize = 64;

/// What one run did (used by the seed tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// tx chains that parsed into a message.
    pub tx_ok: usize,
    /// tx chains refused.
    pub tx_err: usize,
    /// rx chains that took a header and payload.
    pub rx_ok: usize,
    /// rx chains refused or too small.
    pub rx_err: usize,
}

/// A reader of the input that yields zeros past its end.
struct Input<'a>(&'a [u8], usize);

impl Input<'_> {
    fn take(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let start = self.1.min(self.0.len());
        let end = (self.1 + n).min(self.0.len());
        v[..end - start].copy_from_slice(&self.0[start..end]);
        self.1 += n;
        v
    }

    fn rest(&self) -> &[u8] {
        self.0.get(self.1..).unwrap_or(&[])
    }
}

/// Builds the memory and queue the input describes and runs the backend's
/// chain handling over every published chain.
pub fn run(data: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let Ok(mem) = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return out;
    };
    let mut input = Input(data, 0);
    let fixed = input.take(PREFIX);
    let qsize: u16 = 1 << (fixed[0] % 6);
    let published = u16::from(fixed[1]) % (2 * qsize + 1);
    let rx_mask = fixed[2];
    let limits = Limits {
        max_msg_size: u32::from(u16::from_le_bytes([fixed[3], fixed[4]])),
    };

    let vq = MockSplitQueue::new(&mem, qsize);
    let table = input.take(16 * usize::from(qsize));
    let avail = input.take(2 * usize::from(published));
    // Everything the mock places (rings, its indirect area) stays below DATA.
    if mem.write_slice(&table, vq.desc_table_addr()).is_err() {
        return out;
    }
    for (i, e) in avail.chunks_exact(2).enumerate() {
        let head = u16::from_le_bytes([e[0], e[1]]);
        let at = vq.avail_addr().unchecked_add(4 + 2 * i as u64);
        if mem.write_obj(head, at).is_err() {
            return out;
        }
    }
    if mem
        .write_obj(published, vq.avail_addr().unchecked_add(2))
        .is_err()
    {
        return out;
    }
    let tail = input.rest();
    let tail = &tail[..tail.len().min(MEM_SIZE - DATA as usize)];
    if mem.write_slice(tail, GuestAddress(DATA)).is_err() {
        return out;
    }
    let Ok(mut q) = vq.create_queue::<Queue>() else {
        return out;
    };

    for i in 0..MAX_CHAINS {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            // As device.rs: re-enable notifications, go on if more arrived.
            match q.enable_notification(&mem) {
                Ok(true) => continue,
                _ => break,
            }
        };
        let head = chain.head_index();
        if rx_mask & (1 << (i % 8)) != 0 {
            rx(chain, &mem, &mut out);
        } else {
            tx(chain, &mem, &limits, &mut out);
        }
        if q.add_used(&mem, head, 0).is_err() {
            break;
        }
    }
    out
}

/// A tx chain: parse it; what parses must obey the tx rules.
fn tx(chain: virtio_queue::DescriptorChain<&Mem>, mem: &Mem, limits: &Limits, out: &mut Outcome) {
    match parse_tx(chain, mem, limits) {
        Ok(msg) => {
            assert_eq!(msg.payload.len(), msg.hdr.len as usize);
            assert!(msg.hdr.check(limits, Path::Tx).is_ok());
            out.tx_ok += 1;
        }
        Err(TxError::Short(n)) => {
            assert!(n < HDR_SIZE);
            out.tx_err += 1;
        }
        Err(_) => out.tx_err += 1,
    }
}

/// An rx chain: wrap it and write one header and as much payload as fits.
fn rx(chain: virtio_queue::DescriptorChain<&Mem>, mem: &Mem, out: &mut Outcome) {
    let Ok(mut buf) = RxBuf::new(chain, mem) else {
        out.rx_err += 1;
        return;
    };
    let cap = buf.capacity();
    if cap < HDR_SIZE {
        out.rx_err += 1;
        return;
    }
    let payload = vec![0xa5u8; (cap - HDR_SIZE).min(512)];
    let hdr = Header::with_payload(MsgType::Data, 1, payload.len() as u32);
    match buf.put(&hdr, &payload) {
        Ok(n) => {
            assert_eq!(n as usize, HDR_SIZE + payload.len());
            out.rx_ok += 1;
        }
        Err(_) => out.rx_err += 1,
    }
}

/// One descriptor, as the guest writes it in the table.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// An input: queue of 4, `descs` in the table, `heads` published, `rx_mask`,
/// and `data` at `DATA`.
fn input(descs: &[[u8; 16]], heads: &[u16], rx_mask: u8, data: &[u8]) -> Vec<u8> {
    let qsize = 4usize;
    let mut v = vec![2u8, heads.len() as u8, rx_mask];
    v.extend_from_slice(&4096u16.to_le_bytes());
    let mut table = vec![0u8; 16 * qsize];
    for (i, d) in descs.iter().enumerate() {
        table[16 * i..16 * i + 16].copy_from_slice(d);
    }
    v.extend_from_slice(&table);
    for h in heads {
        v.extend_from_slice(&h.to_le_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn message(hdr: Header, payload: &[u8]) -> Vec<u8> {
    let mut m = hdr.encode().to_vec();
    m.extend_from_slice(payload);
    m
}

/// The seed corpus: (file name, input). Each exercises one path: a valid
/// DATA in one and in two descriptors, an OPEN with a name, a header-only
/// CLOSE, an indirect chain, an rx buffer, a writable tx descriptor, a
/// descriptor loop, and a length mismatch.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let data = message(Header::with_payload(MsgType::Data, 5, 10), b"0123456789");
    let open = message(Header::with_payload(MsgType::Open, 3, 4), b"echo");
    let close = message(Header::new(MsgType::Close, 5), b"");
    let listen = message(Header::with_payload(MsgType::Listen, 0, 4), b"echo");
    let n = data.len() as u32;
    let mut bad_len = data.clone();
    bad_len.extend_from_slice(b"xx");
    // Indirect: the table at DATA + 0x100 holds two descriptors covering `data`.
    let mut indirect = data.clone();
    indirect.resize(0x100, 0);
    indirect.extend_from_slice(&desc(DATA, 20, F_NEXT, 1));
    indirect.extend_from_slice(&desc(DATA + 20, n - 20, 0, 0));
    vec![
        (
            "data-one-desc",
            input(&[desc(DATA, n, 0, 0)], &[0], 0, &data),
        ),
        (
            "data-two-descs",
            input(
                &[desc(DATA, 20, F_NEXT, 1), desc(DATA + 20, n - 20, 0, 0)],
                &[0],
                0,
                &data,
            ),
        ),
        (
            "open",
            input(&[desc(DATA, open.len() as u32, 0, 0)], &[0], 0, &open),
        ),
        (
            "listen",
            input(&[desc(DATA, listen.len() as u32, 0, 0)], &[0], 0, &listen),
        ),
        (
            "close-then-data",
            input(
                &[desc(DATA, 32, 0, 0), desc(DATA + 32, n, 0, 0)],
                &[0, 1],
                0,
                &[close, data.clone()].concat(),
            ),
        ),
        (
            "indirect",
            input(&[desc(DATA + 0x100, 32, F_INDIRECT, 0)], &[0], 0, &indirect),
        ),
        (
            "rx-buffer",
            input(
                &[
                    desc(DATA, 16, F_WRITE | F_NEXT, 1),
                    desc(DATA + 16, 256, F_WRITE, 0),
                ],
                &[0],
                1,
                &[],
            ),
        ),
        (
            "tx-writable",
            input(&[desc(DATA, n, F_WRITE, 0)], &[0], 0, &data),
        ),
        (
            "loop",
            input(
                &[desc(DATA, 16, F_NEXT, 1), desc(DATA + 16, 16, F_NEXT, 0)],
                &[0],
                0,
                &data,
            ),
        ),
        (
            "length-mismatch",
            input(&[desc(DATA, n + 2, 0, 0)], &[0], 0, &bad_len),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        seeds()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no seed {name}"))
    }

    #[test]
    fn seeds_reach_the_paths_they_are_named_for() {
        let ok = |tx_ok, tx_err, rx_ok| Outcome {
            tx_ok,
            tx_err,
            rx_ok,
            rx_err: 0,
        };
        assert_eq!(run(&seed("data-one-desc")), ok(1, 0, 0));
        assert_eq!(run(&seed("data-two-descs")), ok(1, 0, 0));
        assert_eq!(run(&seed("open")), ok(1, 0, 0));
        assert_eq!(run(&seed("listen")), ok(1, 0, 0));
        assert_eq!(run(&seed("close-then-data")), ok(2, 0, 0));
        assert_eq!(run(&seed("indirect")), ok(1, 0, 0));
        assert_eq!(run(&seed("rx-buffer")), ok(0, 0, 1));
        assert_eq!(run(&seed("tx-writable")), ok(0, 1, 0));
        assert_eq!(run(&seed("loop")), ok(0, 1, 0));
        assert_eq!(run(&seed("length-mismatch")), ok(0, 1, 0));
    }

    #[test]
    fn short_and_empty_inputs_do_nothing() {
        assert_eq!(run(&[]), Outcome::default());
        // 32 zeroed descriptors published as rx: each is refused.
        let refused = Outcome {
            rx_err: 32,
            ..Outcome::default()
        };
        assert_eq!(run(&[5, 32, 0xff]), refused);
        // An avail index more than the queue size ahead: nothing is popped.
        assert_eq!(run(&[5, 64, 0xff]), Outcome::default());
    }
}
