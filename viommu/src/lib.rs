//! Everything IOMMU.
//!
//! Today this crate owns the DMA seam: every emulated device reaches guest
//! memory through a [`DmaSpace`], one per PCI endpoint. Without an IOMMU the
//! space is the identity; an emulated IOMMU plugs in as a [`Translate`]
//! implementation, without any device having to change.

pub mod dma;
pub mod guest_table;
pub mod host;
pub mod host_iommufd;
pub mod intel;
pub mod iommufd;
pub mod pasid_cap;
pub mod passthrough;
pub mod shadow;

pub use dma::{
    Access, AtsEndpoint, DmaFault, DmaFence, DmaGuard, DmaMemory, DmaSpace, FenceScope,
    GuestMemoryMmap, PageRequest, Translate, Translation,
};
