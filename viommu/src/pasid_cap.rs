//! A synthesized PCIe PASID Extended Capability for passthrough devices.
//!
//! vfio-pci never shows a device's own PASID capability to userspace (its
//! length table says 0, so the capability is cut out of the chain), because
//! enabling PASID is the host IOMMU driver's business. A guest, though, only
//! uses PASIDs (SVA, PASID-tagged DMA) on a function whose configuration space
//! carries the capability. So the VMM makes one up from what
//! `IOMMU_GET_HW_INFO` says about the device: `out_max_pasid_log2` becomes the
//! Max PASID Width, `IOMMU_HW_CAP_PCI_PASID_EXEC`/`_PRIV` the two "supported"
//! bits. The Control register is virtual: the host already enabled PASID on
//! the physical function, and what the guest may do with PASIDs is enforced by
//! the IOMMU, not by this register.
//!
//! Placement: the capability must not sit on top of anything the device shows
//! — not only other capabilities' headers (QEMU checks just those and would
//! silently cover, say, a vendor-specific capability's registers), but their
//! whole bodies. [`ext_capabilities`] walks the chain the way the guest will
//! and gives each capability a conservative length; [`PasidCapability`] takes
//! the **highest** free dword-aligned 8-byte slot below 0x1000 and links it as
//! the last element of the chain. On every device recorded in
//! tests/fixtures/pci-config that is 0xff8, QEMU's default place, so
//! guest-visible layouts stay comparable; and it keeps away from the space
//! right after the device's own capabilities, where a real device's
//! capabilities that vfio-pci cut out of the chain (its own PASID capability
//! among them) usually sit.
//!
//! The VFIO device's config-space read path is: our 8 bytes at
//! [`PasidCapability::offset`], the patched header dword at the
//! [`PasidCapability::link`] offset, the device everywhere else —
//! [`PasidCapability::overlay_read`] does exactly that on a buffer read from
//! the device, and [`PasidCapability::overlay_write`] claims the writes that
//! land on us.

use iommufd_bindings::iommufd::{
    iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_EXEC as HW_CAP_PASID_EXEC,
    iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_PRIV as HW_CAP_PASID_PRIV,
};

/// Size of a PCIe function's configuration space.
pub const CONFIG_SPACE_SIZE: usize = 0x1000;
/// Where extended capabilities start (the first header is always here).
pub const EXT_CAP_START: usize = 0x100;

/// Extended Capability ID of the PASID capability (PCIe base spec §7.8.8).
pub const PASID_CAP_ID: u16 = 0x001b;
/// The only version of the PASID capability defined so far.
const PASID_CAP_VERSION: u32 = 1;

/// The PASID field is 20 bits wide, so no Max PASID Width above 20 means
/// anything (PCIe base spec §7.8.8.2).
pub const MAX_PASID_WIDTH: u8 = 20;

// PASID Capability register (offset 4) and PASID Control register (offset 6),
// PCIe base spec §7.8.8.2 and §7.8.8.3.
const PASID_CAP_OFFSET: usize = 4;
const PASID_CTRL_OFFSET: usize = 6;
const CAP_EXEC_SUPPORTED: u16 = 1 << 1;
const CAP_PRIV_SUPPORTED: u16 = 1 << 2;
const CAP_WIDTH_SHIFT: u16 = 8;
const CTRL_ENABLE: u16 = 1 << 0;
const CTRL_EXEC_ENABLE: u16 = 1 << 1;
const CTRL_PRIV_ENABLE: u16 = 1 << 2;

/// Bits 31:22 of an extended capability header are the next pointer's
/// dword-aligned part; bits 21:20 are reserved and software must mask them
/// (PCIe base spec §7.6.3).
const NEXT_PTR_MASK: u32 = 0xffc0_0000;
const NEXT_SHIFT: u32 = 20;

/// What the host says about the device's PASID support (from
/// `IOMMU_GET_HW_INFO`, per device: two functions behind one IOMMU can differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PasidHostInfo {
    /// `out_max_pasid_log2`: 0 means the device cannot use PASIDs at all.
    pub max_pasid_log2: u8,
    /// `IOMMU_HW_CAP_PCI_PASID_EXEC`: execute-permission requests work.
    pub exec: bool,
    /// `IOMMU_HW_CAP_PCI_PASID_PRIV`: privileged-mode requests work.
    pub privileged: bool,
}

impl PasidHostInfo {
    /// Builds the host view from the raw `IOMMU_GET_HW_INFO` fields. Clear
    /// `exec`/`privileged` afterwards if the vIOMMU cannot honour such
    /// requests: whatever is set here is advertised to the guest.
    pub fn from_hw_info(out_max_pasid_log2: u8, out_capabilities: u64) -> Self {
        Self {
            max_pasid_log2: out_max_pasid_log2,
            exec: out_capabilities & u64::from(HW_CAP_PASID_EXEC) != 0,
            privileged: out_capabilities & u64::from(HW_CAP_PASID_PRIV) != 0,
        }
    }
}

/// Why no PASID capability could be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasidCapError {
    /// Every dword-aligned 8-byte slot in 0x100..0x1000 overlaps some
    /// capability's registers.
    #[error("no free 8-byte slot in extended configuration space for a PASID capability")]
    NoRoom,
    /// A next pointer leads into conventional configuration space. Guests
    /// would stop the walk there; we refuse to guess what else is broken.
    #[error("extended capability at {at:#x} has a bad next pointer {next:#x}")]
    BadPointer {
        /// Offset of the header holding the pointer.
        at: u16,
        /// The pointer, reserved bits masked.
        next: u16,
    },
    /// The chain comes back to a header it already visited, so it has no
    /// end to link a new capability to.
    #[error("extended capability chain loops back from {at:#x} to {next:#x}")]
    Loop {
        /// Offset of the header holding the pointer.
        at: u16,
        /// The header visited twice.
        next: u16,
    },
}

/// One capability of the extended chain, as [`ext_capabilities`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCap {
    /// Offset of the header.
    pub offset: u16,
    /// Extended Capability ID (0 is the Null capability vfio-pci leaves at
    /// 0x100 when it hides the first capability).
    pub id: u16,
    /// Capability version.
    pub version: u8,
    /// Next pointer (reserved bits masked); 0 ends the chain.
    pub next: u16,
    /// Bytes from `offset` the capability is taken to occupy, header
    /// included: exact where the spec or the capability's own registers fix
    /// it, otherwise up to the next higher header (or 0x1000).
    pub len: usize,
}

impl ExtCap {
    /// Whether the capability's registers overlap `start..start + len`.
    pub fn overlaps(&self, start: usize, len: usize) -> bool {
        let own = usize::from(self.offset);
        start < own + self.len && own < start.saturating_add(len)
    }
}

/// Walks the extended capability chain from 0x100 and sizes every element.
///
/// `config` is the function's whole configuration space as the guest will see
/// it. Returns an empty list for a conventional function (`config` shorter
/// than 4096 bytes) and for one whose header at 0x100 is 0, all-ones (nothing
/// there), or a Null capability with no successor. The walk visits each
/// dword at most once, so it ends on any input.
pub fn ext_capabilities(config: &[u8]) -> Result<Vec<ExtCap>, PasidCapError> {
    let Some(config) = config.get(..CONFIG_SPACE_SIZE) else {
        return Ok(Vec::new());
    };
    let first = dword(config, EXT_CAP_START);
    if first == u32::MAX || (first & 0xffff == 0 && next_of(first) == 0) {
        return Ok(Vec::new());
    }

    let mut caps = Vec::new();
    let mut seen = [false; CONFIG_SPACE_SIZE / 4];
    let mut at = EXT_CAP_START;
    loop {
        seen[at / 4] = true;
        let header = dword(config, at);
        let next = next_of(header);
        caps.push(ExtCap {
            offset: at as u16,
            id: (header & 0xffff) as u16,
            version: ((header >> 16) & 0xf) as u8,
            next: next as u16,
            len: 0,
        });
        if next == 0 {
            break;
        }
        if next < EXT_CAP_START {
            return Err(PasidCapError::BadPointer {
                at: at as u16,
                next: next as u16,
            });
        }
        // `next` is a 12-bit, dword-aligned value: always below 0x1000.
        if seen[next / 4] {
            return Err(PasidCapError::Loop {
                at: at as u16,
                next: next as u16,
            });
        }
        at = next;
    }

    let mut starts: Vec<usize> = caps.iter().map(|c| usize::from(c.offset)).collect();
    starts.sort_unstable();
    for cap in &mut caps {
        let at = usize::from(cap.offset);
        let next_header = starts
            .iter()
            .copied()
            .find(|&s| s > at)
            .unwrap_or(CONFIG_SPACE_SIZE);
        let len = body_len(config, cap.id, at).unwrap_or(next_header - at);
        cap.len = len.min(CONFIG_SPACE_SIZE - at);
    }
    Ok(caps)
}

/// Length of the capability at `at` where the spec fixes it or its own
/// registers state it (the same cases vfio-pci sizes, PCIe base spec §7.8 and
/// §7.9); `None` when unknown, so the caller assumes the worst.
///
/// Where a structure's size depends on the function type or optional
/// features, this takes the largest form: over-estimating only costs room.
fn body_len(config: &[u8], id: u16, at: usize) -> Option<usize> {
    let byte = |off: usize| config.get(at + off).copied().unwrap_or(0);
    let dw = |off: usize| dword(config, at + off);
    let len = match id {
        // Null capability: a header and nothing else.
        0x0000 => 4,
        // AER: up to the TLP Prefix Log (root ports and prefix-capable
        // functions; the registers are reserved space on the others).
        0x0001 => 0x48,
        // VC, MFVC, VC (9): resources plus arbitration tables.
        0x0002 | 0x0008 | 0x0009 => vc_len(config, at),
        0x0003 => 0x0c, // Device Serial Number
        0x0004 => 0x10, // Power Budgeting
        // Vendor-Specific: VSEC Length in the VSEC header (§7.9.5).
        0x000b => {
            let len = (dw(4) >> 20) as usize;
            return (len >= 8).then_some(len);
        }
        // ACS: 8 bytes, plus the Egress Control Vector when present (§7.7.11).
        0x000d => {
            if byte(4) & 0x20 == 0 {
                8
            } else {
                let bits = match byte(5) {
                    0 => 256,
                    n => usize::from(n).div_ceil(32) * 32,
                };
                8 + bits / 8
            }
        }
        0x000e => 8,    // ARI
        0x000f => 8,    // ATS
        0x0010 => 0x40, // SR-IOV
        0x0012 => 0x30, // Multicast, with the switch/root port Overlay BAR
        0x0013 => 0x10, // Page Request Interface
        // Resizable BAR and VF Resizable BAR: a capability/control pair per
        // BAR, the count in the first control register (§7.8.6).
        0x0015 | 0x0024 => {
            let bars = usize::from((byte(8) >> 5) & 0x7).max(1);
            4 + 8 * bars
        }
        // Dynamic Power Allocation: one byte per substate (§7.8.12).
        0x0016 => 0x10 + usize::from(byte(4) & 0x1f) + 1,
        // TPH Requester: the ST table lives here when ST Table Location is 01b.
        0x0017 => {
            let cap = dw(4);
            if (cap >> 9) & 0x3 == 1 {
                0x0c + 2 * (((cap >> 16) & 0x7ff) as usize + 1)
            } else {
                0x0c
            }
        }
        0x0018 => 8,       // LTR
        PASID_CAP_ID => 8, // PASID
        0x001e => 0x10,    // L1 PM Substates
        0x001f => 0x0c,    // PTM
        // Designated Vendor-Specific: DVSEC Length in DVSEC header 1 (§7.9.6).
        0x0023 => {
            let len = (dw(4) >> 20) as usize;
            return (len >= 0x0a).then_some(len);
        }
        0x0025 => 0x0c, // Data Link Feature
        0x0029 => 0x10, // NPEM
        0x002e => 0x18, // DOE
        _ => return None,
    };
    Some(len)
}

/// Virtual Channel (and MFVC) length (PCIe base spec §7.9.1): 0x10 bytes of
/// port registers, 12 per VC resource, and the arbitration tables the
/// registers point to (offsets in 16-byte units from the capability).
fn vc_len(config: &[u8], at: usize) -> usize {
    let cap1 = dword(config, at + 4);
    let cap2 = dword(config, at + 8);
    let resources = (cap1 & 0x7) as usize + 1;
    let mut end = 0x10 + resources * 0x0c;

    // VC Arbitration Table: 4 bits per phase.
    let vc_phases = if cap2 & 0x8 != 0 {
        128
    } else if cap2 & 0x4 != 0 {
        64
    } else if cap2 & 0x2 != 0 {
        32
    } else {
        0
    };
    let vc_table = ((cap2 >> 24) & 0xff) as usize * 16;
    if vc_phases != 0 {
        // vfio-pci's rule when the offset is zero: right after the resources.
        let start = if vc_table != 0 {
            vc_table
        } else {
            end.div_ceil(16) * 16
        };
        end = end.max(start + vc_phases * 4 / 8);
    }

    // Port Arbitration Tables: entry size in bits from Port VC Capability 1.
    let entry_bits = 1usize << ((cap1 >> 10) & 0x3);
    for i in 0..resources {
        let res_cap = dword(config, at + 0x10 + i * 0x0c);
        let table = ((res_cap >> 24) & 0xff) as usize * 16;
        let phases = if res_cap & 0x20 != 0 {
            256
        } else if res_cap & 0x18 != 0 {
            128
        } else if res_cap & 0x4 != 0 {
            64
        } else if res_cap & 0x2 != 0 {
            32
        } else {
            0
        };
        if table != 0 && phases != 0 {
            end = end.max(table + (phases * entry_bits).div_ceil(8));
        }
    }
    end
}

fn dword(config: &[u8], at: usize) -> u32 {
    match config.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn next_of(header: u32) -> usize {
    ((header & NEXT_PTR_MASK) >> NEXT_SHIFT) as usize
}

/// The synthesized PASID Extended Capability of one passthrough function
/// (PCIe base spec §7.8.8: header, PASID Capability register, PASID Control
/// register; 8 bytes, ID 0x001B, version 1).
///
/// The header, the Capability register and the reserved Control bits are
/// read-only; PASID Enable is read-write, Execute Permission Enable and
/// Privileged Mode Enable are read-write only when the matching "supported"
/// bit is set (else hardwired to 0, §7.8.8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasidCapability {
    offset: u16,
    link: Option<(u16, u32)>,
    width: u8,
    exec: bool,
    privileged: bool,
    control: u16,
}

impl PasidCapability {
    /// Size of the capability in configuration space.
    pub const LEN: usize = 8;

    /// Decides whether and where to synthesize the capability.
    ///
    /// `config` is the function's configuration space as the VMM presents it
    /// (4096 bytes; anything shorter is a conventional function: `Ok(None)`).
    /// `viommu_pasid_bits` is the vIOMMU's PASID width (0: PASID off). The
    /// width offered is `min(host, vIOMMU, 20)`; `Ok(None)` when that is 0 or
    /// when the device already shows a PASID capability.
    ///
    /// The slot is the highest dword-aligned 8-byte range in 0x100..0x1000
    /// that overlaps no capability's registers (see [`ext_capabilities`] for
    /// the lengths assumed), or 0x100 if the function has no extended
    /// capabilities. `Err(NoRoom)` when there is no such slot, and
    /// `Err(BadPointer | Loop)` for a broken chain (no end to link to, or a
    /// device we would rather not guess about); the device then simply runs
    /// without PASID.
    pub fn synthesize(
        config: &[u8],
        host: PasidHostInfo,
        viommu_pasid_bits: u8,
    ) -> Result<Option<Self>, PasidCapError> {
        let width = host
            .max_pasid_log2
            .min(viommu_pasid_bits)
            .min(MAX_PASID_WIDTH);
        if width == 0 || config.len() < CONFIG_SPACE_SIZE {
            return Ok(None);
        }
        let caps = ext_capabilities(config)?;
        if caps.iter().any(|c| c.id == PASID_CAP_ID) {
            return Ok(None);
        }

        // The walk only ends at a header whose next pointer is 0.
        let (offset, link) = match caps.last() {
            None => (EXT_CAP_START as u16, None),
            Some(last) => {
                let offset = free_slot(&caps).ok_or(PasidCapError::NoRoom)?;
                let real = dword(config, usize::from(last.offset));
                (offset, Some((last.offset, patch_next(real, offset))))
            }
        };
        Ok(Some(Self {
            offset,
            link,
            width,
            exec: host.exec,
            privileged: host.privileged,
            control: 0,
        }))
    }

    /// Where the 8-byte capability lives in configuration space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// The header whose Next Capability Offset now points at us (the last
    /// element of the device's chain), with the dword to present there
    /// instead of the real one (computed from the header the device showed at
    /// [`Self::synthesize`]; headers are read-only, so it does not go stale).
    /// `None` when we sit at 0x100 because the device had no extended
    /// capabilities.
    pub fn link(&self) -> Option<(u16, u32)> {
        self.link
    }

    /// The same patch applied to a header dword read live from the device:
    /// the next pointer replaced by ours, the other bits kept.
    pub fn patch_header(&self, real: u32) -> u32 {
        patch_next(real, self.offset)
    }

    /// Reads `data.len()` bytes at `offset_in_cap` of the capability, any
    /// size and alignment; bytes past the 8th read as 0.
    pub fn read(&self, offset_in_cap: usize, data: &mut [u8]) {
        let regs = self.bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset_in_cap
                .checked_add(i)
                .and_then(|o| regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes `data` at `offset_in_cap`. Only the PASID Control register's
    /// enables change (those the Capability register supports); everything
    /// else, and bytes past the 8th, is ignored.
    pub fn write(&mut self, offset_in_cap: usize, data: &[u8]) {
        let writable = self.writable_control();
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset_in_cap.checked_add(i) else {
                break;
            };
            let shift = match o.checked_sub(PASID_CTRL_OFFSET) {
                Some(0) => 0,
                Some(1) => 8,
                _ => continue,
            };
            let mask = (writable >> shift) & 0xff;
            let new = (u16::from(b) & mask) << shift;
            self.control = (self.control & !(mask << shift)) | new;
        }
    }

    /// Replaces the bytes of `data` — just read from the device at
    /// configuration offset `cfg_offset` — that belong to this capability or
    /// to the patched link header. Any size and alignment.
    pub fn overlay_read(&self, cfg_offset: usize, data: &mut [u8]) {
        let regs = self.bytes();
        let own = usize::from(self.offset);
        let link = self
            .link
            .map(|(at, value)| (usize::from(at), value.to_le_bytes()));
        for (i, b) in data.iter_mut().enumerate() {
            let Some(addr) = cfg_offset.checked_add(i) else {
                break;
            };
            if let Some(&v) = addr.checked_sub(own).and_then(|o| regs.get(o)) {
                *b = v;
            } else if let Some((at, header)) = &link {
                if let Some(&v) = addr.checked_sub(*at).and_then(|o| header.get(o)) {
                    *b = v;
                }
            }
        }
    }

    /// Applies a guest write at configuration offset `cfg_offset` to the
    /// capability if it touches it. Returns `true` when it did: the write is
    /// ours and must not reach the device. Writes to the link header go to
    /// the device (a header is read-only there).
    pub fn overlay_write(&mut self, cfg_offset: usize, data: &[u8]) -> bool {
        let own = usize::from(self.offset);
        let end = cfg_offset.saturating_add(data.len());
        if data.is_empty() || end <= own || cfg_offset >= own + Self::LEN {
            return false;
        }
        let skip = own.saturating_sub(cfg_offset);
        self.write(
            cfg_offset.saturating_sub(own),
            data.get(skip..).unwrap_or_default(),
        );
        true
    }

    /// Back to the reset state (PASID disabled), for a function reset.
    pub fn reset(&mut self) {
        self.control = 0;
    }

    /// Max PASID Width offered to the guest, in bits.
    pub fn width(&self) -> u8 {
        self.width
    }

    /// Whether Execute Permission Supported is advertised.
    pub fn exec_supported(&self) -> bool {
        self.exec
    }

    /// Whether Privileged Mode Supported is advertised.
    pub fn priv_supported(&self) -> bool {
        self.privileged
    }

    /// PASID Enable, as the guest set it.
    pub fn enabled(&self) -> bool {
        self.control & CTRL_ENABLE != 0
    }

    /// Execute Permission Enable, as the guest set it.
    pub fn exec_enabled(&self) -> bool {
        self.control & CTRL_EXEC_ENABLE != 0
    }

    /// Privileged Mode Enable, as the guest set it.
    pub fn priv_enabled(&self) -> bool {
        self.control & CTRL_PRIV_ENABLE != 0
    }

    /// The PASID Capability register (offset 4).
    pub fn capability_register(&self) -> u16 {
        let mut cap = u16::from(self.width) << CAP_WIDTH_SHIFT;
        if self.exec {
            cap |= CAP_EXEC_SUPPORTED;
        }
        if self.privileged {
            cap |= CAP_PRIV_SUPPORTED;
        }
        cap
    }

    /// The PASID Control register (offset 6).
    pub fn control_register(&self) -> u16 {
        self.control
    }

    fn writable_control(&self) -> u16 {
        let mut mask = CTRL_ENABLE;
        if self.exec {
            mask |= CTRL_EXEC_ENABLE;
        }
        if self.privileged {
            mask |= CTRL_PRIV_ENABLE;
        }
        mask
    }

    /// The 8 bytes the guest sees. We are the last element: next is 0.
    fn bytes(&self) -> [u8; Self::LEN] {
        let header = u32::from(PASID_CAP_ID) | (PASID_CAP_VERSION << 16);
        let mut out = [0; Self::LEN];
        out[..4].copy_from_slice(&header.to_le_bytes());
        out[PASID_CAP_OFFSET..PASID_CTRL_OFFSET]
            .copy_from_slice(&self.capability_register().to_le_bytes());
        out[PASID_CTRL_OFFSET..].copy_from_slice(&self.control.to_le_bytes());
        out
    }
}

/// Highest dword-aligned 8-byte slot in 0x100..0x1000 clear of every body.
fn free_slot(caps: &[ExtCap]) -> Option<u16> {
    let mut used = [false; CONFIG_SPACE_SIZE / 4];
    for cap in caps {
        let start = usize::from(cap.offset) / 4;
        let end = (usize::from(cap.offset) + cap.len).div_ceil(4);
        for d in used.iter_mut().take(end).skip(start) {
            *d = true;
        }
    }
    (EXT_CAP_START..=CONFIG_SPACE_SIZE - PasidCapability::LEN)
        .rev()
        .step_by(4)
        .find(|&at| !used[at / 4] && !used[at / 4 + 1])
        .map(|at| at as u16)
}

fn patch_next(header: u32, next: u16) -> u32 {
    (header & !NEXT_PTR_MASK) | ((u32::from(next) << NEXT_SHIFT) & NEXT_PTR_MASK)
}
