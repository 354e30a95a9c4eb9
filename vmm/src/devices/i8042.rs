//! The i8042 keyboard controller, only so that its CPU-reset command (0xfe
//! on port 0x64, what `reboot=k` guests use) ends kt-vmm cleanly.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Turns the controller's reset line into an exit request.
#[derive(Debug)]
pub struct ResetLine(pub Arc<ExitSignal>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset { via: "i8042" });
        Ok(())
    }
}

/// The controller on ports 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    dev: I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller whose reset command signals `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            dev: I8042Device::new(ResetLine(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.dev.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data {
            // The trigger is infallible.
            let _ = self.dev.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_exit() {
        let sig = Arc::new(ExitSignal::new().unwrap());
        let mut k = I8042::new(sig.clone());
        k.write(4, &[0xd1]);
        assert_eq!(sig.reason(), None);
        k.write(4, &[0xfe]);
        assert_eq!(sig.reason(), Some(ExitReason::Reset { via: "i8042" }));
    }
}
