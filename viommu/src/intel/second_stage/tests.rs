//! Second-stage walks and leaf scans against tables built in guest memory.

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

/// Level counts no context or PASID entry decodes are refused, not
/// walked (from 7 on, level shifts exceed 64 bits).
#[test]
fn only_one_to_five_level_tables_are_walked() {
    let m = mem();
    for levels in [0u8, 6, 7, 255] {
        chain(&m, 5, 0x5000, 1, 0x9000 | R | W);
        let t = SlTable {
            levels,
            mgaw: 64,
            ..table(5)
        };
        assert_eq!(walk(&m, &t, 0x5000), Err(SlError::Reserved), "{levels}");
    }
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

// --- leaf enumeration ------------------------------------------------

/// A small xorshift generator: reproducible random tests without a
/// dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Builds second-stage tables in guest memory as a guest driver would,
/// taking table pages from a pool.
pub(crate) struct Builder<'m> {
    pub(crate) mem: &'m GuestMemoryMmap,
    pub(crate) t: SlTable,
    next: std::cell::Cell<u64>,
    pool_end: u64,
}

impl<'m> Builder<'m> {
    /// A table with `levels` levels whose root is the first page of
    /// `pool`.
    pub(crate) fn new(mem: &'m GuestMemoryMmap, levels: u8, pool: std::ops::Range<u64>) -> Self {
        let b = Builder {
            mem,
            t: SlTable {
                root: 0,
                levels,
                haw: 39,
                mgaw: 57,
                pages_2m: true,
                pages_1g: true,
            },
            next: std::cell::Cell::new(pool.start),
            pool_end: pool.end,
        };
        let root = b.alloc().unwrap();
        Builder {
            t: SlTable { root, ..b.t },
            ..b
        }
    }

    fn alloc(&self) -> Option<u64> {
        let t = self.next.get();
        if t >= self.pool_end {
            return None;
        }
        self.next.set(t + 0x1000);
        self.mem
            .write_slice(&[0u8; 0x1000], GuestAddress(t))
            .unwrap();
        Some(t)
    }

    pub(crate) fn get(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn is_table(&self, entry: u64, level: u8) -> bool {
        let next = entry & ADDR;
        entry & (R | W) != 0
            && !(level > 1 && entry & PS != 0)
            && next >= self.t.root
            && next < self.next.get()
    }

    /// The address of the entry at `level` for `iova`, when the tables
    /// above it exist.
    pub(crate) fn slot(&self, iova: u64, level: u8) -> Option<u64> {
        let mut table = self.t.root;
        for l in (level..=self.t.levels).rev() {
            let shift = 12 + 9 * (l as u64 - 1);
            let slot = table + ((iova >> shift) & 0x1ff) * 8;
            if l == level {
                return Some(slot);
            }
            let e = self.get(slot);
            if !self.is_table(e, l) {
                return None;
            }
            table = e & ADDR;
        }
        None
    }

    /// Writes `entry` at `level` for `iova`, making tables on the way
    /// (replacing large pages and anything unusable there). Returns
    /// the input range whose translation may have changed, or `None`
    /// when out of table pages.
    pub(crate) fn set(&self, iova: u64, level: u8, entry: u64) -> Option<(u64, u64)> {
        let mut table = self.t.root;
        let mut changed = None;
        for l in (level..=self.t.levels).rev() {
            let shift = 12 + 9 * (l as u64 - 1);
            let slot = table + ((iova >> shift) & 0x1ff) * 8;
            let span_start = iova & !((1u64 << shift) - 1);
            let span = (span_start, span_start + (1u64 << shift));
            if l == level {
                put(self.mem, slot, entry);
                return Some(changed.unwrap_or(span));
            }
            let e = self.get(slot);
            table = if self.is_table(e, l) {
                e & ADDR
            } else {
                let t = self.alloc()?;
                put(self.mem, slot, t | R | W);
                changed.get_or_insert(span);
                t
            };
        }
        None
    }

    /// Maps the page of size `1 << (12 + 9 * (level - 1))` at `iova`.
    pub(crate) fn map(&self, iova: u64, level: u8, out: u64, bits: u64) -> Option<(u64, u64)> {
        let ps = if level > 1 { PS } else { 0 };
        self.set(iova, level, out | bits | ps)
    }

    /// An input address in a few clusters: indexes near the ends of
    /// each table, so that neighbouring leaves, shared tables and
    /// range edges come up often.
    pub(crate) fn iova(&self, rng: &mut Rng, level: u8) -> u64 {
        let mut iova = 0u64;
        for l in (level..=self.t.levels).rev() {
            let index = match rng.below(8) {
                0..=2 => rng.below(4),
                3 => 511 - rng.below(2),
                _ => rng.below(512),
            };
            iova |= index << (12 + 9 * (l as u64 - 1));
        }
        iova
    }

    /// A random change to the tables, as a guest (or a confused one)
    /// would make it. `aliasing` allows one table to be reachable
    /// from several entries. Returns the input range that changed.
    pub(crate) fn random_change(
        &self,
        rng: &mut Rng,
        targets: u64,
        aliasing: bool,
    ) -> Option<(u64, u64)> {
        let level = match rng.below(10) {
            0..=6 => 1,
            7 | 8 => 2,
            _ => 3,
        }
        .min(self.t.levels);
        let iova = self.iova(rng, level);
        let span = 1u64 << (12 + 9 * (level as u64 - 1));
        let bits = [R | W, R | W, R | W, R, W][rng.below(5) as usize];
        match rng.below(100) {
            // Map, often continuing the identity-like layout so that
            // runs coalesce, sometimes anywhere below `targets`.
            0..=54 => {
                let out = if rng.percent(60) {
                    iova % targets
                } else {
                    rng.below(targets)
                } & !(span - 1);
                self.map(iova, level, out, bits)
            }
            // Unmap (a leaf, or a whole subtree).
            55..=74 => {
                let slot = self.slot(iova, level)?;
                put(self.mem, slot, 0);
                Some((iova, iova + span))
            }
            // New rights on whatever is there.
            75..=86 => {
                let slot = self.slot(iova, level)?;
                let e = self.get(slot);
                put(self.mem, slot, (e & !(R | W)) | bits);
                Some((iova, iova + span))
            }
            // Reserved bits: output above HAW, or PS at the top.
            87..=90 => {
                let slot = self.slot(iova, level)?;
                let e = self.get(slot);
                let bad = if rng.percent(50) { 1 << 50 } else { PS };
                put(self.mem, slot, e | bad | R);
                Some((iova, iova + span))
            }
            // A table outside guest memory.
            91..=94 if level > 1 => {
                let slot = self.slot(iova, level)?;
                put(self.mem, slot, 0x40_0000_0000 | R | W);
                Some((iova, iova + span))
            }
            // Another entry's table, shared.
            95..=99 if aliasing && level > 1 => {
                let from = self.slot(self.iova(rng, level), level)?;
                let slot = self.slot(iova, level)?;
                put(self.mem, slot, self.get(from));
                Some((iova, iova + span))
            }
            _ => None,
        }
    }
}

fn scan_all(m: &GuestMemoryMmap, t: &SlTable, start: u64, end: u64) -> (Vec<LeafRange>, LeafScan) {
    let mut v = Vec::new();
    let s = leaves(m, t, start, end, u64::MAX, &mut v).unwrap();
    (v, s)
}

fn leaf(iova: u64, len: u64, gpa: u64, size_shift: u8, read: bool, write: bool) -> LeafRange {
    LeafRange {
        iova,
        len,
        gpa,
        size_shift,
        read,
        write,
    }
}

#[test]
fn leaves_of_every_level_and_page_size() {
    for levels in [3u8, 4, 5] {
        let m = mem();
        let b = Builder::new(&m, levels, 0x1000..0x10_0000);
        let top = 1u64 << (12 + 9 * (levels as u64 - 1));
        b.map(0x5000, 1, 0x77_7000, R | W).unwrap();
        b.map(0x4020_0000, 2, 0x60_0000, R).unwrap();
        b.map(0x8000_0000, 3, 0x4000_0000, W).unwrap();
        // Last page of the input space.
        b.map(511 * top + top - 0x1000, 1, 0x1000, R | W).unwrap();
        let (v, s) = scan_all(&m, &b.t, 0, u64::MAX);
        assert_eq!(
            v,
            [
                leaf(0x5000, 0x1000, 0x77_7000, 12, true, true),
                leaf(0x4020_0000, 1 << 21, 0x60_0000, 21, true, false),
                leaf(0x8000_0000, 1 << 30, 0x4000_0000, 30, false, true),
                leaf(512 * top - 0x1000, 0x1000, 0x1000, 12, true, true),
            ],
            "{levels} levels"
        );
        assert_eq!((s.unreadable, s.reserved), (0, 0));
    }
}

#[test]
fn leaves_skip_what_the_walk_faults_on() {
    let m = mem();
    let b = Builder::new(&m, 4, 0x1000..0x10_0000);
    // Output above HAW (39).
    b.map(0x1000, 1, 1 << 40, R | W).unwrap();
    // Misaligned 2 MiB page.
    b.map(0x20_0000, 2, 0x60_1000, R).unwrap();
    // PS at level 4 is never allowed.
    b.set(1 << 39, 4, 0x8000_0000 | PS | R).unwrap();
    // A table outside guest memory (below HAW, so not reserved).
    b.set(2 << 30, 3, 0x40_0000_0000 | R | W).unwrap();
    // Rights ANDed over the levels grant nothing.
    b.map(3 << 30, 1, 0x9000, W).unwrap();
    let top = b.slot(3 << 30, 3).unwrap();
    put(&m, top, (b.get(top) & !W) | R);
    // Not present: R = W = 0 with other bits set.
    b.set(4 << 30, 1, 0x9000 | PS).unwrap();
    // One good leaf to show the scan went on.
    b.map(5 << 30, 1, 0xa000, R).unwrap();
    let (v, s) = scan_all(&m, &b.t, 0, u64::MAX);
    assert_eq!(v, [leaf(5 << 30, 0x1000, 0xa000, 12, true, false)]);
    assert_eq!(s.reserved, 3);
    assert_eq!(s.unreadable, 512);
    for iova in [0x1000, 0x20_0000, 1 << 39, 2 << 30, 3 << 30, 4 << 30] {
        let w = walk(&m, &b.t, iova);
        assert!(
            w.is_err() || w.is_ok_and(|l| !l.read && !l.write),
            "{iova:#x}: {w:?}"
        );
    }
    // Large pages the unit does not support.
    let t = SlTable {
        pages_2m: false,
        pages_1g: false,
        ..b.t
    };
    b.map(6 << 30, 2, 0x20_0000, R).unwrap();
    b.map(7 << 30, 3, 0x4000_0000, R).unwrap();
    let (v, s) = scan_all(&m, &t, 6 << 30, 8 << 30);
    assert!(v.is_empty());
    assert_eq!(s.reserved, 2);
    // A root outside guest memory.
    let t = SlTable {
        root: 0xfff_0000_0000,
        ..b.t
    };
    let (v, s) = scan_all(&m, &t, 0, u64::MAX);
    assert!(v.is_empty());
    assert_eq!((s.unreadable, s.tables_visited), (512, 1));
    // Nonsense level counts map nothing (and do not shift out of range).
    for levels in [0u8, 6, 255] {
        let t = SlTable { levels, ..b.t };
        assert_eq!(scan_all(&m, &t, 0, u64::MAX), (vec![], LeafScan::default()));
    }
}

#[test]
fn leaves_are_clipped_to_the_range() {
    let m = mem();
    let b = Builder::new(&m, 4, 0x1000..0x10_0000);
    b.map(0x4020_0000, 2, 0x60_0000, R | W).unwrap();
    b.map(0x4040_0000, 1, 0x9000, R).unwrap();
    b.map(0x4040_1000, 1, 0xa000, R).unwrap();
    let (v, _) = scan_all(&m, &b.t, 0x4030_0000, 0x4040_1000);
    assert_eq!(
        v,
        [
            leaf(0x4030_0000, 0x10_0000, 0x70_0000, 21, true, true),
            leaf(0x4040_0000, 0x1000, 0x9000, 12, true, false),
        ]
    );
    // Inside one page, not page-aligned.
    let (v, _) = scan_all(&m, &b.t, 0x4020_0123, 0x4020_0456);
    assert_eq!(v, [leaf(0x4020_0123, 0x333, 0x60_0123, 21, true, true)]);
    // Empty and reversed ranges read nothing.
    assert_eq!(
        scan_all(&m, &b.t, 0x4020_0000, 0x4020_0000).1.entries_read,
        0
    );
    assert_eq!(
        scan_all(&m, &b.t, 0x4030_0000, 0x4020_0000).1.entries_read,
        0
    );
    // Beyond the table's width (48 bits) and beyond MGAW.
    assert_eq!(scan_all(&m, &b.t, 1 << 48, u64::MAX).1.entries_read, 0);
    let t = SlTable { mgaw: 30, ..b.t };
    assert_eq!(scan_all(&m, &t, 0, u64::MAX).0, vec![]);
    let t = SlTable { mgaw: 31, ..b.t };
    assert_eq!(scan_all(&m, &t, 0, u64::MAX).0.len(), 3);
}

#[test]
fn leaves_cost_is_bounded_by_the_tables_on_the_way() {
    let m = mem();
    let b = Builder::new(&m, 4, 0x1000..0x10_0000);
    // Three 4 KiB pages under three different top-level entries.
    for i in 0..3u64 {
        b.map((i * 100) << 39 | 0x1000, 1, 0x9000, R).unwrap();
    }
    let (v, s) = scan_all(&m, &b.t, 0, u64::MAX);
    assert_eq!(v.len(), 3);
    // The root, and three tables below it on each of three paths.
    assert_eq!(s.tables_visited, 10);
    assert_eq!(s.entries_read, 10 * 512);
    // A narrow range reads one entry per level.
    let (v, s) = scan_all(&m, &b.t, 0x1000, 0x2000);
    assert_eq!((v.len(), s.entries_read), (1, 4));
    // A guest pointing every entry of every level at the same table
    // describes 2^36 pages with four pages of tables: the budget stops
    // the scan, and it can be resumed where it stopped.
    let m = mem();
    for table in [0x1000u64, 0x2000, 0x3000] {
        for i in 0..512 {
            put(&m, table + i * 8, (table + 0x1000) | R | W);
        }
    }
    for i in 0..512 {
        put(&m, 0x4000 + i * 8, (i << 12) | R);
    }
    let t = table(4);
    let mut v = Vec::new();
    let Err(LeafScanError::BudgetExhausted { resume_at, scan }) =
        leaves(&m, &t, 0, u64::MAX, 10_000, &mut v)
    else {
        panic!("not stopped");
    };
    assert_eq!(scan.entries_read, 10_000);
    // Everything below resume_at was reported, nothing above.
    let covered: u64 = v.iter().map(|l| l.len).sum();
    assert_eq!(covered, resume_at);
    assert!(v.windows(2).all(|w| w[0].iova + w[0].len == w[1].iova));
    let mut rest = Vec::new();
    leaves(&m, &t, resume_at, resume_at + (4 << 21), 100_000, &mut rest).unwrap();
    assert_eq!(rest[0].iova, resume_at);
    assert_eq!(rest.iter().map(|l| l.len).sum::<u64>(), 4 << 21);
}

/// Every address gets from `leaves` exactly what `walk` gives it, on
/// random tables with faults, shared tables and all page sizes.
#[test]
fn leaves_match_walk_on_random_tables() {
    for seed in 0..60u64 {
        let mut rng = Rng::new(seed);
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap();
        let levels = [3u8, 4, 5][rng.below(3) as usize];
        let b = Builder::new(&m, levels, 0x1000..0x100_0000);
        for _ in 0..rng.below(300) {
            b.random_change(&mut rng, 1 << 39, true);
        }
        let mut t = b.t;
        t.pages_1g = rng.percent(80);
        t.haw = [39, 48][rng.below(2) as usize];
        let (v, s) = scan_all(&m, &t, 0, u64::MAX);
        assert!(v.iter().all(|l| l.len > 0 && (l.read || l.write)));
        assert!(v.windows(2).all(|w| w[0].iova + w[0].len <= w[1].iova));
        let mut probes: Vec<u64> = v
            .iter()
            .flat_map(|l| [l.iova, l.iova + l.len - 1])
            .collect();
        for _ in 0..2000 {
            probes.push(b.iova(&mut rng, 1) | rng.below(0x1000));
        }
        probes.push(1 << (12 + 9 * levels as u64));
        for x in probes {
            let i = v.partition_point(|l| l.iova + l.len <= x);
            let found = v.get(i).filter(|l| l.iova <= x);
            match (walk(&m, &t, x), found) {
                (Ok(w), Some(l)) if w.read || w.write => {
                    assert_eq!(
                        (w.translate(x), w.size_shift, w.read, w.write),
                        (l.gpa + (x - l.iova), l.size_shift, l.read, l.write),
                        "seed {seed}, {x:#x}"
                    );
                }
                (Ok(w), None) => assert!(!w.read && !w.write, "seed {seed}, {x:#x}: {w:?}"),
                (Err(_), None) => {}
                (w, l) => panic!("seed {seed}, {x:#x}: walk {w:?}, leaves {l:?}"),
            }
        }
        // Any range gives the full scan's leaves, clipped.
        let a = b.iova(&mut rng, 1) | rng.below(0x1000);
        let width = 9 * rng.below(5) + 12;
        let z = a.saturating_add(rng.below(1 << width));
        let (part, ps) = scan_all(&m, &t, a, z);
        let clipped: Vec<LeafRange> = v
            .iter()
            .filter(|l| l.iova < z && l.iova + l.len > a)
            .map(|l| {
                let lo = l.iova.max(a);
                let hi = (l.iova + l.len).min(z);
                LeafRange {
                    iova: lo,
                    len: hi - lo,
                    gpa: l.gpa + (lo - l.iova),
                    ..*l
                }
            })
            .collect();
        assert_eq!(part, clipped, "seed {seed}, {a:#x}..{z:#x}");
        assert!(ps.entries_read <= s.entries_read);
    }
}
