//! PASIDs of a passthrough endpoint on the nested path.
//!
//! Requests with a PASID go through the guest's tables for that PASID.
//! The host can follow a stage-1 table for a PASID (a nested table
//! attached to the PASID, over the same nest parent as the device's
//! requests without PASID) and a pass-through PASID (the nest parent
//! itself, IOVA = GPA); anything else leaves the PASID detached, so its
//! requests fault on the host. PASIDs are followed only on a host that
//! nests and gives the device PASIDs.
//!
//! Which PASIDs to look at comes from the model: the guest announces a
//! PASID entry it set up or tore down with a PASID-selective cache
//! invalidation (VT-d §6.5.2.4), and the model keeps the PASIDs it heard
//! of ([`TrackedPasids`]) until their entries are gone.

use std::collections::BTreeSet;

use log::warn;

use super::{EndpointDomain, HostDirty, HostEndpoint, HostSyncStats};
use crate::guest_table::ShadowTable;
use crate::host::{HostIommuError, PasidAttachment};

/// At most this many PASIDs are followed at once (the guest chooses how
/// many it announces; each costs a resolution per host sync). Past it, new
/// PASIDs stay detached, with a warning.
pub(crate) const MAX_TRACKED_PASIDS: usize = 256;

/// The PASIDs the guest announced, kept under the model's lock.
#[derive(Debug, Default)]
pub(crate) struct TrackedPasids {
    set: BTreeSet<u32>,
    warned_full: bool,
}

impl TrackedPasids {
    /// The guest announced a change to `pasid`'s entry (PASID 0 is the
    /// device's requests without PASID, followed anyway).
    pub fn note(&mut self, pasid: u32) {
        if pasid == 0 || self.set.contains(&pasid) {
            return;
        }
        if self.set.len() >= MAX_TRACKED_PASIDS {
            if !self.warned_full {
                warn!(
                    "passthrough: the guest uses more than {MAX_TRACKED_PASIDS} PASIDs; \
                     further ones stay detached on the host"
                );
                self.warned_full = true;
            }
            return;
        }
        self.set.insert(pasid);
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.set.iter().copied()
    }

    /// Stops following `pasid` (its entry is gone on every endpoint; this
    /// plan detaches it).
    pub fn forget(&mut self, pasid: u32) {
        self.set.remove(&pasid);
    }
}

/// Whether `domain` leaves nothing to attach for a PASID on any host.
pub(crate) fn is_detached<T>(domain: &EndpointDomain<T>) -> bool {
    !matches!(
        domain,
        EndpointDomain::Identity | EndpointDomain::Stage1 { .. }
    )
}

impl<T: ShadowTable + Copy + PartialEq> HostEndpoint<T> {
    /// Brings `pasid` on the host in line with `domain`, forwarding what
    /// `dirty` invalidated when its nested table stays.
    pub fn sync_pasid(
        &mut self,
        pasid: u32,
        domain: &EndpointDomain<T>,
        dirty: &HostDirty,
    ) -> HostSyncStats {
        let mut stats = HostSyncStats::default();
        let caps = self.host.capabilities();
        let usable = caps.nesting && u64::from(pasid) < 1u64 << caps.max_pasid_log2.min(20);
        let want = match *domain {
            _ if !usable => PasidAttachment::Detached,
            EndpointDomain::Identity => PasidAttachment::Bypass,
            EndpointDomain::Stage1 { table, .. } => PasidAttachment::Nested(table),
            _ => PasidAttachment::Detached,
        };
        // None: unknown, after a host error.
        let have = match self.pasids.get(&pasid) {
            None => Some(PasidAttachment::Detached),
            Some(known) => *known,
        };
        let result = if have == Some(want) {
            match (want, domain) {
                (PasidAttachment::Nested(_), EndpointDomain::Stage1 { did, .. }) => self
                    .forward_stage1(Some(pasid), *did, dirty, &mut stats)
                    .or_else(|e| {
                        // Stale translations may be cached: a fresh table
                        // has none (else the PASID is detached).
                        self.reattach_pasid(pasid, want, &mut stats)?;
                        Err(e)
                    }),
                _ => Ok(()),
            }
        } else {
            self.reattach_pasid(pasid, want, &mut stats)
        };
        if let Err(e) = result {
            self.host_error(&e, &mut stats);
        }
        stats
    }

    /// Attaches `pasid` to `to`; on failure the PASID is detached (never
    /// left on an earlier, wider table).
    fn reattach_pasid(
        &mut self,
        pasid: u32,
        to: PasidAttachment,
        stats: &mut HostSyncStats,
    ) -> Result<(), HostIommuError> {
        self.pasids.insert(pasid, None);
        let r = self.host.attach_pasid(pasid, to);
        match (&r, to) {
            (Ok(()), PasidAttachment::Detached) => {
                self.pasids.remove(&pasid);
            }
            (Ok(()), _) => {
                if matches!(to, PasidAttachment::Nested(_)) {
                    stats.nested_attaches += 1;
                }
                self.pasids.insert(pasid, Some(to));
            }
            (Err(_), _) => {
                // Unknown (tried again at the next sync) unless it can at
                // least be detached.
                if self
                    .host
                    .attach_pasid(pasid, PasidAttachment::Detached)
                    .is_ok()
                {
                    self.pasids.remove(&pasid);
                }
            }
        }
        r
    }
}
