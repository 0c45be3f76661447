//! PCI passthrough: a host PCI function, owned through its VFIO cdev and
//! bound to iommufd, shown to the guest as a function on our root bus.
//!
//! Wiring it into a VM:
//!
//! ```text
//! let dev = Arc::new(open_device(path, iommufd, guest_ram_ioas)?); // bound, attached
//! dev.reset();
//! let mut pci = VfioPciDevice::new(dev.clone(), bdf, router, slots, pasid)?;
//! bar_allocator.assign(&mut pci);       // pci.bars() / set_bar_address()
//! pci.attach_intx(ioapic, pin);         // optional: INTx on an I/O APIC pin
//! root.add_device(bdf, Arc::new(Mutex::new(pci)));
//! ```
//!
//! After that the guest reaches the function through the root complex
//! like any other: config accesses through ECAM or 0xcf8/0xcfc, BAR
//! accesses that are not mapped into the guest (MSI-X table and PBA pages,
//! BARs VFIO will not mmap) through `PciMmio`. Everything mmap-able goes
//! into guest-physical space through [`crate::memory_slots::GuestMemorySlots`]
//! while memory decode is on.
//!
//! - `open.rs`: path → bound, attached [`VfioDevice`], with typed errors.
//! - `backend.rs`: the [`VfioBackend`] seam over the kernel (faked in tests).
//! - `config.rs`: the guest's view of config space.
//! - `bars.rs`: BAR discovery, mmap and memory slots.
//! - `interrupts.rs`, `msi.rs`, `intx.rs`: MSI-X, MSI and INTx over VFIO.
//! - `device.rs`: [`VfioPciDevice`], the `PciDevice` tying them together.

mod backend;
mod bars;
mod config;
mod device;
mod interrupts;
mod intx;
mod msi;
mod open;

#[cfg(test)]
mod tests;

pub use backend::{
    HostMmap, IrqInfo, IrqKind, RegionInfo, VfioBackend, VfioDevice, CONFIG_REGION, ROM_REGION,
};
pub use device::{VfioPciDevice, VfioPciError};
pub use open::{open_device, VfioOpenError};
