//! The ledger of `kt soak`: how one echoed test stream is settled when it
//! ends (completely, cut off by a channel failure, or stalled), the totals
//! ([`Tally`]) both ends print as a `KT-SOAK` line, and the parser that lets
//! a test add up the lines of many processes. Pure: no I/O.
//!
//! Every message a stream tried to send ends in exactly one class:
//!
//! * `delivered`: its echo came back intact, in order;
//! * `refused`: `write()` failed with an error, or the message was in flight
//!   when the channel failed with an error (reset, peer closed) that the
//!   sender saw: the transport said so, nothing was silently dropped;
//! * `lost`: a later message's echo came back but this one's never did, or
//!   the channel went quiet (no echo, no error) for the stall timeout;
//! * `reordered`: its echo came back after a later one's;
//! * `corrupt`: something came back in its place that is not it.
//!
//! So `delivered + refused + lost + reordered + corrupt == sent`.
//! `duplicated` counts echoes that arrived a second time (not a class of
//! sent messages). A clean run has `lost`, `reordered`, `duplicated`,
//! `corrupt` and `stalls` all 0.

use std::fmt;

use crate::traffic::Counts;

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every message sent was answered (or the stream was cut short by a
    /// stop request after its last answer).
    Complete,
    /// The channel failed with an error the sender saw.
    Failed,
    /// Nothing arrived for the stall timeout while messages were in flight,
    /// and the channel reported no error.
    Stalled,
}

/// Totals of one or more streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages handed to `write()`/`send()`.
    pub sent: u64,
    /// Echoed back intact, in order.
    pub delivered: u64,
    /// Refused with an error (write error, or in flight at a channel failure).
    pub refused: u64,
    /// Never echoed although later ones were, or in flight at a stall.
    pub lost: u64,
    /// Echoed after a later message.
    pub reordered: u64,
    /// Echoes that arrived twice.
    pub duplicated: u64,
    /// Echoes that did not match the message.
    pub corrupt: u64,
    /// Streams run (one channel each).
    pub streams: u64,
    /// Streams that ended with a channel failure.
    pub failed: u64,
    /// Streams that stalled.
    pub stalls: u64,
}

/// The key of each field in the `KT-SOAK` line, in print order.
pub const KEYS: [&str; 10] = [
    "sent",
    "delivered",
    "refused",
    "lost",
    "reordered",
    "duplicated",
    "corrupt",
    "streams",
    "failed",
    "stalls",
];

/// A `KT-SOAK` line that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TallyParseError {
    /// A `key=value` field's value is not a number.
    #[error("{key}={value:?}: not a number")]
    NotANumber {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A field is missing.
    #[error("no {0}= field")]
    Missing(&'static str),
}

impl Tally {
    /// The fields in the order of [`KEYS`].
    pub fn fields(&self) -> [u64; 10] {
        [
            self.sent,
            self.delivered,
            self.refused,
            self.lost,
            self.reordered,
            self.duplicated,
            self.corrupt,
            self.streams,
            self.failed,
            self.stalls,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 10] {
        [
            &mut self.sent,
            &mut self.delivered,
            &mut self.refused,
            &mut self.lost,
            &mut self.reordered,
            &mut self.duplicated,
            &mut self.corrupt,
            &mut self.streams,
            &mut self.failed,
            &mut self.stalls,
        ]
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Tally) {
        for (a, b) in self.fields_mut().into_iter().zip(other.fields()) {
            *a = a.saturating_add(b);
        }
    }

    /// Whether every sent message is in exactly one class.
    pub fn balanced(&self) -> bool {
        self.delivered + self.refused + self.lost + self.reordered + self.corrupt == self.sent
    }

    /// Whether nothing was lost, reordered, duplicated or damaged, and no
    /// stream stalled.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.reordered == 0
            && self.duplicated == 0
            && self.corrupt == 0
            && self.stalls == 0
    }

    /// Settles one stream: `sent` messages were handed to the channel, of
    /// which `write_refused` (0 or 1: the write that failed) never left;
    /// `counts` is what the verifier made of the echoes; `end` how the stream
    /// ended. Messages sent but neither answered nor passed over are
    /// `refused` after a failure and `lost` after a stall.
    pub fn settle(sent: u64, write_refused: u64, counts: &Counts, end: End) -> Tally {
        let sent_ok = sent.saturating_sub(write_refused);
        // Every position the verifier has passed is verified, lost, late
        // (reordered) or corrupt; the rest of what left is the tail.
        let passed = counts.verified + counts.lost + counts.reordered + counts.corrupt;
        let tail = sent_ok.saturating_sub(passed);
        let mut t = Tally {
            sent,
            delivered: counts.verified,
            refused: write_refused,
            lost: counts.lost,
            reordered: counts.reordered,
            duplicated: counts.duplicate,
            corrupt: counts.corrupt,
            streams: 1,
            ..Tally::default()
        };
        match end {
            // A complete stream has no tail; if one is left it was lost.
            End::Complete => t.lost += tail,
            End::Failed => {
                t.refused += tail;
                t.failed = 1;
            }
            End::Stalled => {
                t.lost += tail;
                t.stalls = 1;
            }
        }
        t
    }

    /// Reads the `key=value` fields of a `KT-SOAK` line (other words are
    /// ignored; every field of a tally must be there).
    pub fn parse(line: &str) -> Result<Tally, TallyParseError> {
        let mut t = Tally::default();
        let mut seen = [false; 10];
        for word in line.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let Some(i) = KEYS.iter().position(|k| *k == key) else {
                continue;
            };
            let v: u64 = value.parse().map_err(|_| TallyParseError::NotANumber {
                key: key.to_string(),
                value: value.to_string(),
            })?;
            *t.fields_mut()[i] = v;
            seen[i] = true;
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(TallyParseError::Missing(KEYS[i]));
        }
        Ok(t)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in KEYS.iter().zip(self.fields()).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// One 64-bit mixing step (SplitMix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of stream `stream` of channel `channel` in a run seeded with
/// `base`: distinct streams get unrelated seeds, so a message that reaches
/// the wrong channel or stream is caught as corrupt.
pub fn stream_seed(base: u64, channel: u32, stream: u64) -> u64 {
    mix(mix(base ^ u64::from(channel).rotate_left(48)) ^ stream)
}

/// A stream length in `min..=max` drawn from the stream's seed.
pub fn stream_len(seed: u64, min: u64, max: u64) -> u64 {
    let (lo, hi) = (min.min(max), min.max(max));
    let span = hi - lo;
    if span == u64::MAX {
        return mix(seed);
    }
    lo + mix(seed ^ 0x57ea_11e1) % (span + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{Params, Verifier};

    fn echo(v: &mut Verifier, p: &Params, seqs: &[u64]) {
        for &s in seqs {
            v.check(&p.message(s));
        }
    }

    #[test]
    fn a_complete_stream_is_all_delivered() {
        let p = Params::new(7, 1, 300).unwrap();
        let mut v = Verifier::new(p);
        echo(&mut v, &p, &[0, 1, 2, 3]);
        let t = Tally::settle(4, 0, &v.counts(), End::Complete);
        assert_eq!((t.sent, t.delivered, t.streams), (4, 4, 1));
        assert!(t.clean() && t.balanced(), "{t}");
    }

    #[test]
    fn a_failure_refuses_the_unanswered_tail_and_the_failed_write() {
        let p = Params::new(7, 1, 300).unwrap();
        let mut v = Verifier::new(p);
        echo(&mut v, &p, &[0, 1]);
        // 5 writes succeeded, the 6th failed: 2 answered, 3 in flight.
        let t = Tally::settle(6, 1, &v.counts(), End::Failed);
        assert_eq!((t.delivered, t.refused, t.lost, t.failed), (2, 4, 0, 1));
        assert!(t.clean() && t.balanced(), "{t}");
    }

    #[test]
    fn gaps_reordering_duplicates_and_stalls_are_not_clean() {
        let p = Params::new(9, 20, 300).unwrap();
        let mut v = Verifier::new(p);
        // 1 skipped, then arrives late; 2 twice; 5 never (stall).
        echo(&mut v, &p, &[0, 2, 1, 2, 3, 4]);
        let t = Tally::settle(6, 0, &v.counts(), End::Stalled);
        assert_eq!(
            (t.delivered, t.reordered, t.duplicated, t.lost, t.stalls),
            (4, 1, 1, 1, 1)
        );
        assert!(t.balanced(), "{t}");
        assert!(!t.clean());
    }

    #[test]
    fn a_complete_stream_with_a_missing_tail_counts_it_lost() {
        let p = Params::new(3, 1, 30).unwrap();
        let mut v = Verifier::new(p);
        echo(&mut v, &p, &[0]);
        let t = Tally::settle(3, 0, &v.counts(), End::Complete);
        assert_eq!((t.delivered, t.lost), (1, 2));
        assert!(t.balanced() && !t.clean());
    }

    #[test]
    fn lines_round_trip_and_add_up() {
        let mut a = Tally {
            sent: 10,
            delivered: 7,
            refused: 3,
            streams: 2,
            failed: 1,
            ..Tally::default()
        };
        let line = format!("KT-SOAK guest/echo: {a}");
        assert_eq!(Tally::parse(&line), Ok(a));
        let b = a;
        a.add(&b);
        assert_eq!((a.sent, a.delivered, a.refused, a.streams), (20, 14, 6, 4));
    }

    #[test]
    fn streams_get_distinct_seeds_and_lengths_in_range() {
        let mut seeds: Vec<u64> = (0..4)
            .flat_map(|c| (0..100).map(move |s| stream_seed(1, c, s)))
            .collect();
        seeds.sort_unstable();
        seeds.dedup();
        assert_eq!(seeds.len(), 400);
        for s in seeds {
            let n = stream_len(s, 5, 9);
            assert!((5..=9).contains(&n), "{n}");
        }
        assert_eq!(stream_len(3, 4, 4), 4);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert_eq!(
            Tally::parse("KT-SOAK x: sent=1"),
            Err(TallyParseError::Missing("delivered"))
        );
        let full = Tally::default().to_string().replace("lost=0", "lost=x");
        assert!(matches!(
            Tally::parse(&full),
            Err(TallyParseError::NotANumber { .. })
        ));
    }
}
