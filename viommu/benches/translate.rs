//! Translation cost of the emulated VT-d, measured through the same entry
//! point devices use (`Translate::translate`), with the unit programmed
//! through its registers as a guest driver would:
//!
//! - an IOTLB hit (the same 4 KiB page over and over);
//! - a 4-level walk (a miss on every call: each call a page never seen,
//!   context and PASID caches warm), for first-stage and second-stage
//!   tables.
//!
//! Prints ns per translation; asserts nothing about speed.

use std::sync::Arc;
use std::time::Instant;

use viommu::intel::{IntelIommu, InterruptSink, VtdConfig};
use viommu::{Access, GuestMemoryMmap, Translate};
use vm_memory::{Bytes, GuestAddress};

struct NoIrq;
impl InterruptSink for NoIrq {
    fn send(&self, _a: u64, _d: u32) {}
}

const MIB: u64 = 1 << 20;
const ROOT: u64 = 0x10_0000;
const CTX: u64 = 0x11_0000;
const PASID_DIR: u64 = 0x12_0000;
const PASID_TABLE: u64 = 0x13_0000;
const PGT: u64 = 0x20_0000; // page tables from here
const PAGES: u64 = 1 << 16; // 256 MiB of IOVA

fn put(m: &GuestMemoryMmap, a: u64, v: u64) {
    m.write_obj(v, GuestAddress(a)).expect("in guest memory");
}

/// Builds a 4-level table mapping IOVA i*4K → 1 GiB + i*4K for PAGES pages.
/// `fl` selects first-stage (P|RW|US) or second-stage (R|W) entry bits.
fn build_tables(m: &GuestMemoryMmap, fl: bool) -> u64 {
    let nonleaf = if fl { 0x7 } else { 0x3 };
    let leaf = if fl { 0x7 } else { 0x3 };
    let pml4 = PGT;
    let pdpt = PGT + 0x1000;
    let pds = PGT + 0x2000; // PAGES/512/512 = 1 page directory
    let pts = PGT + 0x3000;
    put(m, pml4, pdpt | nonleaf);
    put(m, pdpt, pds | nonleaf);
    for i in 0..PAGES / 512 {
        put(m, pds + i * 8, (pts + i * 0x1000) | nonleaf);
    }
    for i in 0..PAGES {
        put(m, pts + i * 8, (0x4000_0000 + i * 0x1000) | leaf);
    }
    pml4
}

fn unit(m: &GuestMemoryMmap, first_stage: bool) -> IntelIommu {
    let cfg = VtdConfig::default();
    let u = IntelIommu::new(cfg, m.clone(), Arc::new(NoIrq)).expect("valid config");
    let root = build_tables(m, first_stage);
    // Scalable root entry for bus 0 → context table; device 00:01.0.
    put(m, ROOT, CTX | 1);
    let devfn = 0x08u64;
    put(m, CTX + devfn * 32, PASID_DIR | 1); // PDTS 0: 128 directory entries
    put(m, PASID_DIR, PASID_TABLE | 1);
    // PASID 0 (RID_PASID) entry.
    let (q0, q2) = if first_stage {
        (1 | (1 << 6), root)
    } else {
        (1 | (2 << 6) | (2 << 2) | root, 0)
    };
    put(m, PASID_TABLE, q0);
    put(m, PASID_TABLE + 8, 1); // DID 1
    put(m, PASID_TABLE + 16, q2);
    u.mmio_write(0x20, &(ROOT | (1 << 10)).to_le_bytes()); // RTADDR, TTM=01
    u.mmio_write(0x18, &(1u32 << 30).to_le_bytes()); // SRTP
    u.mmio_write(0x18, &(1u32 << 31).to_le_bytes()); // TE
    u
}

fn bench(name: &str, iters: u64, mut f: impl FnMut(u64)) {
    for i in 0..iters.min(1000) {
        f(i);
    }
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("  {name:<44} {ns:>8.1} ns/translation");
}

fn main() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2048 * MIB as usize)])
        .expect("guest memory");
    println!("VT-d translation cost (Translate::translate, one 4 KiB page per call):");
    for (label, fl) in [("first stage", true), ("second stage", false)] {
        let u = unit(&mem, fl);
        let rid = 0x0008;
        let one = |iova: u64| {
            let t = u
                .translate(rid, None, iova, 4096, Access::Write)
                .expect("mapped");
            std::hint::black_box(t);
        };
        bench(&format!("{label}: IOTLB hit"), 2_000_000, |_| one(0x5000));
        // Misses: walk fresh pages; the IOTLB holds 16384 entries, so
        // sweeping 65536 pages never hits.
        bench(
            &format!("{label}: 4-level walk (IOTLB miss)"),
            PAGES * 4,
            |i| one(((i * 7919) % PAGES) << 12),
        );
        let c = &u.counters;
        let hits = c.iotlb_hits.load(std::sync::atomic::Ordering::Relaxed);
        let misses = c.iotlb_misses.load(std::sync::atomic::Ordering::Relaxed);
        println!("  ({label}: {hits} hits, {misses} misses counted by the unit)");
    }
}
