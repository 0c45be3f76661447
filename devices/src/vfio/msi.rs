//! MSI (PCI 3.0 §6.8.1) of a passthrough function, emulated over VFIO.
//!
//! The capability registers live in our copy of config space; the device
//! never sees them. Each vector the function may use has a GSI and an
//! irqfd of its own; VFIO signals them (or parking eventfds while a
//! vector is masked, see `interrupts.rs`). Vector `i` sends the programmed
//! address with the message data's low bits replaced by `i`, as a
//! multiple-message function does.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::backend::{IrqKind, VfioBackend};
use super::config::{MsiLayout, MSI_CTRL_ENABLE, MSI_CTRL_MME_SHIFT};
use super::interrupts::{Target, VfioVectors};
use crate::host_log;
use crate::interrupt::{MsiMessage, MsiRouter, RouteUpdate};
use crate::pci::config::ConfigSpace;

struct Vector {
    gsi: u32,
    irqfd: EventFd,
}

pub struct MsiVectors {
    pub layout: MsiLayout,
    vectors: Vec<Vector>,
    vfio: VfioVectors,
    requester_id: u16,
    router: Arc<dyn MsiRouter>,
    /// The route last given to each vector's GSI.
    routes: Vec<Option<MsiMessage>>,
    /// Pending bits of masked vectors.
    pending: u32,
    enabled: bool,
    /// Vectors the guest enabled (Multiple Message Enable, clamped).
    count: usize,
    address: u64,
    data: u16,
    mask: u32,
}

impl MsiVectors {
    /// Up to 2^MMC vectors, no more than VFIO offers (at least one).
    pub fn new(
        layout: MsiLayout,
        vfio_count: u32,
        requester_id: u16,
        router: Arc<dyn MsiRouter>,
    ) -> io::Result<Self> {
        let mut max = 1usize << layout.mmc;
        while max > 1 && max > vfio_count as usize {
            max /= 2;
        }
        let mut vectors = Vec::with_capacity(max);
        for _ in 0..max {
            let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
            let gsi = router.allocate_gsi()?;
            router.register_irqfd(&irqfd, gsi)?;
            vectors.push(Vector { gsi, irqfd });
        }
        Ok(MsiVectors {
            layout,
            vfio: VfioVectors::new(IrqKind::Msi, max)?,
            vectors,
            requester_id,
            router,
            routes: vec![None; max],
            pending: 0,
            enabled: false,
            count: 1,
            address: 0,
            data: 0,
            mask: 0,
        })
    }

    /// The Multiple Message Capable value to advertise: log2 of the
    /// vectors we can deliver.
    pub fn advertised_mmc(&self) -> u8 {
        self.vectors.len().trailing_zeros() as u8
    }

    pub fn guest_enabled(&self) -> bool {
        self.enabled
    }

    #[cfg(test)]
    pub fn gsi(&self, i: usize) -> Option<u32> {
        self.vectors.get(i).map(|v| v.gsi)
    }

    #[cfg(test)]
    pub fn irqfd(&self, i: usize) -> Option<&EventFd> {
        self.vectors.get(i).map(|v| &v.irqfd)
    }

    #[cfg(test)]
    pub fn vfio(&self) -> &VfioVectors {
        &self.vfio
    }

    fn deliverable(&self, i: usize) -> bool {
        self.enabled && i < self.count && self.mask & (1 << i) == 0
    }

    fn message(&self, i: usize) -> MsiMessage {
        let low = (self.count as u32).saturating_sub(1);
        MsiMessage {
            address: self.address,
            data: (self.data as u32 & !low) | (i as u32 & low),
        }
    }

    /// Takes the guest's new register values from `emu` and updates the
    /// routes; unmasked vectors deliver what was pending.
    pub fn config_written(&mut self, emu: &ConfigSpace) {
        let l = self.layout;
        let ctrl = emu.read_u16(l.control());
        self.enabled = ctrl & MSI_CTRL_ENABLE != 0;
        let mme = (ctrl >> MSI_CTRL_MME_SHIFT) & 7;
        self.count = (1usize << mme).min(self.vectors.len());
        let hi = l.address_hi().map_or(0, |o| emu.read_u32(o) as u64);
        self.address = (hi << 32) | emu.read_u32(l.address_lo()) as u64;
        self.data = emu.read_u16(l.data());
        self.mask = l.mask().map_or(0, |o| emu.read_u32(o));
        // Every route this write changed, in one routing table update.
        let changed: Vec<(usize, Option<MsiMessage>)> = (0..self.vectors.len())
            .map(|i| (i, self.deliverable(i).then(|| self.message(i))))
            .filter(|&(i, route)| route != self.routes[i])
            .collect();
        if !changed.is_empty() {
            let updates: Vec<RouteUpdate> = changed
                .iter()
                .map(|&(i, msg)| RouteUpdate {
                    gsi: self.vectors[i].gsi,
                    requester_id: self.requester_id,
                    msg,
                })
                .collect();
            match self.router.set_routes(&updates) {
                Ok(()) => {
                    for (i, route) in changed {
                        self.routes[i] = route;
                    }
                }
                Err(e) => host_log!(
                    log::Level::Error,
                    "MSI {:#06x}: routes of {} vectors not updated: {e}",
                    self.requester_id,
                    updates.len()
                ),
            }
        }
        for i in 0..self.vectors.len() {
            if self.deliverable(i) && self.pending & (1 << i) != 0 {
                self.pending &= !(1 << i);
                let _ = self.vectors[i].irqfd.write(1);
            }
        }
    }

    /// Brings the Pending Bits register in `emu` up to date with what
    /// fired on parked vectors.
    pub fn refresh_pending(&mut self, emu: &mut ConfigSpace) {
        for i in 0..self.vectors.len() {
            if self.vfio.target(i) == Some(Target::Park) && self.vfio.take_parked(i) {
                self.pending |= 1 << i;
            }
        }
        if let Some(p) = self.layout.pending() {
            emu.set_u32(p, self.pending);
        }
    }

    pub fn vfio_sync(&mut self, backend: &dyn VfioBackend) {
        let n = if self.enabled { self.count } else { 0 };
        let irqfds: Vec<&EventFd> = self.vectors[..n].iter().map(|v| &v.irqfd).collect();
        let deliverable: Vec<bool> = (0..n).map(|i| self.deliverable(i)).collect();
        for i in self.vfio.sync(backend, &irqfds, &deliverable) {
            if self.vfio.take_parked(i) {
                let _ = self.vectors[i].irqfd.write(1);
            }
        }
    }

    pub fn vfio_off(&mut self, backend: &dyn VfioBackend) {
        self.vfio.off(backend);
        self.pending = 0;
    }
}
