//! The input-address range a page-selective invalidation covers. An
//! address (ADDR) with an address mask (AM) names the 2^AM naturally
//! aligned 4 KiB pages that contain ADDR (VT-d spec §6.5.2.3 IOTLB
//! invalidate, §6.5.2.4 PASID-based IOTLB invalidate, and the IVA register
//! of register-based invalidation).
//!
//! AM is a 6-bit field. The unit reports CAP.MAMV = 18 and software should
//! not ask for more, but a guest can write up to 63; invalidating more than
//! asked is always allowed (§6.5). From AM = 52 on, 2^AM pages are 2^64
//! bytes or more: the range is the whole input-address space, not a span
//! that wrapped around to nothing. Everything that acts on a page-selective
//! invalidation (the IOTLB, the host IOMMU of a passthrough endpoint) takes
//! its range from here, so they cannot disagree on what was invalidated.

/// `[start, end)`, what an invalidation with address `addr` and address
/// mask `am` covers. `end` saturates at `u64::MAX`, which only leaves out
/// the last byte of the 64-bit space: no page is smaller than that byte,
/// so a page overlaps the range exactly when it overlaps the pages meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskedRange {
    pub start: u64,
    pub end: u64,
}

impl MaskedRange {
    /// The whole input-address space.
    pub const ALL: MaskedRange = MaskedRange {
        start: 0,
        end: u64::MAX,
    };

    /// The 2^`am` 4 KiB pages containing `addr`: `addr` with its low
    /// 12 + `am` bits ignored (§6.5.2.3), clamped to the whole space.
    pub fn new(addr: u64, am: u8) -> MaskedRange {
        let shift = 12 + u32::from(am);
        if shift >= u64::BITS {
            return MaskedRange::ALL;
        }
        let span = 1u64 << shift;
        let start = addr & !(span - 1);
        MaskedRange {
            start,
            end: start.saturating_add(span),
        }
    }

    /// Whether `[base, base + len)` (not wrapping) shares a byte with the
    /// range.
    pub fn overlaps(&self, base: u64, len: u64) -> bool {
        base < self.end && base.saturating_add(len) > self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_named_by_address_and_mask() {
        assert_eq!(
            MaskedRange::new(0x5000, 0),
            MaskedRange {
                start: 0x5000,
                end: 0x6000
            }
        );
        // The address's low AM bits are ignored.
        assert_eq!(
            MaskedRange::new(0x5000, 2),
            MaskedRange {
                start: 0x4000,
                end: 0x8000
            }
        );
        // The largest mask the unit reports (MAMV = 18): 1 GiB.
        assert_eq!(
            MaskedRange::new(0x4abc_d000, 18),
            MaskedRange {
                start: 0x4000_0000,
                end: 0x8000_0000
            }
        );
    }

    /// Every value of the 6-bit field, at addresses low and high: aligned,
    /// containing the address, 2^AM pages or (from 52 on) everything.
    #[test]
    fn every_mask_up_to_the_field_limit() {
        for am in 0..=63u8 {
            for addr in [0, 0x7000, 0x1234_5678_9000, 1 << 56, 0xffff_ffff_ffff_f000] {
                let r = MaskedRange::new(addr, am);
                assert!(r.start <= addr && addr < r.end, "{addr:#x} AM {am}: {r:x?}");
                if am >= 52 {
                    assert_eq!(r, MaskedRange::ALL, "AM {am}");
                    continue;
                }
                let span = 1u64 << (12 + am);
                assert_eq!(r.start % span, 0, "{addr:#x} AM {am}");
                assert_eq!(r.end, r.start.saturating_add(span), "{addr:#x} AM {am}");
            }
        }
        // AM = 51 is half the space.
        assert_eq!(MaskedRange::new(0x7000, 51).end, 1 << 63);
        assert_eq!(MaskedRange::new(!0xfffu64, 51).start, 1 << 63);
    }

    #[test]
    fn overlap_with_pages() {
        let r = MaskedRange::new(0x4000, 2);
        assert!(r.overlaps(0x4000, 0x1000) && r.overlaps(0x7000, 0x1000));
        assert!(!r.overlaps(0x3000, 0x1000) && !r.overlaps(0x8000, 0x1000));
        // A large page containing the range.
        assert!(r.overlaps(0, 1 << 21));
        // The last page of the space, in the whole space.
        assert!(MaskedRange::ALL.overlaps(!0xfffu64, 0x1000));
    }
}
