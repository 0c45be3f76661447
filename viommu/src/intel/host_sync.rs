//! Replaying guest invalidations on the passthrough endpoints' host
//! IOMMU, without the unit's lock.
//!
//! A host sync walks guest tables and makes host calls (iommufd ioctls),
//! which for a large or hostile batch takes long. The unit's lock is what
//! every translation of every emulated device takes, so the sync runs in
//! two steps:
//!
//! 1. *Plan*, under the lock ([`IntelIommu::take_host_sync`]): take what
//!    the batch invalidated ([`HostDirty`]) and resolve, for each endpoint,
//!    the domain it is in now ([`DeviceDomain`]: mode and table root; this
//!    reads the root, context and PASID tables through the unit's caches,
//!    which only the lock may touch). The plan gets a ticket.
//! 2. *Apply*, unlocked ([`IntelIommu::run_host_sync`]): in ticket order,
//!    one plan at a time, walk the guest's second-stage tables and make
//!    the host calls, with the endpoints' own lock held.
//!
//! Tickets are handed out under the unit's lock in the order the batches
//! happened and applied in that order, so a later batch's sync is never
//! overtaken by an earlier one (which would put back an older table root
//! or mode), and two syncs of an endpoint never interleave. A caller
//! returns from `run_host_sync` only once every plan up to its own was
//! applied, even when its own batch had nothing to sync (an earlier plan
//! may hold its invalidations), so what a guest invalidated before a wait
//! is in effect on the host before the wait's status write (§6.5.2.8)
//! and before a register-based invalidation's MMIO write returns
//! (§6.5.1).
//!
//! A guest changing its tables while a plan is applied is racing its own
//! invalidation: the walk sees either state, and the invalidation that
//! follows the change is synced by a later plan.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::passthrough::{HostDirty, HostEndpoint, PassthroughMode};
use super::translation::{self, DeviceDomain};
use super::unit::{IntelIommu, State};
use crate::host::HostIommu;
use crate::shadow::{BatchLimits, Exhausted, SyncBudget};

/// The least time between two warnings that a batch exceeded its budget:
/// a guest doing it on purpose does it at every batch.
const BUDGET_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The passthrough endpoints and the order their syncs apply in.
#[derive(Default)]
pub(super) struct HostSyncer {
    /// Held by the plan being applied and by readers of the endpoints'
    /// state; never while the unit's lock is taken.
    endpoints: Mutex<Vec<HostEndpoint>>,
    /// The last ticket applied.
    applied: Mutex<u64>,
    turn: Condvar,
    warned: Mutex<BudgetWarnings>,
}

#[derive(Default)]
struct BudgetWarnings {
    last: Option<Instant>,
    suppressed: u64,
}

/// What the unit keeps about host sync under its lock.
#[derive(Debug, Default)]
pub(super) struct HostSyncState {
    /// Requester IDs of the passthrough endpoints, in the order of
    /// [`HostSyncer::endpoints`] once the plans handed out are applied.
    pub rids: Vec<u16>,
    /// What the invalidations since the last plan touched.
    pub dirty: HostDirty,
    /// The last ticket handed out.
    tickets: u64,
    pub limits: BatchLimits,
}

/// One batch's host sync, planned under the unit's lock.
#[must_use = "a plan must be run, or later syncs wait for it forever"]
pub(super) struct HostSyncPlan {
    ticket: u64,
    work: Option<Work>,
}

struct Work {
    dirty: HostDirty,
    /// One per endpoint, after `added` joined.
    domains: Vec<DeviceDomain>,
    added: Option<HostEndpoint>,
    limits: BatchLimits,
}

/// Marks a ticket applied when dropped, also when the sync unwinds (a
/// panicking host): later plans would otherwise wait forever.
struct Applied<'a> {
    syncer: &'a HostSyncer,
    ticket: u64,
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        let mut applied = lock(&self.syncer.applied);
        *applied = (*applied).max(self.ticket);
        self.syncer.turn.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostSyncer {
    /// Blocks until every ticket up to `ticket` was applied.
    fn wait_applied(&self, ticket: u64) {
        let mut applied = lock(&self.applied);
        while *applied < ticket {
            applied = self.turn.wait(applied).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl IntelIommu {
    /// Plans the host sync of what the guest invalidated so far (step 1,
    /// under the lock); `added` joins the endpoints when the plan applies.
    pub(super) fn take_host_sync(
        &self,
        st: &mut State,
        added: Option<HostEndpoint>,
    ) -> HostSyncPlan {
        let h = &st.host;
        if h.rids.is_empty() || (h.dirty.is_empty() && added.is_none()) {
            return HostSyncPlan {
                ticket: h.tickets,
                work: None,
            };
        }
        let cfg = Self::walk_config(st);
        let State { host, caches, .. } = st;
        let domains = host
            .rids
            .iter()
            .map(|&rid| translation::device_domain(&self.mem, &cfg, caches, rid))
            .collect();
        host.tickets += 1;
        HostSyncPlan {
            ticket: host.tickets,
            work: Some(Work {
                dirty: std::mem::take(&mut host.dirty),
                domains,
                added,
                limits: host.limits,
            }),
        }
    }

    /// Applies `plan` (step 2). Must be called without the unit's lock;
    /// returns once it and every earlier plan are in effect on the host.
    pub(super) fn run_host_sync(&self, plan: HostSyncPlan) {
        let syncer = &self.host_sync;
        let Some(work) = plan.work else {
            if plan.ticket > 0 {
                syncer.wait_applied(plan.ticket);
            }
            return;
        };
        syncer.wait_applied(plan.ticket - 1);
        let _applied = Applied {
            syncer,
            ticket: plan.ticket,
        };
        let mut endpoints = lock(&syncer.endpoints);
        endpoints.extend(work.added);
        debug_assert_eq!(endpoints.len(), work.domains.len());
        let mut budget = SyncBudget::new(work.limits);
        let (mut left_unmapped, mut emptied) = (0, 0);
        for (h, domain) in endpoints.iter_mut().zip(work.domains) {
            let stats = h.sync(&self.mem, domain, &work.dirty, &mut budget);
            let c = &self.counters;
            c.host_syncs.fetch_add(1, Relaxed);
            c.host_map_calls.fetch_add(stats.map_calls, Relaxed);
            c.host_unmap_calls.fetch_add(stats.unmap_calls, Relaxed);
            c.host_errors.fetch_add(stats.errors, Relaxed);
            left_unmapped += stats.over_budget_runs;
            emptied += stats.truncated_walks;
        }
        drop(endpoints);
        if let Some(what) = budget.exhausted() {
            self.counters.host_over_budget.fetch_add(1, Relaxed);
            self.warn_over_budget(what, work.limits, left_unmapped, emptied);
        }
    }

    fn warn_over_budget(&self, what: Exhausted, limits: BatchLimits, runs: u64, ranges: u64) {
        let mut w = lock(&self.host_sync.warned);
        let now = Instant::now();
        if w.last
            .is_some_and(|t| now.duration_since(t) < BUDGET_WARN_INTERVAL)
        {
            w.suppressed += 1;
            return;
        }
        let limit = match what {
            Exhausted::Reads => format!("{} table entries read", limits.reads),
            Exhausted::Maps => format!("{} host map calls", limits.maps),
        };
        log::warn!(
            "passthrough: the guest's second-stage tables exceed what one invalidation batch \
             may cost ({limit}); {runs} runs and the rest of {ranges} ranges stay unmapped \
             (DMA there faults on the host until invalidated again); {} more such batches \
             since the last warning",
            w.suppressed
        );
        w.last = Some(now);
        w.suppressed = 0;
    }

    /// Puts a passthrough endpoint behind the unit: from now on its host
    /// IOMMU follows what the guest programs for `host.requester_id()`.
    pub fn add_host_endpoint(&self, host: Arc<dyn HostIommu>) {
        let mut st = self.lock();
        st.host.rids.push(host.requester_id());
        st.host.dirty.everything();
        let plan = self.take_host_sync(&mut st, Some(HostEndpoint::new(host)));
        self.finish(st);
        self.run_host_sync(plan);
    }

    /// What one guest batch may cost the host (see
    /// [`crate::shadow::budget`]); from the next batch on.
    pub fn set_host_batch_limits(&self, limits: BatchLimits) {
        self.lock().host.limits = limits;
    }

    /// The path each passthrough endpoint is on, by requester ID, and how
    /// often it entered each path (indexed by `PassthroughMode as usize`).
    /// Waits for a sync being applied.
    pub fn passthrough_modes(&self) -> Vec<(u16, Option<PassthroughMode>, [u64; 3])> {
        lock(&self.host_sync.endpoints)
            .iter()
            .map(|h| (h.host.requester_id(), h.mode, h.entered))
            .collect()
    }

    /// Bytes the shadow spaces map right now (waits for a sync being
    /// applied).
    pub fn shadow_live_bytes(&self) -> u64 {
        lock(&self.host_sync.endpoints)
            .iter()
            .map(|h| h.shadow.live_bytes())
            .sum()
    }

    /// Records an IOTLB invalidation of granularity `g` (1 global, 2
    /// domain, 3 pages: 2^am pages at addr) for the passthrough endpoints.
    pub(super) fn iotlb_dirty(st: &mut State, g: u64, did: u16, addr: u64, am: u8) {
        if st.host.rids.is_empty() {
            return;
        }
        match g {
            1 => st.host.dirty.everything(),
            2 => st.host.dirty.domain(did),
            _ => st.host.dirty.pages(did, addr, am),
        }
    }
}
