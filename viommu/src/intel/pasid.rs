//! PASID directory and PASID table entries (VT-d spec §9.5, §9.6).
//!
//! The directory, found through the scalable context entry, has one 8-byte
//! entry per 64 PASIDs pointing at a PASID table of 64 entries of 512 bits
//! each. A PASID table entry says how requests with that PASID (or with
//! none, via RID_PASID) are translated: first stage, second stage, nested
//! or pass-through (PGTT).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::context::aw_levels;
use super::root_table::{haw_mask, EntryError};

/// PASID-granular translation type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pgtt {
    FirstStage {
        levels: u8,
        flptptr: u64,
    },
    SecondStage {
        levels: u8,
        slptptr: u64,
    },
    /// First stage whose table pointers and output go through the second stage.
    Nested {
        fl_levels: u8,
        flptptr: u64,
        sl_levels: u8,
        slptptr: u64,
    },
    PassThrough,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidEntry {
    pub did: u16,
    pub fpd: bool,
    pub pgtt: Pgtt,
    /// Supervisor requests allowed (SRE).
    pub sre: bool,
    /// Write-protect enable for supervisor requests (WPE).
    pub wpe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidError {
    DirAccess,
    DirNotPresent,
    DirReserved,
    EntryAccess,
    EntryNotPresent,
    EntryReserved,
    /// A PGTT, AW or FLPM the unit does not support (reason 5Bh).
    Invalid,
}

/// What the unit supports, for validating entries.
#[derive(Clone, Copy, Debug)]
pub struct PasidCaps {
    pub haw: u8,
    pub sagaw: u64,
    pub first_stage: bool,
    pub five_level_first_stage: bool,
    pub nested: bool,
    pub pass_through: bool,
}

/// The PASID directory entry's FPD and table pointer for `pasid`.
fn directory<M: GuestMemory>(
    mem: &M,
    dir: u64,
    pasid: u32,
    haw: u8,
) -> Result<(u64, bool), PasidError> {
    let addr = dir + ((pasid >> 6) as u64) * 8;
    let e: u64 = mem
        .read_obj(GuestAddress(addr))
        .map_err(|_| PasidError::DirAccess)?;
    if e & 1 == 0 {
        return Err(PasidError::DirNotPresent);
    }
    if e & 0xffc != 0 || e & !haw_mask(haw) & !0xfff != 0 {
        return Err(PasidError::DirReserved);
    }
    Ok((e & !0xfff, e & 2 != 0))
}

/// Looks up the PASID table entry for `pasid`. On error, the returned FPD
/// says whether the fault may be recorded (a directory entry's FPD covers
/// faults on the table entry below it).
pub fn lookup<M: GuestMemory>(
    mem: &M,
    dir: u64,
    pasid: u32,
    caps: &PasidCaps,
) -> Result<PasidEntry, (PasidError, bool)> {
    let (table, dir_fpd) = directory(mem, dir, pasid, caps.haw).map_err(|e| (e, false))?;
    let base = table + ((pasid & 0x3f) as u64) * 64;
    let mut q = [0u64; 8];
    for (i, w) in q.iter_mut().enumerate() {
        *w = mem
            .read_obj(GuestAddress(base + i as u64 * 8))
            .map_err(|_| (PasidError::EntryAccess, dir_fpd))?;
    }
    if q[0] & 1 == 0 {
        return Err((PasidError::EntryNotPresent, dir_fpd));
    }
    let fpd = dir_fpd || q[0] & 2 != 0;
    let reserved = q[0] & 0xc00 != 0
        || q[1] & 0x7f_0000 != 0
        || q[2] & 0xf62 != 0
        || q[4..].iter().any(|&w| w != 0);
    if reserved {
        return Err((PasidError::EntryReserved, fpd));
    }
    let slptptr = q[0] & !0xfff;
    let flptptr = q[2] & !0xfff;
    let beyond = |p: u64| p & !haw_mask(caps.haw) != 0;
    let sl = || -> Result<(u8, u64), (PasidError, bool)> {
        let levels = aw_levels((q[0] >> 2) & 7, caps.sagaw).ok_or((PasidError::Invalid, fpd))?;
        if beyond(slptptr) {
            return Err((PasidError::EntryReserved, fpd));
        }
        Ok((levels, slptptr))
    };
    let fl = || -> Result<(u8, u64), (PasidError, bool)> {
        let levels = match (q[2] >> 2) & 3 {
            0 => 4,
            1 if caps.five_level_first_stage => 5,
            _ => return Err((PasidError::Invalid, fpd)),
        };
        if beyond(flptptr) {
            return Err((PasidError::EntryReserved, fpd));
        }
        Ok((levels, flptptr))
    };
    let pgtt = match (q[0] >> 6) & 7 {
        1 if caps.first_stage => {
            let (levels, flptptr) = fl()?;
            Pgtt::FirstStage { levels, flptptr }
        }
        2 => {
            let (levels, slptptr) = sl()?;
            Pgtt::SecondStage { levels, slptptr }
        }
        3 if caps.nested => {
            let (fl_levels, flptptr) = fl()?;
            let (sl_levels, slptptr) = sl()?;
            Pgtt::Nested {
                fl_levels,
                flptptr,
                sl_levels,
                slptptr,
            }
        }
        4 if caps.pass_through => Pgtt::PassThrough,
        _ => return Err((PasidError::Invalid, fpd)),
    };
    Ok(PasidEntry {
        did: (q[1] & 0xffff) as u16,
        fpd,
        pgtt,
        sre: q[2] & 1 != 0,
        wpe: q[2] & 0x10 != 0,
    })
}

impl From<EntryError> for PasidError {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::Access => PasidError::EntryAccess,
            EntryError::NotPresent => PasidError::EntryNotPresent,
            EntryError::Reserved => PasidError::EntryReserved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const CAPS: PasidCaps = PasidCaps {
        haw: 39,
        sagaw: 0b0110,
        first_stage: true,
        five_level_first_stage: false,
        nested: true,
        pass_through: true,
    };

    fn setup(q: [u64; 8]) -> GuestMemoryMmap {
        let m: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        // Directory at 0x1000: entry 1 (PASIDs 64..127) -> table at 0x2000.
        m.write_obj(0x2001u64, GuestAddress(0x1008)).unwrap();
        for (i, w) in q.iter().enumerate() {
            m.write_obj(*w, GuestAddress(0x2000 + 5 * 64 + i as u64 * 8))
                .unwrap();
        }
        m
    }

    #[test]
    fn each_pgtt() {
        let m = setup([1 | (1 << 6), 9, 0x5000 | 1, 0, 0, 0, 0, 0]);
        let e = lookup(&m, 0x1000, 69, &CAPS).unwrap();
        assert_eq!(e.did, 9);
        assert!(e.sre);
        assert_eq!(
            e.pgtt,
            Pgtt::FirstStage {
                levels: 4,
                flptptr: 0x5000
            }
        );
        let m = setup([0x7001 | (2 << 6) | (2 << 2), 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS).unwrap().pgtt,
            Pgtt::SecondStage {
                levels: 4,
                slptptr: 0x7000
            }
        );
        let m = setup([0x7001 | (3 << 6) | (1 << 2), 3, 0x5000, 0, 0, 0, 0, 0]);
        assert!(matches!(
            lookup(&m, 0x1000, 69, &CAPS).unwrap().pgtt,
            Pgtt::Nested { sl_levels: 3, .. }
        ));
        let m = setup([1 | (4 << 6), 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS).unwrap().pgtt,
            Pgtt::PassThrough
        );
    }

    #[test]
    fn errors() {
        let m = setup([1 | (5 << 6), 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS),
            Err((PasidError::Invalid, false))
        );
        let m = setup([1 | 2 | (2 << 6) | (3 << 2), 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS),
            Err((PasidError::Invalid, true))
        );
        let m = setup([1 | (1 << 6), 0, 0x5000 | (2 << 2), 0, 0, 0, 0, 0]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS),
            Err((PasidError::Invalid, false))
        );
        let m = setup([1 | (4 << 6), 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS),
            Err((PasidError::EntryReserved, false))
        );
        let m = setup([0; 8]);
        assert_eq!(
            lookup(&m, 0x1000, 69, &CAPS),
            Err((PasidError::EntryNotPresent, false))
        );
        assert_eq!(
            lookup(&m, 0x1000, 5, &CAPS),
            Err((PasidError::DirNotPresent, false))
        );
        assert_eq!(
            lookup(&m, 0xff_0000, 5, &CAPS),
            Err((PasidError::DirAccess, false))
        );
        m.write_obj(0x2005u64, GuestAddress(0x1010)).unwrap();
        assert_eq!(
            lookup(&m, 0x1000, 130, &CAPS),
            Err((PasidError::DirReserved, false))
        );
    }
}
