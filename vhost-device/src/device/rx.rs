//! Host → guest: control messages and host data chosen for the guest,
//! framed and fragmented into rx buffers in budgeted passes (host data is
//! received into them directly by `host.rs`; this file writes the
//! headers and the used ring), and the event queue (RESET).

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress};

use super::host::Taken;
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

    /// The next control message for rx, its credit filled in now.
    pub(super) fn next_ctrl(&mut self) -> Option<Outgoing> {
        let mut o = self.ctrl.pop_front()?;
        if o.fill {
            let mut h = o.hdr;
            self.fill_credit(&mut h);
            o.hdr = h;
        }
        Some(o)
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
            self.share.record_other();
            *used = true;
        }
    }

    /// Fills rx buffers: the rest of a fragmented message first, then
    /// control messages, then host data round-robin over ready channels,
    /// received straight into the buffers (`read_host`). A buffer is
    /// popped only when there is something to put in it, and one popped
    /// for a channel that had nothing goes back to the ring. A channel
    /// that holds its share of a contended ring (`rxshare.rs`) is passed
    /// over until the driver consumes some of it.
    pub(super) fn pump_rx(
        &mut self,
        q: &mut Queue,
        mem: &Mem,
        n: &mut Notify,
        left: &mut usize,
    ) -> bool {
        let mut used = false;
        let mut held = None;
        let mut waiting = Vec::new();
        let now = Instant::now();
        if let Ok(a) = q.avail_idx(mem, Ordering::Acquire) {
            self.share.observe(a, q.size());
        }
        loop {
            if *left == 0 {
                self.more = true;
                break;
            }
            if self.partial.is_none() {
                self.partial = self.next_ctrl();
                if self.partial.is_none() && self.ready.is_empty() {
                    break;
                }
            }
            let buf = match held.take() {
                Some(b) => b,
                None => match self.pop_rx(q, mem, &mut used) {
                    Some(b) => b,
                    None => break,
                },
            };
            if self.partial.is_some() {
                if !self.put_fragment(q, mem, buf, now) {
                    break;
                }
                *left -= 1;
                used = true;
                continue;
            }
            // Host data; reading may queue control messages (CLOSE on
            // EOF, CREDIT_REQUEST on a stall): those go out first.
            let Some(id) = self.ready.pop_front() else {
                held = Some(buf);
                continue;
            };
            if self.share.over(id, now) {
                waiting.push(id);
                held = Some(buf);
                continue;
            }
            match self.read_host(id, q, mem, buf, *left) {
                Taken::Unused(b) => held = Some(b),
                Taken::Msg { hdr, len, bufs } => {
                    let mut rest = len;
                    let k = bufs.len();
                    for (i, mut b) in bufs.into_iter().enumerate() {
                        let chunk = rest.min(b.capacity() - HDR_SIZE);
                        rest -= chunk;
                        let mut h = hdr;
                        h.len = chunk as u32;
                        if rest > 0 {
                            h.flags |= HDR_F_MORE;
                        }
                        let ulen = match b.put_header(&h) {
                            Ok(l) => l,
                            Err(e) => {
                                self.malformed(None, &format_args!("rx write: {e}"));
                                0
                            }
                        };
                        if let Err(e) = q.add_used(mem, b.head, ulen) {
                            self.malformed(None, &format_args!("rx used ring: {e}"));
                            // Those not added are lost to the guest as
                            // they would be after any used-ring failure.
                            *left -= i + 1;
                            self.requeue(waiting);
                            return self.rx_done(q, mem, n, true);
                        }
                        self.share.record_data(hdr.channel, now);
                    }
                    *left -= k;
                    used |= k > 0;
                }
            }
        }
        if held.is_some() {
            // Popped last and not used: back to the ring.
            q.go_to_previous_position();
        }
        self.share_wait = None;
        if !waiting.is_empty() {
            self.requeue(waiting);
            self.kick_on_repost(q, mem);
            self.share_wait = self.share.contended_until();
        }
        self.rx_done(q, mem, n, used)
    }

    /// Puts channels passed over for their share back at the front of the
    /// round-robin, in their order.
    fn requeue(&mut self, waiting: Vec<u32>) {
        for id in waiting.into_iter().rev() {
            self.ready.push_front(id);
        }
    }

    /// Data waits for the driver to consume rx entries while buffers are
    /// still free: ask for a kick once it has posted half a share back
    /// (each waiting channel holds a whole share un-consumed, so that many
    /// do come while the driver works; with EVENT_IDX, `avail_event` that
    /// far past the current avail index; without it kicks are simply on),
    /// and come back at once if it got there meanwhile. Asking at the
    /// next buffer would cost a kick and a pass per message.
    fn kick_on_repost(&mut self, q: &mut Queue, mem: &Mem) {
        let Ok(now) = q.avail_idx(mem, Ordering::Acquire) else {
            return;
        };
        let ahead = u16::try_from(self.share.share() / 2)
            .unwrap_or(u16::MAX)
            .max(1);
        if q.event_idx_enabled() {
            // avail_event follows the used ring's entries (virtio 1.x §2.7.10).
            let off = 4 + 8 * u64::from(q.size());
            let Some(addr) = q.used_ring().checked_add(off) else {
                return;
            };
            let event = (now + Wrapping(ahead - 1)).0;
            if let Err(e) = mem.store(event.to_le(), GuestAddress(addr), Ordering::Release) {
                self.malformed(None, &format_args!("rx avail_event: {e}"));
                return;
            }
        } else if let Err(e) = q.enable_notification(mem) {
            self.malformed(None, &format_args!("rx ring: {e}"));
            return;
        }
        fence(Ordering::SeqCst);
        if q.avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|a| (a - now).0 >= ahead)
        {
            self.more = true;
        }
    }

    fn rx_done(&mut self, q: &mut Queue, mem: &Mem, n: &mut Notify, used: bool) -> bool {
        // Evaluated once per batch of used entries; never reset a pending
        // signal from an earlier batch of this run.
        if used {
            n.rx |= Self::signal(q, mem);
        }
        used
    }

    /// Writes the next fragment of `partial` into `buf`; false if the used
    /// ring failed.
    fn put_fragment(&mut self, q: &mut Queue, mem: &Mem, mut buf: RxBuf<'_>, now: Instant) -> bool {
        let Some(o) = self.partial.as_mut() else {
            return true;
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
        if o.off >= o.payload.len() {
            self.partial = None;
        }
        let len = match r {
            Ok(len) => len,
            Err(e) => {
                self.malformed(None, &format_args!("rx write: {e}"));
                0
            }
        };
        if let Err(e) = q.add_used(mem, head, len) {
            self.malformed(None, &format_args!("rx used ring: {e}"));
            return false;
        }
        if hdr.msg_type == MsgType::Data {
            self.share.record_data(hdr.channel, now);
        } else {
            self.share.record_other();
        }
        true
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
