//! ACPI tables for a hardware-reduced x86 machine: RSDP, XSDT, FADT, MADT
//! (one local APIC per vCPU and the IOAPIC) and a DSDT that describes each
//! virtio-mmio device as `LNRO0005` (what the stock kernel's `virtio_mmio`
//! module binds to) plus `_S5_` so the guest can power off.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"KTVMM ";
const OEM_TABLE_ID: [u8; 8] = *b"KTVMMTBL";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);
/// Alignment of each table after the RSDP.
const TABLE_ALIGN: u64 = 16;
/// Room for all tables (the reserved BIOS area 0xe0000..0x100000).
const ACPI_AREA_SIZE: u64 = layout::HIGH_MEMORY_START - layout::ACPI_START;

/// One virtio-mmio device as ACPI describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Register window base.
    pub addr: u64,
    /// Register window size.
    pub size: u64,
    /// Its interrupt (edge, active high).
    pub gsi: u32,
}

/// Failures writing tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tables do not fit in the BIOS area.
    #[error("ACPI tables need {0} bytes, more than the {ACPI_AREA_SIZE} available")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("writing ACPI tables into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// Builds the DSDT body.
pub fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    let crs: Vec<(aml::Memory32Fixed, aml::Interrupt)> = devices
        .iter()
        .map(|d| {
            (
                aml::Memory32Fixed::new(true, d.addr as u32, d.size as u32),
                aml::Interrupt::new(true, true, false, false, d.gsi),
            )
        })
        .collect();
    let templates: Vec<aml::ResourceTemplate> = crs
        .iter()
        .map(|(m, i)| aml::ResourceTemplate::new(vec![m, i]))
        .collect();
    let names: Vec<(aml::Name, aml::Name, aml::Name)> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                aml::Name::new("_HID".into(), &"LNRO0005"),
                aml::Name::new("_UID".into(), &(i as u32)),
                aml::Name::new("_CRS".into(), t),
            )
        })
        .collect();
    let device_paths: Vec<String> = (0..devices.len()).map(|i| format!("V{i:03X}")).collect();
    let devs: Vec<aml::Device> = names
        .iter()
        .zip(&device_paths)
        .map(|((hid, uid, crs), p)| aml::Device::new(p.as_str().into(), vec![hid, uid, crs]))
        .collect();
    // COM1: without it a hardware-reduced guest has no legacy IRQ mapping
    // for IRQ 4 and the 8250 driver's interrupts never arrive.
    let com1_io = aml::IO::new(layout::SERIAL_PORT, layout::SERIAL_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::SERIAL_GSI);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_res = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_res]);
    let mut children: Vec<&dyn Aml> = vec![&com1];
    children.extend(devs.iter().map(|d| d as &dyn Aml));
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    let s5_type = layout::ACPI_S5_SLEEP_TYPE;
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&s5_type])).to_aml_bytes(&mut body);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

/// Builds the FADT: hardware-reduced, with sleep control/status and reset
/// registers in I/O space and the DSDT's address.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.reset_reg = io(layout::ACPI_RESET_PORT);
    b.reset_value = layout::ACPI_RESET_VALUE;
    b.sleep_control_reg = io(layout::ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io(layout::ACPI_SLEEP_STATUS_PORT);
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"KTVMM\0\0\0").into();
    let mut v = Vec::new();
    b.finalize().to_aml_bytes(&mut v);
    v
}

/// Builds the MADT for `cpus` local APICs and one IOAPIC.
pub fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC_ADDR),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(0, layout::IOAPIC_ADDR, 0));
    let mut v = Vec::new();
    m.to_aml_bytes(&mut v);
    v
}

fn align(x: u64) -> u64 {
    x.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Lays out and writes all tables at `layout::ACPI_START`; returns the RSDP address.
pub fn write(mem: &GuestMemory, cpus: u8, devices: &[MmioDevice]) -> Result<u64, Error> {
    let rsdp_addr = layout::ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt(devices);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let end = xsdt_addr + xsdt_bytes.len() as u64;
    if end > layout::HIGH_MEMORY_START {
        return Err(Error::TooLarge(end - layout::ACPI_START));
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    for (addr, bytes) in [
        (rsdp_addr, &rsdp),
        (dsdt_addr, &dsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (xsdt_addr, &xsdt_bytes),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(Error::Memory)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn len_field(b: &[u8]) -> usize {
        u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize
    }

    fn dev(i: usize) -> MmioDevice {
        MmioDevice {
            addr: layout::virtio_mmio_addr(i),
            size: layout::VIRTIO_MMIO_SIZE,
            gsi: layout::virtio_gsi(i),
        }
    }

    #[test]
    fn tables_checksum_to_zero_and_lengths_match() {
        for t in [dsdt(&[dev(0), dev(1)]), fadt(0xe0040), madt(4)] {
            assert_eq!(sum(&t), 0);
            assert_eq!(len_field(&t), t.len());
        }
    }

    #[test]
    fn madt_has_one_lapic_per_cpu_and_an_ioapic() {
        let m = madt(3);
        assert_eq!(&m[..4], b"APIC");
        // 44-byte header, 8 bytes per local APIC, 12 for the IOAPIC.
        assert_eq!(m.len(), 44 + 3 * 8 + 12);
        assert_eq!(&m[44..48], &[0, 8, 0, 0]);
        assert_eq!(&m[60..64], &[0, 8, 2, 2]);
        assert_eq!(m[68], 1);
    }

    #[test]
    fn dsdt_names_lnro0005_with_window_and_irq() {
        let d = dsdt(&[dev(0)]);
        let find = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"LNRO0005\0"));
        assert!(find(b"_S5_"));
        assert!(find(b"COM1"));
        // EISA ID of PNP0501.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        // Memory32Fixed: tag 0x86, length 9, RW, base, size.
        let mut mem = vec![0x86, 9, 0, 1];
        mem.extend_from_slice(&(layout::VIRTIO_MMIO_BASE as u32).to_le_bytes());
        mem.extend_from_slice(&(layout::VIRTIO_MMIO_SIZE as u32).to_le_bytes());
        assert!(find(&mem));
        // Extended interrupt: consumer, edge, active high, one GSI.
        let mut irq = vec![0x89, 6, 0, 0b11, 1];
        irq.extend_from_slice(&layout::virtio_gsi(0).to_le_bytes());
        assert!(find(&irq));
    }

    #[test]
    fn fadt_is_hardware_reduced_and_points_at_dsdt() {
        let f = fadt(0x1234_5678);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_eq!(
            u64::from_le_bytes(f[140..148].try_into().unwrap()),
            0x1234_5678
        );
    }

    #[test]
    fn written_tables_chain_from_the_rsdp() {
        let mem = crate::memory::create(16 << 20).unwrap();
        let rsdp = write(&mem, 2, &[dev(0)]).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let mut x = [0u8; 52];
        mem.read_slice(&mut x, GuestAddress(xsdt)).unwrap();
        assert_eq!(&x[..4], b"XSDT");
        assert_eq!(sum(&x), 0);
        let fadt = u64::from_le_bytes(x[36..44].try_into().unwrap());
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(fadt)).unwrap();
        assert_eq!(&sig, b"FACP");
    }
}
