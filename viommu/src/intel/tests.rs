//! Register-level tests of the whole unit: a guest driver's view. Every
//! test programs an [`IntelIommu`] only through its register page and the
//! tables it builds in guest memory, then checks what the spec says is
//! visible: translation results, fault recording registers, FSTS, the
//! unit's own interrupts (through a recording [`InterruptSink`]) and the
//! counters.
//!
//! Tests named `bug_*` pin down spec behaviour the model once got wrong.
//! The rig is here; the tests are in `tests/`, one file per area.

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

// --- shared by the sections below ----------------------------------------

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

fn d_cc(g: u64, did: u64, sid: u64, fm: u64) -> [u64; 4] {
    [1 | g << 4 | did << 16 | sid << 32 | fm << 48, 0, 0, 0]
}

fn d_iotlb(g: u64, did: u64, addr: u64, am: u64) -> [u64; 4] {
    // DR and DW set, as Linux does.
    [2 | g << 4 | 3 << 6 | did << 16, addr | am, 0, 0]
}

fn d_pc(g: u64, did: u64, pasid: u64) -> [u64; 4] {
    [7 | g << 4 | did << 16 | pasid << 32, 0, 0, 0]
}

fn d_piotlb(g: u64, did: u64, pasid: u64, addr: u64, am: u64) -> [u64; 4] {
    [6 | g << 4 | did << 16 | pasid << 32, addr | am, 0, 0]
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

mod faults;
mod invalidation;
mod passthrough;
mod registers;
mod walks;
