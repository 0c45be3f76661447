//! Queued invalidation (VT-d spec §6.5.2): descriptors fetched from the
//! ring at IQA between IQH and IQT, processed in order when software moves
//! the tail. A bad descriptor or tail stops the queue with FSTS.IQE and the
//! cause in IQERCD (§11.4.9.9); IQH is left on the offending descriptor.

use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;

/// Invalidation Queue Error Info codes (IQERCD.IQEI).
pub mod iqei {
    /// IQT beyond the queue or not aligned for 256-bit descriptors.
    pub const BAD_TAIL: u64 = 1;
    /// The descriptor could not be fetched (queue outside memory).
    pub const FETCH: u64 = 2;
    /// Unknown or unsupported descriptor type.
    pub const BAD_TYPE: u64 = 3;
    /// Reserved bits set in a descriptor.
    pub const RESERVED: u64 = 4;
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Context-cache invalidate: granularity 1 global, 2 domain, 3 device.
    ContextCache {
        granularity: u8,
        did: u16,
        sid: u16,
        fm: u8,
    },
    /// IOTLB invalidate: granularity 1 global, 2 domain, 3 page.
    Iotlb {
        granularity: u8,
        did: u16,
        addr: u64,
        am: u8,
        ih: bool,
    },
    DeviceTlb {
        sid: u16,
        addr: u64,
        size: bool,
    },
    /// Interrupt entry cache: global, or `2^im` entries from `index`.
    InterruptEntryCache {
        global: bool,
        index: u16,
        im: u8,
    },
    Wait {
        interrupt: bool,
        status_write: bool,
        fence: bool,
        drain: bool,
        data: u32,
        addr: u64,
    },
    /// PASID-based IOTLB: granularity 2 all of a PASID, 3 page-selective.
    PasidIotlb {
        granularity: u8,
        did: u16,
        pasid: u32,
        addr: u64,
        am: u8,
        ih: bool,
    },
    /// PASID cache: granularity 0 domain, 1 PASID-selective, 3 global.
    PasidCache {
        granularity: u8,
        did: u16,
        pasid: u32,
    },
    PasidDeviceTlb {
        sid: u16,
        pasid: u32,
        addr: u64,
        size: bool,
    },
    PageGroupResponse {
        rid: u16,
        pasid: Option<u32>,
        code: u8,
        lpig: bool,
        index: u16,
    },
}

/// Fetches the descriptor at byte offset `head` of the queue at `base`.
pub fn fetch(mem: &GuestMemoryMmap, base: u64, head: u64, wide: bool) -> Result<[u64; 4], u64> {
    let mut q = [0u64; 4];
    let n = if wide { 4 } else { 2 };
    for (i, w) in q.iter_mut().take(n).enumerate() {
        let addr = base.checked_add(head + i as u64 * 8).ok_or(iqei::FETCH)?;
        *w = mem.read_obj(GuestAddress(addr)).map_err(|_| iqei::FETCH)?;
    }
    Ok(q)
}

/// Decodes one descriptor, checking type and reserved fields.
pub fn decode(q: [u64; 4], scalable: bool, pasid: bool) -> Result<Descriptor, u64> {
    let (q0, q1) = (q[0], q[1]);
    // Type is bits 3:0 with bits 11:9 as its high part.
    let ty = (q0 & 0xf) | ((q0 >> 5) & 0x70);
    let reserved = |cond: bool| if cond { Err(iqei::RESERVED) } else { Ok(()) };
    // The upper 128 bits of a 256-bit descriptor are reserved for all types here.
    reserved(q[2] != 0 || q[3] != 0)?;
    let g = ((q0 >> 4) & 3) as u8;
    match ty {
        1 => {
            reserved(q0 & 0xfffc_0000_0000_f1c0 != 0 || q1 != 0 || g == 0)?;
            Ok(Descriptor::ContextCache {
                granularity: g,
                did: (q0 >> 16) as u16,
                sid: (q0 >> 32) as u16,
                fm: ((q0 >> 48) & 3) as u8,
            })
        }
        2 => {
            reserved(q0 & 0xffff_ffff_0000_f100 != 0 || q1 & 0xf80 != 0 || g == 0)?;
            Ok(Descriptor::Iotlb {
                granularity: g,
                did: (q0 >> 16) as u16,
                addr: q1 & !0xfff,
                am: (q1 & 0x3f) as u8,
                ih: q1 & 0x40 != 0,
            })
        }
        3 => {
            reserved(q1 & 0xffe != 0)?;
            Ok(Descriptor::DeviceTlb {
                sid: (q0 >> 32) as u16,
                addr: q1 & !0xfff,
                size: q1 & 1 != 0,
            })
        }
        4 => {
            reserved(q0 & 0xffff_0000_07ff_f1e0 != 0 || q1 != 0)?;
            Ok(Descriptor::InterruptEntryCache {
                global: q0 & 0x10 == 0,
                index: (q0 >> 32) as u16,
                im: ((q0 >> 27) & 0x1f) as u8,
            })
        }
        5 => {
            reserved(q0 & 0xffff_f100 != 0 || q1 & 3 != 0)?;
            Ok(Descriptor::Wait {
                interrupt: q0 & 0x10 != 0,
                status_write: q0 & 0x20 != 0,
                fence: q0 & 0x40 != 0,
                drain: q0 & 0x80 != 0,
                data: (q0 >> 32) as u32,
                addr: q1 & !3,
            })
        }
        6 if scalable => {
            reserved(q0 & 0xfff0_0000_0000_f1c0 != 0 || q1 & 0xf80 != 0 || g < 2)?;
            Ok(Descriptor::PasidIotlb {
                granularity: g,
                did: (q0 >> 16) as u16,
                pasid: ((q0 >> 32) & 0xf_ffff) as u32,
                addr: q1 & !0xfff,
                am: (q1 & 0x3f) as u8,
                ih: q1 & 0x40 != 0,
            })
        }
        7 if scalable => {
            reserved(q0 & 0xfff0_0000_0000_f1c0 != 0 || q1 != 0 || g == 2)?;
            Ok(Descriptor::PasidCache {
                granularity: g,
                did: (q0 >> 16) as u16,
                pasid: ((q0 >> 32) & 0xf_ffff) as u32,
            })
        }
        8 if scalable => Ok(Descriptor::PasidDeviceTlb {
            sid: (q0 >> 16) as u16,
            pasid: ((q0 >> 32) & 0xf_ffff) as u32,
            addr: q1 & !0xfff,
            size: q1 & (1 << 11) != 0,
        }),
        9 if scalable && pasid => Ok(Descriptor::PageGroupResponse {
            rid: (q0 >> 16) as u16,
            pasid: (q0 & 0x10 != 0).then_some(((q0 >> 32) & 0xf_ffff) as u32),
            code: ((q0 >> 12) & 0xf) as u8,
            lpig: q1 & 4 != 0,
            index: ((q1 >> 3) & 0x1ff) as u16,
        }),
        _ => Err(iqei::BAD_TYPE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_linux_descriptors() {
        // qi_flush_iotlb: PSI, DID 5, addr 0x1000, AM 2, IH.
        let d = decode(
            [
                2 | (3 << 4) | (5 << 16) | (1 << 7) | (1 << 6),
                0x1000 | 0x40 | 2,
                0,
                0,
            ],
            true,
            false,
        );
        assert_eq!(
            d,
            Ok(Descriptor::Iotlb {
                granularity: 3,
                did: 5,
                addr: 0x1000,
                am: 2,
                ih: true
            })
        );
        // Invalidation wait with status write and interrupt.
        let d = decode([5 | 0x30 | (1u64 << 32), 0x8000, 0, 0], true, false).unwrap();
        assert!(matches!(
            d,
            Descriptor::Wait {
                interrupt: true,
                status_write: true,
                data: 1,
                addr: 0x8000,
                ..
            }
        ));
        // PASID cache, PASID-selective.
        let d = decode([7 | (1 << 4) | (3 << 16) | (9 << 32), 0, 0, 0], true, true).unwrap();
        assert_eq!(
            d,
            Descriptor::PasidCache {
                granularity: 1,
                did: 3,
                pasid: 9
            }
        );
        // Page group response.
        let d = decode(
            [
                9 | 0x10 | (1 << 12) | (0x08 << 16) | (7 << 32),
                4 | (5 << 3),
                0,
                0,
            ],
            true,
            true,
        )
        .unwrap();
        assert_eq!(
            d,
            Descriptor::PageGroupResponse {
                rid: 8,
                pasid: Some(7),
                code: 1,
                lpig: true,
                index: 5
            }
        );
        // Context cache device-selective.
        let d = decode(
            [1 | (3 << 4) | (1 << 16) | (0x08 << 32) | (2 << 48), 0, 0, 0],
            false,
            false,
        );
        assert_eq!(
            d,
            Ok(Descriptor::ContextCache {
                granularity: 3,
                did: 1,
                sid: 8,
                fm: 2
            })
        );
        let d = decode([4 | 0x10 | (7 << 32) | (2 << 27), 0, 0, 0], false, false);
        assert_eq!(
            d,
            Ok(Descriptor::InterruptEntryCache {
                global: false,
                index: 7,
                im: 2
            })
        );
        assert!(matches!(
            decode([3 | (8 << 32), 0x1001, 0, 0], false, false),
            Ok(Descriptor::DeviceTlb { size: true, .. })
        ));
        assert!(matches!(
            decode([6 | (2 << 4), 0, 0, 0], true, true),
            Ok(Descriptor::PasidIotlb { .. })
        ));
        assert!(matches!(
            decode([8, 0, 0, 0], true, true),
            Ok(Descriptor::PasidDeviceTlb { .. })
        ));
    }

    #[test]
    fn rejects_bad_descriptors() {
        assert_eq!(decode([0, 0, 0, 0], true, true), Err(iqei::BAD_TYPE));
        assert_eq!(decode([0xf, 0, 0, 0], true, true), Err(iqei::BAD_TYPE));
        assert_eq!(
            decode([6 | (2 << 4), 0, 0, 0], false, false),
            Err(iqei::BAD_TYPE),
            "scalable-only"
        );
        assert_eq!(
            decode([9, 0, 0, 0], true, false),
            Err(iqei::BAD_TYPE),
            "no PRS"
        );
        assert_eq!(
            decode([2 | (1 << 4), 0x100, 0, 0], true, false),
            Err(iqei::RESERVED)
        );
        assert_eq!(
            decode([2, 0, 0, 0], true, false),
            Err(iqei::RESERVED),
            "granularity 0"
        );
        assert_eq!(decode([5, 1, 0, 0], true, false), Err(iqei::RESERVED));
        assert_eq!(
            decode([1 | (1 << 4), 0, 1, 0], true, false),
            Err(iqei::RESERVED)
        );
        assert_eq!(
            decode([4 | (1 << 8), 0, 0, 0], true, false),
            Err(iqei::RESERVED)
        );
    }

    #[test]
    fn fetch_outside_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(fetch(&mem, 0xff0, 0, true), Err(iqei::FETCH));
        assert_eq!(fetch(&mem, u64::MAX - 4, 0, false), Err(iqei::FETCH));
        assert!(fetch(&mem, 0, 0x20, true).is_ok());
    }
}
