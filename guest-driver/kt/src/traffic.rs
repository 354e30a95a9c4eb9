//! The verifiable traffic format of `kt gen` and `kt verify`, and the
//! verifier that classifies what arrived (in order, lost, late, duplicate,
//! corrupt). Pure functions over byte slices: no I/O.
//!
//! Message `seq` (0, 1, 2, ...) of a stream with parameters (seed, min, max):
//!
//! * its size is `min + h(seed, seq) % (max - min + 1)`, so every size in
//!   `1..=1 MiB` can occur and the verifier knows each message's size;
//! * its full form is a 16-byte prefix — `u64 seq`, `u32 len`,
//!   `u32 crc32(payload)`, all little-endian — followed by `len - 16` payload
//!   bytes drawn from a PRNG keyed by (seed, seq);
//! * a message shorter than 16 bytes is the first `len` bytes of that prefix
//!   (its checksum field is the CRC of the empty payload, 0). A 1-byte message
//!   is therefore the low byte of its sequence number, so even the tiniest
//!   messages reveal loss and reordering.
//!
//! Messages of 16 bytes and more describe themselves (seq, length, CRC); the
//! verifier also regenerates every expected message and compares it byte by
//! byte, so it needs the same seed and size range as the generator.

use std::collections::BTreeSet;
use std::fmt;

use crate::crc32::crc32;

/// Bytes of the self-describing prefix.
pub const PREFIX_LEN: usize = 16;
/// How far around the expected sequence number the verifier looks for the
/// message it got when that message carries no intact prefix.
pub const SEARCH_WINDOW: u64 = 64;
/// Gaps up to this many messages are remembered, so late arrivals of lost
/// messages are recognised as reordering.
const MISSING_CAP: u64 = 65_536;

/// PRNG streams derived from the seed.
const SIZE_STREAM: u64 = 0x5a17_e000_0000_0001;
const PAYLOAD_STREAM: u64 = 0x9a71_0ad0_0000_0002;

/// Invalid traffic parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// Messages must be at least one byte so each one is checkable.
    #[error("--min-size must be at least 1 byte")]
    ZeroMin,
    /// The range is empty.
    #[error("--min-size {min} is larger than --max-size {max}")]
    MinAboveMax {
        /// Requested minimum.
        min: usize,
        /// Requested maximum.
        max: usize,
    },
    /// Larger than any kerntransport message can be.
    #[error("--max-size {max} is larger than the protocol limit of {limit} bytes")]
    TooLarge {
        /// Requested maximum.
        max: usize,
        /// `KT_MAX_MSG_SIZE_LIMIT`.
        limit: usize,
    },
}

/// One step of SplitMix64.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Starting PRNG state for one (seed, seq, stream) triple.
fn stream_state(seed: u64, seq: u64, stream: u64) -> u64 {
    let mut s = seed ^ stream;
    let a = splitmix64(&mut s);
    let mut t = a ^ seq.wrapping_mul(0xd6e8_feb8_6659_fd93);
    splitmix64(&mut t)
}

/// Parameters shared by generator and verifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    seed: u64,
    min_size: usize,
    max_size: usize,
}

impl Params {
    /// Checks the size range (`1 <= min <= max <= 1 MiB`).
    pub fn new(seed: u64, min_size: usize, max_size: usize) -> Result<Self, ParamsError> {
        let limit = kt_proto::consts::MAX_MSG_SIZE_LIMIT as usize;
        if min_size == 0 {
            return Err(ParamsError::ZeroMin);
        }
        if min_size > max_size {
            return Err(ParamsError::MinAboveMax {
                min: min_size,
                max: max_size,
            });
        }
        if max_size > limit {
            return Err(ParamsError::TooLarge {
                max: max_size,
                limit,
            });
        }
        Ok(Self {
            seed,
            min_size,
            max_size,
        })
    }

    /// Largest message of the stream.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Size of message `seq`.
    pub fn size(&self, seq: u64) -> usize {
        let span = (self.max_size - self.min_size) as u64 + 1;
        let mut s = stream_state(self.seed, seq, SIZE_STREAM);
        // span <= 1 MiB, so the remainder fits usize.
        self.min_size + (splitmix64(&mut s) % span) as usize
    }

    /// Writes message `seq` into `out` (cleared first).
    pub fn fill(&self, seq: u64, out: &mut Vec<u8>) {
        let len = self.size(seq);
        out.clear();
        out.resize(len.max(PREFIX_LEN), 0);
        let mut state = stream_state(self.seed, seq, PAYLOAD_STREAM);
        for chunk in out[PREFIX_LEN..].chunks_mut(8) {
            let word = splitmix64(&mut state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let crc = crc32(&out[PREFIX_LEN..]);
        out[0..8].copy_from_slice(&seq.to_le_bytes());
        // len <= 1 MiB (checked in new), so it fits u32.
        out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out.truncate(len);
    }

    /// Message `seq` as a new buffer.
    pub fn message(&self, seq: u64) -> Vec<u8> {
        let mut v = Vec::new();
        self.fill(seq, &mut v);
        v
    }
}

/// The prefix of a message of at least [`PREFIX_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Sequence number.
    pub seq: u64,
    /// Total message length the sender wrote.
    pub len: u32,
    /// CRC-32 of the bytes after the prefix.
    pub crc: u32,
}

impl Prefix {
    /// Reads the prefix; `None` for messages shorter than [`PREFIX_LEN`].
    pub fn parse(msg: &[u8]) -> Option<Self> {
        let p: &[u8; PREFIX_LEN] = msg.get(..PREFIX_LEN)?.try_into().ok()?;
        let [s0, s1, s2, s3, s4, s5, s6, s7, l0, l1, l2, l3, c0, c1, c2, c3] = *p;
        Some(Self {
            seq: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
        })
    }

    /// Whether `msg` (which this prefix was parsed from) is internally
    /// consistent: its length and payload CRC match the prefix.
    pub fn intact(&self, msg: &[u8]) -> bool {
        self.len as usize == msg.len() && crc32(&msg[PREFIX_LEN..]) == self.crc
    }
}

/// How a received message differs from the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Wrong length.
    Size {
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// Same length, a byte differs.
    Byte {
        /// Offset of the first differing byte.
        offset: usize,
        /// Expected value.
        expected: u8,
        /// Received value.
        got: u8,
        /// Message length.
        len: usize,
    },
}

/// What one received message turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The expected message, intact.
    Ok,
    /// Intact, but `count` messages before it (from `first`) never arrived.
    Lost {
        /// First missing sequence number.
        first: u64,
        /// How many are missing.
        count: u64,
    },
    /// An intact message that had been counted lost arrived later.
    Late {
        /// Its sequence number.
        seq: u64,
        /// The sequence number expected at that point.
        expected: u64,
    },
    /// An intact message that was already received arrived again.
    Duplicate {
        /// Its sequence number.
        seq: u64,
    },
    /// Not any nearby message of the stream.
    Corrupt {
        /// The sequence number expected at that point.
        seq: u64,
        /// How it differs from the expected message.
        mismatch: Mismatch,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Lost { first, count: 1 } => write!(f, "seq {first} lost"),
            Outcome::Lost { first, count } => write!(
                f,
                "{count} messages lost (seq {first}..={})",
                first.saturating_add(count - 1)
            ),
            Outcome::Late { seq, expected } => write!(
                f,
                "seq {seq} arrived out of order (while seq {expected} was expected)"
            ),
            Outcome::Duplicate { seq } => write!(f, "seq {seq} arrived twice"),
            Outcome::Corrupt {
                seq,
                mismatch: Mismatch::Size { expected, got },
            } => write!(f, "seq {seq} corrupt: {got} bytes, expected {expected}"),
            Outcome::Corrupt {
                seq,
                mismatch:
                    Mismatch::Byte {
                        offset,
                        expected,
                        got,
                        len,
                    },
            } => write!(
                f,
                "seq {seq} corrupt: byte {offset} of {len} is 0x{got:02x}, expected 0x{expected:02x}"
            ),
        }
    }
}

/// Running totals of a verification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Intact messages received in order.
    pub verified: u64,
    /// Messages that never arrived (so far).
    pub lost: u64,
    /// Messages that arrived damaged.
    pub corrupt: u64,
    /// Intact messages that arrived after a later one.
    pub reordered: u64,
    /// Intact messages received a second time.
    pub duplicate: u64,
}

impl Counts {
    /// Whether anything went wrong.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.corrupt == 0 && self.reordered == 0 && self.duplicate == 0
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verified {} messages, {} lost, {} corrupt",
            self.verified, self.lost, self.corrupt
        )?;
        if self.reordered != 0 || self.duplicate != 0 {
            write!(
                f,
                ", {} reordered, {} duplicate",
                self.reordered, self.duplicate
            )?;
        }
        Ok(())
    }
}

/// Checks a received stream message by message.
#[derive(Debug)]
pub struct Verifier {
    params: Params,
    next: u64,
    counts: Counts,
    missing: BTreeSet<u64>,
    scratch: Vec<u8>,
}

impl Verifier {
    /// A verifier expecting seq 0 first.
    pub fn new(params: Params) -> Self {
        Self {
            params,
            next: 0,
            counts: Counts::default(),
            missing: BTreeSet::new(),
            scratch: Vec::new(),
        }
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Totals so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn matches(&mut self, seq: u64, msg: &[u8]) -> bool {
        if self.params.size(seq) != msg.len() {
            return false;
        }
        self.params.fill(seq, &mut self.scratch);
        self.scratch == msg
    }

    /// Which message of the stream `msg` is, if it is an intact one near
    /// the expected position (or names itself through an intact prefix).
    fn identify(&mut self, msg: &[u8]) -> Option<u64> {
        if let Some(p) = Prefix::parse(msg) {
            if p.intact(msg) && self.matches(p.seq, msg) {
                return Some(p.seq);
            }
        }
        for d in 1..=SEARCH_WINDOW {
            let Some(seq) = self.next.checked_add(d) else {
                break;
            };
            if self.matches(seq, msg) {
                return Some(seq);
            }
        }
        for d in 1..=self.next.min(SEARCH_WINDOW) {
            let seq = self.next - d;
            if self.matches(seq, msg) {
                return Some(seq);
            }
        }
        None
    }

    /// Classifies one received message and updates the totals.
    pub fn check(&mut self, msg: &[u8]) -> Outcome {
        let expected = self.next;
        if self.matches(expected, msg) {
            self.counts.verified += 1;
            self.next += 1;
            return Outcome::Ok;
        }
        match self.identify(msg) {
            Some(seq) if seq > expected => {
                let count = seq - expected;
                if count <= MISSING_CAP {
                    self.missing.extend(expected..seq);
                }
                self.counts.lost += count;
                self.counts.verified += 1;
                self.next = seq.saturating_add(1);
                Outcome::Lost {
                    first: expected,
                    count,
                }
            }
            Some(seq) => {
                if self.missing.remove(&seq) {
                    self.counts.lost -= 1;
                    self.counts.reordered += 1;
                    Outcome::Late { seq, expected }
                } else {
                    self.counts.duplicate += 1;
                    Outcome::Duplicate { seq }
                }
            }
            None => {
                self.params.fill(expected, &mut self.scratch);
                let mismatch = diff(&self.scratch, msg);
                self.counts.corrupt += 1;
                self.next += 1;
                Outcome::Corrupt {
                    seq: expected,
                    mismatch,
                }
            }
        }
    }

    /// Ends a stream that should have had `total` messages: messages never
    /// reached are counted lost. Returns that loss, if any.
    pub fn finish(&mut self, total: u64) -> Option<Outcome> {
        if self.next >= total {
            return None;
        }
        let first = self.next;
        let count = total - first;
        self.counts.lost += count;
        self.next = total;
        Some(Outcome::Lost { first, count })
    }
}

/// First difference between the expected and the received message.
fn diff(expected: &[u8], got: &[u8]) -> Mismatch {
    if expected.len() != got.len() {
        return Mismatch::Size {
            expected: expected.len(),
            got: got.len(),
        };
    }
    let offset = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    Mismatch::Byte {
        offset,
        expected: expected.get(offset).copied().unwrap_or(0),
        got: got.get(offset).copied().unwrap_or(0),
        len: got.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64, min: usize, max: usize) -> Params {
        Params::new(seed, min, max).unwrap()
    }

    #[test]
    fn params_are_checked() {
        assert_eq!(Params::new(1, 0, 10), Err(ParamsError::ZeroMin));
        assert_eq!(
            Params::new(1, 11, 10),
            Err(ParamsError::MinAboveMax { min: 11, max: 10 })
        );
        assert!(matches!(
            Params::new(1, 1, (1 << 20) + 1),
            Err(ParamsError::TooLarge { .. })
        ));
        assert!(Params::new(1, 1 << 20, 1 << 20).is_ok());
    }

    #[test]
    fn sizes_cover_the_range_and_follow_the_seed() {
        let p = params(7, 1, 40);
        let sizes: Vec<usize> = (0..2000).map(|s| p.size(s)).collect();
        assert!(sizes.iter().all(|&s| (1..=40).contains(&s)));
        for want in 1..=40 {
            assert!(sizes.contains(&want), "size {want} never generated");
        }
        let q = params(8, 1, 40);
        let other: Vec<usize> = (0..2000).map(|s| q.size(s)).collect();
        assert_ne!(sizes, other);
        let fixed = params(3, 100, 100);
        assert!((0..100).all(|s| fixed.size(s) == 100));
    }

    #[test]
    fn long_messages_describe_themselves() {
        let p = params(1, 16, 5000);
        for seq in 0..200 {
            let m = p.message(seq);
            assert_eq!(m.len(), p.size(seq));
            let pre = Prefix::parse(&m).unwrap();
            assert_eq!(pre.seq, seq);
            assert_eq!(pre.len as usize, m.len());
            assert!(pre.intact(&m));
        }
    }

    #[test]
    fn short_messages_are_prefix_bytes() {
        let p = params(1, 1, 15);
        for seq in 0..300u64 {
            let m = p.message(seq);
            assert!((1..=15).contains(&m.len()));
            let mut full = seq.to_le_bytes().to_vec();
            full.extend_from_slice(&(m.len() as u32).to_le_bytes());
            full.extend_from_slice(&0u32.to_le_bytes());
            assert_eq!(m[..], full[..m.len()]);
            assert!(Prefix::parse(&m).is_none());
        }
        let one = params(1, 1, 1);
        assert_eq!(one.message(0x1234), vec![0x34]);
    }

    #[test]
    fn payload_depends_on_seed() {
        let a = params(1, 64, 64).message(5);
        let b = params(2, 64, 64).message(5);
        assert_eq!(a[..12], b[..12]);
        assert_ne!(a[16..], b[16..]);
    }

    fn run(v: &mut Verifier, p: &Params, seqs: &[u64]) -> Vec<Outcome> {
        seqs.iter().map(|&s| v.check(&p.message(s))).collect()
    }

    #[test]
    fn clean_stream_verifies() {
        for (min, max) in [(1, 1), (1, 15), (1, 300), (16, 16), (1000, 70000)] {
            let p = params(42, min, max);
            let mut v = Verifier::new(p);
            let seqs: Vec<u64> = (0..100).collect();
            assert!(run(&mut v, &p, &seqs).iter().all(|o| *o == Outcome::Ok));
            assert_eq!(v.finish(100), None);
            let c = v.counts();
            assert_eq!(c.verified, 100);
            assert!(c.clean());
            assert_eq!(c.to_string(), "verified 100 messages, 0 lost, 0 corrupt");
        }
    }

    #[test]
    fn loss_is_detected_for_every_size_class() {
        for (min, max) in [(1, 1), (2, 15), (16, 4096)] {
            let p = params(9, min, max);
            let mut v = Verifier::new(p);
            let out = run(&mut v, &p, &[0, 1, 2, 4, 5]);
            assert_eq!(out[3], Outcome::Lost { first: 3, count: 1 }, "{min}..{max}");
            assert_eq!(out[4], Outcome::Ok);
            assert_eq!(v.counts().lost, 1);
            assert_eq!(v.counts().verified, 5);
        }
    }

    #[test]
    fn large_gap_is_found_through_the_prefix() {
        let p = params(9, 16, 64);
        let mut v = Verifier::new(p);
        let out = run(&mut v, &p, &[0, 1000]);
        assert_eq!(
            out[1],
            Outcome::Lost {
                first: 1,
                count: 999
            }
        );
        assert_eq!(out[1].to_string(), "999 messages lost (seq 1..=999)");
    }

    #[test]
    fn reorder_and_duplicate_are_detected() {
        let p = params(5, 1, 200);
        let mut v = Verifier::new(p);
        let out = run(&mut v, &p, &[0, 2, 1, 3, 3]);
        assert_eq!(out[1], Outcome::Lost { first: 1, count: 1 });
        assert_eq!(
            out[2],
            Outcome::Late {
                seq: 1,
                expected: 3
            }
        );
        assert_eq!(out[3], Outcome::Ok);
        assert_eq!(out[4], Outcome::Duplicate { seq: 3 });
        let c = v.counts();
        assert_eq!((c.verified, c.lost, c.reordered, c.duplicate), (3, 0, 1, 1));
        assert!(!c.clean());
        assert_eq!(
            c.to_string(),
            "verified 3 messages, 0 lost, 0 corrupt, 1 reordered, 1 duplicate"
        );
    }

    #[test]
    fn corruption_is_detected() {
        let p = params(11, 1, 3000);
        for seq in 0..50u64 {
            let good = p.message(seq);
            for offset in [0, good.len() / 2, good.len() - 1] {
                let mut bad = good.clone();
                bad[offset] ^= 0x80;
                let mut v = Verifier::new(p);
                for s in 0..seq {
                    assert_eq!(v.check(&p.message(s)), Outcome::Ok);
                }
                match v.check(&bad) {
                    Outcome::Corrupt {
                        seq: s,
                        mismatch: Mismatch::Byte { offset: o, got, .. },
                    } => {
                        assert_eq!((s, o, got), (seq, offset, bad[offset]));
                    }
                    other => panic!("seq {seq} offset {offset}: {other:?}"),
                }
                assert_eq!(v.counts().corrupt, 1);
            }
        }
    }

    #[test]
    fn truncation_and_extension_are_size_mismatches() {
        let p = params(11, 100, 100);
        let mut v = Verifier::new(p);
        let m = p.message(0);
        assert_eq!(
            v.check(&m[..99]),
            Outcome::Corrupt {
                seq: 0,
                mismatch: Mismatch::Size {
                    expected: 100,
                    got: 99
                }
            }
        );
        let mut longer = p.message(1);
        longer.push(0);
        assert!(matches!(
            v.check(&longer),
            Outcome::Corrupt {
                seq: 1,
                mismatch: Mismatch::Size { got: 101, .. }
            }
        ));
        assert!(matches!(v.check(&[]), Outcome::Corrupt { seq: 2, .. }));
    }

    #[test]
    fn wrong_seed_is_corrupt() {
        let sent = params(1, 64, 64);
        let mut v = Verifier::new(params(2, 64, 64));
        assert!(matches!(
            v.check(&sent.message(0)),
            Outcome::Corrupt {
                seq: 0,
                mismatch: Mismatch::Byte { offset: 12, .. }
            }
        ));
    }

    #[test]
    fn tail_loss_is_counted_at_finish() {
        let p = params(1, 1, 10);
        let mut v = Verifier::new(p);
        run(&mut v, &p, &[0, 1, 2]);
        assert_eq!(v.finish(10), Some(Outcome::Lost { first: 3, count: 7 }));
        assert_eq!(v.counts().lost, 7);
        assert_eq!(v.counts().verified, 3);
    }

    #[test]
    fn garbage_never_panics() {
        let p = params(1, 1, 64);
        let mut v = Verifier::new(p);
        let mut state = 99u64;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|_| splitmix64(&mut state) as u8).collect();
            let _ = v.check(&junk);
        }
        let mut huge_seq = vec![0xffu8; 32];
        huge_seq[8..12].copy_from_slice(&32u32.to_le_bytes());
        let _ = v.check(&huge_seq);
    }
}
