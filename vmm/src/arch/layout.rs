//! Every guest-physical address and fixed resource of the x86_64 machine
//! kt-vmm builds, in one place.

/// Where the GDT lives.
pub const GDT_ADDR: u64 = 0x500;
/// Where the (empty) IDT lives.
pub const IDT_ADDR: u64 = 0x520;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, PD.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory (2 MiB pages covering the first GiB).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line the guest gets (bytes, with the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Where a flat real-mode image (`--kernel-format raw`) is loaded and entered.
pub const RAW_IMAGE_ADDR: u64 = 0x10000;
/// End of conventional low memory handed to the guest as RAM.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS read-only area, RSDP first (the kernel
/// also scans 0xe0000..0x100000 for it).
pub const ACPI_START: u64 = 0xe0000;
/// End of the legacy hole: everything below is reserved except low RAM.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; devices follow every `VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's three-page TSS area (just below the BIOS ROM).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// COM1 I/O base and its ISA interrupt.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt line.
pub const SERIAL_GSI: u32 = 4;
/// i8042 keyboard controller: data port 0x60, command port 0x64.
pub const I8042_PORT: u16 = 0x60;
/// ACPI hardware-reduced sleep control register (write `SLP_EN | SLP_TYP`).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI hardware-reduced sleep status register (reads 0).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// ACPI reset register; writing `ACPI_RESET_VALUE` resets the machine.
pub const ACPI_RESET_PORT: u16 = 0x3c2;
/// Value the guest writes to `ACPI_RESET_PORT` to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// `SLP_TYP` of the S5 (soft off) state as the DSDT's `_S5_` declares it.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// GSI of the first virtio-mmio device; device `i` uses `VIRTIO_GSI_BASE + i`.
pub const VIRTIO_GSI_BASE: u32 = 5;
/// How many virtio-mmio devices fit (GSIs 5..=15 stay clear of the IOAPIC's
/// PCI-style pins 16..23).
pub const MAX_VIRTIO_DEVICES: usize = 11;

/// Guest-physical base address of virtio-mmio device `index`.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE
}

/// GSI of virtio-mmio device `index`.
pub fn virtio_gsi(index: usize) -> u32 {
    VIRTIO_GSI_BASE + index as u32
}

/// The RAM regions (start, size) for `mem_size` bytes of guest memory:
/// one region below the MMIO gap and, if needed, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_below_gap_is_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
    }

    #[test]
    fn ram_above_gap_is_split_at_four_gib() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }

    const _: () = assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START);

    #[test]
    fn virtio_windows_sit_in_the_gap_and_below_the_ioapic() {
        let last = virtio_mmio_addr(MAX_VIRTIO_DEVICES - 1) + VIRTIO_MMIO_SIZE;
        assert!(last <= u64::from(IOAPIC_ADDR));
        assert!(virtio_gsi(MAX_VIRTIO_DEVICES - 1) < 16);
    }
}
