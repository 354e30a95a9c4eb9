//! Opening `/dev/kvm` and deciding whether it can run a guest: the API
//! version, the capabilities kt-vmm relies on, and whether this KVM is an
//! emulating nested hypervisor (kvm_pvm) under which Linux never boots in
//! reasonable time.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_API_VERSION};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Capabilities the VMM needs, with the names users see.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// Module whose presence marks the emulating nested hypervisor.
pub const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// A probe loop that takes longer than this means KVM emulates guest code.
pub const SLOW_PROBE_LIMIT: Duration = Duration::from_millis(100);

/// Iterations of the probe guest's loop (two instructions each).
const PROBE_ITERATIONS: u32 = 100_000;

/// The message for an emulating KVM (shared by both detection paths).
pub const EMULATING_MSG: &str = "KVM here is an emulating nested hypervisor (kvm_pvm): guests \
    run ~1000x slower; use a real KVM host or the KVM runner VM (images/runner), or pass \
    --allow-slow-kvm";

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device node does not exist.
    #[error("{0} does not exist: KVM is not available here (load kvm-intel or kvm-amd, or use a host with hardware virtualization)")]
    NoDevice(PathBuf),
    /// The device node cannot be opened.
    #[error("cannot open {path}")]
    Open {
        /// Device path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel's KVM API is not the one kt-vmm speaks.
    #[error("KVM API version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// Some required capabilities are missing.
    #[error("KVM lacks required capabilities: {}", .0.join(", "))]
    MissingCaps(Vec<&'static str>),
    /// The KVM emulates guests (detected by module or by timing).
    #[error("{EMULATING_MSG} ({0})")]
    Emulating(String),
    /// The timing probe itself failed.
    #[error("KVM probe guest failed: {0}")]
    Probe(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Opens the KVM device and checks API version and capabilities; then,
/// unless `allow_slow`, refuses an emulating KVM.
pub fn open(path: &Path, allow_slow: bool) -> Result<Kvm> {
    let kvm = open_device(path)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION as i32 {
        return Err(Error::ApiVersion(version));
    }
    let missing = missing_caps(|c| kvm.check_extension(c));
    if !missing.is_empty() {
        return Err(Error::MissingCaps(missing));
    }
    let pvm = Path::new(PVM_MODULE).exists();
    if allow_slow {
        if pvm {
            log::warn!("{EMULATING_MSG}; continuing because of --allow-slow-kvm");
        }
        return Ok(kvm);
    }
    if pvm {
        return Err(Error::Emulating(format!("{PVM_MODULE} is present")));
    }
    let took = probe_speed(&kvm)?;
    if took > SLOW_PROBE_LIMIT {
        return Err(Error::Emulating(format!(
            "a {}-instruction probe loop took {} ms",
            2 * PROBE_ITERATIONS,
            took.as_millis()
        )));
    }
    log::debug!("KVM probe loop took {took:?}");
    Ok(kvm)
}

fn open_device(path: &Path) -> Result<Kvm> {
    if !path.exists() {
        return Err(Error::NoDevice(path.to_owned()));
    }
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::Open {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    Kvm::new_with_path(&cpath).map_err(|e| Error::Open {
        path: path.to_owned(),
        source: io::Error::from_raw_os_error(e.errno()),
    })
}

/// Names of the required capabilities `has` denies.
pub fn missing_caps(has: impl Fn(Cap) -> bool) -> Vec<&'static str> {
    REQUIRED_CAPS
        .iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| *n)
        .collect()
}

/// Real-mode probe: `mov ecx, N; l: dec ecx; jnz l; out 0x80, al; hlt`.
pub fn probe_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xe6, 0x80, 0xf4]);
    code
}

/// Runs the probe loop in a throwaway VM and returns how long it took.
fn probe_speed(kvm: &Kvm) -> Result<Duration> {
    let probe = |what: &str, e: kvm_ioctls::Error| Error::Probe(format!("{what}: {e}"));
    let vm = kvm.create_vm().map_err(|e| probe("create VM", e))?;
    let base = GuestAddress(0x1000);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(base, 0x1000)])
        .map_err(|e| Error::Probe(format!("memory: {e}")))?;
    mem.write_slice(&probe_code(PROBE_ITERATIONS), base)
        .map_err(|e| Error::Probe(format!("memory: {e}")))?;
    let host = mem
        .get_host_address(base)
        .map_err(|e| Error::Probe(format!("memory: {e}")))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: base.0,
        memory_size: 0x1000,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region maps `mem`, which outlives `vm` (dropped first below).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| probe("memory", e))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| probe("vCPU", e))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| probe("get sregs", e))?;
    sregs.cs.base = 0x1000;
    sregs.cs.selector = 0x100;
    vcpu.set_sregs(&sregs).map_err(|e| probe("set sregs", e))?;
    let mut regs = vcpu.get_regs().map_err(|e| probe("get regs", e))?;
    regs.rip = 0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| probe("set regs", e))?;
    let start = Instant::now();
    match vcpu.run().map_err(|e| probe("run", e))? {
        VcpuExit::IoOut(0x80, _) | VcpuExit::Hlt => {}
        other => return Err(Error::Probe(format!("unexpected exit {other:?}"))),
    }
    let took = start.elapsed();
    drop(vcpu);
    drop(vm);
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_caps_lists_names() {
        assert!(missing_caps(|_| true).is_empty());
        let m = missing_caps(|c| c != Cap::Irqfd && c != Cap::Pit2);
        assert_eq!(m, vec!["KVM_CAP_PIT2", "KVM_CAP_IRQFD"]);
    }

    #[test]
    fn probe_code_encodes_iterations_and_ends_in_out_hlt() {
        let c = probe_code(0x0102_0304);
        assert_eq!(&c[..6], &[0x66, 0xb9, 0x04, 0x03, 0x02, 0x01]);
        assert_eq!(&c[c.len() - 3..], &[0xe6, 0x80, 0xf4]);
    }

    #[test]
    fn missing_device_is_reported_by_path() {
        let e = open(Path::new("/nonexistent/kvm"), false).unwrap_err();
        assert!(matches!(e, Error::NoDevice(_)));
        assert!(e.to_string().starts_with("/nonexistent/kvm does not exist"));
    }
}
