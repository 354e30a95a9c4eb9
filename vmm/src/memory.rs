//! Guest RAM: one memfd holds all of it (so a vhost-user backend can map it
//! from SET_MEM_TABLE), mapped shared into kt-vmm and registered with KVM.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout;

/// Guest memory type used throughout kt-vmm.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Memory setup failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// memfd_create failed.
    #[error("memfd_create for guest memory")]
    Memfd(#[source] io::Error),
    /// Sizing the memfd failed.
    #[error("sizing the guest memory memfd to {1} bytes")]
    Truncate(#[source] io::Error, u64),
    /// Mapping failed.
    #[error("mapping guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("registering guest memory with KVM")]
    Slot(#[source] kvm_ioctls::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Creates `size` bytes of memfd-backed guest RAM laid out per `layout::ram_regions`.
pub fn create(size: u64) -> Result<GuestMemory> {
    let name: &CStr = c"kt-vmm-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| Error::Truncate(e, size))?;
    let mut offset = 0;
    let mut ranges = Vec::new();
    for (start, len) in layout::ram_regions(size) {
        let f = file.try_clone().map_err(Error::Memfd)?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(f, offset)),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(Error::Map)?;
    advise_huge_pages(&mem);
    Ok(mem)
}

/// Asks for transparent huge pages on guest RAM: fewer (nested) page faults
/// and TLB misses. Takes effect where shmem THP is enabled for madvise
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `advise`);
/// elsewhere it changes nothing, so failure is only logged.
fn advise_huge_pages(mem: &GuestMemory) {
    for region in mem.iter() {
        let (addr, len) = (region.as_ptr(), region.len() as usize);
        // SAFETY: `addr..addr+len` is a live mapping owned by `mem`;
        // MADV_HUGEPAGE changes no contents.
        let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Registers every region of `mem` as a KVM memory slot.
pub fn register(vm: &VmFd, mem: &GuestMemory) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the mapping belongs to `mem`, which the VMM keeps alive for
        // as long as the VM exists.
        unsafe { vm.set_user_memory_region(r) }.map_err(Error::Slot)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memfd_memory_is_file_backed_and_usable() {
        let mem = create(4 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let r = mem.iter().next().unwrap();
        assert!(r.file_offset().is_some());
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }
}
