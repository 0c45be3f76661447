//! First-stage translation (VT-d spec §3.6, §9.7): IA-32e 4- or 5-level
//! paging with U/S, R/W and XD, 2 MiB and 1 GiB pages, and the accessed and
//! dirty flags the remapping hardware sets as it walks (§3.6.2).
//!
//! Under nested translation (PGTT = 011b) every table address and the
//! final output are intermediate addresses that the second stage maps to
//! guest physical; the caller supplies that mapping.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileMemory};

use super::root_table::haw_mask;
use super::second_stage::{Leaf, SlError};
use crate::GuestMemoryMmap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlError {
    NonCanonical,
    /// An entry outside guest memory; `top` when it is the first table.
    Access {
        top: bool,
    },
    NotPresent,
    Reserved,
    /// Nested: the second stage could not map a table or the output.
    Nested(SlError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlTable {
    pub root: u64,
    pub levels: u8,
    pub haw: u8,
    pub pages_1g: bool,
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;

/// Atomically ORs `bits` into the entry at `addr` (a locked update, as the
/// hardware does, so a concurrent CPU update is not lost).
fn set_bits(mem: &GuestMemoryMmap, addr: u64, bits: u64) -> Result<(), ()> {
    let slice = mem.get_slice(GuestAddress(addr), 8).map_err(|_| ())?;
    let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| ())?;
    atomic.fetch_or(bits, Ordering::SeqCst);
    Ok(())
}

fn read_entry(mem: &GuestMemoryMmap, addr: u64) -> Result<u64, ()> {
    let slice = mem.get_slice(GuestAddress(addr), 8).map_err(|_| ())?;
    let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| ())?;
    Ok(atomic.load(Ordering::SeqCst))
}

/// Walks for `iova`. `to_phys` maps a table address to guest physical
/// (identity outside nesting). On success the leaf's output is still an
/// intermediate address under nesting.
pub fn walk(
    mem: &GuestMemoryMmap,
    t: &FlTable,
    iova: u64,
    write: bool,
    to_phys: &mut dyn FnMut(u64) -> Result<u64, SlError>,
) -> Result<Leaf, FlError> {
    walk_with(mem, t, iova, write, false, to_phys)
}

/// Like [`walk`]; `ignore_rw` is a supervisor request without write
/// protection (WPE = 0), whose writes complete whatever R/W says and so
/// must set the Dirty flag (§3.6.2).
pub fn walk_with(
    mem: &GuestMemoryMmap,
    t: &FlTable,
    iova: u64,
    write: bool,
    ignore_rw: bool,
    to_phys: &mut dyn FnMut(u64) -> Result<u64, SlError>,
) -> Result<Leaf, FlError> {
    let width = 12 + 9 * t.levels as u32;
    // Canonical: bits 63:width-1 all equal.
    let top = (iova as i64) >> (width - 1);
    if top != 0 && top != -1 {
        return Err(FlError::NonCanonical);
    }
    let addr_mask = haw_mask(t.haw) & !0xfff;
    let mut table = t.root;
    let (mut write_ok, mut user_ok) = (true, true);
    for level in (1..=t.levels).rev() {
        let shift = 12 + 9 * (level as u32 - 1);
        let index = (iova >> shift) & 0x1ff;
        let table_phys = to_phys(table).map_err(FlError::Nested)?;
        let entry_addr = table_phys + index * 8;
        let entry = read_entry(mem, entry_addr).map_err(|_| FlError::Access {
            top: level == t.levels,
        })?;
        if entry & P == 0 {
            return Err(FlError::NotPresent);
        }
        if entry & 0x000f_ffff_ffff_f000 & !addr_mask != 0 {
            return Err(FlError::Reserved);
        }
        write_ok &= entry & RW != 0;
        user_ok &= entry & US != 0;
        let is_large = level > 1 && entry & PS != 0;
        if is_large {
            let allowed = level == 2 || (level == 3 && t.pages_1g);
            // Bits 20:13 (2 MiB) or 29:13 (1 GiB) are reserved; bit 12 is PAT.
            let low = ((1u64 << shift) - 1) & !0x1fff;
            if !allowed || entry & low != 0 {
                return Err(FlError::Reserved);
            }
        }
        let leaf = level == 1 || is_large;
        // Accessed on every entry used; Dirty on the leaf of a write that
        // is allowed to complete.
        let mut bits = A;
        if leaf && write && (write_ok || ignore_rw) {
            bits |= D;
        }
        if entry & bits != bits {
            let _ = set_bits(mem, entry_addr, bits);
        }
        if leaf {
            let output = entry & addr_mask & !((1u64 << shift) - 1);
            return Ok(Leaf {
                output,
                size_shift: shift as u8,
                read: true,
                write: write_ok,
                user: user_ok,
                dirty: write && (write_ok || ignore_rw),
            });
        }
        table = entry & addr_mask;
    }
    Err(FlError::Reserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intel::second_stage::tests::{mem, put};
    use vm_memory::Bytes;

    fn fl(levels: u8) -> FlTable {
        FlTable {
            root: 0x1000,
            levels,
            haw: 39,
            pages_1g: true,
        }
    }

    fn ident(a: u64) -> Result<u64, SlError> {
        Ok(a)
    }

    fn build(m: &GuestMemoryMmap, levels: u8, iova: u64, leaf_level: u8, leaf: u64) {
        let mut t = 0x1000u64;
        for level in (leaf_level..=levels).rev() {
            let shift = 12 + 9 * (level as u64 - 1);
            let slot = t + ((iova >> shift) & 0x1ff) * 8;
            if level == leaf_level {
                put(m, slot, leaf);
            } else {
                put(m, slot, (t + 0x1000) | P | RW | US);
                t += 0x1000;
            }
        }
    }

    #[test]
    fn walks_sets_accessed_and_dirty() {
        let m = mem();
        build(&m, 4, 0x7000, 1, 0x9000 | P | RW | US);
        let leaf = walk(&m, &fl(4), 0x7abc, true, &mut ident).unwrap();
        assert_eq!(leaf.translate(0x7abc), 0x9abc);
        assert!(leaf.write && leaf.user);
        let pte: u64 = m.read_obj(GuestAddress(0x4000 + 7 * 8)).unwrap();
        assert_eq!(pte & (A | D), A | D);
        let pml4: u64 = m.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(pml4 & (A | D), A);
    }

    #[test]
    fn five_level_and_large_pages() {
        let m = mem();
        build(&m, 5, 0x40_0000, 2, 0x20_0000 | P | PS);
        let leaf = walk(&m, &fl(5), 0x41_2345, false, &mut ident).unwrap();
        assert_eq!((leaf.size_shift, leaf.write, leaf.user), (21, false, false));
        assert_eq!(leaf.translate(0x41_2345), 0x21_2345);
        let m = mem();
        build(&m, 4, 0x4000_0000, 3, 0x4000_0000 | P | PS | RW);
        assert_eq!(
            walk(&m, &fl(4), 0x4000_0010, false, &mut ident)
                .unwrap()
                .size_shift,
            30
        );
        let t = FlTable {
            pages_1g: false,
            ..fl(4)
        };
        assert_eq!(
            walk(&m, &t, 0x4000_0010, false, &mut ident),
            Err(FlError::Reserved)
        );
    }

    #[test]
    fn faults() {
        let m = mem();
        assert_eq!(
            walk(&m, &fl(4), 0x0000_8000_0000_0000, false, &mut ident),
            Err(FlError::NonCanonical)
        );
        assert!(walk(&m, &fl(4), 0xffff_8000_0000_0000, false, &mut ident).is_err());
        assert_eq!(
            walk(&m, &fl(4), 0x1000, false, &mut ident),
            Err(FlError::NotPresent)
        );
        let t = FlTable {
            root: 0xff_f000_0000,
            ..fl(4)
        };
        assert_eq!(
            walk(&m, &t, 0, false, &mut ident),
            Err(FlError::Access { top: true })
        );
        build(&m, 4, 0x20_0000, 2, 0x20_2000 | P | PS);
        assert_eq!(
            walk(&m, &fl(4), 0x20_0000, false, &mut ident),
            Err(FlError::Reserved)
        );
        let mut bad = |_a: u64| Err(SlError::NotPresent);
        assert_eq!(
            walk(&m, &fl(4), 0, false, &mut bad),
            Err(FlError::Nested(SlError::NotPresent))
        );
    }

    #[test]
    fn nested_tables_go_through_the_second_stage() {
        let m = mem();
        // First-stage tables live at intermediate address X, real at X + 0x10_0000.
        build(&m, 4, 0x3000, 1, 0x5000 | P | RW | US);
        for a in [0x1000u64, 0x2000, 0x3000, 0x4000] {
            let v: u64 = m.read_obj(GuestAddress(a)).unwrap_or(0);
            let _ = v;
        }
        // Move the tables: copy 0x1000..0x5000 to 0x101000.. and point through +0x10_0000.
        let mut buf = vec![0u8; 0x4000];
        m.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        m.write_slice(&buf, GuestAddress(0x10_1000)).unwrap();
        m.write_slice(&vec![0u8; 0x4000], GuestAddress(0x1000))
            .unwrap();
        let mut shift = |a: u64| Ok(a + 0x10_0000);
        let leaf = walk(&m, &fl(4), 0x3000, false, &mut shift).unwrap();
        assert_eq!(leaf.output, 0x5000, "output stays intermediate");
    }
}
