//! The hardware-reduced ACPI power registers the FADT points at: sleep
//! control (S5 = power off), sleep status, and the reset register.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::arch::layout;
use crate::exit::{ExitReason, ExitSignal};

/// `SLP_EN` in the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// Port span: control, status, reset.
pub const PORTS: u64 = 3;

/// The three registers at `layout::ACPI_SLEEP_CONTROL_PORT`.
#[derive(Debug)]
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    /// Registers that signal `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let port = layout::ACPI_SLEEP_CONTROL_PORT + offset as u16;
        if port == layout::ACPI_SLEEP_CONTROL_PORT
            && v & SLP_EN != 0
            && (v >> 2) & 0x7 == layout::ACPI_S5_SLEEP_TYPE
        {
            self.exit.request(ExitReason::PowerOff);
        } else if port == layout::ACPI_RESET_PORT && v == layout::ACPI_RESET_VALUE {
            self.exit.request(ExitReason::Reset {
                via: "ACPI reset register",
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_other_states_do_not() {
        let sig = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(sig.clone());
        pm.write(0, &[(3 << 2) | SLP_EN]);
        pm.write(0, &[5 << 2]);
        assert_eq!(sig.reason(), None);
        pm.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(sig.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_register_resets() {
        let sig = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(sig.clone());
        pm.write(2, &[layout::ACPI_RESET_VALUE]);
        assert!(matches!(sig.reason(), Some(ExitReason::Reset { .. })));
    }
}
