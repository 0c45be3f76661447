//! Context entries (VT-d spec §9.3 legacy, §9.4 scalable mode).

use vm_memory::GuestMemory;

use super::root_table::{haw_mask, read_u128, EntryError};

/// Translation type of a legacy context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// Untranslated requests go through the second-stage tables.
    Translated {
        levels: u8,
        slptptr: u64,
    },
    PassThrough,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyContext {
    pub did: u16,
    pub fpd: bool,
    pub tt: TranslationType,
    /// TT = 01b: device-TLB (ATS) translation requests are allowed.
    pub device_tlb: bool,
}

/// Problems a legacy context entry can have beyond presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextError {
    Entry(EntryError),
    /// A field value the unit does not support (reason 3h).
    Invalid,
}

/// Levels of a second-stage table for an AW encoding, if supported by SAGAW.
pub fn aw_levels(aw: u64, sagaw: u64) -> Option<u8> {
    if aw > 3 || sagaw & (1 << aw) == 0 {
        return None;
    }
    match aw {
        1 => Some(3),
        2 => Some(4),
        3 => Some(5),
        _ => None,
    }
}

/// Reads the legacy context entry for `devfn` in the table at `ctp`.
pub fn legacy<M: GuestMemory>(
    mem: &M,
    ctp: u64,
    devfn: u8,
    haw: u8,
    sagaw: u64,
    pass_through: bool,
    device_tlb_supported: bool,
) -> Result<LegacyContext, ContextError> {
    let (lo, hi) = read_u128(mem, ctp + devfn as u64 * 16).map_err(ContextError::Entry)?;
    if lo & 1 == 0 {
        return Err(ContextError::Entry(EntryError::NotPresent));
    }
    // lo: 11:4 reserved, pointer bits above HAW reserved.
    // hi: bit 7 and 63:24 reserved.
    if lo & 0xff0 != 0 || lo & !haw_mask(haw) & !0xfff != 0 || hi & 0xffff_ffff_ff00_0080 != 0 {
        return Err(ContextError::Entry(EntryError::Reserved));
    }
    let fpd = lo & 2 != 0;
    let did = ((hi >> 8) & 0xffff) as u16;
    let tt = match (lo >> 2) & 3 {
        0 | 1 => {
            let levels = aw_levels(hi & 7, sagaw).ok_or(ContextError::Invalid)?;
            TranslationType::Translated {
                levels,
                slptptr: lo & !0xfff,
            }
        }
        2 if pass_through => TranslationType::PassThrough,
        _ => return Err(ContextError::Invalid),
    };
    let device_tlb = (lo >> 2) & 3 == 1;
    if device_tlb && !device_tlb_supported {
        return Err(ContextError::Invalid);
    }
    Ok(LegacyContext {
        did,
        fpd,
        tt,
        device_tlb,
    })
}

/// A scalable-mode context entry (256 bits, 128 per 4 KiB half-table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalableContext {
    pub fpd: bool,
    /// Device-TLB enable.
    pub dte: bool,
    pub pasid_enable: bool,
    /// Page request enable.
    pub pre: bool,
    /// PASID directory: base and number of entries (2^(PDTS+7)).
    pub pasid_dir: u64,
    pub pasid_dir_entries: u32,
    pub rid_pasid: u32,
    pub rid_priv: bool,
}

pub fn scalable<M: GuestMemory>(
    mem: &M,
    ctp: u64,
    devfn: u8,
    haw: u8,
) -> Result<ScalableContext, EntryError> {
    let base = ctp + (devfn as u64 & 0x7f) * 32;
    let (q0, q1) = read_u128(mem, base)?;
    if q0 & 1 == 0 {
        return Err(EntryError::NotPresent);
    }
    let (q2, q3) = read_u128(mem, base + 16)?;
    // q0: bits 8:5 reserved; q1: 63:21 reserved; q2, q3 reserved.
    if q0 & 0x1e0 != 0
        || q0 & !haw_mask(haw) & !0xfff != 0
        || q1 & !0x1f_ffff != 0
        || q2 != 0
        || q3 != 0
    {
        return Err(EntryError::Reserved);
    }
    Ok(ScalableContext {
        fpd: q0 & 2 != 0,
        dte: q0 & 4 != 0,
        pasid_enable: q0 & 8 != 0,
        pre: q0 & 0x10 != 0,
        pasid_dir: q0 & !0xfff,
        pasid_dir_entries: 1 << (((q0 >> 9) & 7) + 7),
        rid_pasid: (q1 & 0xf_ffff) as u32,
        rid_priv: q1 & (1 << 20) != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn legacy_decoding_and_checks() {
        let m = mem();
        let put = |devfn: u64, lo: u64, hi: u64| {
            m.write_obj(lo, GuestAddress(0x2000 + devfn * 16)).unwrap();
            m.write_obj(hi, GuestAddress(0x2008 + devfn * 16)).unwrap();
        };
        put(1, 0x3001, (42 << 8) | 2);
        let c = legacy(&m, 0x2000, 1, 39, 0b0110, true, false).unwrap();
        assert_eq!(c.did, 42);
        assert_eq!(
            c.tt,
            TranslationType::Translated {
                levels: 4,
                slptptr: 0x3000
            }
        );
        put(2, 0x3009, 1); // TT=2 pass-through, AW ignored
        assert_eq!(
            legacy(&m, 0x2000, 2, 39, 0b0110, true, false).unwrap().tt,
            TranslationType::PassThrough
        );
        assert_eq!(
            legacy(&m, 0x2000, 2, 39, 0b0110, false, false),
            Err(ContextError::Invalid)
        );
        put(3, 0x3001, 3); // AW=3 (5-level) not in SAGAW
        assert_eq!(
            legacy(&m, 0x2000, 3, 39, 0b0110, true, false),
            Err(ContextError::Invalid)
        );
        put(4, 0x300d, 2); // TT=3 reserved
        assert_eq!(
            legacy(&m, 0x2000, 4, 39, 0b0110, true, false),
            Err(ContextError::Invalid)
        );
        put(5, 0x3011, 2); // reserved bit 4
        assert_eq!(
            legacy(&m, 0x2000, 5, 39, 0b0110, true, false),
            Err(ContextError::Entry(EntryError::Reserved))
        );
        put(6, 0x3001, 2 | 1 << 40);
        assert_eq!(
            legacy(&m, 0x2000, 6, 39, 0b0110, true, false),
            Err(ContextError::Entry(EntryError::Reserved))
        );
        put(7, 0x3005, 2); // TT=1 without device-TLB support
        assert_eq!(
            legacy(&m, 0x2000, 7, 39, 0b0110, true, false),
            Err(ContextError::Invalid)
        );
        assert!(
            legacy(&m, 0x2000, 7, 39, 0b0110, true, true)
                .unwrap()
                .device_tlb
        );
        assert_eq!(
            legacy(&m, 0x2000, 8, 39, 0b0110, true, false),
            Err(ContextError::Entry(EntryError::NotPresent))
        );
    }

    #[test]
    fn scalable_decoding() {
        let m = mem();
        m.write_obj(0x4000u64 | 1 | 8 | (2 << 9), GuestAddress(0x2000 + 5 * 32))
            .unwrap();
        m.write_obj(7u64, GuestAddress(0x2000 + 5 * 32 + 8))
            .unwrap();
        let c = scalable(&m, 0x2000, 0x85, 39).unwrap();
        assert!(c.pasid_enable);
        assert_eq!(c.pasid_dir, 0x4000);
        assert_eq!(c.pasid_dir_entries, 512);
        assert_eq!(c.rid_pasid, 7);
        m.write_obj(1u64, GuestAddress(0x2000 + 6 * 32 + 16))
            .unwrap();
        m.write_obj(1u64, GuestAddress(0x2000 + 6 * 32)).unwrap();
        assert_eq!(scalable(&m, 0x2000, 6, 39), Err(EntryError::Reserved));
        assert_eq!(scalable(&m, 0x2000, 7, 39), Err(EntryError::NotPresent));
    }
}
