//! Pieces shared by the fuzz drivers that put the VT-d unit in company
//! ([`super::fuzz_host`], [`super::fuzz_threads`]): an input reader, and a
//! rig that programs the unit the way a guest driver would, so that random
//! operations start from a working configuration instead of spending most
//! of their bytes on getting past the root table.
//!
//! The layout mirrors the one of [`super::fuzz`] (which keeps its own copy
//! private, so that its inputs stay stable): tables at fixed places in a
//! small guest memory, 12 devices 00:00.0-00:01.3, 8 PASIDs.

use std::ops::Deref;
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::regs::*;
use super::{IntelIommu, InterruptSink, VtdConfig};
use crate::{Access, GuestMemoryMmap};

/// Guest memories of finished runs, kept for the next ones: mapping a
/// fresh one for every input (mmap, a page fault per page touched,
/// munmap) was a good part of a short run.
static SPARE_MEMORY: Mutex<Vec<(u64, GuestMemoryMmap)>> = Mutex::new(Vec::new());

/// Zeroed guest memory of `size` bytes at guest address 0, as a fresh
/// `GuestMemoryMmap::from_ranges` gives, but reused across runs: a spare
/// one of a finished run is wiped with `MADV_DONTNEED` (an anonymous
/// private mapping reads as zero afterwards, and only the pages the last
/// run touched cost anything). Back to the spares when dropped; every run
/// holds its own, so concurrent runs (test threads) never share one.
pub struct PooledMemory {
    size: u64,
    mem: Option<GuestMemoryMmap>,
}

impl PooledMemory {
    pub fn new(size: u64) -> Option<Self> {
        let spare = {
            let mut spares = SPARE_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
            let i = spares.iter().position(|(s, _)| *s == size);
            i.map(|i| spares.swap_remove(i).1)
        };
        let mem = match spare {
            Some(mem) if wipe(&mem, size) => mem,
            _ => GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).ok()?,
        };
        Some(PooledMemory {
            size,
            mem: Some(mem),
        })
    }
}

/// Zeroes all of `mem` (one anonymous private mapping of `size` bytes).
fn wipe(mem: &GuestMemoryMmap, size: u64) -> bool {
    let Ok(host) = mem.get_host_address(GuestAddress(0)) else {
        return false;
    };
    // SAFETY: `host` starts the mapping of the region of `size` bytes at
    // guest address 0, which `mem` keeps alive; nobody else uses it (the
    // run that had it is over), and MADV_DONTNEED on an anonymous private
    // mapping only replaces its pages by zero pages.
    unsafe { libc::madvise(host.cast(), size as usize, libc::MADV_DONTNEED) == 0 }
}

impl Deref for PooledMemory {
    type Target = GuestMemoryMmap;
    fn deref(&self) -> &GuestMemoryMmap {
        self.mem.as_ref().expect("taken only on drop")
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        if let Some(mem) = self.mem.take() {
            let mut spares = SPARE_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
            // A few per size: one per thread running drivers at once.
            if spares.len() < 16 {
                spares.push((self.size, mem));
            }
        }
    }
}

/// Guest memory of every run.
pub const MEM_SIZE: u64 = 4 << 20;

pub const ROOT: u64 = 0x1000;
pub const CTX: u64 = 0x2000;
pub const CTX_HI: u64 = 0x3000;
pub const PASID_DIR: u64 = 0x4000;
pub const PASID_TABLE: u64 = 0x5000;
pub const IQ: u64 = 0x8000;
pub const PRQ: u64 = 0xc000;
/// Where the drivers' own invalidation waits write their status.
pub const STATUS: u64 = 0xf000;
pub const TABLES: u64 = 0x2_0000;
pub const DATA: u64 = 0x10_0000;

/// Places inputs aim their memory writes at.
pub const AREAS: [u64; 8] = [ROOT, CTX, CTX_HI, PASID_DIR, PASID_TABLE, IQ, TABLES, DATA];

/// Interrupts go nowhere: the drivers look at registers, not messages.
pub struct Quiet;

impl InterruptSink for Quiet {
    fn send(&self, _address: u64, _data: u32) {}
}

/// The input, read front to back; past its end everything reads as zero.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// `n` bytes of the input, zero past its end.
    pub fn vec(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    /// Up to `n` bytes of the input (fewer at its end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
    /// A value biased towards what tables hold: zero, a small number, a
    /// page of the tables or the data with flag bits, or anything.
    pub fn word(&mut self) -> u64 {
        match self.u8() % 5 {
            0 => 0,
            1 => u64::from(self.u8()),
            2 => (TABLES + u64::from(self.u8() % 32) * 0x1000) | u64::from(self.u8()),
            3 => (DATA + u64::from(self.u16()) * 0x1000 % 0x20_0000) | u64::from(self.u8() & 0x87),
            _ => self.u64(),
        }
    }
    /// A slot of one of the [`AREAS`].
    pub fn slot(&mut self) -> u64 {
        AREAS[self.u8() as usize % AREAS.len()] + u64::from(self.u16()) * 8 % 0x1000
    }
    pub fn sid(&mut self) -> u16 {
        match self.u8() % 8 {
            0..=6 => u16::from(self.u8() % 12),
            _ => self.u16(),
        }
    }
    pub fn pasid(&mut self) -> Option<u32> {
        match self.u8() % 4 {
            0 | 1 => None,
            2 => Some(u32::from(self.u8() % 8)),
            _ => Some(self.u32()),
        }
    }
    pub fn iova(&mut self) -> u64 {
        match self.u8() % 4 {
            0..=2 => u64::from(self.u8() % 64) << 12 | u64::from(self.u16() & 0xfff),
            _ => self.u64(),
        }
    }
    /// A DMA length up to 1 MiB, or zero.
    pub fn dma_len(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1..=6 => u64::from(self.u16() % 0x4000),
            _ => u64::from(self.u32() % (1 << 20)),
        }
    }
    pub fn access(&mut self) -> Access {
        [Access::Read, Access::Write, Access::ReadWrite][self.u8() as usize % 3]
    }
    /// A configuration, with caching mode (the mode passthrough endpoints
    /// need) more often than not.
    pub fn config(&mut self) -> VtdConfig {
        let flags = self.u8();
        let scalable = flags & 1 != 0;
        VtdConfig {
            scalable,
            first_stage: scalable && flags & 2 != 0,
            caching_mode: flags & 0xc != 0,
            intremap: false,
            aw_bits: [39, 48, 57, 48][usize::from(flags >> 4) & 3],
            pasid_bits: if scalable && flags & 0x40 != 0 { 8 } else { 0 },
            offer_nesting: scalable && flags & 0x82 == 0x82,
            // The second 48-bit choice: a first stage limited as a host
            // without FL1GP/FL5LP limits it.
            fl1gp: flags >> 4 & 3 != 3,
            fl5lp: flags >> 4 & 3 != 3,
        }
    }
}

/// Register and memory access for a driver.
pub struct Rig<'a> {
    pub u: &'a IntelIommu,
    pub mem: &'a GuestMemoryMmap,
}

impl Rig<'_> {
    pub fn put(&self, addr: u64, v: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(addr));
    }
    pub fn get(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap_or(0)
    }
    pub fn w32(&self, off: usize, v: u32) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }
    pub fn w64(&self, off: usize, v: u64) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }
    pub fn r32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.u.mmio_read(off as u64, &mut b);
        u32::from_le_bytes(b)
    }
    pub fn r64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.u.mmio_read(off as u64, &mut b);
        u64::from_le_bytes(b)
    }
    pub fn command(&self, bit: u32, on: bool) {
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
        self.put(table, next | nonleaf);
        self.put(table + 8, (DATA + 0x20_0000) | leaf | 1 << 7);
        for i in 0..64 {
            self.put(next + i * 8, (DATA + i * 0x1000) | leaf);
        }
    }

    /// A working configuration for every device 00:00.0-00:01.3: second
    /// stage tables (pass-through for 00:00.3 in legacy mode; a mix of
    /// second stage, pass-through and first stage over the PASIDs in
    /// scalable mode), translation and queued invalidation on, events
    /// unmasked, a page request queue.
    pub fn prebuild(&self, cfg: &VtdConfig) {
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
                self.put(CTX + devfn * 32, PASID_DIR | 1 | 4 | 8 | 0x10);
            }
            self.put(PASID_DIR, PASID_TABLE | 1);
            let mut pgtts = vec![(2u64, sl, 0u64), (4, 0, 0)];
            if cfg.first_stage {
                pgtts.push((1, 0, fl));
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

    /// A mostly well-formed descriptor of any type, with field values that
    /// match the prebuilt tables; now and then garbage in any field.
    pub fn make_descriptor(inp: &mut Input) -> [u64; 4] {
        let ty = u64::from(inp.u8() % 10);
        let g = u64::from(inp.u8() & 3);
        let did = u64::from(inp.u8() % 4);
        let sid = u64::from(inp.u8() % 12);
        let pasid = u64::from(inp.u8() % 8);
        let addr = u64::from(inp.u8() % 64) << 12;
        let am = u64::from(inp.u8() % 12);
        let small = u64::from(inp.u16());
        let (mut q0, mut q1) = match ty {
            1 => (1 | g << 4 | did << 16 | sid << 32 | (small & 3) << 48, 0),
            2 => (2 | g << 4 | did << 16, addr | am),
            3 => (3 | sid << 32, addr | (small & 1)),
            4 => (4 | (g & 1) << 4, 0),
            // A wait with status write (to the drivers' status word).
            5 => (5 | (small & 0xf) << 4 | 1 << 5 | small << 32, STATUS),
            6 => (6 | g << 4 | did << 16 | pasid << 32, addr | am),
            7 => (7 | g << 4 | did << 16 | pasid << 32, 0),
            8 => (8 | sid << 16 | pasid << 32, addr | (small & 1) << 11),
            9 => (
                9 | (g & 1) << 4 | (small & 0xf) << 12 | sid << 16 | pasid << 32,
                (small >> 4 & 1) << 2 | (small >> 5 & 0x1ff) << 3,
            ),
            _ => (inp.u64(), inp.u64()),
        };
        if inp.u8() < 16 {
            q0 ^= inp.u64() & !0xf;
            q1 ^= inp.u64();
        }
        [q0, q1, 0, 0]
    }

    /// Writes `d` at the queue tail and moves the tail on. Not atomic: two
    /// callers racing may write the same slot, as two vCPUs of a guest
    /// without a lock would.
    pub fn submit(&self, d: [u64; 4]) {
        let iqa = self.r64(IQA);
        let size = if iqa & (1 << 11) != 0 { 32 } else { 16 };
        let base = iqa & !0xfff;
        let tail = self.r64(IQT) & 0x7fff0;
        for (i, w) in d.iter().take(size as usize / 8).enumerate() {
            self.put(base.wrapping_add(tail + i as u64 * 8), *w);
        }
        let ring = 4096u64 << (iqa & 7);
        self.w64(IQT, (tail + size) % ring);
    }

    /// What a guest's fault handler does: clears the fault records and
    /// status, replaces a bad descriptor with a wait, consumes the page
    /// requests.
    pub fn service_faults(&self) {
        if self.r32(FSTS) & FSTS_IQE != 0 {
            let base = self.r64(IQA) & !0xfff;
            let head = self.r64(IQH);
            self.put(base.wrapping_add(head), 5);
            self.put(base.wrapping_add(head + 8), 0);
            for i in 2..4 {
                self.put(base.wrapping_add(head + i * 8), 0);
            }
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
        let pqt = self.r64(PQT);
        self.w64(PQH, pqt);
    }
}

/// The pieces of a translation cover `[iova, iova + len)` in order.
pub fn check_pieces(v: &[crate::Translation], iova: u64, len: u64) {
    let mut at = iova;
    for p in v {
        assert_eq!(p.iova, at, "pieces in order, no gaps");
        assert!(p.len > 0, "no empty pieces");
        at += p.len;
    }
    assert_eq!(at - iova, len, "the whole range");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_memory_is_reused_and_comes_back_zeroed() {
        // A size no other test uses, so that the second run gets the
        // first one's memory back.
        const SIZE: u64 = 0x5000;
        let first = PooledMemory::new(SIZE).expect("memory");
        let host = first.get_host_address(GuestAddress(0)).expect("mapped");
        for addr in [0, 0x1ff8, SIZE - 8] {
            first.write_obj(u64::MAX, GuestAddress(addr)).unwrap();
        }
        drop(first);
        let second = PooledMemory::new(SIZE).expect("memory");
        assert_eq!(second.get_host_address(GuestAddress(0)).ok(), Some(host));
        for addr in [0, 0x1ff8, SIZE - 8] {
            assert_eq!(second.read_obj::<u64>(GuestAddress(addr)).unwrap(), 0);
        }
        // Held by one run, a memory is not handed to another.
        let third = PooledMemory::new(SIZE).expect("memory");
        assert_ne!(third.get_host_address(GuestAddress(0)).ok(), Some(host));
    }
}
