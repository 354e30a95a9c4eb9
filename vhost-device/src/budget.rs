//! The `max_channels` limit of one VM, shared by the engines of all its
//! queue pairs (SPEC §1.4: the limit counts the channels of every pair):
//! an atomic count that an engine takes a slot from before a channel
//! enters its table and gives back when the channel leaves it. Owns only
//! the count; which OPEN is refused, and how, is the engine's business.

use std::sync::atomic::{AtomicU32, Ordering};

/// Slots for channels, `max` in all.
#[derive(Debug)]
pub struct ChannelBudget {
    max: u32,
    used: AtomicU32,
}

impl ChannelBudget {
    /// A budget of `max` channels, none taken.
    pub fn new(max: u32) -> ChannelBudget {
        ChannelBudget {
            max,
            used: AtomicU32::new(0),
        }
    }

    /// Takes one slot; false (nothing taken) when all `max` are taken.
    /// Two engines racing for the last slot: exactly one gets it.
    pub fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `n` slots (channels that left a table).
    pub fn release(&self, n: u32) {
        // Saturating: a release without a take is a bug, not a wrap-around
        // that would disable the limit.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Slots taken.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn takes_up_to_max_and_gives_back() {
        let b = ChannelBudget::new(2);
        assert!(b.try_take());
        assert!(b.try_take());
        assert!(!b.try_take());
        assert_eq!(b.used(), 2);
        b.release(1);
        assert!(b.try_take());
        b.release(5);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn racing_threads_never_exceed_max() {
        let b = Arc::new(ChannelBudget::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.try_take()).count())
            })
            .collect();
        let won: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(won, 1000);
        assert_eq!(b.used(), 1000);
    }
}
