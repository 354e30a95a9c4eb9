//! x86_64 machine description: address layout, guest loading, ACPI tables
//! and vCPU boot state.

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod layout;
