//! Legacy PC devices: the 16550 serial port, the i8042 reset line and the
//! ACPI hardware-reduced sleep and reset registers.

pub mod acpi_pm;
pub mod i8042;
pub mod serial;

/// What the guest asked the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// Soft-off (ACPI S5).
    Poweroff,
    /// Reset of the whole machine.
    Reset,
}

/// Receives the guest's power requests.
pub type PowerHandler = std::sync::Arc<dyn Fn(PowerEvent) + Send + Sync>;
