//! The guest-visible side of a VFIO device: a PCI function on our root
//! bus whose config space, BARs and interrupts lead to the real device.
//!
//! Assembly (see also `mod.rs`):
//! - `config.rs` decides, per config byte, whether the guest talks to the
//!   device or to our copy;
//! - `bars.rs` maps the BARs into the guest and traps the rest;
//! - `interrupts.rs`, `msi.rs` and `intx.rs` turn what the guest
//!   programs into VFIO interrupt eventfds.
//!
//! This file routes guest accesses between them. Nothing the guest writes
//! can make it panic, and a device-level failure (an ioctl VFIO refuses,
//! a mapping KVM refuses) is logged while the guest keeps running.

use std::io;
use std::sync::Arc;

use viommu::pasid_cap::PasidHostInfo;

use super::backend::{IrqKind, VfioBackend, CONFIG_REGION};
use super::bars::{host_page_size, Bars, Trapped};
use super::config::{overlaps, MsixLayout, VirtualConfig};
use super::interrupts::{Interrupts, MsixVectors};
use super::intx::Intx;
use super::msi::MsiVectors;
use crate::interrupt::MsiRouter;
use crate::ioapic::Ioapic;
use crate::memory_slots::GuestMemorySlots;
use crate::pci::config::{
    Bar, BAR0, COMMAND, COMMAND_BUS_MASTER, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE,
    CONFIG_SPACE_SIZE, INTERRUPT_LINE, INTERRUPT_PIN, NUM_BARS,
};
use crate::pci::PciDevice;

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("the device has no readable config space")]
    NoConfigSpace,
    #[error("allocating MSI-X vectors: {0}")]
    MsixVectors(#[source] io::Error),
    #[error("allocating MSI vectors: {0}")]
    MsiVectors(#[source] io::Error),
}

/// A passthrough PCI function (see the module documentation).
pub struct VfioPciDevice {
    backend: Arc<dyn VfioBackend>,
    requester_id: u16,
    config: VirtualConfig,
    bars: Bars,
    irqs: Interrupts,
    /// The command register as the guest last wrote it (its memory decode
    /// bit decides whether BARs are mapped).
    command: u16,
}

impl VfioPciDevice {
    /// Builds the function over `backend` (normally an `Arc<VfioDevice>`
    /// from [`super::open_device`]).
    ///
    /// - `requester_id`: the function's BDF; MSI/MSI-X routes carry it so the
    ///   VMM can remap them through the vIOMMU.
    /// - `router`: GSIs and irqfds for MSI and MSI-X vectors.
    /// - `slots`: where mmapped BAR pages go into guest-physical space.
    /// - `pasid`: the host's PASID support for this device and the vIOMMU's
    ///   PASID width, to synthesize a PASID capability (None: no PASID).
    ///
    /// BAR addresses are assigned afterwards through
    /// [`PciDevice::set_bar_address`]; INTx is wired with
    /// [`VfioPciDevice::attach_intx`].
    pub fn new(
        backend: Arc<dyn VfioBackend>,
        requester_id: u16,
        router: Arc<dyn MsiRouter>,
        slots: Arc<dyn GuestMemorySlots>,
        pasid: Option<(PasidHostInfo, u8)>,
    ) -> Result<Self, VfioPciError> {
        let mut config = VirtualConfig::new(backend.clone()).ok_or(VfioPciError::NoConfigSpace)?;
        quiesce_command(&*backend);
        let caps = config.caps().clone();
        let count = |k| backend.irq_info(k).map_or(0, |i| i.count);

        let msix = match caps.msix {
            Some(l) => Some(
                MsixVectors::new(l, count(IrqKind::Msix), requester_id, router.clone())
                    .map_err(VfioPciError::MsixVectors)?,
            ),
            None => None,
        };
        let trapped: Vec<Trapped> = msix
            .as_ref()
            .map(|m| {
                vec![
                    Trapped {
                        bar: m.layout.table_bar,
                        offset: m.layout.table_offset,
                        len: m.table_len(),
                    },
                    Trapped {
                        bar: m.layout.pba_bar,
                        offset: m.layout.pba_offset,
                        len: m.pba_len(),
                    },
                ]
            })
            .unwrap_or_default();
        let bars = Bars::new(
            &*backend,
            config.emu_mut(),
            &trapped,
            slots,
            host_page_size(),
        );
        if let Some(l) = caps.msix {
            if bars.bar(l.table_bar).is_none() || bars.bar(l.pba_bar).is_none() {
                log::warn!("MSI-X table or PBA in a BAR the guest cannot see: MSI-X will not work");
            }
        }

        let msi = match caps.msi {
            Some(l) => {
                let m = MsiVectors::new(l, count(IrqKind::Msi), requester_id, router)
                    .map_err(VfioPciError::MsiVectors)?;
                // Advertise only the vectors we can deliver.
                let ctrl = config.emu().read_u16(l.control()) & !0x000e;
                config
                    .emu_mut()
                    .set_u16(l.control(), ctrl | ((m.advertised_mmc() as u16) << 1));
                Some(m)
            }
            None => None,
        };
        if let Some((host, bits)) = pasid {
            config.add_pasid(host, bits);
        }
        config.seal();
        Ok(VfioPciDevice {
            irqs: Interrupts::new(backend.clone(), msix, msi),
            backend,
            requester_id,
            config,
            bars,
            command: 0,
        })
    }

    /// Whether the function has a PRI capability (it can send page
    /// requests, which the host then hands to the VMM).
    pub fn has_pri(&self) -> bool {
        self.config.caps().pri.is_some()
    }

    /// Hides the PRI capability (see `VirtualConfig::hide_pri`): for a
    /// device whose page requests are not forwarded to the guest.
    pub fn hide_pri(&mut self) {
        self.config.hide_pri();
    }

    pub fn requester_id(&self) -> u16 {
        self.requester_id
    }

    /// Routes the device's INTx to `pin` of `ioapic` (the guest must be told
    /// the same pin through its firmware tables). Without this call, or when
    /// the device has no INTx, only MSI and MSI-X work. Failures are logged.
    pub fn attach_intx(&mut self, ioapic: Arc<Ioapic>, pin: usize) {
        let mut pin_reg = [0u8];
        self.config.read(INTERRUPT_PIN, &mut pin_reg);
        let vfio = self.backend.irq_info(IrqKind::Intx).map_or(0, |i| i.count);
        if pin_reg[0] == 0 || vfio == 0 {
            log::info!("the device has no INTx; MSI and MSI-X only");
            return;
        }
        if self.irqs.intx.is_some() {
            return;
        }
        match Intx::new(self.backend.clone(), ioapic, pin) {
            Ok(intx) => {
                self.irqs.intx = Some(intx);
                let line = pin.min(0xff) as u8;
                self.config.set_power_on(INTERRUPT_LINE, &[line]);
                self.irqs.sync();
            }
            Err(e) => log::warn!("INTx not wired: {e}"),
        }
    }

    /// Resets the function: VFIO device reset, interrupts off, emulated
    /// registers back to their power-on values (BAR addresses stay, as
    /// firmware assigned them), memory decode off. Errors are logged.
    pub fn reset(&mut self) {
        self.bars.unmap_all();
        self.command = 0;
        self.config.reset();
        self.irqs.reset(self.config.emu());
        // The interrupts are off in VFIO now; reset after, so the device
        // is quiet when the kernel restores its state.
        if let Err(e) = self.backend.reset_device() {
            log::warn!("VFIO device reset failed: {e}");
        }
        // The host restores the command register it saved; the guest's
        // view of a reset function has decoding and bus mastering off.
        self.backend
            .region_write(CONFIG_REGION, COMMAND as u64, &0u16.to_le_bytes());
    }

    fn decode_on(&self) -> bool {
        self.command & COMMAND_MEMORY_SPACE != 0
    }

    /// `(table_bar, table_range, pba_bar, pba_range)` of the MSI-X structures.
    fn msix_ranges(&self) -> Option<(MsixLayout, u64, u64)> {
        self.irqs
            .msix
            .as_ref()
            .map(|m| (m.layout, m.table_len(), m.pba_len()))
    }

    /// Where a BAR access lands: the MSI-X table, the PBA, or the device.
    fn bar_target(&self, index: usize, offset: u64) -> BarTarget {
        if let Some((l, table_len, pba_len)) = self.msix_ranges() {
            if index == l.table_bar
                && offset >= l.table_offset
                && offset - l.table_offset < table_len
            {
                return BarTarget::MsixTable(offset - l.table_offset);
            }
            if index == l.pba_bar && offset >= l.pba_offset && offset - l.pba_offset < pba_len {
                return BarTarget::MsixPba(offset - l.pba_offset);
            }
        }
        BarTarget::Device
    }

    /// The bytes of an access to BAR `index` that fall inside it.
    fn bar_len(&self, index: usize, offset: u64, len: usize) -> Option<usize> {
        let size = self.bars.bar(index)?.size;
        let left = size.checked_sub(offset).filter(|&l| l > 0)?;
        Some(len.min(usize::try_from(left).unwrap_or(usize::MAX)))
    }
}

/// The guest starts with a function nobody enabled: no decoding and no
/// DMA until its driver asks, whatever the host left in the command
/// register (our view of memory decode starts off too).
fn quiesce_command(backend: &dyn VfioBackend) {
    let mut cmd = [0u8; 2];
    backend.region_read(CONFIG_REGION, COMMAND as u64, &mut cmd);
    let cmd = u16::from_le_bytes(cmd);
    let enables = COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER;
    if cmd != u16::MAX && cmd & enables != 0 {
        backend.region_write(
            CONFIG_REGION,
            COMMAND as u64,
            &(cmd & !enables).to_le_bytes(),
        );
    }
}

enum BarTarget {
    MsixTable(u64),
    MsixPba(u64),
    Device,
}

impl PciDevice for VfioPciDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        if let Some(m) = &mut self.irqs.msi {
            if let Some(p) = m.layout.pending() {
                if overlaps(offset, data.len(), p, 4) {
                    m.refresh_pending(self.config.emu_mut());
                }
            }
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        if offset >= CONFIG_SPACE_SIZE {
            return;
        }
        let len = data.len().min(CONFIG_SPACE_SIZE - offset);
        let data = &data[..len];
        log::trace!("vfio config write {offset:#x} {data:02x?}");
        let command_written = overlaps(offset, len, COMMAND, 2);
        if command_written {
            let mut bytes = self.command.to_le_bytes();
            for (i, b) in bytes.iter_mut().enumerate() {
                if let Some(v) = (COMMAND + i).checked_sub(offset).and_then(|k| data.get(k)) {
                    *b = *v;
                }
            }
            self.command = u16::from_le_bytes(bytes);
            if !self.decode_on() {
                // Out of the guest's address space before the device
                // stops decoding (VFIO then faults its mmaps).
                self.bars.update(self.config.emu(), false);
            }
        }
        self.config.write(offset, data);
        if command_written || overlaps(offset, len, BAR0, 4 * NUM_BARS) {
            self.bars.update(self.config.emu(), self.decode_on());
        }
        let caps = self.config.caps().clone();
        if let Some(l) = caps.msix {
            if overlaps(offset, len, l.control(), 2) {
                let ctrl = self.config.emu().read_u16(l.control());
                self.irqs.msix_control_written(ctrl);
            }
        }
        if let Some(l) = caps.msi {
            if overlaps(offset, len, l.offset, l.len()) {
                self.irqs.msi_written(self.config.emu());
            }
        }
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.bars.bars()
    }

    fn set_bar_address(&mut self, index: usize, addr: u64) {
        if self.bars.bar(index).is_none() {
            return;
        }
        self.config.emu_mut().set_bar_address(index, addr);
        self.bars.update(self.config.emu(), self.decode_on());
    }

    fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
        if !self.decode_on() {
            return None;
        }
        self.bars.containing(self.config.emu(), addr)
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(n) = self.bar_len(index, offset, data.len()) else {
            return;
        };
        let data = &mut data[..n];
        match self.bar_target(index, offset) {
            BarTarget::MsixTable(o) => {
                if let Some(m) = &self.irqs.msix {
                    m.read_table(o, data);
                }
            }
            BarTarget::MsixPba(o) => {
                if let Some(m) = &mut self.irqs.msix {
                    m.read_pba(o, data);
                }
            }
            BarTarget::Device => self.backend.region_read(index as u32, offset, data),
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        let Some(n) = self.bar_len(index, offset, data.len()) else {
            return;
        };
        let data = &data[..n];
        match self.bar_target(index, offset) {
            BarTarget::MsixTable(o) => {
                if let Some(m) = &mut self.irqs.msix {
                    m.write_table(o, data);
                }
                self.irqs.sync();
            }
            // The PBA is read-only.
            BarTarget::MsixPba(_) => {}
            BarTarget::Device => self.backend.region_write(index as u32, offset, data),
        }
    }
}

#[cfg(test)]
impl VfioPciDevice {
    pub(crate) fn interrupts(&self) -> &Interrupts {
        &self.irqs
    }

    pub(crate) fn config_for_test(&mut self) -> &mut VirtualConfig {
        &mut self.config
    }
}
