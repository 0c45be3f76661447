//! A deterministic fuzz driver for the VT-d unit.
//!
//! [`run`] reads its input as a configuration byte followed by a sequence
//! of operations a hostile guest and its devices could perform: register
//! accesses of any size at any offset, arbitrary bytes anywhere in guest
//! memory (so root, context and PASID tables, page tables, invalidation
//! descriptors and interrupt remapping entries can all be garbage), DMA
//! translations with any requester, PASID, address, length and access,
//! ATS translation requests, page requests and interrupt remapping.
//!
//! The property is that nothing panics (and that a few cheap invariants of
//! the device-facing results hold). The same input always does the same
//! thing. Used by `cargo fuzz` (`/fuzz`) and by the CI smoke test
//! (`viommu/tests/fuzz_smoke.rs`).

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::regs::*;
use super::translation::Request;
use super::{IntelIommu, InterruptSink, VtdConfig};
use crate::{Access, GuestMemoryMmap, PageRequest, Translate};

/// Guest memory of every run.
pub const MEM_SIZE: u64 = 4 << 20;
/// Operations per input at most, so every input ends quickly.
pub const MAX_OPS: usize = 512;

// Where the prebuilt configuration puts things (inputs are free to
// overwrite any of it).
const ROOT: u64 = 0x1000;
const CTX: u64 = 0x2000;
const CTX_HI: u64 = 0x3000;
const PASID_DIR: u64 = 0x4000;
const PASID_TABLE: u64 = 0x5000;
const IQ: u64 = 0x8000;
const PRQ: u64 = 0xc000;
const IRT: u64 = 0x1_0000;
const TABLES: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;

/// Places inputs aim their memory writes at.
const AREAS: [u64; 10] = [
    ROOT,
    CTX,
    CTX_HI,
    PASID_DIR,
    PASID_TABLE,
    IQ,
    PRQ,
    IRT,
    TABLES,
    DATA,
];

/// Registers inputs aim their focused writes at.
const REGS: [usize; 26] = [
    GCMD,
    RTADDR,
    CCMD,
    FSTS,
    FECTL,
    FEDATA,
    FEADDR,
    IQH,
    IQT,
    IQA,
    ICS,
    IECTL,
    IQERCD,
    IRTA,
    PQH,
    PQT,
    PQA,
    PRS,
    PECTL,
    IVA,
    IOTLB,
    FRCD,
    FRCD + 8,
    FRCD + 12,
    FRCD + 0x7c,
    0xfff,
];

/// Commands of GCMD.
const COMMANDS: [u32; 9] = [
    GCMD_TE, GCMD_SRTP, GCMD_SFL, GCMD_EAFL, GCMD_WBF, GCMD_QIE, GCMD_IRE, GCMD_SIRTP, GCMD_CFI,
];

struct Quiet;

impl InterruptSink for Quiet {
    fn send(&self, _address: u64, _data: u32) {}
}

/// The input, read front to back; past its end everything reads as zero.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// Up to `n` bytes of the input (fewer at its end).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
    /// A value biased towards what tables hold: zero, a small number, an
    /// address in guest memory with flag bits, or anything.
    fn word(&mut self) -> u64 {
        match self.u8() % 6 {
            0 => 0,
            1 => u64::from(self.u8()),
            2 => {
                let area = AREAS[self.u8() as usize % AREAS.len()];
                (area + u64::from(self.u16()) * 8 % 0x1000) | u64::from(self.u16() & 0xfff)
            }
            3 => {
                let page = TABLES + u64::from(self.u8()) % 32 * 0x1000;
                page | u64::from(self.u8())
            }
            4 => u64::from(self.u32() % MEM_SIZE as u32) | u64::from(self.u8() & 0x87),
            _ => self.u64(),
        }
    }
    /// A guest address: in a known area, anywhere in memory, or anything.
    fn addr(&mut self) -> u64 {
        match self.u8() % 4 {
            0 | 1 => AREAS[self.u8() as usize % AREAS.len()] + u64::from(self.u16() % 0x1000),
            2 => u64::from(self.u32()) % MEM_SIZE,
            _ => self.u64(),
        }
    }
    fn sid(&mut self) -> u16 {
        match self.u8() % 4 {
            0..=2 => u16::from(self.u8() % 12),
            _ => self.u16(),
        }
    }
    fn pasid(&mut self) -> Option<u32> {
        match self.u8() % 4 {
            0 | 1 => None,
            2 => Some(u32::from(self.u8() % 8)),
            _ => Some(self.u32()),
        }
    }
    fn iova(&mut self) -> u64 {
        match self.u8() % 4 {
            0 | 1 => u64::from(self.u8() % 64) << 12 | u64::from(self.u16() & 0xfff),
            2 => u64::from(self.u32()) << (self.u8() % 32),
            _ => self.u64(),
        }
    }
    /// A DMA length: up to 16 MiB (device lengths are bounded too, and
    /// the work is linear in the number of pages), or one that overflows.
    fn len(&mut self, iova: u64) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1..=5 => u64::from(self.u16() % 0x4000),
            6 => u64::from(self.u32() % (16 << 20)),
            _ => (u64::MAX - iova)
                .checked_add(1 + u64::from(self.u8()))
                .unwrap_or(1 << 24),
        }
    }
    fn access(&mut self) -> Access {
        [Access::Read, Access::Write, Access::ReadWrite][self.u8() as usize % 3]
    }
}

/// Runs one input. Never panics unless the model has a bug.
pub fn run(data: &[u8]) {
    run_counted(data);
}

/// [`run`], returning what the unit counted (for checking that inputs
/// reach deep into the model).
pub fn run_counted(data: &[u8]) -> Option<Box<super::Counters>> {
    let mut inp = Input { data, pos: 0 };
    let flags = inp.u8();
    let scalable = flags & 1 != 0;
    let cfg = VtdConfig {
        scalable,
        first_stage: scalable && flags & 2 != 0,
        caching_mode: flags & 4 != 0,
        intremap: flags & 8 != 0,
        aw_bits: [39, 48, 57, 48][usize::from(flags >> 4) & 3],
        pasid_bits: if scalable && flags & 0x40 != 0 {
            inp.u8() % 21
        } else {
            0
        },
        offer_nesting: scalable && flags & 0x82 == 0x82,
        // The second 48-bit choice: a first stage limited as a host
        // without FL1GP/FL5LP limits it.
        fl1gp: flags >> 4 & 3 != 3,
        fl5lp: flags >> 4 & 3 != 3,
    };
    // Zeroed memory, reused across runs (see `PooledMemory`).
    let mem = super::fuzz_rig::PooledMemory::new(MEM_SIZE)?;
    let u = IntelIommu::new(cfg, mem.clone(), Arc::new(Quiet)).expect("a valid configuration");
    let rig = Rig { u: &u, mem: &mem };
    if flags & 0x80 != 0 {
        rig.prebuild(&cfg);
    }
    let mut ops = 0;
    while !inp.done() && ops < MAX_OPS {
        rig.step(&mut inp);
        ops += 1;
    }
    let mut u = u;
    Some(Box::new(std::mem::take(&mut u.counters)))
}

struct Rig<'a> {
    u: &'a IntelIommu,
    mem: &'a GuestMemoryMmap,
}

impl Rig<'_> {
    fn put(&self, addr: u64, v: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(addr));
    }
    fn w32(&self, off: usize, v: u32) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }
    fn w64(&self, off: usize, v: u64) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
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
    fn command(&self, bit: u32, on: bool) {
        let keep = self.r32(GSTS) & (GSTS_TES | GSTS_QIES | GSTS_IRES | GSTS_CFIS);
        self.w32(GCMD, if on { keep | bit } else { keep & !bit });
    }

    /// Maps 64 pages from IOVA 0 and a 2 MiB page at 2 MiB in the table at
    /// `root`; `nonleaf`/`leaf` are the entry bits.
    fn build_table(&self, root: u64, levels: u8, nonleaf: u64, leaf: u64) {
        let mut table = root;
        let mut next = root + 0x1000;
        for _ in 2..levels {
            self.put(table, next | nonleaf);
            table = next;
            next += 0x1000;
        }
        // `table` is now the level-2 directory.
        self.put(table, next | nonleaf);
        self.put(table + 8, (DATA + 0x20_0000) | leaf | 1 << 7);
        for i in 0..64 {
            self.put(next + i * 8, (DATA + i * 0x1000) | leaf);
        }
    }

    /// A working configuration for every device 00:00.0-00:01.3: tables,
    /// translation on, queued invalidation and interrupt remapping on,
    /// events unmasked, a page request queue.
    fn prebuild(&self, cfg: &VtdConfig) {
        let sl_levels = if cfg.aw_bits == 39 { 3 } else { 4 };
        let sl = TABLES;
        let fl = TABLES + 0x8000;
        self.build_table(sl, sl_levels, 3, 3);
        if cfg.first_stage {
            self.build_table(fl, 4, 7, 7);
        }
        let aw = u64::from(sl_levels) - 2;
        if cfg.scalable {
            self.put(ROOT, CTX | 1);
            self.put(ROOT + 8, CTX_HI | 1);
            for devfn in 0..12u64 {
                // PASIDE, DTE, PRE; PDTS 0.
                self.put(CTX + devfn * 32, PASID_DIR | 1 | 4 | 8 | 0x10);
            }
            self.put(PASID_DIR, PASID_TABLE | 1);
            // Nested: the second stage maps the first 4 MiB one to one
            // (two 2 MiB pages), so the first-stage tables and output are
            // reachable.
            let sl_id = TABLES + 0x10000;
            let mut table = sl_id;
            for _ in 2..sl_levels {
                self.put(table, (table + 0x1000) | 3);
                table += 0x1000;
            }
            self.put(table, 3 | 1 << 7);
            self.put(table + 8, 0x20_0000 | 3 | 1 << 7);
            let mut pgtts = vec![(2u64, sl, 0u64), (4, 0, 0)];
            if cfg.first_stage {
                pgtts.push((1, 0, fl));
                pgtts.push((3, sl_id, fl));
            }
            for pasid in 0..8u64 {
                let (pgtt, slp, flp) = pgtts[pasid as usize % pgtts.len()];
                let e = PASID_TABLE + pasid * 64;
                self.put(e, slp | 1 | aw << 2 | pgtt << 6);
                self.put(e + 8, 1 + pasid % 3);
                self.put(e + 16, flp | 1);
            }
        } else {
            self.put(ROOT, CTX | 1);
            for devfn in 0..12u64 {
                let tt = if devfn == 3 { 2 } else { 0 };
                self.put(CTX + devfn * 16, sl | 1 | tt << 2);
                self.put(CTX + devfn * 16 + 8, aw | (1 + devfn % 3) << 8);
            }
        }
        let ttm = if cfg.scalable { 1 << 10 } else { 0 };
        self.w64(RTADDR, ROOT | ttm);
        self.command(GCMD_SRTP, true);
        self.command(GCMD_TE, true);
        self.w64(IQA, IQ | u64::from(cfg.scalable) << 11);
        self.command(GCMD_QIE, true);
        if cfg.intremap {
            // Entry 0 for anyone, entry 1 for 00:01.0 only.
            self.put(IRT, 1 | 0x31 << 16 | 5 << 40);
            self.put(IRT + 16, 1 | 0x32 << 16 | 6 << 40);
            self.put(IRT + 24, 1 << 18 | 8);
            self.w64(IRTA, IRT | 7);
            self.command(GCMD_SIRTP, true);
            self.command(GCMD_IRE, true);
        }
        self.w64(PQA, PRQ);
        for (ctl, data, addr) in [
            (FECTL, FEDATA, FEADDR),
            (IECTL, IEDATA, IEADDR),
            (PECTL, PEDATA, PEADDR),
        ] {
            self.w32(data, 0x40);
            self.w32(addr, 0xfee0_0000);
            self.w32(ctl, 0);
        }
    }

    fn step(&self, inp: &mut Input) {
        match inp.u8() % 16 {
            // Any register write.
            0 => {
                let off = if inp.u8() < 8 {
                    inp.u64()
                } else {
                    u64::from(inp.u16() & 0x1fff)
                };
                let size = [1, 2, 4, 8, 3, 16, 4, 8][inp.u8() as usize % 8];
                let bytes = inp.bytes(size);
                self.u.mmio_write(off, bytes);
            }
            // A register that does something.
            1 | 2 => {
                let reg = REGS[inp.u8() as usize % REGS.len()];
                let v = inp.word();
                if inp.u8() & 1 == 0 {
                    self.w32(reg, v as u32);
                } else {
                    self.w64(reg, v);
                }
            }
            3 => {
                let bit = COMMANDS[inp.u8() as usize % COMMANDS.len()];
                let on = inp.u8() & 3 != 0;
                self.command(bit, on);
                let mut b = [0xffu8; 4];
                self.u.mmio_read(GCMD as u64, &mut b);
                assert_eq!(b, [0; 4], "GCMD reads as zero");
            }
            4 => {
                let off = u64::from(inp.u16() & 0x1fff);
                let mut b = [0u8; 16];
                let size = usize::from(inp.u8() % 17);
                self.u.mmio_read(off, &mut b[..size]);
            }
            // Bytes anywhere in memory.
            5 => {
                let addr = inp.addr();
                let n = usize::from(inp.u8() % 33);
                let bytes = inp.bytes(n);
                let _ = self.mem.write_slice(bytes, GuestAddress(addr));
            }
            // An entry-like value into a table.
            6 | 7 => {
                let area = AREAS[inp.u8() as usize % AREAS.len()];
                let slot = area + u64::from(inp.u16()) * 8 % 0x1000;
                let v = inp.word();
                self.put(slot, v);
            }
            // A descriptor at the queue tail, then the tail moves.
            8 => self.descriptor(inp),
            9 | 10 => self.translate(inp),
            11 => {
                let req = Request {
                    sid: inp.sid(),
                    pasid: inp.pasid(),
                    iova: inp.iova(),
                    write: inp.u8() & 1 != 0,
                    privileged: inp.u8() & 1 != 0,
                    translation_request: inp.u8() & 3 == 0,
                };
                let _ = self.u.translate_request(&req);
            }
            12 => {
                let (sid, pasid, iova) = (inp.sid(), inp.pasid(), inp.iova());
                let (len, access) = (inp.len(iova), inp.access());
                if let Ok(v) = self.u.translate_ats(sid, pasid, iova, len, access) {
                    check_pieces(&v, iova, len);
                }
            }
            13 => {
                let sid = inp.sid();
                let address = match inp.u8() % 4 {
                    0 => inp.u64(),
                    1 => 0xfee0_0000 | u64::from(inp.u32() & 0xf_ffff),
                    // Remappable format, a small handle, maybe a subhandle.
                    _ => 0xfee0_0010 | u64::from(inp.u8() % 4) << 5 | u64::from(inp.u8() & 8),
                };
                let data = match inp.u8() % 2 {
                    0 => u32::from(inp.u8()),
                    _ => inp.u32(),
                };
                let _ = self.u.remap_interrupt(sid, address, data);
            }
            14 => {
                let flags = inp.u8();
                let req = PageRequest {
                    requester_id: inp.sid(),
                    pasid: inp.pasid(),
                    address: inp.iova(),
                    read: flags & 1 != 0,
                    write: flags & 2 != 0,
                    exec: flags & 4 != 0,
                    privileged: flags & 8 != 0,
                    prg_index: inp.u16(),
                    last: flags & 16 != 0,
                };
                let _ = self.u.page_request(&req);
            }
            // A fault handler: clear the records and the status; like
            // Linux, replace a bad descriptor with a wait before clearing
            // IQE.
            _ => {
                if self.r32(FSTS) & FSTS_IQE != 0 {
                    let base = self.r64(IQA) & !0xfff;
                    let head = self.r64(IQH);
                    self.put(base.wrapping_add(head), 5);
                    self.put(base.wrapping_add(head + 8), 0);
                }
                for i in 0..NUM_FAULT_RECORDS {
                    self.w32(FRCD + i * 16 + 12, 1 << 31);
                }
                let fsts = self.r32(FSTS);
                self.w32(FSTS, fsts);
                let ics = self.r32(ICS);
                self.w32(ICS, ics);
                let prs = self.r32(PRS);
                self.w32(PRS, prs);
                // Consume the page requests.
                let pqt = self.r64(PQT);
                self.w64(PQH, pqt);
            }
        }
    }

    fn descriptor(&self, inp: &mut Input) {
        let iqa = self.r64(IQA);
        let wide = iqa & (1 << 11) != 0;
        let size = if wide { 32 } else { 16 };
        let base = iqa & !0xfff;
        let tail = self.r64(IQT) & 0x7fff0;
        // Mostly well-formed descriptors of every type, with small field
        // values that match the prebuilt tables.
        let ty = u64::from(inp.u8() % 10);
        let g = u64::from(inp.u8() & 3);
        let did = u64::from(inp.u8() % 4);
        let sid = u64::from(inp.u8() % 12);
        let pasid = u64::from(inp.u8() % 8);
        let addr = u64::from(inp.u8() % 64) << 12;
        let am = if inp.u8() < 16 {
            u64::from(inp.u8() & 0x3f)
        } else {
            u64::from(inp.u8() % 8)
        };
        let small = u64::from(inp.u16());
        let (mut q0, mut q1) = match ty {
            1 => (1 | g << 4 | did << 16 | sid << 32 | (small & 3) << 48, 0),
            2 => (2 | g << 4 | did << 16, addr | am),
            3 => (3 | sid << 32, addr | (small & 1)),
            4 => (
                4 | (g & 1) << 4 | (small & 0x1f) << 27 | (small >> 5) << 32,
                0,
            ),
            5 => (
                5 | (small & 0xf) << 4 | small << 32,
                0x7000 | (small & 0xff0),
            ),
            6 => (6 | g << 4 | did << 16 | pasid << 32, addr | am),
            7 => (7 | g << 4 | did << 16 | pasid << 32, 0),
            8 => (8 | sid << 16 | pasid << 32, addr | (small & 1) << 11),
            9 => (
                9 | (g & 1) << 4 | (small & 0xf) << 12 | sid << 16 | pasid << 32,
                (small >> 4 & 1) << 2 | (small >> 5 & 0x1ff) << 3,
            ),
            _ => (inp.u64(), inp.u64()),
        };
        // Now and then, garbage in any field.
        if inp.u8() < 24 {
            q0 ^= inp.u64() & !0xf;
            q1 ^= inp.u64();
        }
        let mut words = [q0, q1, 0, 0];
        if wide && inp.u8() < 16 {
            words[2] = inp.u64();
        }
        for (i, w) in words.iter().take(size as usize / 8).enumerate() {
            self.put(base.wrapping_add(tail + i as u64 * 8), *w);
        }
        let ring = 4096u64 << (iqa & 7);
        self.w64(IQT, (tail + size) % ring);
    }

    fn translate(&self, inp: &mut Input) {
        let (sid, pasid, iova) = (inp.sid(), inp.pasid(), inp.iova());
        let (len, access) = (inp.len(iova), inp.access());
        let enabled = self.r32(GSTS) & GSTS_TES != 0;
        match self.u.translate(sid, pasid, iova, len, access) {
            Ok(v) => {
                check_pieces(&v, iova, len);
                if !enabled {
                    assert!(v.iter().all(|p| p.gpa == p.iova), "identity while off");
                }
            }
            Err(crate::DmaFault::Overflow { .. }) => {
                assert!(iova.checked_add(len).is_none(), "overflow only on overflow");
            }
            Err(crate::DmaFault::Blocked { .. }) => {
                assert!(enabled, "translation off blocks nothing");
            }
        }
    }
}

/// The pieces cover `[iova, iova + len)` in order, without gaps.
fn check_pieces(v: &[crate::Translation], iova: u64, len: u64) {
    let mut at = iova;
    for p in v {
        assert_eq!(p.iova, at, "pieces in order, no gaps");
        assert!(p.len > 0, "no empty pieces");
        at += p.len;
    }
    assert_eq!(at - iova, len, "the whole range");
}
