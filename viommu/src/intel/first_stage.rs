//! First-stage translation (VT-d spec §3.6, §9.7): IA-32e 4- or 5-level
//! paging with U/S, R/W and XD, 2 MiB and 1 GiB pages, and the accessed and
//! dirty flags the remapping hardware sets as it walks (§3.6.2).
//!
//! Under nested translation (PGTT = 011b) every table address and the
//! final output are intermediate addresses that the second stage maps to
//! guest physical; the caller supplies that mapping.
//!
//! # Accessed and dirty flags on a live table
//!
//! The tables may change while they are walked: under SVA they are a
//! process's page tables, which CPUs and the guest kernel edit all the
//! time (making entries not present, turning them into swap entries,
//! clearing A for page aging). The hardware sets A and D with a locked
//! compare-and-update against the value the walk used, and only in a
//! present entry: if the entry changed in between, the walk is redone
//! (§3.6.2, §9.7). So does [`walk_with`], a bounded number of times.

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
    /// An entry the walk used changed before its accessed or dirty flag
    /// could be set, on every one of [`WALK_ATTEMPTS`] walks. Reported as
    /// a not-present entry: the walk saw it in transition, and a
    /// translation whose entries did not get their flags would let the
    /// guest reclaim or clean a page the device uses. A translation
    /// request gets the failure back and may ask for the page (PRI), as
    /// for any page the guest is changing.
    Unstable,
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

/// Walks of one request before it fails as [`FlError::Unstable`]. A walk
/// takes well under a microsecond, so only software rewriting the entries
/// of this very translation without pause uses them all.
pub const WALK_ATTEMPTS: usize = 8;

/// Compare-and-update attempts on one entry whose A or D flag other agents
/// keep changing (which does not change the translation).
const FLAG_UPDATE_ATTEMPTS: usize = 8;

/// The entry at `addr` no longer holds the value the walk used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryChanged;

/// Sets `bits` (A, D) in the entry at `addr`, which the walk read as
/// `seen`, with a locked compare-and-update as the hardware does it
/// (§3.6.2), never with a blind OR: the entry may have changed since it
/// was read, and OR-ing flags into an entry that became not present (a
/// swap entry, say) would corrupt the guest's table.
///
/// A change of A or D alone (a CPU sharing the table set them, software
/// cleared them) leaves the translation as it was, so the update is
/// retried on the new value. Any other change means the walk used a stale
/// entry: nothing is written and the caller walks again.
pub(crate) fn update_flags(
    mem: &GuestMemoryMmap,
    addr: u64,
    seen: u64,
    bits: u64,
) -> Result<(), EntryChanged> {
    let slice = mem
        .get_slice(GuestAddress(addr), 8)
        .map_err(|_| EntryChanged)?;
    let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| EntryChanged)?;
    let mut expected = seen;
    for _ in 0..FLAG_UPDATE_ATTEMPTS {
        if expected & bits == bits {
            return Ok(());
        }
        match atomic.compare_exchange(
            expected,
            expected | bits,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => return Ok(()),
            Err(now) if now & !(A | D) == seen & !(A | D) => expected = now,
            Err(_) => return Err(EntryChanged),
        }
    }
    Err(EntryChanged)
}

fn read_entry(mem: &GuestMemoryMmap, addr: u64) -> Result<u64, ()> {
    let slice = mem.get_slice(GuestAddress(addr), 8).map_err(|_| ())?;
    let atomic: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| ())?;
    Ok(atomic.load(Ordering::SeqCst))
}

/// Test-only: a hook run between reading an entry and updating its flags,
/// the moment where a CPU or the guest may change the entry.
#[cfg(test)]
pub(crate) mod interleave {
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(u64)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs `f(entry address)` before every flag update on this thread.
    pub(crate) fn set(f: impl FnMut(u64) + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    pub(crate) fn clear() {
        HOOK.with(|h| *h.borrow_mut() = None);
    }

    pub(super) fn run(addr: u64) {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(addr)
            }
        });
    }
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

/// Why one walk did not produce a leaf.
enum Stop {
    Fault(FlError),
    /// An entry changed before its flags were set: walk again.
    Changed,
}

impl From<FlError> for Stop {
    fn from(e: FlError) -> Self {
        Stop::Fault(e)
    }
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
    // 4- and 5-level paging only (§3.6); more levels would not fit input
    // addresses in 64 bits. The PASID entry decodes no other value.
    if !(4..=5).contains(&t.levels) {
        return Err(FlError::Reserved);
    }
    let width = 12 + 9 * t.levels as u32;
    // Canonical: bits 63:width-1 all equal.
    let top = (iova as i64) >> (width - 1);
    if top != 0 && top != -1 {
        return Err(FlError::NonCanonical);
    }
    for _ in 0..WALK_ATTEMPTS {
        match walk_once(mem, t, iova, write, ignore_rw, to_phys) {
            Ok(leaf) => return Ok(leaf),
            Err(Stop::Fault(e)) => return Err(e),
            Err(Stop::Changed) => {}
        }
    }
    Err(FlError::Unstable)
}

fn walk_once(
    mem: &GuestMemoryMmap,
    t: &FlTable,
    iova: u64,
    write: bool,
    ignore_rw: bool,
    to_phys: &mut dyn FnMut(u64) -> Result<u64, SlError>,
) -> Result<Leaf, Stop> {
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
            return Err(FlError::NotPresent.into());
        }
        if entry & 0x000f_ffff_ffff_f000 & !addr_mask != 0 {
            return Err(FlError::Reserved.into());
        }
        write_ok &= entry & RW != 0;
        user_ok &= entry & US != 0;
        let is_large = level > 1 && entry & PS != 0;
        if is_large {
            let allowed = level == 2 || (level == 3 && t.pages_1g);
            // Bits 20:13 (2 MiB) or 29:13 (1 GiB) are reserved; bit 12 is PAT.
            let low = ((1u64 << shift) - 1) & !0x1fff;
            if !allowed || entry & low != 0 {
                return Err(FlError::Reserved.into());
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
            #[cfg(test)]
            interleave::run(entry_addr);
            update_flags(mem, entry_addr, entry, bits).map_err(|_| Stop::Changed)?;
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
    Err(FlError::Reserved.into())
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

    /// Leaf slot of `build(m, 4, 0x7000, 1, ..)`.
    const LEAF_SLOT: u64 = 0x4000 + 7 * 8;
    const PRESENT: u64 = 0x9000 | P | RW | US;
    /// What an OS leaves in a page-table entry when it swaps the page out:
    /// P clear, everything else its own business (here R/W and U/S set, so
    /// that only P tells it apart).
    const SWAP: u64 = (0x3_1415 << 12) | RW | US;

    fn get(m: &GuestMemoryMmap, addr: u64) -> u64 {
        m.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Runs `f(mem, n)` between the walk's read of the leaf at
    /// [`LEAF_SLOT`] and its `n`th flag update (from 0), on this thread.
    fn hook_leaf(m: &GuestMemoryMmap, mut f: impl FnMut(&GuestMemoryMmap, u32) + 'static) {
        let m = m.clone();
        let mut n = 0;
        interleave::set(move |addr| {
            if addr == LEAF_SLOT {
                f(&m, n);
                n += 1;
            }
        });
    }

    /// The entry became a swap entry between the walk's read and its
    /// flag update: the flags must not land in it, and the request sees
    /// the entry not present.
    #[test]
    fn flags_are_not_set_in_an_entry_that_changed_under_the_walk() {
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        hook_leaf(&m, |m, n| {
            if n == 0 {
                put(m, LEAF_SLOT, SWAP);
            }
        });
        let r = walk(&m, &fl(4), 0x7000, true, &mut ident);
        interleave::clear();
        assert_eq!(get(&m, LEAF_SLOT), SWAP, "flags set in a not-present entry");
        assert_eq!(r, Err(FlError::NotPresent));

        // Remapped to another page meanwhile: the walk is redone and the
        // new entry, the one the translation uses, gets the flags.
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        hook_leaf(&m, |m, n| {
            if n == 0 {
                put(m, LEAF_SLOT, 0xa000 | P | RW | US);
            }
        });
        let r = walk(&m, &fl(4), 0x7000, true, &mut ident);
        interleave::clear();
        assert_eq!(r.map(|l| l.output), Ok(0xa000));
        assert_eq!(get(&m, LEAF_SLOT), 0xa000 | P | RW | US | A | D);

        // Made read-only meanwhile: no Dirty flag in a read-only entry,
        // and the write is refused by the new rights.
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        hook_leaf(&m, |m, n| {
            if n == 0 {
                put(m, LEAF_SLOT, PRESENT & !RW);
            }
        });
        let r = walk(&m, &fl(4), 0x7000, true, &mut ident);
        interleave::clear();
        assert_eq!(r.map(|l| (l.write, l.dirty)), Ok((false, false)));
        assert_eq!(get(&m, LEAF_SLOT), (PRESENT & !RW) | A);
    }

    /// A CPU sharing the table sets the Dirty flag (or software clears
    /// Accessed) meanwhile: the translation is the same, so the update
    /// goes on without a second walk and loses nobody's flags.
    #[test]
    fn a_concurrent_flag_change_is_not_a_change_of_the_entry() {
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let c = calls.clone();
        hook_leaf(&m, move |m, _| {
            c.set(c.get() + 1);
            put(m, LEAF_SLOT, PRESENT | D);
        });
        let r = walk(&m, &fl(4), 0x7000, true, &mut ident);
        interleave::clear();
        assert_eq!(r.map(|l| l.output), Ok(0x9000));
        assert_eq!(get(&m, LEAF_SLOT), PRESENT | A | D);
        assert_eq!(calls.get(), 1, "walked again");
    }

    /// The compare-and-update itself, with the value a walk read before
    /// the entry changed.
    #[test]
    fn flag_updates_compare_against_the_value_the_walk_read() {
        let m = mem();
        let at = 0x5000;
        for (now, seen, bits, result, after) in [
            // Became a swap entry, or not present with nothing else set.
            (SWAP, PRESENT, A | D, Err(EntryChanged), SWAP),
            (0, PRESENT, A, Err(EntryChanged), 0),
            // Another page, other rights.
            (
                0xa000 | P | RW | US,
                PRESENT,
                A,
                Err(EntryChanged),
                0xa000 | P | RW | US,
            ),
            (
                PRESENT & !RW,
                PRESENT,
                A | D,
                Err(EntryChanged),
                PRESENT & !RW,
            ),
            // Only A or D changed: the update lands on the new value.
            (PRESENT | D, PRESENT, A | D, Ok(()), PRESENT | A | D),
            (PRESENT, PRESENT | A, A | D, Ok(()), PRESENT | A | D),
            (PRESENT | A, PRESENT, A, Ok(()), PRESENT | A),
            // Unchanged.
            (PRESENT, PRESENT, A, Ok(()), PRESENT | A),
        ] {
            put(&m, at, now);
            assert_eq!(
                update_flags(&m, at, seen, bits),
                result,
                "{now:#x} {seen:#x}"
            );
            assert_eq!(get(&m, at), after, "{now:#x} {seen:#x}");
        }
        assert_eq!(
            update_flags(&m, 0xff_f000_0000, PRESENT, A),
            Err(EntryChanged)
        );
    }

    /// Software rewriting the entry at every attempt: the walk gives up
    /// after a bounded number of tries, as a not-present entry.
    #[test]
    fn an_entry_that_never_settles_fails_the_walk() {
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        let calls = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let c = calls.clone();
        hook_leaf(&m, move |m, n| {
            c.set(c.get() + 1);
            put(
                m,
                LEAF_SLOT,
                (0x10_000 + (n as u64 % 2) * 0x1000) | P | RW | US,
            );
        });
        let r = walk(&m, &fl(4), 0x7000, true, &mut ident);
        interleave::clear();
        assert_eq!(r, Err(FlError::Unstable));
        assert_eq!(calls.get(), WALK_ATTEMPTS);
        assert_eq!(get(&m, LEAF_SLOT) & (A | D), 0);
    }

    /// A thread flips the leaf between a present entry and a swap entry
    /// while this one translates writes: every walk sees one or the other,
    /// and the swap entry never gains a flag.
    ///
    /// The window between a walk's read and its update is a few
    /// nanoseconds, so the walker often sleeps there: the flipper then
    /// gets to run in the window even when both threads share one CPU.
    /// The flips come at irregular intervals (a regular rhythm can lock
    /// onto the walker's, which then only ever reads one of the values).
    /// The test runs until the walker reached the window (read a fresh
    /// present entry) many times, or a deadline passes.
    #[test]
    fn concurrent_swap_out_never_gets_flags() {
        const WINDOWS: u32 = 1000;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (corrupted, flips, windows) = std::thread::scope(|s| {
            let flipper = s.spawn(|| {
                let slice = m.get_slice(GuestAddress(LEAF_SLOT), 8).unwrap();
                let e: &AtomicU64 = slice.get_atomic_ref(0).unwrap();
                let (mut corrupted, mut flips) = (Vec::new(), 0u64);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let next = if flips % 2 == 0 { SWAP } else { PRESENT };
                    let old = e.swap(next, Ordering::SeqCst);
                    if old != SWAP && old & !(A | D) != PRESENT {
                        corrupted.push(old);
                    }
                    flips += 1;
                    for _ in 0..rng % 64 {
                        std::hint::spin_loop();
                    }
                }
                e.store(PRESENT, Ordering::SeqCst);
                (corrupted, flips)
            });
            let windows = std::rc::Rc::new(std::cell::Cell::new(0u32));
            let w = windows.clone();
            interleave::set(move |_| {
                w.set(w.get() + 1);
                if w.get().is_multiple_of(2) {
                    std::thread::sleep(std::time::Duration::from_micros(1));
                }
            });
            while windows.get() < WINDOWS && std::time::Instant::now() < deadline {
                match walk(&m, &fl(4), 0x7000, true, &mut ident) {
                    Ok(l) => assert_eq!((l.output, l.dirty), (0x9000, true)),
                    Err(FlError::NotPresent | FlError::Unstable) => {}
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        panic!("{e:?}");
                    }
                }
            }
            interleave::clear();
            stop.store(true, Ordering::Relaxed);
            let (corrupted, flips) = flipper.join().unwrap();
            (corrupted, flips, windows.get())
        });
        assert_eq!(
            corrupted, [0u64; 0],
            "flags set in a swap entry {SWAP:#x} ({windows} windows, {flips} flips)"
        );
    }

    /// Level counts the PASID entry cannot encode are refused, not walked
    /// (more than 5 would shift input addresses out of 64 bits).
    #[test]
    fn only_four_and_five_level_tables_are_walked() {
        let m = mem();
        build(&m, 4, 0x7000, 1, PRESENT);
        for levels in [0u8, 1, 3, 6, 7, 255] {
            assert_eq!(
                walk(&m, &fl(levels), 0x7000, false, &mut ident),
                Err(FlError::Reserved),
                "{levels} levels"
            );
        }
    }
}
