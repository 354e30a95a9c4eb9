//! The patched QEMU running the kerntransport guest image.
//!
//! [`Qemu`] builds the command line (memfd-shared guest memory, the
//! kerntransport device as `vhost-user-device-pci` with virtio ID 60, serial
//! console to a file, `kt.workload=NAME` for the image's /init) and starts
//! it as a [`Guest`] ([`Qemu::label`] names its logs when several guests
//! run the same workload). A QEMU that crashes before the guest's init runs
//! is started once more, as guest-driver/tests/run.sh does. A guest is
//! killed when dropped; dropped during a panic it first prints its serial
//! log and QEMU's own output. Owns QEMU's command line and lifetime; what
//! runs inside the guest is the image's business.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::children::{describe_status, ChildError, ChildProcess};
use crate::env::{self, EnvError};
use crate::log::{LogError, LogFile, Match};
use crate::tempdir::TempDir;

/// Errors from starting or watching a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// An artifact is not configured.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// QEMU could not be started or controlled.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Waiting on the serial log failed (timeout, QEMU exited).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The guest's workload reported failure.
    #[error("guest workload failed: {0}")]
    Failed(String),
    /// QEMU did not exit in time.
    #[error("QEMU still running after {0:?}")]
    NoExit(Duration),
    /// The guest kernel reported a bug (BUG, WARNING, KASAN, lockdep, ...).
    #[error("guest kernel splat:\n{0}")]
    Splat(String),
}

/// What a kernel prints when something is wrong (as guest-driver/tests/run.sh
/// looks for under the debug kernel).
const SPLAT_MARKERS: [&str; 12] = [
    "BUG:",
    "WARNING:",
    "Oops",
    "general protection",
    "refcount_t",
    "Kernel panic",
    "KASAN",
    "KFENCE",
    "possible circular locking",
    "inconsistent lock state",
    "list_add corruption",
    "list_del corruption",
];

/// The first kernel splat in `log` with up to 40 lines after it, if any.
pub fn first_splat(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines
        .iter()
        .position(|l| SPLAT_MARKERS.iter().any(|m| l.contains(m)))?;
    Some(lines[i.saturating_sub(2)..(i + 40).min(lines.len())].join("\n"))
}

/// `KT_E2E_SMP`: vCPUs for every guest, overriding the test's choice
/// (scripts/e2e.sh sets it for the debug-kernel pass).
fn smp_override() -> Option<u32> {
    std::env::var("KT_E2E_SMP").ok()?.parse().ok()
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, GuestError>;

/// Time a TCG guest gets to boot and finish a short workload. A boot takes
/// about 4 s on an idle machine; CI machines are shared.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How the guest's CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (only where `/dev/kvm` is fast).
    Kvm,
    /// QEMU's emulator: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// `KT_ACCEL` (`kvm` or `tcg`) if set, else KVM when a fast `/dev/kvm`
    /// exists, else TCG.
    pub fn detect() -> Accel {
        match std::env::var("KT_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            Ok("tcg") => Accel::Tcg,
            _ if env::fast_kvm() => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }

    fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The kerntransport device as QEMU's generic vhost-user device.
#[derive(Clone, Debug)]
pub struct KtDevice {
    /// The backend's vhost-user socket (QEMU connects to it).
    pub socket: PathBuf,
    /// Virtio device ID.
    pub virtio_id: u32,
    /// Number of virtqueues.
    pub num_vqs: usize,
    /// Size of each virtqueue.
    pub vq_size: u32,
    /// Bytes of device config space.
    pub config_size: usize,
    /// Milliseconds between QEMU's connect attempts (0: connect once at
    /// start and never reconnect). With the project's QEMU patch, QEMU
    /// waits at start until the backend listens and sets the device up
    /// again after a backend restart.
    pub reconnect_ms: u32,
}

impl KtDevice {
    /// The device as the protocol defines it, served on `socket`.
    pub fn new(socket: &Path) -> KtDevice {
        KtDevice {
            socket: socket.to_path_buf(),
            virtio_id: kt_proto::consts::VIRTIO_ID,
            num_vqs: kt_proto::consts::NUM_VQS,
            vq_size: 256,
            config_size: kt_proto::consts::CONFIG_SIZE,
            reconnect_ms: 500,
        }
    }

    /// The device with the queues of `pairs` rx/tx pairs (SPEC §1.2); the
    /// backend must serve at least that many (`--queue-pairs`).
    pub fn with_pairs(socket: &Path, pairs: u16) -> KtDevice {
        KtDevice {
            num_vqs: kt_proto::consts::num_vqs(pairs),
            ..KtDevice::new(socket)
        }
    }

    fn args(&self) -> Vec<OsString> {
        let mut chardev = OsString::from("socket,id=kt0,path=");
        chardev.push(&self.socket);
        if self.reconnect_ms > 0 {
            chardev.push(format!(",reconnect-ms={}", self.reconnect_ms));
        }
        let mut device = format!(
            "vhost-user-device-pci,chardev=kt0,virtio-id={},num_vqs={},vq_size={},\
             config_size={}",
            self.virtio_id, self.num_vqs, self.vq_size, self.config_size
        );
        // KT_E2E_DEVICE_PROPS: more device properties for every guest, e.g.
        // `iommu_platform=on` (the bounce-buffer pass of scripts/e2e.sh).
        if let Ok(props) = std::env::var("KT_E2E_DEVICE_PROPS") {
            if !props.is_empty() {
                device.push(',');
                device.push_str(&props);
            }
        }
        vec!["-chardev".into(), chardev, "-device".into(), device.into()]
    }
}

/// A guest to start: the builder for QEMU's command line.
#[derive(Clone, Debug)]
pub struct Qemu {
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    workload: String,
    label: Option<String>,
    memory_mb: u32,
    smp: u32,
    accel: Accel,
    device: Option<KtDevice>,
    append: Vec<String>,
    extra: Vec<OsString>,
}

impl Qemu {
    /// A guest running workload `name` (`images/workloads/NAME.sh`), with
    /// QEMU and the image from `KT_QEMU`, `KT_KERNEL`, `KT_INITRAMFS`.
    pub fn new(workload: &str) -> Result<Qemu> {
        Ok(Qemu::with_paths(
            &env::qemu()?,
            &env::kernel()?,
            &env::initramfs()?,
            workload,
        ))
    }

    /// Like [`Qemu::new`] with explicit paths.
    pub fn with_paths(qemu: &Path, kernel: &Path, initrd: &Path, workload: &str) -> Qemu {
        Qemu {
            qemu: qemu.to_path_buf(),
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            workload: workload.to_string(),
            label: None,
            memory_mb: 512,
            smp: 1,
            accel: Accel::detect(),
            device: None,
            append: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Adds the kerntransport device served by the backend on `socket`.
    pub fn vhost_user_socket(self, socket: &Path) -> Qemu {
        self.device(KtDevice::new(socket))
    }

    /// Adds a kerntransport device with explicit parameters.
    pub fn device(mut self, device: KtDevice) -> Qemu {
        self.device = Some(device);
        self
    }

    /// Names this guest's log files (`<label>.serial.log`,
    /// `<label>.qemu.log`) and their dumps after the label instead of the
    /// workload: for several guests running the same workload.
    pub fn label(mut self, label: &str) -> Qemu {
        self.label = Some(label.to_string());
        self
    }

    /// Guest memory in MiB (shared with the backend through a memfd).
    pub fn memory_mb(mut self, mb: u32) -> Qemu {
        self.memory_mb = mb;
        self
    }

    /// Number of guest CPUs.
    pub fn smp(mut self, cpus: u32) -> Qemu {
        self.smp = cpus;
        self
    }

    /// Overrides the detected accelerator.
    pub fn accel(mut self, accel: Accel) -> Qemu {
        self.accel = accel;
        self
    }

    /// Appends a word to the kernel command line (e.g. `kt.timeout=60`,
    /// or parameters a workload reads from /proc/cmdline).
    pub fn append(mut self, word: &str) -> Qemu {
        self.append.push(word.to_string());
        self
    }

    /// Appends a raw QEMU argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Qemu {
        self.extra.push(arg.into());
        self
    }

    /// The full QEMU argument list, serial console going to `serial`.
    pub fn args(&self, serial: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-M", "q35", "-cpu", "max", "-accel", self.accel.qemu_name()]);
        // Firmware (SeaBIOS, option ROMs) comes from Debian's packages: the
        // patched build installs no blobs.
        push(&["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"]);
        push(&["-nic", "none", "-no-reboot"]);
        let mem = format!("{}M", self.memory_mb);
        let smp = smp_override().unwrap_or(self.smp).to_string();
        let memfd = format!("memory-backend-memfd,id=mem,size={mem},share=on");
        push(&["-m", &mem, "-smp", &smp, "-object", &memfd]);
        push(&["-numa", "node,memdev=mem"]);
        let mut serial_arg = OsString::from("file:");
        serial_arg.push(serial);
        args.push("-serial".into());
        args.push(serial_arg);
        args.push("-kernel".into());
        args.push(self.kernel.clone().into());
        args.push("-initrd".into());
        args.push(self.initrd.clone().into());
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "panic=-1".to_string(),
            // The kernel's IO-APIC timer check counts timer interrupts in
            // a short busy loop; a TCG guest on a loaded host can miss it
            // and panic ("IO-APIC + timer doesn't work!"), seen here.
            "no_timer_check".to_string(),
            format!("kt.workload={}", self.workload),
        ];
        cmdline.extend(self.append.iter().cloned());
        // KT_E2E_APPEND: extra kernel arguments for every guest (the
        // debug-kernel pass: KFENCE sampling, a larger log buffer).
        if let Ok(extra) = std::env::var("KT_E2E_APPEND") {
            cmdline.extend(extra.split_whitespace().map(str::to_string));
        }
        args.push("-append".into());
        args.push(cmdline.join(" ").into());
        if let Some(dev) = &self.device {
            args.extend(dev.args());
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts QEMU. The serial log and QEMU's output go to files in `dir`
    /// (`<workload>.serial.log`, `<workload>.qemu.log`; `<label>.` with
    /// [`Qemu::label`]).
    pub fn spawn(self, dir: &TempDir) -> Result<Guest> {
        let (name, serial_label, qemu_label) = match &self.label {
            Some(l) => (l.as_str(), format!("guest {l} serial"), format!("QEMU {l}")),
            None => (
                self.workload.as_str(),
                "guest serial".to_string(),
                "QEMU".to_string(),
            ),
        };
        let serial_path = dir.join(&format!("{name}.serial.log"));
        let (serial, _file) = LogFile::create(&serial_label, &serial_path)?;
        let qemu_log_path = dir.join(&format!("{name}.qemu.log"));
        let args = self.args(&serial_path);
        let proc = start(&self.qemu, &args, &qemu_label, &qemu_log_path)?;
        Ok(Guest {
            proc,
            serial,
            qemu_log: LogFile::open(&qemu_label, &qemu_log_path),
            relaunch: Some(Relaunch {
                qemu: self.qemu,
                args,
                label: qemu_label,
            }),
        })
    }
}

/// Starts QEMU with `args`, its stdout and stderr into a new `log`.
fn start(qemu: &Path, args: &[OsString], label: &str, log: &Path) -> Result<ChildProcess> {
    let (qemu_log, out) = LogFile::create_stdio(label, log)?;
    let err = out_clone(&qemu_log)?;
    let mut cmd = Command::new(qemu);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    Ok(ChildProcess::spawn("QEMU", &mut cmd)?)
}

/// What a guest needs to start its QEMU once more.
#[derive(Debug)]
struct Relaunch {
    qemu: PathBuf,
    args: Vec<OsString>,
    label: String,
}

/// The first line the image's /init prints: past it, a QEMU crash is the
/// test's business, not a start-up crash worth a second try.
const INIT_MARKER: &str = "KT: init running";

/// Why a QEMU that ended before the guest's init ran should be started
/// once more: it was killed by a signal or failed an assertion (TCG at
/// `-smp 4` has crashed with SIGSEGV during the guest's PCI enumeration,
/// seen here once). `None` for any other ending.
fn startup_crash(status: ExitStatus, serial: &str, qemu_log: &str) -> Option<String> {
    if serial.contains(INIT_MARKER) {
        return None;
    }
    if status.code().is_none() {
        return Some(format!("QEMU exited with {}", describe_status(status)));
    }
    qemu_log
        .lines()
        .find(|l| l.contains("ssertion") && l.contains("failed"))
        .map(|l| format!("QEMU failed an assertion: {l}"))
}

/// A second handle on a log file, for a child's stderr next to its stdout.
fn out_clone(log: &LogFile) -> Result<Stdio> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(log.path())
        .map_err(|source| LogError::Io {
            path: log.path().to_path_buf(),
            source,
        })?;
    Ok(Stdio::from(file))
}

/// What the image's /init reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KtResult {
    /// `KT-RESULT: PASS`
    Pass,
    /// `KT-RESULT: FAIL <reason>`
    Fail(String),
}

impl KtResult {
    /// Parses the text of a serial line containing `KT-RESULT:`.
    pub fn parse(line: &str) -> Option<KtResult> {
        let (_, rest) = line.split_once("KT-RESULT: ")?;
        let rest = rest.trim_end();
        if rest == "PASS" {
            return Some(KtResult::Pass);
        }
        rest.strip_prefix("FAIL")
            .map(|reason| KtResult::Fail(reason.trim().to_string()))
    }
}

/// A running guest: QEMU plus its logs. Killed on drop; its logs are
/// printed when dropped during a panic. A QEMU that crashes before the
/// guest's init runs is started once more by the first wait that sees it
/// (a `RETRY` line on stderr); a second crash fails the wait.
#[derive(Debug)]
pub struct Guest {
    proc: ChildProcess,
    serial: LogFile,
    qemu_log: LogFile,
    /// Set until QEMU has been started a second time or killed by the test.
    relaunch: Option<Relaunch>,
}

impl Guest {
    /// Waits for a serial line containing `pattern`; fails early if QEMU
    /// exits first.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Match> {
        self.wait_for_after(0, pattern, timeout)
    }

    /// Like [`Guest::wait_for`], for a line ending after byte `after` (the
    /// `end` of an earlier [`Match`]).
    pub fn wait_for_after(
        &mut self,
        after: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<Match> {
        loop {
            let proc = &mut self.proc;
            let waited =
                self.serial
                    .wait_for_after(after, pattern, timeout, || match proc.try_wait() {
                        Ok(Some(status)) => {
                            Some(format!("QEMU exited with {}", describe_status(status)))
                        }
                        Ok(None) => None,
                        Err(e) => Some(e.to_string()),
                    });
            match waited {
                Err(LogError::WriterGone { .. }) if self.relaunch_after_startup_crash()? => {}
                other => return Ok(other?),
            }
        }
    }

    /// Starts QEMU once more if it crashed before the guest's init ran and
    /// has not been started again yet; the crashed run's logs are kept
    /// beside the new ones as `*.crash.log`. Returns whether it did.
    fn relaunch_after_startup_crash(&mut self) -> Result<bool> {
        let Some(status) = self.proc.try_wait()? else {
            return Ok(false);
        };
        let Some(why) = startup_crash(status, &self.serial_log(), &self.qemu_log()) else {
            return Ok(false);
        };
        let Some(again) = self.relaunch.take() else {
            return Ok(false);
        };
        for log in [self.serial.path(), self.qemu_log.path()] {
            let kept = log.with_extension("crash.log");
            if let Err(e) = std::fs::rename(log, &kept) {
                eprintln!("kt-tests: could not keep {}: {e}", log.display());
            }
        }
        eprintln!(
            "kt-tests: RETRY: {why} before the guest's init ran; starting it once more (logs of \
             the crashed run: {})",
            self.serial.path().with_extension("crash.log").display()
        );
        self.proc = start(&again.qemu, &again.args, &again.label, self.qemu_log.path())?;
        Ok(true)
    }

    /// Waits for the `KT-RESULT:` line and parses it.
    pub fn wait_result(&mut self, timeout: Duration) -> Result<KtResult> {
        let m = self.wait_for("KT-RESULT:", timeout)?;
        // The pattern matched, so the parse only fails on a malformed line.
        Ok(KtResult::parse(&m.line).unwrap_or(KtResult::Fail(format!("malformed: {}", m.line))))
    }

    /// Waits for `KT-RESULT: PASS`; a FAIL becomes [`GuestError::Failed`],
    /// and a kernel splat anywhere in the serial log (BUG, WARNING, KASAN,
    /// lockdep, ...) [`GuestError::Splat`] with the splat.
    pub fn expect_pass(&mut self, timeout: Duration) -> Result<()> {
        let result = self.wait_result(timeout)?;
        if let Some(splat) = first_splat(&self.serial_log()) {
            return Err(GuestError::Splat(splat));
        }
        match result {
            KtResult::Pass => Ok(()),
            KtResult::Fail(reason) => Err(GuestError::Failed(reason)),
        }
    }

    /// Waits for QEMU to exit (the image powers off after its result).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.proc
            .wait_timeout(timeout)?
            .ok_or(GuestError::NoExit(timeout))
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.relaunch = None;
        Ok(self.proc.kill()?)
    }

    /// The serial console output so far.
    pub fn serial_log(&self) -> String {
        self.serial.contents()
    }

    /// QEMU's own stdout and stderr so far.
    pub fn qemu_log(&self) -> String {
        self.qemu_log.contents()
    }

    /// The serial log file.
    pub fn serial(&self) -> &LogFile {
        &self.serial
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.serial.dump();
            self.qemu_log.dump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn only_a_crash_before_init_is_a_startup_crash() {
        use std::os::unix::process::ExitStatusExt;
        let segv = ExitStatus::from_raw(libc::SIGSEGV);
        let code1 = ExitStatus::from_raw(1 << 8);
        let booting = "SeaBIOS\n[    0.5] pci 0000:00:1f.2: [8086:2922]\n";
        let inited = "[    2.0] Run /init\nKT: init running on 6.12\n";
        let why = startup_crash(segv, booting, "").expect("a signal before init");
        assert!(why.contains("signal 11"), "{why}");
        assert_eq!(
            startup_crash(segv, inited, ""),
            None,
            "past init: the test's business"
        );
        assert_eq!(
            startup_crash(code1, booting, ""),
            None,
            "a plain exit is no crash"
        );
        let assertion = "qemu-system-x86_64: ../hw/foo.c:12: bar: Assertion `x' failed.\n";
        let why = startup_crash(code1, booting, assertion).expect("an assertion before init");
        assert!(why.contains("Assertion"), "{why}");
        assert_eq!(startup_crash(code1, inited, assertion), None);
    }

    /// A guest whose QEMU is a stand-in: each start is counted in
    /// `starts`; the first `crashes` starts write a boot line to the serial
    /// file and die of SIGSEGV, later ones run "init" and pass.
    fn fake_guest(dir: &TempDir, crashes: u32) -> Guest {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("fake-qemu");
        let starts = dir.join("starts");
        let body = format!(
            "#!/bin/sh\n\
             serial=; prev=\n\
             for a; do [ \"$prev\" = -serial ] && serial=${{a#file:}}; prev=$a; done\n\
             echo start >> '{starts}'\n\
             if [ $(wc -l < '{starts}') -le {crashes} ]; then\n\
             echo 'pci 0000:00:1f.2' > \"$serial\"; kill -SEGV $$\n\
             fi\n\
             printf 'KT: init running on fake\\nKT-RESULT: PASS\\n' > \"$serial\"\n",
            starts = starts.display()
        );
        std::fs::write(&script, body).expect("write fake QEMU");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod fake QEMU");
        Qemu::with_paths(&script, Path::new("k"), Path::new("i"), "w")
            .spawn(dir)
            .expect("start the fake QEMU")
    }

    fn starts(dir: &TempDir) -> usize {
        std::fs::read_to_string(dir.join("starts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn a_qemu_that_crashes_before_init_is_started_once_more() {
        let dir = TempDir::new("qemu-retry").expect("temp dir");
        let mut guest = fake_guest(&dir, 1);
        guest
            .expect_pass(Duration::from_secs(20))
            .expect("the second start passes");
        assert_eq!(starts(&dir), 2);
        let crashed = std::fs::read_to_string(dir.join("w.serial.crash.log"))
            .expect("the crashed run's serial log is kept");
        assert!(crashed.contains("pci 0000"), "{crashed}");
    }

    #[test]
    fn a_second_startup_crash_fails_the_wait() {
        let dir = TempDir::new("qemu-retry2").expect("temp dir");
        let mut guest = fake_guest(&dir, 2);
        match guest.expect_pass(Duration::from_secs(20)) {
            Err(GuestError::Log(LogError::WriterGone { why, .. })) => {
                assert!(why.contains("signal 11"), "{why}")
            }
            other => panic!("expected QEMU's second crash, got {other:?}"),
        }
        assert_eq!(starts(&dir), 2, "started at most twice");
    }

    #[test]
    fn splats_are_found_with_their_context() {
        let clean = "[ 1.0] RCU lockdep checking is enabled.\nKT: ok\nKT-RESULT: PASS\n";
        assert_eq!(first_splat(clean), None);
        let log =
            "a\nb\n[ 2.0] BUG: KASAN: slab-use-after-free in kt_deliver\n[ 2.1] Call Trace:\n";
        let splat = first_splat(log).expect("a splat");
        assert!(splat.starts_with("a\nb\n[ 2.0] BUG: KASAN"), "{splat}");
        assert!(splat.ends_with("Call Trace:"), "{splat}");
        assert!(first_splat("[ 3.0] WARNING: CPU: 0 PID: 1 at x.c:1\n").is_some());
    }

    fn builder() -> Qemu {
        Qemu::with_paths(
            Path::new("/q/qemu"),
            Path::new("/i/vmlinuz"),
            Path::new("/i/initrd"),
            "boot",
        )
        .accel(Accel::Tcg)
    }

    #[test]
    fn plain_guest_has_shared_memory_and_no_device() {
        let args = words(&builder().args(Path::new("/t/serial.log")));
        assert_eq!(after(&args, "-accel"), ["tcg"]);
        assert_eq!(after(&args, "-cpu"), ["max"]);
        assert_eq!(after(&args, "-m"), ["512M"]);
        assert_eq!(
            after(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(after(&args, "-numa"), ["node,memdev=mem"]);
        assert_eq!(after(&args, "-serial"), ["file:/t/serial.log"]);
        assert_eq!(after(&args, "-kernel"), ["/i/vmlinuz"]);
        assert_eq!(after(&args, "-nic"), ["none"]);
        assert_eq!(
            after(&args, "-L"),
            ["/usr/share/qemu", "/usr/share/seabios"]
        );
        assert_eq!(
            after(&args, "-append"),
            ["console=ttyS0 panic=-1 no_timer_check kt.workload=boot"]
        );
        assert!(after(&args, "-device").is_empty());
    }

    #[test]
    fn device_and_options() {
        let q = builder()
            .vhost_user_socket(Path::new("/t/vm.sock"))
            .memory_mb(256)
            .append("kt.timeout=30")
            .accel(Accel::Kvm);
        let args = words(&q.args(Path::new("/t/s")));
        assert_eq!(after(&args, "-accel"), ["kvm"]);
        assert_eq!(
            after(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(
            after(&args, "-chardev"),
            ["socket,id=kt0,path=/t/vm.sock,reconnect-ms=500"]
        );
        assert_eq!(
            after(&args, "-device"),
            ["vhost-user-device-pci,chardev=kt0,virtio-id=60,num_vqs=3,vq_size=256,config_size=20"]
        );
        let two = KtDevice::with_pairs(Path::new("/t/vm.sock"), 2);
        let two = words(&two.args());
        assert_eq!(
            after(&two, "-device"),
            ["vhost-user-device-pci,chardev=kt0,virtio-id=60,num_vqs=5,vq_size=256,config_size=20"]
        );
        assert!(after(&args, "-append")[0].ends_with("kt.workload=boot kt.timeout=30"));
    }

    #[test]
    fn result_lines_parse() {
        assert_eq!(KtResult::parse("KT-RESULT: PASS\r"), Some(KtResult::Pass));
        assert_eq!(
            KtResult::parse("[ 1.0] x KT-RESULT: FAIL no PCI device 1af4:107c"),
            Some(KtResult::Fail("no PCI device 1af4:107c".to_string()))
        );
        assert_eq!(KtResult::parse("KT-RESULT: maybe"), None);
        assert_eq!(KtResult::parse("nothing here"), None);
    }
}
