//! An emulated Intel VT-d remapping hardware unit (Intel Virtualization
//! Technology for Directed I/O, Architecture Specification rev 4.x).
//!
//! The unit is guest-visible through its register page (MMIO) and the
//! tables it reads from guest memory. Emulated devices reach it through
//! [`crate::Translate`]; the VMM's interrupt router asks it to remap
//! interrupts. Nothing here knows about KVM.

pub mod address_mask;
pub mod context;
pub mod counters;
mod domain_users;
mod event;
pub mod fault;
pub mod first_stage;
// Test-only (the `test-utils` feature): fuzzers and tests feed the whole
// unit arbitrary guest behaviour through it; the VMM has no use for it.
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz_host;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz_rig;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz_threads;
pub mod interrupt_remap;
pub mod invalidation_queue;
pub mod iotlb;
mod page_request_queue;
pub mod pasid;
mod passthrough;
pub mod regs;
pub mod root_table;
pub mod second_stage;
pub mod translation;
mod unit;

pub use crate::passthrough::PassthroughMode;
pub use counters::Counters;
pub use regs::Features;
pub use unit::{IntelIommu, InterruptSink, VtdConfig, VtdConfigError, HOST_ADDRESS_WIDTH};
#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod queue_engine_tests;
#[cfg(test)]
mod tests;
