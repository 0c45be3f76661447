//! Which domains each requester translated under, so that an invalidation
//! drains only the DMA of the devices it concerns (see [`DomainUsers`]).
//!
//! The DMA fence ([`crate::DmaFence`]) tracks device operations by
//! requester ID. An invalidation wait used to drain all of them, so one
//! busy disk held up every other domain's waits. Here the unit turns the
//! invalidations it ran into a [`FenceScope`]: those that name a domain
//! drain the requesters that translated under it, the others drain
//! everything.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::iotlb::FastHasher;
use crate::{DmaFence, FenceScope};

/// Domains remembered per requester; past that it counts as using any
/// domain. A device normally has one domain per PASID it uses, so a few
/// cover it; the bound keeps the per-translation bookkeeping a short scan.
pub(super) const DOMAINS_PER_REQUESTER: usize = 8;

/// What an invalidation removed, as far as the DMA that may still use it
/// goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Invalidated {
    /// Translations of any domain or device: global IOTLB invalidations,
    /// and context- and PASID-cache invalidations, which change what a
    /// device translates through whatever domain it had (the cheap, safe
    /// choice for operations that are rare next to IOTLB invalidations).
    Everything,
    /// IOTLB entries of one domain (domain- or page-selective, PASID-based
    /// or not): every IOTLB entry is tagged with the domain it was
    /// resolved under.
    Domain(u16),
    /// The device-TLB (ATS translation cache) of one requester: only that
    /// device can be using what it held.
    DeviceTlb(u16),
}

/// The domains one requester translated under.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Domains {
    /// At most [`DOMAINS_PER_REQUESTER`] domain IDs.
    These(Vec<u16>),
    /// Too many to remember: drained by every domain's invalidation.
    Any,
}

/// Records, under the unit's lock, the domain each translation resolved
/// under (its context entry's DID in legacy mode, its PASID entry's in
/// scalable mode, PASID-tagged requests included), by requester ID. Only
/// requesters that translate through tables get an entry.
///
/// Why a scoped drain is enough: a device enters the fence before it
/// translates, and a translation records its domain under the unit lock
/// before it returns, so before the device can use it. An invalidation
/// computes its scope under the same lock. So if an operation uses a
/// translation the invalidation removed (an IOTLB entry tagged with domain
/// `d`, resolved before the invalidation ran), its requester was recorded
/// under `d` when the scope was computed, and it entered the fence before
/// that; the wait, which drains later, waits for it. Translations resolved
/// after the invalidation are fresh and need no waiting for.
///
/// A record is only dropped when its requester has no operation in flight
/// ([`DmaFence::is_idle`], checked under the unit lock): every operation
/// that could have used a translation recorded before has then ended.
#[derive(Default)]
pub(super) struct DomainUsers {
    by_rid: HashMap<u16, Domains, BuildHasherDefault<FastHasher>>,
    /// The last pair recorded. Records only grow until their requester is
    /// reset by `record` itself, so a repeat of it has nothing to add; it
    /// spares the map on the per-page path.
    last: Option<(u16, u16)>,
}

impl DomainUsers {
    /// `rid` translated under domain `did`.
    pub(super) fn record(&mut self, rid: u16, did: u16, fence: &DmaFence) {
        if self.last == Some((rid, did)) {
            return;
        }
        self.last = Some((rid, did));
        match self.by_rid.entry(rid) {
            Entry::Vacant(v) => {
                v.insert(Domains::These(vec![did]));
            }
            Entry::Occupied(mut o) => match o.get_mut() {
                Domains::These(dids) if dids.contains(&did) => {}
                Domains::These(dids) if dids.len() < DOMAINS_PER_REQUESTER => dids.push(did),
                // Full (or already any): an idle requester starts over,
                // a busy one has to be drained by every domain.
                entry => {
                    *entry = if fence.is_idle(rid) {
                        Domains::These(vec![did])
                    } else {
                        Domains::Any
                    };
                }
            },
        }
    }

    /// Widens `scope` by the requesters that may use what `what` removed.
    pub(super) fn widen(&self, scope: &mut FenceScope, what: Invalidated) {
        match what {
            Invalidated::Everything => scope.add_all(),
            Invalidated::DeviceTlb(sid) => scope.add(sid),
            Invalidated::Domain(did) => {
                if *scope == FenceScope::All {
                    return;
                }
                for (&rid, domains) in &self.by_rid {
                    let uses = match domains {
                        Domains::These(dids) => dids.contains(&did),
                        Domains::Any => true,
                    };
                    if uses {
                        scope.add(rid);
                    }
                }
            }
        }
    }

    /// The scope of one invalidation.
    pub(super) fn scope_of(&self, what: Invalidated) -> FenceScope {
        let mut scope = FenceScope::default();
        self.widen(&mut scope, what);
        scope
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rids(r: &[u16]) -> FenceScope {
        FenceScope::Requesters(r.iter().copied().collect())
    }

    #[test]
    fn domain_invalidation_scopes_to_its_users() {
        let fence = Arc::new(DmaFence::default());
        let mut u = DomainUsers::default();
        u.record(0x8, 1, &fence);
        u.record(0x10, 2, &fence);
        u.record(0x18, 2, &fence);
        u.record(0x8, 3, &fence);
        assert_eq!(u.scope_of(Invalidated::Domain(1)), rids(&[0x8]));
        assert_eq!(u.scope_of(Invalidated::Domain(2)), rids(&[0x10, 0x18]));
        assert_eq!(u.scope_of(Invalidated::Domain(3)), rids(&[0x8]));
        assert!(u.scope_of(Invalidated::Domain(4)).is_empty());
        assert_eq!(u.scope_of(Invalidated::DeviceTlb(0x20)), rids(&[0x20]));
        assert_eq!(u.scope_of(Invalidated::Everything), FenceScope::All);
    }

    #[test]
    fn overflow_of_a_busy_requester_means_any_domain() {
        let fence = Arc::new(DmaFence::default());
        let mut u = DomainUsers::default();
        let busy = fence.enter(0x8);
        for did in 0..=DOMAINS_PER_REQUESTER as u16 {
            u.record(0x8, did, &fence);
        }
        assert_eq!(u.scope_of(Invalidated::Domain(1000)), rids(&[0x8]));
        drop(busy);
        // Idle now: the next new domain starts its record over.
        u.record(0x8, 2000, &fence);
        assert!(u.scope_of(Invalidated::Domain(1000)).is_empty());
        assert!(u.scope_of(Invalidated::Domain(0)).is_empty());
        assert_eq!(u.scope_of(Invalidated::Domain(2000)), rids(&[0x8]));
    }

    #[test]
    fn overflow_of_an_idle_requester_starts_over() {
        let fence = Arc::new(DmaFence::default());
        let mut u = DomainUsers::default();
        for did in 0..=DOMAINS_PER_REQUESTER as u16 {
            u.record(0x8, did, &fence);
        }
        let last = DOMAINS_PER_REQUESTER as u16;
        assert_eq!(u.scope_of(Invalidated::Domain(last)), rids(&[0x8]));
        assert!(u.scope_of(Invalidated::Domain(0)).is_empty());
    }
}
