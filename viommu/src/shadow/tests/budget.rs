//! One budget per guest batch, shared by every range the batch syncs.

use super::*;

/// Aliased tables: 4096 runs over the first 16 MiB of IOVA, 2 MiB each.
const END: u64 = 0x100_0000;

/// Two ranges of one batch share the map budget: the second gets what the
/// first left, not a fresh one. Past it, runs stay unmapped and counted,
/// and areas that no longer match the tables still go (fail closed).
#[test]
fn ranges_of_a_batch_share_the_map_budget() {
    let mem = ram();
    let t = aliased_tables(&mem);
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    let mut budget = SyncBudget::new(BatchLimits {
        reads: u64::MAX,
        maps: 300,
    });
    let s = space
        .sync_from_tables_within(&host, &mem, &t, 0, MIB2, &mut budget)
        .unwrap();
    assert_eq!((s.map_calls, s.over_budget_runs), (300, 212), "{s:?}");
    assert_eq!(budget.exhausted(), Some(Exhausted::Maps));
    let s = space
        .sync_from_tables_within(&host, &mem, &t, MIB2, 2 * MIB2, &mut budget)
        .unwrap();
    assert_eq!((s.map_calls, s.over_budget_runs), (0, 512), "{s:?}");
    assert_eq!(space.live_areas(), 300);
    assert_tracks_host(&space, &host);

    // The next batch has a budget of its own: it maps what is missing
    // and leaves what is there.
    let mut budget = SyncBudget::new(BatchLimits::default());
    let s = space
        .sync_from_tables_within(&host, &mem, &t, 0, 2 * MIB2, &mut budget)
        .unwrap();
    assert_eq!((s.map_calls, s.unmap_calls), (724, 0), "{s:?}");
    assert_eq!(budget.exhausted(), None);

    // The guest moves every page; a batch with no maps left still
    // unmaps every stale area it covers.
    for i in 0..512 {
        put(&mem, t.root + 0x3000 + i * 8, ((i + 1) * KIB4) | R);
    }
    let mut budget = SyncBudget::new(BatchLimits {
        reads: u64::MAX,
        maps: 0,
    });
    let s = space
        .sync_from_tables_within(&host, &mem, &t, 0, 2 * MIB2, &mut budget)
        .unwrap();
    assert_eq!(s.map_calls, 0);
    assert_eq!(space.live_areas(), 0, "nothing stale stays");
    assert_tracks_host(&space, &host);
}

/// The read budget spans the ranges of a batch: a range after it ran out
/// is emptied without being read, whatever it held.
#[test]
fn ranges_of_a_batch_share_the_read_budget() {
    let mem = ram();
    let t = aliased_tables(&mem);
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    space.sync_from_tables(&host, &mem, &t, 0, END).unwrap();
    assert_eq!(space.live_areas(), 4096);
    // Three upper-level entries and 512 leaves: the first 2 MiB.
    let mut budget = SyncBudget::new(BatchLimits {
        reads: 3 + 512,
        maps: u64::MAX,
    });
    let s = space
        .sync_from_tables_within(&host, &mem, &t, 0, MIB2, &mut budget)
        .unwrap();
    assert_eq!((s.entries_read, s.truncated_walks), (515, 0), "{s:?}");
    assert_eq!(budget.exhausted(), Some(Exhausted::Reads));
    let s = space
        .sync_from_tables_within(&host, &mem, &t, 4 * MIB2, 6 * MIB2, &mut budget)
        .unwrap();
    assert_eq!((s.entries_read, s.truncated_walks), (0, 1), "{s:?}");
    assert_eq!(space.live_areas(), 4096 - 1024, "the second range emptied");
    assert_tracks_host(&space, &host);
}

/// After a host error that is not "not RAM", a budgeted sync maps nothing
/// more (each further call would likely fail too, an ioctl each), but it
/// still unmaps; the error is returned. A later sync repairs it.
#[test]
fn no_maps_after_a_host_error() {
    let mem = ram();
    let t = aliased_tables(&mem);
    let host = FakeHost::new(&mem);
    let mut space = ShadowSpace::new();
    host.fail_when(|c| matches!(c, Call::Map(x) if x.iova == 10 * KIB4));
    let mut budget = SyncBudget::new(BatchLimits::default());
    let e = space
        .sync_from_tables_within(&host, &mem, &t, 0, MIB2, &mut budget)
        .unwrap_err();
    assert_eq!(e, injected("map"));
    let s = space.totals();
    assert_eq!((s.map_calls, s.after_error_runs), (11, 501), "{s:?}");
    assert_eq!(space.live_areas(), 10);
    assert_tracks_host(&space, &host);
    // The next endpoint of the batch is another host: it maps again.
    budget.next_endpoint();
    host.never_fail();
    let mut other = ShadowSpace::new();
    let other_host = FakeHost::new(&mem);
    other
        .sync_from_tables_within(&other_host, &mem, &t, 0, MIB2, &mut budget)
        .unwrap();
    assert_eq!(other.live_areas(), 512);
    // A sync without a batch budget behaves the same.
    host.fail_when(|c| matches!(c, Call::Map(x) if x.iova == 20 * KIB4));
    space
        .sync_from_tables(&host, &mem, &t, 0, MIB2)
        .unwrap_err();
    assert_eq!(space.live_areas(), 20);
    host.never_fail();
    space.sync_from_tables(&host, &mem, &t, 0, MIB2).unwrap();
    assert_eq!(space.live_areas(), 512);
    assert_tracks_host(&space, &host);
}
