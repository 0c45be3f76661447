//! Register-based and queued invalidation: every descriptor type, waits
//! and queue errors.

use super::*;

fn d_devtlb(sid: u64, addr: u64) -> [u64; 4] {
    [3 | sid << 32, addr, 0, 0]
}
fn d_iec(index: Option<(u64, u64)>) -> [u64; 4] {
    match index {
        None => [4, 0, 0, 0],
        Some((idx, im)) => [4 | 1 << 4 | im << 27 | idx << 32, 0, 0, 0],
    }
}
fn d_pdevtlb(sid: u64, pasid: u64, addr: u64) -> [u64; 4] {
    [8 | sid << 16 | pasid << 32, addr, 0, 0]
}

#[test]
fn qi_iotlb_invalidation_granularities() {
    let (r, t) = legacy_rig();
    r.qi_enable(false);
    assert_ne!(r.r32(GSTS) & GSTS_QIES, 0);
    let slot = r.leaf_slot(t, 4, 0x5000);
    let remap = |out: u64| r.put(slot, out | R | W);
    assert_eq!(r.read(0x5000), Ok(DATA));
    for (desc, fresh) in [
        (d_iotlb(3, DID, 0x9000, 0), false), // another page
        (d_iotlb(3, 2, 0x5000, 0), false),   // another domain
        (d_iotlb(2, 2, 0, 0), false),        // another domain
        (d_iotlb(3, DID, 0x5000, 0), true),  // page-selective
        (d_iotlb(3, DID, 0x4000, 2), true),  // AM 2: 0x4000..0x7fff
        (d_iotlb(3, DID, 0x0000, 4), true),  // AM 4: 0x0000..0xffff
        (d_iotlb(2, DID, 0, 0), true),       // domain-selective
        (d_iotlb(1, 0, 0, 0), true),         // global
    ] {
        let old = r.read(0x5000).unwrap();
        let new = old ^ 0x10_0000;
        remap(new);
        assert_eq!(r.read(0x5000), Ok(old), "stale until invalidated");
        let n = r.inv_count(2);
        r.submit(&[desc]);
        assert_eq!(r.inv_count(2), n + 1);
        let want = if fresh { new } else { old };
        assert_eq!(r.read(0x5000), Ok(want), "{desc:x?}");
        if !fresh {
            // Leave it fresh for the next round.
            r.submit(&[d_iotlb(1, 0, 0, 0)]);
            assert_eq!(r.read(0x5000), Ok(new));
        }
    }
    assert_eq!(r.r32(FSTS), 0);
    assert_eq!(r.r64(IQH), r.qtail.get());
}

#[test]
fn qi_iotlb_invalidation_of_large_pages() {
    let (r, t) = legacy_rig();
    r.qi_enable(false);
    r.map(t, 4, 0x4000_0000, 3, (GIB1 * 3) | R | W | PS, R | W);
    assert_eq!(r.read(0x4012_3456), Ok(GIB1 * 3 + 0x12_3456));
    r.map(t, 4, 0x4000_0000, 3, (GIB1 * 5) | R | W | PS, R | W);
    assert_eq!(r.read(0x4000_0000), Ok(GIB1 * 3), "served from the IOTLB");
    // A 4 KiB invalidation anywhere inside the 1 GiB page removes it.
    r.submit(&[d_iotlb(3, DID, 0x4abc_d000, 0)]);
    assert_eq!(r.read(0x4000_0000), Ok(GIB1 * 5));
}

#[test]
fn qi_context_cache_invalidation() {
    let (r, t) = legacy_rig();
    r.qi_enable(false);
    assert_eq!(r.read(0x5000), Ok(DATA));
    let ctx = CTX + DEVFN * 16;
    // Switch the device to pass-through: stale until the context cache
    // (and the IOTLB, for the old domain) is invalidated.
    for (desc, fresh) in [
        (d_cc(2, 7, 0, 0), false),                 // another domain
        (d_cc(3, DID, 0x0010, 0), false),          // another device
        (d_cc(3, DID, 0x000c, 0), false),          // 00:01.4
        (d_cc(3, DID, 0x0009, 2), false),          // FM 2 keeps function bit 0
        (d_cc(3, DID, 0x000c, 2), true),           // FM 2: 00:01.{0,2,4,6}
        (d_cc(3, DID, SID as u64, 0), true),       // device-selective
        (d_cc(3, DID, (SID | 7) as u64, 3), true), // FM 3: all of 00:01
        (d_cc(2, DID, 0, 0), true),                // domain-selective
        (d_cc(1, 0, 0, 0), true),                  // global
    ] {
        r.put(ctx, t | 1);
        r.put(ctx + 8, aw(4) | DID << 8);
        r.submit(&[d_cc(1, 0, 0, 0)]);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.put(ctx, 1 | 2 << 2); // TT = 10b: pass-through
        assert_eq!(r.read(0x5000), Ok(DATA), "cached context");
        let n = r.inv_count(1);
        r.submit(&[desc]);
        assert_eq!(r.inv_count(1), n + 1);
        let want = if fresh { Ok(0x5000) } else { Ok(DATA) };
        assert_eq!(r.read(0x5000), want, "{desc:x?}");
    }
}

#[test]
fn qi_wait_with_status_write_and_interrupt() {
    let (r, _) = legacy_rig();
    r.qi_enable(false);
    // Status write.
    r.submit(&[d_wait(false, Some((STATUS, 0xdead_beef)))]);
    assert_eq!(r.get(STATUS) as u32, 0xdead_beef);
    assert_eq!(r.inv_count(5), 1);
    assert_eq!(r.u.counters.invalidation_waits.load(Relaxed), 1);
    assert_eq!(r.r32(ICS), 0, "no IF: IWC untouched");
    // Interrupt while IECTL is masked (its reset state): held.
    assert_eq!(r.r32(IECTL), CTL_IM);
    r.submit(&[d_wait(true, Some((STATUS + 4, 7)))]);
    assert_eq!(r.get(STATUS + 4) as u32, 7);
    assert_eq!(r.r32(ICS), ICS_IWC);
    assert_eq!(r.r32(IECTL), CTL_IM | CTL_IP);
    assert_eq!(r.msis(), vec![]);
    r.w32(IECTL, 0);
    assert_eq!(r.msis(), vec![(IE_ADDR as u64, IE_DATA)], "sent on unmask");
    assert_eq!(r.r32(IECTL), 0);
    // IWC still set: a further wait raises no new interrupt.
    r.submit(&[d_wait(true, None)]);
    assert_eq!(r.msis().len(), 1);
    // IWC is RW1C; once clear, the next wait interrupts at once.
    r.w32(ICS, ICS_IWC);
    assert_eq!(r.r32(ICS), 0);
    r.submit(&[d_wait(true, None)]);
    assert_eq!(r.r32(ICS), ICS_IWC);
    assert_eq!(r.msis().len(), 2);
    assert_eq!(r.msis()[1], (IE_ADDR as u64, IE_DATA));
    assert_eq!(r.u.counters.invalidation_waits.load(Relaxed), 4);
    // Waits run in order with the descriptors around them.
    r.w32(ICS, ICS_IWC);
    r.submit(&[
        d_wait(false, Some((STATUS, 1))),
        d_iotlb(1, 0, 0, 0),
        d_wait(false, Some((STATUS, 2))),
    ]);
    assert_eq!(r.get(STATUS) as u32, 2);
    assert_eq!(r.r64(IQH), r.qtail.get());
    // A status address outside memory does not stop the queue.
    r.submit(&[
        d_wait(false, Some((OUTSIDE, 1))),
        d_wait(false, Some((STATUS, 3))),
    ]);
    assert_eq!(r.get(STATUS) as u32, 3);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
}

/// Records what reaches a device with a device TLB.
#[derive(Default)]
struct Endpoint {
    invalidations: Mutex<Vec<Option<u32>>>,
    responses: Mutex<Vec<(Option<u32>, u16, u8)>>,
}
impl crate::AtsEndpoint for Endpoint {
    fn page_response(&self, pasid: Option<u32>, prg_index: u16, code: u8) {
        self.responses
            .lock()
            .unwrap()
            .push((pasid, prg_index, code));
    }
    fn invalidate_atc(&self, pasid: Option<u32>) {
        self.invalidations.lock().unwrap().push(pasid);
    }
}

#[test]
fn qi_device_tlb_iec_and_page_group_response() {
    let r = Rig::new(VtdConfig {
        pasid_bits: 8,
        ..VtdConfig::default()
    });
    let ep = Arc::new(Endpoint::default());
    let weak: std::sync::Weak<dyn crate::AtsEndpoint> = Arc::downgrade(&ep) as _;
    r.u.register_endpoint(SID, weak);
    r.qi_enable(true);
    let changes = r.sink.remap_changes.load(Relaxed);
    r.submit(&[
        d_devtlb(SID as u64, 0x5000),
        d_devtlb(0x0010, 0x5000), // no endpoint there
        d_iec(None),
        d_iec(Some((8, 2))),
        d_pdevtlb(SID as u64, 5, 0x1000),
        // Page group response: PASID 7 present, code 0, PRG index 3.
        [
            9 | 1 << 4 | (SID as u64) << 16 | 7 << 32,
            1 << 2 | 3 << 3,
            0,
            0,
        ],
    ]);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0, "IQERCD {:#x}", r.r64(IQERCD));
    assert_eq!(r.inv_count(3), 2);
    assert_eq!(r.inv_count(4), 2);
    assert_eq!(r.inv_count(8), 1);
    assert_eq!(r.inv_count(9), 1);
    assert_eq!(r.u.counters.page_responses.load(Relaxed), 1);
    assert!(
        r.sink.remap_changes.load(Relaxed) > changes,
        "IEC: routes recomputed"
    );
    assert_eq!(*ep.invalidations.lock().unwrap(), vec![None, Some(5)]);
    assert_eq!(*ep.responses.lock().unwrap(), vec![(Some(7), 3, 0)]);
}

#[test]
fn qi_page_group_response_needs_page_requests() {
    // Without PASID support the unit has no PRS: type 9 is invalid.
    let r = scalable_base(48);
    assert_eq!(r.r64(ECAP) & (1 << 29), 0, "ECAP.PRS");
    r.qi_enable(true);
    r.submit(&[[9 | (SID as u64) << 16, 0, 0, 0]]);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.r64(IQERCD) & 0xf, 3, "IQEI: invalid descriptor type");
    assert_eq!(r.inv_count(9), 0);
}

#[test]
fn qi_pasid_based_iotlb_invalidation() {
    let (r, fl) = fs_rig();
    r.qi_enable(true);
    let slot = r.leaf_slot(fl, 4, 0x5000);
    for (desc, fresh) in [
        (d_piotlb(3, DID, 1, 0x5000, 0), false), // another PASID
        (d_piotlb(3, 2, 0, 0x5000, 0), false),   // another domain
        (d_piotlb(3, DID, 0, 0x6000, 0), false), // another page
        (d_piotlb(2, DID, 3, 0, 0), false),      // all of another PASID
        (d_piotlb(3, DID, 0, 0x5000, 0), true),  // page-selective
        (d_piotlb(3, DID, 0, 0x0000, 3), true),  // AM 3: 0x0000..0x7fff
        (d_piotlb(2, DID, 0, 0, 0), true),       // all of PASID 0
        (d_iotlb(2, DID, 0, 0), true),           // domain-selective IOTLB
    ] {
        r.submit(&[d_iotlb(1, 0, 0, 0)]);
        r.put(slot, DATA | P | RW | US);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.put(slot, (DATA + 0x3000) | P | RW | US);
        assert_eq!(r.read(0x5000), Ok(DATA), "stale until invalidated");
        let n = r.inv_count(6) + r.inv_count(2);
        r.submit(&[desc]);
        assert_eq!(r.inv_count(6) + r.inv_count(2), n + 1);
        let want = if fresh { DATA + 0x3000 } else { DATA };
        assert_eq!(r.read(0x5000), Ok(want), "{desc:x?}");
    }
    assert_eq!(r.r32(FSTS), 0);
}

#[test]
fn qi_pasid_cache_invalidation() {
    let (r, fl) = fs_rig();
    r.qi_enable(true);
    for (desc, fresh) in [
        (d_pc(1, DID, 1), false), // another PASID
        (d_pc(1, 2, 0), false),   // another domain
        (d_pc(0, 2, 0), false),   // all of another domain
        (d_pc(1, DID, 0), true),  // PASID-selective
        (d_pc(0, DID, 0), true),  // domain-selective
        (d_pc(3, 0, 0), true),    // global
        (d_cc(1, 0, 0, 0), true), // context-cache global covers PASIDs
    ] {
        r.pasid_entry(0, pe_first(fl, 4, true, false));
        r.submit(&[d_pc(3, 0, 0), d_iotlb(1, 0, 0, 0)]);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.pasid_entry(0, pe_pass_through());
        r.submit(&[d_iotlb(1, 0, 0, 0)]);
        assert_eq!(r.read(0x5000), Ok(DATA), "cached PASID entry");
        r.submit(&[desc]);
        let want = if fresh { 0x5000 } else { DATA };
        assert_eq!(r.read(0x5000), Ok(want), "{desc:x?}");
    }
    assert!(r.inv_count(7) >= 7);
}

#[test]
fn qi_errors_stop_the_queue_until_iqe_is_cleared() {
    let (r, _) = legacy_rig();
    r.qi_enable(false);
    // An invalid type in the middle.
    r.submit(&[
        d_wait(false, Some((STATUS, 1))),
        [0, 0, 0, 0],
        d_wait(false, Some((STATUS, 2))),
    ]);
    assert_eq!(r.get(STATUS) as u32, 1, "stopped before the third");
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.r64(IQERCD) & 0xf, 3);
    assert_eq!(r.r64(IQH), 0x10, "IQH on the offending descriptor");
    assert_eq!(r.msis(), vec![(FE_ADDR as u64, FE_DATA)], "fault event");
    assert_eq!(r.u.counters.queue_errors.load(Relaxed), 1);
    // More work is not processed while IQE is set.
    r.submit(&[d_wait(false, Some((STATUS, 3)))]);
    assert_eq!(r.get(STATUS) as u32, 1);
    // Software replaces the bad descriptor and clears IQE: resumes at IQH.
    r.put(IQ + 0x10, d_wait(false, Some((STATUS + 8, 9)))[0]);
    r.put(IQ + 0x18, STATUS + 8);
    r.w32(FSTS, FSTS_IQE);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.get(STATUS + 8) as u32, 9);
    assert_eq!(r.get(STATUS) as u32, 3);
    assert_eq!(r.r64(IQH), r.qtail.get());

    // Reserved fields.
    r.submit(&[d_iotlb(0, DID, 0, 0)]);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.r64(IQERCD) & 0xf, 4);
    assert_eq!(r.msis().len(), 2);
}

#[test]
fn qi_bad_tail_and_unreadable_queue() {
    let r = scalable_base(48);
    r.qi_enable(true);
    // 256-bit descriptors: IQT must be 32-byte aligned.
    r.w32(IQT, 0x10);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.r64(IQERCD) & 0xf, 1);
    r.w32(FSTS, FSTS_IQE);
    r.w32(IQT, 0);
    r.w32(FSTS, FSTS_IQE);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
    // A queue outside memory: fetch error.
    r.cmd_off(GCMD_QIE);
    assert_eq!(r.r32(GSTS) & GSTS_QIES, 0);
    r.w64(IQA, OUTSIDE | 1 << 11);
    r.cmd(GCMD_QIE);
    r.w32(IQT, 0x20);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.r64(IQERCD) & 0xf, 2);
    assert_eq!(r.r64(IQH), 0);
}

#[test]
fn qi_ring_wraps() {
    for wide in [false, true] {
        let (r, _) = legacy_rig();
        let r = if wide { scalable_base(48) } else { r };
        r.qi_enable(wide);
        let batch: Vec<[u64; 4]> = (0..100).map(|_| d_wait(false, None)).collect();
        for _ in 0..3 {
            r.submit(&batch);
        }
        assert_eq!(r.u.counters.invalidation_waits.load(Relaxed), 300);
        let size = if wide { 32 } else { 16 };
        assert_eq!(r.r64(IQH), 300 * size % 4096);
        assert_eq!(r.r32(FSTS), 0);
        // Disabling and re-enabling the queue resets IQH.
        r.cmd_off(GCMD_QIE);
        r.w32(IQT, 0);
        r.cmd(GCMD_QIE);
        assert_eq!(r.r64(IQH), 0);
    }
}

#[test]
fn qi_larger_queue_sizes() {
    let (r, _) = legacy_rig();
    // QS = 2: 16 KiB, 1024 narrow descriptors; the tail may go past 4 KiB.
    r.w64(IQA, IQ | 2);
    r.cmd(GCMD_QIE);
    for i in 0..0x300u64 {
        let [q0, q1, ..] = d_wait(false, Some((STATUS, i as u32)));
        r.put(IQ + i * 16, q0);
        r.put(IQ + i * 16 + 8, STATUS | q1);
    }
    r.w32(IQT, 0x3000);
    assert_eq!(r.get(STATUS) as u32, 0x2ff);
    assert_eq!(r.r64(IQH), 0x3000);
    // Beyond the queue size: bad tail.
    r.w32(IQT, 0x4000);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
}

#[test]
fn register_based_invalidation() {
    let (r, t) = legacy_rig();
    let slot = r.leaf_slot(t, 4, 0x5000);
    let ctx = CTX + DEVFN * 16;
    // Context command: ICC clears, CAIG reports the granularity.
    for (cirg, extra) in [(1u64, 0u64), (2, DID), (3, (SID as u64) << 16)] {
        r.put(ctx, t | 1);
        r.w64(CCMD, CCMD_ICC | 1 << 61);
        r.w64(IOTLB, IOTLB_IVT | 1 << 60);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.put(ctx, 1 | 2 << 2);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.w64(CCMD, CCMD_ICC | cirg << 61 | extra);
        let v = r.r64(CCMD);
        assert_eq!(v >> 63, 0, "ICC cleared");
        assert_eq!((v >> 59) & 3, cirg, "CAIG");
        assert_eq!(r.read(0x5000), Ok(0x5000), "CIRG {cirg}");
    }
    assert_eq!(r.inv_count(0), 6);
    r.put(ctx, t | 1);
    r.w64(CCMD, CCMD_ICC | 1 << 61);
    // IOTLB command: IVT clears, IAIG reports the granularity.
    for (iirg, iva) in [(1u64, 0u64), (2, 0), (3, 0x5000), (3, 0x4000 | 2)] {
        r.put(slot, DATA | R | W);
        r.w64(IOTLB, IOTLB_IVT | 1 << 60);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.put(slot, (DATA + 0x4000) | R | W);
        assert_eq!(r.read(0x5000), Ok(DATA));
        r.w64(IVA, iva);
        // Two 32-bit writes: the command fires with the upper half.
        let cmd = IOTLB_IVT | iirg << 60 | DID << 32;
        r.w32(IOTLB, cmd as u32);
        assert_eq!(r.read(0x5000), Ok(DATA), "not yet");
        r.w32(IOTLB + 4, (cmd >> 32) as u32);
        let v = r.r64(IOTLB);
        assert_eq!(v >> 63, 0, "IVT cleared");
        assert_eq!((v >> 57) & 3, iirg, "IAIG");
        assert_eq!(
            r.read(0x5000),
            Ok(DATA + 0x4000),
            "IIRG {iirg} IVA {iva:#x}"
        );
    }
    // Page-selective for another page or domain leaves it.
    r.put(slot, DATA | R | W);
    for (did, iva) in [(DID, 0x6000u64), (2, 0x5000)] {
        r.w64(IVA, iva);
        r.w64(IOTLB, IOTLB_IVT | 3 << 60 | did << 32);
        assert_eq!(r.read(0x5000), Ok(DATA + 0x4000));
    }
    assert!(r.inv_count(10) >= 7);
    // Capability: the IOTLB registers are where ECAP.IRO says.
    assert_eq!(((r.r64(ECAP) >> 8) & 0x3ff) * 16, IVA as u64);
}

#[test]
fn bug_page_selective_invalidation_with_huge_address_mask() {
    let (r, t) = legacy_rig();
    r.qi_enable(false);
    let slot = r.leaf_slot(t, 4, 0x5000);
    assert_eq!(r.read(0x5000), Ok(DATA));
    r.put(slot, (DATA + 0x4000) | R | W);
    // AM is a 6-bit field: a guest can write 63 (CAP.MAMV is 18).
    r.submit(&[d_iotlb(3, DID, 0, 63)]);
    assert_eq!(r.read(0x5000), Ok(DATA + 0x4000));
    // Same through the register interface.
    r.put(slot, DATA | R | W);
    r.w64(IVA, 0x3f);
    r.w64(IOTLB, IOTLB_IVT | 3 << 60 | DID << 32);
    assert_eq!(r.read(0x5000), Ok(DATA));
}

#[test]
fn bug_queue_width_change_while_enabled_does_not_hang() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = scalable_base(48);
        r.qi_enable(false);
        r.submit(&[d_wait(false, None)]); // IQH = 0x10
                                          // Valid 256-bit waits at every odd 16-byte slot of the ring.
        for off in (0x10..0x1000).step_by(0x20) {
            r.put(IQ + off, 5);
        }
        r.w64(IQA, IQ | 1 << 11); // switch to 256-bit descriptors
        r.w32(IQT, 0x20);
        let _ = tx.send(r.r32(FSTS));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("the IQT write never returned: the unit spins with the lock held");
}
