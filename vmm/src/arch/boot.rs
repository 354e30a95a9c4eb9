//! Loading the guest: kernel (bzImage, ELF vmlinux or flat real-mode code),
//! initrd and command line into guest memory, plus the Linux zero page with
//! its e820 map. Returns where the boot vCPU starts.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout;
use crate::config::KernelFormat;
use crate::memory::GuestMemory;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Initrds must end below this unless the kernel header says otherwise.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Loading failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}")]
    File {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither bzImage nor ELF.
    #[error("{0} is neither a bzImage nor an ELF vmlinux")]
    KernelFormat(PathBuf, #[source] loader::Error),
    /// A raw image does not fit.
    #[error("raw image {0} is larger than {1} bytes")]
    RawTooLarge(PathBuf, u64),
    /// The initrd does not fit under the kernel's limit.
    #[error("initrd of {0} bytes does not fit in guest memory below {1:#x}")]
    InitrdTooLarge(u64, u64),
    /// Guest memory write failed.
    #[error("writing {0} into guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
    /// The command line was refused.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be placed.
    #[error("placing the kernel command line")]
    CmdlineLoad(#[source] loader::Error),
    /// The zero page could not be written.
    #[error("writing the Linux zero page")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit Linux boot protocol: long mode, `rip`, `rsi` = zero page.
    Linux64 {
        /// 64-bit entry point.
        rip: u64,
    },
    /// Real mode at `RAW_IMAGE_ADDR`.
    RealMode {
        /// Physical load address (CS base).
        addr: u64,
    },
}

/// What the loader needs to know.
#[derive(Debug)]
pub struct BootSpec<'a> {
    /// Kernel file.
    pub kernel: &'a Path,
    /// Its format.
    pub format: KernelFormat,
    /// Optional initramfs.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RSDP address for the zero page.
    pub rsdp_addr: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File> {
    File::open(path).map_err(|source| Error::File {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Checks that the kernel and initrd files can be opened (early, before KVM).
pub fn check_files(kernel: &Path, initrd: Option<&Path>) -> Result<()> {
    open("kernel", kernel)?;
    if let Some(i) = initrd {
        open("initrd", i)?;
    }
    Ok(())
}

/// Loads everything and returns the boot vCPU's entry.
pub fn load(mem: &GuestMemory, spec: &BootSpec) -> Result<Entry> {
    let mut kernel = open("kernel", spec.kernel)?;
    if spec.format == KernelFormat::Raw {
        return load_raw(mem, spec.kernel, &mut kernel);
    }
    let high = GuestAddress(layout::HIGH_MEMORY_START);
    let (result, rip) = match BzImage::load(mem, None, &mut kernel, Some(high)) {
        Ok(r) => (r, r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
        Err(_) => {
            let r = Elf::load(mem, None, &mut kernel, Some(high))
                .map_err(|e| Error::KernelFormat(spec.kernel.to_owned(), e))?;
            (r, r.kernel_load.0)
        }
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;

    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cmdline.insert_str(spec.cmdline).map_err(Error::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), &cmdline)
        .map_err(Error::CmdlineLoad)?;
    params.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = spec.cmdline.len() as u32 + 1;

    if let Some(path) = spec.initrd {
        let limit = match params.hdr.initrd_addr_max {
            0 => DEFAULT_INITRD_ADDR_MAX,
            m => u64::from(m),
        };
        let (addr, size) = load_initrd(mem, path, limit)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = spec.rsdp_addr;
    let e820 = e820_map(mem);
    params.e820_entries = e820.len() as u8;
    params.e820_table[..e820.len()].copy_from_slice(&e820);

    let bp = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(Error::BootParams)?;
    Ok(Entry::Linux64 { rip })
}

fn load_raw(mem: &GuestMemory, path: &Path, file: &mut File) -> Result<Entry> {
    let mut code = Vec::new();
    file.read_to_end(&mut code).map_err(|source| Error::File {
        what: "kernel",
        path: path.to_owned(),
        source,
    })?;
    let room = layout::EBDA_START - layout::RAW_IMAGE_ADDR;
    if code.len() as u64 > room {
        return Err(Error::RawTooLarge(path.to_owned(), room));
    }
    mem.write_slice(&code, GuestAddress(layout::RAW_IMAGE_ADDR))
        .map_err(|e| Error::Memory("raw image", e))?;
    Ok(Entry::RealMode {
        addr: layout::RAW_IMAGE_ADDR,
    })
}

/// Places the initrd page-aligned as high as possible below `limit` and
/// below the end of the first RAM region; returns (address, size).
fn load_initrd(mem: &GuestMemory, path: &Path, limit: u64) -> Result<(u64, u64)> {
    let mut f = open("initrd", path)?;
    let size = f.seek(SeekFrom::End(0)).map_err(|source| Error::File {
        what: "initrd",
        path: path.to_owned(),
        source,
    })?;
    f.seek(SeekFrom::Start(0)).map_err(|source| Error::File {
        what: "initrd",
        path: path.to_owned(),
        source,
    })?;
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().0 + r.len())
        .unwrap_or(0);
    let top = low_end.min(limit + 1);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= layout::HIGH_MEMORY_START + (16 << 20))
        .ok_or(Error::InitrdTooLarge(size, top))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| Error::Memory("initrd", e))?;
    Ok((addr, size))
}

/// The e820 map: low RAM, the reserved legacy hole (holding the ACPI
/// tables), and every RAM region from 1 MiB up.
pub fn e820_map(mem: &GuestMemory) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, t: u32| boot_e820_entry {
        addr,
        size,
        r#type: t,
    };
    let mut map = vec![
        entry(0, layout::EBDA_START, E820_RAM),
        entry(
            layout::EBDA_START,
            layout::HIGH_MEMORY_START - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for r in mem.iter() {
        let start = r.start_addr().0;
        let end = start + r.len();
        let start = start.max(layout::HIGH_MEMORY_START);
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmpfile(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kt-vmm-boot-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(data).unwrap();
        p
    }

    #[test]
    fn e820_reserves_the_legacy_hole() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(
            (map[0].addr, map[0].size, map[0].r#type),
            (0, 0x9fc00, E820_RAM)
        );
        assert_eq!({ map[1].r#type }, E820_RESERVED);
        assert!(map[1].addr <= layout::ACPI_START);
        assert_eq!(map[1].addr + map[1].size, 0x10_0000);
        assert_eq!(
            (map[2].addr, map[2].size),
            (0x10_0000, (64 << 20) - 0x10_0000)
        );
    }

    #[test]
    fn raw_image_lands_at_its_address() {
        let mem = crate::memory::create(4 << 20).unwrap();
        let p = tmpfile("raw", &[0xf4]);
        let spec = BootSpec {
            kernel: &p,
            format: KernelFormat::Raw,
            initrd: None,
            cmdline: "",
            rsdp_addr: 0,
        };
        let e = load(&mem, &spec).unwrap();
        assert_eq!(
            e,
            Entry::RealMode {
                addr: layout::RAW_IMAGE_ADDR
            }
        );
        let b: u8 = mem.read_obj(GuestAddress(layout::RAW_IMAGE_ADDR)).unwrap();
        assert_eq!(b, 0xf4);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn garbage_kernel_is_refused() {
        let mem = crate::memory::create(32 << 20).unwrap();
        let p = tmpfile("garbage", &[0u8; 4096]);
        let spec = BootSpec {
            kernel: &p,
            format: KernelFormat::Auto,
            initrd: None,
            cmdline: "console=ttyS0",
            rsdp_addr: 0,
        };
        assert!(matches!(load(&mem, &spec), Err(Error::KernelFormat(..))));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let p = tmpfile("initrd", &[7u8; 10000]);
        let (addr, size) = load_initrd(&mem, &p, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(size, 10000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        assert!(addr + size + 4096 > 64 << 20);
        assert!(mem.address_in_range(GuestAddress(addr)));
        let b: u8 = mem.read_obj(GuestAddress(addr + 9999)).unwrap();
        assert_eq!(b, 7);
        std::fs::remove_file(p).unwrap();
    }
}
