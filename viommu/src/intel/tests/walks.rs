//! Table walks of every format and level, and caching mode.

use super::*;

/// Maps one page of each size (4 KiB, 2 MiB, 1 GiB) with each permission
/// (R, W, RW) in a second-stage table and checks every access kind.
fn check_second_stage_walks(r: &Rig, root: u64, levels: u8, no_read: u8, no_write: u8) {
    let mut k = 0u64;
    for (leaf_level, size) in [(1u8, KIB4), (2, MIB2), (3, GIB1)] {
        for (bits, can_read, can_write) in [(R, true, false), (W, false, true), (R | W, true, true)]
        {
            k += 1;
            let iova = k * 2 * GIB1 + 3 * size;
            let out = (16 + k) * size;
            let ps = if leaf_level > 1 { PS } else { 0 };
            r.map(root, levels, iova, leaf_level, out | bits | ps, R | W);
            let off = size - 8 * k;
            let at = iova + off;
            let expect = |ok: bool, reason: u8| {
                if ok {
                    Ok(out + off)
                } else {
                    Err(format!("fault reason {reason:#04x}"))
                }
            };
            let what = format!("{levels}-level, page {size:#x}, bits {bits}");
            assert_eq!(r.read(at), expect(can_read, no_read), "read, {what}");
            assert_eq!(r.write(at), expect(can_write, no_write), "write, {what}");
            let rw = r.gpa(SID, None, at, Access::ReadWrite);
            let rw_reason = if can_write { no_read } else { no_write };
            assert_eq!(rw, expect(can_read && can_write, rw_reason), "rw, {what}");
            // A multi-page range inside the large page is one piece.
            if size > KIB4 {
                let len = 3 * KIB4;
                let access = if can_read {
                    Access::Read
                } else {
                    Access::Write
                };
                let v = r.u.translate(SID, None, iova, len, access).unwrap();
                assert_eq!(v.len(), 1, "{what}");
                assert_eq!((v[0].gpa, v[0].len), (out, len));
            }
        }
    }
    // Permissions of the upper levels count too.
    let iova = 0x33 * GIB1;
    r.map_sl(root, levels, iova, DATA, R | W);
    let top_shift = 12 + 9 * (levels as u64 - 1);
    let top = root + ((iova >> top_shift) & 0x1ff) * 8;
    r.put(top, r.get(top) & !W);
    assert_eq!(r.read(iova), Ok(DATA));
    assert!(r.write(iova).is_err(), "write denied at the top level");
}

#[test]
fn legacy_second_stage_every_level_size_and_permission() {
    for levels in [3u8, 4, 5] {
        let (r, t) = legacy_rig_with(57, levels);
        assert_eq!((r.r64(CAP) >> 8) & 0x1f, 0b01110, "SAGAW 3/4/5-level");
        assert_eq!((r.r64(CAP) >> 16) & 0x3f, 56, "MGAW");
        check_second_stage_walks(&r, t, levels, 0x06, 0x05);
        assert!(r.u.counters.fault_reasons[0x06].load(Relaxed) > 0);
    }
}

#[test]
fn scalable_second_stage_every_level_size_and_permission() {
    for levels in [3u8, 4, 5] {
        let r = scalable_base(57);
        let sl = r.alloc();
        r.pasid_entry(0, pe_second(sl, levels));
        check_second_stage_walks(&r, sl, levels, 0x86, 0x85);
    }
}

#[test]
fn second_stage_beyond_width_per_level() {
    // 3 levels: 39 bits; 4: 48; 5: 57 (aw-bits 57).
    for (levels, bits) in [(3u8, 39u32), (4, 48), (5, 57)] {
        let (r, _) = legacy_rig_with(57, levels);
        assert_eq!(r.reason(rd(1 << bits)), Some(0x04), "{levels}-level");
        assert_eq!(
            r.reason(rd((1 << bits) - 0x1000)),
            Some(0x06),
            "{levels}-level"
        );
    }
}

#[test]
fn first_stage_every_level_size_and_permission() {
    for levels in [4u8, 5] {
        let r = scalable_base(57);
        let fl = r.alloc();
        r.pasid_entry(0, pe_first(fl, levels, true, false));
        let mut k = 0u64;
        for (leaf_level, size) in [(1u8, KIB4), (2, MIB2), (3, GIB1)] {
            // (bits, user read, user write, supervisor write with WPE)
            for (bits, user, writable) in [
                (P | US, true, false),
                (P | RW | US, true, true),
                (P | RW, false, true),
                (P, false, false),
            ] {
                k += 1;
                // 5-level tables reach beyond 48 bits.
                let high = if levels == 5 { 1u64 << 50 } else { 0 };
                let iova = high + k * 2 * GIB1 + 3 * size;
                let out = (16 + k) * size;
                let ps = if leaf_level > 1 { PS } else { 0 };
                r.map(fl, levels, iova, leaf_level, out | bits | ps, P | RW | US);
                let at = iova + size / 2 + 8;
                let what = format!("{levels}-level, page {size:#x}, bits {bits:#x}");
                let gpa = Ok(out + size / 2 + 8);
                // User requests.
                let user_read = if user {
                    gpa.clone()
                } else {
                    Err("fault reason 0x81".into())
                };
                assert_eq!(r.read(at), user_read, "user read, {what}");
                let user_write = match (user, writable) {
                    (false, _) => Err("fault reason 0x81".into()),
                    (true, false) => Err("fault reason 0x85".into()),
                    (true, true) => gpa.clone(),
                };
                assert_eq!(r.write(at), user_write, "user write, {what}");
                // Supervisor requests: U/S ignored, R/W ignored without WPE.
                for write in [false, true] {
                    let got = r.u.translate_request(&supervisor(rq(SID, None, at, write)));
                    match got {
                        Ok(Resolved::Page { leaf, .. }) => {
                            assert_eq!(Ok(leaf.translate(at)), gpa, "supervisor, {what}")
                        }
                        other => panic!("supervisor {write}: {other:?}, {what}"),
                    }
                }
                // Accessed and Dirty flags in the leaf.
                let leaf_shift = 12 + 9 * (leaf_level as u64 - 1);
                let mut table = fl;
                for level in (leaf_level + 1..=levels).rev() {
                    let shift = 12 + 9 * (level as u64 - 1);
                    let e = r.get(table + ((iova >> shift) & 0x1ff) * 8);
                    assert_ne!(e & A, 0, "A in level {level}, {what}");
                    table = e & 0x000f_ffff_ffff_f000;
                }
                let leaf = r.get(table + ((iova >> leaf_shift) & 0x1ff) * 8);
                assert_ne!(leaf & A, 0, "A in the leaf, {what}");
                if writable {
                    assert_ne!(leaf & D, 0, "D in the leaf, {what}");
                }
            }
        }
        // Non-canonical addresses for this depth.
        let bits = if levels == 5 { 57 } else { 48 };
        assert_eq!(r.reason(rd(1 << (bits - 1))), Some(0x80));
        assert_eq!(
            r.reason(rd(!0u64 << (bits - 1))),
            Some(0x71),
            "canonical, unmapped"
        );
    }
}

#[test]
fn first_stage_supervisor_write_protect_and_sre() {
    let (r, fl) = fs_rig();
    // WPE: supervisor writes honour R/W.
    r.pasid_entry(0, pe_first(fl, 4, true, true));
    assert_eq!(r.reason(supervisor(wr(0x6000))), Some(0x85));
    assert_eq!(r.reason(supervisor(wr(0x5000))), None);
    assert_eq!(r.reason(supervisor(wr(0x7000))), None, "supervisor page");
    assert_eq!(r.reason(supervisor(rd(0x6000))), None);
    // No SRE: every supervisor request faults, user ones do not.
    r.pasid_entry(0, pe_first(fl, 4, false, false));
    r.w64(CCMD, CCMD_ICC | 1 << 61);
    assert_eq!(r.reason(supervisor(rd(0x5000))), Some(0x5d));
    assert_eq!(r.reason(rd(0x5000)), None);
}

#[test]
fn first_stage_writes_are_not_served_from_a_clean_cached_entry() {
    // A read caches the leaf without D; a later write must walk again to
    // set D (§6.2.4).
    let (r, fl) = fs_rig();
    let slot = r.leaf_slot(fl, 4, 0x5000);
    assert_eq!(r.read(0x5000), Ok(DATA));
    assert_eq!(r.get(slot) & (A | D), A);
    assert_eq!(r.write(0x5000), Ok(DATA));
    assert_eq!(r.get(slot) & (A | D), A | D);
    assert_eq!(r.u.counters.iotlb_misses.load(Relaxed), 2);
}

/// Nested translation: first-stage tables and output in an intermediate
/// space that a 4-level second-stage table maps to guest memory.
struct Nested {
    r: Rig,
    sl: u64,
    /// Intermediate addresses of the first-stage tables, top first.
    fl_ipa: [u64; 4],
    out_ipa: u64,
}

const IPA: u64 = 0x1_0000_0000;

fn nested_rig() -> Nested {
    nested_rig_with(true)
}

fn nested_rig_with(offer_nesting: bool) -> Nested {
    let r = scalable_base_with(VtdConfig {
        offer_nesting,
        ..Rig::scalable_cfg(48)
    });
    let sl = r.alloc();
    let fl_ipa = [IPA, IPA + 0x1000, IPA + 0x2000, IPA + 0x3000];
    let fl_gpa = [r.alloc(), r.alloc(), r.alloc(), r.alloc()];
    for (ipa, gpa) in fl_ipa.iter().zip(fl_gpa) {
        r.map_sl(sl, 4, *ipa, gpa, R | W);
    }
    let out_ipa = IPA + 0x10_0000;
    r.map_sl(sl, 4, out_ipa, DATA, R | W);
    let iova = 0x5000u64;
    for level in (1..=4u64).rev() {
        let shift = 12 + 9 * (level - 1);
        let slot = fl_gpa[(4 - level) as usize] + ((iova >> shift) & 0x1ff) * 8;
        let next = if level == 1 {
            out_ipa
        } else {
            fl_ipa[(5 - level) as usize]
        };
        r.put(slot, next | P | RW | US);
    }
    r.pasid_entry(0, pe_nested(fl_ipa[0], 4, sl, 4));
    Nested {
        r,
        sl,
        fl_ipa,
        out_ipa,
    }
}

#[test]
fn nested_first_stage_through_second_stage() {
    let n = nested_rig();
    let r = &n.r;
    assert_ne!(r.r64(ECAP) & (1 << 26), 0, "ECAP.NEST");
    assert_eq!(r.write(0x5123), Ok(DATA + 0x123));
    assert_eq!(r.read(0x5ff8), Ok(DATA + 0xff8));
    // The first-stage flags were set in guest memory (through the second stage).
    let pml4_gpa = r.get(r.leaf_slot(n.sl, 4, n.fl_ipa[0])) & !0xfff;
    assert_ne!(r.get(pml4_gpa) & A, 0);
    // The second stage limits the first: a read-only output page.
    r.map_sl(n.sl, 4, n.out_ipa, DATA, R);
    r.w64(IOTLB, IOTLB_IVT | 1 << 60);
    assert_eq!(r.read(0x5000), Ok(DATA));
    assert_eq!(r.reason(wr(0x5000)), Some(0x85));
}

#[test]
fn nested_large_first_stage_page_over_small_second_stage_pages() {
    let n = nested_rig();
    let r = &n.r;
    // A 2 MiB first-stage page at 0x20_0000 whose intermediate range the
    // second stage maps with two different 4 KiB pages.
    let big_ipa = IPA + 0x20_0000 * 3;
    let pd_gpa = r.get(r.leaf_slot(n.sl, 4, n.fl_ipa[2])) & !0xfff;
    r.put(pd_gpa + 8, big_ipa | P | RW | US | PS);
    r.map_sl(n.sl, 4, big_ipa, DATA + 0x8000, R | W);
    r.map_sl(n.sl, 4, big_ipa + 0x1000, DATA + 0x5000, R | W);
    assert_eq!(r.read(0x20_0010), Ok(DATA + 0x8010));
    // The combined page is 4 KiB: the next page is not served from it.
    assert_eq!(r.read(0x20_1010), Ok(DATA + 0x5010));
    assert_eq!(
        r.reason(rd(0x20_2000)),
        Some(0x79),
        "output not mapped by the second stage"
    );
}

#[test]
fn nested_first_stage_table_not_mapped_by_second_stage() {
    // The second stage does not map the intermediate address of a
    // first-stage table: the walk faults (the model reports the
    // second-stage reason, 79h).
    for level in 0..4 {
        let n = nested_rig();
        let r = &n.r;
        r.put(r.leaf_slot(n.sl, 4, n.fl_ipa[level]), 0);
        r.assert_fault(wr(0x5000), 0x79);
    }
    // Or maps it beyond the host address width.
    let n = nested_rig();
    n.r.put(n.r.leaf_slot(n.sl, 4, n.fl_ipa[0]), 1 << 50 | R | W);
    n.r.assert_fault(rd(0x5000), 0x7a);
    // A first-stage table pointer beyond what the second stage covers.
    let n = nested_rig();
    n.r.pasid_entry(0, pe_nested(1 << 45, 4, n.sl, 3));
    n.r.assert_fault(rd(0x5000), 0x74);
}

#[test]
fn nested_entries_are_invalid_unless_nesting_is_offered() {
    let n = nested_rig_with(false);
    assert_eq!(n.r.r64(ECAP) & (1 << 26), 0, "no ECAP.NEST");
    // PGTT = 011b is a reserved value to a guest not offered nesting.
    n.r.assert_fault(rd(0x5000), 0x5b);
}

#[test]
fn pasid_tagged_requests_use_their_own_entries() {
    let r = Rig::new(VtdConfig {
        pasid_bits: 20,
        ..VtdConfig::default()
    });
    assert_ne!(r.r64(ECAP) & (1 << 40), 0, "ECAP.PASID");
    assert_eq!((r.r64(ECAP) >> 35) & 0x1f, 19, "PSS");
    r.put(ROOT, CTX | 1);
    r.sm_context(DEVFN, PASID_DIR | 1 | 8 | 1 << 9, 0); // PDTS 1: 256 entries
    r.put(PASID_DIR, PASID_TABLE | 1);
    r.put(PASID_DIR + 8 * 200, (PASID_TABLE + 0x1000) | 1); // PASIDs 12800..12863
    let (fl0, fl5, flx) = (r.alloc(), r.alloc(), r.alloc());
    r.map_fl(fl0, 4, 0x5000, DATA, P | RW | US);
    r.map_fl(fl5, 4, 0x5000, DATA + 0x1000, P | RW | US);
    r.map_fl(flx, 4, 0x5000, DATA + 0x2000, P | RW | US);
    r.pasid_entry(0, pe_first(fl0, 4, true, false));
    let mut e5 = pe_first(fl5, 4, true, false);
    e5[1] = 5; // its own domain
    r.pasid_entry(5, e5);
    for (i, w) in pe_first(flx, 4, true, false).iter().enumerate() {
        r.put(PASID_TABLE + 0x1000 + 3 * 64 + i as u64 * 8, *w);
    }
    r.set_root(ROOT | 1 << 10);
    r.cmd(GCMD_TE);
    assert_eq!(r.read(0x5000), Ok(DATA));
    assert_eq!(
        r.gpa(SID, Some(5), 0x5000, Access::Write),
        Ok(DATA + 0x1000)
    );
    assert_eq!(
        r.gpa(SID, Some(12803), 0x5000, Access::Read),
        Ok(DATA + 0x2000)
    );
    assert_eq!(r.gpa(SID, Some(0), 0x5000, Access::Read), Ok(DATA));
    // 256 directory entries: PASID 16384 is too large.
    assert_eq!(r.reason(rq(SID, Some(16384), 0x5000, false)), Some(0x46));
    // Invalidating PASID 5 leaves PASID 0.
    r.qi_enable(true);
    r.map_fl(fl5, 4, 0x5000, DATA + 0x7000, P | RW | US);
    r.map_fl(fl0, 4, 0x5000, DATA + 0x7000, P | RW | US);
    r.submit(&[d_piotlb(2, 5, 5, 0, 0)]);
    assert_eq!(r.gpa(SID, Some(5), 0x5000, Access::Read), Ok(DATA + 0x7000));
    assert_eq!(r.read(0x5000), Ok(DATA));
}

#[test]
fn pass_through() {
    let (r, _) = fs_rig();
    r.pasid_entry(0, pe_pass_through());
    assert_eq!(r.write(0x1234_5678), Ok(0x1234_5678));
    assert!(r.u.counters.identity.load(Relaxed) > 0);
    let (r, t) = legacy_rig();
    r.put(CTX + DEVFN * 16, t | 1 | 2 << 2);
    r.w64(CCMD, CCMD_ICC | 1 << 61);
    assert_eq!(r.read(0xabc_d000), Ok(0xabc_d000));
    // Translation off: identity for everyone.
    let r = Rig::new(VtdConfig::default());
    assert_eq!(r.gpa(0xffff, Some(3), 0x9000, Access::Write), Ok(0x9000));
}

#[test]
fn device_path_splits_ranges_at_page_boundaries() {
    let (r, t) = legacy_rig();
    r.map_sl(t, 4, 0x6000, DATA + 0x1000, R | W);
    r.map_sl(t, 4, 0x8000, DATA + 0x8000, R | W);
    // 0x5000 -> DATA, 0x6000 -> DATA+0x1000: one piece; 0x7000 is
    // write-only and denies the read.
    let v =
        r.u.translate(SID, None, 0x5800, 0x1000, Access::Read)
            .unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].iova, v[0].gpa, v[0].len),
        (0x5800, DATA + 0x800, 0x1000)
    );
    let e =
        r.u.translate(SID, None, 0x5800, 0x2000, Access::Read)
            .unwrap_err();
    assert!(matches!(e, DmaFault::Blocked { iova: 0x7000, .. }), "{e:?}");
    // Contiguous output stays one piece; a jump starts another.
    r.map_sl(t, 4, 0x9000, DATA + 0x9000, R | W);
    let v =
        r.u.translate(SID, None, 0x8ff0, 0x20, Access::Write)
            .unwrap();
    assert_eq!(v.len(), 1);
    r.map_sl(t, 4, 0xa000, DATA + 0x20000, R | W);
    let v =
        r.u.translate(SID, None, 0x8ff0, 0x1020, Access::Write)
            .unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].iova, v[0].gpa, v[0].len),
        (0x8ff0, DATA + 0x8ff0, 0x1010)
    );
    assert_eq!(
        (v[1].iova, v[1].gpa, v[1].len),
        (0xa000, DATA + 0x20000, 0x10)
    );
    // Zero length and overflow.
    assert_eq!(
        r.u.translate(SID, None, 0x5000, 0, Access::Read),
        Ok(vec![])
    );
    assert!(matches!(
        r.u.translate(SID, None, u64::MAX, 2, Access::Read),
        Err(DmaFault::Overflow { .. })
    ));
}

#[test]
fn bug_first_stage_supervisor_write_without_wpe_sets_dirty() {
    // As in IA-32 paging with CR0.WP = 0: the write goes through, so the
    // leaf's Dirty flag must be set (§3.6.2).
    let (r, fl) = fs_rig();
    let slot = r.leaf_slot(fl, 4, 0x6000);
    assert_eq!(
        r.reason(supervisor(wr(0x6000))),
        None,
        "allowed without WPE"
    );
    assert_eq!(r.get(slot) & (A | D), A | D);
}

// --- caching mode --------------------------------------------------------

#[test]
fn caching_mode_capability() {
    let off = Rig::new(VtdConfig::default());
    assert_eq!(off.r64(CAP) & (1 << 7), 0, "CAP.CM");
    let on = Rig::new(VtdConfig {
        caching_mode: true,
        ..VtdConfig::default()
    });
    assert_ne!(on.r64(CAP) & (1 << 7), 0, "CAP.CM");
}

#[test]
fn present_entries_are_cached_until_invalidated() {
    for caching_mode in [false, true] {
        let r = Rig::new(VtdConfig {
            scalable: false,
            first_stage: false,
            caching_mode,
            ..VtdConfig::default()
        });
        let sl = r.alloc();
        r.put(ROOT, CTX | 1);
        r.put(CTX + DEVFN * 16, sl | 1);
        r.put(CTX + DEVFN * 16 + 8, aw(4) | DID << 8);
        r.map_sl(sl, 4, 0x5000, DATA, R | W);
        r.set_root(ROOT);
        r.cmd(GCMD_TE);
        r.qi_enable(false);
        // A not-present result is not cached: mapping a page needs no
        // invalidation (what a caching-mode guest relies on the other way
        // round is that it does invalidate; both must work).
        assert!(r.read(0x6000).is_err());
        r.map_sl(sl, 4, 0x6000, DATA + 0x1000, R | W);
        assert_eq!(r.read(0x6000), Ok(DATA + 0x1000));
        // Neither is a not-present context entry.
        assert!(r.gpa(0x0010, None, 0x5000, Access::Read).is_err());
        r.put(CTX + 0x10 * 16, sl | 1);
        r.put(CTX + 0x10 * 16 + 8, aw(4) | DID << 8);
        assert_eq!(r.gpa(0x0010, None, 0x5000, Access::Read), Ok(DATA));
        // A present entry edited in place stays stale until invalidated.
        let slot = r.leaf_slot(sl, 4, 0x5000);
        r.put(slot, (DATA + 0x5000) | R | W);
        assert_eq!(r.read(0x5000), Ok(DATA), "cm={caching_mode}");
        r.put(slot, 0);
        assert_eq!(r.read(0x5000), Ok(DATA), "unmapped, but cached");
        r.submit(&[d_iotlb(3, DID, 0x5000, 0)]);
        assert!(r.read(0x5000).is_err(), "cm={caching_mode}");
        let hits = r.u.counters.iotlb_hits.load(Relaxed);
        assert!(hits >= 2);
    }
}

#[test]
fn scalable_not_present_pasid_entry_is_not_cached() {
    let (r, fl) = fs_rig();
    assert_eq!(r.reason(rq(SID, Some(3), 0x5000, false)), Some(0x59));
    r.pasid_entry(3, pe_first(fl, 4, true, false));
    assert_eq!(r.gpa(SID, Some(3), 0x5000, Access::Read), Ok(DATA));
    // A not-present first-stage entry neither.
    assert_eq!(r.reason(rd(0xa000)), Some(0x71));
    r.map_fl(fl, 4, 0xa000, DATA + 0xa000, P | RW | US);
    assert_eq!(r.read(0xa000), Ok(DATA + 0xa000));
}
