//! Emulated platform devices and the buses that route guest accesses to them.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod serial;
