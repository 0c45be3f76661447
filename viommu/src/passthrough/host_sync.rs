//! Host syncs outside the model's lock, in the order the guest asked.
//!
//! Bringing a passthrough endpoint's host IOMMU in line with the guest is
//! slow: a shadow re-walk of the guest's tables and map/unmap ioctls, or a
//! nested attach and an IOMMU_HWPT_INVALIDATE. Done under the model's lock,
//! every translation of every emulated device would wait for it. So a sync
//! is split:
//! - **planned** under the model's lock ([`HostSync::plan`]): what the
//!   invalidations since the last plan touched and which guest structures
//!   each endpoint's requests go through, read from the model's state at
//!   that point of the guest's command stream, with a ticket;
//! - **applied** after the lock is released ([`HostSync::apply`]), by the
//!   thread that planned it, before it takes the model's lock again: the
//!   host calls, in ticket order. A later plan waits here (not under the
//!   model's lock) until the earlier ones are applied, so the host sees
//!   the guest's changes in the order the guest made them, and a wait that
//!   follows an invalidation completes only once its plan is applied.
//!
//! No thread waits for a turn while it holds the model's lock, and applying
//! never takes it: every planned ticket is applied by a thread that can
//! make progress, so the turns cannot deadlock. A thread that unwinds while
//! it holds a ticket gives its turn up (the [`Turn`] guard), so one
//! panicking host call does not stop every later sync.

use std::sync::{Condvar, Mutex, MutexGuard};

use super::pasid::{is_detached, TrackedPasids};
use super::{EndpointDomain, HostDirty, HostEndpoint, HostSyncStats};
use crate::guest_table::ShadowTable;
use crate::GuestMemoryMmap;

/// A sync planned under the model's lock, to be applied after it.
#[must_use = "a planned sync must be applied, or every later one waits for it"]
pub(crate) struct PlannedSync<T> {
    ticket: u64,
    dirty: HostDirty,
    /// What each endpoint's requests go through, as the model resolved
    /// it when planning.
    endpoints: Vec<EndpointPlan<T>>,
}

struct EndpointPlan<T> {
    rid: u16,
    /// Requests without PASID.
    domain: EndpointDomain<T>,
    /// Requests with each PASID the model follows.
    pasids: Vec<(u32, EndpointDomain<T>)>,
}

/// The model-side half, kept under the model's lock: which endpoints there
/// are, what the guest invalidated since the last plan, the next ticket.
#[derive(Debug, Default)]
pub(crate) struct SyncPlanner {
    /// Requester IDs of the endpoints, in the order they were added.
    rids: Vec<u16>,
    /// What the invalidations since the last plan touched.
    pub dirty: HostDirty,
    /// The PASIDs the guest announced entries for.
    pub pasids: TrackedPasids,
    next_ticket: u64,
}

impl SyncPlanner {
    /// Registers an endpoint [`HostSync::add`] added: the next plan syncs
    /// it in full.
    pub fn register(&mut self, rid: u16) {
        self.rids.push(rid);
        self.dirty.everything();
    }

    /// Whether any endpoint is behind the model (nothing to record
    /// otherwise).
    pub fn has_endpoints(&self) -> bool {
        !self.rids.is_empty()
    }

    /// Takes what changed since the last plan, with `resolve` giving each
    /// endpoint's domain now, for its requests without PASID (`None`) and
    /// with each followed PASID. None when nothing needs the host.
    ///
    /// A PASID that resolves to nothing the host could attach on every
    /// endpoint is in this plan (which detaches it) and then no longer
    /// followed, so the set only holds PASIDs in use.
    pub fn plan<T>(
        &mut self,
        mut resolve: impl FnMut(u16, Option<u32>) -> EndpointDomain<T>,
    ) -> Option<PlannedSync<T>> {
        if self.rids.is_empty() || self.dirty.is_empty() {
            return None;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let pasids: Vec<u32> = self.pasids.iter().collect();
        let endpoints: Vec<EndpointPlan<T>> = self
            .rids
            .iter()
            .map(|&rid| EndpointPlan {
                rid,
                domain: resolve(rid, None),
                pasids: pasids.iter().map(|&p| (p, resolve(rid, Some(p)))).collect(),
            })
            .collect();
        for (i, &p) in pasids.iter().enumerate() {
            if endpoints.iter().all(|e| is_detached(&e.pasids[i].1)) {
                self.pasids.forget(p);
            }
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        Some(PlannedSync {
            ticket,
            dirty,
            endpoints,
        })
    }
}

/// The endpoints and the host calls, outside the model's lock.
pub(crate) struct HostSync<T> {
    inner: Mutex<Endpoints<T>>,
    turn: Condvar,
}

struct Endpoints<T> {
    list: Vec<HostEndpoint<T>>,
    /// The ticket whose turn it is.
    next: u64,
}

impl<T> Default for HostSync<T> {
    fn default() -> Self {
        HostSync {
            inner: Mutex::new(Endpoints {
                list: Vec::new(),
                next: 0,
            }),
            turn: Condvar::new(),
        }
    }
}

/// Hands the turn on when a ticket is done, also when its holder unwinds.
struct Turn<'a, T> {
    sync: &'a HostSync<T>,
    guard: Option<MutexGuard<'a, Endpoints<T>>>,
}

impl<T> Drop for Turn<'_, T> {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.next += 1;
        }
        self.sync.turn.notify_all();
    }
}

impl<T: ShadowTable + Copy + PartialEq> HostSync<T> {
    fn lock(&self) -> MutexGuard<'_, Endpoints<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an endpoint and returns its requester ID, for
    /// [`SyncPlanner::register`] (after this, so that no plan names an
    /// endpoint this side does not have yet).
    pub fn add(&self, endpoint: HostEndpoint<T>) -> u16 {
        let rid = endpoint.host.requester_id();
        self.lock().list.push(endpoint);
        rid
    }

    /// Carries `plan` out on the host, after every earlier plan. Calls
    /// `stats` once per endpoint synced.
    pub fn apply(
        &self,
        mem: &GuestMemoryMmap,
        plan: PlannedSync<T>,
        mut stats: impl FnMut(&HostSyncStats),
    ) {
        let mut g = self.lock();
        while g.next != plan.ticket {
            g = self.turn.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        let mut turn = Turn {
            sync: self,
            guard: Some(g),
        };
        let g = turn.guard.as_mut().expect("the turn holds the lock");
        for e in plan.endpoints {
            if let Some(h) = g.list.iter_mut().find(|h| h.host.requester_id() == e.rid) {
                stats(&h.sync(mem, e.domain, &plan.dirty));
                for (pasid, domain) in &e.pasids {
                    stats(&h.sync_pasid(*pasid, domain, &plan.dirty));
                }
            }
        }
    }

    /// Reads the endpoints (status queries; waits for a sync being
    /// applied).
    pub fn with_endpoints<R>(&self, f: impl FnOnce(&[HostEndpoint<T>]) -> R) -> R {
        f(&self.lock().list)
    }
}
