//! Builders for the capabilities every emulated endpoint carries.

use super::config::{ConfigError, ConfigSpace};

pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_PCIE: u8 = 0x10;
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const EXT_CAP_ID_DSN: u16 = 0x0003;

/// PCI Express capability (PCIe 5.0 §7.5.3) of a Root Complex Integrated
/// Endpoint: our devices sit directly on the root bus, like integrated
/// devices of a real root complex. Its presence makes Linux read the 4 KiB
/// extended config space.
pub fn add_pcie_rciep(cs: &mut ConfigSpace) -> Result<usize, ConfigError> {
    const TYPE_RCIEP: u16 = 0x9;
    let mut body = [0u8; 58];
    // PCI Express Capabilities: version 2, device/port type.
    body[0..2].copy_from_slice(&(2 | (TYPE_RCIEP << 4)).to_le_bytes());
    // Device Capabilities: max payload 128 bytes, role-based error reporting.
    body[2..6].copy_from_slice(&(1u32 << 15).to_le_bytes());
    // Device Control (offset 8 in the cap, 6 in body): writable error
    // reporting enables, relaxed ordering, max payload/read request, no snoop.
    let mut mask = [0u8; 58];
    mask[6..8].copy_from_slice(&0x7fffu16.to_le_bytes());
    // Device Capabilities 2 (cap offset 0x24): completion timeout disable,
    // End-End TLP Prefix supported with one prefix (carries PASIDs).
    let devcap2: u32 = (1 << 4) | (1 << 21) | (1 << 22);
    body[0x22..0x26].copy_from_slice(&devcap2.to_le_bytes());
    // Device Control 2 (cap offset 0x28): timeout value/disable writable.
    mask[0x26..0x28].copy_from_slice(&0x001fu16.to_le_bytes());
    cs.add_capability(CAP_ID_PCIE, &body, &mask)
}

/// MSI-X capability (PCI 3.0 §6.8.2) with `vectors` entries, the table at
/// `table_offset` of BAR `bar` and the PBA at `pba_offset` of the same BAR.
pub fn add_msix(
    cs: &mut ConfigSpace,
    vectors: u16,
    bar: u8,
    table_offset: u32,
    pba_offset: u32,
) -> Result<usize, ConfigError> {
    let mut body = [0u8; 10];
    let control = vectors.saturating_sub(1) & 0x7ff;
    body[0..2].copy_from_slice(&control.to_le_bytes());
    body[2..6].copy_from_slice(&(table_offset | bar as u32).to_le_bytes());
    body[6..10].copy_from_slice(&(pba_offset | bar as u32).to_le_bytes());
    // Only the enable and function-mask bits of Message Control are writable.
    let mask = [0x00, 0xc0];
    cs.add_capability(CAP_ID_MSIX, &body, &mask)
}

/// Device Serial Number extended capability (PCIe 5.0 §7.9.3).
pub fn add_dsn(cs: &mut ConfigSpace, serial: u64) -> Result<usize, ConfigError> {
    cs.add_extended_capability(EXT_CAP_ID_DSN, 1, &serial.to_le_bytes(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{CAPABILITIES_POINTER, EXT_CAP_START};

    #[test]
    fn msix_control_bits() {
        let mut cs = ConfigSpace::new(1, 2, 0, 0);
        let off = add_msix(&mut cs, 3, 0, 0x8000, 0x9000).unwrap();
        assert_eq!(cs.read_u8(CAPABILITIES_POINTER) as usize, off);
        assert_eq!(cs.read_u16(off + 2), 2);
        cs.write(off + 2, &0xffffu16.to_le_bytes());
        assert_eq!(cs.read_u16(off + 2), 0xc002);
        assert_eq!(cs.read_u32(off + 4), 0x8000);
        assert_eq!(cs.read_u32(off + 8), 0x9000);
    }

    #[test]
    fn pcie_and_dsn() {
        let mut cs = ConfigSpace::new(1, 2, 0, 0);
        let off = add_pcie_rciep(&mut cs).unwrap();
        assert_eq!(cs.read_u16(off + 2) >> 4 & 0xf, 9);
        // PCIe capability is 60 bytes: a following capability starts after it.
        let next = add_msix(&mut cs, 1, 0, 0, 0x800).unwrap();
        assert_eq!(next, off + 60);
        add_dsn(&mut cs, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(cs.read_u32(EXT_CAP_START) & 0xffff, 3);
        assert_eq!(cs.read_u32(EXT_CAP_START + 4), 0x5566_7788);
    }
}
