//! Every fault reason on the DMA path, interrupt remapping faults, fault
//! events, FPD and overflow.

use super::*;

macro_rules! fault_cases {
    ($($name:ident: $reason:expr, $rig:expr, |$r:ident, $t:ident| $body:block)*) => {
        $(
            #[test]
            fn $name() {
                #[allow(unused_variables)]
                let ($r, $t) = $rig;
                let req: Request = $body;
                $r.assert_fault(req, $reason);
            }
        )*
    };
}

fault_cases! {
    // Legacy mode (RTADDR.TTM = 00b).
    legacy_01_root_not_present: 0x01, legacy_rig(), |r, t| { rq(0x0108, None, 0x5000, false) }
    legacy_02_context_not_present: 0x02, legacy_rig(), |r, t| { rq(0x0010, None, 0x5000, true) }
    legacy_03_context_invalid_aw: 0x03, legacy_rig(), |r, t| {
        // AW = 5-level, not in SAGAW with aw-bits 48.
        r.put(CTX + DEVFN * 16 + 8, 3 | DID << 8);
        rd(0x5000)
    }
    legacy_03_context_invalid_tt: 0x03, legacy_rig(), |r, t| {
        r.put(CTX + DEVFN * 16, t | 1 | 3 << 2); // TT = 11b reserved
        rd(0x5000)
    }
    legacy_04_beyond_agaw: 0x04, legacy_rig_with(48, 3), |r, t| { rd(1 << 39) }
    legacy_05_write_to_read_only: 0x05, legacy_rig(), |r, t| { wr(0x6000) }
    legacy_05_write_not_present: 0x05, legacy_rig(), |r, t| { wr(0x9000) }
    legacy_06_read_of_write_only: 0x06, legacy_rig(), |r, t| { rd(0x7abc) }
    legacy_06_read_not_present: 0x06, legacy_rig(), |r, t| { rd(0x9000) }
    legacy_07_table_access: 0x07, legacy_rig(), |r, t| {
        r.put(CTX + DEVFN * 16, OUTSIDE | 1);
        rd(0x5000)
    }
    legacy_08_root_table_access: 0x08, legacy_rig(), |r, t| {
        r.set_root(OUTSIDE);
        rd(0x5000)
    }
    legacy_09_context_table_access: 0x09, legacy_rig(), |r, t| {
        r.put(ROOT, OUTSIDE | 1);
        rd(0x5000)
    }
    legacy_0a_root_reserved: 0x0a, legacy_rig(), |r, t| {
        r.put(ROOT, CTX | 1 | 2);
        rd(0x5000)
    }
    legacy_0b_context_reserved: 0x0b, legacy_rig(), |r, t| {
        r.put(CTX + DEVFN * 16, t | 1 | 1 << 4);
        rd(0x5000)
    }
    legacy_0c_pte_reserved: 0x0c, legacy_rig(), |r, t| {
        // Output address bits above the host address width.
        r.map_sl(t, 4, 0x8000, 1 << 50, R | W);
        rd(0x8000)
    }
    legacy_0c_misaligned_large_page: 0x0c, legacy_rig(), |r, t| {
        r.map(t, 4, 0x20_0000, 2, (DATA + 0x1000) | R | PS, R | W);
        wr(0x20_0000)
    }

    // Scalable mode.
    sm_30_ttm_reserved: 0x30, fs_rig(), |r, t| {
        r.set_root(ROOT | 3 << 10);
        rd(0x5000)
    }
    sm_31_ttm_legacy_with_pasid: 0x31, fs_rig(), |r, t| {
        r.set_root(ROOT);
        rq(SID, Some(1), 0x5000, false)
    }
    sm_38_root_access: 0x38, fs_rig(), |r, t| {
        r.set_root(OUTSIDE | 1 << 10);
        rd(0x5000)
    }
    sm_39_root_not_present: 0x39, fs_rig(), |r, t| { rq(0x0108, None, 0x5000, false) }
    sm_39_upper_root_not_present: 0x39, fs_rig(), |r, t| {
        r.put(ROOT + 8, 0);
        rq(0x0088, None, 0x5000, true)
    }
    sm_3a_root_reserved: 0x3a, fs_rig(), |r, t| {
        r.put(ROOT, CTX | 1 | 1 << 4);
        rd(0x5000)
    }
    sm_40_context_access: 0x40, fs_rig(), |r, t| {
        r.put(ROOT, OUTSIDE | 1);
        rd(0x5000)
    }
    sm_41_context_not_present: 0x41, fs_rig(), |r, t| { rq(0x0010, None, 0x5000, false) }
    sm_42_context_reserved: 0x42, fs_rig(), |r, t| {
        r.put(CTX + DEVFN * 32 + 16, 1);
        rd(0x5000)
    }
    sm_45_pasid_enable_clear: 0x45, fs_rig(), |r, t| {
        r.sm_context(DEVFN, PASID_DIR | 1, 0);
        rq(SID, Some(1), 0x5000, false)
    }
    sm_46_pasid_too_large: 0x46, fs_rig(), |r, t| {
        // PDTS 0: 128 directory entries, PASIDs 0..8191.
        rq(SID, Some(8192), 0x5000, true)
    }
    sm_48_rid_pasid_without_rps: 0x48, fs_rig(), |r, t| {
        r.sm_context(DEVFN, PASID_DIR | 1 | 8, 5);
        rd(0x5000)
    }
    sm_50_pasid_dir_access: 0x50, fs_rig(), |r, t| {
        r.sm_context(DEVFN, OUTSIDE | 1 | 8, 0);
        rd(0x5000)
    }
    sm_51_pasid_dir_not_present: 0x51, fs_rig(), |r, t| { rq(SID, Some(64), 0x5000, false) }
    sm_52_pasid_dir_reserved: 0x52, fs_rig(), |r, t| {
        r.put(PASID_DIR, PASID_TABLE | 1 | 1 << 2);
        rd(0x5000)
    }
    sm_58_pasid_table_access: 0x58, fs_rig(), |r, t| {
        r.put(PASID_DIR, OUTSIDE | 1);
        rd(0x5000)
    }
    sm_59_pasid_entry_not_present: 0x59, fs_rig(), |r, t| { rq(SID, Some(1), 0x5000, true) }
    sm_5a_pasid_entry_reserved: 0x5a, fs_rig(), |r, t| {
        r.put(PASID_TABLE + 32, 1); // qword 4
        rd(0x5000)
    }
    sm_5b_pasid_entry_invalid_pgtt: 0x5b, fs_rig(), |r, t| {
        r.put(PASID_TABLE, 1 | 5 << 6);
        rd(0x5000)
    }
    sm_5b_pasid_entry_invalid_flpm: 0x5b, fs_rig(), |r, t| {
        // FLPM 10b is reserved.
        r.put(PASID_TABLE + 16, t | 1 | 2 << 2);
        rd(0x5000)
    }
    sm_5d_supervisor_without_sre: 0x5d, fs_rig(), |r, t| {
        r.pasid_entry(0, pe_first(t, 4, false, false));
        supervisor(rd(0x5000))
    }
    sm_70_first_stage_access: 0x70, fs_rig(), |r, t| {
        r.pasid_entry(0, pe_first(OUTSIDE, 4, true, false));
        rd(0x5000)
    }
    sm_71_first_stage_not_present: 0x71, fs_rig(), |r, t| { wr(0x9000) }
    sm_72_first_stage_reserved: 0x72, fs_rig(), |r, t| {
        // A 2 MiB leaf with reserved bit 13 set.
        r.map(t, 4, 0x20_0000, 2, (DATA + 0x2000) | P | RW | US | PS, P | RW | US);
        rd(0x20_0000)
    }
    sm_78_second_stage_access: 0x78, ss_rig(), |r, t| {
        r.pasid_entry(0, pe_second(OUTSIDE, 4));
        rd(0x5000)
    }
    sm_79_second_stage_not_present: 0x79, ss_rig(), |r, t| { rd(0x9000) }
    sm_7a_second_stage_reserved: 0x7a, ss_rig(), |r, t| {
        r.map_sl(t, 4, 0x8000, 1 << 50, R | W);
        wr(0x8000)
    }
    sm_80_non_canonical: 0x80, fs_rig(), |r, t| { rd(1 << 47) }
    sm_81_user_to_supervisor_page: 0x81, fs_rig(), |r, t| { rd(0x7000) }
    sm_83_beyond_second_stage_width: 0x83, ss_rig_with(3), |r, t| { rd(1 << 39) }
    sm_85_write_to_read_only_first_stage: 0x85, fs_rig(), |r, t| { wr(0x6000) }
    sm_85_write_to_read_only_second_stage: 0x85, ss_rig(), |r, t| { wr(0x6000) }
    sm_86_read_of_write_only_second_stage: 0x86, ss_rig(), |r, t| { rd(0x7000) }
}

// --- interrupt remapping faults ------------------------------------------

fn assert_ir_fault(r: &Rig, sid: u16, address: u64, data: u32, reason: u8, index: u64) {
    assert_eq!(r.u.remap_interrupt(sid, address, data), None, "blocked");
    let (lo, hi) = r.frcd(0);
    assert_eq!(lo, index << 48, "FI: interrupt index in 63:48");
    assert_eq!(hi & 0xffff, sid as u64, "SID");
    assert_eq!((hi >> 32) & 0xff, reason as u64, "FR");
    assert_eq!(hi >> 63, 1, "F");
    assert_ne!(r.r32(FSTS) & FSTS_PPF, 0);
    assert_eq!(r.msis(), vec![(FE_ADDR as u64, FE_DATA)]);
    assert_eq!(r.fault_count(reason), 1);
}

#[test]
fn interrupt_remapping_delivers() {
    let r = ir_rig();
    assert_eq!(
        r.u.remap_interrupt(SID, msi_handle(0), 0),
        Some((0xfee0_5000, 0x31))
    );
    assert_eq!(r.u.counters.interrupts_remapped.load(Relaxed), 1);
    assert!(r.u.remapping_enabled());
    // Compatibility format passes once CFI is set.
    r.cmd(GCMD_CFI);
    assert_ne!(r.r32(GSTS) & GSTS_CFIS, 0);
    assert_eq!(
        r.u.remap_interrupt(SID, 0xfee0_1000, 0x30),
        Some((0xfee0_1000, 0x30))
    );
    // IRE off: untouched.
    r.cmd_off(GCMD_IRE);
    assert!(!r.u.remapping_enabled());
    assert_eq!(r.u.remap_interrupt(SID, 0x1234, 5), Some((0x1234, 5)));
    assert_eq!(r.r32(FSTS), 0);
}

#[test]
fn ir_20_request_reserved() {
    let r = ir_rig();
    assert_ir_fault(&r, SID, 0xfed0_0010, 0, 0x20, 0);
}
#[test]
fn ir_20_subhandle_data_reserved() {
    let r = ir_rig();
    assert_ir_fault(&r, SID, msi_handle(0) | 1 << 3, 1 << 16, 0x20, 0);
}
#[test]
fn ir_21_index_beyond_table() {
    let r = ir_rig();
    assert_ir_fault(&r, SID, msi_handle(256), 0, 0x21, 256);
}
#[test]
fn ir_22_entry_not_present() {
    let r = ir_rig();
    assert_ir_fault(&r, SID, msi_handle(1), 0, 0x22, 1);
}
#[test]
fn ir_23_table_access() {
    let r = ir_rig();
    r.w64(IRTA, OUTSIDE | 7);
    r.cmd(GCMD_SIRTP);
    assert_ir_fault(&r, SID, msi_handle(3), 0, 0x23, 3);
}
#[test]
fn ir_24_entry_reserved() {
    let r = ir_rig();
    r.put(IRT + 2 * 16, 1 | 1 << 12);
    assert_ir_fault(&r, SID, msi_handle(2), 0, 0x24, 2);
}
#[test]
fn ir_25_compatibility_blocked() {
    let r = ir_rig();
    assert_ir_fault(&r, SID, 0xfee0_1000, 0x30, 0x25, 0);
}
#[test]
fn ir_26_source_id_mismatch() {
    let r = ir_rig();
    assert_ir_fault(&r, 0x0010, msi_handle(0), 0, 0x26, 0);
}

// --- fault events, FPD, overflow -----------------------------------------

#[test]
fn fault_event_registers_reset_masked() {
    let r = Rig::new(VtdConfig::default());
    // After reset FECTL.IM and IECTL.IM are set (the rig cleared FECTL.IM).
    let u = IntelIommu::new(VtdConfig::default(), r.mem.clone(), r.sink.clone()).unwrap();
    let mut b = [0u8; 4];
    u.mmio_read(FECTL as u64, &mut b);
    assert_eq!(u32::from_le_bytes(b), CTL_IM);
    u.mmio_read(IECTL as u64, &mut b);
    assert_eq!(u32::from_le_bytes(b), CTL_IM);
    // IP is read-only; IM is the only writable bit.
    r.w32(FECTL, CTL_IP | 0x1234);
    assert_eq!(r.r32(FECTL), 0);
    // FEADDR bits 1:0 are reserved.
    r.w32(FEADDR, 0xfee0_0003);
    assert_eq!(r.r32(FEADDR), 0xfee0_0000);
}

#[test]
fn masked_fault_event_is_held_then_sent_on_unmask() {
    let (r, _) = legacy_rig();
    r.w32(FECTL, CTL_IM);
    assert!(r.read(0x9000).is_err());
    assert_eq!(r.msis(), vec![], "masked: held");
    assert_eq!(r.r32(FECTL), CTL_IM | CTL_IP);
    // More faults while pending: still nothing.
    assert!(r.read(0xa000).is_err());
    assert_eq!(r.msis(), vec![]);
    // Re-writing IM = 1 does not deliver.
    r.w32(FECTL, CTL_IM);
    assert_eq!(r.msis(), vec![]);
    r.w32(FECTL, 0);
    assert_eq!(
        r.msis(),
        vec![(FE_ADDR as u64, FE_DATA)],
        "sent once on unmask"
    );
    assert_eq!(r.r32(FECTL), 0, "IP cleared when sent");
    r.w32(FECTL, CTL_IM);
    r.w32(FECTL, 0);
    assert_eq!(r.msis().len(), 1, "nothing pending any more");
    // Records 0 and 1 both pending.
    assert_eq!(r.frcd(0).1 >> 63, 1);
    assert_eq!(r.frcd(1).1 >> 63, 1);
    // Upper address register goes into the message.
    r.w32(FEUADDR, 0x12);
    for i in 0..2 {
        r.clear_frcd(i);
    }
    assert_eq!(r.r32(FSTS) & FSTS_PPF, 0);
    assert!(r.read(0xb000).is_err());
    assert_eq!(r.msis()[1], (0x12 << 32 | FE_ADDR as u64, FE_DATA));
}

#[test]
fn new_event_only_after_all_records_cleared() {
    let (r, _) = legacy_rig();
    assert!(r.read(0x9000).is_err());
    assert!(r.read(0xa000).is_err());
    assert_eq!(r.msis().len(), 1);
    // Clearing one of two: PPF stays, FRI moves to the other.
    r.clear_frcd(0);
    let fsts = r.r32(FSTS);
    assert_ne!(fsts & FSTS_PPF, 0);
    assert_eq!((fsts >> 8) & 0xff, 1, "FRI");
    assert!(r.read(0xb000).is_err());
    assert_eq!(r.msis().len(), 1, "PPF was set: no new event");
    r.clear_frcd(1);
    r.clear_frcd(2);
    assert_eq!(r.r32(FSTS) & FSTS_PPF, 0);
    assert!(r.read(0xc000).is_err());
    assert_eq!(r.msis().len(), 2, "PPF 0 -> 1: a new event");
    assert_eq!((r.r32(FSTS) >> 8) & 0xff, 3, "recorded at the next index");
    assert_eq!(r.frcd(3).0, 0xc000);
}

#[test]
fn fault_records_overflow_and_free_on_clear() {
    let (r, _) = legacy_rig();
    for i in 0..NUM_FAULT_RECORDS as u64 {
        assert!(r.read(0x10_0000 + i * 0x1000).is_err());
    }
    assert_eq!(r.r32(FSTS) & (FSTS_PFO | FSTS_PPF), FSTS_PPF);
    for i in 0..NUM_FAULT_RECORDS {
        assert_eq!(r.frcd(i).0, 0x10_0000 + i as u64 * 0x1000);
    }
    assert_eq!(r.u.counters.faults_recorded.load(Relaxed), 8);
    // The ninth: no free record.
    assert!(r.read(0x20_0000).is_err(), "the DMA still fails");
    assert_ne!(r.r32(FSTS) & FSTS_PFO, 0, "FSTS.PFO");
    assert_eq!(r.u.counters.faults_recorded.load(Relaxed), 8);
    assert_eq!(r.u.counters.faults.load(Relaxed), 9);
    for i in 0..NUM_FAULT_RECORDS {
        assert_ne!(r.frcd(i).0, 0x20_0000, "not recorded anywhere");
    }
    // Freeing a record does not record while PFO is set.
    r.clear_frcd(0);
    assert_eq!(r.frcd(0).1 >> 63, 0);
    assert!(r.read(0x21_0000).is_err());
    assert_eq!(r.frcd(0).1 >> 63, 0, "PFO blocks recording");
    // PFO is RW1C; then the freed record (the next in order) is used.
    r.w32(FSTS, FSTS_PFO);
    assert_eq!(r.r32(FSTS) & FSTS_PFO, 0);
    assert!(r.read(0x22_0000).is_err());
    assert_eq!(r.frcd(0).0, 0x22_0000);
    assert_eq!(r.frcd(0).1 >> 63, 1);
    // Full again: the next index (1) is still pending.
    assert!(r.read(0x23_0000).is_err());
    assert_ne!(r.r32(FSTS) & FSTS_PFO, 0);
    // Clearing every record (as Linux's handler does) clears PPF.
    r.w32(FSTS, FSTS_PFO);
    for i in 0..NUM_FAULT_RECORDS {
        r.clear_frcd(i);
    }
    assert_eq!(r.r32(FSTS) & (FSTS_PPF | FSTS_PFO), 0);
}

#[test]
fn fault_record_registers_are_read_only_but_f() {
    let (r, _) = legacy_rig();
    assert!(r.write(0x9000).is_err());
    let (lo, hi) = r.frcd(0);
    r.w64(FRCD, !0);
    r.w64(FRCD + 8, !(1u64 << 63));
    assert_eq!(r.frcd(0), (lo, hi), "only F is writable (RW1C)");
    // Writing PPF (read-only) does nothing.
    r.w32(FSTS, FSTS_PPF);
    assert_ne!(r.r32(FSTS) & FSTS_PPF, 0);
}

/// A request faults without a record, a fault event or FSTS change, yet
/// the DMA is blocked and the fault counted.
fn assert_silent_fault(r: &Rig, req: Request) {
    let before = r.u.counters.faults.load(Relaxed);
    assert!(r.u.translate_request(&req).is_err(), "the DMA still fails");
    if !req.privileged {
        let access = if req.write {
            Access::Write
        } else {
            Access::Read
        };
        assert!(r.gpa(req.sid, req.pasid, req.iova, access).is_err());
    }
    assert!(r.u.counters.faults.load(Relaxed) > before);
    assert_eq!(r.u.counters.faults_recorded.load(Relaxed), 0);
    assert_eq!(r.r32(FSTS), 0);
    assert_eq!(r.frcd(0), (0, 0));
    assert_eq!(r.msis(), vec![]);
}

#[test]
fn fpd_in_legacy_context_suppresses_recording() {
    let (r, t) = legacy_rig();
    r.put(CTX + DEVFN * 16, t | 1 | 2);
    assert_silent_fault(&r, wr(0x6000));
    assert_silent_fault(&r, rd(0x9000));
    // FPD does not hide faults found before the context entry.
    assert!(r.read(0x9000).is_err());
    assert_eq!(r.r32(FSTS), 0);
    assert!(r.gpa(0x0010, None, 0x5000, Access::Read).is_err());
    assert_ne!(
        r.r32(FSTS) & FSTS_PPF,
        0,
        "02h from another device is recorded"
    );
}

#[test]
fn fpd_in_scalable_context_suppresses_recording() {
    let (r, _) = fs_rig();
    r.sm_context(DEVFN, PASID_DIR | 1 | 2 | 8, 0);
    assert_silent_fault(&r, rd(0x9000));
    assert_silent_fault(&r, rq(SID, Some(1), 0x5000, false)); // 59h
}

#[test]
fn fpd_in_pasid_entry_suppresses_recording() {
    let (r, fl) = fs_rig();
    let mut q = pe_first(fl, 4, true, false);
    q[0] |= 2;
    r.pasid_entry(0, q);
    assert_silent_fault(&r, rd(0x9000)); // 71h
    assert_silent_fault(&r, rd(0x7000)); // 81h
    assert_silent_fault(&r, wr(0x6000)); // 85h
                                         // FPD also covers faults on the entry itself (here: 5Ah).
    q[0] |= 1 << 10;
    r.pasid_entry(0, q);
    let (r2, _) = fs_rig();
    r2.pasid_entry(0, q);
    assert_silent_fault(&r2, rd(0x5000));
}

#[test]
fn fpd_in_pasid_directory_entry_suppresses_recording() {
    let (r, _) = fs_rig();
    r.put(PASID_DIR, PASID_TABLE | 1 | 2);
    assert_silent_fault(&r, rq(SID, Some(1), 0x5000, true)); // 59h
}

#[test]
fn fpd_in_irte_suppresses_recording() {
    let r = ir_rig();
    r.put(IRT + 16, 2); // not present, FPD
    assert_eq!(r.u.remap_interrupt(SID, msi_handle(1), 0), None);
    r.put(IRT + 32, 3 | 1 << 12); // present, reserved bit, FPD
    assert_eq!(r.u.remap_interrupt(SID, msi_handle(2), 0), None);
    assert_eq!(r.r32(FSTS), 0);
    assert_eq!(r.msis(), vec![]);
    assert_eq!(r.fault_count(0x22), 1);
    assert_eq!(r.fault_count(0x24), 1);
}

#[test]
fn ats_translation_request_failures_go_to_the_device() {
    // 0Dh / 44h: a Translation Request from a device whose context entry
    // does not allow device TLBs. Returned to the device, not recorded.
    let (r, _) = legacy_rig();
    let req = Request {
        translation_request: true,
        ..rd(0x5000)
    };
    assert_eq!(r.reason(req), Some(0x0d));
    let (r2, _) = fs_rig();
    assert_eq!(r2.reason(req), Some(0x44));
    for r in [&r, &r2] {
        assert_eq!(r.r32(FSTS), 0);
        assert_eq!(r.msis(), vec![]);
    }
    for r in [&r, &r2] {
        assert_eq!(r.u.counters.ats_failures.load(Relaxed), 1);
        assert_eq!(r.u.counters.faults_recorded.load(Relaxed), 0);
    }
    // Other failures of a translation request are not recorded either.
    r2.sm_context(DEVFN, PASID_DIR | 1 | 4 | 8, 0);
    r2.w64(CCMD, CCMD_ICC | 1 << 61);
    let unmapped = Request {
        translation_request: true,
        ..rd(0x9000)
    };
    assert_eq!(r2.reason(unmapped), Some(0x71));
    assert_eq!(r2.r32(FSTS), 0);
    // With DTE set it translates.
    assert_eq!(r2.reason(req), None);
}

#[test]

fn bug_fault_record_priv_bit_position() {
    // §11.4.14: bit 93 PRIV, 94 EXE, 95 PP, 125:124 AT, 126 T1 (as in
    // VirtualBox's VTD_BF_1_FRCD_REG_PRIV_SHIFT = 29 of the upper qword).
    let (r, _) = fs_rig();
    assert_eq!(r.reason(supervisor(wr(0x9000))), Some(0x71));
    let hi = r.frcd(0).1;
    assert_eq!((hi >> 60) & 3, 0, "AT (bits 125:124) = untranslated");
    assert_eq!((hi >> 29) & 1, 1, "PRIV (bit 93)");
}

#[test]
fn bug_fault_event_ip_cleared_when_status_serviced_while_masked() {
    // §11.4.7.1 FECTL.IP: hardware clears IP when software services all
    // pending interrupt status fields (every F bit clear so PPF reads 0,
    // and PFO, IQE, ICE, ITE cleared).
    let (r, _) = legacy_rig();
    r.w32(FECTL, CTL_IM);
    assert!(r.read(0x9000).is_err());
    assert_ne!(r.r32(FECTL) & CTL_IP, 0);
    r.clear_frcd(0);
    assert_eq!(r.r32(FSTS), 0);
    assert_eq!(r.r32(FECTL) & CTL_IP, 0, "IP cleared by servicing");
    r.w32(FECTL, 0);
    assert_eq!(r.msis(), vec![], "no stale event on unmask");
}
