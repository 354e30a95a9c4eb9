//! Simulated guest memory: one memfd-backed region the frontend shares with
//! the backend, and the fixed layout of rings, indirect tables and buffer
//! slots inside it.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Queue size used by the simulated driver.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes reserved per queue for its desc table, avail and used rings.
const RING_AREA: u64 = 0x1_0000;
/// Offsets inside a ring area.
pub const AVAIL_OFF: u64 = 0x4000;
/// Used ring offset inside a ring area.
pub const USED_OFF: u64 = 0x8000;
/// Bytes of indirect table per descriptor slot (4 descriptors).
pub const INDIRECT_SLOT: u64 = 64;

/// Where everything lives in guest-physical memory.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Ring area base of each queue.
    pub ring: [u64; 3],
    /// Indirect tables of each queue (one per descriptor index).
    pub indirect: [u64; 3],
    /// Buffer slots of each queue (one per descriptor index).
    pub slots: [u64; 3],
    /// Slot size of each queue.
    pub slot_size: [u64; 3],
    /// Memory size from the layout's base.
    pub size: u64,
}

impl Layout {
    /// A layout for rx slots of `rx` bytes, tx slots of `tx` bytes and
    /// event slots of `ev` bytes.
    pub fn new(rx: u64, tx: u64, ev: u64) -> Layout {
        Layout::at(0, rx, tx, ev)
    }

    /// [`Layout::new`] starting at guest address `base` (a 2 MiB
    /// multiple): the layouts of several queue pairs, one after the other
    /// in one memory region, `size` bytes apart.
    pub fn at(base: u64, rx: u64, tx: u64, ev: u64) -> Layout {
        let q = u64::from(QUEUE_SIZE);
        let mut at = base + 0x1000;
        let mut ring = [0; 3];
        for r in &mut ring {
            *r = at;
            at += RING_AREA;
        }
        let mut indirect = [0; 3];
        for t in &mut indirect {
            *t = at;
            at += q * INDIRECT_SLOT;
        }
        let slot_size = [rx, tx, ev];
        let mut slots = [0; 3];
        for (s, size) in slots.iter_mut().zip(slot_size) {
            at = (at + 0xfff) & !0xfff;
            *s = at;
            at += q * size;
        }
        let size = ((at + 0x1f_ffff) & !0x1f_ffff) - base;
        Layout {
            ring,
            indirect,
            slots,
            slot_size,
            size,
        }
    }

    /// Guest address just past the layout (where the next pair's starts).
    pub fn end(&self) -> u64 {
        self.ring[0] - 0x1000 + self.size
    }

    /// Buffer slot of descriptor `idx` on queue `q`.
    pub fn slot(&self, q: usize, idx: u16) -> GuestAddress {
        GuestAddress(self.slots[q] + u64::from(idx) * self.slot_size[q])
    }
}

/// Creates memfd-backed guest memory of `size` bytes at guest address 0.
pub fn memfd_memory(size: u64) -> io::Result<GuestMemoryMmap> {
    // SAFETY: the name is a valid NUL-terminated string; result checked.
    let fd = unsafe { libc::memfd_create(c"kt-sim-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    let len = usize::try_from(size).map_err(io::Error::other)?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        len,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_layouts_do_not_overlap() {
        let a = Layout::new(4096, 65568, 64);
        let b = Layout::at(a.end(), 4096, 65568, 64);
        assert_eq!(b.size, a.size);
        assert_eq!(b.ring[0], a.ring[0] + a.size);
        let last_a = a.slot(2, QUEUE_SIZE - 1).0 + a.slot_size[2];
        assert!(last_a <= b.ring[0], "{last_a:#x} > {:#x}", b.ring[0]);
    }
}
