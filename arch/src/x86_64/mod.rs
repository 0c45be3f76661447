//! x86_64 PC platform: layout, e820, ACPI, CPUID and boot registers.

pub mod acpi;
pub mod cpuid;
pub mod e820;
pub mod layout;
pub mod regs;
