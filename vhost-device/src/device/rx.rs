//! Host → guest: control messages and host data chosen for the guest,
//! framed and fragmented into rx buffers in budgeted passes, and the event
//! queue (RESET).

use super::*;

impl Device {
    pub(super) fn alloc_device_id(&mut self) -> u32 {
        loop {
            self.next_dev_id = (self.next_dev_id.wrapping_add(1)) & !CHAN_DEVICE_BIT;
            if self.next_dev_id == 0 {
                continue;
            }
            let id = self.next_dev_id | CHAN_DEVICE_BIT;
            if !self.channels.contains_key(&id) {
                return id;
            }
        }
    }

    // ----------------------------------------------------------------- rx

    pub(super) fn queue_ctrl(&mut self, hdr: Header, payload: Vec<u8>, fill: bool) {
        self.ctrl.push_back(Outgoing {
            hdr,
            payload,
            off: 0,
            fill,
        });
    }

    /// Fills the channel's credit into `hdr` (it is being sent now).
    pub(super) fn fill_credit(&mut self, hdr: &mut Header) {
        if let Some(ch) = self.channels.get_mut(&hdr.channel) {
            hdr.buf_alloc = ch.recv.buf_alloc;
            hdr.fwd_cnt = ch.recv.fwd_cnt;
            ch.recv.advertised();
            if hdr.msg_type == MsgType::CreditUpdate {
                ch.update_queued = false;
            }
        }
    }

    /// The next message for rx: control first, then host data round-robin.
    pub(super) fn next_outgoing(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(mut o) = self.ctrl.pop_front() {
                if o.fill {
                    let mut h = o.hdr;
                    self.fill_credit(&mut h);
                    o.hdr = h;
                }
                return Some(o);
            }
            // Reading host input may queue control messages (CLOSE on EOF,
            // CREDIT_REQUEST on a stall): those go out first.
            let id = self.ready.pop_front()?;
            if let Some(o) = self.read_host(id) {
                return Some(o);
            }
        }
    }

    /// Pops rx chains until one is usable (bad ones are returned unused).
    pub(super) fn pop_rx<'m>(
        &mut self,
        q: &mut Queue,
        mem: &'m Mem,
        used: &mut bool,
    ) -> Option<RxBuf<'m>> {
        loop {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(e) => {
                        self.malformed(None, &format_args!("rx ring: {e}"));
                        return None;
                    }
                }
            };
            let head = chain.head_index();
            match RxBuf::new(chain, mem) {
                Ok(b) if b.capacity() >= MIN_RX_BUF_SIZE as usize => return Some(b),
                Ok(b) => {
                    let cap = b.capacity();
                    self.malformed(
                        None,
                        &format_args!("rx buffer of {cap} bytes (minimum {MIN_RX_BUF_SIZE})"),
                    );
                }
                Err(e) => self.malformed(None, &format_args!("rx chain: {e}")),
            }
            if q.add_used(mem, head, 0).is_err() {
                return None;
            }
            *used = true;
        }
    }

    pub(super) fn pump_rx(
        &mut self,
        q: &mut Queue,
        mem: &Mem,
        n: &mut Notify,
        left: &mut usize,
    ) -> bool {
        let mut used = false;
        loop {
            if *left == 0 {
                self.more = true;
                break;
            }
            if self.partial.is_none() {
                self.partial = self.next_outgoing();
                if self.partial.is_none() {
                    break;
                }
            }
            let Some(mut buf) = self.pop_rx(q, mem, &mut used) else {
                break;
            };
            let Some(o) = self.partial.as_mut() else {
                break;
            };
            let room = buf.capacity() - HDR_SIZE;
            let rest = o.payload.len() - o.off;
            let chunk = rest.min(room);
            let mut hdr = o.hdr;
            hdr.len = chunk as u32;
            if chunk < rest {
                hdr.flags |= HDR_F_MORE;
            }
            let head = buf.head;
            let r = buf.put(&hdr, &o.payload[o.off..o.off + chunk]);
            o.off += chunk;
            let done = o.off >= o.payload.len();
            let len = match r {
                Ok(len) => len,
                Err(e) => {
                    self.malformed(None, &format_args!("rx write: {e}"));
                    0
                }
            };
            if done {
                self.partial = None;
            }
            *left -= 1;
            if let Err(e) = q.add_used(mem, head, len) {
                self.malformed(None, &format_args!("rx used ring: {e}"));
                break;
            }
            used = true;
        }
        // Evaluated once per batch of used entries; never reset a pending
        // signal from an earlier batch of this run.
        if used {
            n.rx |= Self::signal(q, mem);
        }
        used
    }

    pub(super) fn pump_event(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify) {
        let mut used = false;
        while self.reset_pending {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                match q.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => break,
                }
            };
            let head = chain.head_index();
            let len = match RxBuf::new(chain, mem) {
                Ok(mut b) if b.capacity() >= HDR_SIZE => {
                    match b.put(&Header::new(MsgType::Reset, CHAN_TRANSPORT), &[]) {
                        Ok(len) => {
                            self.reset_pending = false;
                            add(&self.stats.events.resets, 1);
                            log::info!("guest {}: RESET sent", self.params.config.guest_id);
                            len
                        }
                        Err(e) => {
                            self.malformed(None, &format_args!("event write: {e}"));
                            0
                        }
                    }
                }
                Ok(_) => {
                    self.malformed(None, &"event buffer shorter than a header");
                    0
                }
                Err(e) => {
                    self.malformed(None, &format_args!("event chain: {e}"));
                    0
                }
            };
            if q.add_used(mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        if used {
            n.ev = Self::signal(q, mem);
        }
    }
}
