//! The virtio-blk request layer (virtio 1.2 §5.2).
//!
//! This module knows nothing about the transport or the queue handling: it
//! turns one descriptor chain into a [`Request`], runs it against a backing
//! file ([`Disk`]) and describes the device-specific part of the config space
//! ([`BlockConfig`]) and feature bits ([`device_features`]). The virtio-pci device
//! built on top of it pops chains, calls [`Disk::process`], and puts the chain
//! on the used ring with the returned length.
//!
//! All guest addresses are accessed through a `vm_memory::GuestMemory`
//! object. In the VMM that is a `viommu::DmaMemory`, so with an IOMMU every
//! descriptor address is an IOVA and is translated (and permission checked)
//! on access; a translation failure is a DMA fault, which the device reports
//! to the driver as `VIRTIO_BLK_S_IOERR` rather than crashing.

mod config;
mod device;
mod executor;
mod request;

#[cfg(test)]
mod tests;

pub use config::{device_features, BlockConfig, CONFIG_SPACE_SIZE};
pub use device::{Block, BlockCounters};
pub use executor::{Completion, Disk, ProcessError};
pub use request::{ParseError, Request, RequestError, RequestType, HEADER_LEN, MAX_DESCRIPTORS};

/// virtio-blk always addresses the disk in 512-byte sectors, whatever
/// `blk_size` says (virtio 1.2 §5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;

/// `status` values written into the last byte of a request.
pub const VIRTIO_BLK_S_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
/// The request failed: bad request, host I/O error or DMA fault.
pub const VIRTIO_BLK_S_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// The request type is not supported by this device.
pub const VIRTIO_BLK_S_UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Length of the identifier returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;
