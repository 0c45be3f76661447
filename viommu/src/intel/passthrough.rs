//! VT-d's side of the passthrough (VFIO) endpoints: what the unit's
//! structures and invalidations mean to the shared endpoint state machine
//! ([`crate::passthrough`]), which brings the host IOMMU in line.
//!
//! - pass-through or translation off → bypass;
//! - first-stage tables for RID_PASID → a stage-1 table, nested on a host
//!   that nests (the IOTLB and PASID-based IOTLB invalidations of its
//!   domain go down in one batch per invalidation wait), blocked on one
//!   that does not (no invalidation announces a first-stage map);
//! - second-stage (or legacy) tables → shadowed: the unit reports Caching
//!   Mode, so the guest invalidates after making entries present as well
//!   as after removing them (VT-d spec §6.1), and its invalidations are a
//!   complete change log of the tables;
//! - nested PASID entries (a third stage) and no valid context → blocked.

use super::address_mask::MaskedRange;
use super::second_stage::SlTable;
use super::translation::DeviceDomain;
use crate::passthrough::{EndpointDomain, HostDirty};

impl From<DeviceDomain> for EndpointDomain<SlTable> {
    fn from(d: DeviceDomain) -> Self {
        match d {
            DeviceDomain::Identity => EndpointDomain::Identity,
            DeviceDomain::SecondStage { did, table } => EndpointDomain::Shadowed { did, table },
            DeviceDomain::FirstStage { did, table } => EndpointDomain::Stage1 { did, table },
            DeviceDomain::Nested { .. } => EndpointDomain::Unfollowable { what: "nested" },
            DeviceDomain::Blocked => EndpointDomain::Blocked,
        }
    }
}

/// Records a page-selective invalidation of domain `did` in `dirty`: the
/// 2^`am` pages at `addr`, the whole space for a mask past the address
/// width (the same range the IOTLB drops, see [`MaskedRange`]).
pub(super) fn dirty_pages(dirty: &mut HostDirty, did: u16, addr: u64, am: u8) {
    let r = MaskedRange::new(addr, am);
    dirty.range(Some(did), r.start, r.end);
}
