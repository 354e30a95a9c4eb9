//! Where the artifacts under test are, and what this machine can run.
//!
//! Reads the environment `scripts/e2e.sh` sets: `KT_QEMU` (patched
//! qemu-system-x86_64), `KT_KERNEL` and `KT_INITRAMFS` (the guest image),
//! `KT_VHOST_DEVICE` (the backend binary; default: cargo's target dir),
//! `KT_TOOL` (the host build of the `kt` tool; default: cargo's target
//! dir), `KT_ACCEL` (force `kvm` or `tcg`). Owns lookup and host probing
//! only.

use std::path::{Path, PathBuf};

/// A required artifact is not configured or not present.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The variable is unset.
    #[error(
        "{var} is not set ({what}); run the end-to-end tests with `make test` or scripts/e2e.sh"
    )]
    Unset {
        /// Variable name.
        var: &'static str,
        /// What it names.
        what: &'static str,
    },
    /// The variable names a file that does not exist.
    #[error("{var}={path} does not exist ({what})")]
    Missing {
        /// Variable name.
        var: &'static str,
        /// Its value.
        path: PathBuf,
        /// What it names.
        what: &'static str,
    },
    /// The backend binary is neither configured nor built.
    #[error("kt-vhost-device not found: set KT_VHOST_DEVICE or build it (looked in {0})")]
    NoBackend(String),
    /// The host `kt` tool is neither configured nor built.
    #[error("kt (the host tool) not found: set KT_TOOL or build it (looked in {0})")]
    NoTool(String),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, EnvError>;

/// The existing file named by environment variable `var`.
pub fn file_from_env(var: &'static str, what: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(EnvError::Unset { var, what })?;
    if !path.exists() {
        return Err(EnvError::Missing { var, path, what });
    }
    Ok(path)
}

/// The patched QEMU (`KT_QEMU`).
pub fn qemu() -> Result<PathBuf> {
    file_from_env(
        "KT_QEMU",
        "patched qemu-system-x86_64 from images/build-qemu.sh",
    )
}

/// The guest kernel (`KT_KERNEL`).
pub fn kernel() -> Result<PathBuf> {
    file_from_env("KT_KERNEL", "guest kernel from images/build-image.sh")
}

/// The guest initramfs (`KT_INITRAMFS`).
pub fn initramfs() -> Result<PathBuf> {
    file_from_env("KT_INITRAMFS", "guest initramfs from images/build-image.sh")
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Binary `name` in cargo's target dir: the build of the same profile as
/// this test, else the other profile.
fn built_binary(name: &str) -> Option<PathBuf> {
    let target = target_dir();
    let profiles = if cfg!(debug_assertions) {
        ["debug", "release"]
    } else {
        ["release", "debug"]
    };
    profiles
        .iter()
        .map(|p| target.join(p).join(name))
        .find(|p| p.is_file())
}

/// The `kt-vhost-device` binary: `KT_VHOST_DEVICE`, else the build of the
/// same profile as this test, else the other profile.
pub fn vhost_device() -> Result<PathBuf> {
    if std::env::var_os("KT_VHOST_DEVICE").is_some() {
        return file_from_env("KT_VHOST_DEVICE", "kt-vhost-device binary");
    }
    built_binary("kt-vhost-device")
        .ok_or_else(|| EnvError::NoBackend(target_dir().display().to_string()))
}

/// The host build of the `kt` tool: `KT_TOOL`, else cargo's target dir
/// (as for [`vhost_device`]).
pub fn kt_tool() -> Result<PathBuf> {
    if std::env::var_os("KT_TOOL").is_some() {
        return file_from_env("KT_TOOL", "host build of the kt tool");
    }
    built_binary("kt").ok_or_else(|| EnvError::NoTool(target_dir().display().to_string()))
}

/// True if `/dev/kvm` is a hypervisor that runs a Linux guest at full
/// speed: it exists and is usable, and it is not the emulating nested
/// hypervisor (`kvm_pvm`) some CI machines provide, under which a guest
/// kernel never finishes booting.
pub fn fast_kvm() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return false;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
