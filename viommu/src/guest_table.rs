//! Guest page tables as the shadow engine sees them, whatever the IOMMU
//! architecture: something that reports its present leaves over an input
//! range, within a budget of entries read.
//!
//! The shadow address space ([`crate::shadow::ShadowSpace`]) only needs
//! this much of a table, so one engine serves every model: VT-d
//! second-stage tables ([`crate::intel::second_stage::SlTable`]) implement
//! [`ShadowTable`] today, and another architecture's tables can do the same
//! without the engine learning their format.

use crate::GuestMemoryMmap;

/// One present leaf found by [`ShadowTable::for_each_leaf`], clipped to
/// the range scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafRange {
    /// First input address covered (the leaf's page base, or the start of
    /// the scanned range when that falls inside the page).
    pub iova: u64,
    /// Bytes covered: at most the page size.
    pub len: u64,
    /// Output (guest-physical) address of `iova`.
    pub gpa: u64,
    /// log2 of the size of the page this came from (12, 21 or 30 for VT-d
    /// second-stage tables).
    pub size_shift: u8,
    /// Access rights, the AND over all levels as a translation of an
    /// address gets them. At least one is set: a leaf that grants nothing
    /// is not reported.
    pub read: bool,
    pub write: bool,
}

/// What a scan by [`ShadowTable::for_each_leaf`] read and skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeafScan {
    /// Entries examined: the cost of the scan, which the budget bounds.
    pub entries_read: u64,
    /// Tables entered (the root included).
    pub tables_visited: u64,
    /// Entries that could not be read (a table outside guest memory).
    pub unreadable: u64,
    /// Present entries a translation would fault on as reserved (for VT-d:
    /// output bits above HAW, a misaligned large page, or PS where it is
    /// not allowed).
    pub reserved: u64,
}

#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeafScanError {
    /// The scan read `budget` entries without finishing. The leaves already
    /// reported cover `[start, resume_at)` completely; nothing at or above
    /// `resume_at` was looked at.
    #[error("second-stage scan stopped at {resume_at:#x} after {} entries", scan.entries_read)]
    BudgetExhausted { resume_at: u64, scan: LeafScan },
}

/// A guest page table the host can only follow by shadowing it: the
/// shadow engine re-reads it over each range the guest invalidates.
///
/// The table is guest-written and untrusted: implementations read only
/// entries whose span intersects the range, bound their work by `budget`
/// whatever the table contains (guests can alias subtables to make a small
/// table look huge), and report the guest's own faults (not present,
/// reserved bits, unreadable tables) as the absence of a leaf, not as an
/// error: a device reaching such an address faults in the host IOMMU just
/// as it would on hardware.
pub trait ShadowTable {
    /// Reports the present leaves that intersect `[start, end)`, clipped to
    /// it, in ascending input-address order, reading at most `budget`
    /// entries. Every address in the range gets exactly what a translation
    /// of it would give: a leaf with its rights, or nothing.
    fn for_each_leaf(
        &self,
        mem: &GuestMemoryMmap,
        start: u64,
        end: u64,
        budget: u64,
        f: &mut dyn FnMut(LeafRange),
    ) -> Result<LeafScan, LeafScanError>;

    /// One past the highest input address the table can translate (a full
    /// re-walk covers `[0, input_end())`).
    fn input_end(&self) -> u64;
}
