//! The driver's transmit side and channel API: raw tx chains in any
//! shape, OPEN (waiting or not), DATA within the device's credit, CLOSE,
//! credit updates, and receiving from a channel's inbox.

use super::*;

impl Driver {
    /// Sends one raw chain holding `hdr` and `payload` (no checks at all),
    /// waiting for free descriptors.
    pub fn send_raw(&mut self, hdr: &Header, payload: &[u8]) -> io::Result<()> {
        let total = HDR_SIZE + payload.len();
        if total as u64 > self.layout.slot_size[1] {
            return Err(io::Error::other("message larger than a tx slot"));
        }
        let shape = match self.opts.shape {
            Shape::Mixed => match xorshift(&mut self.rng) % 3 {
                0 => Shape::Single,
                1 => Shape::Split,
                _ => Shape::Indirect,
            },
            s => s,
        };
        let need = if shape == Shape::Split { 3 } else { 1 };
        let deadline = Instant::now() + self.opts.timeout;
        while self.rings[1].free_count() < need {
            if Instant::now() > deadline {
                return Err(timeout_err("tx descriptors"));
            }
            self.poll(Duration::from_millis(50))?;
        }
        let Some(idx) = self.rings[1].peek_free() else {
            return Err(timeout_err("tx descriptors"));
        };
        let slot = self.layout.slot(1, idx);
        self.mem
            .write_slice(&hdr.encode(), slot)
            .map_err(io::Error::other)?;
        self.mem
            .write_slice(payload, slot.unchecked_add(HDR_SIZE as u64))
            .map_err(io::Error::other)?;
        let a = slot.0;
        let t = total as u32;
        let head = match shape {
            Shape::Single | Shape::Mixed => self.rings[1].add_chain(
                &self.mem,
                &[Desc {
                    addr: a,
                    len: t,
                    flags: 0,
                }],
            )?,
            Shape::Split => {
                let c1 = (t / 3).min(13);
                let c2 = (t - c1) / 2;
                self.rings[1].add_chain(
                    &self.mem,
                    &[
                        Desc {
                            addr: a,
                            len: c1,
                            flags: 0,
                        },
                        Desc {
                            addr: a + u64::from(c1),
                            len: c2,
                            flags: 0,
                        },
                        Desc {
                            addr: a + u64::from(c1 + c2),
                            len: t - c1 - c2,
                            flags: 0,
                        },
                    ],
                )?
            }
            Shape::Indirect => {
                let c1 = t.min(20);
                self.rings[1].add_indirect(
                    &self.mem,
                    &[
                        Desc {
                            addr: a,
                            len: c1,
                            flags: 0,
                        },
                        Desc {
                            addr: a + u64::from(c1),
                            len: t - c1,
                            flags: 0,
                        },
                    ],
                )?
            }
        };
        let head = head.ok_or_else(|| timeout_err("tx descriptors"))?;
        self.rings[1].publish(&self.mem, head)?;
        if self.opts.defer_kicks || self.hold_kicks {
            Ok(())
        } else {
            self.rings[1].kick(&self.mem)
        }
    }

    pub(super) fn fill(&mut self, hdr: &mut Header) {
        if let Some(c) = self.chans.get_mut(&hdr.channel) {
            hdr.buf_alloc = c.recv.buf_alloc;
            hdr.fwd_cnt = c.recv.fwd_cnt;
            c.recv.advertised();
        }
    }

    pub(super) fn send_credit_update(&mut self, id: u32) -> io::Result<()> {
        let mut h = Header::new(MsgType::CreditUpdate, id);
        self.fill(&mut h);
        self.send_raw(&h, &[])
    }

    /// Opens a channel to host service `name`: `Ok(Ok(id))` or the device's
    /// refusal.
    pub fn open(&mut self, name: &str) -> io::Result<Result<u32, ErrorCode>> {
        self.next_id = self.next_id % 0x7fff_ffff + 1;
        let id = self.next_id;
        self.open_id(id, name.as_bytes())
    }

    /// Sends OPEN with an explicit id and raw name bytes without waiting.
    pub fn open_async(&mut self, id: u32, name: &[u8]) -> io::Result<()> {
        self.opens.insert(id, None);
        let mut h = Header::with_payload(MsgType::Open, id, name.len() as u32);
        h.buf_alloc = self.opts.buf_alloc;
        self.send_raw(&h, name)
    }

    /// The answer to an `open_async`, once it arrived (then forgotten).
    pub fn open_result(&mut self, id: u32) -> Option<Result<(), ErrorCode>> {
        let r = self.opens.get(&id).copied().flatten()?;
        self.opens.remove(&id);
        Some(r)
    }

    /// Sends OPEN with an explicit id and raw name bytes and waits for the
    /// answer.
    pub fn open_id(&mut self, id: u32, name: &[u8]) -> io::Result<Result<u32, ErrorCode>> {
        self.open_async(id, name)?;
        self.wait_until("OPEN answer", |d| {
            d.opens.get(&id).is_some_and(Option::is_some)
        })?;
        match self.opens.remove(&id).flatten() {
            Some(Ok(())) => Ok(Ok(id)),
            Some(Err(e)) => Ok(Err(e)),
            None => Err(timeout_err("OPEN answer")),
        }
    }

    /// Sends one DATA message if credit allows; `Ok(false)` when it does not.
    pub fn try_send(&mut self, id: u32, data: &[u8]) -> io::Result<bool> {
        let Some(c) = self.chans.get_mut(&id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("channel {id:#x} not open"),
            ));
        };
        if c.closed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("channel {id:#x} closed"),
            ));
        }
        let len = data.len() as u32;
        if !c.send.can_send(len) {
            return Ok(false);
        }
        let mut h = Header::with_payload(MsgType::Data, id, len);
        h.seq = c.tx_seq;
        c.tx_seq = c.tx_seq.wrapping_add(1);
        c.send.on_send(len);
        self.fill(&mut h);
        self.send_raw(&h, data)?;
        Ok(true)
    }

    /// Sends one DATA message, waiting for credit.
    pub fn send(&mut self, id: u32, data: &[u8]) -> io::Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        while !self.try_send(id, data)? {
            if Instant::now() > deadline {
                return Err(timeout_err("send credit"));
            }
            self.poll(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Takes one received message if there is one, returning its credit.
    pub fn try_recv(&mut self, id: u32) -> io::Result<Option<Vec<u8>>> {
        let Some(c) = self.chans.get_mut(&id) else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("channel {id:#x} not open"),
            ));
        };
        let Some(m) = c.inbox.pop_front() else {
            if c.closed.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("channel {id:#x} closed"),
                ));
            }
            return Ok(None);
        };
        c.recv.on_consume(m.len() as u32);
        if c.recv.needs_update() && !c.sent_close {
            self.send_credit_update(id)?;
        }
        Ok(Some(m))
    }

    /// Receives one message, waiting for it.
    pub fn recv(&mut self, id: u32) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            if let Some(m) = self.try_recv(id)? {
                return Ok(m);
            }
            if Instant::now() > deadline {
                return Err(timeout_err("a message"));
            }
            self.poll(Duration::from_millis(50))?;
        }
    }

    /// Sends CLOSE on `id`.
    pub fn close(&mut self, id: u32) -> io::Result<()> {
        if let Some(c) = self.chans.get_mut(&id) {
            c.sent_close = true;
        }
        let mut h = Header::new(MsgType::Close, id);
        self.fill(&mut h);
        self.send_raw(&h, &[])
    }

    /// Messages waiting unread on `id`.
    pub fn inbox_len(&self, id: u32) -> usize {
        self.chans.get(&id).map_or(0, |c| c.inbox.len())
    }

    /// The CLOSE arg received on `id`, if any.
    pub fn closed(&self, id: u32) -> Option<u32> {
        self.chans.get(&id).and_then(|c| c.closed)
    }

    /// Whether CLOSE with any arg arrived for `id` (also for channels the
    /// driver does not know).
    pub fn saw_close(&self, id: u32) -> Option<u32> {
        self.ctrl
            .iter()
            .rev()
            .find(|h| h.channel == id && h.msg_type == MsgType::Close)
            .map(|h| h.arg)
    }
}
