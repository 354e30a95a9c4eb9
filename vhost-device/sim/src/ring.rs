//! The driver's side of one split virtqueue, written by hand: descriptor
//! free list, avail ring publication, used ring reaping, EVENT_IDX
//! suppression both ways, and the kick/call eventfds.

use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::{AVAIL_OFF, INDIRECT_SLOT, QUEUE_SIZE, USED_OFF};

/// `VRING_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags (`F_*`; NEXT is filled in for chains).
    pub flags: u16,
}

/// One split virtqueue, driver side.
#[derive(Debug)]
pub struct Ring {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Indirect table area (one per descriptor index).
    pub indirect: u64,
    avail_idx: Wrapping<u16>,
    kicked_idx: Wrapping<u16>,
    last_used: Wrapping<u16>,
    free: Vec<u16>,
    chains: Vec<Vec<u16>>,
    /// Whether EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Kick eventfd (driver → device).
    pub kick: EventFd,
    /// Call eventfd (device → driver).
    pub call: EventFd,
}

fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Ring {
    /// A ring whose area starts at `base`; indirect tables at `indirect`.
    pub fn new(base: u64, indirect: u64) -> io::Result<Ring> {
        Ok(Ring {
            size: QUEUE_SIZE,
            desc: base,
            avail: base + AVAIL_OFF,
            used: base + USED_OFF,
            indirect,
            avail_idx: Wrapping(0),
            kicked_idx: Wrapping(0),
            last_used: Wrapping(0),
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: vec![Vec::new(); usize::from(QUEUE_SIZE)],
            event_idx: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Fresh eventfds (a new frontend connection must not see old signals).
    pub fn new_eventfds(&mut self) -> io::Result<()> {
        self.kick = EventFd::new(EFD_NONBLOCK)?;
        self.call = EventFd::new(EFD_NONBLOCK)?;
        Ok(())
    }

    /// Zeroes the rings and forgets every chain (device reset).
    pub fn reset(&mut self, mem: &GuestMemoryMmap) -> io::Result<()> {
        let zero = vec![0u8; 0x1_0000];
        mem.write_slice(&zero, GuestAddress(self.desc))
            .map_err(io::Error::other)?;
        self.avail_idx = Wrapping(0);
        self.kicked_idx = Wrapping(0);
        self.last_used = Wrapping(0);
        self.free = (0..self.size).rev().collect();
        self.chains = vec![Vec::new(); usize::from(self.size)];
        Ok(())
    }

    /// The descriptor index the next chain will start at.
    pub fn peek_free(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// Free descriptors.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// The avail index the driver has published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx.0
    }

    /// The used index the driver has consumed up to.
    pub fn last_used(&self) -> u16 {
        self.last_used.0
    }

    fn write_desc(mem: &GuestMemoryMmap, at: u64, d: Desc, next: u16) -> io::Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&b, GuestAddress(at))
            .map_err(io::Error::other)
    }

    /// Writes a chain of `descs` into the table; returns its head, or `None`
    /// when too few descriptors are free.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> io::Result<Option<u16>> {
        if descs.is_empty() || self.free.len() < descs.len() {
            return Ok(None);
        }
        let idx: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, d) in descs.iter().enumerate() {
            let (flags, next) = match idx.get(i + 1) {
                Some(n) => (d.flags | F_NEXT, *n),
                None => (d.flags & !F_NEXT, 0),
            };
            let at = self.desc + u64::from(idx[i]) * 16;
            Self::write_desc(mem, at, Desc { flags, ..*d }, next)?;
        }
        let head = idx[0];
        self.chains[usize::from(head)] = idx;
        Ok(Some(head))
    }

    /// Writes `descs` as an indirect table owned by the next free
    /// descriptor; returns the head.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[Desc],
    ) -> io::Result<Option<u16>> {
        if descs.is_empty() || descs.len() as u64 * 16 > INDIRECT_SLOT {
            return Err(io::Error::other("indirect table too long"));
        }
        let Some(head) = self.free.pop() else {
            return Ok(None);
        };
        let table = self.indirect + u64::from(head) * INDIRECT_SLOT;
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last {
                d.flags & !F_NEXT
            } else {
                d.flags | F_NEXT
            };
            let next = if last { 0 } else { i as u16 + 1 };
            Self::write_desc(mem, table + i as u64 * 16, Desc { flags, ..*d }, next)?;
        }
        let outer = Desc {
            addr: table,
            len: descs.len() as u32 * 16,
            flags: F_INDIRECT,
        };
        Self::write_desc(mem, self.desc + u64::from(head) * 16, outer, 0)?;
        self.chains[usize::from(head)] = vec![head];
        Ok(Some(head))
    }

    /// Writes raw table entry `idx` (hostile tests: any flags and next).
    pub fn write_raw(
        &mut self,
        mem: &GuestMemoryMmap,
        idx: u16,
        d: Desc,
        next: u16,
    ) -> io::Result<()> {
        self.free.retain(|f| *f != idx);
        Self::write_desc(mem, self.desc + u64::from(idx % self.size) * 16, d, next)
    }

    /// Takes descriptor `idx` out of the free list for a raw chain and
    /// records which descriptors to free when it comes back.
    pub fn claim_raw(&mut self, idxs: &[u16]) {
        self.free.retain(|f| !idxs.contains(f));
        if let Some(h) = idxs.first() {
            self.chains[usize::from(*h % self.size)] = idxs.to_vec();
        }
    }

    /// A free descriptor index (hostile tests build their own chains).
    pub fn take_free(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Makes chain `head` available (does not kick).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) -> io::Result<()> {
        let slot = self.avail + 4 + u64::from(self.avail_idx.0 % self.size) * 2;
        mem.write_obj(head.to_le(), GuestAddress(slot))
            .map_err(io::Error::other)?;
        self.avail_idx += 1;
        fence(Ordering::SeqCst);
        mem.store(
            self.avail_idx.0.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .map_err(io::Error::other)
    }

    /// Kicks the device if it asked for it (EVENT_IDX) or did not suppress
    /// notifications.
    pub fn kick(&mut self, mem: &GuestMemoryMmap) -> io::Result<()> {
        fence(Ordering::SeqCst);
        let new = self.avail_idx.0;
        let old = self.kicked_idx.0;
        if new == old {
            return Ok(());
        }
        let need = if self.event_idx {
            let ev: u16 = mem
                .load(
                    GuestAddress(self.used + 4 + u64::from(self.size) * 8),
                    Ordering::Acquire,
                )
                .map_err(io::Error::other)?;
            need_event(u16::from_le(ev), new, old)
        } else {
            let flags: u16 = mem
                .load(GuestAddress(self.used), Ordering::Acquire)
                .map_err(io::Error::other)?;
            u16::from_le(flags) & 1 == 0
        };
        self.kicked_idx = Wrapping(new);
        if need {
            self.kick.write(1)?;
        }
        Ok(())
    }

    /// Kicks unconditionally (hostile tests).
    pub fn force_kick(&mut self) -> io::Result<()> {
        self.kicked_idx = self.avail_idx;
        self.kick.write(1)
    }

    /// The next used element `(head, len)`, freeing its descriptors.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> io::Result<Option<(u16, u32)>> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(io::Error::other)?;
        if u16::from_le(idx) == self.last_used.0 {
            return Ok(None);
        }
        fence(Ordering::SeqCst);
        let at = self.used + 4 + u64::from(self.last_used.0 % self.size) * 8;
        let id: u32 = mem.read_obj(GuestAddress(at)).map_err(io::Error::other)?;
        let len: u32 = mem
            .read_obj(GuestAddress(at + 4))
            .map_err(io::Error::other)?;
        self.last_used += 1;
        let head = (u32::from_le(id) % u32::from(self.size)) as u16;
        let chain = std::mem::take(&mut self.chains[usize::from(head)]);
        self.free.extend(chain);
        Ok(Some((head, u32::from_le(len))))
    }

    /// Asks for a call on the next used element (EVENT_IDX: used_event).
    pub fn arm(&mut self, mem: &GuestMemoryMmap) -> io::Result<()> {
        if self.event_idx {
            let at = self.avail + 4 + u64::from(self.size) * 2;
            mem.store(
                self.last_used.0.to_le(),
                GuestAddress(at),
                Ordering::Release,
            )
            .map_err(io::Error::other)?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// The device's used index (how far it has filled the used ring), as
    /// the device last published it.
    pub fn device_used(&self, mem: &GuestMemoryMmap) -> io::Result<u16> {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .map_err(io::Error::other)?;
        Ok(u16::from_le(idx))
    }

    /// Whether used elements are waiting.
    pub fn has_used(&self, mem: &GuestMemoryMmap) -> bool {
        mem.load::<u16>(GuestAddress(self.used + 2), Ordering::Acquire)
            .map(|i| u16::from_le(i) != self.last_used.0)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_idx_math() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 0));
        assert!(need_event(2, 3, 0));
        assert!(need_event(u16::MAX, 0, u16::MAX));
    }
}
