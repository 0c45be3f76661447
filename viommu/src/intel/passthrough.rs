//! Passthrough (VFIO) endpoints behind the unit: the host IOMMU translates
//! their DMA, so every guest change the unit learns of through an
//! invalidation is replayed on the host.
//!
//! Per endpoint the unit chooses one of:
//! - *bypass* (translation off, or pass-through for the device): the host
//!   attachment is the guest-RAM address space, IOVA = GPA;
//! - *nested* (first-stage tables, on a host that nests): the guest's
//!   first-stage table is installed on the host as a nested table over
//!   guest RAM; the host walks it itself, and the guest's invalidations of
//!   it go down as one batch per invalidation wait;
//! - *shadow* (second-stage tables): the endpoint's own host address space
//!   mirrors the guest's tables, re-walked over each invalidated range
//!   (VT-d spec §6.1: with Caching Mode the guest invalidates after making
//!   entries present as well as after removing them, so invalidations are
//!   a complete change log of the guest's second-stage tables);
//! - *blocked* (no valid context, nested tables, or first-stage tables a
//!   host without nesting cannot follow): the shadow space, emptied.

use std::sync::Arc;

use log::{info, warn};

use super::address_mask::MaskedRange;
use super::second_stage::SlTable;
use super::translation::DeviceDomain;
use crate::host::{HostAttachment, HostIommu, HostIommuError, Stage1Invalidation};
use crate::shadow::{ShadowSpace, SyncStats};
use crate::GuestMemoryMmap;

/// What a batch of guest invalidations touched.
#[derive(Debug, Default)]
pub(super) struct HostDirty {
    /// Everything may have changed (global invalidation, root or context
    /// change, translation enable).
    pub all: bool,
    /// IOVA ranges `[start, end)` of one domain (`None`: every domain).
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

    /// A page-selective invalidation of domain `did`: the 2^`am` pages at
    /// `addr`, the whole space for a mask past the address width (the
    /// same range the IOTLB drops, see [`MaskedRange`]).
    pub fn pages(&mut self, did: u16, addr: u64, am: u8) {
        let r = MaskedRange::new(addr, am);
        self.range(Some(did), r.start, r.end);
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
pub(super) struct HostSyncStats {
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

/// One passthrough endpoint and the host state that follows the guest.
pub(super) struct HostEndpoint {
    pub host: Arc<dyn HostIommu>,
    pub shadow: ShadowSpace,
    /// The table the shadow space mirrors (a different table means a full
    /// re-walk).
    table: Option<(u16, SlTable)>,
    pub mode: Option<PassthroughMode>,
    /// How often the endpoint entered each mode (by `PassthroughMode as
    /// usize`).
    pub entered: [u64; PassthroughMode::COUNT],
    /// Where the host has the device (None: unknown, after an error).
    attached: Option<HostAttachment>,
    warned_first_stage: bool,
}

impl HostEndpoint {
    pub fn new(host: Arc<dyn HostIommu>) -> Self {
        HostEndpoint {
            host,
            shadow: ShadowSpace::new(),
            table: None,
            mode: None,
            entered: [0; PassthroughMode::COUNT],
            attached: None,
            warned_first_stage: false,
        }
    }

    fn attach(&mut self, to: HostAttachment) -> Result<(), crate::host::HostIommuError> {
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
        domain: DeviceDomain,
        dirty: &HostDirty,
    ) -> HostSyncStats {
        let mut stats = HostSyncStats::default();
        let rid = self.host.requester_id();
        let result = match domain {
            DeviceDomain::Identity => self.leave_shadow(&mut stats).and_then(|_| {
                self.set_mode(PassthroughMode::Bypass);
                self.attach(HostAttachment::Bypass)
            }),
            DeviceDomain::FirstStage { did, table } if self.host.capabilities().nesting => {
                self.leave_shadow(&mut stats).and_then(|_| {
                    let to = HostAttachment::Nested(table);
                    self.set_mode(PassthroughMode::Nested);
                    if self.attached == Some(to) {
                        // The same table: what the guest changed in it is
                        // in the batch.
                        self.forward_stage1(did, dirty, &mut stats)
                    } else {
                        // A freshly installed table has nothing cached.
                        stats.nested_attaches += 1;
                        self.attach(to)
                    }
                })
            }
            DeviceDomain::Blocked
            | DeviceDomain::FirstStage { .. }
            | DeviceDomain::Nested { .. } => {
                if !matches!(domain, DeviceDomain::Blocked) && !self.warned_first_stage {
                    warn!(
                        "passthrough {rid:04x}: the guest uses {} tables, which this host \
                         cannot nest; DMA blocked",
                        if matches!(domain, DeviceDomain::Nested { .. }) {
                            "nested"
                        } else {
                            "first-stage"
                        }
                    );
                    self.warned_first_stage = true;
                }
                self.leave_shadow(&mut stats).and_then(|_| {
                    self.set_mode(PassthroughMode::Blocked);
                    self.attach(HostAttachment::Shadow)
                })
            }
            DeviceDomain::SecondStage { did, table } => {
                let full = dirty.all || self.table != Some((did, table));
                self.table = Some((did, table));
                let top = table_end(&table);
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
            warn!("passthrough {rid:04x}: host IOMMU out of step with the guest: {e}");
            stats.errors += 1;
        }
        stats
    }

    /// Forwards what the batch invalidated in domain `did` to the nested
    /// table, as one host call.
    fn forward_stage1(
        &mut self,
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
        let done = self.host.invalidate_stage1(&batch)?;
        if done < batch.len() {
            // The host stopped part-way: what it did not take may still be
            // cached, so the next batch starts over with everything.
            self.attached = None;
            return Err(HostIommuError::Host {
                op: "stage-1 invalidation",
                reason: format!("the host took {done} of {} entries", batch.len()),
            });
        }
        Ok(())
    }

    fn leave_shadow(
        &mut self,
        stats: &mut HostSyncStats,
    ) -> Result<(), crate::host::HostIommuError> {
        self.table = None;
        if self.shadow.live_areas() > 0 {
            stats.add(&self.shadow.clear(self.host.as_ref())?);
        }
        Ok(())
    }

    fn sync_range(
        &mut self,
        mem: &GuestMemoryMmap,
        table: &SlTable,
        start: u64,
        end: u64,
        stats: &mut HostSyncStats,
    ) -> Result<(), crate::host::HostIommuError> {
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
pub(super) fn stage1_batch(did: u16, dirty: &HostDirty) -> Vec<Stage1Invalidation> {
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

/// One past the highest IOVA the table can translate.
fn table_end(t: &SlTable) -> u64 {
    let bits = (12 + 9 * t.levels as u32).min(t.mgaw as u32).min(64);
    if bits >= 64 {
        u64::MAX
    } else {
        1u64 << bits
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut r = vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 50)];
        merge(&mut r);
        assert_eq!(r, vec![(0, 8), (10, 30), (40, 50)]);
    }

    #[test]
    fn dirty_degrades_to_everything() {
        let mut d = HostDirty::default();
        for i in 0..5000u64 {
            d.range(Some(1), i << 12, (i + 1) << 12);
        }
        assert!(d.all && d.ranges.is_empty());
    }
}
