//! Why the VM stopped, and the one-shot signal vCPU threads and devices use
//! to tell the main thread (an eventfd plus the first reason recorded).

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why kt-vmm ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 (the guest powered off).
    PowerOff,
    /// The guest asked for a reset (`via` says how); kt-vmm does not reboot.
    Reset {
        /// Keyboard controller, ACPI reset register, or KVM system event.
        via: &'static str,
    },
    /// KVM_EXIT_SHUTDOWN: a triple fault on a vCPU.
    TripleFault {
        /// The vCPU.
        cpu: u8,
    },
    /// KVM reported a guest crash or an exit kt-vmm cannot handle.
    GuestFailure {
        /// The vCPU.
        cpu: u8,
        /// What happened.
        what: String,
    },
}

impl ExitReason {
    /// Process exit status: 0 for an orderly poweroff or reboot, 2 for a
    /// guest that died (1 is reserved for VMM errors).
    pub fn code(&self) -> i32 {
        match self {
            Self::PowerOff | Self::Reset { .. } => 0,
            Self::TripleFault { .. } | Self::GuestFailure { .. } => 2,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PowerOff => write!(f, "guest powered off"),
            Self::Reset { via } => write!(f, "guest requested a reset ({via}); stopping"),
            Self::TripleFault { cpu } => {
                write!(f, "guest triple-faulted on vCPU {cpu} (KVM_EXIT_SHUTDOWN)")
            }
            Self::GuestFailure { cpu, what } => write!(f, "guest failed on vCPU {cpu}: {what}"),
        }
    }
}

/// The stop request shared by vCPUs, devices and the event loop.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    /// A fresh, unsignalled request.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the main thread.
    pub fn request(&self, reason: ExitReason) {
        let mut r = crate::devices::bus::lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal VM exit: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        crate::devices::bus::lock(&self.reason).clone()
    }

    /// The eventfd the event loop watches.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::TripleFault { cpu: 1 });
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn codes() {
        assert_eq!(ExitReason::PowerOff.code(), 0);
        assert_eq!(ExitReason::Reset { via: "i8042" }.code(), 0);
        assert_eq!(ExitReason::TripleFault { cpu: 0 }.code(), 2);
    }
}
