//! Second-stage translation (VT-d spec §3.7, §9.8): a 3-, 4- or 5-level
//! table of 8-byte entries with R/W bits, 2 MiB and 1 GiB leaves (PS).

use vm_memory::{Bytes, GuestAddress};

use super::root_table::haw_mask;
use crate::GuestMemoryMmap;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    pub(crate) fn put(m: &GuestMemoryMmap, addr: u64, v: u64) {
        m.write_obj(v, GuestAddress(addr)).unwrap();
    }

    fn table(levels: u8) -> SlTable {
        SlTable {
            root: 0x1000,
            levels,
            haw: 39,
            mgaw: 48,
            pages_2m: true,
            pages_1g: true,
        }
    }

    /// Builds a chain for `iova` with tables at 0x1000, 0x2000, ... and the
    /// given leaf entry at `leaf_level`.
    pub(crate) fn chain(m: &GuestMemoryMmap, levels: u8, iova: u64, leaf_level: u8, leaf: u64) {
        let mut t = 0x1000u64;
        for level in (leaf_level..=levels).rev() {
            let shift = 12 + 9 * (level as u64 - 1);
            let slot = t + ((iova >> shift) & 0x1ff) * 8;
            if level == leaf_level {
                put(m, slot, leaf);
            } else {
                let next = t + 0x1000;
                put(m, slot, next | R | W);
                t = next;
            }
        }
    }

    #[test]
    fn every_level_and_page_size() {
        for levels in [3u8, 4, 5] {
            let m = mem();
            let iova = 0x1234_5678 & !0xfff;
            chain(&m, levels, iova, 1, 0x0077_7000 | R | W);
            let leaf = walk(
                &m,
                &SlTable {
                    mgaw: 57,
                    ..table(levels)
                },
                iova,
            )
            .unwrap();
            assert_eq!(leaf.output, 0x77_7000);
            assert_eq!(leaf.size_shift, 12);
            assert_eq!(leaf.translate(iova | 0x123), 0x77_7123);
        }
        let m = mem();
        chain(&m, 4, 0x4020_0000, 2, 0x0060_0000 | R | PS);
        let leaf = walk(&m, &table(4), 0x4023_4567).unwrap();
        assert_eq!((leaf.size_shift, leaf.read, leaf.write), (21, true, false));
        assert_eq!(leaf.translate(0x4023_4567), 0x63_4567);
        let m = mem();
        chain(&m, 4, 0x8000_0000, 3, 0x4000_0000 | W | PS);
        let leaf = walk(&m, &table(4), 0x8123_4567).unwrap();
        assert_eq!((leaf.size_shift, leaf.read, leaf.write), (30, false, true));
        assert_eq!(leaf.translate(0x8123_4567), 0x4123_4567);
    }

    #[test]
    fn faults() {
        let m = mem();
        assert_eq!(walk(&m, &table(4), 0x1000), Err(SlError::NotPresent));
        assert_eq!(walk(&m, &table(3), 1 << 39), Err(SlError::BeyondWidth));
        assert_eq!(
            walk(
                &m,
                &SlTable {
                    root: 0xfff_0000_0000,
                    ..table(4)
                },
                0
            ),
            Err(SlError::Access)
        );
        // Misaligned 2 MiB page.
        chain(&m, 4, 0x20_0000, 2, 0x0060_1000 | R | PS);
        assert_eq!(walk(&m, &table(4), 0x20_0000), Err(SlError::Reserved));
        // 1 GiB page when unsupported.
        let m = mem();
        chain(&m, 4, 0x4000_0000, 3, 0x4000_0000 | R | PS);
        let t = SlTable {
            pages_1g: false,
            ..table(4)
        };
        assert_eq!(walk(&m, &t, 0x4000_0000), Err(SlError::Reserved));
        // Output beyond HAW.
        let m = mem();
        chain(&m, 4, 0x3000, 1, (1u64 << 40) | R);
        assert_eq!(walk(&m, &table(4), 0x3000), Err(SlError::Reserved));
        // Permissions are ANDed across levels.
        let m = mem();
        chain(&m, 4, 0x5000, 1, 0x9000 | R | W);
        put(&m, 0x1000, 0x2000 | R);
        let leaf = walk(&m, &table(4), 0x5000).unwrap();
        assert!(leaf.read && !leaf.write);
    }
}
