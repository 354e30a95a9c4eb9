//! vCPU threads and the KVM exit handler. The handler is a plain function
//! over the two buses and the exit signal, so it is testable without KVM.

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use kvm_bindings::{
    kvm_regs, kvm_sregs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Re-enter the guest.
    Continue,
    /// Leave the run loop (an exit reason was recorded).
    Stop,
}

/// The buses a vCPU routes exits to.
#[derive(Debug)]
pub struct Buses {
    /// Port I/O.
    pub io: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Handles one KVM exit of vCPU `cpu`.
pub fn handle_exit(exit: VcpuExit, buses: &Buses, signal: &ExitSignal, cpu: u8) -> Flow {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.io.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            buses.io.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                log::debug!("vCPU {cpu}: read of unmapped MMIO {addr:#x}");
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                log::debug!("vCPU {cpu}: write to unmapped MMIO {addr:#x}");
            }
        }
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        VcpuExit::Shutdown => {
            signal.request(ExitReason::TripleFault { cpu });
            return Flow::Stop;
        }
        VcpuExit::SystemEvent(kind, _) => {
            let reason = match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset {
                    via: "KVM system event",
                },
                KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestFailure {
                    cpu,
                    what: "guest crash system event".into(),
                },
                other => ExitReason::GuestFailure {
                    cpu,
                    what: format!("system event {other}"),
                },
            };
            signal.request(reason);
            return Flow::Stop;
        }
        VcpuExit::FailEntry(reason, hw_cpu) => {
            signal.request(ExitReason::GuestFailure {
                cpu,
                what: format!("VM entry failed (reason {reason:#x}, host CPU {hw_cpu})"),
            });
            return Flow::Stop;
        }
        VcpuExit::InternalError => {
            signal.request(ExitReason::GuestFailure {
                cpu,
                what: "KVM internal error (emulation failure)".into(),
            });
            return Flow::Stop;
        }
        other => {
            signal.request(ExitReason::GuestFailure {
                cpu,
                what: format!("unhandled KVM exit {other:?}"),
            });
            return Flow::Stop;
        }
    }
    if signal.reason().is_some() {
        Flow::Stop
    } else {
        Flow::Continue
    }
}

/// Runs vCPU `cpu` on its own thread until the VM stops.
pub fn spawn(
    mut vcpu: VcpuFd,
    cpu: u8,
    buses: Arc<Buses>,
    signal: Arc<ExitSignal>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("vcpu{cpu}"))
        .spawn(move || loop {
            match vcpu.run() {
                Ok(exit) => {
                    if handle_exit(exit, &buses, &signal, cpu) == Flow::Stop {
                        log_failed_state(&vcpu, &signal, cpu);
                        break;
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    signal.request(ExitReason::GuestFailure {
                        cpu,
                        what: format!("KVM_RUN failed: {e}"),
                    });
                    break;
                }
            }
        })
}

/// After a triple fault or another guest failure of vCPU `cpu`, logs its
/// registers (where it was, its paging and descriptor-table state), so a
/// rare failure leaves more than its name behind.
fn log_failed_state(vcpu: &VcpuFd, signal: &ExitSignal, cpu: u8) {
    match signal.reason() {
        Some(ExitReason::TripleFault { cpu: c } | ExitReason::GuestFailure { cpu: c, .. })
            if c == cpu => {}
        _ => return,
    }
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => log::error!("vCPU {cpu} state: {}", state_line(&regs, &sregs)),
        (Err(e), _) | (_, Err(e)) => log::error!("vCPU {cpu} state: unreadable: {e}"),
    }
}

/// One line of the registers that locate a failure.
fn state_line(r: &kvm_regs, s: &kvm_sregs) -> String {
    format!(
        "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
         efer={:#x} cs={:#x}/{:#x} ss={:#x} idt={:#x}+{:#x} gdt={:#x}+{:#x} \
         interrupt_bitmap={:x?}",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.cs.selector,
        s.cs.base,
        s.ss.selector,
        s.idt.base,
        s.idt.limit,
        s.gdt.base,
        s.gdt.limit,
        s.interrupt_bitmap
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::i8042::I8042;
    use crate::devices::serial::SerialDevice;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    type TestSerial = Arc<Mutex<SerialDevice<Vec<u8>>>>;

    fn machine() -> (Buses, Arc<ExitSignal>, TestSerial) {
        let signal = Arc::new(ExitSignal::new().unwrap());
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Vec::new(),
        )));
        let mut io = Bus::new();
        io.insert(0x3f8, 8, serial.clone()).unwrap();
        io.insert(0x60, 5, Arc::new(Mutex::new(I8042::new(signal.clone()))))
            .unwrap();
        (
            Buses {
                io,
                mmio: Bus::new(),
            },
            signal,
            serial,
        )
    }

    #[test]
    fn port_writes_reach_serial_and_reset_stops() {
        let (buses, signal, serial) = machine();
        for b in b"OK" {
            let f = handle_exit(VcpuExit::IoOut(0x3f8, &[*b]), &buses, &signal, 0);
            assert_eq!(f, Flow::Continue);
        }
        assert_eq!(serial.lock().unwrap().writer().as_slice(), b"OK");
        let f = handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), &buses, &signal, 0);
        assert_eq!(f, Flow::Stop);
        assert_eq!(signal.reason(), Some(ExitReason::Reset { via: "i8042" }));
    }

    #[test]
    fn unmapped_reads_float_high() {
        let (buses, signal, _) = machine();
        let mut d = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x2f8, &mut d), &buses, &signal, 0);
        assert_eq!(d, [0xff, 0xff]);
        let mut m = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut m), &buses, &signal, 0);
        assert_eq!(m, [0xff; 4]);
        assert_eq!(signal.reason(), None);
    }

    #[test]
    fn failed_state_names_the_registers() {
        let r = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            rsp: 0x1000,
            ..Default::default()
        };
        let mut s = kvm_sregs {
            cr2: 0xdead_0000,
            efer: 0xd01,
            ..Default::default()
        };
        s.idt.base = 0xffff_fe00_0000_0000;
        s.idt.limit = 0xfff;
        let line = state_line(&r, &s);
        for want in [
            "rip=0xffffffff81000000",
            "rsp=0x1000",
            "cr2=0xdead0000",
            "efer=0xd01",
            "idt=0xfffffe0000000000+0xfff",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
    }

    #[test]
    fn triple_fault_and_system_events() {
        let (buses, signal, _) = machine();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses, &signal, 1),
            Flow::Stop
        );
        assert_eq!(signal.reason(), Some(ExitReason::TripleFault { cpu: 1 }));
        let (buses, signal, _) = machine();
        let f = handle_exit(
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
            &buses,
            &signal,
            0,
        );
        assert_eq!(f, Flow::Stop);
        assert_eq!(signal.reason(), Some(ExitReason::PowerOff));
        let (buses, signal, _) = machine();
        handle_exit(VcpuExit::InternalError, &buses, &signal, 0);
        assert_eq!(signal.reason().map(|r| r.code()), Some(2));
    }
}
