//! The guest's view of a passthrough function's config space.
//!
//! Every byte has an owner. Most bytes belong to the device: reads and
//! writes go to VFIO's config region (which already virtualizes what the
//! host must keep, e.g. INTx disable). The bytes we own live in a
//! [`ConfigSpace`] with its write and RW1C masks:
//!
//! - the BARs (the guest's addresses are ours; sizes come from VFIO) and
//!   the expansion ROM BAR, which reads as zero: the ROM is hidden, since
//!   guests of this VMM boot without option ROMs and a hidden ROM cannot
//!   be turned into a window onto device memory;
//! - the header type's multi-function bit, cleared: only this function
//!   is passed through;
//! - in the PCI Express capability, the device/port type and the link
//!   registers: our root bus has no root ports, and a function directly
//!   on a root complex is a Root Complex Integrated Endpoint, which has no
//!   link. Linux relies on that: `pci_enable_pasid` wants End-End TLP
//!   prefix support on the path unless the function is integrated, and
//!   VT-d allows ATS on integrated functions without a SATC/ATSR entry;
//! - the interrupt line (guest scratch, set to the INTx pin we route);
//! - the MSI and MSI-X capabilities: enable and mask bits are emulated and
//!   drive VFIO_DEVICE_SET_IRQS (see `interrupts.rs`), the device never
//!   sees them;
//! - the PRI capability's control, status and allocation registers:
//!   vfio-pci makes PRI read-only and the host kernel owns the real
//!   enable, so a guest `pci_enable_pri` (which wants Stopped set, then
//!   sets Enable) only works against our copy; the whole capability is
//!   hidden (a null header keeping the chain) when the VMM does not
//!   forward the device's page requests to the guest;
//! - the synthesized PASID capability (which vfio-pci hides) and the
//!   capability header whose Next pointer leads to it.
//!
//! ATS stays as vfio-pci presents it. Guest accesses may have any offset
//! and size; bytes past 4 KiB read as all ones and ignore writes.

use std::sync::Arc;

use viommu::pasid_cap::{PasidCapability, PasidHostInfo};

use super::backend::{VfioBackend, CONFIG_REGION};
use crate::pci::config::{
    ConfigSpace, BAR0, CAPABILITIES_POINTER, CONFIG_SPACE_SIZE, EXT_CAP_START, HEADER_TYPE,
    INTERRUPT_LINE, PCI_CONFIG_SIZE, STATUS, STATUS_CAP_LIST,
};

pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_PCIE: u8 = 0x10;
pub const EXT_CAP_ID_ATS: u16 = 0x0f;
pub const EXT_CAP_ID_PRI: u16 = 0x13;

/// Expansion ROM BAR of a type 0 header.
pub const ROM_BAR: usize = 0x30;

/// MSI Message Control bits (PCI 3.0 §6.8.1.3).
pub const MSI_CTRL_ENABLE: u16 = 1 << 0;
pub const MSI_CTRL_MME_SHIFT: u16 = 4;
pub const MSI_CTRL_64BIT: u16 = 1 << 7;
pub const MSI_CTRL_PVM: u16 = 1 << 8;

/// PCI Express capability (PCIe 5.0 §7.5.3): offsets in the capability.
pub const PCIE_FLAGS: usize = 2;
pub const PCIE_LINK: usize = 0x0c;
pub const PCIE_LINK2: usize = 0x2c;
pub const PCIE_TYPE_ENDPOINT: u16 = 0x0;
pub const PCIE_TYPE_LEGACY_ENDPOINT: u16 = 0x1;
pub const PCIE_TYPE_RC_INTEGRATED: u16 = 0x9;

/// PRI registers (PCIe 5.0 §10.5.2), offsets in the capability.
pub const PRI_CONTROL: usize = 4;
pub const PRI_STATUS: usize = 6;
pub const PRI_ALLOCATION: usize = 12;
pub const PRI_LEN: usize = 16;
pub const PRI_CTRL_ENABLE: u16 = 1 << 0;
pub const PRI_CTRL_RESET: u16 = 1 << 1;
/// Response Failure and Unexpected Page Request Group Index (RW1C).
pub const PRI_STATUS_ERRORS: u16 = 0x0003;
pub const PRI_STATUS_STOPPED: u16 = 1 << 8;
pub const PRI_STATUS_PASID_REQUIRED: u16 = 1 << 15;

/// Where the MSI capability's registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiLayout {
    pub offset: usize,
    pub is_64bit: bool,
    pub per_vector_mask: bool,
    /// Multiple Message Capable: log2 of the vectors the function asks for.
    pub mmc: u8,
}

impl MsiLayout {
    pub fn control(&self) -> usize {
        self.offset + 2
    }
    pub fn address_lo(&self) -> usize {
        self.offset + 4
    }
    pub fn address_hi(&self) -> Option<usize> {
        self.is_64bit.then_some(self.offset + 8)
    }
    pub fn data(&self) -> usize {
        self.offset + if self.is_64bit { 12 } else { 8 }
    }
    pub fn mask(&self) -> Option<usize> {
        self.per_vector_mask.then_some(self.data() + 4)
    }
    pub fn pending(&self) -> Option<usize> {
        self.per_vector_mask.then_some(self.data() + 8)
    }
    pub fn len(&self) -> usize {
        10 + if self.is_64bit { 4 } else { 0 } + if self.per_vector_mask { 10 } else { 0 }
    }
}

/// Where the MSI-X table and PBA are (PCI 3.0 §6.8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    pub offset: usize,
    pub table_size: u16,
    pub table_bar: usize,
    pub table_offset: u64,
    pub pba_bar: usize,
    pub pba_offset: u64,
}

impl MsixLayout {
    pub const LEN: usize = 12;
    pub fn control(&self) -> usize {
        self.offset + 2
    }
}

/// The capabilities we virtualize, as the device presents them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapLayout {
    pub msi: Option<MsiLayout>,
    pub msix: Option<MsixLayout>,
    pub pri: Option<usize>,
    pub ats: Option<usize>,
    pub pcie: Option<usize>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    match b.get(o..o + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    match b.get(o..o + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Standard capabilities as (offset, id), loop-safe.
pub fn standard_caps(cfg: &[u8]) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    if u16_at(cfg, STATUS) & STATUS_CAP_LIST == 0 {
        return out;
    }
    let mut ptr = (cfg.get(CAPABILITIES_POINTER).copied().unwrap_or(0) & !3) as usize;
    while (0x40..PCI_CONFIG_SIZE).contains(&ptr) && out.len() < 48 {
        let Some(&id) = cfg.get(ptr) else {
            break;
        };
        out.push((ptr, id));
        ptr = (cfg.get(ptr + 1).copied().unwrap_or(0) & !3) as usize;
    }
    out
}

/// Extended capabilities as (offset, id), loop-safe.
pub fn extended_caps(cfg: &[u8]) -> Vec<(usize, u16)> {
    let mut out = Vec::new();
    let mut ptr = EXT_CAP_START;
    while (EXT_CAP_START..CONFIG_SPACE_SIZE).contains(&ptr) && out.len() < 960 {
        let h = u32_at(cfg, ptr);
        if h == 0 || h == u32::MAX {
            break;
        }
        out.push((ptr, h as u16));
        ptr = ((h >> 20) & 0xffc) as usize;
    }
    out
}

impl CapLayout {
    /// Finds the capabilities we virtualize in the config space as VFIO
    /// presents it; malformed ones (running off the end) are left alone.
    pub fn discover(cfg: &[u8]) -> Self {
        let mut l = CapLayout::default();
        for (off, id) in standard_caps(cfg) {
            match id {
                CAP_ID_MSI if l.msi.is_none() => {
                    let ctrl = u16_at(cfg, off + 2);
                    let msi = MsiLayout {
                        offset: off,
                        is_64bit: ctrl & MSI_CTRL_64BIT != 0,
                        per_vector_mask: ctrl & MSI_CTRL_PVM != 0,
                        mmc: ((ctrl >> 1) & 7).min(5) as u8,
                    };
                    if off + msi.len() <= PCI_CONFIG_SIZE {
                        l.msi = Some(msi);
                    }
                }
                CAP_ID_MSIX if l.msix.is_none() && off + MsixLayout::LEN <= PCI_CONFIG_SIZE => {
                    let ctrl = u16_at(cfg, off + 2);
                    let table = u32_at(cfg, off + 4);
                    let pba = u32_at(cfg, off + 8);
                    l.msix = Some(MsixLayout {
                        offset: off,
                        table_size: (ctrl & 0x7ff) + 1,
                        table_bar: (table & 7) as usize,
                        table_offset: (table & !7) as u64,
                        pba_bar: (pba & 7) as usize,
                        pba_offset: (pba & !7) as u64,
                    });
                }
                CAP_ID_PCIE if l.pcie.is_none() => l.pcie = Some(off),
                _ => {}
            }
        }
        for (off, id) in extended_caps(cfg) {
            match id {
                EXT_CAP_ID_PRI if l.pri.is_none() && off + PRI_LEN <= CONFIG_SPACE_SIZE => {
                    l.pri = Some(off)
                }
                EXT_CAP_ID_ATS if l.ats.is_none() => l.ats = Some(off),
                _ => {}
            }
        }
        l
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Device,
    Emulated,
    Pasid,
}

/// The config space the guest sees.
pub struct VirtualConfig {
    backend: Arc<dyn VfioBackend>,
    /// Size of VFIO's config region (256 for conventional PCI).
    region_size: usize,
    owner: Vec<Owner>,
    emu: ConfigSpace,
    /// `emu` as it was at power-on, for function reset.
    initial: Option<ConfigSpace>,
    /// The synthesized PASID capability (its link header lives in `emu`).
    pasid: Option<PasidCapability>,
    caps: CapLayout,
}

impl VirtualConfig {
    /// Reads the config space as VFIO presents it and takes over the
    /// registers we virtualize. Returns None when the device has no
    /// usable config region.
    pub fn new(backend: Arc<dyn VfioBackend>) -> Option<Self> {
        let info = backend.region_info(CONFIG_REGION)?;
        if info.size < 64 {
            return None;
        }
        let region_size = (info.size as usize).min(CONFIG_SPACE_SIZE);
        let mut snapshot = vec![0u8; CONFIG_SPACE_SIZE];
        backend.region_read(CONFIG_REGION, 0, &mut snapshot[..region_size]);
        let caps = CapLayout::discover(&snapshot);
        let mut vc = VirtualConfig {
            backend,
            region_size,
            owner: vec![Owner::Device; CONFIG_SPACE_SIZE],
            emu: ConfigSpace::new(0, 0, 0, 0),
            initial: None,
            pasid: None,
            caps,
        };
        vc.take_header(&snapshot);
        vc.take_pcie(&snapshot);
        vc.take_msi(&snapshot);
        vc.take_msix(&snapshot);
        vc.take_pri(&snapshot);
        Some(vc)
    }

    pub fn caps(&self) -> &CapLayout {
        &self.caps
    }

    /// The bytes we own (BAR registers, MSI state) for the other parts of
    /// the device to program.
    pub fn emu(&self) -> &ConfigSpace {
        &self.emu
    }

    pub fn emu_mut(&mut self) -> &mut ConfigSpace {
        &mut self.emu
    }

    /// Takes over `offset..offset + values.len()` with these initial values
    /// and guest write mask.
    fn own(&mut self, offset: usize, values: &[u8], write_mask: &[u8]) {
        let end = (offset + values.len()).min(CONFIG_SPACE_SIZE);
        if offset >= end {
            return;
        }
        self.emu.set_bytes(offset, &values[..end - offset]);
        let mut mask = vec![0u8; end - offset];
        let n = write_mask.len().min(mask.len());
        mask[..n].copy_from_slice(&write_mask[..n]);
        self.emu.set_write_mask(offset, &mask);
        self.owner[offset..end].fill(Owner::Emulated);
    }

    fn take_header(&mut self, snap: &[u8]) {
        self.own(HEADER_TYPE, &[snap[HEADER_TYPE] & 0x7f], &[]);
        // BARs read as unimplemented until the BAR code declares them.
        self.own(BAR0, &[0; 24], &[]);
        self.own(ROM_BAR, &[0; 4], &[]);
        self.own(INTERRUPT_LINE, &[0], &[0xff]);
    }

    /// An Endpoint becomes a Root Complex Integrated Endpoint: the type
    /// field says so and the link registers (Link Capabilities, Control,
    /// Status, and their version 2 counterparts) read as zero.
    fn take_pcie(&mut self, snap: &[u8]) {
        let Some(off) = self.caps.pcie else { return };
        if off + PCIE_LINK + 8 > PCI_CONFIG_SIZE {
            return;
        }
        let flags = u16_at(snap, off + PCIE_FLAGS);
        let ty = (flags >> 4) & 0xf;
        if ty != PCIE_TYPE_ENDPOINT && ty != PCIE_TYPE_LEGACY_ENDPOINT {
            return;
        }
        let flags = (flags & !0x00f0) | (PCIE_TYPE_RC_INTEGRATED << 4);
        self.own(off + PCIE_FLAGS, &flags.to_le_bytes(), &[]);
        self.own(off + PCIE_LINK, &[0; 8], &[]);
        if flags & 0xf >= 2 && off + PCIE_LINK2 + 8 <= PCI_CONFIG_SIZE {
            self.own(off + PCIE_LINK2, &[0; 8], &[]);
        }
    }

    fn take_msi(&mut self, snap: &[u8]) {
        let Some(msi) = self.caps.msi else { return };
        let mut values = vec![0u8; msi.len()];
        values[..2].copy_from_slice(&snap[msi.offset..msi.offset + 2]);
        // Keep what the function is (capable bits), drop what it does.
        let ctrl = u16_at(snap, msi.control()) & (MSI_CTRL_64BIT | MSI_CTRL_PVM | 0x000e);
        values[2..4].copy_from_slice(&ctrl.to_le_bytes());
        let mut mask = vec![0u8; msi.len()];
        let m = |o: usize| o - msi.offset;
        mask[m(msi.control())..m(msi.control()) + 2]
            .copy_from_slice(&(MSI_CTRL_ENABLE | 0x0070).to_le_bytes());
        mask[m(msi.address_lo())..m(msi.address_lo()) + 4]
            .copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        if let Some(hi) = msi.address_hi() {
            mask[m(hi)..m(hi) + 4].fill(0xff);
        }
        mask[m(msi.data())..m(msi.data()) + 2].fill(0xff);
        if let Some(mk) = msi.mask() {
            let bits = (1u64 << (1u32 << msi.mmc)) - 1;
            mask[m(mk)..m(mk) + 4].copy_from_slice(&(bits as u32).to_le_bytes());
        }
        self.own(msi.offset, &values, &mask);
    }

    fn take_msix(&mut self, snap: &[u8]) {
        let Some(msix) = self.caps.msix else { return };
        let mut values = snap[msix.offset..msix.offset + MsixLayout::LEN].to_vec();
        let ctrl = u16_at(snap, msix.control()) & 0x07ff;
        values[2..4].copy_from_slice(&ctrl.to_le_bytes());
        self.own(msix.offset, &values, &[0, 0, 0x00, 0xc0]);
    }

    fn take_pri(&mut self, snap: &[u8]) {
        let Some(pri) = self.caps.pri else { return };
        let mut values = snap[pri..pri + PRI_LEN].to_vec();
        values[PRI_CONTROL..PRI_CONTROL + 2].fill(0);
        let status =
            PRI_STATUS_STOPPED | (u16_at(snap, pri + PRI_STATUS) & PRI_STATUS_PASID_REQUIRED);
        values[PRI_STATUS..PRI_STATUS + 2].copy_from_slice(&status.to_le_bytes());
        values[PRI_ALLOCATION..PRI_ALLOCATION + 4].fill(0);
        let mut mask = [0u8; PRI_LEN];
        mask[PRI_CONTROL..PRI_CONTROL + 2]
            .copy_from_slice(&(PRI_CTRL_ENABLE | PRI_CTRL_RESET).to_le_bytes());
        mask[PRI_ALLOCATION..PRI_ALLOCATION + 4].fill(0xff);
        self.own(pri, &values, &mask);
        self.emu
            .set_w1c_mask_u16(pri + PRI_STATUS, PRI_STATUS_ERRORS);
    }

    /// Hides the PRI capability from the guest: its header reads as a null
    /// capability (ID 0, version 0) that keeps the Next pointer, so the
    /// chain after it stays intact, and its body reads as zeros. For a
    /// device whose page requests would reach nobody (no nested path with
    /// a fault queue): the guest's driver then knows the device cannot
    /// fault pages in, instead of enabling PRI and waiting for answers.
    /// Call before the guest runs (the power-on state is taken again).
    pub fn hide_pri(&mut self) {
        let Some(pri) = self.caps.pri.take() else {
            return;
        };
        let next = u32_at(&self.presented(), pri) & 0xfff0_0000;
        let mut values = [0u8; PRI_LEN];
        values[..4].copy_from_slice(&next.to_le_bytes());
        self.own(pri, &values, &[]);
        self.emu.set_w1c_mask_u16(pri + PRI_STATUS, 0);
        if self.initial.is_some() {
            self.seal();
        }
    }

    /// Adds the PASID capability vfio-pci hides, sized from the host and the
    /// vIOMMU. Call once the rest of the config space is final (the
    /// capability goes where the presented space has room).
    pub fn add_pasid(&mut self, host: PasidHostInfo, viommu_pasid_bits: u8) {
        let presented = self.presented();
        let cap = match PasidCapability::synthesize(&presented, host, viommu_pasid_bits) {
            Ok(Some(cap)) => cap,
            // No PASID on the host or the vIOMMU, or the device shows its own.
            Ok(None) => return,
            Err(e) => {
                log::warn!("no PASID capability for the guest: {e}");
                return;
            }
        };
        let off = cap.offset() as usize;
        if off < EXT_CAP_START || off + PasidCapability::LEN > CONFIG_SPACE_SIZE {
            log::warn!("PASID capability not offered to the guest: bad offset {off:#x}");
            return;
        }
        if let Some((link, header)) = cap.link() {
            self.own(link as usize, &header.to_le_bytes(), &[]);
        }
        self.owner[off..off + PasidCapability::LEN].fill(Owner::Pasid);
        self.pasid = Some(cap);
    }

    /// The whole config space as the guest would read it now.
    pub fn presented(&self) -> Vec<u8> {
        let mut all = vec![0u8; CONFIG_SPACE_SIZE];
        self.read(0, &mut all);
        all
    }

    /// Sets bytes we own, now and in the power-on state.
    pub fn set_power_on(&mut self, offset: usize, bytes: &[u8]) {
        self.emu.set_bytes(offset, bytes);
        if let Some(initial) = &mut self.initial {
            initial.set_bytes(offset, bytes);
        }
    }

    /// Records the current emulated state as the power-on state.
    pub fn seal(&mut self) {
        self.initial = Some(self.emu.clone());
    }

    /// Function reset: every emulated register back to power-on, except
    /// the BAR addresses (assigned once, by the VMM, like firmware).
    pub fn reset(&mut self) {
        if let Some(initial) = &self.initial {
            let mut bars = [0u8; 24];
            self.emu.read(BAR0, &mut bars);
            self.emu = initial.clone();
            self.emu.set_bytes(BAR0, &bars);
        }
        if let Some(p) = &mut self.pasid {
            p.reset();
        }
    }

    /// Reads `data.len()` bytes at `offset`.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        data.fill(0xff);
        let end = offset.saturating_add(data.len()).min(CONFIG_SPACE_SIZE);
        let mut pos = offset;
        while pos < end {
            let owner = self.owner[pos];
            let run_end = (pos..end).find(|&p| self.owner[p] != owner).unwrap_or(end);
            let buf = &mut data[pos - offset..run_end - offset];
            match owner {
                Owner::Device => self.read_device(pos, buf),
                Owner::Emulated => self.emu.read(pos, buf),
                Owner::Pasid => {
                    if let Some(p) = &self.pasid {
                        p.read(pos - p.offset() as usize, buf);
                    }
                }
            }
            pos = run_end;
        }
    }

    /// Config space past VFIO's region (a conventional device's extended
    /// space) reads as zero: no capabilities there.
    fn read_device(&self, pos: usize, buf: &mut [u8]) {
        let avail = self.region_size.saturating_sub(pos).min(buf.len());
        if avail > 0 {
            self.backend
                .region_read(CONFIG_REGION, pos as u64, &mut buf[..avail]);
        }
        buf[avail..].fill(0);
    }

    /// Applies a guest write: device bytes go to VFIO, ours through the
    /// write masks. The caller reacts to the registers it cares about.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset.saturating_add(data.len()).min(CONFIG_SPACE_SIZE);
        let mut pos = offset;
        while pos < end {
            let owner = self.owner[pos];
            let run_end = (pos..end).find(|&p| self.owner[p] != owner).unwrap_or(end);
            let buf = &data[pos - offset..run_end - offset];
            match owner {
                Owner::Device => {
                    let avail = self.region_size.saturating_sub(pos).min(buf.len());
                    if avail > 0 {
                        self.backend
                            .region_write(CONFIG_REGION, pos as u64, &buf[..avail]);
                    }
                }
                Owner::Emulated => self.emu.write(pos, buf),
                Owner::Pasid => {
                    if let Some(p) = &mut self.pasid {
                        p.write(pos - p.offset() as usize, buf);
                    }
                }
            }
            pos = run_end;
        }
        if let Some(pri) = self.caps.pri {
            if overlaps(offset, end.saturating_sub(offset), pri + PRI_CONTROL, 2) {
                self.pri_control_written(pri);
            }
        }
    }

    /// PRI Reset reads as zero; Stopped follows Enable: we track no
    /// outstanding requests, the host's PRI interface does.
    fn pri_control_written(&mut self, pri: usize) {
        let ctrl = self.emu.read_u16(pri + PRI_CONTROL) & !PRI_CTRL_RESET;
        self.emu.set_u16(pri + PRI_CONTROL, ctrl);
        let mut status = self.emu.read_u16(pri + PRI_STATUS) & !PRI_STATUS_STOPPED;
        if ctrl & PRI_CTRL_ENABLE == 0 {
            status |= PRI_STATUS_STOPPED;
        }
        self.emu.set_u16(pri + PRI_STATUS, status);
    }
}

/// Whether `[a, a + alen)` and `[b, b + blen)` share a byte.
pub fn overlaps(a: usize, alen: usize, b: usize, blen: usize) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}
