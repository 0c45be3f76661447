//! The unit's translation caches (VT-d spec §6.2): the context cache, the
//! PASID cache and the IOTLB, each tagged the way the spec says so that
//! every invalidation granularity removes what it must.
//!
//! Removing more than asked is always allowed (§6.5: hardware may
//! invalidate more), removing less never is.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::address_mask::MaskedRange;
use super::context::{LegacyContext, ScalableContext};
use super::pasid::PasidEntry;
use super::second_stage::Leaf;

/// A small multiplicative hasher: the keys are already well-mixed
/// integers and the IOTLB lookup is on every DMA page.
#[derive(Default)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64)
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(v as u64)
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(v as u64)
    }
}

type Fast = BuildHasherDefault<FastHasher>;

/// PASID tag of legacy-mode translations (which carry none).
pub const NO_PASID: u32 = u32::MAX;

/// A cached context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedContext {
    Legacy(LegacyContext),
    Scalable(ScalableContext),
}

impl CachedContext {
    fn did(&self) -> Option<u16> {
        match self {
            CachedContext::Legacy(c) => Some(c.did),
            CachedContext::Scalable(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TlbKey {
    did: u16,
    pasid: u32,
    size_shift: u8,
    page: u64,
}

/// Bound on cached translations; past it the IOTLB starts over (a real
/// IOTLB evicts too, and a miss only costs a walk).
const IOTLB_CAPACITY: usize = 16384;

/// Bound on cached PASID-table entries, for the same reason. Without it
/// the cache grows with every (requester, PASID) that ever translated:
/// PASIDs are 20 bits, and a guest can make all 2^20 of a device valid
/// with one PASID table page that every directory entry points to. Each
/// context-cache invalidation also scans this cache.
const PASID_CACHE_CAPACITY: usize = 4096;
const SIZES: [u8; 3] = [12, 21, 30];

#[derive(Default)]
pub struct Caches {
    context: HashMap<u16, CachedContext, Fast>,
    pasid: HashMap<(u16, u32), PasidEntry, Fast>,
    iotlb: HashMap<TlbKey, Leaf, Fast>,
}

impl Caches {
    pub fn context(&self, sid: u16) -> Option<CachedContext> {
        self.context.get(&sid).copied()
    }

    pub fn insert_context(&mut self, sid: u16, c: CachedContext) {
        self.context.insert(sid, c);
    }

    pub fn pasid(&self, sid: u16, pasid: u32) -> Option<PasidEntry> {
        self.pasid.get(&(sid, pasid)).copied()
    }

    pub fn insert_pasid(&mut self, sid: u16, pasid: u32, e: PasidEntry) {
        if self.pasid.len() >= PASID_CACHE_CAPACITY {
            self.pasid.clear();
        }
        self.pasid.insert((sid, pasid), e);
    }

    pub fn pasid_len(&self) -> usize {
        self.pasid.len()
    }

    pub fn lookup(&self, did: u16, pasid: u32, iova: u64) -> Option<Leaf> {
        SIZES.iter().find_map(|&s| {
            self.iotlb
                .get(&TlbKey {
                    did,
                    pasid,
                    size_shift: s,
                    page: iova >> s,
                })
                .copied()
        })
    }

    pub fn insert(&mut self, did: u16, pasid: u32, iova: u64, leaf: Leaf) {
        if self.iotlb.len() >= IOTLB_CAPACITY {
            self.iotlb.clear();
        }
        self.iotlb.insert(
            TlbKey {
                did,
                pasid,
                size_shift: leaf.size_shift,
                page: iova >> leaf.size_shift,
            },
            leaf,
        );
    }

    pub fn iotlb_len(&self) -> usize {
        self.iotlb.len()
    }

    // --- Context-cache invalidation (§6.5.2.1) ---

    pub fn flush_context_all(&mut self) {
        self.context.clear();
        self.pasid.clear();
    }

    /// Domain-selective: legacy entries of `did`; scalable entries carry
    /// no domain, so they all go.
    pub fn flush_context_domain(&mut self, did: u16) {
        self.context
            .retain(|_, c| c.did().is_some_and(|d| d != did));
        self.pasid.clear();
    }

    /// Device-selective with a function mask (FM: ignore 0-3 low bits of
    /// the function number).
    pub fn flush_context_device(&mut self, sid: u16, fm: u8) {
        let mask = !(match fm & 3 {
            0 => 0u16,
            1 => 0b100,
            2 => 0b110,
            _ => 0b111,
        });
        self.context.retain(|&s, _| s & mask != sid & mask);
        self.pasid.retain(|&(s, _), _| s & mask != sid & mask);
    }

    // --- PASID-cache invalidation (§6.5.2.2) ---

    pub fn flush_pasid_domain(&mut self, did: u16) {
        self.pasid.retain(|_, e| e.did != did);
    }

    pub fn flush_pasid_selective(&mut self, did: u16, pasid: u32) {
        self.pasid
            .retain(|&(_, p), e| !(e.did == did && p == pasid));
    }

    pub fn flush_pasid_all(&mut self) {
        self.pasid.clear();
    }

    // --- IOTLB invalidation (§6.5.2.3, §6.5.2.4) ---

    pub fn flush_iotlb_all(&mut self) {
        self.iotlb.clear();
    }

    pub fn flush_iotlb_domain(&mut self, did: u16) {
        self.iotlb.retain(|k, _| k.did != did);
    }

    /// Page-selective: `2^am` 4 KiB pages at `addr` (aligned down to the
    /// mask, the whole space for a mask past the address width: see
    /// [`MaskedRange`]), for one PASID or (None) for every PASID of the
    /// domain.
    pub fn flush_iotlb_pages(&mut self, did: u16, pasid: Option<u32>, addr: u64, am: u8) {
        let range = MaskedRange::new(addr, am);
        self.iotlb.retain(|k, _| {
            if k.did != did || pasid.is_some_and(|p| p != k.pasid) {
                return true;
            }
            !range.overlaps(k.page << k.size_shift, 1u64 << k.size_shift)
        });
    }

    /// Every translation of one PASID in a domain.
    pub fn flush_iotlb_pasid(&mut self, did: u16, pasid: u32) {
        self.iotlb
            .retain(|k, _| !(k.did == did && k.pasid == pasid));
    }

    pub fn clear(&mut self) {
        *self = Caches::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(output: u64, size_shift: u8) -> Leaf {
        Leaf {
            output,
            size_shift,
            read: true,
            write: true,
            user: true,
            dirty: true,
        }
    }

    #[test]
    fn lookups_honour_page_size() {
        let mut c = Caches::default();
        c.insert(1, NO_PASID, 0x20_0000, leaf(0x40_0000, 21));
        assert!(c.lookup(1, NO_PASID, 0x3f_ffff).is_some());
        assert!(c.lookup(1, NO_PASID, 0x40_0000).is_none());
        assert!(c.lookup(2, NO_PASID, 0x20_0000).is_none(), "domain tag");
        assert!(c.lookup(1, 0, 0x20_0000).is_none(), "PASID tag");
    }

    #[test]
    fn page_selective_invalidation_with_mask() {
        let mut c = Caches::default();
        for p in 0..8u64 {
            c.insert(1, NO_PASID, p << 12, leaf(p << 12, 12));
        }
        c.insert(1, NO_PASID, 0x20_0000, leaf(0, 21));
        // AM=2: pages 4..7 (address aligned down to 16 KiB).
        c.flush_iotlb_pages(1, None, 0x5000, 2);
        assert!(c.lookup(1, NO_PASID, 0x3000).is_some());
        assert!(c.lookup(1, NO_PASID, 0x4000).is_none());
        assert!(c.lookup(1, NO_PASID, 0x7000).is_none());
        // A 4 KiB invalidation inside a 2 MiB page removes the large page.
        c.flush_iotlb_pages(1, None, 0x20_1000, 0);
        assert!(c.lookup(1, NO_PASID, 0x20_0000).is_none());
        c.flush_iotlb_domain(1);
        assert_eq!(c.iotlb_len(), 0);
    }

    /// Every PASID of a device translating once (a guest can make all
    /// 2^20 valid) fills the PASID cache only up to its bound.
    #[test]
    fn pasid_cache_is_bounded() {
        use super::super::pasid::Pgtt;
        let mut c = Caches::default();
        let e = PasidEntry {
            did: 1,
            fpd: false,
            pgtt: Pgtt::PassThrough,
            sre: false,
            wpe: false,
        };
        for pasid in 0..3 * PASID_CACHE_CAPACITY as u32 {
            c.insert_pasid(8, pasid, e);
            assert!(c.pasid_len() <= PASID_CACHE_CAPACITY, "PASID {pasid}");
            assert_eq!(c.pasid(8, pasid), Some(e));
        }
    }

    #[test]
    fn pasid_selective_leaves_other_pasids() {
        let mut c = Caches::default();
        c.insert(1, 5, 0x1000, leaf(0, 12));
        c.insert(1, 6, 0x1000, leaf(0, 12));
        c.flush_iotlb_pages(1, Some(5), 0x1000, 0);
        assert!(c.lookup(1, 5, 0x1000).is_none());
        assert!(c.lookup(1, 6, 0x1000).is_some());
        c.flush_iotlb_pasid(1, 6);
        assert!(c.lookup(1, 6, 0x1000).is_none());
    }

    #[test]
    fn device_selective_context_flush_with_function_mask() {
        let mut c = Caches::default();
        let ctx = CachedContext::Legacy(LegacyContext {
            did: 1,
            fpd: false,
            tt: super::super::context::TranslationType::PassThrough,
            device_tlb: false,
        });
        for f in 0..8u16 {
            c.insert_context(0x08 | f, ctx);
        }
        c.flush_context_device(0x0c, 1); // ignore function bit 2: 0x08 and 0x0c
        assert!(c.context(0x08).is_none() && c.context(0x0c).is_none());
        assert!(c.context(0x09).is_some());
        c.flush_context_domain(1);
        assert!(c.context(0x09).is_none());
    }
}
