//! An emulated Intel VT-d remapping hardware unit (Intel Virtualization
//! Technology for Directed I/O, Architecture Specification rev 4.x).
//!
//! The unit is guest-visible through its register page (MMIO) and the
//! tables it reads from guest memory. Emulated devices reach it through
//! [`crate::Translate`]; the VMM's interrupt router asks it to remap
//! interrupts. Nothing here knows about KVM.

pub mod context;
pub mod counters;
pub mod fault;
pub mod first_stage;
pub mod fuzz;
pub mod interrupt_remap;
pub mod invalidation_queue;
pub mod iotlb;
pub mod pasid;
pub mod passthrough;
pub mod regs;
pub mod root_table;
pub mod second_stage;
pub mod translation;
mod unit;

pub use counters::Counters;
pub use passthrough::PassthroughMode;
pub use regs::Features;
pub use unit::{IntelIommu, InterruptSink, VtdConfig, VtdConfigError, HOST_ADDRESS_WIDTH};
#[cfg(test)]
mod tests;
