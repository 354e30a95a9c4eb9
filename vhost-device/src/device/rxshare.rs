//! Each channel's share of the rx ring (issue 11, channel fairness).
//!
//! The rx ring is one FIFO for every channel of a pair: a channel that
//! floods the guest fills all of its free buffers, and a reply for another
//! channel then waits behind up to a ring of flood messages that the
//! driver has to take first. This file keeps, for each used rx entry the
//! driver has not consumed yet, the channel it went to, and tells the
//! engine when a channel holds its share so that its data waits (in the
//! host socket, within the guest's credit) while the others go ahead.
//!
//! What the driver consumed is read from its avail index: the driver takes
//! used entries in order and posts one buffer back for each it consumed
//! (SPEC §1.2 asks it to), so every step of the avail index past the first one seen
//! retires the oldest entry. A driver that posts fewer (refill failed) only
//! makes the estimate stricter until it posts them; one that posts more
//! retires entries early. Either way the queue never holds more entries
//! than the ring has buffers.
//!
//! The share only applies while the ring is contended: another channel
//! had data delivered within [`CONTENDED`]. One channel alone gets the
//! whole ring, so a single stream's rate is not cut.

use std::collections::{HashMap, VecDeque};
use std::num::Wrapping;
use std::time::{Duration, Instant};

/// How long after the last delivery of data to another channel a channel
/// is held to its share.
pub const CONTENDED: Duration = Duration::from_millis(20);
/// Lowest share, in buffers, whatever the ring size.
pub const MIN_SHARE: usize = 8;
/// The owner recorded for a used entry that carried no channel's data.
const NO_CHANNEL: u32 = u32::MAX;

/// The rx ring's un-consumed used entries by channel.
#[derive(Debug, Default)]
pub struct RxShare {
    /// A channel's share is 1/`divisor` of the ring (1: all of it).
    divisor: u16,
    /// Owner of each used entry not consumed yet, oldest first.
    fifo: VecDeque<u32>,
    /// Entries per owner in `fifo` (owners with none are absent).
    held: HashMap<u32, usize>,
    /// The driver's avail index when last looked at.
    avail: Option<Wrapping<u16>>,
    /// The channel data was last delivered to.
    last: Option<u32>,
    /// When data last went to a different channel than just before.
    switched: Option<Instant>,
    /// Buffers in the ring (its size); 0 until known.
    ring: usize,
}

impl RxShare {
    /// No entries yet; a channel's share will be 1/`divisor` of the ring.
    pub fn new(divisor: u16) -> RxShare {
        RxShare {
            divisor: divisor.max(1),
            ..RxShare::default()
        }
    }

    /// Starts over (the driver reset the device or the queue restarted).
    pub fn reset(&mut self) {
        *self = RxShare::new(self.divisor);
    }

    /// Takes the driver's avail index: every step since the last look
    /// retires one consumed entry, oldest first. `ring` is the queue size.
    pub fn observe(&mut self, avail: Wrapping<u16>, ring: u16) {
        self.ring = usize::from(ring);
        let Some(prev) = self.avail.replace(avail) else {
            return;
        };
        let mut n = usize::from((avail - prev).0);
        while n > 0 {
            let Some(owner) = self.fifo.pop_front() else {
                break;
            };
            self.forget(owner);
            n -= 1;
        }
    }

    /// Records one used entry that carried `owner`'s data.
    pub fn record_data(&mut self, owner: u32, now: Instant) {
        self.record(owner);
        if self.last.is_some_and(|id| id != owner) {
            self.switched = Some(now);
        }
        self.last = Some(owner);
    }

    /// Records one used entry that carried no channel's data: a control
    /// message or a chain returned unused. It takes a place in the ring
    /// but counts towards no channel's share.
    pub fn record_other(&mut self) {
        self.record(NO_CHANNEL);
    }

    fn record(&mut self, owner: u32) {
        // More un-consumed entries than buffers: the driver reposted more
        // than it consumed or the avail index jumped; the oldest are gone.
        if self.ring > 0 && self.fifo.len() >= self.ring {
            if let Some(old) = self.fifo.pop_front() {
                self.forget(old);
            }
        }
        self.fifo.push_back(owner);
        *self.held.entry(owner).or_insert(0) += 1;
    }

    /// Whether `chan` holds its share of a contended ring and its next
    /// message should wait until the driver consumes some of it.
    pub fn over(&self, chan: u32, now: Instant) -> bool {
        let contended = self
            .switched
            .is_some_and(|at| now.saturating_duration_since(at) < CONTENDED);
        contended && self.held(chan) >= self.share()
    }

    /// When the ring stops counting as contended, unless data goes to
    /// another channel before then.
    pub fn contended_until(&self) -> Option<Instant> {
        self.switched.map(|at| at + CONTENDED)
    }

    /// Entries one channel may hold while the ring is contended.
    pub fn share(&self) -> usize {
        (self.ring / usize::from(self.divisor)).max(MIN_SHARE)
    }

    /// Un-consumed entries recorded for `owner`.
    pub fn held(&self, owner: u32) -> usize {
        self.held.get(&owner).copied().unwrap_or(0)
    }

    fn forget(&mut self, owner: u32) {
        if let Some(c) = self.held.get_mut(&owner) {
            *c -= 1;
            if *c == 0 {
                self.held.remove(&owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(owner: u32, n: usize, ring: u16, now: Instant) -> RxShare {
        let mut s = RxShare::new(8);
        s.observe(Wrapping(ring), ring);
        for _ in 0..n {
            s.record_data(owner, now);
        }
        s
    }

    #[test]
    fn a_channel_alone_has_the_whole_ring() {
        let now = Instant::now();
        let s = filled(7, 200, 256, now);
        assert_eq!(s.held(7), 200);
        assert!(!s.over(7, now));
        assert!(!s.over(7, now + Duration::from_secs(1)));
    }

    #[test]
    fn a_flood_is_held_to_its_share_while_another_channel_is_served() {
        let now = Instant::now();
        let mut s = filled(7, 40, 256, now);
        s.record_data(9, now);
        assert_eq!(s.share(), 32);
        assert!(s.over(7, now), "40 held of a share of 32");
        assert!(!s.over(9, now));
        // The driver consumes 10 (posts 10 buffers back): 30 of 7's left.
        s.observe(Wrapping(256 + 10), 256);
        assert_eq!(s.held(7), 30);
        assert!(!s.over(7, now));
        // Long after the other channel's last message the ring is 7's again.
        let later = now + CONTENDED * 2;
        s.record_data(7, later);
        s.record_data(7, later);
        s.record_data(7, later);
        assert!(s.over(7, later), "7 just took over from 9");
        assert!(!s.over(7, later + CONTENDED * 2));
    }

    #[test]
    fn consumption_follows_the_avail_index_across_its_wrap() {
        let now = Instant::now();
        let mut s = RxShare::new(8);
        s.observe(Wrapping(65530), 256);
        for i in 0..10 {
            s.record_data(i % 2, now);
        }
        s.observe(Wrapping(4), 256); // 10 steps past 65530
        assert_eq!(s.held(0) + s.held(1), 0);
        assert!(s.fifo.is_empty() && s.held.is_empty());
    }

    #[test]
    fn a_driver_that_reposts_more_than_it_consumed_cannot_grow_the_queue() {
        let now = Instant::now();
        let mut s = filled(3, 300, 16, now);
        assert_eq!(s.fifo.len(), 16);
        assert_eq!(s.held(3), 16);
        // An avail index that jumps far retires everything, no more.
        s.observe(Wrapping(16 + 40_000), 16);
        assert_eq!(s.held(3), 0);
        // Small rings still get a usable share.
        assert_eq!(s.share(), MIN_SHARE);
    }

    #[test]
    fn control_messages_count_but_do_not_make_the_ring_contended() {
        let now = Instant::now();
        let mut s = filled(7, 40, 256, now);
        s.record_other();
        s.record_other();
        assert_eq!(s.held(9), 0);
        assert_eq!(s.held(NO_CHANNEL), 2);
        assert!(!s.over(7, now + CONTENDED * 2));
        s.reset();
        assert_eq!(s.held(7), 0);
        assert!(!s.over(7, now));
    }
}
