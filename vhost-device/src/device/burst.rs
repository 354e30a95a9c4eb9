//! Guest → host bursts: consecutive accepted DATA messages of one channel
//! taken in one tx pass are sent with one `sendmmsg`, straight from guest
//! memory; their chains go back to the guest only after that, so the
//! guest cannot reuse a buffer the kernel has not read yet.

use std::os::fd::AsFd;

use super::tx::count_to_host;
use super::*;
use crate::chain::TxMsg;
use crate::iov::{send_guest_many, GuestBytes, IOV_MAX};

/// Most messages one burst (one `sendmmsg`) carries.
pub const BURST_MAX: usize = 32;

/// Accepted DATA messages of one channel waiting to be sent together.
#[derive(Debug, Default)]
pub(super) struct Burst<'m> {
    id: u32,
    msgs: Vec<GuestBytes<'m>>,
    heads: Vec<u16>,
}

impl<'m> Burst<'m> {
    /// Whether `msg` can go in a burst (its payload fits one iovec list).
    pub fn takes(msg: &TxMsg<'_>) -> bool {
        msg.payload.segments() <= IOV_MAX
    }

    /// Whether a message of channel `id` can join this burst (it is empty,
    /// or of the same channel and not full).
    pub fn continues(&self, id: u32) -> bool {
        self.msgs.is_empty() || (self.id == id && self.msgs.len() < BURST_MAX)
    }

    /// Adds an accepted message and its chain's head.
    pub fn push(&mut self, id: u32, payload: GuestBytes<'m>, head: u16) {
        self.id = id;
        self.msgs.push(payload);
        self.heads.push(head);
    }
}

impl Device {
    /// Sends what `burst` holds and returns its chains to the guest; false
    /// if the used ring failed.
    pub(super) fn flush_burst(&mut self, burst: &mut Burst<'_>, q: &mut Queue, mem: &Mem) -> bool {
        if burst.msgs.is_empty() {
            return true;
        }
        let id = burst.id;
        if burst.msgs.len() == 1 {
            if let Some(m) = burst.msgs.pop() {
                self.deliver(id, m);
            }
        } else {
            self.deliver_many(id, &burst.msgs);
        }
        burst.msgs.clear();
        for head in burst.heads.drain(..) {
            if let Err(e) = q.add_used(mem, head, 0) {
                self.malformed(None, &format_args!("tx used ring: {e}"));
                return false;
            }
        }
        true
    }

    /// `deliver` for several messages of one channel: one `sendmmsg` when
    /// the socket has nothing queued before them; the ones it does not take
    /// are queued as copies (and a failure is handled as for one message).
    fn deliver_many(&mut self, id: u32, msgs: &[GuestBytes<'_>]) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let direct = ch.state == State::Open && !ch.host_unread && ch.pending.is_empty();
        let Some(sock) = ch.sock.as_ref().filter(|_| direct) else {
            for m in msgs {
                self.deliver(id, m.clone());
            }
            return;
        };
        let (sent, err) = send_guest_many(sock.as_fd(), msgs);
        for m in &msgs[..sent] {
            let len = m.len() as u64;
            ch.recv.on_consume(len as u32);
            count_to_host(&self.stats, ch, len);
        }
        if let Some(e) = err {
            // Queued like any unsent message, so the failure handling
            // returns or drops their credit as before.
            for m in &msgs[sent..] {
                ch.pending.push_back(m.to_vec());
            }
            if e.kind() != io::ErrorKind::WouldBlock {
                self.host_send_failed(id, e);
                return;
            }
        }
        self.after_host_writes(id);
    }
}
