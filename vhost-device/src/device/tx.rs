//! Guest → host: tx chains taken in budgeted passes, each message
//! dispatched by type (OPEN, OPEN_OK/ERR, DATA, CLOSE, credit; LISTEN and
//! UNLISTEN go to `listening.rs`), and the
//! channel's end of life. Writing accepted DATA to host sockets is
//! `burst.rs`.

use super::burst::Burst;
use super::*;
use crate::iov::GuestBytes;

pub(super) fn err_code_for_connect(e: &io::Error) -> ErrorCode {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => ErrorCode::Acces,
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) | Some(libc::EMFILE) | Some(libc::ENFILE) => {
            ErrorCode::NoMem
        }
        _ => ErrorCode::ConnRefused,
    }
}

impl Device {
    pub(super) fn process_tx(
        &mut self,
        q: &mut Queue,
        mem: &Mem,
        n: &mut Notify,
        left: &mut usize,
    ) -> bool {
        let mut progress = false;
        let mut burst = Burst::default();
        loop {
            if self.ctrl.len() >= CTRL_LIMIT {
                break;
            }
            if *left == 0 {
                // Notifications stay off: the wake-up brings us back.
                self.more = true;
                break;
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                if self.polling {
                    // The busy poller watches the ring; kicks stay off.
                    break;
                }
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.malformed(None, &format_args!("tx ring: {e}"));
                        break;
                    }
                }
            };
            let head = chain.head_index();
            *left -= 1;
            progress = true;
            match parse_tx(chain, mem, &self.limits) {
                Ok(msg) if msg.hdr.msg_type == MsgType::Data && Burst::takes(&msg) => {
                    let h = msg.hdr;
                    if !burst.continues(h.channel) && !self.flush_burst(&mut burst, q, mem) {
                        break;
                    }
                    if self.on_tx_header(h) && self.accept_data(h) {
                        // Sent with the burst; the chain goes back then.
                        burst.push(h.channel, msg.payload, head);
                        continue;
                    }
                }
                Ok(msg) => {
                    if !self.flush_burst(&mut burst, q, mem) {
                        break;
                    }
                    self.on_tx(msg);
                }
                Err(e) => {
                    if !self.flush_burst(&mut burst, q, mem) {
                        break;
                    }
                    self.on_tx_error(e);
                }
            }
            if let Err(e) = q.add_used(mem, head, 0) {
                self.malformed(None, &format_args!("tx used ring: {e}"));
                break;
            }
        }
        self.flush_burst(&mut burst, q, mem);
        if progress && Self::signal(q, mem) {
            n.tx = true;
        }
        progress
    }

    pub(super) fn known(&self, id: u32) -> bool {
        self.channels.contains_key(&id)
    }

    pub(super) fn on_tx_error(&mut self, e: TxError) {
        match &e {
            TxError::Semantic { hdr, err } => {
                let (id, t) = (hdr.channel, hdr.msg_type);
                self.malformed(Some(id), &e);
                match (t, err) {
                    (MsgType::Open, DecodeError::BadName(_)) => {
                        self.refuse_open(id, ErrorCode::Inval);
                    }
                    (
                        MsgType::Data,
                        DecodeError::TooLarge { .. } | DecodeError::LengthMismatch { .. },
                    ) if self.known(id) => {
                        self.close_by_device(id, err.error_code());
                    }
                    _ => {}
                }
            }
            TxError::Length { hdr, .. } => {
                let id = hdr.channel;
                self.malformed(Some(id), &e);
                if hdr.msg_type != MsgType::Open && self.known(id) {
                    self.close_by_device(id, ErrorCode::Proto);
                }
            }
            TxError::Chain(_)
            | TxError::Memory(_)
            | TxError::Read(_)
            | TxError::Short(_)
            | TxError::Decode(_) => self.malformed(None, &e),
        }
    }

    pub(super) fn on_tx(&mut self, msg: TxMsg<'_>) {
        let h = msg.hdr;
        let id = h.channel;
        if h.msg_type == MsgType::Open {
            // A name of at most KT_NAME_MAX bytes (checked with the header).
            self.on_open(h, &msg.payload.to_vec());
            return;
        }
        if matches!(h.msg_type, MsgType::Listen | MsgType::Unlisten) {
            if self.pair != 0 {
                // SPEC §1.4: only pair 0's tx queue carries them.
                let pair = self.pair;
                self.malformed(None, &format_args!("{:?} on pair {pair}", h.msg_type));
                return;
            }
            // Channel 0 (checked with the header): no channel to look up.
            self.on_listen_msg(h.msg_type, msg.payload);
            return;
        }
        if !self.on_tx_header(h) {
            return;
        }
        match h.msg_type {
            MsgType::OpenOk => self.on_open_ok(id),
            MsgType::OpenErr => self.on_open_err(id, h.arg),
            MsgType::Data => self.on_data(h, msg.payload),
            MsgType::Close => self.on_close(id),
            MsgType::CreditUpdate => {}
            MsgType::CreditRequest => self.queue_credit_update(id, true),
            MsgType::Open | MsgType::Reset | MsgType::Listen | MsgType::Unlisten => {}
        }
    }

    /// What every non-OPEN header does first: one for an unknown channel is
    /// answered (false); a known channel takes the credit it carries and
    /// may resume host input (true).
    pub(super) fn on_tx_header(&mut self, h: Header) -> bool {
        let id = h.channel;
        let Some(ch) = self.channels.get_mut(&id) else {
            self.on_unknown_channel(h);
            return false;
        };
        // Every header carries the sender's current credit (SPEC §5).
        ch.send.on_peer(h.buf_alloc, h.fwd_cnt);
        // Resume reading only once the waiting message fits: a smaller
        // grant would stall again at once (and count and ask again).
        if ch.stalled && ch.send.can_send(ch.stall_need) {
            ch.stalled = false;
            self.push_ready(id);
        }
        true
    }

    pub(super) fn on_unknown_channel(&mut self, h: Header) {
        match h.msg_type {
            MsgType::Close => {
                // A late CLOSE (we already forgot the channel): no answer.
                log::debug!("CLOSE for unknown channel {:#x} ignored", h.channel);
            }
            MsgType::OpenOk | MsgType::OpenErr if !self.reset_pending => {
                self.malformed(
                    None,
                    &format_args!(
                        "{:?} for channel {:#x} that is not opening",
                        h.msg_type, h.channel
                    ),
                );
            }
            _ => {
                self.malformed(
                    None,
                    &format_args!("{:?} for unknown channel {:#x}", h.msg_type, h.channel),
                );
                let mut c = Header::new(MsgType::Close, h.channel);
                c.arg = ErrorCode::ConnReset as u32;
                self.queue_ctrl(c, Vec::new(), false);
            }
        }
    }

    pub(super) fn log_refusal(&mut self, name: &str, id: u32, why: &dyn std::fmt::Display) {
        if self.refuse_limit.allow() {
            log::warn!(
                "guest {}: refused OPEN {name:?} ({id:#x}): {why}",
                self.params.config.guest_id
            );
        }
    }

    pub(super) fn refuse_open(&mut self, id: u32, code: ErrorCode) {
        add(&self.stats.events.open_refused, 1);
        let mut h = Header::new(MsgType::OpenErr, id);
        h.arg = code as u32;
        self.queue_ctrl(h, Vec::new(), false);
    }

    pub(super) fn on_open(&mut self, h: Header, payload: &[u8]) {
        let id = h.channel;
        if id == CHAN_TRANSPORT || id & CHAN_DEVICE_BIT != 0 || self.known(id) {
            self.malformed(
                None,
                &format_args!("OPEN with id {id:#x} in use or not the driver's"),
            );
            self.refuse_open(id, ErrorCode::Exist);
            return;
        }
        let name = match name::validate(payload) {
            Ok(n) => n.to_owned(),
            Err(e) => {
                self.malformed(None, &format_args!("OPEN {id:#x}: {e}"));
                self.refuse_open(id, ErrorCode::Inval);
                return;
            }
        };
        // max_channels counts the channels of every pair (SPEC §1.4): a
        // slot of the shared budget is taken here and given back unless
        // the channel entered the table.
        if !self.budget.try_take() {
            self.log_refusal(&name, id, &"too many channels");
            self.refuse_open(id, ErrorCode::MFile);
            return;
        }
        self.open_within_budget(h, &name);
        if !self.channels.contains_key(&id) {
            self.budget.release(1);
            self.stats.drop_reservation(self.pair, id);
        }
    }

    /// The rest of a guest OPEN once a slot of the budget is held: a
    /// `kt.*` service, or the policy, the service's own limit and the
    /// connection to the host service.
    fn open_within_budget(&mut self, h: Header, name: &str) {
        let id = h.channel;
        let gid = self.params.config.guest_id;
        let name = name.to_owned();
        if name::is_device_reserved(&name) {
            // kt.*: implemented by the device, never in a policy.
            self.open_device_service(h, &name);
            return;
        }
        let policy = self.policy.get();
        let Some(svc) = policy.get(&name) else {
            self.log_refusal(&name, id, &"not in policy");
            self.refuse_open(id, ErrorCode::NoEnt);
            return;
        };
        if let Some(max) = svc.max_channels {
            // Counted over every pair's channels (the shared stats table),
            // a place held there until the channel opens or is refused.
            if !self.stats.reserve_channel(self.pair, id, &name, max) {
                self.log_refusal(&name, id, &format_args!("service limit of {max} channels"));
                self.refuse_open(id, ErrorCode::MFile);
                return;
            }
        }
        let sock = match SeqPacket::connect(&svc.socket, true) {
            Ok(s) => s,
            Err(e) => {
                let code = err_code_for_connect(&e);
                let why = format!("connect {}: {e}", svc.socket.display());
                self.log_refusal(&name, id, &why);
                self.refuse_open(id, code);
                return;
            }
        };
        let _ = sock.set_send_buffer(2 * (self.params.config.max_msg_size as usize + 4096));
        if svc.identify {
            // The first message of a fresh connection always fits its
            // send buffer; failing to send it refuses the OPEN.
            let hello = handshake::guest_msg(gid, &self.params.vm_name);
            if let Err(e) = sock.send(&hello) {
                let why = format!("identifying the guest to {}: {e}", svc.socket.display());
                self.log_refusal(&name, id, &why);
                self.refuse_open(id, ErrorCode::ConnRefused);
                return;
            }
        }
        self.accept_guest_open(h, &name, sock);
    }

    /// A guest OPEN is accepted: the channel (host end `sock`) goes into
    /// the table, counted, and `OPEN_OK` is queued.
    pub(super) fn accept_guest_open(&mut self, h: Header, name: &str, sock: SeqPacket) {
        let id = h.channel;
        let counters = self
            .stats
            .open_channel_on(self.pair, id, name, Opener::Guest);
        let mut ch = Channel::new(
            name,
            Opener::Guest,
            State::Open,
            sock,
            self.buffer.clone(),
            h.buf_alloc,
            counters,
        );
        ch.send.on_peer(h.buf_alloc, h.fwd_cnt);
        self.channels.insert(id, ch);
        add(&self.stats.events.opened, 1);
        log::debug!(
            "guest {}: channel {id:#x} open to {name:?}",
            self.params.config.guest_id
        );
        self.queue_ctrl(Header::new(MsgType::OpenOk, id), Vec::new(), true);
        self.update_interest(id);
    }

    pub(super) fn on_open_ok(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Err(e) = ch.apply(Event::OpenOk) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            return;
        }
        ch.open_deadline = None;
        let sent = ch.sock.as_ref().map(|s| s.send(&handshake::ok_msg(id)));
        add(&self.stats.events.opened, 1);
        match sent {
            Some(Ok(_)) => {
                log::debug!("channel {id:#x} to guest service {:?} open", ch.service);
                self.update_interest(id);
            }
            _ => self.close_from_host(id, ErrorCode::ConnReset),
        }
    }

    pub(super) fn on_open_err(&mut self, id: u32, arg: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if let Err(e) = ch.apply(Event::OpenErr) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            return;
        }
        if let Some(ch) = self.remove_channel(id) {
            let code = ErrorCode::from_wire(arg);
            log::info!("guest refused host connection to {:?}: {code}", ch.service);
            if let Some(s) = &ch.sock {
                let _ = s.send(&handshake::err_msg(code, code.text()));
            }
        }
    }

    pub(super) fn on_data(&mut self, h: Header, payload: GuestBytes<'_>) {
        if self.accept_data(h) {
            self.deliver(h.channel, payload);
        }
    }

    /// The checks of a DATA header (state, seq, credit) and their answers;
    /// true when its payload is to be delivered (`deliver`).
    pub(super) fn accept_data(&mut self, h: Header) -> bool {
        let id = h.channel;
        let Some(ch) = self.channels.get_mut(&id) else {
            return false;
        };
        if ch.state == State::CloseSent {
            // The reader is gone; late data is discarded (SPEC §3.2).
            log::debug!("DATA on closing channel {id:#x} discarded");
            return false;
        }
        if ch.state != State::Open {
            self.malformed(
                Some(id),
                &format_args!("DATA on channel {id:#x} that is not open"),
            );
            self.close_by_device(id, ErrorCode::Proto);
            return false;
        }
        if h.seq != ch.rx_seq {
            let want = ch.rx_seq;
            self.malformed(
                Some(id),
                &format_args!("DATA seq {} on channel {id:#x}, expected {want}", h.seq),
            );
            self.close_by_device(id, ErrorCode::Proto);
            return false;
        }
        if let Err(e) = ch.accept(h.msg_len) {
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            self.close_by_device(id, ErrorCode::Proto);
            return false;
        }
        ch.rx_seq = ch.rx_seq.wrapping_add(1);
        true
    }

    pub(super) fn on_close(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let was = ch.state;
        if let Err(e) = ch.apply(Event::GuestClose) {
            // A second CLOSE.
            self.malformed(Some(id), &format_args!("channel {id:#x}: {e}"));
            return;
        }
        if was == State::Opening {
            // The guest closed before accepting: a refusal, still counted
            // (docs/vhost-device.md, "Things SPEC leaves open" 4).
            self.malformed(
                Some(id),
                &format_args!("CLOSE on channel {id:#x} before OPEN_OK"),
            );
            if let Some(ch) = self.remove_channel(id) {
                if let Some(s) = &ch.sock {
                    let _ = s.send(&handshake::err_msg(ErrorCode::ConnReset, "guest closed"));
                }
            }
            return;
        }
        // Deliver what the guest sent before CLOSE, then hang up and answer
        // (`maybe_finish`): the answer comes only once the host has every
        // message, so the guest cannot reuse the id while the device still
        // holds data for it.
        self.flush_pending(id);
        self.update_interest(id);
        self.maybe_finish(id);
    }

    pub(super) fn queue_credit_update(&mut self, id: u32, force: bool) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.update_queued || ch.state.close_sent() || !(force || ch.needs_update()) {
            return;
        }
        ch.update_queued = true;
        self.queue_ctrl(Header::new(MsgType::CreditUpdate, id), Vec::new(), true);
    }

    // ------------------------------------------------------------- closing

    /// The host side went away (EOF, error, oversized message): tell the
    /// guest with CLOSE `code` and drop the socket.
    pub(super) fn close_from_host(&mut self, id: u32, code: ErrorCode) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if !ch.state.close_sent() && ch.apply(Event::DeviceClose).is_ok() {
            let mut h = Header::new(MsgType::Close, id);
            h.arg = code as u32;
            self.queue_ctrl(h, Vec::new(), true);
        }
        self.drop_socket(id);
        self.maybe_finish(id);
    }

    /// The guest broke the protocol on a known channel: CLOSE `code`.
    pub(super) fn close_by_device(&mut self, id: u32, code: ErrorCode) {
        self.close_from_host(id, code);
    }

    pub(super) fn drop_socket(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        host::unwatch(&self.epoll, ch);
        ch.sock = None;
        ch.discard_pending();
        self.forget_feed(id);
    }

    pub(super) fn maybe_finish(&mut self, id: u32) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.state == State::CloseReceived && ch.pending.is_empty() {
            // The guest's CLOSE, answered once its data is delivered.
            let _ = ch.apply(Event::DeviceClose);
            self.queue_ctrl(Header::new(MsgType::Close, id), Vec::new(), true);
        }
        if self.channels.get(&id).is_some_and(Channel::finished) {
            self.remove_channel(id);
        }
    }

    pub(super) fn remove_channel(&mut self, id: u32) -> Option<Channel> {
        let mut ch = self.channels.remove(&id)?;
        self.budget.release(1);
        host::unwatch(&self.epoll, &mut ch);
        self.forget_feed(id);
        self.stats.close_channel(id);
        log::debug!("channel {id:#x} ({:?}) closed", ch.service);
        Some(ch)
    }

    // --------------------------------------------------------------- epoll
}
