//! Command line of `kt-vmm`: the clap definition, the parsers for sizes and
//! `--vhost-user` specs, and the checked `Config` the VMM runs from.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, ValueEnum};

use crate::arch::layout::MAX_VIRTIO_DEVICES;

/// Default guest command line: serial console, reboot through the keyboard
/// controller (which ends kt-vmm), no reboot loop after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// kt-vmm: a minimal KVM virtual machine monitor that boots a Linux guest
/// and hosts vhost-user devices on virtio-mmio (described to the guest in ACPI).
#[derive(Parser, Debug, Clone)]
#[command(name = "kt-vmm", version)]
pub struct Args {
    /// Guest kernel: a bzImage or an ELF vmlinux (or, with `--kernel-format
    /// raw`, flat 16-bit real-mode code).
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,

    /// How to load `--kernel`: `auto` tries bzImage then ELF; `raw` loads flat
    /// real-mode code at 0x10000 and starts it there (for tiny test guests).
    #[arg(long, value_enum, default_value_t = KernelFormat::Auto, value_name = "FORMAT")]
    pub kernel_format: KernelFormat,

    /// Initramfs to hand to the kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE, value_name = "STRING")]
    pub cmdline: String,

    /// Number of vCPUs (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64),
          value_name = "N")]
    pub cpus: u8,

    /// Guest memory size: bytes, or a number with a K, M or G suffix (at least 1M).
    #[arg(long, default_value = "512M", value_parser = parse_size, value_name = "SIZE")]
    pub mem: u64,

    /// A vhost-user device on virtio-mmio, repeatable:
    /// `socket=PATH,virtio-id=N,queues=N[,queue-size=N][,config-size=N]`
    /// (queue-size defaults to 256, config-size to 0).
    #[arg(long = "vhost-user", value_name = "SPEC")]
    pub vhost_user: Vec<VhostUserSpec>,

    /// Also write the guest's serial output to this file.
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,

    /// Do not copy the guest's serial output to stdout.
    #[arg(long)]
    pub no_stdout: bool,

    /// The KVM device to use.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    pub kvm_device: PathBuf,

    /// Time limit of each vhost-user request, in milliseconds. A backend
    /// that does not answer in time is treated as failed: kt-vmm logs an
    /// error, sets DEVICE_NEEDS_RESET for the guest (with a config-change
    /// interrupt when the driver is running) and reconnects.
    #[arg(long, default_value_t = DEFAULT_VHOST_USER_TIMEOUT_MS, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub vhost_user_timeout_ms: u64,

    /// Run even when /dev/kvm is an emulating (nested, page-table-based)
    /// hypervisor under which guests run about 1000 times slower.
    #[arg(long)]
    pub allow_slow_kvm: bool,
}

/// Default of `--vhost-user-timeout-ms`.
pub const DEFAULT_VHOST_USER_TIMEOUT_MS: u64 = 5000;

/// Kernel image formats `--kernel-format` accepts.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// bzImage, else ELF vmlinux.
    Auto,
    /// Flat real-mode code loaded at 0x10000.
    Raw,
}

/// One `--vhost-user` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserSpec {
    /// Backend's Unix socket.
    pub socket: PathBuf,
    /// Virtio device ID the guest sees.
    pub virtio_id: u32,
    /// Number of virtqueues.
    pub queues: u16,
    /// Largest queue size offered to the driver (a power of two).
    pub queue_size: u16,
    /// Bytes of device config space (read from the backend with GET_CONFIG).
    pub config_size: u32,
}

/// Largest config space virtio-mmio can expose (0x100..0x1000).
pub const MAX_CONFIG_SIZE: u32 = 0xf00;
/// Largest split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most queues one device may have here.
pub const MAX_QUEUES: u16 = 64;

impl FromStr for VhostUserSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut socket, mut virtio_id, mut queues) = (None, None, None);
        let (mut queue_size, mut config_size) = (256u16, 0u32);
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not key=value"))?;
            let num = |v: &str| -> Result<u64, String> {
                parse_int(v).ok_or_else(|| format!("`{key}` needs a number, not `{v}`"))
            };
            match key {
                "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
                "virtio-id" => virtio_id = Some(num(value)?),
                "queues" => queues = Some(num(value)?),
                "queue-size" => {
                    queue_size = u16::try_from(num(value)?)
                        .map_err(|_| format!("queue-size {value} is too large"))?
                }
                "config-size" => {
                    config_size = u32::try_from(num(value)?)
                        .map_err(|_| format!("config-size {value} is too large"))?
                }
                _ => return Err(format!("unknown or empty key `{key}`")),
            }
        }
        let socket = socket.ok_or("missing socket=PATH")?;
        let virtio_id = virtio_id.ok_or("missing virtio-id=N")?;
        let queues = queues.ok_or("missing queues=N")?;
        if virtio_id == 0 || virtio_id > 63 {
            return Err(format!("virtio-id {virtio_id} is outside 1..=63"));
        }
        if queues == 0 || queues > u64::from(MAX_QUEUES) {
            return Err(format!("queues {queues} is outside 1..={MAX_QUEUES}"));
        }
        if queue_size == 0 || !queue_size.is_power_of_two() || queue_size > MAX_QUEUE_SIZE {
            return Err(format!(
                "queue-size {queue_size} is not a power of two in 1..={MAX_QUEUE_SIZE}"
            ));
        }
        if config_size > MAX_CONFIG_SIZE {
            return Err(format!(
                "config-size {config_size} exceeds {MAX_CONFIG_SIZE}"
            ));
        }
        Ok(Self {
            socket,
            virtio_id: virtio_id as u32,
            queues: queues as u16,
            queue_size,
            config_size,
        })
    }
}

/// Parses decimal or `0x` hexadecimal.
fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses `512M`, `2G`, `65536`, `64K` into bytes (at least 1 MiB, page aligned).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512M"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!("`{s}` is less than 1M"));
    }
    if bytes % 4096 != 0 {
        return Err(format!("`{s}` is not a multiple of 4K"));
    }
    if bytes > 1 << 40 {
        return Err(format!("`{s}` is more than 1T"));
    }
    Ok(bytes)
}

/// A clap error as one line: its message paragraph without the usage and
/// help hints (`the following required arguments were not provided: --kernel <FILE>`).
pub fn one_line_clap_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect();
    let line = msg.join(" ");
    line.trim_start_matches("error: ").to_string()
}

/// Cross-flag checks clap cannot express.
pub fn validate(args: &Args) -> Result<(), String> {
    if args.vhost_user.len() > MAX_VIRTIO_DEVICES {
        return Err(format!(
            "at most {MAX_VIRTIO_DEVICES} --vhost-user devices are supported"
        ));
    }
    if args.cmdline.len() >= crate::arch::layout::CMDLINE_MAX_SIZE {
        return Err("--cmdline is longer than 4095 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("12").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert!(parse_size("1048577").is_err());
    }

    #[test]
    fn vhost_user_spec_full() {
        let s: VhostUserSpec =
            "socket=/run/kt.sock,virtio-id=60,queues=3,queue-size=128,config-size=16"
                .parse()
                .unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/kt.sock"));
        assert_eq!(
            (s.virtio_id, s.queues, s.queue_size, s.config_size),
            (60, 3, 128, 16)
        );
    }

    #[test]
    fn vhost_user_spec_defaults_and_errors() {
        let s: VhostUserSpec = "socket=a,virtio-id=0x3c,queues=1".parse().unwrap();
        assert_eq!((s.virtio_id, s.queue_size, s.config_size), (60, 256, 0));
        for bad in [
            "virtio-id=60,queues=1",
            "socket=a,queues=1",
            "socket=a,virtio-id=60",
            "socket=a,virtio-id=64,queues=1",
            "socket=a,virtio-id=60,queues=0",
            "socket=a,virtio-id=60,queues=1,queue-size=100",
            "socket=a,virtio-id=60,queues=1,config-size=4000",
            "socket=a,virtio-id=60,queues=1,color=red",
            "socket=a,virtio-id=x,queues=1",
            "socket",
        ] {
            assert!(bad.parse::<VhostUserSpec>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn args_parse_and_reject() {
        let a = Args::try_parse_from(["kt-vmm", "--kernel", "k", "--cpus", "2", "--mem", "1G"])
            .unwrap();
        assert_eq!((a.cpus, a.mem), (2, 1 << 30));
        assert_eq!(a.cmdline, DEFAULT_CMDLINE);
        assert_eq!(a.vhost_user_timeout_ms, DEFAULT_VHOST_USER_TIMEOUT_MS);
        let a = Args::try_parse_from(["kt-vmm", "--kernel", "k", "--vhost-user-timeout-ms", "250"])
            .unwrap();
        assert_eq!(a.vhost_user_timeout_ms, 250);
        assert!(
            Args::try_parse_from(["kt-vmm", "--kernel", "k", "--vhost-user-timeout-ms", "0"])
                .is_err()
        );
        let e = Args::try_parse_from(["kt-vmm"]).unwrap_err();
        let line = one_line_clap_error(&e);
        assert!(line.contains("--kernel"), "{line}");
        assert!(!line.contains('\n'));
        assert!(Args::try_parse_from(["kt-vmm", "--kernel", "k", "--cpus", "0"]).is_err());
        assert!(Args::try_parse_from(["kt-vmm", "--kernel", "k", "--mem", "1X"]).is_err());
    }
}
