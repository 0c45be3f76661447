//! Guest-visible devices other than the IOMMU: the PCI Express root complex
//! and its config space, legacy PC devices, the IOAPIC and virtio over PCI.
//!
//! Devices never talk to KVM directly: interrupts leave through the
//! [`interrupt::MsiRouter`] seam and DMA goes through `viommu::DmaMemory`, so
//! an IOMMU can sit on both paths without the devices knowing.

pub mod dma_test;
// Test-only (the `test-utils` feature): fuzz drivers for cargo fuzz and
// the smoke tests.
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz;
pub mod guest_log;
pub mod interrupt;
pub mod ioapic;
pub mod legacy;
pub mod memory_slots;
pub mod pci;
#[cfg(test)]
mod test_log;
pub mod vfio;
pub mod virtio;
