//! Passthrough endpoints: the host IOMMU following the guest through the
//! unit (bypass, shadow, nested), against a host that records its calls.

use super::*;
use crate::host::{
    HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping, HostPerm,
    PasidAttachment, Stage1Invalidation, Stage1Table,
};
use crate::intel::PassthroughMode;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Attach(HostAttachment),
    Map(u64, u64, u64, HostPerm),
    Unmap(u64, u64),
    Invalidate(Vec<Stage1Invalidation>),
    AttachPasid(u32, PasidAttachment),
    InvalidatePasid(u32, Vec<Stage1Invalidation>),
}

/// Records what the unit asks of the host.
#[derive(Default)]
struct FakeHost {
    calls: Mutex<Vec<Call>>,
    nesting: bool,
    /// The device's PASID width on the host (0: no PASIDs).
    pasid_log2: u8,
}

impl FakeHost {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl HostIommu for FakeHost {
    fn requester_id(&self) -> u16 {
        SID
    }
    fn capabilities(&self) -> HostCapabilities {
        HostCapabilities {
            nesting: self.nesting,
            max_pasid_log2: self.pasid_log2,
            page_requests: false,
        }
    }
    fn attach(&self, to: HostAttachment) -> Result<(), HostIommuError> {
        self.calls.lock().unwrap().push(Call::Attach(to));
        Ok(())
    }
    fn attach_pasid(&self, pasid: u32, to: PasidAttachment) -> Result<(), HostIommuError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::AttachPasid(pasid, to));
        Ok(())
    }
    fn invalidate_stage1_pasid(
        &self,
        pasid: u32,
        b: &[Stage1Invalidation],
    ) -> Result<usize, HostIommuError> {
        let call = Call::InvalidatePasid(pasid, b.to_vec());
        self.calls.lock().unwrap().push(call);
        Ok(b.len())
    }
    fn invalidate_stage1(&self, b: &[Stage1Invalidation]) -> Result<usize, HostIommuError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Invalidate(b.to_vec()));
        Ok(b.len())
    }
    fn shadow_map(&self, m: &[HostMapping]) -> Result<(), HostIommuError> {
        let mut c = self.calls.lock().unwrap();
        for m in m {
            c.push(Call::Map(m.iova, m.gpa, m.len, m.perm));
        }
        Ok(())
    }
    fn shadow_unmap(&self, iova: u64, len: u64) -> Result<(), HostIommuError> {
        self.calls.lock().unwrap().push(Call::Unmap(iova, len));
        Ok(())
    }
}

const WO: HostPerm = HostPerm {
    read: false,
    write: true,
};

fn mode(r: &Rig) -> Option<PassthroughMode> {
    r.u.passthrough_modes()[0].1
}

#[test]
fn shadow_follows_second_stage_invalidations() {
    let mut cfg = Rig::legacy_cfg(48);
    cfg.caching_mode = true;
    let r = Rig::new(cfg);
    let sl = r.alloc();
    r.put(ROOT, CTX | 1);
    r.put(CTX + DEVFN * 16, sl | 1);
    r.put(CTX + DEVFN * 16 + 8, aw(4) | DID << 8);
    r.map_sl(sl, 4, 0x5000, DATA, R | W);
    r.map_sl(sl, 4, 0x6000, DATA + 0x1000, R | W);
    r.map_sl(sl, 4, 0x7000, DATA + 0x3000, W);
    let host = Arc::new(FakeHost::default());
    r.u.add_host_endpoint(host.clone());
    // Translation is off: guest RAM, IOVA = GPA.
    assert_eq!(host.take(), vec![Call::Attach(HostAttachment::Bypass)]);
    assert_eq!(mode(&r), Some(PassthroughMode::Bypass));

    r.set_root(ROOT);
    r.cmd(GCMD_TE);
    // The whole table is mirrored before the device moves to it;
    // contiguous pages with the same rights are one mapping.
    assert_eq!(
        host.take(),
        vec![
            Call::Map(0x5000, DATA, 0x2000, HostPerm::RW),
            Call::Map(0x7000, DATA + 0x3000, 0x1000, WO),
            Call::Attach(HostAttachment::Shadow),
        ]
    );
    assert_eq!(mode(&r), Some(PassthroughMode::Shadow));
    assert_eq!(r.u.shadow_live_bytes(), 0x3000);

    // The guest unmaps a page and invalidates it: the host area is
    // replaced by what remains.
    r.qi_enable(false);
    host.take();
    let slot = r.leaf_slot(sl, 4, 0x6000);
    r.put(slot, 0);
    r.submit(&[d_iotlb(3, DID, 0x6000, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![
            Call::Unmap(0x5000, 0x2000),
            Call::Map(0x5000, DATA, 0x1000, HostPerm::RW)
        ]
    );
    // Caching mode: a new map is invalidated too, and appears.
    r.map_sl(sl, 4, 0x9000, DATA + 0x8000, R);
    r.submit(&[d_iotlb(3, DID, 0x9000, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![Call::Map(0x9000, DATA + 0x8000, 0x1000, HostPerm::RO)]
    );
    // An invalidation of another domain changes nothing.
    r.put(r.leaf_slot(sl, 4, 0x9000), 0);
    r.submit(&[
        d_iotlb(3, DID + 1, 0x9000, 0),
        d_wait(false, Some((STATUS, 1))),
    ]);
    assert_eq!(host.take(), vec![]);
    // A domain-selective one does.
    r.submit(&[d_iotlb(2, DID, 0, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(host.take(), vec![Call::Unmap(0x9000, 0x1000)]);

    // Pass-through context: the shadow empties, the device goes to
    // guest RAM.
    r.put(CTX + DEVFN * 16, 1 | 2 << 2);
    r.submit(&[d_cc(1, 0, 0, 0), d_wait(false, Some((STATUS, 1)))]);
    let calls = host.take();
    assert_eq!(calls.last(), Some(&Call::Attach(HostAttachment::Bypass)));
    assert_eq!(r.u.shadow_live_bytes(), 0);
    assert_eq!(mode(&r), Some(PassthroughMode::Bypass));

    // No context at all: blocked (the empty shadow space).
    r.put(CTX + DEVFN * 16, 0);
    r.submit(&[d_cc(1, 0, 0, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(host.take(), vec![Call::Attach(HostAttachment::Shadow)]);
    assert_eq!(mode(&r), Some(PassthroughMode::Blocked));
    assert!(r.u.counters.host_syncs.load(Relaxed) > 5);
    assert_eq!(r.u.counters.host_errors.load(Relaxed), 0);
}

#[test]
fn register_based_invalidation_syncs_too() {
    let (r, sl) = legacy_rig();
    let host = Arc::new(FakeHost::default());
    r.u.add_host_endpoint(host.clone());
    assert_eq!(mode(&r), Some(PassthroughMode::Shadow));
    host.take();
    r.map_sl(sl, 4, 0x20_0000, DATA + 0x10_0000, R | W);
    // IOTLB register, domain-selective.
    r.w64(IOTLB, IOTLB_IVT | 2 << 60 | DID << 32);
    assert_eq!(
        host.take(),
        vec![Call::Map(0x20_0000, DATA + 0x10_0000, 0x1000, HostPerm::RW)]
    );
}

/// A page-selective invalidation with an address mask of 52 or more
/// (2^AM pages are more than the 64-bit space; AM is a 6-bit field, so
/// a guest can write up to 63) covers everything: what the guest
/// unmapped leaves the host IOMMU, as it leaves the IOTLB. The host
/// path once computed an empty range there (a debug build panicked)
/// and kept the mapping.
#[test]
fn bug_huge_address_mask_unmaps_from_the_host() {
    // Legacy: IOTLB descriptors, and the IVA register.
    let (r, sl) = legacy_rig();
    let host = Arc::new(FakeHost::default());
    r.u.add_host_endpoint(host.clone());
    r.qi_enable(false);
    let slot = r.leaf_slot(sl, 4, 0x5000);
    let remap = |r: &Rig| {
        r.put(slot, DATA | R | W);
        r.submit(&[d_iotlb(3, DID, 0x5000, 0), d_wait(false, Some((STATUS, 1)))]);
        assert_eq!(r.u.shadow_live_bytes(), 0x3000);
        host.take();
    };
    for am in 52..=63u64 {
        remap(&r);
        r.put(slot, 0);
        // The mask makes every address bit irrelevant.
        r.submit(&[
            d_iotlb(3, DID, 0x1234_5000, am),
            d_wait(false, Some((STATUS, 1))),
        ]);
        assert_eq!(host.take(), vec![Call::Unmap(0x5000, 0x1000)], "AM {am}");
        assert_eq!(r.u.shadow_live_bytes(), 0x2000, "AM {am}");
        assert!(r.read(0x5000).is_err(), "AM {am}: still in the IOTLB");
    }
    for am in 52..=63u64 {
        remap(&r);
        r.put(slot, 0);
        r.w64(IVA, 0x1234_5000 | am);
        r.w64(IOTLB, IOTLB_IVT | 3 << 60 | DID << 32);
        assert_eq!(
            host.take(),
            vec![Call::Unmap(0x5000, 0x1000)],
            "IVA AM {am}"
        );
        assert_eq!(r.u.shadow_live_bytes(), 0x2000, "IVA AM {am}");
    }

    // Scalable: PASID-based IOTLB descriptors for RID_PASID.
    let (r, sl) = ss_rig();
    let host = Arc::new(FakeHost::default());
    r.u.add_host_endpoint(host.clone());
    r.qi_enable(false);
    let slot = r.leaf_slot(sl, 4, 0x5000);
    for am in 52..=63u64 {
        r.put(slot, DATA | R | W);
        r.submit(&[
            d_piotlb(3, DID, 0, 0x5000, 0),
            d_wait(false, Some((STATUS, 1))),
        ]);
        assert_eq!(r.u.shadow_live_bytes(), 0x3000);
        host.take();
        r.put(slot, 0);
        r.submit(&[
            d_piotlb(3, DID, 0, 0x1234_5000, am),
            d_wait(false, Some((STATUS, 1))),
        ]);
        assert_eq!(
            host.take(),
            vec![Call::Unmap(0x5000, 0x1000)],
            "P_IOTLB AM {am}"
        );
        assert_eq!(r.u.shadow_live_bytes(), 0x2000, "P_IOTLB AM {am}");
    }
}

#[test]
fn first_stage_tables_block_the_device() {
    let (r, _) = fs_rig();
    let host = Arc::new(FakeHost::default());
    r.u.add_host_endpoint(host.clone());
    assert_eq!(mode(&r), Some(PassthroughMode::Blocked));
    assert_eq!(host.take(), vec![Call::Attach(HostAttachment::Shadow)]);
}

fn fs(pgtbl_addr: u64, addr_width: u8, sre: bool) -> HostAttachment {
    HostAttachment::Nested(Stage1Table::VtdFirstStage {
        pgtbl_addr,
        addr_width,
        sre,
        wpe: false,
    })
}

fn inv(addr: u64, npages: u64) -> Stage1Invalidation {
    Stage1Invalidation {
        addr,
        npages,
        leaf: false,
    }
}

#[test]
fn first_stage_tables_are_nested_on_a_host_that_nests() {
    let (r, fl) = fs_rig();
    let host = Arc::new(FakeHost {
        nesting: true,
        ..Default::default()
    });
    r.u.add_host_endpoint(host.clone());
    // The guest's table, as the PASID entry says: no map calls.
    assert_eq!(host.take(), vec![Call::Attach(fs(fl, 48, true))]);
    assert_eq!(mode(&r), Some(PassthroughMode::Nested));

    // Everything queued up to the wait is one host call, in order;
    // other domains' invalidations are not the device's.
    r.qi_enable(false);
    r.submit(&[
        d_piotlb(3, DID, 0, 0x5000, 0),
        d_piotlb(3, DID + 1, 0, 0x9000, 0),
        d_piotlb(3, DID, 0, 0x10_0000, 4),
        d_iotlb(3, DID, 0x20_0000, 9),
        d_wait(false, Some((STATUS, 1))),
    ]);
    assert_eq!(
        host.take(),
        vec![Call::Invalidate(vec![
            inv(0x5000, 1),
            inv(0x10_0000, 16),
            inv(0x20_0000, 512),
        ])]
    );
    // A PASID-selective one is the whole table.
    r.submit(&[d_piotlb(2, DID, 0, 0, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![Call::Invalidate(vec![Stage1Invalidation::ALL])]
    );
    // An AM past the address space too (no end that wraps).
    r.submit(&[d_piotlb(3, DID, 0, 0, 60), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![Call::Invalidate(vec![Stage1Invalidation::ALL])]
    );
    // A batch with nothing for the domain makes no call.
    r.submit(&[
        d_piotlb(3, DID + 1, 0, 0, 0),
        d_wait(false, Some((STATUS, 1))),
    ]);
    assert_eq!(host.take(), vec![]);

    // A new table (PASID cache invalidated): a new nested table; 5
    // levels give a 57-bit input.
    let fl5 = r.alloc();
    r.pasid_entry(0, pe_first(fl5, 5, false, false));
    r.submit(&[d_pc(1, DID, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(host.take(), vec![Call::Attach(fs(fl5, 57, false))]);
    assert_eq!(r.u.counters.host_nested_attaches.load(Relaxed), 2);

    // Second-stage tables are still shadowed (caching mode).
    let sl = r.alloc();
    r.map_sl(sl, 4, 0x5000, DATA, R | W);
    r.pasid_entry(0, pe_second(sl, 4));
    r.submit(&[d_pc(1, DID, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![
            Call::Map(0x5000, DATA, 0x1000, HostPerm::RW),
            Call::Attach(HostAttachment::Shadow)
        ]
    );
    assert_eq!(mode(&r), Some(PassthroughMode::Shadow));

    // Back to first stage: the shadow empties first.
    r.pasid_entry(0, pe_first(fl, 4, true, false));
    r.submit(&[d_pc(1, DID, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![Call::Unmap(0x5000, 0x1000), Call::Attach(fs(fl, 48, true))]
    );
    assert_eq!(r.u.shadow_live_bytes(), 0);

    // Nested tables from the guest cannot be nested again: blocked.
    r.pasid_entry(0, pe_nested(fl, 4, sl, 4));
    r.submit(&[d_pc(1, DID, 0), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(host.take(), vec![Call::Attach(HostAttachment::Shadow)]);
    assert_eq!(mode(&r), Some(PassthroughMode::Blocked));
    assert_eq!(r.u.counters.host_errors.load(Relaxed), 0);
    assert_eq!(r.u.counters.host_stage1_batches.load(Relaxed), 3);
}

fn stage1(pgtbl_addr: u64, sre: bool) -> Stage1Table {
    Stage1Table::VtdFirstStage {
        pgtbl_addr,
        addr_width: 48,
        sre,
        wpe: false,
    }
}

/// PASIDs other than RID_PASID follow their PASID entries on a host that
/// nests and gives the device PASIDs. A PASID-selective PASID-cache
/// invalidation announces one; a first-stage entry becomes a nested table
/// on the PASID, whose P_IOTLB invalidations go down as one batch to that
/// PASID's table; a pass-through entry puts the PASID on the nest parent;
/// a cleared entry detaches it, and it is no longer followed.
#[test]
fn pasids_follow_their_entries_on_a_host_that_nests() {
    let (r, fl) = fs_rig();
    let host = Arc::new(FakeHost {
        nesting: true,
        pasid_log2: 8,
        ..Default::default()
    });
    r.u.add_host_endpoint(host.clone());
    assert_eq!(host.take(), vec![Call::Attach(fs(fl, 48, true))]);
    r.qi_enable(false);
    let all = || vec![Stage1Invalidation::ALL];

    // PASID 5: a first-stage table of its own, in domain DID + 1.
    let fl5 = r.alloc();
    r.map_fl(fl5, 4, 0x8000, DATA, P | RW | US);
    let mut pe = pe_first(fl5, 4, false, false);
    pe[1] = DID + 1;
    r.pasid_entry(5, pe);
    r.submit(&[d_pc(1, DID + 1, 5), d_wait(false, Some((STATUS, 1)))]);
    let nested5 = PasidAttachment::Nested(stage1(fl5, false));
    assert_eq!(
        host.take(),
        vec![Call::Invalidate(all()), Call::AttachPasid(5, nested5)]
    );

    // Its invalidations reach its table, in one call, and not the RID's.
    r.submit(&[
        d_piotlb(3, DID + 1, 5, 0x8000, 0),
        d_piotlb(3, DID + 1, 5, 0x10_0000, 1),
        d_wait(false, Some((STATUS, 1))),
    ]);
    assert_eq!(
        host.take(),
        vec![Call::InvalidatePasid(
            5,
            vec![inv(0x8000, 1), inv(0x10_0000, 2)]
        )]
    );

    // PASID 7 passes through: the nest parent.
    let mut pe = pe_pass_through();
    pe[1] = DID + 2;
    r.pasid_entry(7, pe);
    r.submit(&[d_pc(1, DID + 2, 7), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![
            Call::Invalidate(all()),
            Call::InvalidatePasid(5, all()),
            Call::AttachPasid(7, PasidAttachment::Bypass),
        ]
    );

    // PASID 5's entry is cleared: detached, and then no longer followed.
    r.pasid_entry(5, [0, 0, 0]);
    r.submit(&[d_pc(1, DID + 1, 5), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(
        host.take(),
        vec![
            Call::Invalidate(all()),
            Call::AttachPasid(5, PasidAttachment::Detached)
        ]
    );
    r.submit(&[d_pc(1, DID + 2, 7), d_wait(false, Some((STATUS, 1)))]);
    assert_eq!(host.take(), vec![Call::Invalidate(all())]);
    assert_eq!(r.u.counters.host_errors.load(Relaxed), 0);
}

/// Without nesting on the host, or without PASIDs for the device, PASID
/// entries cost no host call: the PASIDs stay detached.
#[test]
fn pasids_stay_detached_without_host_pasids() {
    for (nesting, pasid_log2) in [(true, 0), (false, 8)] {
        let (r, fl) = fs_rig();
        let host = Arc::new(FakeHost {
            nesting,
            pasid_log2,
            ..Default::default()
        });
        r.u.add_host_endpoint(host.clone());
        host.take();
        r.qi_enable(false);
        r.pasid_entry(5, pe_first(fl, 4, false, false));
        r.submit(&[d_pc(1, DID, 5), d_wait(false, Some((STATUS, 1)))]);
        let calls = host.take();
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::AttachPasid(..) | Call::InvalidatePasid(..))),
            "{calls:?}"
        );
    }
}
