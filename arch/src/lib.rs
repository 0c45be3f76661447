//! The guest platform: memory layout, boot structures and firmware tables.
//!
//! Everything here is a pure data builder: it takes plain descriptions of the
//! machine (how much RAM, which devices, which MMIO windows) and produces the
//! bytes the guest expects. It knows nothing of KVM file descriptors or of the
//! devices' implementations.

pub mod x86_64;
