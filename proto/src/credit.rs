//! Credit flow control arithmetic (SPEC §5), shared by both sides.
//!
//! All counters wrap modulo 2^32. `SendCredit` is the sender's view of the
//! peer's window; `RecvCredit` is the receiver's own window. Neither does I/O.

use crate::consts::MSG_OVERHEAD;

/// Credit bytes a message of `msg_len` payload bytes costs.
pub fn cost(msg_len: u32) -> u32 {
    msg_len.saturating_add(MSG_OVERHEAD)
}

/// Exact cost without saturation, for comparisons.
fn cost_exact(msg_len: u32) -> u64 {
    u64::from(msg_len) + u64::from(MSG_OVERHEAD)
}

/// The sending side's view of a channel's credit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendCredit {
    /// Credit bytes sent so far (wrapping).
    pub tx_cnt: u32,
    /// The peer's last advertised window.
    pub peer_buf_alloc: u32,
    /// The peer's last advertised freed credit (wrapping).
    pub peer_fwd_cnt: u32,
}

impl SendCredit {
    /// A fresh channel whose peer advertised `peer_buf_alloc`.
    pub fn new(peer_buf_alloc: u32) -> SendCredit {
        SendCredit {
            tx_cnt: 0,
            peer_buf_alloc,
            peer_fwd_cnt: 0,
        }
    }

    /// Credit bytes in flight (sent but not yet freed by the peer).
    pub fn in_flight(&self) -> u32 {
        self.tx_cnt.wrapping_sub(self.peer_fwd_cnt)
    }

    /// Credit bytes that may still be sent.
    pub fn available(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.in_flight())
    }

    /// Whether a message of `msg_len` payload bytes may be sent now.
    pub fn can_send(&self, msg_len: u32) -> bool {
        u64::from(self.in_flight()) + cost_exact(msg_len) <= u64::from(self.peer_buf_alloc)
    }

    /// Records that a message of `msg_len` bytes was sent.
    pub fn on_send(&mut self, msg_len: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(cost(msg_len));
    }

    /// Records the peer's advertisement from any header it sent.
    pub fn on_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }
}

/// A message arrived that the receiver had not granted credit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message costing {cost} credit bytes exceeds the {available} granted")]
pub struct CreditError {
    /// What the message costs.
    pub cost: u32,
    /// What was still granted.
    pub available: u32,
}

/// The receiving side's own window for a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvCredit {
    /// The window this side advertises.
    pub buf_alloc: u32,
    /// Credit bytes freed by this side's reader so far (wrapping).
    pub fwd_cnt: u32,
    /// Credit bytes received and not yet consumed.
    pub in_flight: u32,
    /// `fwd_cnt` at the last advertisement sent.
    pub last_advertised: u32,
}

impl RecvCredit {
    /// A fresh window of `buf_alloc` credit bytes.
    pub fn new(buf_alloc: u32) -> RecvCredit {
        RecvCredit {
            buf_alloc,
            ..RecvCredit::default()
        }
    }

    /// Accounts for an arriving message; refuses one over granted credit.
    ///
    /// The peer may only rely on what was advertised, but the receiver keeps
    /// the whole window available, so this checks against `buf_alloc`.
    pub fn on_receive(&mut self, msg_len: u32) -> Result<(), CreditError> {
        let available = self.buf_alloc.saturating_sub(self.in_flight);
        if cost_exact(msg_len) > u64::from(available) {
            return Err(CreditError {
                cost: cost(msg_len),
                available,
            });
        }
        self.in_flight += cost(msg_len);
        Ok(())
    }

    /// Accounts for a message the reader consumed.
    pub fn on_consume(&mut self, msg_len: u32) {
        let c = cost(msg_len).min(self.in_flight);
        self.in_flight -= c;
        self.fwd_cnt = self.fwd_cnt.wrapping_add(c);
    }

    /// Whether enough credit was freed since the last advertisement that the
    /// peer should be told (half the window).
    pub fn needs_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_advertised) >= self.buf_alloc / 2
            && self.fwd_cnt != self.last_advertised
    }

    /// Records that the current `fwd_cnt` was advertised to the peer.
    pub fn advertised(&mut self) {
        self.last_advertised = self.fwd_cnt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_stops_at_the_window_and_resumes_on_update() {
        let mut s = SendCredit::new(cost(100) * 2);
        assert!(s.can_send(100));
        s.on_send(100);
        assert!(s.can_send(100));
        s.on_send(100);
        assert!(!s.can_send(0));
        assert_eq!(s.available(), 0);
        s.on_peer(cost(100) * 2, cost(100));
        assert!(s.can_send(100));
        assert!(!s.can_send(101));
    }

    #[test]
    fn counters_wrap() {
        let mut s = SendCredit {
            tx_cnt: u32::MAX - 10,
            peer_buf_alloc: 1000,
            peer_fwd_cnt: u32::MAX - 10,
        };
        s.on_send(100);
        assert_eq!(s.in_flight(), cost(100));
        assert!(s.can_send(1000 - cost(100) - MSG_OVERHEAD));
        assert!(!s.can_send(1000 - cost(100) - MSG_OVERHEAD + 1));
    }

    #[test]
    fn receiver_refuses_overrun_and_advertises_at_half() {
        let mut r = RecvCredit::new(1000);
        r.on_receive(400).unwrap();
        let e = r.on_receive(600).unwrap_err();
        assert_eq!(e.available, 1000 - cost(400));
        assert!(!r.needs_update());
        r.on_consume(400);
        assert_eq!(r.fwd_cnt, cost(400));
        assert!(!r.needs_update());
        r.on_receive(100).unwrap();
        r.on_consume(100);
        assert!(r.needs_update());
        r.advertised();
        assert!(!r.needs_update());
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        assert_eq!(cost(u32::MAX), u32::MAX);
        let s = SendCredit::new(u32::MAX);
        assert!(!s.can_send(u32::MAX));
        let mut r = RecvCredit::new(10);
        assert!(r.on_receive(u32::MAX).is_err());
    }
}
