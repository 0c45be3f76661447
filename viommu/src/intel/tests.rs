//! Register-level tests of the whole unit: a guest driver's view. Every
//! test programs an [`IntelIommu`] only through its register page and the
//! tables it builds in guest memory, then checks what the spec says is
//! visible: translation results, fault recording registers, FSTS, the
//! unit's own interrupts (through a recording [`InterruptSink`]) and the
//! counters.
//!
//! Tests named `bug_*` pin down spec behaviour the model once got wrong.

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
        let f = self
            .u
            .translate_request(&r)
            .expect_err("request must fault");
        assert_eq!(
            f.reason.0, reason,
            "reason {:#x} != {reason:#x}",
            f.reason.0
        );
        self.assert_record(0, reason, &r);
        let fsts = self.r32(FSTS);
        assert_ne!(fsts & FSTS_PPF, 0, "FSTS.PPF");
        assert_eq!((fsts >> 8) & 0xff, 0, "FSTS.FRI");
        assert_eq!(fsts & FSTS_PFO, 0);
        assert_eq!(
            self.msis(),
            vec![(FE_ADDR as u64, FE_DATA)],
            "one fault event"
        );
        assert_eq!(
            self.r32(FECTL) & CTL_IP,
            0,
            "FECTL.IP stays clear when sent"
        );
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
        translation_request: false,
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
    scalable_base_with(Rig::scalable_cfg(aw_bits))
}

fn scalable_base_with(cfg: VtdConfig) -> Rig {
    let r = Rig::new(cfg);
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
    [
        1 | 1 << 6,
        DID,
        fl | sre as u64 | flpm << 2 | (wpe as u64) << 4,
    ]
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

// --- invalidation --------------------------------------------------------

fn d_cc(g: u64, did: u64, sid: u64, fm: u64) -> [u64; 4] {
    [1 | g << 4 | did << 16 | sid << 32 | fm << 48, 0, 0, 0]
}
fn d_iotlb(g: u64, did: u64, addr: u64, am: u64) -> [u64; 4] {
    // DR and DW set, as Linux does.
    [2 | g << 4 | 3 << 6 | did << 16, addr | am, 0, 0]
}
fn d_devtlb(sid: u64, addr: u64) -> [u64; 4] {
    [3 | sid << 32, addr, 0, 0]
}
fn d_iec(index: Option<(u64, u64)>) -> [u64; 4] {
    match index {
        None => [4, 0, 0, 0],
        Some((idx, im)) => [4 | 1 << 4 | im << 27 | idx << 32, 0, 0, 0],
    }
}
fn d_wait(interrupt: bool, status: Option<(u64, u32)>) -> [u64; 4] {
    let (addr, data) = status.unwrap_or((0, 0));
    let sw = status.is_some() as u64;
    [
        5 | (interrupt as u64) << 4 | sw << 5 | (data as u64) << 32,
        addr,
        0,
        0,
    ]
}
fn d_piotlb(g: u64, did: u64, pasid: u64, addr: u64, am: u64) -> [u64; 4] {
    [6 | g << 4 | did << 16 | pasid << 32, addr | am, 0, 0]
}
fn d_pc(g: u64, did: u64, pasid: u64) -> [u64; 4] {
    [7 | g << 4 | did << 16 | pasid << 32, 0, 0, 0]
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

// --- walks ---------------------------------------------------------------

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

// --- global command and register semantics -------------------------------

#[test]
fn global_command_status_and_latches() {
    let r = Rig::new(VtdConfig::default());
    assert_eq!(r.r32(GSTS), 0);
    for (cmd, sts) in [
        (GCMD_TE, GSTS_TES),
        (GCMD_QIE, GSTS_QIES),
        (GCMD_IRE, GSTS_IRES),
        (GCMD_CFI, GSTS_CFIS),
    ] {
        r.cmd(cmd);
        assert_ne!(r.r32(GSTS) & sts, 0, "{cmd:#x}");
        assert_eq!(r.r32(GCMD), 0, "GCMD reads as 0");
    }
    assert_eq!(r.r32(GSTS), GSTS_TES | GSTS_QIES | GSTS_IRES | GSTS_CFIS);
    for (cmd, sts) in [
        (GCMD_CFI, GSTS_CFIS),
        (GCMD_IRE, GSTS_IRES),
        (GCMD_QIE, GSTS_QIES),
        (GCMD_TE, GSTS_TES),
    ] {
        r.cmd_off(cmd);
        assert_eq!(r.r32(GSTS) & sts, 0, "{cmd:#x} off");
    }
    // One-shot commands set their status bits.
    r.w64(RTADDR, ROOT);
    r.cmd(GCMD_SRTP);
    assert_ne!(r.r32(GSTS) & GSTS_RTPS, 0);
    r.w64(IRTA, IRT);
    let changes = r.sink.remap_changes.load(Relaxed);
    r.cmd(GCMD_SIRTP);
    assert_ne!(r.r32(GSTS) & GSTS_IRTPS, 0);
    assert!(r.sink.remap_changes.load(Relaxed) > changes);
    r.cmd(GCMD_IRE);
    assert!(
        r.sink.remap_changes.load(Relaxed) > changes + 1,
        "IRE change"
    );
    let mut b = [0xffu8; 8];
    r.u.mmio_read(GCMD as u64 - 2, &mut b);
    assert_eq!(&b[2..6], &[0, 0, 0, 0], "GCMD bytes read 0 in any access");
    // Without interrupt remapping, IRE and CFI do nothing.
    let r = Rig::new(VtdConfig {
        intremap: false,
        ..VtdConfig::default()
    });
    assert_eq!(r.r64(ECAP) & (1 << 3), 0, "ECAP.IR");
    r.w32(GCMD, GCMD_IRE | GCMD_CFI);
    assert_eq!(r.r32(GSTS), 0);
    assert_eq!(
        r.u.remap_interrupt(SID, 0xfee0_0010, 0),
        Some((0xfee0_0010, 0))
    );
}

#[test]
fn root_table_pointer_is_latched_by_srtp() {
    let (r, _) = legacy_rig();
    r.w64(RTADDR, OUTSIDE);
    assert_eq!(r.r64(RTADDR), OUTSIDE, "the register holds the new value");
    assert_eq!(r.read(0x5000), Ok(DATA), "the walk uses the latched one");
    r.cmd(GCMD_SRTP);
    assert_eq!(r.reason(rd(0x5000)), Some(0x08));
    // TTM is not writable without scalable mode support.
    r.w64(RTADDR, ROOT | 1 << 10);
    assert_eq!(r.r64(RTADDR), ROOT);
    // The low 12 bits are reserved (TTM aside).
    let (r, _) = fs_rig();
    r.w64(RTADDR, ROOT | 0xfff);
    assert_eq!(r.r64(RTADDR), ROOT | 0xc00);
}

#[test]
fn interrupt_table_pointer_is_latched_by_sirtp() {
    let r = ir_rig();
    r.w64(IRTA, OUTSIDE | 7);
    assert_eq!(
        r.u.remap_interrupt(SID, msi_handle(0), 0),
        Some((0xfee0_5000, 0x31))
    );
    r.cmd(GCMD_SIRTP);
    assert_eq!(r.u.remap_interrupt(SID, msi_handle(0), 0), None);
    assert_eq!(r.fault_count(0x23), 1);
}

#[test]
fn translation_enable_toggle_drops_cached_state() {
    let (r, t) = legacy_rig();
    assert_eq!(r.read(0x5000), Ok(DATA));
    r.cmd_off(GCMD_TE);
    assert_eq!(r.read(0x5000), Ok(0x5000), "identity while off");
    r.map_sl(t, 4, 0x5000, DATA + 0x1000, R | W);
    r.cmd(GCMD_TE);
    assert_eq!(r.read(0x5000), Ok(DATA + 0x1000));
}

#[test]
fn read_only_and_rw1c_registers() {
    let (r, _) = legacy_rig();
    let (ver, cap, ecap) = (r.r32(VER), r.r64(CAP), r.r64(ECAP));
    assert_eq!(ver, 0x30, "VER 3.0 (scalable mode)");
    r.w64(CAP, !cap);
    r.w64(ECAP, !ecap);
    r.w32(VER, 0);
    assert_eq!((r.r32(VER), r.r64(CAP), r.r64(ECAP)), (ver, cap, ecap));
    // GSTS is read-only.
    r.w32(GSTS, 0);
    assert_ne!(r.r32(GSTS) & GSTS_TES, 0);
    // IQH is read-only.
    r.w64(IQH, 0x40);
    assert_eq!(r.r64(IQH), 0);
    // FSTS: PFO, IQE, ICE, ITE, PRO are RW1C; writing 0 keeps them.
    r.qi_enable(false);
    r.submit(&[[0, 0, 0, 0]]);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    r.w32(FSTS, 0);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    r.w32(FSTS, !FSTS_IQE);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    r.put(IQ, d_wait(false, None)[0]); // fixed, so the queue can resume
    r.w32(FSTS, FSTS_IQE);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
    // IQA: bit 11 (DW) is reserved without scalable mode.
    r.w64(IQA, IQ | 1 << 11 | 0xff0);
    assert_eq!(r.r64(IQA), IQ);
    // CAIG and IAIG are read-only.
    r.w64(CCMD, 3 << 59);
    assert_eq!(r.r64(CCMD) >> 59 & 3, 0);
    r.w64(IOTLB, 3 << 57);
    assert_eq!(r.r64(IOTLB) >> 57 & 3, 0);
    // Unimplemented offsets read as zero and ignore writes.
    r.w64(0x300, !0);
    r.w64(0xff8, !0);
    assert_eq!((r.r64(0x300), r.r64(0xff8)), (0, 0));
}

#[test]
fn capabilities_follow_the_configuration() {
    let r = Rig::new(Rig::legacy_cfg(39));
    let (cap, ecap) = (r.r64(CAP), r.r64(ECAP));
    assert_eq!((cap >> 8) & 0x1f, 0b00010, "SAGAW: 3-level only");
    assert_eq!((cap >> 16) & 0x3f, 38, "MGAW");
    assert_eq!(((cap >> 24) & 0x3ff) * 16, FRCD as u64, "FRO");
    assert_eq!(((cap >> 40) & 0xff) + 1, NUM_FAULT_RECORDS as u64, "NFR");
    assert_eq!(ecap & (1 << 43), 0, "SMTS");
    assert_eq!(ecap & (1 << 47), 0, "FLTS");
    assert_ne!(ecap & (1 << 1), 0, "QI");
    let r = Rig::new(Rig::scalable_cfg(57));
    let (cap, ecap) = (r.r64(CAP), r.r64(ECAP));
    assert_ne!(cap & (1 << 60), 0, "FL5LP");
    assert_ne!(cap & (1 << 56), 0, "FL1GP");
    assert_ne!(ecap & (1 << 43), 0, "SMTS");
    assert_ne!(ecap & (1 << 47), 0, "FLTS");
    assert_ne!(ecap & (1 << 46), 0, "SLTS");
}

#[test]
fn any_access_size_at_any_offset_is_harmless() {
    for cfg in [Rig::legacy_cfg(48), Rig::scalable_cfg(57)] {
        let r = Rig::new(cfg);
        let mut buf = [0u8; 16];
        for size in [1usize, 2, 3, 4, 5, 7, 8, 16] {
            for off in (0..0x1010u64).step_by(1) {
                r.u.mmio_read(off, &mut buf[..size]);
                if off > 0xff0 {
                    // Straddling the end of the page: the rest reads 0.
                    let inside = (0x1000 - off.min(0x1000)) as usize;
                    assert!(buf[inside.min(size)..size].iter().all(|&b| b == 0));
                }
            }
        }
        // Writes of zeros and of ones everywhere, in odd sizes.
        for pattern in [0x00u8, 0xff, 0x5a] {
            for size in [1usize, 3, 4, 7, 8, 16] {
                for off in (0..0x1008u64).step_by(3) {
                    // IVA's address mask byte is left out: AM >= 52 hits
                    // the bug in bug_page_selective_invalidation_with_huge_address_mask.
                    if pattern == 0xff && touches(off, size, IVA, 1) {
                        continue;
                    }
                    r.u.mmio_write(off, &[pattern; 16][..size]);
                }
            }
        }
        r.w64(IVA, 0);
        for off in [u64::MAX, u64::MAX - 3, 1 << 63] {
            r.u.mmio_read(off, &mut buf);
            assert_eq!(buf, [0; 16]);
            r.u.mmio_write(off, &[0xff; 16]);
        }
        r.u.mmio_read(0, &mut []);
        r.u.mmio_write(0, &[]);
        // Still a working unit.
        assert_eq!(r.r32(VER), 0x30);
        let _ = r.u.translate(SID, None, 0x1000, 0x1000, Access::Read);
    }
}

#[test]
fn scalable_upper_half_context_table() {
    // devfn >= 128 is found through the root entry's upper pointer.
    let (r, _) = fs_rig();
    r.sm_context(0x88, PASID_DIR | 1 | 8, 0);
    assert_eq!(r.gpa(0x0088, None, 0x5000, Access::Read), Ok(DATA));
    // The lower half's entry for devfn 0x08 is a different device.
    r.put(CTX + DEVFN * 32, 0);
    r.w64(CCMD, CCMD_ICC | 1 << 61);
    assert_eq!(r.gpa(0x0088, None, 0x5000, Access::Read), Ok(DATA));
    assert!(r.read(0x5000).is_err());
}

#[test]
fn bug_fault_event_only_for_the_first_pending_status() {
    // §11.4.7.1 FECTL.IP: "If any of the status fields in the Fault Status
    // Register was already Set at the time of setting any of these fields,
    // it is not treated as a new interrupt condition."
    let (r, _) = legacy_rig();
    assert!(r.read(0x9000).is_err());
    assert_eq!(r.msis().len(), 1);
    r.qi_enable(false);
    r.submit(&[[0, 0, 0, 0]]);
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.msis().len(), 1, "IQE while PPF is set: no new event");
    for i in 0..NUM_FAULT_RECORDS as u64 {
        let _ = r.read(0x10_0000 + i * 0x1000);
    }
    assert_ne!(r.r32(FSTS) & FSTS_PFO, 0);
    assert_eq!(r.msis().len(), 1, "overflow while PPF is set: no new event");
}

#[test]
fn bug_completion_event_ip_cleared_when_iwc_serviced() {
    // §11.4.9.5 IECTL.IP: hardware clears IP when software services the
    // IWC field of ICS.
    let (r, _) = legacy_rig();
    r.qi_enable(false);
    r.submit(&[d_wait(true, None)]);
    assert_eq!(r.r32(IECTL), CTL_IM | CTL_IP);
    r.w32(ICS, ICS_IWC);
    assert_eq!(r.r32(IECTL), CTL_IM, "IP cleared by servicing IWC");
    r.w32(IECTL, 0);
    assert_eq!(r.msis(), vec![]);
}

#[test]
fn qi_wait_drains_dma_that_started_before_it() {
    let (r, _) = legacy_rig();
    r.qi_enable(false);
    let fence = r.u.fence().expect("the unit has a fence").clone();
    let in_flight = fence.enter(SID);
    // A wait drains what the invalidations before it removed: here the
    // device's domain.
    let [q0, q1, ..] = d_iotlb(2, DID, 0, 0);
    r.put(IQ, q0);
    r.put(IQ + 8, q1);
    let [q0, _, ..] = d_wait(false, Some((STATUS, 1)));
    r.put(IQ + 16, q0);
    r.put(IQ + 24, STATUS);
    let u = &r.u;
    // The device translated under its domain (inside its operation).
    assert_eq!(r.read(0x5000), Ok(DATA));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| u.mmio_write(IQT as u64, &0x20u32.to_le_bytes()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(r.get(STATUS), 0, "the wait is held by the DMA in flight");
        // The unit is not locked meanwhile: DMA still translates.
        assert_eq!(r.read(0x5000), Ok(DATA));
        drop(in_flight);
        waiter.join().unwrap();
    });
    assert_eq!(r.get(STATUS) as u32, 1);
}

// --- passthrough endpoints (host IOMMU following the guest) ---------------

mod passthrough {
    use super::*;
    use crate::host::{
        HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping, HostPerm,
        Stage1Invalidation, Stage1Table,
    };
    use crate::intel::PassthroughMode;

    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Attach(HostAttachment),
        Map(u64, u64, u64, HostPerm),
        Unmap(u64, u64),
        Invalidate(Vec<Stage1Invalidation>),
    }

    /// Records what the unit asks of the host.
    #[derive(Default)]
    struct FakeHost {
        calls: Mutex<Vec<Call>>,
        nesting: bool,
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
                ..Default::default()
            }
        }
        fn attach(&self, to: HostAttachment) -> Result<(), HostIommuError> {
            self.calls.lock().unwrap().push(Call::Attach(to));
            Ok(())
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
}
