//! Register-level tests of the whole unit: a guest driver's view. Every
//! test programs an [`IntelIommu`] only through its register page and the
//! tables it builds in guest memory, then checks what the spec says is
//! visible: translation results, fault recording registers, FSTS, the
//! unit's own interrupts (through a recording [`InterruptSink`]) and the
//! counters.
//!
//! Tests named `bug_*` are `#[ignore]`d: they check spec behaviour the
//! model does not have yet (see the ignore reason of each).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::regs::*;
use super::translation::{Request, Resolved};
use super::{IntelIommu, InterruptSink, VtdConfig};
use crate::{Access, DmaFault, GuestMemoryMmap, Translate};

// --- the rig -------------------------------------------------------------

/// Records the unit's interrupts.
#[derive(Default)]
struct Recorder {
    msis: Mutex<Vec<(u64, u32)>>,
    remap_changes: AtomicUsize,
}

impl InterruptSink for Recorder {
    fn send(&self, address: u64, data: u32) {
        self.msis.lock().unwrap().push((address, data));
    }
    fn remapping_changed(&self) {
        self.remap_changes.fetch_add(1, Relaxed);
    }
}

const MEM_SIZE: u64 = 16 << 20;
const ROOT: u64 = 0x1_0000;
/// Legacy context table, or the lower scalable half-table (devfn 0-127).
const CTX: u64 = 0x1_1000;
/// Upper scalable half-table (devfn 128-255).
const CTX_HI: u64 = 0x1_2000;
const PASID_DIR: u64 = 0x2_0000;
const PASID_TABLE: u64 = 0x2_1000;
/// Invalidation queue: one 4 KiB page (IQA.QS = 0).
const IQ: u64 = 0x3_0000;
const STATUS: u64 = 0x3_f000;
const IRT: u64 = 0x4_0000;
/// Page-table pages are handed out from here.
const TABLES: u64 = 0x10_0000;
/// Target pages of mappings.
const DATA: u64 = 0x80_0000;
/// Below the host address width, but not guest memory.
const OUTSIDE: u64 = 0x1000_0000;

/// The device under test: 00:01.0.
const SID: u16 = 0x0008;
const DEVFN: u64 = 0x08;
const DID: u64 = 1;

const FE_ADDR: u32 = 0xfee0_1000;
const FE_DATA: u32 = 0x41;
const IE_ADDR: u32 = 0xfee0_2000;
const IE_DATA: u32 = 0x42;

/// Second-stage entry bits.
const R: u64 = 1;
const W: u64 = 2;
/// First-stage entry bits.
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
/// Large page, both stages.
const PS: u64 = 1 << 7;

const KIB4: u64 = 1 << 12;
const MIB2: u64 = 1 << 21;
const GIB1: u64 = 1 << 30;

/// AW field (context or PASID entry) for a number of levels.
fn aw(levels: u8) -> u64 {
    levels as u64 - 2
}

struct Rig {
    mem: GuestMemoryMmap,
    u: IntelIommu,
    sink: Arc<Recorder>,
    next_table: Cell<u64>,
    qtail: Cell<u64>,
}

impl Rig {
    /// A unit over 16 MiB of zeroed memory, its fault event unmasked and
    /// pointed at (FE_ADDR, FE_DATA), its completion event at (IE_ADDR,
    /// IE_DATA) but still masked as after reset.
    fn new(cfg: VtdConfig) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let sink = Arc::new(Recorder::default());
        let u = IntelIommu::new(cfg, mem.clone(), sink.clone()).unwrap();
        let r = Rig {
            mem,
            u,
            sink,
            next_table: Cell::new(TABLES),
            qtail: Cell::new(0),
        };
        r.w32(FEDATA, FE_DATA);
        r.w32(FEADDR, FE_ADDR);
        r.w32(FEUADDR, 0);
        r.w32(FECTL, 0);
        r.w32(IEDATA, IE_DATA);
        r.w32(IEADDR, IE_ADDR);
        r.w32(IEUADDR, 0);
        r
    }

    fn legacy_cfg(aw_bits: u8) -> VtdConfig {
        VtdConfig {
            scalable: false,
            first_stage: false,
            aw_bits,
            ..VtdConfig::default()
        }
    }

    fn scalable_cfg(aw_bits: u8) -> VtdConfig {
        VtdConfig {
            aw_bits,
            ..VtdConfig::default()
        }
    }

    // Registers.
    fn w(&self, off: usize, bytes: &[u8]) {
        self.u.mmio_write(off as u64, bytes);
    }
    fn w32(&self, off: usize, v: u32) {
        self.w(off, &v.to_le_bytes());
    }
    fn w64(&self, off: usize, v: u64) {
        self.w(off, &v.to_le_bytes());
    }
    fn r32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.u.mmio_read(off as u64, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.u.mmio_read(off as u64, &mut b);
        u64::from_le_bytes(b)
    }

    /// A global command the way drivers issue it: the current enables
    /// from GSTS plus the one bit being changed.
    fn cmd(&self, bit: u32) {
        let keep = self.r32(GSTS) & (GSTS_TES | GSTS_QIES | GSTS_IRES | GSTS_CFIS);
        self.w32(GCMD, keep | bit);
    }
    fn cmd_off(&self, bit: u32) {
        let keep = self.r32(GSTS) & (GSTS_TES | GSTS_QIES | GSTS_IRES | GSTS_CFIS);
        self.w32(GCMD, keep & !bit);
    }
    fn set_root(&self, rtaddr: u64) {
        self.w64(RTADDR, rtaddr);
        self.cmd(GCMD_SRTP);
    }

    // Guest memory.
    fn put(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
    fn get(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
    fn alloc(&self) -> u64 {
        let t = self.next_table.get();
        assert!(t < DATA, "out of table pages");
        self.next_table.set(t + 0x1000);
        t
    }

    /// Maps `iova` in the table at `root` with `leaf` at `leaf_level`
    /// (1: 4 KiB, 2: 2 MiB, 3: 1 GiB), allocating missing tables, whose
    /// entries get `nonleaf`.
    fn map(&self, root: u64, levels: u8, iova: u64, leaf_level: u8, leaf: u64, nonleaf: u64) {
        let mut table = root;
        for level in (leaf_level..=levels).rev() {
            let shift = 12 + 9 * (level as u64 - 1);
            let slot = table + ((iova >> shift) & 0x1ff) * 8;
            if level == leaf_level {
                self.put(slot, leaf);
                return;
            }
            let e = self.get(slot);
            table = if e & 3 != 0 {
                e & 0x000f_ffff_ffff_f000
            } else {
                let t = self.alloc();
                self.put(slot, t | nonleaf);
                t
            };
        }
    }
    fn map_sl(&self, root: u64, levels: u8, iova: u64, out: u64, bits: u64) {
        self.map(root, levels, iova, 1, out | bits, R | W);
    }
    fn map_fl(&self, root: u64, levels: u8, iova: u64, out: u64, bits: u64) {
        self.map(root, levels, iova, 1, out | bits, P | RW | US);
    }
    /// The address of the 4 KiB leaf entry for `iova` (tables must exist).
    fn leaf_slot(&self, root: u64, levels: u8, iova: u64) -> u64 {
        let mut table = root;
        for level in (2..=levels).rev() {
            let shift = 12 + 9 * (level as u64 - 1);
            table = self.get(table + ((iova >> shift) & 0x1ff) * 8) & 0x000f_ffff_ffff_f000;
        }
        table + ((iova >> 12) & 0x1ff) * 8
    }

    // Scalable-mode structures.
    fn sm_context(&self, devfn: u64, q0: u64, q1: u64) {
        let half = if devfn < 128 { CTX } else { CTX_HI };
        let base = half + (devfn & 0x7f) * 32;
        self.put(base, q0);
        self.put(base + 8, q1);
    }
    fn pasid_entry(&self, pasid: u64, q: [u64; 3]) {
        assert!(pasid < 64);
        for (i, w) in q.iter().enumerate() {
            self.put(PASID_TABLE + pasid * 64 + i as u64 * 8, *w);
        }
    }

    // Queued invalidation.
    fn qi_enable(&self, wide: bool) {
        self.w64(IQA, IQ | (wide as u64) << 11);
        self.cmd(GCMD_QIE);
        self.qtail.set(0);
    }
    fn submit(&self, descs: &[[u64; 4]]) {
        let wide = self.r64(IQA) & (1 << 11) != 0;
        let size = if wide { 32 } else { 16 };
        let mut t = self.qtail.get();
        for d in descs {
            for (i, w) in d.iter().take(size as usize / 8).enumerate() {
                self.put(IQ + t + i as u64 * 8, *w);
            }
            t = (t + size) % 4096;
        }
        self.qtail.set(t);
        // Linux writes the tail with a 32-bit write.
        self.w32(IQT, t as u32);
    }

    // Results.
    fn msis(&self) -> Vec<(u64, u32)> {
        self.sink.msis.lock().unwrap().clone()
    }
    fn clear_msis(&self) {
        self.sink.msis.lock().unwrap().clear();
    }
    fn frcd(&self, i: usize) -> (u64, u64) {
        (self.r64(FRCD + i * 16), self.r64(FRCD + i * 16 + 8))
    }
    fn clear_frcd(&self, i: usize) {
        // As Linux does: a 32-bit write of F to the top dword.
        self.w32(FRCD + i * 16 + 12, 1 << 31);
    }
    fn fault_count(&self, reason: u8) -> u64 {
        self.u.counters.fault_reasons[reason as usize].load(Relaxed)
    }
    fn inv_count(&self, slot: usize) -> u64 {
        self.u.counters.invalidations[slot].load(Relaxed)
    }

    /// Translates one page-sized piece through the device path.
    fn gpa(&self, sid: u16, pasid: Option<u32>, iova: u64, access: Access) -> Result<u64, String> {
        match self.u.translate(sid, pasid, iova, 8, access) {
            Ok(v) => {
                assert_eq!(v.len(), 1, "{v:?}");
                assert_eq!((v[0].iova, v[0].len), (iova, 8));
                Ok(v[0].gpa)
            }
            Err(DmaFault::Blocked { reason, .. }) => Err(reason),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    fn read(&self, iova: u64) -> Result<u64, String> {
        self.gpa(SID, None, iova, Access::Read)
    }
    fn write(&self, iova: u64) -> Result<u64, String> {
        self.gpa(SID, None, iova, Access::Write)
    }
    fn reason(&self, r: Request) -> Option<u8> {
        self.u.translate_request(&r).err().map(|f| f.reason.0)
    }

    /// Checks fault recording register `i` against the request.
    fn assert_record(&self, i: usize, reason: u8, r: &Request) {
        let (lo, hi) = self.frcd(i);
        assert_eq!(lo, r.iova & !0xfff, "FRCD{i}.FI");
        assert_eq!(hi & 0xffff, r.sid as u64, "FRCD{i}.SID");
        assert_eq!((hi >> 32) & 0xff, reason as u64, "FRCD{i}.FR");
        assert_eq!(hi >> 63, 1, "FRCD{i}.F");
        assert_eq!((hi >> 62) & 1, !r.write as u64, "FRCD{i}.T (1 = read)");
        match r.pasid {
            Some(p) => {
                assert_eq!((hi >> 31) & 1, 1, "FRCD{i}.PP");
                assert_eq!((hi >> 40) & 0xf_ffff, p as u64 & 0xf_ffff, "FRCD{i}.PV");
            }
            None => assert_eq!((hi >> 31) & 1, 0, "FRCD{i}.PP"),
        }
    }

    /// `r` faults with `reason`: the fault lands in FRCD0 with FSTS.PPF
    /// and FRI 0, and one fault event goes out. The same access through
    /// the device path fails too, lands in FRCD1 and sends no second
    /// event (PPF was already set).
    fn assert_fault(&self, r: Request, reason: u8) {
        assert_eq!(self.msis(), vec![], "no event before the fault");
        let f = self.u.translate_request(&r).expect_err("request must fault");
        assert_eq!(f.reason.0, reason, "reason {:#x} != {reason:#x}", f.reason.0);
        self.assert_record(0, reason, &r);
        let fsts = self.r32(FSTS);
        assert_ne!(fsts & FSTS_PPF, 0, "FSTS.PPF");
        assert_eq!((fsts >> 8) & 0xff, 0, "FSTS.FRI");
        assert_eq!(fsts & FSTS_PFO, 0);
        assert_eq!(self.msis(), vec![(FE_ADDR as u64, FE_DATA)], "one fault event");
        assert_eq!(self.r32(FECTL) & CTL_IP, 0, "FECTL.IP stays clear when sent");
        assert_eq!(self.fault_count(reason), 1);
        if !r.privileged {
            let access = if r.write { Access::Write } else { Access::Read };
            let e = self.gpa(r.sid, r.pasid, r.iova, access).unwrap_err();
            assert_eq!(e, format!("fault reason {reason:#04x}"));
            self.assert_record(1, reason, &r);
            assert_eq!((self.r32(FSTS) >> 8) & 0xff, 0, "FRI: oldest pending");
            assert_eq!(self.msis().len(), 1, "PPF already set: no second event");
            assert_eq!(self.fault_count(reason), 2);
        }
    }
}

fn rq(sid: u16, pasid: Option<u32>, iova: u64, write: bool) -> Request {
    Request {
        sid,
        pasid,
        iova,
        write,
        privileged: false,
    }
}
fn rd(iova: u64) -> Request {
    rq(SID, None, iova, false)
}
fn wr(iova: u64) -> Request {
    rq(SID, None, iova, true)
}
fn supervisor(mut r: Request) -> Request {
    r.privileged = true;
    r
}

/// Legacy mode, device 00:01.0 in domain 1 through a second-stage table
/// of `levels` levels: 0x5000 RW, 0x6000 read-only, 0x7000 write-only.
/// Returns the rig and the table root.
fn legacy_rig_with(aw_bits: u8, levels: u8) -> (Rig, u64) {
    let r = Rig::new(Rig::legacy_cfg(aw_bits));
    let sl = r.alloc();
    r.put(ROOT, CTX | 1);
    r.put(CTX + DEVFN * 16, sl | 1);
    r.put(CTX + DEVFN * 16 + 8, aw(levels) | DID << 8);
    r.map_sl(sl, levels, 0x5000, DATA, R | W);
    r.map_sl(sl, levels, 0x6000, DATA + 0x1000, R);
    r.map_sl(sl, levels, 0x7000, DATA + 0x2000, W);
    r.set_root(ROOT);
    r.cmd(GCMD_TE);
    (r, sl)
}
fn legacy_rig() -> (Rig, u64) {
    legacy_rig_with(48, 4)
}

/// Scalable mode with root, context (PASIDE, PDTS 0), PASID directory
/// entry 0; the PASID entries are the caller's.
fn scalable_base(aw_bits: u8) -> Rig {
    let r = Rig::new(Rig::scalable_cfg(aw_bits));
    r.put(ROOT, CTX | 1);
    r.put(ROOT + 8, CTX_HI | 1);
    r.sm_context(DEVFN, PASID_DIR | 1 | 8, 0);
    r.put(PASID_DIR, PASID_TABLE | 1);
    r.set_root(ROOT | 1 << 10);
    r.cmd(GCMD_TE);
    r
}

fn pe_first(fl: u64, levels: u8, sre: bool, wpe: bool) -> [u64; 3] {
    let flpm = (levels == 5) as u64;
    [1 | 1 << 6, DID, fl | sre as u64 | flpm << 2 | (wpe as u64) << 4]
}
fn pe_second(sl: u64, levels: u8) -> [u64; 3] {
    [sl | 1 | aw(levels) << 2 | 2 << 6, DID, 0]
}
fn pe_nested(fl: u64, fl_levels: u8, sl: u64, sl_levels: u8) -> [u64; 3] {
    let flpm = (fl_levels == 5) as u64;
    [sl | 1 | aw(sl_levels) << 2 | 3 << 6, DID, fl | flpm << 2]
}
fn pe_pass_through() -> [u64; 3] {
    [1 | 4 << 6, DID, 0]
}

/// Scalable, RID_PASID (0) through a 4-level first-stage table with SRE:
/// 0x5000 user RW, 0x6000 user read-only, 0x7000 supervisor-only RW.
fn fs_rig() -> (Rig, u64) {
    let r = scalable_base(48);
    let fl = r.alloc();
    r.map_fl(fl, 4, 0x5000, DATA, P | RW | US);
    r.map_fl(fl, 4, 0x6000, DATA + 0x1000, P | US);
    r.map_fl(fl, 4, 0x7000, DATA + 0x2000, P | RW);
    r.pasid_entry(0, pe_first(fl, 4, true, false));
    (r, fl)
}

/// Scalable, RID_PASID (0) through a second-stage table of `levels`:
/// 0x5000 RW, 0x6000 read-only, 0x7000 write-only.
fn ss_rig_with(levels: u8) -> (Rig, u64) {
    let r = scalable_base(48);
    let sl = r.alloc();
    r.map_sl(sl, levels, 0x5000, DATA, R | W);
    r.map_sl(sl, levels, 0x6000, DATA + 0x1000, R);
    r.map_sl(sl, levels, 0x7000, DATA + 0x2000, W);
    r.pasid_entry(0, pe_second(sl, levels));
    (r, sl)
}
fn ss_rig() -> (Rig, u64) {
    ss_rig_with(4)
}

// --- sanity of the rigs --------------------------------------------------

#[test]
fn rigs_translate() {
    let (r, _) = legacy_rig();
    assert_eq!(r.read(0x5123), Ok(DATA + 0x123));
    assert_eq!(r.write(0x5123), Ok(DATA + 0x123));
    let (r, _) = fs_rig();
    assert_eq!(r.read(0x5123), Ok(DATA + 0x123));
    let (r, _) = ss_rig();
    assert_eq!(r.write(0x5ff8), Ok(DATA + 0xff8));
    assert_eq!(r.msis(), vec![]);
    assert_eq!(r.r32(FSTS), 0);
}

// --- every fault reason on the DMA path ----------------------------------

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
        r.map(t, 4, 0x20_0000, 2, DATA + 0x1000 | R | PS, R | W);
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
        // 5-level first stage without aw-bits 57.
        r.pasid_entry(0, pe_first(t, 5, true, false));
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
        r.map(t, 4, 0x20_0000, 2, DATA + 0x2000 | P | RW | US | PS, P | RW | US);
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

/// Interrupt remapping on, 256-entry xAPIC table at IRT; entry 0 present
/// (vector 0x31, destination 5) with exact source-ID check for SID.
fn ir_rig() -> Rig {
    let r = Rig::new(VtdConfig::default());
    r.put(IRT, 1 | 0x31 << 16 | 5 << 40);
    r.put(IRT + 8, 1 << 18 | SID as u64);
    r.w64(IRTA, IRT | 7);
    r.cmd(GCMD_SIRTP);
    r.cmd(GCMD_IRE);
    r
}

/// Remappable-format MSI address for `handle`.
fn msi_handle(handle: u64) -> u64 {
    0xfee0_0010 | (handle & 0x7fff) << 5 | (handle >> 15 & 1) << 2
}

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
