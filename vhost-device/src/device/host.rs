//! Host socket I/O of open channels: epoll interest per channel, host
//! events, hang-ups, and taking host messages within the guest's credit.

use super::*;

/// What one attempt to take a host message gave.
#[derive(Debug)]
pub(super) enum HostRead {
    /// A whole message.
    Msg(Vec<u8>),
    /// A message of this many bytes is waiting but the guest lacks credit
    /// for it.
    Stall(u32),
    /// Nothing to read now.
    WouldBlock,
    /// The host closed the connection.
    Eof,
    /// A message over `max_msg_size` (its length).
    TooBig(usize),
    /// A socket error.
    Failed(io::Error),
}

/// Takes one message from `sock` if `credit` allows. With room for the
/// largest message it receives directly (one system call); otherwise it
/// peeks the size first so a message is never taken without credit.
pub(super) fn recv_host(
    sock: &SeqPacket,
    scratch: &mut Vec<u8>,
    credit: &kt_proto::SendCredit,
    max: usize,
) -> HostRead {
    let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
    if credit.can_send(max as u32) {
        if scratch.len() != max + 1 {
            scratch.resize(max + 1, 0);
        }
        return match sock.recv(scratch) {
            Ok(Recv::Msg(n)) if n > max => HostRead::TooBig(n),
            Ok(Recv::Msg(n)) => HostRead::Msg(scratch[..n].to_vec()),
            Ok(Recv::Eof) => HostRead::Eof,
            Err(e) if would_block(&e) => HostRead::WouldBlock,
            Err(e) => HostRead::Failed(e),
        };
    }
    let len = match sock.peek_len() {
        Ok(Recv::Msg(len)) => len,
        Ok(Recv::Eof) => return HostRead::Eof,
        Err(e) if would_block(&e) => return HostRead::WouldBlock,
        Err(e) => return HostRead::Failed(e),
    };
    if len > max {
        return HostRead::TooBig(len);
    }
    if !credit.can_send(len as u32) {
        return HostRead::Stall(len as u32);
    }
    let mut payload = vec![0u8; len];
    match sock.recv(&mut payload) {
        Ok(Recv::Msg(n)) if n == len => HostRead::Msg(payload),
        // The peek said otherwise: never forward a cut message.
        Ok(Recv::Msg(n)) => HostRead::Failed(io::Error::other(format!(
            "message changed size between peek ({len}) and receive ({n})"
        ))),
        Ok(Recv::Eof) => HostRead::Eof,
        Err(e) => HostRead::Failed(e),
    }
}

impl Device {
    pub(super) fn update_interest(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let want = ch.wanted_events();
        if want == ch.registered {
            return;
        }
        let Some(sock) = &ch.sock else {
            return;
        };
        let fd = sock.as_raw_fd();
        let ev = EpollEvent::new(EventSet::from_bits_truncate(want), u64::from(id));
        let r = match (ch.registered, want) {
            (0, _) => self.epoll.ctl(ControlOperation::Add, fd, ev),
            (_, 0) => self.epoll.ctl(ControlOperation::Delete, fd, ev),
            _ => self.epoll.ctl(ControlOperation::Modify, fd, ev),
        };
        match r {
            Ok(()) => ch.registered = want,
            Err(e) => {
                log::warn!("channel {id:#x}: epoll: {e}");
                self.close_from_host(id, ErrorCode::NoMem);
            }
        }
    }

    pub(super) fn push_ready(&mut self, id: u32) {
        if let Some(ch) = self.channels.get_mut(&id) {
            if !ch.in_ready && ch.wants_host_input() {
                ch.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Serves one batch of up to 64 host events (never blocks). The set is
    /// level-triggered: events left over keep the epoll fd readable and
    /// come back in the next pass.
    pub(super) fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("host epoll: {e}");
                    return;
                }
            }
        };
        for ev in &events[..n] {
            let tok = ev.data();
            let set = EventSet::from_bits_truncate(ev.events());
            if tok == LISTENER_TOKEN {
                self.accept_hosts();
            } else if tok == TIMER_TOKEN {
                self.on_timer();
            } else if tok == WAKE_TOKEN {
                // Consumed; the pass this runs in does the work left over.
                let _ = self.wake.read();
                self.wake_pending = false;
            } else if tok & HANDSHAKE_BIT != 0 {
                self.handshake_event(tok);
            } else if let Ok(id) = u32::try_from(tok) {
                self.channel_event(id, set);
            }
        }
    }

    pub(super) fn channel_event(&mut self, id: u32, set: EventSet) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            self.host_hung_up(id);
            return;
        }
        if set.contains(EventSet::IN) {
            ch.readable = true;
            self.push_ready(id);
        }
        if set.contains(EventSet::OUT) {
            self.flush_pending(id);
        }
        self.update_interest(id);
    }

    /// The host closed its connection (or it failed). Registered for
    /// hang-up whatever else the channel waits for, so this runs as soon as
    /// it happens, even while input is paused for credit or rx buffers. The
    /// fd leaves epoll for good; guest data still waiting is written if the
    /// socket takes it; then what the host sent before its close is read
    /// and forwarded (credit permitting) and only then the guest gets CLOSE
    /// (`read_host` at EOF).
    pub(super) fn host_hung_up(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        log::debug!("channel {id:#x} ({:?}): host hung up", ch.service);
        if let Some(sock) = &ch.sock {
            if ch.registered != 0 {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    sock.as_raw_fd(),
                    EpollEvent::new(EventSet::empty(), 0),
                );
            }
        }
        ch.registered = 0;
        ch.hup = true;
        ch.readable = true;
        if !ch.pending.is_empty() {
            self.flush_pending(id);
        }
        match self.channels.get(&id) {
            Some(ch) if ch.wants_host_input() => self.push_ready(id),
            Some(_) => self.close_from_host(id, ErrorCode::ConnReset),
            None => {}
        }
    }

    /// Reads one host message of channel `id` if the guest has credit.
    pub(super) fn read_host(&mut self, id: u32) -> Option<Outgoing> {
        let max = self.params.config.max_msg_size as usize;
        let ch = self.channels.get_mut(&id)?;
        ch.in_ready = false;
        if !ch.wants_host_input() || !ch.readable {
            return None;
        }
        let mut got = recv_host(ch.sock.as_ref()?, &mut self.scratch, &ch.send, max);
        add(
            &self.stats.events.passed_fds_closed,
            ch.sock
                .as_ref()
                .map_or(0, SeqPacket::take_passed_fds_closed),
        );
        let mut stopped_reading = false;
        if matches!(&got, HostRead::Failed(e) if e.raw_os_error() == Some(libc::ECONNRESET)) {
            // The host closed with guest data unread. The kernel says so
            // once; the messages it sent before closing are still queued.
            let n = ch.host_stopped_reading();
            log::debug!(
                "channel {id:#x}: host closed with guest data unread; {n} message(s) dropped"
            );
            stopped_reading = true;
            got = recv_host(ch.sock.as_ref()?, &mut self.scratch, &ch.send, max);
            add(
                &self.stats.events.passed_fds_closed,
                ch.sock
                    .as_ref()
                    .map_or(0, SeqPacket::take_passed_fds_closed),
            );
        }
        let end = if ch.host_unread {
            ErrorCode::ConnReset
        } else {
            ErrorCode::Ok
        };
        if stopped_reading {
            self.queue_credit_update(id, false);
            self.update_interest(id);
        }
        let ch = self.channels.get_mut(&id)?;
        let payload = match got {
            HostRead::Msg(p) => p,
            HostRead::Stall(need) => {
                ch.stall_need = need;
                if !ch.stalled {
                    ch.stalled = true;
                    add(&ch.counters.credit_stalls, 1);
                    add(&self.stats.device.credit_stalls, 1);
                    self.queue_ctrl(Header::new(MsgType::CreditRequest, id), Vec::new(), true);
                }
                return None;
            }
            HostRead::WouldBlock => {
                ch.readable = false;
                if ch.hup {
                    // Hung up and drained without EOF: nothing more comes.
                    self.close_from_host(id, end);
                } else {
                    self.update_interest(id);
                }
                return None;
            }
            HostRead::Eof => {
                self.close_from_host(id, end);
                return None;
            }
            HostRead::TooBig(len) => {
                add(&ch.counters.malformed, 1);
                add(&self.stats.device.malformed, 1);
                log::warn!(
                    "channel {id:#x} ({:?}): host sent a {len}-byte message, max is {max}; closing",
                    ch.service
                );
                self.close_from_host(id, ErrorCode::MsgSize);
                return None;
            }
            HostRead::Failed(e) => {
                log::debug!("channel {id:#x}: host receive: {e}");
                self.close_from_host(id, ErrorCode::ConnReset);
                return None;
            }
        };
        let len = payload.len();
        let len32 = len as u32;
        ch.send.on_send(len32);
        let mut hdr = Header::with_payload(MsgType::Data, id, len32);
        hdr.seq = ch.tx_seq;
        ch.tx_seq = ch.tx_seq.wrapping_add(1);
        hdr.buf_alloc = ch.recv.buf_alloc;
        hdr.fwd_cnt = ch.recv.fwd_cnt;
        ch.recv.advertised();
        add(&ch.counters.msgs_to_guest, 1);
        add(&ch.counters.bytes_to_guest, len as u64);
        add(&self.stats.device.msgs_to_guest, 1);
        add(&self.stats.device.bytes_to_guest, len as u64);
        // Round-robin: back of the queue while it may have more.
        ch.in_ready = true;
        self.ready.push_back(id);
        Some(Outgoing {
            hdr,
            payload,
            off: 0,
            fill: false,
        })
    }
}
