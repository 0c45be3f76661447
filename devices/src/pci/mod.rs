//! PCI Express: config space, capabilities, MSI-X and the root complex.

pub mod caps;
pub mod config;
pub mod msix;
pub mod root;

pub use config::{BarKind, ConfigSpace};
pub use root::{PciDevice, PciRoot};

/// A device's location on the bus: bus 0, device `dev`, function `func`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf(pub u16);

impl Bdf {
    pub fn new(bus: u8, dev: u8, func: u8) -> Self {
        Bdf(((bus as u16) << 8) | (((dev & 0x1f) as u16) << 3) | (func & 7) as u16)
    }
    pub fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn dev(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
    pub fn func(self) -> u8 {
        (self.0 & 7) as u8
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus(), self.dev(), self.func())
    }
}
