//! The driver's receive side: rx buffers and event buffers the device
//! filled, checked against SPEC §4/§5 (violations go to `errors`),
//! fragments reassembled, DATA delivered in sequence within credit, and
//! control messages (OPEN_OK/ERR, CLOSE, credit, host OPENs) answered.

use super::*;

impl Driver {
    pub(super) fn error(&mut self, e: String) {
        if self.errors.len() < 100 {
            self.errors.push(e);
        }
    }

    pub(super) fn on_event(&mut self, head: u16, len: u32) -> io::Result<()> {
        if len as usize != HDR_SIZE {
            self.error(format!("event used length {len}"));
            return Ok(());
        }
        let mut b = [0u8; HDR_SIZE];
        self.mem
            .read_slice(&mut b, self.layout.slot(2, head))
            .map_err(io::Error::other)?;
        match Header::decode(&b) {
            Ok(h) if h.msg_type == MsgType::Reset => {
                // SPEC §6: forget every channel.
                for c in self.chans.values_mut() {
                    c.closed.get_or_insert(ErrorCode::ConnReset as u32);
                }
                self.chans.clear();
                self.opens.clear();
                self.events.push(h);
            }
            Ok(h) => self.error(format!("unexpected event {h:?}")),
            Err(e) => self.error(format!("bad event: {e}")),
        }
        Ok(())
    }

    pub(super) fn on_rx(&mut self, head: u16, len: u32) -> io::Result<()> {
        let len = len as usize;
        if len < HDR_SIZE || len > self.opts.rx_buf as usize {
            self.error(format!("rx used length {len}"));
            return Ok(());
        }
        let slot = self.layout.slot(0, head);
        let mut hb = [0u8; HDR_SIZE];
        self.mem
            .read_slice(&mut hb, slot)
            .map_err(io::Error::other)?;
        let h = match Header::decode(&hb) {
            Ok(h) => h,
            Err(e) => {
                self.error(format!("rx header: {e}"));
                return Ok(());
            }
        };
        let lim = Limits {
            max_msg_size: self.config.max_msg_size,
        };
        if let Err(e) = h.check(&lim, HdrPath::Rx) {
            self.error(format!("rx {h:?}: {e}"));
            return Ok(());
        }
        if h.len as usize != len - HDR_SIZE {
            self.error(format!("rx used length {len} but len {}", h.len));
            return Ok(());
        }
        let plen = len - HDR_SIZE;
        let at = slot.unchecked_add(HDR_SIZE as u64);
        if h.msg_type == MsgType::Data {
            let (first, mut data) = match self.partial.take() {
                Some((f, d)) => {
                    if f.channel != h.channel || f.seq != h.seq || f.msg_len != h.msg_len {
                        self.error(format!("fragment of {h:?} interleaved with {f:?}"));
                        return Ok(());
                    }
                    (f, d)
                }
                None => (h, Vec::with_capacity(h.msg_len as usize)),
            };
            // The payload is read once, straight into the message being
            // reassembled (as a driver copies it to its reader once).
            let start = data.len();
            if start + plen > first.msg_len as usize {
                self.error(format!("fragments exceed msg_len {}", first.msg_len));
                return Ok(());
            }
            data.resize(start + plen, 0);
            self.mem
                .read_slice(&mut data[start..], at)
                .map_err(io::Error::other)?;
            if h.more() {
                self.partial = Some((first, data));
                return Ok(());
            }
            if data.len() != first.msg_len as usize {
                self.error(format!(
                    "message of {} bytes, msg_len {}",
                    data.len(),
                    first.msg_len
                ));
                return Ok(());
            }
            self.deliver(first, data);
            return Ok(());
        }
        let mut payload = vec![0u8; plen];
        self.mem
            .read_slice(&mut payload, at)
            .map_err(io::Error::other)?;
        if let Some((f, _)) = self.partial.take() {
            self.error(format!("{:?} between fragments of {f:?}", h.msg_type));
        }
        self.on_ctrl(h, &payload)
    }

    pub(super) fn deliver(&mut self, h: Header, data: Vec<u8>) {
        let Some(c) = self.chans.get_mut(&h.channel) else {
            self.error(format!("DATA for unknown channel {:#x}", h.channel));
            return;
        };
        if c.closed.is_some() {
            // SPEC §3.2: nothing follows a CLOSE on its channel.
            self.error(format!("DATA on channel {:#x} after its CLOSE", h.channel));
            return;
        }
        c.send.on_peer(h.buf_alloc, h.fwd_cnt);
        if h.seq != c.rx_seq {
            let want = c.rx_seq;
            self.error(format!(
                "channel {:#x}: seq {} expected {want}",
                h.channel, h.seq
            ));
            return;
        }
        c.rx_seq = c.rx_seq.wrapping_add(1);
        if let Err(e) = c.recv.on_receive(h.msg_len) {
            self.error(format!(
                "channel {:#x}: device overran credit: {e}",
                h.channel
            ));
            return;
        }
        c.inbox.push_back(data);
        if let Some(log) = self.arrivals.as_mut() {
            log.push((h.channel, self.rx_reaped));
        }
    }

    pub(super) fn on_ctrl(&mut self, h: Header, payload: &[u8]) -> io::Result<()> {
        if self.ctrl.len() >= CTRL_LOG {
            self.ctrl.pop_front();
        }
        self.ctrl.push_back(h);
        let id = h.channel;
        if let Some(c) = self.chans.get_mut(&id) {
            if h.msg_type != MsgType::OpenErr {
                c.send.on_peer(h.buf_alloc, h.fwd_cnt);
            }
        }
        match h.msg_type {
            MsgType::OpenOk => {
                if let Some(slot) = self.opens.get_mut(&id) {
                    *slot = Some(Ok(()));
                    let c = GuestChannel::new(self.opts.buf_alloc, &h);
                    self.chans.insert(id, c);
                } else {
                    self.error(format!("OPEN_OK for {id:#x} not opening"));
                }
            }
            MsgType::OpenErr => {
                if let Some(slot) = self.opens.get_mut(&id) {
                    *slot = Some(Err(ErrorCode::from_wire(h.arg)));
                } else {
                    self.error(format!("OPEN_ERR for {id:#x} not opening"));
                }
            }
            MsgType::Close => {
                let answer = match self.chans.get_mut(&id) {
                    Some(c) => {
                        c.closed = Some(h.arg);
                        let a = !c.sent_close;
                        c.sent_close = true;
                        a
                    }
                    None => false,
                };
                if answer {
                    self.send_raw(&Header::new(MsgType::Close, id), &[])?;
                }
            }
            MsgType::CreditUpdate => {}
            MsgType::CreditRequest => {
                if self.chans.contains_key(&id) {
                    self.send_credit_update(id)?;
                }
            }
            MsgType::Open => {
                let name = String::from_utf8_lossy(payload).into_owned();
                if self.opts.listen.contains(&name) {
                    let c = GuestChannel::new(self.opts.buf_alloc, &h);
                    self.chans.insert(id, c);
                    let mut r = Header::new(MsgType::OpenOk, id);
                    r.buf_alloc = self.opts.buf_alloc;
                    self.send_raw(&r, &[])?;
                    self.accepted.push_back((id, name));
                } else {
                    let mut r = Header::new(MsgType::OpenErr, id);
                    r.arg = ErrorCode::NoEnt as u32;
                    self.send_raw(&r, &[])?;
                }
            }
            // LISTEN/UNLISTEN never pass the rx checks (tx only).
            MsgType::Data | MsgType::Reset | MsgType::Listen | MsgType::Unlisten => {}
        }
        Ok(())
    }
}
