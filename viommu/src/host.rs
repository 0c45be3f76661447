//! The seam between the emulated IOMMU model and the host IOMMU that really
//! translates for a passthrough (VFIO) device.
//!
//! The model decides *what* a passthrough endpoint may reach (bypass, the
//! guest's own tables, nothing); a [`HostIommu`] backend makes the host's
//! IOMMU do it. The model never knows which backend it talks to: the real
//! one is iommufd (IOAS for bypass and shadow, nested HWPTs where the host
//! supports nesting), unit tests use a recording fake.

use thiserror::Error;

/// Access rights of a host mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostPerm {
    pub read: bool,
    pub write: bool,
}

impl HostPerm {
    pub const RW: HostPerm = HostPerm {
        read: true,
        write: true,
    };
    pub const RO: HostPerm = HostPerm {
        read: true,
        write: false,
    };
}

/// One mapping the model wants the host to install: `len` bytes of IOVA at
/// `iova` onto guest-physical `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMapping {
    pub iova: u64,
    pub gpa: u64,
    pub len: u64,
    pub perm: HostPerm,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HostIommuError {
    /// The guest-physical range is not guest RAM (or crosses a RAM region
    /// boundary), so it has no host address to map.
    #[error("guest-physical range {gpa:#x}+{len:#x} is not guest RAM")]
    NotRam { gpa: u64, len: u64 },
    /// The host IOMMU refused an operation.
    #[error("host IOMMU: {op} failed: {reason}")]
    Host { op: &'static str, reason: String },
    /// The host lacks the capability asked for (e.g. nesting).
    #[error("host IOMMU does not support {0}")]
    Unsupported(&'static str),
}

/// Which address space a passthrough endpoint's requests without PASID go
/// through on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAttachment {
    /// IOVA = GPA over all guest RAM (guest IOMMU off, or pass-through for
    /// this device).
    Bypass,
    /// The endpoint's shadow address space, which mirrors the guest's
    /// second-stage tables (caching mode on a host without nesting).
    /// An empty shadow space blocks all DMA.
    Shadow,
    /// The guest's own stage-1 table, walked by the host IOMMU nested over
    /// guest RAM (IOVA = GPA as stage 2): the VMM does nothing per mapping,
    /// only forwards the guest's invalidations.
    Nested(Stage1Table),
}

/// Where requests with one PASID (other than the one the endpoint's
/// requests without PASID use) go on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidAttachment {
    /// Nowhere: the PASID is not attached, its requests fault on the host.
    Detached,
    /// IOVA = GPA over all guest RAM (the guest's pass-through for the
    /// PASID), through the nest parent.
    Bypass,
    /// The guest's stage-1 table for the PASID, nested over guest RAM.
    Nested(Stage1Table),
}

/// A guest stage-1 table as the host IOMMU takes it for nesting. One
/// variant per vIOMMU architecture; the fields are the guest's own, read
/// from its translation structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage1Table {
    /// A VT-d first-stage table from a scalable-mode PASID entry with
    /// PGTT = first stage (VT-d spec §9.6).
    VtdFirstStage {
        /// FSPTPTR: guest-physical address of the first-stage root.
        pgtbl_addr: u64,
        /// 48 (4-level) or 57 (5-level, FLPM = 1).
        addr_width: u8,
        /// SRE: supervisor requests allowed.
        sre: bool,
        /// WPE: write protect applies to supervisor requests.
        wpe: bool,
    },
}

impl Stage1Table {
    /// What the guest's architecture calls such tables, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Stage1Table::VtdFirstStage { .. } => "first-stage",
        }
    }
}

/// One guest invalidation of a nested stage-1 table, forwarded to the
/// host in a batch (the host flushes its IOTLB and device TLBs for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Invalidation {
    /// 4 KiB aligned start of the invalidated input range.
    pub addr: u64,
    /// Pages from `addr`; `u64::MAX` (with `addr` 0) for everything.
    pub npages: u64,
    /// Only leaf entries changed (the host may keep paging-structure
    /// caches).
    pub leaf: bool,
}

impl Stage1Invalidation {
    pub const ALL: Stage1Invalidation = Stage1Invalidation {
        addr: 0,
        npages: u64::MAX,
        leaf: false,
    };
}

/// What the host IOMMU offers a passthrough endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCapabilities {
    /// A NEST_PARENT page table could be allocated for the device: the host
    /// can install guest stage-1 tables as nested page tables.
    pub nesting: bool,
    /// Width of the device's PASIDs as the host reports them (0: none).
    pub max_pasid_log2: u8,
    /// The device sends page requests (PRI) and the vIOMMU takes them:
    /// nested tables get a fault queue, whose requests go to the guest.
    pub page_requests: bool,
}

/// The host side of one passthrough endpoint.
///
/// Calls come from one thread at a time, without the model's lock held, in
/// the order the guest's invalidations require: when a call returns, the
/// host translates as asked (so a guest's invalidation wait may complete).
pub trait HostIommu: Send + Sync {
    /// The PCI requester ID the guest sees for this endpoint.
    fn requester_id(&self) -> u16;
    fn capabilities(&self) -> HostCapabilities;
    /// Moves the endpoint to `to` (a no-op when already there).
    fn attach(&self, to: HostAttachment) -> Result<(), HostIommuError>;
    /// Installs mappings in the shadow address space. Each mapping covers
    /// guest RAM only and does not overlap a live one.
    fn shadow_map(&self, mappings: &[HostMapping]) -> Result<(), HostIommuError>;
    /// Removes `[iova, iova + len)` from the shadow address space. The range
    /// covers whole mappings previously installed by `shadow_map` (the
    /// host cannot split them).
    fn shadow_unmap(&self, iova: u64, len: u64) -> Result<(), HostIommuError>;
    /// Forwards a batch of invalidations of the nested stage-1 table the
    /// endpoint is attached to, in one host call where the host allows.
    /// Returns how many entries the host carried out (all of them unless
    /// it failed part-way).
    fn invalidate_stage1(&self, batch: &[Stage1Invalidation]) -> Result<usize, HostIommuError> {
        let _ = batch;
        Err(HostIommuError::Unsupported("nested translation"))
    }
    /// Moves requests with `pasid` to `to` (a no-op when already there).
    /// Only on a host that nests and gives the device PASIDs
    /// ([`HostCapabilities::max_pasid_log2`]).
    fn attach_pasid(&self, pasid: u32, to: PasidAttachment) -> Result<(), HostIommuError> {
        let _ = (pasid, to);
        Err(HostIommuError::Unsupported("PASID attach"))
    }
    /// [`Self::invalidate_stage1`] for the nested table attached to
    /// `pasid`.
    fn invalidate_stage1_pasid(
        &self,
        pasid: u32,
        batch: &[Stage1Invalidation],
    ) -> Result<usize, HostIommuError> {
        let _ = (pasid, batch);
        Err(HostIommuError::Unsupported("PASID attach"))
    }
}
