//! Root table (VT-d spec §9.1, §9.2): 256 entries, one per bus, 16 bytes
//! each, at RTADDR. Legacy entries point at one context table per bus;
//! scalable-mode entries point at a lower (devfn 0-127) and an upper
//! (devfn 128-255) scalable context table.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Why an entry could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The entry lies outside guest memory.
    Access,
    NotPresent,
    Reserved,
}

/// Reads a 16-byte entry at `addr`.
pub fn read_u128<M: GuestMemory>(mem: &M, addr: u64) -> Result<(u64, u64), EntryError> {
    let lo: u64 = mem
        .read_obj(GuestAddress(addr))
        .map_err(|_| EntryError::Access)?;
    let hi: u64 = mem
        .read_obj(GuestAddress(addr.checked_add(8).ok_or(EntryError::Access)?))
        .map_err(|_| EntryError::Access)?;
    Ok((lo, hi))
}

/// Bits above the host address width are reserved in table pointers.
pub fn haw_mask(haw: u8) -> u64 {
    if haw >= 64 {
        u64::MAX
    } else {
        (1u64 << haw) - 1
    }
}

/// The context table (legacy) or half-table (scalable) for `bus`/`devfn`.
pub fn context_table(
    mem: &impl GuestMemory,
    rtaddr: u64,
    scalable: bool,
    bus: u8,
    devfn: u8,
    haw: u8,
) -> Result<u64, EntryError> {
    // RTADDR is guest-written: an address that wraps is outside memory.
    let entry = rtaddr
        .checked_add(bus as u64 * 16)
        .ok_or(EntryError::Access)?;
    let (lo, hi) = read_u128(mem, entry)?;
    let word = if scalable && devfn >= 128 { hi } else { lo };
    if word & 1 == 0 {
        return Err(EntryError::NotPresent);
    }
    // Bits 11:1 and bits above HAW are reserved; a legacy entry's upper
    // 64 bits are all reserved.
    let reserved = (word & 0xffe) | (word & !haw_mask(haw) & !0xfff);
    if reserved != 0 || (!scalable && hi != 0) {
        return Err(EntryError::Reserved);
    }
    Ok(word & !0xfff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn legacy_and_scalable_entries() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_obj(0x5001u64, GuestAddress(0x1000 + 3 * 16))
            .unwrap();
        assert_eq!(context_table(&mem, 0x1000, false, 3, 0, 39), Ok(0x5000));
        assert_eq!(
            context_table(&mem, 0x1000, false, 4, 0, 39),
            Err(EntryError::NotPresent)
        );
        // Upper half for devfn >= 128 in scalable mode.
        mem.write_obj(0x6001u64, GuestAddress(0x1000 + 3 * 16 + 8))
            .unwrap();
        assert_eq!(context_table(&mem, 0x1000, true, 3, 0x80, 39), Ok(0x6000));
        assert_eq!(
            context_table(&mem, 0x1000, false, 3, 0, 39),
            Err(EntryError::Reserved)
        );
        mem.write_obj(0x5003u64, GuestAddress(0x1000 + 5 * 16))
            .unwrap();
        assert_eq!(
            context_table(&mem, 0x1000, true, 5, 0, 39),
            Err(EntryError::Reserved)
        );
        mem.write_obj((1u64 << 40) | 1, GuestAddress(0x1000 + 6 * 16))
            .unwrap();
        assert_eq!(
            context_table(&mem, 0x1000, true, 6, 0, 39),
            Err(EntryError::Reserved)
        );
        assert_eq!(
            context_table(&mem, 0xffff_0000, true, 0, 0, 39),
            Err(EntryError::Access)
        );
    }
}
