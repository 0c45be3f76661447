//! Tests of the shadow space against a fake host that enforces iommufd's
//! rules (no overlapping maps, unmaps of whole mappings only, page
//! alignment, RAM only) and records every call.

use std::collections::BTreeMap;
use std::sync::Mutex;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::*;
use crate::guest_table::LeafRange;
use crate::host::{HostAttachment, HostCapabilities};
use crate::intel::second_stage::tests::{put, Builder, Rng};
use crate::intel::second_stage::{self, SlTable};

const KIB4: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
const R: u64 = 1;
const W: u64 = 2;
const RW: HostPerm = HostPerm::RW;
const RO: HostPerm = HostPerm::RO;

/// RAM: two regions that touch at 16 MiB (a run crossing it cannot be one
/// host mapping), a hole, and a third region.
const RAM: [(u64, u64); 3] = [
    (0, 0x100_0000),
    (0x100_0000, 0x180_0000),
    (0x200_0000, 0x280_0000),
];
/// Second-stage tables live here.
const POOL: std::ops::Range<u64> = 0x10_0000..0xf0_0000;
/// Mapping targets (identity-like below this) run past the end of RAM.
const TARGETS: u64 = 0x300_0000;

fn ram() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = RAM
        .iter()
        .map(|&(s, e)| (GuestAddress(s), (e - s) as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Map(HostMapping),
    Unmap(u64, u64),
}

type FailFn = Box<dyn FnMut(&Call) -> bool + Send>;

#[derive(Default)]
struct FakeState {
    live: BTreeMap<u64, HostMapping>,
    calls: Vec<Call>,
    /// Decides whether a call fails (before it changes anything).
    fail: Option<FailFn>,
}

/// A host IOMMU that panics (failing the test) on anything iommufd would
/// refuse as a misuse, and answers `NotRam` as the real backend would.
struct FakeHost {
    mem: GuestMemoryMmap,
    state: Mutex<FakeState>,
}

impl FakeHost {
    fn new(mem: &GuestMemoryMmap) -> FakeHost {
        FakeHost {
            mem: mem.clone(),
            state: Mutex::default(),
        }
    }

    fn live(&self) -> Vec<HostMapping> {
        self.state.lock().unwrap().live.values().copied().collect()
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    fn fail_when(&self, f: impl FnMut(&Call) -> bool + Send + 'static) {
        self.state.lock().unwrap().fail = Some(Box::new(f));
    }

    fn never_fail(&self) {
        self.state.lock().unwrap().fail = None;
    }

    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.mem.find_region(GuestAddress(gpa)).is_some_and(|r| {
            gpa.checked_add(len - 1)
                .is_some_and(|last| last <= r.last_addr().raw_value())
        })
    }
}

fn injected(op: &'static str) -> HostIommuError {
    HostIommuError::Host {
        op,
        reason: "injected".into(),
    }
}

impl HostIommu for FakeHost {
    fn requester_id(&self) -> u16 {
        8
    }
    fn capabilities(&self) -> HostCapabilities {
        HostCapabilities::default()
    }
    fn attach(&self, _to: HostAttachment) -> Result<(), HostIommuError> {
        Ok(())
    }

    fn shadow_map(&self, mappings: &[HostMapping]) -> Result<(), HostIommuError> {
        let mut s = self.state.lock().unwrap();
        for m in mappings {
            let call = Call::Map(*m);
            s.calls.push(call);
            assert!(m.len > 0, "empty map {m:x?}");
            assert_eq!((m.iova | m.gpa | m.len) & 0xfff, 0, "unaligned map {m:x?}");
            assert!(m.perm.read || m.perm.write, "map granting nothing {m:x?}");
            let end = m.iova.checked_add(m.len).expect("map wraps");
            if let Some((_, a)) = s.live.range(..end).next_back() {
                assert!(a.iova + a.len <= m.iova, "map {m:x?} overlaps {a:x?}");
            }
            if !self.is_ram(m.gpa, m.len) {
                return Err(HostIommuError::NotRam {
                    gpa: m.gpa,
                    len: m.len,
                });
            }
            if s.fail.as_mut().is_some_and(|f| f(&call)) {
                return Err(injected("map"));
            }
            s.live.insert(m.iova, *m);
        }
        Ok(())
    }

    fn shadow_unmap(&self, iova: u64, len: u64) -> Result<(), HostIommuError> {
        let mut s = self.state.lock().unwrap();
        let call = Call::Unmap(iova, len);
        s.calls.push(call);
        assert!(
            len > 0 && (iova | len) & 0xfff == 0,
            "bad unmap {iova:#x}+{len:#x}"
        );
        let end = iova.checked_add(len).expect("unmap wraps");
        // The range must be exactly a run of whole, adjacent mappings.
        if let Some((_, a)) = s.live.range(..iova).next_back() {
            assert!(
                a.iova + a.len <= iova,
                "unmap {iova:#x}+{len:#x} splits {a:x?}"
            );
        }
        let mut at = iova;
        let keys: Vec<u64> = s.live.range(iova..end).map(|(&k, _)| k).collect();
        for k in &keys {
            let a = s.live[k];
            assert_eq!(a.iova, at, "unmap {iova:#x}+{len:#x} has a gap at {at:#x}");
            at = a.iova + a.len;
            assert!(at <= end, "unmap {iova:#x}+{len:#x} splits {a:x?}");
        }
        assert_eq!(
            at, end,
            "unmap {iova:#x}+{len:#x} covers nothing at its end"
        );
        if s.fail.as_mut().is_some_and(|f| f(&call)) {
            return Err(injected("unmap"));
        }
        for k in keys {
            s.live.remove(&k);
        }
        Ok(())
    }
}

fn m(iova: u64, gpa: u64, len: u64, perm: HostPerm) -> HostMapping {
    HostMapping {
        iova,
        gpa,
        len,
        perm,
    }
}

/// Merges mappings that continue each other: two lists describe the same
/// translation iff their canonical forms are equal.
fn canonical(v: &[HostMapping]) -> Vec<HostMapping> {
    let mut out: Vec<HostMapping> = Vec::new();
    for x in v {
        match out.last_mut() {
            Some(c) if continues(c, x) => c.len += x.len,
            _ => out.push(*x),
        }
    }
    out
}

/// What the host should hold for the tables: every leaf's RAM parts,
/// computed directly from the RAM layout.
fn expected(mem: &GuestMemoryMmap, t: &SlTable) -> Vec<HostMapping> {
    let mut leaves = Vec::new();
    second_stage::leaves(mem, t, 0, u64::MAX, u64::MAX, &mut leaves).unwrap();
    let mut out = Vec::new();
    for l in leaves {
        for &(s, e) in &RAM {
            let lo = l.gpa.max(s);
            let hi = (l.gpa + l.len).min(e);
            if lo < hi {
                out.push(m(
                    l.iova + (lo - l.gpa),
                    lo,
                    hi - lo,
                    HostPerm {
                        read: l.read,
                        write: l.write,
                    },
                ));
            }
        }
    }
    out.sort_by_key(|x| x.iova);
    canonical(&out)
}

fn assert_tracks_host(space: &ShadowSpace, host: &FakeHost) {
    let tracked: Vec<HostMapping> = space.areas().copied().collect();
    assert_eq!(tracked, host.live(), "tracking differs from the host");
    assert_eq!(
        space.live_bytes(),
        tracked.iter().map(|a| a.len).sum::<u64>()
    );
    assert_eq!(space.live_areas(), tracked.len());
}

fn stats(map_calls: u64, unmap_calls: u64) -> (u64, u64) {
    (map_calls, unmap_calls)
}

fn calls_of(s: &SyncStats) -> (u64, u64) {
    (s.map_calls, s.unmap_calls)
}

/// A 4-level table over `ram()`.
fn setup(mem: &GuestMemoryMmap) -> (Builder<'_>, FakeHost, ShadowSpace) {
    (
        Builder::new(mem, 4, POOL),
        FakeHost::new(mem),
        ShadowSpace::new(),
    )
}

#[test]
fn a_run_mapped_page_by_page_is_one_map() {
    let mem = ram();
    let (b, host, mut space) = setup(&mem);
    for i in 0..512 {
        b.map(0x4000_0000 + i * KIB4, 1, 0x20_0000 + i * KIB4, R | W)
            .unwrap();
    }
    let s = space
        .sync_from_tables(&host, &mem, &b.t, 0x4000_0000, 0x4000_0000 + MIB2)
        .unwrap();
    assert_eq!(calls_of(&s), stats(1, 0));
    assert_eq!(
        host.take_calls(),
        [Call::Map(m(0x4000_0000, 0x20_0000, MIB2, RW))]
    );
    // One entry at each upper level, the whole last-level table.
    assert_eq!(s.entries_read, 3 + 512);
    // The same through sync_range with one mapping per page.
    let mut space2 = ShadowSpace::new();
    let host2 = FakeHost::new(&mem);
    let pages: Vec<HostMapping> = (0..512)
        .map(|i| m(0x4000_0000 + i * KIB4, 0x20_0000 + i * KIB4, KIB4, RW))
        .collect();
    let s = space2
        .sync_range(&host2, 0x4000_0000, 0x4000_0000 + MIB2, &pages)
        .unwrap();
    assert_eq!(calls_of(&s), stats(1, 0));
    assert_eq!(host2.live(), [m(0x4000_0000, 0x20_0000, MIB2, RW)]);
}

#[test]
fn unmapping_a_middle_page_unmaps_the_area_and_maps_both_sides() {
    let mem = ram();
    let (b, host, mut space) = setup(&mem);
    for i in 0..512 {
        b.map(i * KIB4, 1, 0x20_0000 + i * KIB4, R | W).unwrap();
    }
    space.sync_from_tables(&host, &mem, &b.t, 0, MIB2).unwrap();
    host.take_calls();
    put(&mem, b.slot(100 * KIB4, 1).unwrap(), 0);
    let s = space
        .sync_from_tables(&host, &mem, &b.t, 100 * KIB4, 101 * KIB4)
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0, MIB2),
            Call::Map(m(0, 0x20_0000, 100 * KIB4, RW)),
            Call::Map(m(101 * KIB4, 0x20_0000 + 101 * KIB4, 411 * KIB4, RW)),
        ]
    );
    assert_eq!((s.mapped_bytes, s.unmapped_bytes), (MIB2 - KIB4, MIB2));
    assert_eq!(space.live_bytes(), MIB2 - KIB4);
    assert_tracks_host(&space, &host);
}

#[test]
fn areas_straddling_the_range_keep_their_outside_parts() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    // Two adjacent areas from two syncs, and one further away.
    space
        .sync_range(&host, 0, 0x10_0000, &[m(0, 0x40_0000, 0x10_0000, RW)])
        .unwrap();
    space
        .sync_range(
            &host,
            0x10_0000,
            0x20_0000,
            &[m(0x10_0000, 0x80_0000, 0x10_0000, RO)],
        )
        .unwrap();
    space
        .sync_range(
            &host,
            0x30_0000,
            0x31_0000,
            &[m(0x30_0000, 0, 0x1_0000, RW)],
        )
        .unwrap();
    host.take_calls();
    // The guest remaps the two pages around the boundary elsewhere.
    let (start, end) = (0x10_0000 - KIB4, 0x10_0000 + KIB4);
    let s = space
        .sync_range(&host, start, end, &[m(start, 0x50_0000, 2 * KIB4, RW)])
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [
            // Both straddlers go in one call: they are adjacent.
            Call::Unmap(0, 0x20_0000),
            Call::Map(m(0, 0x40_0000, start, RW)),
            Call::Map(m(start, 0x50_0000, 2 * KIB4, RW)),
            Call::Map(m(end, 0x80_0000 + KIB4, 0x10_0000 - KIB4, RO)),
        ]
    );
    assert_eq!(calls_of(&s), stats(3, 1));
    assert_tracks_host(&space, &host);
    // One area straddling both edges, whose inside now continues its
    // left part: the left part and the new inside become one mapping.
    let s = space
        .sync_range(
            &host,
            0x30_4000,
            0x30_8000,
            &[
                m(0x30_4000, 0x4000, 0x2000, RW),
                m(0x30_6000, 0x9000, 0x2000, RO),
            ],
        )
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0x30_0000, 0x1_0000),
            Call::Map(m(0x30_0000, 0, 0x6000, RW)),
            Call::Map(m(0x30_6000, 0x9000, 0x2000, RO)),
            Call::Map(m(0x30_8000, 0x8000, 0x8000, RW)),
        ]
    );
    assert_eq!(calls_of(&s), stats(3, 1));
    assert_tracks_host(&space, &host);
}

#[test]
fn unchanged_areas_are_not_touched() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    space
        .sync_range(&host, 0, MIB2, &[m(0, 0x20_0000, MIB2, RW)])
        .unwrap();
    host.take_calls();
    // A range inside the area, the tables unchanged there (and the wanted
    // mapping given in pieces).
    let s = space
        .sync_range(
            &host,
            0x1000,
            0x5000,
            &[
                m(0x1000, 0x20_1000, 0x1000, RW),
                m(0x2000, 0x20_2000, 0x3000, RW),
            ],
        )
        .unwrap();
    assert_eq!((calls_of(&s), host.take_calls()), (stats(0, 0), vec![]));
    // A range straddling the area's end: its inside part unchanged, a new
    // mapping continuing it. The area stays; the new part is its own
    // mapping (areas that did not change are not merged).
    let s = space
        .sync_range(
            &host,
            MIB2 / 2,
            MIB2 + KIB4,
            &[m(MIB2 / 2, 0x30_0000, MIB2 / 2 + KIB4, RW)],
        )
        .unwrap();
    assert_eq!(host.take_calls(), [Call::Map(m(MIB2, 0x40_0000, KIB4, RW))]);
    assert_eq!(calls_of(&s), stats(1, 0));
    assert_eq!(space.live_areas(), 2);
    // A wanted mapping spanning both areas and more, unchanged where they
    // are: only the new part is mapped.
    let s = space
        .sync_range(&host, 0, 3 * MIB2, &[m(0, 0x20_0000, 3 * MIB2, RW)])
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [Call::Map(m(MIB2 + KIB4, 0x40_1000, 2 * MIB2 - KIB4, RW))]
    );
    assert_eq!(calls_of(&s), stats(1, 0));
    assert_tracks_host(&space, &host);
}

#[test]
fn permission_changes_remap() {
    let mem = ram();
    let (b, host, mut space) = setup(&mem);
    for i in 0..16 {
        b.map(i * KIB4, 1, 0x20_0000 + i * KIB4, R | W).unwrap();
    }
    space.sync_from_tables(&host, &mem, &b.t, 0, MIB2).unwrap();
    host.take_calls();
    // One page becomes read-only.
    b.map(5 * KIB4, 1, 0x20_5000, R).unwrap();
    space
        .sync_from_tables(&host, &mem, &b.t, 5 * KIB4, 6 * KIB4)
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0, 16 * KIB4),
            Call::Map(m(0, 0x20_0000, 5 * KIB4, RW)),
            Call::Map(m(5 * KIB4, 0x20_5000, KIB4, RO)),
            Call::Map(m(6 * KIB4, 0x20_6000, 10 * KIB4, RW)),
        ]
    );
    // The whole run becomes write-only through the upper level.
    let l2 = b.slot(0, 2).unwrap();
    put(&mem, l2, (b.get(l2) & !R) | W);
    b.map(5 * KIB4, 1, 0x20_5000, R | W).unwrap();
    space.sync_from_tables(&host, &mem, &b.t, 0, MIB2).unwrap();
    let wo = HostPerm {
        read: false,
        write: true,
    };
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0, 16 * KIB4),
            Call::Map(m(0, 0x20_0000, 16 * KIB4, wo)),
        ]
    );
    // Page 0 loses all rights (the upper level now grants only read, the
    // leaf only write): nothing is mapped there. Only page 0 is
    // invalidated, so the rest of the area is mapped again as it was.
    put(&mem, l2, b.get(l2) & !(R | W) | R);
    put(&mem, b.slot(0, 1).unwrap(), 0x20_0000 | W);
    space.sync_from_tables(&host, &mem, &b.t, 0, KIB4).unwrap();
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0, 16 * KIB4),
            Call::Map(m(KIB4, 0x20_1000, 15 * KIB4, wo)),
        ]
    );
    assert_tracks_host(&space, &host);
}

#[test]
fn resyncing_unchanged_tables_makes_no_calls() {
    let mem = ram();
    let (b, host, mut space) = setup(&mem);
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        b.random_change(&mut rng, TARGETS, false);
    }
    let s = space
        .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
        .unwrap();
    assert!(s.map_calls > 10, "{s:?}");
    host.take_calls();
    for _ in 0..200 {
        let a = b.iova(&mut rng, 1);
        let len = KIB4 << rng.below(31);
        let s = space
            .sync_from_tables(&host, &mem, &b.t, a, a.saturating_add(len))
            .unwrap();
        assert_eq!(calls_of(&s), stats(0, 0), "{a:#x}+{len:#x}");
    }
    space
        .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
        .unwrap();
    assert_eq!(host.take_calls(), []);
    assert_eq!(canonical(&host.live()), expected(&mem, &b.t));
}

#[test]
fn clear_unmaps_runs_of_adjacent_areas_together() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    space
        .sync_range(&host, 0, 0x2000, &[m(0, 0x1000, 0x2000, RW)])
        .unwrap();
    space
        .sync_range(&host, 0x2000, 0x3000, &[m(0x2000, 0x9000, 0x1000, RO)])
        .unwrap();
    space
        .sync_range(&host, 0x8000, 0x9000, &[m(0x8000, 0x9000, 0x1000, RO)])
        .unwrap();
    host.take_calls();
    let s = space.clear(&host).unwrap();
    assert_eq!(
        host.take_calls(),
        [Call::Unmap(0, 0x3000), Call::Unmap(0x8000, 0x1000)]
    );
    assert_eq!((calls_of(&s), s.unmapped_bytes), (stats(0, 2), 0x4000));
    assert_eq!((space.live_areas(), space.live_bytes()), (0, 0));
    assert!(host.live().is_empty());
    assert_eq!(space.clear(&host).unwrap(), SyncStats::default());
    assert_eq!(space.totals().unmap_calls, 2);
}

#[test]
fn mappings_outside_ram_are_skipped() {
    let mem = ram();
    let (b, host, mut space) = setup(&mem);
    // A run crossing the boundary between two RAM regions, one into the
    // hole, one beyond the end of RAM, and a good one after them.
    for i in 0..4 {
        b.map(i * KIB4, 1, 0x100_0000 - 2 * KIB4 + i * KIB4, R | W)
            .unwrap();
    }
    b.map(0x10_0000, 1, 0x180_0000 - KIB4, R).unwrap();
    b.map(0x10_1000, 1, 0x180_0000, R).unwrap();
    b.map(0x20_0000, 2, 0x1_0000_0000, R).unwrap();
    b.map(0x40_0000, 1, 0x5000, R).unwrap();
    let s = space
        .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [
            Call::Map(m(0, 0x100_0000 - 2 * KIB4, 2 * KIB4, RW)),
            Call::Map(m(2 * KIB4, 0x100_0000, 2 * KIB4, RW)),
            Call::Map(m(0x10_0000, 0x180_0000 - KIB4, KIB4, RO)),
            Call::Map(m(0x40_0000, 0x5000, KIB4, RO)),
        ]
    );
    assert_eq!((s.not_ram_runs, s.not_ram_bytes), (2, KIB4 + MIB2));
    // Given to sync_range directly, the backend refuses them: a run that
    // crosses a region boundary is mapped piece by piece, the rest is
    // skipped and counted.
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    let s = space
        .sync_range(
            &host,
            0,
            0x100_0000,
            &[
                m(0, 0x100_0000 - KIB4, KIB4, RW),
                m(KIB4, 0x100_0000, KIB4, RW),
                m(0x10_0000, 0x180_0000, KIB4, RW),
                m(0x20_0000, 0x17f_f000, 2 * KIB4, RW),
                m(0x30_0000, 0, KIB4, RW),
            ],
        )
        .unwrap();
    assert_eq!(
        host.take_calls(),
        [
            Call::Map(m(0, 0x100_0000 - KIB4, 2 * KIB4, RW)),
            Call::Map(m(0, 0x100_0000 - KIB4, KIB4, RW)),
            Call::Map(m(KIB4, 0x100_0000, KIB4, RW)),
            Call::Map(m(0x10_0000, 0x180_0000, KIB4, RW)),
            Call::Map(m(0x20_0000, 0x17f_f000, 2 * KIB4, RW)),
            Call::Map(m(0x30_0000, 0, KIB4, RW)),
        ]
    );
    assert_eq!((s.not_ram_runs, s.not_ram_bytes), (2, 3 * KIB4));
    assert_eq!(space.live_bytes(), 3 * KIB4);
    assert_tracks_host(&space, &host);
}

#[test]
fn a_failed_map_leaves_tracking_exact() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    host.fail_when(|c| matches!(c, Call::Map(x) if x.iova == 0x2000));
    let want = [
        m(0, 0, KIB4, RW),
        m(0x2000, 0x2000, KIB4, RW),
        m(0x4000, 0x4000, KIB4, RO),
    ];
    let e = space.sync_range(&host, 0, 0x10_0000, &want).unwrap_err();
    assert_eq!(e, injected("map"));
    assert_eq!(space.live_areas(), 2, "the others are mapped all the same");
    assert_tracks_host(&space, &host);
    host.never_fail();
    space.sync_range(&host, 0, 0x10_0000, &want).unwrap();
    assert_eq!(host.live(), want);
    assert_eq!(space.totals().map_calls, 4);
}

#[test]
fn a_failed_unmap_keeps_the_area_and_what_overlaps_it_unmapped() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    space
        .sync_range(&host, 0, 0x4000, &[m(0, 0, 0x4000, RW)])
        .unwrap();
    space
        .sync_range(&host, 0x8000, 0xc000, &[m(0x8000, 0x8000, 0x4000, RW)])
        .unwrap();
    host.take_calls();
    host.fail_when(|c| matches!(c, Call::Unmap(0, _)));
    // Both areas change; the first cannot go.
    let want = [m(0x1000, 0x9000, KIB4, RO), m(0x9000, 0x1000, KIB4, RO)];
    let e = space.sync_range(&host, 0, 0x10_000, &want).unwrap_err();
    assert_eq!(e, injected("unmap"));
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0, 0x4000),
            Call::Unmap(0x8000, 0x4000),
            Call::Map(m(0x9000, 0x1000, KIB4, RO)),
        ]
    );
    assert_eq!(
        space.areas().copied().collect::<Vec<_>>(),
        [m(0, 0, 0x4000, RW), want[1]]
    );
    assert_tracks_host(&space, &host);
    host.never_fail();
    space.sync_range(&host, 0, 0x10_000, &want).unwrap();
    assert_eq!(host.live(), want);
}

#[test]
fn a_failed_unmap_of_several_areas_is_retried_one_by_one() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    for i in 0..3 {
        let a = i * 0x2000;
        space
            .sync_range(&host, a, a + 0x2000, &[m(a, a, 0x2000, RW)])
            .unwrap();
    }
    host.take_calls();
    host.fail_when(|c| matches!(c, Call::Unmap(_, 0x6000) | Call::Unmap(0x2000, _)));
    let e = space.clear(&host).unwrap_err();
    assert_eq!(e, injected("unmap"));
    assert_eq!(
        host.take_calls(),
        [
            Call::Unmap(0, 0x6000),
            Call::Unmap(0, 0x2000),
            Call::Unmap(0x2000, 0x2000),
            Call::Unmap(0x4000, 0x2000),
        ]
    );
    assert_eq!(
        space.areas().copied().collect::<Vec<_>>(),
        [m(0x2000, 0x2000, 0x2000, RW)]
    );
    assert_tracks_host(&space, &host);
    // A batch that fails but whose areas then go one by one is no error.
    space
        .sync_range(&host, 0, 0x2000, &[m(0, 0, 0x2000, RW)])
        .unwrap();
    host.fail_when(|c| matches!(c, Call::Unmap(_, 0x4000)));
    space.clear(&host).unwrap();
    assert!(host.live().is_empty());
}

#[test]
fn the_coalescer_takes_any_leaves() {
    let mem = ram();
    let l = |iova, gpa, len| LeafRange {
        iova,
        len,
        gpa,
        size_shift: 12,
        read: true,
        write: false,
    };
    let (v, s) = coalesce(
        &mem,
        &[
            l(0, 0x1000, 0x1000),
            l(0x1000, 0x2000, 0x1000),
            // Not contiguous in guest-physical address.
            l(0x2000, 0x4000, 0x1000),
            // Wrapping ranges are clipped.
            l(u64::MAX - 0xfff, 0x5000, 0x2000),
            l(0x10_0000, u64::MAX - 0xfff, 0x2000),
        ],
    );
    assert_eq!(
        v,
        [
            m(0, 0x1000, 0x2000, RO),
            m(0x2000, 0x4000, 0x1000, RO),
            m(u64::MAX - 0xfff, 0x5000, 0xfff, RO),
        ]
    );
    assert_eq!(
        (s.leaves, s.runs, s.not_ram_runs, s.not_ram_bytes),
        (5, 3, 1, 0xfff)
    );
}

#[test]
fn ranges_at_the_top_and_empty_inputs() {
    let mem = ram();
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    let top = u64::MAX - 0x2fff;
    // A mapping whose end would wrap, clipped by the range.
    let s = space
        .sync_range(&host, top, top + 0x2000, &[m(top, 0x1000, u64::MAX, RW)])
        .unwrap();
    assert_eq!(host.take_calls(), [Call::Map(m(top, 0x1000, 0x2000, RW))]);
    assert_eq!(s.mapped_bytes, 0x2000);
    // The whole space, with nothing wanted: only what is there goes.
    let s = space.sync_range(&host, 0, u64::MAX, &[]).unwrap();
    assert_eq!(host.take_calls(), [Call::Unmap(top, 0x2000)]);
    assert_eq!(calls_of(&s), stats(0, 1));
    // Empty and reversed ranges, empty and rightless mappings.
    space
        .sync_range(&host, 0x1000, 0x1000, &[m(0x1000, 0, 0x1000, RW)])
        .unwrap();
    space
        .sync_range(&host, 0x2000, 0x1000, &[m(0x1000, 0, 0x1000, RW)])
        .unwrap();
    let none = HostPerm {
        read: false,
        write: false,
    };
    let s = space
        .sync_range(
            &host,
            0,
            0x10_0000,
            &[m(0, 0, 0, RW), m(0x1000, 0, 0x1000, none)],
        )
        .unwrap();
    assert_eq!((s, host.take_calls()), (SyncStats::default(), vec![]));
    // A guest-physical range that wraps is not RAM.
    let s = space
        .sync_range(&host, 0, 0x10_0000, &[m(0, u64::MAX - 0xfff, 0x2000, RW)])
        .unwrap();
    assert_eq!((s.not_ram_runs, host.take_calls()), (1, vec![]));
    // Out of order and overlapping mappings are dropped.
    let s = space
        .sync_range(
            &host,
            0,
            0x10_0000,
            &[
                m(0x4000, 0, 0x2000, RW),
                m(0x5000, 0, 0x1000, RW),
                m(0x1000, 0, 0x1000, RW),
            ],
        )
        .unwrap();
    assert_eq!(s.rejected, 2);
    assert_eq!(host.live(), [m(0x4000, 0, 0x2000, RW)]);
    // Parts outside the range are ignored.
    space
        .sync_range(&host, 0x8000, 0x9000, &[m(0x7000, 0x7000, 0x3000, RW)])
        .unwrap();
    assert_eq!(
        host.take_calls().last(),
        Some(&Call::Map(m(0x8000, 0x8000, 0x1000, RW)))
    );
    assert_tracks_host(&space, &host);
}

#[test]
fn large_pages_and_wide_ranges() {
    let mem = ram();
    for levels in [3u8, 4, 5] {
        let b = Builder::new(&mem, levels, POOL);
        let host = FakeHost::new(&mem);
        let mut space = ShadowSpace::new();
        let top = 1u64 << (12 + 9 * levels as u64);
        // A 1 GiB page over all of RAM, 2 MiB pages continuing each other,
        // and a page at the very top of the input space.
        b.map(top / 2, 3, 0, R | W).unwrap();
        for i in 0..4 {
            b.map(0x4000_0000 + i * MIB2, 2, 0x40_0000 + i * MIB2, R)
                .unwrap();
        }
        b.map(top - KIB4, 1, 0x3000, R | W).unwrap();
        let s = space
            .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
            .unwrap();
        assert_eq!(
            host.take_calls(),
            [
                Call::Map(m(0x4000_0000, 0x40_0000, 4 * MIB2, RO)),
                Call::Map(m(top / 2, 0, 0x100_0000, RW)),
                Call::Map(m(top / 2 + 0x100_0000, 0x100_0000, 0x80_0000, RW)),
                Call::Map(m(top / 2 + 0x200_0000, 0x200_0000, 0x80_0000, RW)),
                Call::Map(m(top - KIB4, 0x3000, KIB4, RW)),
            ],
            "{levels} levels"
        );
        assert_eq!(s.not_ram_bytes, (1 << 30) - 0x200_0000);
        // The guest splits the 1 GiB page: the first 2 MiB stay, in
        // 4 KiB pages but unchanged, the rest goes.
        for i in 0..512 {
            b.map(top / 2 + i * KIB4, 1, i * KIB4, R | W).unwrap();
        }
        space
            .sync_from_tables(&host, &mem, &b.t, top / 2, top / 2 + (1 << 30))
            .unwrap();
        assert_eq!(
            host.take_calls(),
            [
                // The first two areas are adjacent: one call.
                Call::Unmap(top / 2, 0x180_0000),
                Call::Unmap(top / 2 + 0x200_0000, 0x80_0000),
                Call::Map(m(top / 2, 0, MIB2, RW)),
            ],
            "{levels} levels"
        );
        assert_eq!(canonical(&host.live()), expected(&mem, &b.t));
        assert_tracks_host(&space, &host);
    }
}

#[test]
fn limits_fail_closed() {
    let mem = ram();
    let (b, host, _) = setup(&mem);
    for i in 0..8 {
        b.map(i * 2 * KIB4, 1, i * KIB4, R).unwrap();
    }
    let mut space = ShadowSpace::with_limits(u64::MAX, 5);
    let s = space
        .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
        .unwrap();
    assert_eq!((space.live_areas(), s.over_limit_runs), (5, 3));
    assert_tracks_host(&space, &host);
    // A walk that runs out of budget unmaps what it did not reach.
    let mut space = ShadowSpace::with_limits(u64::MAX, usize::MAX);
    let host = FakeHost::new(&mem);
    space
        .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
        .unwrap();
    assert_eq!(space.live_areas(), 8);
    // Three upper-level entries, then the first five last-level ones.
    let mut space = ShadowSpace {
        walk_budget: 3 + 5,
        ..space
    };
    let s = space
        .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
        .unwrap();
    assert_eq!(s.truncated_walks, 1);
    assert_eq!(space.live_areas(), 3, "pages 0, 2 and 4 were read");
    assert_eq!(space.totals().truncated_walks, 1);
    assert_tracks_host(&space, &host);
}

/// Tables that alias one last-level table everywhere, whose leaves
/// alternate between read-only and read-write over the first 2 MiB of RAM:
/// every leaf is its own run, and four pages of tables describe 2^36 of
/// them.
fn aliased_tables(mem: &GuestMemoryMmap) -> SlTable {
    let (l4, l3, l2, l1) = (0x10_0000u64, 0x10_1000, 0x10_2000, 0x10_3000);
    for (table, next) in [(l4, l3), (l3, l2), (l2, l1)] {
        for i in 0..512 {
            put(mem, table + i * 8, next | R | W);
        }
    }
    for i in 0..512 {
        put(
            mem,
            l1 + i * 8,
            (i * KIB4) | if i % 2 == 0 { R } else { R | W },
        );
    }
    SlTable {
        root: l4,
        levels: 4,
        haw: 39,
        mgaw: 48,
        pages_2m: true,
        pages_1g: true,
    }
}

/// A sync holds at most one window of mappings at a time, whatever the
/// range and however many leaves the tables describe, and syncs the same
/// as one that holds everything at once.
#[test]
fn windows_bound_the_leaves_held_at_once() {
    let mem = ram();
    let t = aliased_tables(&mem);
    // 16 MiB: 4096 leaves, 4096 runs.
    let end = 0x100_0000;
    let whole = FakeHost::new(&mem);
    let mut space = ShadowSpace {
        window: u64::MAX,
        ..ShadowSpace::new()
    };
    let s = space.sync_from_tables(&whole, &mem, &t, 0, end).unwrap();
    assert_eq!((s.windows, s.largest_window), (1, 4096));

    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace {
        window: 256,
        ..ShadowSpace::new()
    };
    let s = space.sync_from_tables(&host, &mem, &t, 0, end).unwrap();
    assert!(s.largest_window <= 256, "{s:?}");
    assert!(s.windows >= 4096 / 256, "{s:?}");
    assert_eq!(s.truncated_walks, 0);
    assert_eq!(host.live(), whole.live());
    assert_tracks_host(&space, &host);
    // Re-syncing windowed leaves everything in place.
    let s = space.sync_from_tables(&host, &mem, &t, 0, end).unwrap();
    assert_eq!(calls_of(&s), stats(0, 0));
    // The guest unmaps the lot (the top entry): one window, all gone.
    put(&mem, t.root, 0);
    let s = space.sync_from_tables(&host, &mem, &t, 0, end).unwrap();
    assert_eq!((s.windows, space.live_areas()), (1, 0));
    assert_tracks_host(&space, &host);
}

/// The budget spans the windows: past it, what was not read is emptied,
/// and a window too small to reach a leaf ends the sync (it would make no
/// progress) the same way.
#[test]
fn windows_share_the_walk_budget_and_fail_closed() {
    let mem = ram();
    let t = aliased_tables(&mem);
    let end = 0x100_0000;
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    space.sync_from_tables(&host, &mem, &t, 0, end).unwrap();
    assert_eq!(space.live_areas(), 4096);
    // Each window re-reads the three upper levels on its way down.
    let mut space = ShadowSpace {
        walk_budget: 3 * (3 + 100),
        window: 3 + 100,
        ..space
    };
    let s = space.sync_from_tables(&host, &mem, &t, 0, end).unwrap();
    assert_eq!((s.windows, s.truncated_walks), (3, 1), "{s:?}");
    assert_eq!(s.entries_read, 3 * (3 + 100));
    assert_eq!(space.live_areas(), 300, "pages 0..300 were read");
    assert_tracks_host(&space, &host);
    let mut space = ShadowSpace {
        walk_budget: u64::MAX,
        window: 3,
        ..space
    };
    let s = space.sync_from_tables(&host, &mem, &t, 0, end).unwrap();
    assert_eq!((s.windows, s.truncated_walks), (1, 1), "{s:?}");
    assert_eq!(space.live_areas(), 0);
    assert_tracks_host(&space, &host);
}

/// Clears, or changes the rights of, the leaf behind a random page of a
/// random live area: splits galore. Returns the range that changed.
fn poke_live(b: &Builder, rng: &mut Rng, live: &[HostMapping]) -> Option<(u64, u64)> {
    let a = live.get(rng.below(live.len().max(1) as u64) as usize)?;
    let x = a.iova + rng.below(a.len / KIB4) * KIB4;
    // The leaf is at the lowest level whose tables exist.
    let (level, slot) = (1..=3u8).find_map(|l| b.slot(x, l).map(|s| (l, s)))?;
    let e = b.get(slot);
    put(b.mem, slot, if rng.percent(50) { 0 } else { e ^ W });
    let span = 1u64 << (12 + 9 * (level as u64 - 1));
    let start = x & !(span - 1);
    Some((start, start + span))
}

/// Maps a run of up to 600 pages, contiguous in IOVA and guest-physical
/// address (so it spans last-level tables and often RAM boundaries), as
/// one guest mapping. Returns the range that changed.
fn map_run(b: &Builder, rng: &mut Rng) -> Option<(u64, u64)> {
    let iova = b.iova(rng, 1);
    let n = 1 + rng.below(600);
    let width = 12 + 9 * b.t.levels as u64;
    if iova + n * KIB4 > 1 << width {
        return None;
    }
    let gpa = if rng.percent(70) {
        iova % TARGETS
    } else {
        rng.below(TARGETS)
    } & !(KIB4 - 1);
    let bits = [R | W, R][rng.below(2) as usize];
    let (mut lo, mut hi) = (u64::MAX, 0);
    for i in 0..n {
        let (s, e) = b.map(iova + i * KIB4, 1, gpa + i * KIB4, bits)?;
        (lo, hi) = (lo.min(s), hi.max(e));
    }
    Some((lo, hi))
}

/// The model test: random guest tables, changed at random and
/// invalidated as a guest must (the changed ranges, rounded up as Linux
/// does for page-selective invalidations, merged, or domain-wide), with
/// host failures now and then. After every invalidation the host holds
/// exactly what the space tracks; once failures stop, it holds exactly
/// what a fresh walk of the tables says. `VIOMMU_SHADOW_SEEDS` runs more
/// seeds than the default.
#[test]
fn random_tables_and_invalidations_keep_the_host_equal_to_the_tables() {
    let mem = ram();
    let mut total = SyncStats::default();
    let seeds = std::env::var("VIOMMU_SHADOW_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24u64);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed);
        let levels = [3u8, 4, 5][rng.below(3) as usize];
        let b = Builder::new(&mem, levels, POOL);
        let host = FakeHost::new(&mem);
        let mut space = ShadowSpace::new();
        for step in 0..60 {
            let failing = rng.percent(10);
            if failing {
                let mut r = Rng::new(seed * 1000 + step);
                host.fail_when(move |_| r.percent(25));
            }
            let mut changed = Vec::new();
            for _ in 0..=rng.below(4) {
                let dice = rng.below(100);
                if dice < 30 {
                    changed.extend(poke_live(&b, &mut rng, &host.live()));
                } else if dice < 45 {
                    changed.extend(map_run(&b, &mut rng));
                } else {
                    changed.extend(b.random_change(&mut rng, TARGETS, false));
                }
            }
            let ranges: Vec<(u64, u64)> = match rng.below(4) {
                0 => changed.clone(),
                1 => changed
                    .iter()
                    .map(|&(s, e)| {
                        // Page-selective with an address mask: a naturally
                        // aligned power of two covering the change.
                        let size = (e - s).next_power_of_two() << rng.below(3);
                        let base = s & !(size - 1);
                        (base, (base + size).max(e))
                    })
                    .collect(),
                2 => {
                    let lo = changed.iter().map(|c| c.0).min().unwrap_or(0);
                    let hi = changed.iter().map(|c| c.1).max().unwrap_or(0);
                    vec![(lo, hi)]
                }
                _ => vec![(0, u64::MAX)],
            };
            let mut failed = false;
            for (s, e) in ranges {
                host.take_calls();
                match space.sync_from_tables(&host, &mem, &b.t, s, e) {
                    Ok(st) => total.add(&st),
                    Err(err) => {
                        assert!(failing, "seed {seed} step {step}: {err}");
                        failed = true;
                    }
                }
                // Unmaps only ever touch areas in the range.
                for c in host.take_calls() {
                    if let Call::Unmap(iova, len) = c {
                        assert!(
                            iova < e && iova + len > s,
                            "seed {seed}: unmap outside {s:#x}..{e:#x}"
                        );
                    }
                }
                assert_tracks_host(&space, &host);
            }
            host.never_fail();
            if failed {
                // What failed is repaired by the next invalidation of it.
                space
                    .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
                    .unwrap();
            }
            assert_eq!(
                canonical(&host.live()),
                expected(&mem, &b.t),
                "seed {seed} step {step}"
            );
            // Spot checks against single walks.
            let live = host.live();
            for _ in 0..20 {
                let x = b.iova(&mut rng, 1) | rng.below(KIB4);
                let i = live.partition_point(|a| a.iova + a.len <= x);
                let got = live
                    .get(i)
                    .filter(|a| a.iova <= x)
                    .map(|a| (a.gpa + (x - a.iova), a.perm));
                let want = second_stage::walk(&mem, &b.t, x).ok().and_then(|l| {
                    let gpa = l.translate(x);
                    let in_ram = RAM.iter().any(|&(s, e)| gpa >= s && gpa < e);
                    (in_ram && (l.read || l.write)).then_some((
                        gpa,
                        HostPerm {
                            read: l.read,
                            write: l.write,
                        },
                    ))
                });
                assert_eq!(got, want, "seed {seed} step {step} iova {x:#x}");
            }
        }
        // Nothing changed since the last sync: a domain-wide one is free.
        let s = space
            .sync_from_tables(&host, &mem, &b.t, 0, u64::MAX)
            .unwrap();
        assert_eq!(calls_of(&s), stats(0, 0), "seed {seed}");
        space.clear(&host).unwrap();
        assert!(host.live().is_empty());
    }
    // The test did exercise what it is about.
    assert!(
        total.map_calls > 1000 && total.unmap_calls > 500,
        "{total:?}"
    );
    assert!(total.not_ram_runs > 50, "{total:?}");
}
