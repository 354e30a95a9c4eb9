//! An address bus (port I/O or MMIO): non-overlapping ranges, each owned by
//! a device that gets register reads and writes at an offset into its range.
//! Most devices sit behind a mutex the bus takes for each access; a device
//! that must not hold its lock across slow work (a vhost-user request)
//! does its own locking (`SelfLockingDevice`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A device that locks its own state, as little as it can, per access.
pub trait SelfLockingDevice: Send + Sync {
    /// Fills `data` from the register at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

enum Target {
    Locked(SharedDevice),
    SelfLocking(Arc<dyn SelfLockingDevice>),
}

/// Bus setup failures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A new range overlaps an existing one.
    #[error("bus range {0:#x}+{1:#x} overlaps another device")]
    Overlap(u64, u64),
    /// A zero-length or wrapping range.
    #[error("bus range {0:#x}+{1:#x} is invalid")]
    Invalid(u64, u64),
}

struct Entry {
    len: u64,
    device: Target,
}

/// Ranges sorted by base address.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<(u64, u64)> = self.ranges.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &r).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), Error> {
        self.insert_target(base, len, Target::Locked(device))
    }

    /// Adds a device that does its own locking at `base..base+len`.
    pub fn insert_self_locking(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn SelfLockingDevice>,
    ) -> Result<(), Error> {
        self.insert_target(base, len, Target::SelfLocking(device))
    }

    fn insert_target(&mut self, base: u64, len: u64, device: Target) -> Result<(), Error> {
        let end = base.checked_add(len).ok_or(Error::Invalid(base, len))?;
        if len == 0 {
            return Err(Error::Invalid(base, len));
        }
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_prev {
            return Err(Error::Overlap(base, len));
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Target)> {
        let (base, e) = self.ranges.range(..=addr).next_back()?;
        let off = addr - base;
        let end = off.checked_add(size as u64)?;
        (end <= e.len).then_some((off, &e.device))
    }

    /// Routes a read; false if no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, Target::Locked(d))) => {
                lock(d).read(off, data);
                true
            }
            Some((off, Target::SelfLocking(d))) => {
                d.read(off, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; false if no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, Target::Locked(d))) => {
                lock(d).write(off, data);
                true
            }
            Some((off, Target::SelfLocking(d))) => {
                d.write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock (a device that panicked
/// keeps its last state rather than taking the VMM down).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset_and_rejects_outside() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![9])));
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w), "access straddling the end");
        assert!(
            !bus.read(u64::MAX, &mut w),
            "access wrapping the address space"
        );
    }

    /// Counts accesses with no lock of its own to take.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl SelfLockingDevice for Counter {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, _offset: u64, _data: &[u8]) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn self_locking_devices_are_routed_and_placed_like_others() {
        let c = Arc::new(Counter::default());
        let mut bus = Bus::new();
        bus.insert_self_locking(0x1000, 0x100, c.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x1010, &mut b));
        assert_eq!(b, [0x10]);
        assert!(bus.write(0x10ff, &[1]));
        assert_eq!(c.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!bus.write(0x1100, &[1]));
        let r = Arc::new(Mutex::new(Recorder::default()));
        assert_eq!(
            bus.insert(0x10f0, 0x20, r),
            Err(Error::Overlap(0x10f0, 0x20))
        );
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default())) as SharedDevice;
        bus.insert(0x100, 0x10, d()).unwrap();
        assert_eq!(
            bus.insert(0x108, 0x10, d()),
            Err(Error::Overlap(0x108, 0x10))
        );
        assert_eq!(bus.insert(0xf8, 0x10, d()), Err(Error::Overlap(0xf8, 0x10)));
        assert_eq!(bus.insert(0x0, 0, d()), Err(Error::Invalid(0, 0)));
        bus.insert(0x110, 0x10, d()).unwrap();
        bus.insert(0xf0, 0x10, d()).unwrap();
    }
}
