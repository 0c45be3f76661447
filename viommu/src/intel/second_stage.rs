//! Second-stage translation (VT-d spec §3.7, §9.8): a 3-, 4- or 5-level
//! table of 8-byte entries with R/W bits, 2 MiB and 1 GiB leaves (PS).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};

use super::root_table::haw_mask;
use crate::guest_table::ShadowTable;
use crate::GuestMemoryMmap;

// The leaves and scan results are the shadow engine's, shared by every
// architecture; re-exported so VT-d code names them where it always has.
pub use crate::guest_table::{LeafRange, LeafScan, LeafScanError};

/// A resolved translation of one page (or large page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Base of the output page.
    pub output: u64,
    /// log2 of the page size: 12, 21 or 30.
    pub size_shift: u8,
    pub read: bool,
    pub write: bool,
    /// First stage only: every level had U/S set.
    pub user: bool,
    /// First stage only: the walk that produced this leaf set its Dirty
    /// flag. A write must not be served from an entry without it (§6.2.4),
    /// or the flag would never be set.
    pub dirty: bool,
}

impl Leaf {
    /// The output address for `input` within this page.
    pub fn translate(&self, input: u64) -> u64 {
        self.output | (input & ((1u64 << self.size_shift) - 1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlError {
    /// An entry could not be read (outside guest memory).
    Access,
    /// An entry with R = W = 0.
    NotPresent,
    /// Reserved bits, a misaligned large page, or PS where not allowed.
    Reserved,
    /// The input address is wider than the table covers.
    BeyondWidth,
}

/// Where the table is and what it may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlTable {
    pub root: u64,
    pub levels: u8,
    /// Host address width: output bits above it are reserved.
    pub haw: u8,
    /// Maximum guest address width (CAP.MGAW + 1).
    pub mgaw: u8,
    pub pages_2m: bool,
    pub pages_1g: bool,
}

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;

/// Walks the table for `iova`. Access rights are the AND over all levels.
pub fn walk(mem: &GuestMemoryMmap, t: &SlTable, iova: u64) -> Result<Leaf, SlError> {
    // As in `for_each_leaf`: SAGAW offers at most 5 levels (the context
    // and PASID entries decode no more); more would shift input addresses
    // out of 64 bits.
    if !(1..=5).contains(&t.levels) {
        return Err(SlError::Reserved);
    }
    let width = (12 + 9 * t.levels as u32).min(t.mgaw as u32);
    if width < 64 && iova >> width != 0 {
        return Err(SlError::BeyondWidth);
    }
    let addr_mask = haw_mask(t.haw) & !0xfff;
    let mut table = t.root;
    let (mut read, mut write) = (true, true);
    for level in (1..=t.levels).rev() {
        let shift = 12 + 9 * (level as u32 - 1);
        let index = (iova >> shift) & 0x1ff;
        let entry: u64 = mem
            .read_obj(GuestAddress(table + index * 8))
            .map_err(|_| SlError::Access)?;
        if entry & (R | W) == 0 {
            return Err(SlError::NotPresent);
        }
        // Output address bits 51:HAW are reserved.
        if entry & 0x000f_ffff_ffff_f000 & !addr_mask != 0 {
            return Err(SlError::Reserved);
        }
        read &= entry & R != 0;
        write &= entry & W != 0;
        let is_large = level > 1 && entry & PS != 0;
        if is_large {
            let allowed = (level == 2 && t.pages_2m) || (level == 3 && t.pages_1g);
            let page_mask = (1u64 << shift) - 1;
            if !allowed || entry & addr_mask & page_mask != 0 {
                return Err(SlError::Reserved);
            }
        }
        if level == 1 || is_large {
            return Ok(Leaf {
                output: entry & addr_mask & !((1u64 << shift) - 1),
                size_shift: shift as u8,
                read,
                write,
                user: true,
                dirty: true,
            });
        }
        table = entry & addr_mask;
    }
    Err(SlError::Reserved)
}

/// Collects the present leaves of `t` that intersect `[start, end)`, clipped
/// to it, in ascending input-address order. See [`for_each_leaf`].
pub fn leaves(
    mem: &GuestMemoryMmap,
    t: &SlTable,
    start: u64,
    end: u64,
    budget: u64,
    out: &mut Vec<LeafRange>,
) -> Result<LeafScan, LeafScanError> {
    for_each_leaf(mem, t, start, end, budget, &mut |l| out.push(l))
}

/// Reports the present leaves of `t` that intersect `[start, end)`, clipped
/// to it, in ascending input-address order, reading at most `budget`
/// entries.
///
/// Every address in the range gets exactly what [`walk`] would give it: a
/// leaf here with its rights, or nothing where the walk faults (not
/// present, reserved bits, an unreadable table, beyond the table's width)
/// or where the rights ANDed over the levels grant no access. Those faults
/// are the guest's own doing, so they are counted, not returned: a device
/// reaching such an address faults in the host IOMMU just as it would on
/// hardware.
///
/// Only entries whose span intersects the range are read, and a subtree
/// under a non-present entry is never entered, so a wide range over a sparse
/// table costs a few hundred reads per table on the way to each mapping.
/// The tables are guest-written and may share subtables (a guest can make
/// a small table look like a huge one); `budget` bounds the work whatever
/// they contain. Recursion depth is the number of levels (at most 5).
pub fn for_each_leaf(
    mem: &GuestMemoryMmap,
    t: &SlTable,
    start: u64,
    end: u64,
    budget: u64,
    f: &mut dyn FnMut(LeafRange),
) -> Result<LeafScan, LeafScanError> {
    // SAGAW offers 3- to 5-level tables (2-level in early revisions of the
    // spec); more levels would not fit input addresses in 64 bits. Nothing
    // translates through such a table, so nothing is mapped.
    if !(1..=5).contains(&t.levels) {
        return Ok(LeafScan::default());
    }
    // As in `walk`: input bits above the narrower of the table's width and
    // MGAW fault (§3.7). At most 57 bits, so ends never overflow.
    let width = (12 + 9 * t.levels as u32).min(t.mgaw as u32);
    let end = end.min(1u64 << width);
    if start >= end {
        return Ok(LeafScan::default());
    }
    let mut scan = Scanner {
        mem,
        t,
        start,
        end,
        addr_mask: haw_mask(t.haw) & !0xfff,
        budget,
        stats: LeafScan::default(),
        emit: f,
    };
    match scan.table(t.root, t.levels, 0, true, true) {
        Ok(()) => Ok(scan.stats),
        Err(resume_at) => Err(LeafScanError::BudgetExhausted {
            resume_at,
            scan: scan.stats,
        }),
    }
}

/// What the shadow engine walks for a passthrough endpoint on the shadow
/// path (VT-d spec §6.1: with Caching Mode, the guest's invalidations of
/// its second-stage tables are a complete change log of them).
impl ShadowTable for SlTable {
    fn for_each_leaf(
        &self,
        mem: &GuestMemoryMmap,
        start: u64,
        end: u64,
        budget: u64,
        f: &mut dyn FnMut(LeafRange),
    ) -> Result<LeafScan, LeafScanError> {
        for_each_leaf(mem, self, start, end, budget, f)
    }

    fn input_end(&self) -> u64 {
        let bits = (12 + 9 * self.levels as u32).min(self.mgaw as u32).min(64);
        if bits >= 64 {
            u64::MAX
        } else {
            1u64 << bits
        }
    }
}

struct Scanner<'a> {
    mem: &'a GuestMemoryMmap,
    t: &'a SlTable,
    start: u64,
    /// Exclusive, clipped to the table's width.
    end: u64,
    addr_mask: u64,
    budget: u64,
    stats: LeafScan,
    emit: &'a mut dyn FnMut(LeafRange),
}

impl Scanner<'_> {
    /// Scans the table at `table`, whose first entry maps input address
    /// `base` at `level`, with the rights granted by the levels above.
    /// The caller guarantees the table's span intersects the range. On
    /// running out of budget, returns the first address not scanned.
    fn table(
        &mut self,
        table: u64,
        level: u8,
        base: u64,
        read: bool,
        write: bool,
    ) -> Result<(), u64> {
        self.stats.tables_visited += 1;
        let shift = 12 + 9 * (level as u32 - 1);
        let span = 1u64 << shift;
        // Only the entries whose span intersects [start, end).
        let first = self.start.saturating_sub(base) >> shift;
        let last = ((self.end - 1 - base) >> shift).min(511);
        // The run of entries in one copy, each entry read with one 8-byte
        // volatile load (the guest may be rewriting it: we see the old or
        // the new value, never a mix). Entry by entry when the run is not
        // within one memory region.
        let mem = self.mem;
        let n = (last - first + 1) as usize;
        let mut buf = [0u64; 512];
        let copied = table
            .checked_add(first * 8)
            .and_then(|a| mem.get_slice(GuestAddress(a), n * 8).ok())
            .is_some_and(|s| {
                s.get_array_ref::<u64>(0, n)
                    .is_ok_and(|a| a.copy_to(&mut buf[..n]) == n)
            });
        let read_entry = |i: u64| -> Option<u64> {
            if copied {
                return Some(buf[(i - first) as usize]);
            }
            mem.read_obj(GuestAddress(table.checked_add(i * 8)?)).ok()
        };
        for i in first..=last {
            let iova = base + (i << shift);
            if self.stats.entries_read >= self.budget {
                return Err(iova.max(self.start));
            }
            self.stats.entries_read += 1;
            let Some(entry) = read_entry(i) else {
                self.stats.unreadable += 1;
                continue;
            };
            // The same checks, in the same order, as `walk`.
            if entry & (R | W) == 0 {
                continue;
            }
            if entry & 0x000f_ffff_ffff_f000 & !self.addr_mask != 0 {
                self.stats.reserved += 1;
                continue;
            }
            let (r, w) = (read && entry & R != 0, write && entry & W != 0);
            let is_large = level > 1 && entry & PS != 0;
            if is_large {
                let allowed = (level == 2 && self.t.pages_2m) || (level == 3 && self.t.pages_1g);
                if !allowed || entry & self.addr_mask & (span - 1) != 0 {
                    self.stats.reserved += 1;
                    continue;
                }
            }
            // Rights only shrink on the way down: nothing below grants
            // any access.
            if !r && !w {
                continue;
            }
            if level == 1 || is_large {
                let lo = iova.max(self.start);
                let hi = (iova + span).min(self.end);
                (self.emit)(LeafRange {
                    iova: lo,
                    len: hi - lo,
                    gpa: (entry & self.addr_mask & !(span - 1)) + (lo - iova),
                    size_shift: shift as u8,
                    read: r,
                    write: w,
                });
            } else {
                self.table(entry & self.addr_mask, level - 1, iova, r, w)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
