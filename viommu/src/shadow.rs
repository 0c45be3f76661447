//! The shadow address space: the host IOMMU's view of a passthrough
//! endpoint kept equal to the guest's tables (VT-d second-stage tables
//! today), for hosts that cannot nest the guest's tables under their own.
//! The engine knows tables only through [`ShadowTable`], so every IOMMU
//! model shares it.
//!
//! The emulated unit makes the guest report maps as well as unmaps (VT-d:
//! Caching Mode, CAP.CM, spec §6.1), so the guest invalidates after making
//! an entry present as well as after removing one. At each invalidation the
//! unit re-reads the guest's tables over the invalidated range
//! ([`ShadowTable::for_each_leaf`]) and calls
//! [`ShadowSpace::sync_range`] (or [`ShadowSpace::sync_from_tables`], which
//! does both), which makes that range of the host space equal to the
//! tables with as few host calls as it can.
//!
//! # The host's rule
//!
//! The host (iommufd's IOAS) can only remove whole mappings it installed:
//! an unmap cannot split one. The space therefore tracks the areas it
//! installed, exactly as the host holds them, and when only part of an area
//! must change it unmaps the whole area and maps again what stays. A device
//! DMA to the part that stays faults in the host IOMMU between those two
//! calls; this is inherent to a host without in-place replacement (a
//! guest splitting one of its own large pages causes the same window on any
//! shadowing implementation). To keep such splits rare, an area that did
//! not change is never touched, not even to merge it with a new neighbour
//! that continues it: areas then stay close to what the guest mapped in one
//! go, and a guest using the DMA API unmaps what it mapped, whole.
//!
//! # Cost
//!
//! Every map and every unmap is one host call (one ioctl, which in a nested
//! or emulated test harness is expensive). Runs that are contiguous in IOVA
//! and in guest-physical address with the same rights become one area;
//! areas adjacent in IOVA that must all go are removed by one unmap; areas
//! that did not change cost nothing, so re-syncing an unchanged range makes
//! no call at all.
//!
//! # Errors
//!
//! An area is tracked iff its map succeeded and no unmap covering it
//! succeeded; a failed host call is taken to have changed nothing. After a
//! failure the space carries on with whatever does not depend on the failed
//! call and then returns the first error, so the host is as close to the
//! guest's tables as the host allows. A run the backend refuses as not
//! guest RAM is the guest's doing (it may point IOVAs at MMIO or at
//! nothing): it is skipped and counted, and the rest of the range is synced.
//!
//! # Limits
//!
//! Guest tables are untrusted. The walk reads at most
//! [`ShadowSpace::walk_budget`] entries per sync, in windows of
//! [`WALK_WINDOW`] entries whose leaves reach the host before the next
//! window is read, and the space holds at most [`ShadowSpace::max_areas`]
//! areas. Past either limit the space fails closed: what is not known to
//! be mapped is not mapped, so the device faults instead of reaching
//! memory the guest may have taken back.

use std::collections::BTreeMap;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::guest_table::{LeafScanError, ShadowTable};
use crate::host::{HostIommu, HostIommuError, HostMapping, HostPerm};
use crate::GuestMemoryMmap;

/// Default for [`ShadowSpace::walk_budget`]: 2^26 entries, enough for
/// 256 GiB of 4 KiB mappings in one sync, a few hundred milliseconds of
/// reading at worst.
pub const DEFAULT_WALK_BUDGET: u64 = 1 << 26;

/// Table entries one window of [`ShadowSpace::sync_from_tables`]
/// reads: each entry gives at most one leaf, so a window holds at most
/// this many leaves (a few MiB of mappings) before they reach the host.
pub const WALK_WINDOW: u64 = 1 << 16;

/// Default for [`ShadowSpace::max_areas`]: 2^22 areas (a few hundred MiB of
/// tracking at worst), far beyond the live DMA mappings of any sane guest.
pub const DEFAULT_MAX_AREAS: usize = 1 << 22;

/// What one sync (or all syncs so far, see [`ShadowSpace::totals`]) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// `shadow_map` calls made, failed ones included (each is an ioctl).
    pub map_calls: u64,
    /// `shadow_unmap` calls made, failed ones included.
    pub unmap_calls: u64,
    pub mapped_bytes: u64,
    pub unmapped_bytes: u64,
    /// Runs skipped because they are not guest RAM (refused by the
    /// backend, or found outside RAM while coalescing).
    pub not_ram_runs: u64,
    pub not_ram_bytes: u64,
    /// Runs left unmapped because the space already held `max_areas`.
    pub over_limit_runs: u64,
    /// Input mappings dropped as malformed (out of order or overlapping).
    pub rejected: u64,
    /// Table entries read by [`ShadowSpace::sync_from_tables`].
    pub entries_read: u64,
    /// Walks that ran out of budget; the rest of their range was emptied.
    pub truncated_walks: u64,
    /// Windows [`ShadowSpace::sync_from_tables`] synced a range in.
    pub windows: u64,
    /// The most host mappings one window held (a maximum, not a sum).
    pub largest_window: u64,
}

impl SyncStats {
    /// Saturating: the totals of a long-lived space must not overflow.
    fn add(&mut self, o: &SyncStats) {
        self.map_calls = self.map_calls.saturating_add(o.map_calls);
        self.unmap_calls = self.unmap_calls.saturating_add(o.unmap_calls);
        self.mapped_bytes = self.mapped_bytes.saturating_add(o.mapped_bytes);
        self.unmapped_bytes = self.unmapped_bytes.saturating_add(o.unmapped_bytes);
        self.not_ram_runs = self.not_ram_runs.saturating_add(o.not_ram_runs);
        self.not_ram_bytes = self.not_ram_bytes.saturating_add(o.not_ram_bytes);
        self.over_limit_runs = self.over_limit_runs.saturating_add(o.over_limit_runs);
        self.rejected = self.rejected.saturating_add(o.rejected);
        self.entries_read = self.entries_read.saturating_add(o.entries_read);
        self.truncated_walks = self.truncated_walks.saturating_add(o.truncated_walks);
        self.windows = self.windows.saturating_add(o.windows);
        self.largest_window = self.largest_window.max(o.largest_window);
    }
}

/// End of a mapping. Every mapping the space holds or installs lies in a
/// half-open `[start, end)` with `end <= u64::MAX`, so this cannot overflow.
fn end_of(m: &HostMapping) -> u64 {
    m.iova + m.len
}

fn grants_nothing(p: HostPerm) -> bool {
    !p.read && !p.write
}

/// `b` continues `a`: contiguous in IOVA and guest-physical, same rights.
fn continues(a: &HostMapping, b: &HostMapping) -> bool {
    end_of(a) == b.iova && a.gpa.checked_add(a.len) == Some(b.gpa) && a.perm == b.perm
}

/// One endpoint's shadow address space: the areas installed in the host,
/// by IOVA.
#[derive(Debug)]
pub struct ShadowSpace {
    /// Non-overlapping, keyed by `iova`; exactly what the host holds.
    areas: BTreeMap<u64, HostMapping>,
    live_bytes: u64,
    totals: SyncStats,
    walk_budget: u64,
    /// Entries read per window ([`WALK_WINDOW`]; smaller in tests).
    window: u64,
    max_areas: usize,
    /// Guests that map non-RAM tend to do it over and over: warn once.
    not_ram_warned: bool,
    limit_warned: bool,
}

impl Default for ShadowSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl ShadowSpace {
    /// An empty space (which blocks all DMA) with the default limits.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_WALK_BUDGET, DEFAULT_MAX_AREAS)
    }

    pub fn with_limits(walk_budget: u64, max_areas: usize) -> Self {
        ShadowSpace {
            areas: BTreeMap::new(),
            live_bytes: 0,
            totals: SyncStats::default(),
            walk_budget,
            window: WALK_WINDOW,
            max_areas,
            not_ram_warned: false,
            limit_warned: false,
        }
    }

    /// Table entries one [`Self::sync_from_tables`] may read.
    pub fn walk_budget(&self) -> u64 {
        self.walk_budget
    }

    /// Areas the space may hold.
    pub fn max_areas(&self) -> usize {
        self.max_areas
    }

    /// Bytes of IOVA mapped in the host.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Mappings installed in the host.
    pub fn live_areas(&self) -> usize {
        self.areas.len()
    }

    /// The installed mappings, by IOVA.
    pub fn areas(&self) -> impl Iterator<Item = &HostMapping> + '_ {
        self.areas.values()
    }

    /// Everything done since the space was created, failed syncs included.
    pub fn totals(&self) -> SyncStats {
        self.totals
    }

    /// Re-reads the guest's table `t` (a second stage for VT-d) over
    /// `[start, end)` and makes the host space equal to it there (one guest
    /// invalidation).
    ///
    /// Leaves are coalesced with [`Coalescer`] (so runs never cross a RAM
    /// region boundary and non-RAM parts are dropped). If the walk runs out
    /// of budget, the part of the range it did not reach is emptied: its
    /// contents are unknown, and a stale mapping would let the device reach
    /// memory the guest may have unmapped (VT-d spec §6.5: after an
    /// invalidation the hardware must not use what the guest removed).
    ///
    /// The range is synced window by window, each window what a walk of at
    /// most [`WALK_WINDOW`] entries reached, so the leaves held at once are
    /// bounded whatever the range and the tables (which may alias one
    /// small table everywhere). A run continuing across a window edge
    /// becomes two host mappings; the result is otherwise the same.
    pub fn sync_from_tables(
        &mut self,
        host: &dyn HostIommu,
        mem: &GuestMemoryMmap,
        t: &dyn ShadowTable,
        start: u64,
        end: u64,
    ) -> Result<SyncStats, HostIommuError> {
        let mut pre = SyncStats::default();
        let mut st = SyncStats::default();
        let mut first_err = None;
        let mut budget = self.walk_budget;
        let mut cursor = start;
        while cursor < end {
            let mut co = Coalescer::new(mem);
            let chunk = budget.min(self.window);
            let scan = t.for_each_leaf(mem, cursor, end, chunk, &mut |l| co.push(&l));
            let (desired, cstats) = co.finish();
            pre.not_ram_runs += cstats.not_ram_runs;
            pre.not_ram_bytes = pre.not_ram_bytes.saturating_add(cstats.not_ram_bytes);
            pre.windows += 1;
            pre.largest_window = pre.largest_window.max(desired.len() as u64);
            let (read, reached) = match scan {
                Ok(s) => (s.entries_read, end),
                Err(LeafScanError::BudgetExhausted { resume_at, scan }) => {
                    (scan.entries_read, resume_at)
                }
            };
            pre.entries_read += read;
            budget -= read;
            // Out of budget (or too little left to reach a leaf): the rest
            // of the range goes with this window, unread, so it is emptied.
            let stop = if reached < end && (budget == 0 || reached <= cursor) {
                log::warn!(
                    "shadow: second-stage walk of {start:#x}..{end:#x} stopped at {reached:#x} \
                     after {} entries; unmapping the rest",
                    pre.entries_read
                );
                pre.truncated_walks = 1;
                end
            } else {
                reached
            };
            self.sync_inner(
                host,
                Some(mem),
                cursor,
                stop,
                &desired,
                &mut st,
                &mut first_err,
            );
            cursor = stop;
        }
        if pre.not_ram_runs != 0 && !self.not_ram_warned {
            self.not_ram_warned = true;
            log::warn!(
                "shadow: the guest maps IOVAs to non-RAM ({} bytes in {start:#x}..{end:#x}); \
                 those stay unmapped",
                pre.not_ram_bytes
            );
        }
        self.totals.add(&pre);
        self.totals.add(&st);
        if let Some(e) = first_err {
            return Err(e);
        }
        st.add(&pre);
        Ok(st)
    }

    /// Makes `[start, end)` of the host space equal to `desired`, the
    /// guest's mappings in that range: sorted by IOVA, non-overlapping,
    /// ideally coalesced ([`Coalescer`]). Parts of `desired` outside the
    /// range are ignored; entries that grant nothing or have no length map
    /// nothing; an entry out of order or overlapping an earlier one is
    /// dropped and counted in `rejected` (the caller's bug; dropping fails
    /// closed).
    ///
    /// Areas outside the range are kept. An area straddling an edge is
    /// kept whole when its part inside the range is still wanted unchanged;
    /// otherwise it is unmapped and its outside part mapped again. Pieces to
    /// map that continue each other (a kept outside part and a new mapping
    /// included) become one mapping; if the backend refuses such a run as
    /// not RAM (it crosses a RAM region boundary), its pieces are mapped
    /// one by one.
    ///
    /// `end` is exclusive, so `u64::MAX` itself cannot be named; VT-d input
    /// addresses are at most 57 bits wide (§3.7), so that never matters.
    /// The space works in bytes: callers pass page-aligned ranges and
    /// mappings (the host rejects anything else).
    pub fn sync_range(
        &mut self,
        host: &dyn HostIommu,
        start: u64,
        end: u64,
        desired: &[HostMapping],
    ) -> Result<SyncStats, HostIommuError> {
        let mut st = SyncStats::default();
        let mut first_err = None;
        if start < end {
            self.sync_inner(host, None, start, end, desired, &mut st, &mut first_err);
        }
        self.totals.add(&st);
        match first_err {
            Some(e) => Err(e),
            None => Ok(st),
        }
    }

    /// Removes every mapping (the device is blocked, detached, or the guest
    /// switched it to pass-through). Areas whose unmap fails stay tracked.
    pub fn clear(&mut self, host: &dyn HostIommu) -> Result<SyncStats, HostIommuError> {
        let mut st = SyncStats::default();
        let mut first_err = None;
        let all: Vec<HostMapping> = self.areas.values().copied().collect();
        self.unmap_areas(host, &all, &mut st, &mut first_err);
        self.totals.add(&st);
        match first_err {
            Some(e) => Err(e),
            None => Ok(st),
        }
    }

    /// With `ram`, pieces are merged only within one RAM region (no host
    /// call is wasted on a run the backend must refuse); without, they are
    /// merged whenever they continue each other, and a refused run is
    /// mapped again piece by piece.
    #[allow(clippy::too_many_arguments)]
    fn sync_inner(
        &mut self,
        host: &dyn HostIommu,
        ram: Option<&GuestMemoryMmap>,
        start: u64,
        end: u64,
        desired: &[HostMapping],
        st: &mut SyncStats,
        first_err: &mut Option<HostIommuError>,
    ) {
        let want = normalize(start, end, desired, st);

        // The areas the range touches, by IOVA: at most one straddling
        // `start`, then those beginning inside.
        let mut affected: Vec<HostMapping> = Vec::new();
        if let Some((_, a)) = self.areas.range(..start).next_back() {
            if end_of(a) > start {
                affected.push(*a);
            }
        }
        affected.extend(self.areas.range(start..end).map(|(_, a)| *a));

        // An area stays iff its part inside the range is still wanted,
        // unchanged: tiled by wanted mappings at the same IOVA-to-GPA offset
        // with the same rights. (Its part outside the range is wanted by
        // definition.)
        let mut stays = vec![false; affected.len()];
        let mut j = 0;
        for (k, a) in affected.iter().enumerate() {
            let (s, e) = (a.iova.max(start), end_of(a).min(end));
            while j < want.len() && end_of(&want[j]) <= s {
                j += 1;
            }
            let offset = a.gpa.wrapping_sub(a.iova);
            let (mut cursor, mut jj) = (s, j);
            stays[k] = loop {
                if cursor >= e {
                    break true;
                }
                match want.get(jj) {
                    Some(d)
                        if d.iova <= cursor
                            && d.perm == a.perm
                            && d.gpa.wrapping_sub(d.iova) == offset =>
                    {
                        cursor = end_of(d).min(e);
                        jj += 1;
                    }
                    _ => break false,
                }
            };
        }

        // What to map: the outside parts of straddling areas that go, and
        // the wanted mappings minus what staying areas already cover.
        let mut pieces: Vec<HostMapping> = Vec::new();
        if let (Some(a), Some(false)) = (affected.first(), stays.first()) {
            if a.iova < start {
                pieces.push(HostMapping {
                    len: start - a.iova,
                    ..*a
                });
            }
        }
        let kept: Vec<(u64, u64)> = affected
            .iter()
            .zip(&stays)
            .filter(|(_, &s)| s)
            .map(|(a, _)| (a.iova.max(start), end_of(a).min(end)))
            .collect();
        subtract(&want, &kept, &mut pieces);
        if let (Some(a), Some(false)) = (affected.last(), stays.last()) {
            if end_of(a) > end {
                pieces.push(HostMapping {
                    iova: end,
                    gpa: a.gpa + (end - a.iova),
                    len: end_of(a) - end,
                    perm: a.perm,
                });
            }
        }

        // Unmap first: the new mappings overlap the old ones.
        let going: Vec<HostMapping> = affected
            .iter()
            .zip(&stays)
            .filter(|(_, &s)| !s)
            .map(|(a, _)| *a)
            .collect();
        self.unmap_areas(host, &going, st, first_err);

        let mut i = 0;
        while i < pieces.len() {
            let mut run = pieces[i];
            let mut n = i + 1;
            while n < pieces.len() && continues(&run, &pieces[n]) && same_ram(ram, &run, &pieces[n])
            {
                run.len += pieces[n].len;
                n += 1;
            }
            self.install(host, run, &pieces[i..n], st, first_err);
            i = n;
        }
    }

    /// Maps `run`, made of `parts` (pieces that continue each other).
    fn install(
        &mut self,
        host: &dyn HostIommu,
        run: HostMapping,
        parts: &[HostMapping],
        st: &mut SyncStats,
        first_err: &mut Option<HostIommuError>,
    ) {
        // Only after an unmap failed: the area that could not go is still
        // there, and the host refuses overlapping maps. That failure is
        // already reported; map what does not overlap it.
        if self.overlaps_area(&run) {
            if parts.len() > 1 {
                for p in parts {
                    self.install(host, *p, std::slice::from_ref(p), st, first_err);
                }
            }
            return;
        }
        if self.areas.len() >= self.max_areas {
            st.over_limit_runs += 1;
            if !self.limit_warned {
                self.limit_warned = true;
                log::warn!(
                    "shadow: {} areas mapped, the most allowed; {:#x}+{:#x} and further \
                     mappings stay unmapped",
                    self.areas.len(),
                    run.iova,
                    run.len
                );
            }
            return;
        }
        st.map_calls += 1;
        // One mapping per call: the trait does not say how much of a
        // failed batch took effect, and each mapping is one ioctl anyway.
        match host.shadow_map(std::slice::from_ref(&run)) {
            Ok(()) => {
                self.areas.insert(run.iova, run);
                self.live_bytes += run.len;
                st.mapped_bytes += run.len;
            }
            Err(HostIommuError::NotRam { .. }) if parts.len() > 1 => {
                for p in parts {
                    self.install(host, *p, std::slice::from_ref(p), st, first_err);
                }
            }
            Err(HostIommuError::NotRam { gpa, len }) => {
                st.not_ram_runs += 1;
                st.not_ram_bytes = st.not_ram_bytes.saturating_add(run.len);
                if !self.not_ram_warned {
                    self.not_ram_warned = true;
                    log::warn!(
                        "shadow: the guest maps IOVA {:#x} to {gpa:#x}+{len:#x}, not RAM; \
                         such mappings stay unmapped",
                        run.iova
                    );
                }
            }
            Err(e) => {
                // The first failure of a sync is enough to go on.
                if first_err.is_none() {
                    log::warn!("shadow: mapping {run:x?}: {e}");
                }
                first_err.get_or_insert(e);
            }
        }
    }

    fn overlaps_area(&self, m: &HostMapping) -> bool {
        self.areas
            .range(..end_of(m))
            .next_back()
            .is_some_and(|(_, a)| end_of(a) > m.iova)
    }

    /// Unmaps `going` (tracked areas, by IOVA): one call per run of areas
    /// adjacent in IOVA, so each call covers whole mappings and nothing
    /// else. If a call for several areas fails, they are retried one by
    /// one to learn which are really gone.
    fn unmap_areas(
        &mut self,
        host: &dyn HostIommu,
        going: &[HostMapping],
        st: &mut SyncStats,
        first_err: &mut Option<HostIommuError>,
    ) {
        let mut i = 0;
        while i < going.len() {
            let mut n = i + 1;
            while n < going.len() && end_of(&going[n - 1]) == going[n].iova {
                n += 1;
            }
            let group = &going[i..n];
            let (iova, len) = (group[0].iova, end_of(&going[n - 1]) - group[0].iova);
            st.unmap_calls += 1;
            match host.shadow_unmap(iova, len) {
                Ok(()) => group.iter().for_each(|a| self.forget(a, st)),
                Err(e) if group.len() > 1 => {
                    log::warn!("shadow: unmapping {iova:#x}+{len:#x}: {e}; retrying area by area");
                    for a in group {
                        st.unmap_calls += 1;
                        match host.shadow_unmap(a.iova, a.len) {
                            Ok(()) => self.forget(a, st),
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    if first_err.is_none() {
                        log::warn!("shadow: unmapping {iova:#x}+{len:#x}: {e}");
                    }
                    first_err.get_or_insert(e);
                }
            }
            i = n;
        }
    }

    fn forget(&mut self, a: &HostMapping, st: &mut SyncStats) {
        if self.areas.remove(&a.iova).is_some() {
            self.live_bytes -= a.len;
            st.unmapped_bytes += a.len;
        }
    }
}

/// Whether `b`, which continues `a`, lies in the RAM region `a` starts in
/// (true when the layout is not known).
fn same_ram(ram: Option<&GuestMemoryMmap>, a: &HostMapping, b: &HostMapping) -> bool {
    let Some(mem) = ram else {
        return true;
    };
    mem.find_region(GuestAddress(a.gpa))
        .is_some_and(|r| (b.gpa + (b.len - 1)) <= r.last_addr().raw_value())
}

/// `desired` clipped to `[start, end)`, without entries that map nothing,
/// and without entries out of order or overlapping (counted as rejected)
/// or whose guest-physical range wraps (not RAM by any measure).
fn normalize(
    start: u64,
    end: u64,
    desired: &[HostMapping],
    st: &mut SyncStats,
) -> Vec<HostMapping> {
    let mut out = Vec::with_capacity(desired.len());
    let mut done = start;
    for d in desired {
        if d.len == 0 || grants_nothing(d.perm) {
            continue;
        }
        let lo = d.iova.max(start);
        let hi = d.iova.saturating_add(d.len).min(end);
        if lo >= hi {
            continue;
        }
        if lo < done {
            if st.rejected == 0 {
                log::warn!("shadow: dropping {d:x?} (and any more): out of order or overlapping");
            }
            st.rejected += 1;
            continue;
        }
        let len = hi - lo;
        match d.gpa.checked_add(lo - d.iova) {
            Some(gpa) if gpa.checked_add(len).is_some() => {
                out.push(HostMapping {
                    iova: lo,
                    gpa,
                    len,
                    perm: d.perm,
                });
                done = hi;
            }
            _ => {
                st.not_ram_runs += 1;
                st.not_ram_bytes = st.not_ram_bytes.saturating_add(len);
            }
        }
    }
    out
}

/// Appends `want` minus the spans `kept` (sorted, non-overlapping, each
/// lying within the union of `want`) to `out`.
fn subtract(want: &[HostMapping], kept: &[(u64, u64)], out: &mut Vec<HostMapping>) {
    let mut k = 0;
    for d in want {
        let (mut lo, hi) = (d.iova, end_of(d));
        while k < kept.len() && kept[k].1 <= lo {
            k += 1;
        }
        let mut kk = k;
        while lo < hi {
            match kept.get(kk) {
                Some(&(ks, ke)) if ks < hi => {
                    if ks > lo {
                        out.push(HostMapping {
                            iova: lo,
                            gpa: d.gpa + (lo - d.iova),
                            len: ks - lo,
                            perm: d.perm,
                        });
                    }
                    lo = lo.max(ke);
                    kk += 1;
                }
                _ => {
                    out.push(HostMapping {
                        iova: lo,
                        gpa: d.gpa + (lo - d.iova),
                        len: hi - lo,
                        perm: d.perm,
                    });
                    break;
                }
            }
        }
    }
}

mod coalesce;
#[cfg(test)]
mod tests;

pub use coalesce::{coalesce, CoalesceStats, Coalescer};
