//! The `max_channels` limit of one VM, shared by the engines of all its
//! queue pairs (SPEC §1.4: the limit counts the channels of every pair):
//! an atomic count that an engine takes a slot from before a channel
//! enters its table and gives back when the channel leaves it. Owns only
//! the count; which OPEN is refused, and how, is the engine's business.
//!
//! Also [`VmBuffer`], the VM's budget on guest data the device holds
//! (`--vm-buffer`): the sum of the windows (`buf_alloc`) it grants the
//! guest's channels, shared the same way. Enforced through credit only: a
//! channel's window is sized from it when the channel opens and resized as
//! the channel's host socket drains (never below what was granted).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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

/// The VM-wide budget on guest → host data the device may hold: the sum
/// of the channels' windows stays within `budget`, except that every
/// channel always has at least one largest message's worth (`min_window`)
/// so none can deadlock.
#[derive(Debug)]
pub struct VmBuffer {
    budget: u64,
    channel_buffer: u32,
    min_window: u32,
    /// Sum of the windows granted (`buf_alloc` of every channel).
    granted: AtomicU64,
    /// Credit bytes of guest messages accepted and not yet taken by the
    /// host sockets (the data the device holds).
    held: AtomicU64,
    /// Channels holding a window.
    channels: AtomicU32,
}

impl VmBuffer {
    /// A budget of `budget` credit bytes for windows of at most
    /// `channel_buffer` and at least `min_window` each.
    pub fn new(budget: u64, channel_buffer: u32, min_window: u32) -> VmBuffer {
        let min_window = min_window.max(1);
        VmBuffer {
            budget,
            channel_buffer: channel_buffer.max(min_window),
            min_window,
            granted: AtomicU64::new(0),
            held: AtomicU64::new(0),
            channels: AtomicU32::new(0),
        }
    }

    /// No VM-wide limit: every window is `channel_buffer` (messages cost
    /// up to `min_window`).
    pub fn unlimited(channel_buffer: u32, min_window: u32) -> VmBuffer {
        VmBuffer::new(u64::MAX, channel_buffer, min_window)
    }

    /// The budget, or `None` without a VM-wide limit.
    pub fn limit(&self) -> Option<u64> {
        (self.budget != u64::MAX).then_some(self.budget)
    }

    /// The smallest window a channel gets.
    pub fn min_window(&self) -> u32 {
        self.min_window
    }

    /// Sum of the windows granted now.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Acquire)
    }

    /// Credit bytes of guest data held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// A channel's fair share with `n` channels open.
    fn share(&self, n: u32) -> u32 {
        let share = self.budget / u64::from(n.max(1));
        share.clamp(u64::from(self.min_window), u64::from(self.channel_buffer)) as u32
    }

    /// Takes up to `want` bytes of budget (at least `floor`, over the
    /// budget if need be); returns what was taken.
    fn take(&self, want: u32, floor: u32) -> u32 {
        let mut got = floor;
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                let left = self.budget.saturating_sub(g);
                got = u64::from(want).min(left).max(u64::from(floor)) as u32;
                Some(g + u64::from(got))
            });
        got
    }

    fn give_back(&self, n: u64) {
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                Some(g.saturating_sub(n))
            });
    }

    /// A new channel's window: `channel_buffer` without a VM-wide limit,
    /// else one largest message (`min_window`), which grows towards the
    /// channel's fair share as its host socket takes data
    /// ([`VmBuffer::resize`]): a channel whose host never reads holds no
    /// more than that. Give it back with [`VmBuffer::close`].
    pub fn open(&self) -> u32 {
        self.channels.fetch_add(1, Ordering::AcqRel);
        if self.budget == u64::MAX {
            self.take(self.channel_buffer, self.channel_buffer)
        } else {
            self.take(self.min_window, self.min_window)
        }
    }

    /// A channel with window `window` holding `held` credit bytes left.
    pub fn close(&self, window: u32, held: u32) {
        let _ = self
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(1))
            });
        self.give_back(u64::from(window));
        self.release_held(held);
    }

    /// Guest data accepted.
    pub fn hold(&self, n: u32) {
        self.held.fetch_add(u64::from(n), Ordering::AcqRel);
    }

    /// Guest data taken by a host socket (or discarded).
    pub fn release_held(&self, n: u32) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(u64::from(n)))
            });
    }

    /// The new window of a channel whose window is `window` and whose host
    /// socket just took `freed` credit bytes: above its fair share it
    /// shrinks by at most `freed` (so what was granted, `fwd_cnt` +
    /// `buf_alloc`, never goes back), below it grows by what the budget has
    /// left.
    pub fn resize(&self, window: u32, freed: u32) -> u32 {
        let n = self.channels.load(Ordering::Acquire);
        let share = self.share(n);
        if window > share {
            let cut = freed.min(window - share);
            self.give_back(u64::from(cut));
            window - cut
        } else if window < share {
            window + self.take(share - window, 0)
        } else {
            window
        }
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

    #[test]
    fn windows_share_the_budget_and_never_fall_below_one_message() {
        let b = VmBuffer::new(1000, 400, 100);
        // Every channel starts at one message.
        for _ in 0..4 {
            assert_eq!(b.open(), 100);
        }
        assert_eq!(b.granted(), 400);
        // Four channels: share 250; one that drains grows to it.
        assert_eq!(b.resize(100, 10), 250);
        assert_eq!(b.resize(100, 10), 250);
        assert_eq!(b.granted(), 700);
        assert_eq!(b.resize(100, 10), 250);
        assert_eq!(b.resize(100, 10), 250);
        assert_eq!(b.granted(), 1000);
        // A fifth: over budget by at most one message.
        assert_eq!(b.open(), 100);
        assert_eq!(b.granted(), 1100);
        // Share now 200: below it, a window grows only into what is left
        // (nothing)...
        assert_eq!(b.resize(100, 10), 100);
        // ... above it, it shrinks by at most what was freed.
        assert_eq!(b.resize(250, 30), 220);
        assert_eq!(b.resize(220, 500), 200);
        assert_eq!(b.granted(), 1050);
        // Three close; the two left (share 500, capped at 400) grow into
        // what is left.
        b.close(250, 0);
        b.close(250, 0);
        b.close(100, 0);
        assert_eq!(b.granted(), 450);
        assert_eq!(b.resize(250, 1), 400);
        assert_eq!(b.resize(200, 1), 400);
        assert_eq!(b.granted(), 800);
    }

    #[test]
    fn held_bytes_are_counted_and_released() {
        let b = VmBuffer::new(1000, 400, 100);
        let w = b.open();
        b.hold(300);
        b.hold(50);
        assert_eq!(b.held(), 350);
        b.release_held(50);
        b.close(w, 300);
        assert_eq!((b.held(), b.granted()), (0, 0));
    }

    #[test]
    fn unlimited_gives_every_channel_its_buffer() {
        let b = VmBuffer::unlimited(4096, 1024);
        for _ in 0..100 {
            assert_eq!(b.open(), 4096);
        }
        assert_eq!(b.limit(), None);
        assert_eq!(b.resize(4096, 4096), 4096);
    }
}
