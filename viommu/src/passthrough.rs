//! Passthrough (VFIO) endpoints behind an emulated IOMMU: the host IOMMU
//! translates their DMA, so every guest change the model learns of through
//! an invalidation is replayed on the host.
//!
//! This is the part every IOMMU architecture shares: the model resolves
//! what the endpoint's requests go through into an `EndpointDomain` and
//! collects what the guest invalidated into a `HostDirty`; a
//! `HostEndpoint` brings the host in line. Per endpoint it chooses one
//! of:
//! - *bypass* (translation off, or pass-through for the device): the host
//!   attachment is the guest-RAM address space, IOVA = GPA;
//! - *nested* (a guest stage-1 table, on a host that nests): the guest's
//!   table is installed on the host as a nested table over guest RAM; the
//!   host walks it itself, and the guest's invalidations of it go down as
//!   one batch per invalidation wait;
//! - *shadow* (tables the host can only shadow, [`ShadowTable`]): the
//!   endpoint's own host address space mirrors the guest's tables,
//!   re-walked over each invalidated range (the model makes the guest
//!   invalidate after making entries present as well as after removing
//!   them, so invalidations are a complete change log of the tables);
//! - *blocked* (nothing valid to translate with, or tables no host here can
//!   follow): the shadow space, emptied.
//!
//! The VT-d side (which guest structures give which domain, which
//! invalidation dirties which range) is `intel/passthrough.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use log::{info, warn};

use crate::guest_table::ShadowTable;
use crate::host::{
    HostAttachment, HostIommu, HostIommuError, PasidAttachment, Stage1Invalidation, Stage1Table,
};
use crate::shadow::{ShadowSpace, SyncStats};
use crate::GuestMemoryMmap;

/// What a batch of guest invalidations touched.
#[derive(Debug, Default)]
pub(crate) struct HostDirty {
    /// Everything may have changed (global invalidation, root or context
    /// change, translation enable).
    pub all: bool,
    /// IOVA ranges `[start, end)` of one domain (`None`: every domain), by
    /// the domain ID the guest tags its invalidations with.
    pub ranges: Vec<(Option<u16>, u64, u64)>,
}

impl HostDirty {
    pub fn is_empty(&self) -> bool {
        !self.all && self.ranges.is_empty()
    }

    pub fn everything(&mut self) {
        self.all = true;
        self.ranges.clear();
    }

    pub fn domain(&mut self, did: u16) {
        self.range(Some(did), 0, u64::MAX);
    }

    pub fn range(&mut self, did: Option<u16>, start: u64, end: u64) {
        if self.all {
            return;
        }
        // Bound the list: a guest flooding page invalidations between two
        // waits degrades to a full re-walk, not to unbounded memory.
        if self.ranges.len() >= 4096 {
            self.everything();
            return;
        }
        self.ranges.push((did, start, end));
    }
}

/// What one host sync cost.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HostSyncStats {
    pub map_calls: u64,
    pub unmap_calls: u64,
    pub errors: u64,
    pub nested_attaches: u64,
    pub stage1_batches: u64,
    pub stage1_invalidations: u64,
}

impl HostSyncStats {
    fn add(&mut self, s: &SyncStats) {
        self.map_calls += s.map_calls;
        self.unmap_calls += s.unmap_calls;
    }
}

/// The mode a passthrough endpoint is in, as logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassthroughMode {
    Bypass,
    Shadow,
    Blocked,
    Nested,
}

impl PassthroughMode {
    /// How many modes there are (for per-mode counters).
    pub const COUNT: usize = 4;

    pub fn name(self) -> &'static str {
        match self {
            PassthroughMode::Bypass => "bypass",
            PassthroughMode::Shadow => "shadow",
            PassthroughMode::Blocked => "blocked",
            PassthroughMode::Nested => "nested",
        }
    }
}

/// What requests without PASID from one passthrough endpoint go through,
/// as far as the host IOMMU that must reproduce it cares. Each model
/// resolves its own structures into this (VT-d: `DeviceDomain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndpointDomain<T> {
    /// Untranslated: translation disabled, or pass-through for the device.
    Identity,
    /// Guest tables the host can only shadow (VT-d: a second stage), of
    /// domain `did`. The same `(did, table)` as at the last sync means only
    /// the invalidated ranges changed; anything else is walked in full.
    Shadowed { did: u16, table: T },
    /// A guest stage-1 table of domain `did`: nested on a host that nests,
    /// blocked on one that does not (no invalidation announces a map in
    /// it, so it cannot be shadowed).
    Stage1 { did: u16, table: Stage1Table },
    /// Tables no host here can follow (VT-d: nested tables from a guest
    /// that is a hypervisor itself, a third stage): blocked, with a
    /// warning naming `what` tables they are.
    Unfollowable { what: &'static str },
    /// Nothing valid to translate with: every request faults.
    Blocked,
}

/// One passthrough endpoint and the host state that follows the guest,
/// for guest tables of type `T` on the shadow path.
pub(crate) struct HostEndpoint<T> {
    pub host: Arc<dyn HostIommu>,
    pub shadow: ShadowSpace,
    /// The table the shadow space mirrors (a different table means a full
    /// re-walk).
    table: Option<(u16, T)>,
    pub mode: Option<PassthroughMode>,
    /// How often the endpoint entered each mode (by `PassthroughMode as
    /// usize`).
    pub entered: [u64; PassthroughMode::COUNT],
    /// Where the host has the device (None: unknown, after an error).
    attached: Option<HostAttachment>,
    /// Tables the host cannot follow are warned about once per endpoint.
    warned_unfollowable: bool,
    /// Host calls that failed on this endpoint. A guest can cause them
    /// (a table the host refuses) at every invalidation wait, so they are
    /// logged at the 1st, 2nd, 4th, 8th … only.
    host_errors: u64,
    /// PASIDs attached on the host (None: unknown after a host error);
    /// a PASID not here is detached (`passthrough/pasid.rs`).
    pasids: BTreeMap<u32, Option<PasidAttachment>>,
}

impl<T: ShadowTable + Copy + PartialEq> HostEndpoint<T> {
    pub fn new(host: Arc<dyn HostIommu>) -> Self {
        Self::with_shadow(host, ShadowSpace::new())
    }

    /// An endpoint whose shadow space has other limits than the defaults
    /// (the fuzz rigs keep the walk budget small, so that one input cannot
    /// cost a second and the budget's edges are reached).
    pub fn with_shadow(host: Arc<dyn HostIommu>, shadow: ShadowSpace) -> Self {
        HostEndpoint {
            host,
            shadow,
            table: None,
            mode: None,
            entered: [0; PassthroughMode::COUNT],
            attached: None,
            warned_unfollowable: false,
            host_errors: 0,
            pasids: BTreeMap::new(),
        }
    }

    fn attach(&mut self, to: HostAttachment) -> Result<(), HostIommuError> {
        if self.attached != Some(to) {
            self.attached = None;
            self.host.attach(to)?;
            self.attached = Some(to);
        }
        Ok(())
    }

    fn set_mode(&mut self, mode: PassthroughMode) {
        if self.mode != Some(mode) {
            info!(
                "passthrough {:04x}: {} path",
                self.host.requester_id(),
                mode.name()
            );
            self.mode = Some(mode);
            self.entered[mode as usize] += 1;
        }
    }

    /// Brings the host in line with `domain` for what `dirty` says changed.
    pub fn sync(
        &mut self,
        mem: &GuestMemoryMmap,
        domain: EndpointDomain<T>,
        dirty: &HostDirty,
    ) -> HostSyncStats {
        let mut stats = HostSyncStats::default();
        let rid = self.host.requester_id();
        let result = match domain {
            EndpointDomain::Identity => self.leave_shadow(&mut stats).and_then(|_| {
                self.set_mode(PassthroughMode::Bypass);
                self.attach(HostAttachment::Bypass)
            }),
            EndpointDomain::Stage1 { did, table } if self.host.capabilities().nesting => {
                self.leave_shadow(&mut stats).and_then(|_| {
                    let to = HostAttachment::Nested(table);
                    self.set_mode(PassthroughMode::Nested);
                    if self.attached == Some(to) {
                        // The same table: what the guest changed in it is
                        // in the batch.
                        self.forward_stage1(None, did, dirty, &mut stats)
                            .inspect_err(|_| self.reinstall_or_block(to, &mut stats))
                    } else {
                        // A freshly installed table has nothing cached.
                        self.attach(to)
                            .inspect_err(|_| self.block_after_host_error(&mut stats))?;
                        stats.nested_attaches += 1;
                        Ok(())
                    }
                })
            }
            EndpointDomain::Stage1 { table, .. } => self.block(rid, Some(table.name()), &mut stats),
            EndpointDomain::Unfollowable { what } => self.block(rid, Some(what), &mut stats),
            EndpointDomain::Blocked => self.block(rid, None, &mut stats),
            EndpointDomain::Shadowed { did, table } => {
                let full = dirty.all || self.table != Some((did, table));
                self.table = Some((did, table));
                let top = table.input_end();
                let mut ranges: Vec<(u64, u64)> = if full {
                    vec![(0, top)]
                } else {
                    dirty
                        .ranges
                        .iter()
                        .filter(|(d, _, _)| d.is_none_or(|d| d == did))
                        .map(|&(_, s, e)| (s, e.min(top)))
                        .filter(|(s, e)| s < e)
                        .collect()
                };
                merge(&mut ranges);
                let mut r = Ok(());
                for (start, end) in ranges {
                    if let Err(e) = self.sync_range(mem, &table, start, end, &mut stats) {
                        r = Err(e);
                        break;
                    }
                }
                // Shadow first, then switch: the device never sees an
                // empty space where the guest has mappings.
                r.and_then(|_| {
                    self.set_mode(PassthroughMode::Shadow);
                    self.attach(HostAttachment::Shadow)
                })
            }
        };
        if let Err(e) = result {
            self.host_error(&e, &mut stats);
        }
        stats
    }

    /// Counts a failed host call, logged at the 1st, 2nd, 4th … only.
    fn host_error(&mut self, e: &HostIommuError, stats: &mut HostSyncStats) {
        self.host_errors += 1;
        if self.host_errors.is_power_of_two() {
            warn!(
                "passthrough {:04x}: host IOMMU out of step with the guest: {e} \
                 ({} such errors so far)",
                self.host.requester_id(),
                self.host_errors
            );
        }
        stats.errors += 1;
    }

    /// Blocks the endpoint: the shadow space, emptied. `unfollowable`
    /// names the guest's tables when the host cannot follow them (warned
    /// about once); `None` when the guest gave nothing valid.
    fn block(
        &mut self,
        rid: u16,
        unfollowable: Option<&'static str>,
        stats: &mut HostSyncStats,
    ) -> Result<(), HostIommuError> {
        if let Some(what) = unfollowable {
            if !self.warned_unfollowable {
                warn!(
                    "passthrough {rid:04x}: the guest uses {what} tables, which this host \
                     cannot nest; DMA blocked"
                );
                self.warned_unfollowable = true;
            }
        }
        self.leave_shadow(stats).and_then(|_| {
            self.set_mode(PassthroughMode::Blocked);
            self.attach(HostAttachment::Shadow)
        })
    }

    /// Forwards what the batch invalidated in domain `did` to the nested
    /// table of the requests without PASID (`pasid` None) or with `pasid`,
    /// as one host call.
    fn forward_stage1(
        &mut self,
        pasid: Option<u32>,
        did: u16,
        dirty: &HostDirty,
        stats: &mut HostSyncStats,
    ) -> Result<(), HostIommuError> {
        let batch = stage1_batch(did, dirty);
        if batch.is_empty() {
            return Ok(());
        }
        stats.stage1_batches += 1;
        stats.stage1_invalidations += batch.len() as u64;
        let done = match pasid {
            None => self.host.invalidate_stage1(&batch)?,
            Some(p) => self.host.invalidate_stage1_pasid(p, &batch)?,
        };
        if done < batch.len() {
            return Err(HostIommuError::Host {
                op: "stage-1 invalidation",
                reason: format!("the host took {done} of {} entries", batch.len()),
            });
        }
        Ok(())
    }

    /// The host failed to invalidate (all or part of) a batch, so it may
    /// still cache what the guest unmapped, and the guest's wait must not
    /// complete over that: a freshly installed table has nothing cached;
    /// if the host refuses that too, the device is blocked.
    fn reinstall_or_block(&mut self, to: HostAttachment, stats: &mut HostSyncStats) {
        self.attached = None;
        match self.attach(to) {
            Ok(()) => stats.nested_attaches += 1,
            Err(_) => self.block_after_host_error(stats),
        }
    }

    /// The host refused what the guest's tables ask for: the device must
    /// not keep an earlier, wider attachment (e.g. all of guest RAM), so it
    /// goes to the empty shadow space until a later sync succeeds. Should
    /// the host refuse that as well, the attachment stays unknown and every
    /// sync tries again.
    fn block_after_host_error(&mut self, stats: &mut HostSyncStats) {
        self.attached = None;
        if self
            .leave_shadow(stats)
            .and_then(|_| self.attach(HostAttachment::Shadow))
            .is_ok()
        {
            self.set_mode(PassthroughMode::Blocked);
        }
    }

    fn leave_shadow(&mut self, stats: &mut HostSyncStats) -> Result<(), HostIommuError> {
        self.table = None;
        if self.shadow.live_areas() > 0 {
            stats.add(&self.shadow.clear(self.host.as_ref())?);
        }
        Ok(())
    }

    fn sync_range(
        &mut self,
        mem: &GuestMemoryMmap,
        table: &T,
        start: u64,
        end: u64,
        stats: &mut HostSyncStats,
    ) -> Result<(), HostIommuError> {
        let r = self
            .shadow
            .sync_from_tables(self.host.as_ref(), mem, table, start, end)?;
        stats.add(&r);
        Ok(())
    }
}

/// The stage-1 invalidations of domain `did` in `dirty`, in the order the
/// guest queued them; everything when the batch says so or when the list
/// would say no less.
pub(crate) fn stage1_batch(did: u16, dirty: &HostDirty) -> Vec<Stage1Invalidation> {
    if dirty.all {
        return vec![Stage1Invalidation::ALL];
    }
    let mut out = Vec::new();
    for &(d, start, end) in &dirty.ranges {
        if d.is_some_and(|d| d != did) || start >= end {
            continue;
        }
        let addr = start & !0xfff;
        let npages = (end - addr).div_ceil(4096);
        // The host's end address (addr + npages * 4 KiB - 1) must not wrap.
        // The host computes the last byte as addr + npages * 4 KiB - 1,
        // which must fit in 64 bits (it does, wrapping only to exactly
        // 2^64 when `end` is the top).
        if npages >= 1 << 52 || (addr == 0 && end == u64::MAX) {
            return vec![Stage1Invalidation::ALL];
        }
        out.push(Stage1Invalidation {
            addr,
            npages,
            leaf: false,
        });
    }
    out
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(ranges: &mut Vec<(u64, u64)>) {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *ranges = out;
}

mod host_sync;
pub mod page_requests;
mod pasid;
#[cfg(test)]
mod tests;

pub(crate) use host_sync::{HostSync, PlannedSync, SyncPlanner};
