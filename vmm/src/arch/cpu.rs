//! Per-vCPU x86_64 state at boot: CPUID, MSRs, FPU, local APIC LINT pins,
//! and the registers for either the 64-bit Linux boot protocol (GDT and an
//! identity-mapped first GiB written into guest memory) or real mode.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::boot::Entry;
use super::layout;
use crate::memory::GuestMemory;

/// vCPU setup failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU setup: {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Not every boot MSR was accepted.
    #[error("KVM accepted only {0} of {1} boot MSRs")]
    Msrs(usize, usize),
    /// Building a FAM wrapper failed.
    #[error("building {0}")]
    Fam(&'static str, #[source] vmm_sys_util::fam::Error),
    /// Guest memory write failed.
    #[error("writing {0} into guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// CPUID.1:ECX bits KVM emulates or that mark a guest.
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID1_EDX_HTT: u32 = 1 << 28;

/// GDT: null, 64-bit code, data, TSS (flat).
pub const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];

/// KVM's supported CPUID, for every vCPU to adapt.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))
}

/// Adapts KVM's CPUID for vCPU `id` of `count`: APIC IDs, topology
/// (one core per vCPU, one package), hypervisor and TSC-deadline bits.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    let core_bits = u32::from(count).next_power_of_two().trailing_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= CPUID1_ECX_TSC_DEADLINE | CPUID1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= CPUID1_EDX_HTT;
                }
            }
            0xb | 0x1f => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets CPUID, MSRs, FPU and LAPIC of a vCPU (boot vCPU or AP).
pub fn setup_common(vcpu: &VcpuFd, cpuid: &CpuId, id: u8, count: u8) -> Result<()> {
    let mut cpuid = cpuid.clone();
    patch_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|e| Error::Fam("MSR list", e))?;
    let n = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::Kvm("KVM_SET_MSRS", e))?;
    if n != entries.len() {
        return Err(Error::Msrs(n, entries.len()));
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| Error::Kvm("KVM_SET_FPU", e))?;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))
}

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = |i: usize| lapic.regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[off + i] = *byte as _;
    }
}

/// LINT0 = ExtINT (the legacy PIC), LINT1 = NMI, as firmware leaves them.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let l0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_mode(l0, APIC_MODE_EXTINT));
    let l1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_mode(l1, APIC_MODE_NMI));
}

/// A segment register from a GDT entry.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and the identity page tables (first GiB, 2 MiB pages).
pub fn write_boot_tables(mem: &GuestMemory) -> Result<()> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + i as u64 * 8))
            .map_err(|e| Error::Memory("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_ADDR))
        .map_err(|e| Error::Memory("IDT", e))?;
    mem.write_obj(layout::PDPT_ADDR | 3, GuestAddress(layout::PML4_ADDR))
        .map_err(|e| Error::Memory("PML4", e))?;
    mem.write_obj(layout::PD_ADDR | 3, GuestAddress(layout::PDPT_ADDR))
        .map_err(|e| Error::Memory("PDPT", e))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PD_ADDR + i * 8))
            .map_err(|e| Error::Memory("page directory", e))?;
    }
    Ok(())
}

/// Registers of the boot vCPU for `entry`.
pub fn setup_boot_regs(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
    let regs = match entry {
        Entry::Linux64 { rip } => {
            long_mode_sregs(&mut sregs);
            kvm_regs {
                rflags: 2,
                rip,
                rsp: layout::BOOT_STACK_POINTER,
                rbp: layout::BOOT_STACK_POINTER,
                rsi: layout::ZERO_PAGE_ADDR,
                ..Default::default()
            }
        }
        Entry::RealMode { addr } => {
            sregs.cs.base = addr;
            sregs.cs.selector = (addr >> 4) as u16;
            kvm_regs {
                rflags: 2,
                rip: 0,
                rsp: 0xfff0,
                ..Default::default()
            }
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&regs)
        .map_err(|e| Error::Kvm("KVM_SET_REGS", e))
}

/// 64-bit mode with paging on the identity tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let code = segment(GDT[1], 1);
    let data = segment(GDT[2], 2);
    let tss = segment(GDT[3], 3);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = layout::PML4_ADDR;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn gdt_code_segment_is_64_bit() {
        let cs = segment(GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s),
            (8, 1, 0, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = segment(GDT[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (24, 0xb, 0));
    }

    #[test]
    fn long_mode_sregs_enable_paging() {
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cr3, layout::PML4_ADDR);
    }

    #[test]
    fn cpuid_gets_apic_id_and_topology() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut c, 2, 3);
        let e = c.as_slice();
        assert_eq!(e[0].ebx, 0x0203_0800);
        assert_ne!(e[0].ecx & CPUID1_ECX_HYPERVISOR, 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 3, 2));
    }

    #[test]
    fn lint_modes_are_extint_and_nmi() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0000);
        set_lint_modes(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn boot_tables_identity_map_the_first_gib() {
        let mem = crate::memory::create(4 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress(layout::PD_ADDR + 511 * 8))
            .unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_ADDR)).unwrap();
        assert_eq!(pml4, layout::PDPT_ADDR | 3);
    }
}
