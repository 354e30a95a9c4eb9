//! Builds the VM from a checked configuration and runs it: user input is
//! validated first (files, backends), then KVM, memory, devices, ACPI,
//! guest image, vCPUs; the main thread then waits in the event loop.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{acpi, boot, cpu, layout};
use crate::config::Args;
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::bus::Bus;
use crate::devices::i8042::I8042;
use crate::devices::serial::{SerialDevice, SerialOut};
use crate::event_loop::{self, ConsoleInput};
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::{self, GuestMemory};
use crate::vcpu::{self, Buses};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::reconnect::BackendWatch;
use crate::virtio::vhost_user::{self, VhostUserDevice};
use crate::virtio::vhost_user_mmio::VhostUserMmio;
use crate::{devices, kvm};

/// Everything that can stop kt-vmm before the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag combination.
    #[error("{0}")]
    Config(String),
    /// Kernel or initrd.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// KVM is missing or unusable.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// A KVM VM-level ioctl failed.
    #[error("KVM: {0}")]
    VmIoctl(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Cpu(#[from] cpu::Error),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// A vhost-user device.
    #[error(transparent)]
    VhostUser(#[from] vhost_user::Error),
    /// Device placement.
    #[error("placing devices")]
    Bus(#[from] devices::bus::Error),
    /// The serial output file.
    #[error("cannot create serial output file {0}")]
    SerialFile(PathBuf, #[source] std::io::Error),
    /// Eventfds, threads.
    #[error("{0}")]
    Os(&'static str, #[source] std::io::Error),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] event_loop::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

fn vm_ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |e| Error::VmIoctl(what, e)
}

fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(vm_ioctl("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDR)
        .map_err(vm_ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(vm_ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(vm_ioctl("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

fn eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| Error::Os("eventfd", e))
}

/// Legacy devices on the port bus; returns the serial port for console input.
fn legacy_devices(
    args: &Args,
    vm: &VmFd,
    signal: &Arc<ExitSignal>,
    io: &mut Bus,
) -> Result<Arc<Mutex<SerialDevice<SerialOut>>>> {
    let file = match &args.serial {
        Some(p) => Some(File::create(p).map_err(|e| Error::SerialFile(p.clone(), e))?),
        None => None,
    };
    let irq = eventfd()?;
    vm.register_irqfd(&irq, layout::SERIAL_GSI)
        .map_err(vm_ioctl("serial irqfd"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq,
        SerialOut::new(!args.no_stdout, file),
    )));
    io.insert(u64::from(layout::SERIAL_PORT), 8, serial.clone())?;
    io.insert(
        u64::from(layout::I8042_PORT),
        5,
        Arc::new(Mutex::new(I8042::new(signal.clone()))),
    )?;
    io.insert(
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        acpi_pm::PORTS,
        Arc::new(Mutex::new(AcpiPm::new(signal.clone()))),
    )?;
    Ok(serial)
}

/// Puts each vhost-user device on virtio-mmio; returns their ACPI
/// descriptions and a backend watch per device (reconnects).
fn virtio_devices(
    devices: Vec<VhostUserDevice>,
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
) -> Result<(Vec<acpi::MmioDevice>, Vec<event_loop::Subscriber>)> {
    let mut described = Vec::new();
    let mut watches: Vec<event_loop::Subscriber> = Vec::new();
    for (i, mut dev) in devices.into_iter().enumerate() {
        let addr = layout::virtio_mmio_addr(i);
        let gsi = layout::virtio_gsi(i);
        dev.attach(mem.clone())?;
        dev.register_with_kvm(vm, addr, gsi)?;
        let dev = Arc::new(Mutex::new(MmioTransport::new(dev)));
        watches.push(Box::new(
            BackendWatch::new(dev.clone()).map_err(|e| Error::Os("timerfd", e))?,
        ));
        mmio.insert_self_locking(
            addr,
            layout::VIRTIO_MMIO_SIZE,
            Arc::new(VhostUserMmio::new(dev)),
        )?;
        described.push(acpi::MmioDevice {
            addr,
            size: layout::VIRTIO_MMIO_SIZE,
            gsi,
        });
    }
    Ok((described, watches))
}

/// Runs the VM described by `args` until it stops.
pub fn run(args: &Args) -> Result<ExitReason> {
    let started = std::time::Instant::now();
    crate::config::validate(args).map_err(Error::Config)?;
    boot::check_files(&args.kernel, args.initrd.as_deref())?;
    let timeout = std::time::Duration::from_millis(args.vhost_user_timeout_ms);
    let backends = args
        .vhost_user
        .iter()
        .map(|spec| VhostUserDevice::connect(spec, timeout))
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let kvm = kvm::open(&args.kvm_device, args.allow_slow_kvm)?;
    let vm = create_vm(&kvm)?;
    let mem = memory::create(args.mem)?;
    memory::register(&vm, &mem)?;

    let signal = Arc::new(ExitSignal::new().map_err(|e| Error::Os("eventfd", e))?);
    let mut io = Bus::new();
    let mut mmio = Bus::new();
    let serial = legacy_devices(args, &vm, &signal, &mut io)?;
    let (described, watches) = virtio_devices(backends, &vm, &mem, &mut mmio)?;

    let rsdp_addr = acpi::write(&mem, args.cpus, &described)?;
    let spec = boot::BootSpec {
        kernel: &args.kernel,
        format: args.kernel_format,
        initrd: args.initrd.as_deref(),
        cmdline: &args.cmdline,
        rsdp_addr,
    };
    let entry = boot::load(&mem, &spec)?;
    if matches!(entry, boot::Entry::Linux64 { .. }) {
        cpu::write_boot_tables(&mem)?;
    }

    let cpuid = cpu::supported_cpuid(&kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..args.cpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(vm_ioctl("KVM_CREATE_VCPU"))?;
        cpu::setup_common(&vcpu, &cpuid, id, args.cpus)?;
        if id == 0 {
            cpu::setup_boot_regs(&vcpu, entry)?;
        }
        vcpus.push(vcpu);
    }

    log::info!(
        "VM set up in {} ms; starting {} vCPU(s)",
        started.elapsed().as_millis(),
        args.cpus
    );
    let buses = Arc::new(Buses { io, mmio });
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        vcpu::spawn(vcpu, id as u8, buses.clone(), signal.clone())
            .map_err(|e| Error::Os("spawning a vCPU thread", e))?;
    }
    let console: Arc<Mutex<dyn ConsoleInput>> = serial;
    let reason = event_loop::run(signal, Some(console), watches)?;
    // The VM, its memory and the vCPU threads end with the process.
    std::mem::forget(vm);
    std::mem::forget(mem);
    Ok(reason)
}
