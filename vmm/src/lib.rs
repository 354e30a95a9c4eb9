//! kt-vmm: kerntransport's minimal KVM VMM. Boots a Linux guest (bzImage or
//! ELF vmlinux, initrd, command line) with SMP, ACPI, a 16550 console and
//! vhost-user devices on virtio-mmio.

pub mod arch;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod virtio;
pub mod vm;

/// Formats an error and its sources on one line: `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_is_one_line() {
        let e = Outer(std::io::Error::other("inner\nx"));
        assert_eq!(error_chain(&e), "outer: inner x");
    }
}
