//! `kt-vmm` as a program: flag and file errors give one line and exit 1;
//! an emulating or missing KVM is reported clearly; tiny hand-assembled
//! real-mode guests (which run even under the emulating KVM of the project's
//! build machines) check serial output, i8042 reset, ACPI power-off and
//! triple-fault handling end to end. Guest tests are recorded as SKIP
//! (`kt_tests::skip`) where no /dev/kvm can be opened.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kt_tests::skip::skip;

const BIN: &str = env!("CARGO_BIN_EXE_kt-vmm");

/// A child process killed if the test fails before it exits.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Outcome {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kt-vmm");
    let mut g = Guard(Some(child));
    let c = g.0.as_mut().expect("child");
    let mut out_pipe = c.stdout.take().expect("stdout");
    let mut err_pipe = c.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out_pipe.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err_pipe.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = g.0.as_mut().expect("child").try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "kt-vmm {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().expect("stdout reader").expect("read stdout");
    let stderr = err.join().expect("stderr reader").expect("read stderr");
    Outcome {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

fn assert_one_line_error(o: &Outcome, needle: &str) {
    assert_eq!(o.code, 1, "stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got {lines:?}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

fn guest(name: &str, code: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kt-vmm-cli-{}-{name}.bin", std::process::id()));
    std::fs::write(&p, code).expect("write guest");
    p
}

/// Whether `/dev/kvm` can be opened; when not, records `test` as skipped.
fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("/dev/kvm cannot be opened here ({e})"));
            false
        }
    }
}

fn run_guest(code: &[u8], name: &str) -> Outcome {
    let p = guest(name, code);
    let o = run(&[
        "--kernel",
        p.to_str().expect("utf-8"),
        "--kernel-format",
        "raw",
        "--mem",
        "16M",
        "--allow-slow-kvm",
    ]);
    std::fs::remove_file(&p).expect("remove guest");
    o
}

#[test]
fn help_documents_every_flag() {
    let o = run(&["--help"]);
    assert_eq!(o.code, 0);
    for flag in [
        "--kernel",
        "--kernel-format",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--mem",
        "--vhost-user",
        "--vhost-user-timeout-ms",
        "DEVICE_NEEDS_RESET",
        "[default: 5000]",
        "--serial",
        "--no-stdout",
        "--kvm-device",
        "--allow-slow-kvm",
    ] {
        assert!(o.stdout.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_arguments_are_one_line() {
    assert_one_line_error(&run(&[]), "--kernel");
    assert_one_line_error(&run(&["--kernel", "k", "--mem", "lots"]), "--mem");
    assert_one_line_error(&run(&["--kernel", "k", "--cpus", "0"]), "--cpus");
    assert_one_line_error(&run(&["--kernel", "k", "--frobnicate"]), "--frobnicate");
    assert_one_line_error(
        &run(&["--kernel", "k", "--vhost-user", "socket=s,virtio-id=60"]),
        "queues",
    );
}

#[test]
fn missing_kernel_is_one_line() {
    let o = run(&["--kernel", "/nonexistent/bzImage"]);
    assert_one_line_error(&o, "cannot read kernel /nonexistent/bzImage");
}

#[test]
fn unreachable_backend_is_one_line() {
    let k = guest("backend", &[0xf4]);
    let o = run(&[
        "--kernel",
        k.to_str().expect("utf-8"),
        "--vhost-user",
        "socket=/nonexistent/kt.sock,virtio-id=60,queues=3",
    ]);
    std::fs::remove_file(&k).expect("remove");
    assert_one_line_error(
        &o,
        "cannot connect to vhost-user backend /nonexistent/kt.sock",
    );
}

#[test]
fn socket_that_is_not_vhost_user_is_one_line() {
    use std::io::Write;
    use std::os::unix::net::UnixListener;
    let k = guest("notvu", &[0xf4]);
    let sock = std::env::temp_dir().join(format!("kt-vmm-notvu-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind");
    // A peer that answers the first request with text and stays connected.
    let peer = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf);
        let _ = c.write_all(&[b'x'; 64]);
        let _ = c.read(&mut buf);
    });
    let spec = format!("socket={},virtio-id=60,queues=3", sock.display());
    let o = run(&[
        "--kernel",
        k.to_str().expect("utf-8"),
        "--vhost-user",
        &spec,
    ]);
    peer.join().expect("peer");
    std::fs::remove_file(&k).expect("remove");
    std::fs::remove_file(&sock).expect("remove");
    assert_one_line_error(&o, "does not speak vhost-user");
}

#[test]
fn backend_that_never_answers_is_one_line_after_the_timeout() {
    use std::os::unix::net::UnixListener;
    let k = guest("silent", &[0xf4]);
    let sock = std::env::temp_dir().join(format!("kt-vmm-silent-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind");
    // A peer that accepts, reads, and never answers.
    let peer = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    });
    let spec = format!("socket={},virtio-id=60,queues=3", sock.display());
    let start = Instant::now();
    let o = run(&[
        "--kernel",
        k.to_str().expect("utf-8"),
        "--vhost-user",
        &spec,
        "--vhost-user-timeout-ms",
        "300",
    ]);
    let took = start.elapsed();
    peer.join().expect("peer");
    std::fs::remove_file(&k).expect("remove");
    std::fs::remove_file(&sock).expect("remove");
    assert_one_line_error(
        &o,
        &format!(
            "vhost-user backend {}: no answer to GET_FEATURES within 300 ms",
            sock.display()
        ),
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn missing_kvm_is_explained() {
    let k = guest("nokvm", &[0xf4]);
    let o = run(&[
        "--kernel",
        k.to_str().expect("utf-8"),
        "--kvm-device",
        "/nonexistent/kvm",
    ]);
    std::fs::remove_file(&k).expect("remove");
    assert_one_line_error(&o, "/nonexistent/kvm does not exist: KVM is not available");
}

#[test]
fn emulating_kvm_is_refused_without_allow_slow_kvm() {
    if !kvm_usable("emulating_kvm_is_refused_without_allow_slow_kvm") {
        return;
    }
    if !Path::new("/sys/module/kvm_pvm").exists() {
        skip(
            "emulating_kvm_is_refused_without_allow_slow_kvm",
            "this host's KVM is not the emulating kvm_pvm",
        );
        return;
    }
    let k = guest("pvm", &[0xf4]);
    let o = run(&[
        "--kernel",
        k.to_str().expect("utf-8"),
        "--kernel-format",
        "raw",
    ]);
    std::fs::remove_file(&k).expect("remove");
    assert_one_line_error(&o, "KVM here is an emulating nested hypervisor (kvm_pvm)");
}

/// mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; mov al,10;
/// out dx,al; mov al,0xfe; out 0x64,al; hlt
const SERIAL_THEN_RESET: &[u8] = &[
    0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe, 0xe6, 0x64,
    0xf4,
];

/// mov dx,0x3c0; mov al,(5<<2)|0x20; out dx,al; hlt
const ACPI_POWEROFF: &[u8] = &[0xba, 0xc0, 0x03, 0xb0, 0x34, 0xee, 0xf4];

/// mov ax,cs; mov ds,ax; lidt [0x0c] (limit 0); int3; hlt; hlt; 6 zero bytes.
const TRIPLE_FAULT: &[u8] = &[
    0x8c, 0xc8, 0x8e, 0xd8, 0x0f, 0x01, 0x1e, 0x0c, 0x00, 0xcc, 0xf4, 0xf4, 0, 0, 0, 0, 0, 0,
];

#[test]
fn tiny_guest_prints_on_serial_and_resets() {
    if !kvm_usable("tiny_guest_prints_on_serial_and_resets") {
        return;
    }
    let o = run_guest(SERIAL_THEN_RESET, "serial");
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert_eq!(o.stdout, "OK\n");
    assert!(
        o.stderr.contains("guest requested a reset (i8042)"),
        "{}",
        o.stderr
    );
}

#[test]
fn tiny_guest_acpi_poweroff_exits_zero() {
    if !kvm_usable("tiny_guest_acpi_poweroff_exits_zero") {
        return;
    }
    let o = run_guest(ACPI_POWEROFF, "poweroff");
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert!(o.stderr.contains("guest powered off"), "{}", o.stderr);
}

#[test]
fn tiny_guest_triple_fault_exits_two() {
    if !kvm_usable("tiny_guest_triple_fault_exits_two") {
        return;
    }
    let o = run_guest(TRIPLE_FAULT, "triple");
    assert_eq!(o.code, 2, "stderr: {}", o.stderr);
    // Real KVM reports KVM_EXIT_SHUTDOWN; the emulating kvm_pvm gives up on
    // the faulting instruction with an internal error instead.
    assert!(
        o.stderr.contains("triple-faulted on vCPU 0")
            || o.stderr.contains("guest failed on vCPU 0"),
        "{}",
        o.stderr
    );
}

#[test]
fn serial_file_gets_a_copy() {
    if !kvm_usable("serial_file_gets_a_copy") {
        return;
    }
    let p = guest("serialfile", SERIAL_THEN_RESET);
    let out = std::env::temp_dir().join(format!("kt-vmm-cli-{}-serial.txt", std::process::id()));
    let o = run(&[
        "--kernel",
        p.to_str().expect("utf-8"),
        "--kernel-format",
        "raw",
        "--mem",
        "16M",
        "--allow-slow-kvm",
        "--no-stdout",
        "--serial",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert_eq!(o.stdout, "");
    assert_eq!(std::fs::read_to_string(&out).expect("serial file"), "OK\n");
    std::fs::remove_file(&p).expect("remove");
    std::fs::remove_file(&out).expect("remove");
}

/// A minimal ELF64 executable: one PT_LOAD segment of `code` at physical
/// (and virtual) `addr`, entry at its first byte.
fn elf64(code: &[u8], addr: u64) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let off = (EHDR + PHDR) as u64;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF");
    e.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&addr.to_le_bytes()); // e_entry
    e.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&(EHDR as u16).to_le_bytes());
    e.extend_from_slice(&(PHDR as u16).to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    e.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&off.to_le_bytes()); // p_offset
    e.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    e.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    e.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(code);
    e
}

/// 64-bit: mov dx,0x3f8; mov al,'6'; out dx,al; mov al,'4'; out dx,al;
/// mov al,10; out dx,al; mov al,0xfe; out 0x64,al; hlt
const LONG_MODE_SERIAL: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'6', 0xee, 0xb0, b'4', 0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe, 0xe6,
    0x64, 0xf4,
];

#[test]
fn elf_guest_starts_in_long_mode() {
    if !kvm_usable("elf_guest_starts_in_long_mode") {
        return;
    }
    let p = guest("elf", &elf64(LONG_MODE_SERIAL, 0x20_0000));
    let o = run(&[
        "--kernel",
        p.to_str().expect("utf-8"),
        "--mem",
        "16M",
        "--allow-slow-kvm",
    ]);
    std::fs::remove_file(&p).expect("remove");
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert_eq!(o.stdout, "64\n");
    assert!(
        o.stderr.contains("guest requested a reset (i8042)"),
        "{}",
        o.stderr
    );
}
