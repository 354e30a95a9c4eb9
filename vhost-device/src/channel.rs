//! One channel's state: its host socket, credit both ways, sequence
//! numbers, the bounded queue of guest messages waiting for the host socket,
//! and the close handshake flags. Pure state and small helpers; the device
//! (`device.rs`) drives the transitions.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use kt_proto::{RecvCredit, SendCredit};

use crate::seqpacket::SeqPacket;
use crate::stats::{Counters, Opener};

/// Where a channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Device sent OPEN for a host connection; waiting for OPEN_OK/OPEN_ERR.
    Opening,
    /// Both ways open (until a CLOSE is sent or received).
    Open,
}

/// A channel between a guest endpoint and a host socket.
#[derive(Debug)]
pub struct Channel {
    /// Service name.
    pub service: String,
    /// Which side opened it.
    pub opener: Opener,
    /// Life-cycle state.
    pub state: State,
    /// The host connection; `None` once the host side is gone.
    pub sock: Option<SeqPacket>,
    /// epoll events currently registered for `sock` (0 = not registered).
    pub registered: u32,
    /// The host socket may have input: it is not polled for input until a
    /// receive returns `WouldBlock`.
    pub readable: bool,
    /// The host hung up: the fd is out of epoll for good; what is left in
    /// it is read, then the channel closes.
    pub hup: bool,
    /// The host closed without reading everything the guest sent (the
    /// kernel said `ECONNRESET` or `EPIPE`): later guest data is discarded
    /// and the final CLOSE carries `KT_ERR_CONNRESET`, after the host's
    /// remaining messages.
    pub host_unread: bool,
    /// Whether the channel is queued for the rx scheduler.
    pub in_ready: bool,
    /// Host input waits for guest credit.
    pub stalled: bool,
    /// Size of the host message that waits for credit.
    pub stall_need: u32,
    /// Credit towards the guest (host → guest data).
    pub send: SendCredit,
    /// Credit we grant the guest (guest → host data).
    pub recv: RecvCredit,
    /// Next DATA seq we send to the guest.
    pub tx_seq: u32,
    /// Next DATA seq expected from the guest.
    pub rx_seq: u32,
    /// Guest messages not yet accepted by the host socket (bounded by the
    /// credit granted: at most `recv.buf_alloc` credit bytes).
    pub pending: VecDeque<Vec<u8>>,
    /// We sent CLOSE.
    pub sent_close: bool,
    /// The guest sent CLOSE.
    pub recv_close: bool,
    /// A CREDIT_UPDATE is queued towards the guest.
    pub update_queued: bool,
    /// A host-opened channel waiting for the guest's answer fails its host
    /// connection with `ERR 110` at this time.
    pub open_deadline: Option<Instant>,
    /// Counters shown by `stats`.
    pub counters: Arc<Counters>,
}

impl Channel {
    /// A new channel over `sock` granting the guest `window` credit bytes.
    pub fn new(
        service: &str,
        opener: Opener,
        state: State,
        sock: SeqPacket,
        window: u32,
        peer_buf_alloc: u32,
        counters: Arc<Counters>,
    ) -> Channel {
        Channel {
            service: service.to_owned(),
            opener,
            state,
            sock: Some(sock),
            registered: 0,
            readable: false,
            hup: false,
            host_unread: false,
            in_ready: false,
            stalled: false,
            stall_need: 0,
            send: SendCredit::new(peer_buf_alloc),
            recv: RecvCredit::new(window),
            tx_seq: 0,
            rx_seq: 0,
            pending: VecDeque::new(),
            sent_close: false,
            recv_close: false,
            update_queued: false,
            open_deadline: None,
            counters,
        }
    }

    /// Whether host input should be read and forwarded to the guest.
    pub fn wants_host_input(&self) -> bool {
        self.state == State::Open && !self.sent_close && !self.recv_close && self.sock.is_some()
    }

    /// The epoll events the channel needs now. An open channel's socket
    /// stays registered for hang-up (`EPOLLRDHUP`; `EPOLLHUP`/`EPOLLERR`
    /// are always reported) even while its input waits for guest credit or
    /// rx buffers, so a host close is seen at once whatever else is going
    /// on; `EPOLLIN` only while input is wanted and not already known.
    pub fn wanted_events(&self) -> u32 {
        if self.sock.is_none() || self.hup || self.state != State::Open {
            return 0;
        }
        let mut ev = libc::EPOLLRDHUP as u32;
        if self.wants_host_input() && !self.readable {
            ev |= libc::EPOLLIN as u32;
        }
        if !self.pending.is_empty() && !self.host_unread {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }

    /// The host closed without reading what the guest sent: from now on
    /// guest data is discarded (its credit returned at once). Returns how
    /// many waiting messages were dropped.
    pub fn host_stopped_reading(&mut self) -> usize {
        self.host_unread = true;
        let n = self.pending.len();
        for m in self.pending.drain(..) {
            self.recv.on_consume(m.len() as u32);
        }
        n
    }

    /// Whether the channel can be forgotten: both CLOSEs exchanged (ours is
    /// sent only once nothing is left for the host, or the host is gone).
    pub fn finished(&self) -> bool {
        self.sent_close && self.recv_close
    }
}
