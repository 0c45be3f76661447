//! The endpoint state machine against a table and a host that only record
//! what they are asked: no IOMMU architecture involved. The VT-d unit's
//! use of it is tested in `intel::tests::passthrough`.

use std::cell::RefCell;
use std::sync::Mutex;

use vm_memory::GuestAddress;

use super::*;
use crate::guest_table::{LeafRange, LeafScan, LeafScanError};
use crate::host::{HostCapabilities, HostMapping, PasidAttachment};

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

/// A table with no leaves that records the ranges it is walked over; two
/// are the same table iff their `id`s are equal.
#[derive(Clone, Copy)]
struct Recorder<'a> {
    id: u8,
    walks: &'a RefCell<Vec<(u64, u64)>>,
}

impl PartialEq for Recorder<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
    }
}

impl ShadowTable for Recorder<'_> {
    fn for_each_leaf(
        &self,
        _: &GuestMemoryMmap,
        start: u64,
        end: u64,
        _: u64,
        _: &mut dyn FnMut(LeafRange),
    ) -> Result<LeafScan, LeafScanError> {
        self.walks.borrow_mut().push((start, end));
        Ok(LeafScan::default())
    }

    fn input_end(&self) -> u64 {
        1 << 39
    }
}

/// A host that records its attachments and, as configured, nests, refuses
/// attachments and stops part-way through stage-1 invalidations.
#[derive(Default)]
struct Host {
    attached: Mutex<Vec<HostAttachment>>,
    nesting: bool,
    /// Attachments of these kinds fail.
    refuse_nested: bool,
    refuse_shadow: bool,
    /// How many entries of a stage-1 batch the host takes (None: all).
    invalidations_taken: Option<usize>,
    /// The device's PASID width on the host.
    pasid_log2: u8,
    /// PASID attachments, in order; nested ones fail when set.
    pasid_attached: Mutex<Vec<(u32, PasidAttachment)>>,
    refuse_nested_pasid: bool,
}

impl HostIommu for Host {
    fn requester_id(&self) -> u16 {
        0x10
    }
    fn capabilities(&self) -> HostCapabilities {
        HostCapabilities {
            nesting: self.nesting,
            max_pasid_log2: self.pasid_log2,
            page_requests: false,
        }
    }
    fn attach_pasid(&self, pasid: u32, to: PasidAttachment) -> Result<(), HostIommuError> {
        if self.refuse_nested_pasid && matches!(to, PasidAttachment::Nested(_)) {
            return Err(HostIommuError::Unsupported("this attachment"));
        }
        self.pasid_attached.lock().unwrap().push((pasid, to));
        Ok(())
    }
    fn invalidate_stage1_pasid(
        &self,
        _: u32,
        batch: &[Stage1Invalidation],
    ) -> Result<usize, HostIommuError> {
        Ok(self.invalidations_taken.unwrap_or(batch.len()))
    }
    fn attach(&self, to: HostAttachment) -> Result<(), HostIommuError> {
        let refused = match to {
            HostAttachment::Nested(_) => self.refuse_nested,
            HostAttachment::Shadow => self.refuse_shadow,
            _ => false,
        };
        if refused {
            return Err(HostIommuError::Unsupported("this attachment"));
        }
        self.attached.lock().unwrap().push(to);
        Ok(())
    }
    fn shadow_map(&self, _: &[HostMapping]) -> Result<(), HostIommuError> {
        Ok(())
    }
    fn shadow_unmap(&self, _: u64, _: u64) -> Result<(), HostIommuError> {
        Ok(())
    }
    fn invalidate_stage1(&self, batch: &[Stage1Invalidation]) -> Result<usize, HostIommuError> {
        Ok(self.invalidations_taken.unwrap_or(batch.len()))
    }
}

/// The same table is walked over what was invalidated in its domain, a
/// different one (or the same one after leaving the shadow path) in full;
/// a stage-1 table on a host without nesting is blocked.
#[test]
fn shadow_walks_what_changed() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let walks = RefCell::new(Vec::new());
    let (a, b) = (
        Recorder {
            id: 1,
            walks: &walks,
        },
        Recorder {
            id: 2,
            walks: &walks,
        },
    );
    let host = Arc::new(Host::default());
    let mut ep = HostEndpoint::new(host.clone());
    let shadowed = |table| EndpointDomain::Shadowed { did: 1, table };
    let mut all = HostDirty::default();
    all.everything();
    let mut some = HostDirty::default();
    some.range(Some(1), 0x3000, 0x4000);
    some.range(Some(2), 0x8000, 0x9000);
    some.range(None, 0x1000, 0x3000);
    some.range(Some(1), 0x7fff_0000_0000, u64::MAX);

    ep.sync(&mem, shadowed(a), &all);
    ep.sync(&mem, shadowed(a), &some);
    assert_eq!(ep.mode, Some(PassthroughMode::Shadow));
    ep.sync(&mem, shadowed(b), &some);
    ep.sync(&mem, EndpointDomain::Unfollowable { what: "nested" }, &some);
    assert_eq!(ep.mode, Some(PassthroughMode::Blocked));
    ep.sync(&mem, shadowed(b), &some);
    let table = first_stage(0x1000);
    ep.sync(&mem, EndpointDomain::Stage1 { did: 1, table }, &some);
    assert_eq!(ep.mode, Some(PassthroughMode::Blocked));

    let top = 1 << 39;
    assert_eq!(
        *walks.borrow(),
        vec![(0, top), (0x1000, 0x4000), (0, top), (0, top)]
    );
    assert_eq!(ep.entered, [0, 2, 2, 0]);
    assert_eq!(*host.attached.lock().unwrap(), vec![HostAttachment::Shadow]);
}

/// A table the host refuses fails at every wait the guest makes: each one
/// is counted, and the endpoint tries again next time (its attachment is
/// unknown), without the log growing with every wait (1st, 2nd, 4th …).
#[test]
fn refused_tables_are_counted_every_time() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let host = Host {
        nesting: true,
        refuse_nested: true,
        refuse_shadow: true,
        ..Default::default()
    };
    let mut ep: HostEndpoint<Recorder<'_>> = HostEndpoint::new(Arc::new(host));
    let table = first_stage(0x1000);
    let mut some = HostDirty::default();
    some.range(Some(1), 0x3000, 0x4000);
    for _ in 0..100 {
        let s = ep.sync(&mem, EndpointDomain::Stage1 { did: 1, table }, &some);
        assert_eq!((s.errors, s.nested_attaches), (1, 0));
    }
    assert_eq!(ep.host_errors, 100);
    assert_eq!(ep.mode, Some(PassthroughMode::Nested));
}

fn first_stage(pgtbl_addr: u64) -> Stage1Table {
    Stage1Table::VtdFirstStage {
        pgtbl_addr,
        addr_width: 48,
        sre: true,
        wpe: false,
    }
}

/// A batch the host takes only part of leaves stale translations in its
/// caches: before the guest's wait completes, the endpoint installs the
/// table afresh (nothing cached); if the host refuses that too, the device
/// is blocked rather than left on the stale table.
#[test]
fn a_partial_invalidation_reinstalls_the_table() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let table = first_stage(0x1000);
    let stage1 = EndpointDomain::Stage1 { did: 1, table };
    let mut some = HostDirty::default();
    some.range(Some(1), 0x3000, 0x5000);
    some.range(Some(1), 0x9000, 0xa000);

    let host = Arc::new(Host {
        nesting: true,
        invalidations_taken: Some(1),
        ..Default::default()
    });
    let mut ep: HostEndpoint<Recorder<'_>> = HostEndpoint::new(host.clone());
    assert_eq!(ep.sync(&mem, stage1, &some).nested_attaches, 1);
    let s = ep.sync(&mem, stage1, &some);
    assert_eq!((s.errors, s.stage1_batches, s.nested_attaches), (1, 1, 1));
    let nested = HostAttachment::Nested(table);
    assert_eq!(*host.attached.lock().unwrap(), vec![nested, nested]);
    assert_eq!(ep.mode, Some(PassthroughMode::Nested));

    // The host takes nothing of a batch, and then refuses the table: the
    // device is blocked; the next sync installs the table again.
    let host = Arc::new(Host {
        nesting: true,
        invalidations_taken: Some(0),
        ..Default::default()
    });
    let mut ep: HostEndpoint<Recorder<'_>> = HostEndpoint::new(host.clone());
    ep.sync(&mem, stage1, &some);
    let refusing = Arc::new(Host {
        nesting: true,
        refuse_nested: true,
        invalidations_taken: Some(0),
        ..Default::default()
    });
    ep.host = refusing.clone();
    assert_eq!(ep.sync(&mem, stage1, &some).errors, 1);
    assert_eq!(ep.mode, Some(PassthroughMode::Blocked));
    assert_eq!(ep.attached, Some(HostAttachment::Shadow));
    assert_eq!(
        *refusing.attached.lock().unwrap(),
        vec![HostAttachment::Shadow]
    );
    ep.host = host.clone();
    assert_eq!(ep.sync(&mem, stage1, &some).nested_attaches, 1);
    assert_eq!(ep.mode, Some(PassthroughMode::Nested));
}

/// A device on all of guest RAM whose guest switches to a first-stage
/// table the host refuses is blocked, not left with access to everything.
#[test]
fn a_refused_table_does_not_keep_the_bypass() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let host = Arc::new(Host {
        nesting: true,
        refuse_nested: true,
        ..Default::default()
    });
    let mut ep: HostEndpoint<Recorder<'_>> = HostEndpoint::new(host.clone());
    let mut all = HostDirty::default();
    all.everything();
    ep.sync(&mem, EndpointDomain::Identity, &all);
    assert_eq!(ep.mode, Some(PassthroughMode::Bypass));
    let table = first_stage(0x2000);
    let s = ep.sync(&mem, EndpointDomain::Stage1 { did: 3, table }, &all);
    assert_eq!((s.errors, s.nested_attaches), (1, 0));
    assert_eq!(ep.mode, Some(PassthroughMode::Blocked));
    assert_eq!(
        *host.attached.lock().unwrap(),
        vec![HostAttachment::Bypass, HostAttachment::Shadow]
    );
}

/// A table with no leaves, shareable between threads.
#[derive(Clone, Copy, PartialEq)]
struct NoLeaves;

impl ShadowTable for NoLeaves {
    fn for_each_leaf(
        &self,
        _: &GuestMemoryMmap,
        _: u64,
        _: u64,
        _: u64,
        _: &mut dyn FnMut(LeafRange),
    ) -> Result<LeafScan, LeafScanError> {
        Ok(LeafScan::default())
    }

    fn input_end(&self) -> u64 {
        1 << 39
    }
}

/// Host syncs are planned under the model's lock and applied after it: the
/// host sees them in the order they were planned, whichever thread reaches
/// it first, and a sync that unwinds hands the turn on.
#[test]
fn host_syncs_are_applied_in_the_order_they_were_planned() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let host = Arc::new(Host {
        nesting: true,
        ..Default::default()
    });
    let sync = HostSync::<NoLeaves>::default();
    let mut planner = SyncPlanner::default();
    assert!(!planner.has_endpoints());
    planner.register(sync.add(HostEndpoint::new(host.clone())));
    let table = first_stage(0x1000);
    let mut plan = |domain: EndpointDomain<NoLeaves>| {
        planner.dirty.everything();
        planner.plan(|rid, pasid| {
            assert_eq!((rid, pasid), (0x10, None));
            domain
        })
    };
    let first = plan(EndpointDomain::Identity).unwrap();
    let second = plan(EndpointDomain::Stage1 { did: 1, table }).unwrap();
    let third = plan(EndpointDomain::Identity).unwrap();
    let unwinds = plan(EndpointDomain::Blocked).unwrap();
    let last = plan(EndpointDomain::Identity).unwrap();
    assert!(
        planner
            .plan(|_, _| EndpointDomain::<NoLeaves>::Blocked)
            .is_none(),
        "nothing changed since the last plan"
    );
    std::thread::scope(|s| {
        let late = [
            s.spawn(|| sync.apply(&mem, third, |_| {})),
            s.spawn(|| sync.apply(&mem, second, |_| {})),
        ];
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            late.iter().all(|t| !t.is_finished()),
            "a later plan went first"
        );
        sync.apply(&mem, first, |_| {});
        for t in late {
            t.join().unwrap();
        }
    });
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sync.apply(&mem, unwinds, |_| panic!("a host call unwinds"))
    }));
    assert!(panicked.is_err());
    sync.apply(&mem, last, |_| {});
    use HostAttachment::{Bypass, Nested, Shadow};
    assert_eq!(
        *host.attached.lock().unwrap(),
        vec![Bypass, Nested(table), Bypass, Shadow, Bypass]
    );
    sync.with_endpoints(|e| assert_eq!(e.len(), 1));
}

/// A PASID's nested table follows the same rules as the device's: a batch
/// the host takes only part of installs the table afresh, a table the host
/// refuses leaves the PASID detached (never on what it had), and a PASID
/// past the device's width on the host is never attached.
#[test]
fn pasid_tables_are_reinstalled_refused_or_out_of_range() {
    let table = first_stage(0x1000);
    let stage1 = EndpointDomain::<NoLeaves>::Stage1 { did: 2, table };
    let mut some = HostDirty::default();
    some.range(Some(2), 0x3000, 0x5000);
    let host = Arc::new(Host {
        nesting: true,
        pasid_log2: 4,
        invalidations_taken: Some(0),
        ..Default::default()
    });
    let mut ep = HostEndpoint::new(host.clone());
    let s = ep.sync_pasid(3, &stage1, &some);
    assert_eq!((s.nested_attaches, s.errors), (1, 0));
    let s = ep.sync_pasid(3, &stage1, &some);
    assert_eq!((s.nested_attaches, s.errors, s.stage1_batches), (1, 1, 1));
    let nested = PasidAttachment::Nested(table);
    assert_eq!(*host.pasid_attached.lock().unwrap(), vec![(3, nested); 2]);
    // Past 2^4: nothing.
    let s = ep.sync_pasid(16, &stage1, &some);
    assert_eq!((s.nested_attaches, s.errors), (0, 0));
    assert_eq!(host.pasid_attached.lock().unwrap().len(), 2);

    let host = Arc::new(Host {
        nesting: true,
        pasid_log2: 4,
        refuse_nested_pasid: true,
        ..Default::default()
    });
    let mut ep = HostEndpoint::new(host.clone());
    ep.sync_pasid(3, &EndpointDomain::Identity, &some);
    let s = ep.sync_pasid(3, &stage1, &some);
    assert_eq!(s.errors, 1);
    assert_eq!(
        *host.pasid_attached.lock().unwrap(),
        vec![(3, PasidAttachment::Bypass), (3, PasidAttachment::Detached)]
    );
    // Detached is known: a later blocked entry costs no call.
    ep.sync_pasid(3, &EndpointDomain::Blocked, &some);
    assert_eq!(host.pasid_attached.lock().unwrap().len(), 2);
}

/// The model follows at most `MAX_TRACKED_PASIDS` PASIDs, and never
/// PASID 0 (the device's requests without PASID).
#[test]
fn tracked_pasids_are_bounded() {
    let mut t = super::pasid::TrackedPasids::default();
    for p in 0..10_000 {
        t.note(p);
    }
    assert_eq!(t.iter().count(), super::pasid::MAX_TRACKED_PASIDS);
    assert_eq!(t.iter().next(), Some(1));
}

mod page_requests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::page_requests::{HostPageRequests, PageRequestBridge, MAX_OPEN_GROUPS};
    use super::*;
    use crate::iommufd::{IommufdError, PageFault, PageResponseCode};
    use crate::{Access, AtsEndpoint, DmaFault, PageRequest, Translate, Translation};

    /// The host's fault queue: what it hands over, and the answers.
    #[derive(Default)]
    struct Queue {
        pending: Mutex<Vec<PageFault>>,
        answers: Mutex<Vec<(u32, PageResponseCode)>>,
    }

    impl HostPageRequests for Queue {
        fn read(&self) -> Result<Vec<PageFault>, IommufdError> {
            Ok(std::mem::take(&mut *self.pending.lock().unwrap()))
        }
        fn respond(&self, cookie: u32, code: PageResponseCode) -> Result<(), IommufdError> {
            self.answers.lock().unwrap().push((cookie, code));
            Ok(())
        }
    }

    /// The emulated IOMMU's page request queue, which may be full.
    #[derive(Default)]
    struct Prq {
        queued: Mutex<Vec<PageRequest>>,
        full: std::sync::atomic::AtomicBool,
    }

    impl Translate for Prq {
        fn translate(
            &self,
            _: u16,
            _: Option<u32>,
            _: u64,
            _: u64,
            _: Access,
        ) -> Result<Vec<Translation>, DmaFault> {
            unreachable!("the bridge translates nothing")
        }
        fn page_request(&self, req: &PageRequest) -> Result<(), DmaFault> {
            if self.full.load(Relaxed) {
                return Err(DmaFault::Blocked {
                    iova: req.address,
                    len: 0,
                    reason: "full".into(),
                });
            }
            self.queued.lock().unwrap().push(*req);
            Ok(())
        }
    }

    fn fault(pasid: Option<u32>, grpid: u32, addr: u64, last: bool, cookie: u32) -> PageFault {
        let mut flags = 0;
        if pasid.is_some() {
            flags |= PageFault::FLAG_PASID_VALID;
        }
        if last {
            flags |= PageFault::FLAG_LAST_PAGE;
        }
        PageFault {
            flags,
            dev_id: 1,
            pasid: pasid.unwrap_or(0),
            grpid,
            perm: PageFault::PERM_READ | PageFault::PERM_WRITE,
            addr,
            length: 0,
            cookie,
        }
    }

    fn rig() -> (Arc<Queue>, Arc<Prq>, PageRequestBridge) {
        let (q, prq) = (Arc::new(Queue::default()), Arc::new(Prq::default()));
        let b = PageRequestBridge::new(0x10, q.clone(), prq.clone());
        (q, prq, b)
    }

    /// A group of two requests reaches the guest's queue as the device
    /// sent it; the guest's response goes back with the group's cookie,
    /// once.
    #[test]
    fn a_page_request_group_goes_to_the_guest_and_its_answer_back() {
        let (q, prq, b) = rig();
        *q.pending.lock().unwrap() = vec![
            fault(Some(5), 3, 0x7000_0123, false, 41),
            fault(Some(5), 3, 0x7000_1000, true, 42),
        ];
        b.forward();
        let queued = prq.queued.lock().unwrap().clone();
        assert_eq!(queued.len(), 2);
        assert_eq!(
            queued[0],
            PageRequest {
                requester_id: 0x10,
                pasid: Some(5),
                address: 0x7000_0000,
                read: true,
                write: true,
                exec: false,
                privileged: false,
                prg_index: 3,
                last: false,
            }
        );
        assert!(queued[1].last);
        b.page_response(Some(5), 3, 0);
        b.page_response(Some(5), 3, 0);
        b.page_response(None, 3, 0);
        assert_eq!(
            *q.answers.lock().unwrap(),
            vec![(42, PageResponseCode::Success)]
        );
        assert_eq!(b.counters.stray_responses.load(Relaxed), 2);
        // Response failure (0xf) and invalid request (1) both fail.
        *q.pending.lock().unwrap() = vec![fault(None, 7, 0x1000, true, 43)];
        b.forward();
        b.page_response(None, 7, 0xf);
        assert_eq!(
            q.answers.lock().unwrap()[1],
            (43, PageResponseCode::Invalid)
        );
    }

    /// A full page request queue fails the group at once (the guest never
    /// sees it); so does a group past the bound on open groups.
    #[test]
    fn requests_the_guest_cannot_take_fail_at_once() {
        let (q, prq, b) = rig();
        prq.full.store(true, Relaxed);
        *q.pending.lock().unwrap() = vec![fault(Some(1), 0, 0x1000, true, 9)];
        b.forward();
        assert_eq!(
            *q.answers.lock().unwrap(),
            vec![(9, PageResponseCode::Invalid)]
        );
        b.page_response(Some(1), 0, 0);
        assert_eq!(b.counters.stray_responses.load(Relaxed), 1);

        prq.full.store(false, Relaxed);
        q.answers.lock().unwrap().clear();
        // A guest that never answers: the open groups stay bounded.
        let groups = (0..MAX_OPEN_GROUPS as u32 + 1)
            .map(|i| fault(Some(i / 512 + 1), i % 512, 0x1000, true, 100 + i))
            .collect();
        *q.pending.lock().unwrap() = groups;
        b.forward();
        assert_eq!(prq.queued.lock().unwrap().len(), MAX_OPEN_GROUPS);
        let last = 100 + MAX_OPEN_GROUPS as u32;
        assert_eq!(
            *q.answers.lock().unwrap(),
            vec![(last, PageResponseCode::Invalid)]
        );
        assert_eq!(b.counters.refused.load(Relaxed), 2);
    }
}
