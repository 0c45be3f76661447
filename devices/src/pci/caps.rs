//! Builders for the capabilities every emulated endpoint carries.

use super::config::{ConfigError, ConfigSpace};

pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_PCIE: u8 = 0x10;
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const EXT_CAP_ID_DSN: u16 = 0x0003;

/// PCI Express capability registers (PCIe 6.0 §7.5.3), offsets in the
/// capability.
pub const PCIE_DEVCAP: usize = 0x04;
pub const PCIE_DEVCTL: usize = 0x08;
/// Device Capabilities bit 28: Function Level Reset Capability (§7.5.3.3).
pub const DEVCAP_FLR: u32 = 1 << 28;
/// Device Control bit 15: Initiate Function Level Reset (§7.5.3.4). It
/// always reads as 0.
pub const DEVCTL_BCR_FLR: u16 = 1 << 15;
/// Device Control Max_Payload_Size (bits 7:5), which FLR leaves alone.
const DEVCTL_PAYLOAD: u16 = 0x00e0;

/// PCI Express capability (PCIe 5.0 §7.5.3) of a Root Complex Integrated
/// Endpoint: our devices sit directly on the root bus, like integrated
/// devices of a real root complex. Its presence makes Linux read the 4 KiB
/// extended config space.
///
/// The function advertises Function Level Reset: on the root bus there is
/// no bus reset, so without FLR a guest (vfio-pci passing the function on
/// to a nested VM) finds no way to reset it. Its owner must implement it:
/// build an [`Flr`] once the config space is complete and act on the
/// writes it recognizes (see [`crate::pci::PciDevice::function_level_reset`]).
pub fn add_pcie_rciep(cs: &mut ConfigSpace) -> Result<usize, ConfigError> {
    const TYPE_RCIEP: u16 = 0x9;
    let mut body = [0u8; 58];
    // PCI Express Capabilities: version 2, device/port type.
    body[0..2].copy_from_slice(&(2 | (TYPE_RCIEP << 4)).to_le_bytes());
    // Device Capabilities: max payload 128 bytes, role-based error
    // reporting, Function Level Reset.
    body[2..6].copy_from_slice(&((1u32 << 15) | DEVCAP_FLR).to_le_bytes());
    // Device Control (offset 8 in the cap, 6 in body): writable error
    // reporting enables, relaxed ordering, max payload/read request, no
    // snoop. Initiate FLR (bit 15) is not stored, so it reads as 0: the
    // owner sees it in the write itself ([`Flr::initiated_by`]).
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

/// Function Level Reset of an endpoint's config space (PCIe 6.0 §6.6.2):
/// where the function's PCI Express capability is, and the config space
/// it powered on with, which an FLR returns to.
#[derive(Clone)]
pub struct Flr {
    cap: usize,
    power_on: ConfigSpace,
}

impl Flr {
    /// Records `cs`, with the PCI Express capability at `cap`, as the
    /// power-on state. Call it once the config space is complete.
    pub fn new(cs: &ConfigSpace, cap: usize) -> Self {
        Flr {
            cap,
            power_on: cs.clone(),
        }
    }

    /// Whether a config write of `data` at `offset` writes 1 to Initiate
    /// Function Level Reset (Device Control bit 15), whatever the access
    /// size and alignment.
    pub fn initiated_by(&self, offset: usize, data: &[u8]) -> bool {
        let byte = self.cap + PCIE_DEVCTL + 1;
        byte.checked_sub(offset)
            .and_then(|i| data.get(i))
            .is_some_and(|b| b & (DEVCTL_BCR_FLR >> 8) as u8 != 0)
    }

    /// Returns `cs` to the power-on state: Command, Status, BARs,
    /// Interrupt Line, every capability's control registers (MSI-X
    /// enable and mask, Device Control, PASID/ATS/PRI control, ...).
    /// What §6.6.2 says an FLR does not affect stays: Max_Payload_Size.
    /// Our functions have no sticky (ROS/RWS/RW1CS) bits, and their
    /// HwInit fields never change after construction. The link fields the
    /// section also lists do not exist on an integrated endpoint.
    pub fn reset_config(&self, cs: &mut ConfigSpace) {
        let devctl = self.cap + PCIE_DEVCTL;
        let payload = cs.read_u16(devctl) & DEVCTL_PAYLOAD;
        *cs = self.power_on.clone();
        let v = (cs.read_u16(devctl) & !DEVCTL_PAYLOAD) | payload;
        cs.set_u16(devctl, v);
    }
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

    #[test]
    fn pcie_advertises_flr_and_initiate_reads_zero() {
        let mut cs = ConfigSpace::new(1, 2, 0, 0);
        let off = add_pcie_rciep(&mut cs).unwrap();
        assert_ne!(cs.read_u32(off + PCIE_DEVCAP) & DEVCAP_FLR, 0);
        let flr = Flr::new(&cs, off);
        let devctl = off + PCIE_DEVCTL;
        cs.write(devctl, &0xffffu16.to_le_bytes());
        assert_eq!(cs.read_u16(devctl), 0x7fff, "Initiate FLR reads as 0");
        // The trigger is seen in a write of any size that covers bit 15.
        assert!(flr.initiated_by(devctl, &DEVCTL_BCR_FLR.to_le_bytes()));
        assert!(flr.initiated_by(devctl + 1, &[0x80]));
        assert!(flr.initiated_by(off + 4, &[0, 0, 0, 0, 0, 0x80, 0, 0]));
        assert!(!flr.initiated_by(devctl, &0x7fffu16.to_le_bytes()));
        assert!(!flr.initiated_by(devctl, &[0x80]));
        assert!(!flr.initiated_by(devctl + 2, &[0xff; 4]));
        // Reset: Device Control back to 0 but Max_Payload_Size (§6.6.2).
        flr.reset_config(&mut cs);
        assert_eq!(cs.read_u16(devctl), DEVCTL_PAYLOAD);
        assert_ne!(cs.read_u32(off + PCIE_DEVCAP) & DEVCAP_FLR, 0);
    }
}
