//! PCI configuration space of a type 0 function (PCI Local Bus 3.0 §6,
//! PCI Express Base 5.0 §7).
//!
//! The space is 4 KiB: the 256-byte PCI-compatible header with its capability
//! list, then the extended capabilities from 0x100. Each byte has a write
//! mask (bits the guest may change) and a write-1-to-clear mask, so read-only
//! fields and RW1C status bits behave as the specification says whatever the
//! access size or alignment.

pub const CONFIG_SPACE_SIZE: usize = 4096;
pub const PCI_CONFIG_SIZE: usize = 256;

/// Standard header offsets.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;
pub const EXT_CAP_START: usize = 0x100;

/// Command register bits.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register bits.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Error bits of the status register, all RW1C.
const STATUS_RW1C: u16 = 0xf900;

pub const NUM_BARS: usize = 6;

/// Kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    Mem64,
}

/// A BAR the device implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u64,
    pub prefetchable: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BadBarSize(u64),
    #[error("BAR {0} is already in use or out of range")]
    BadBarIndex(usize),
    #[error("no room for a capability of {0} bytes")]
    NoRoom(usize),
}

/// The config space of one function.
#[derive(Clone)]
pub struct ConfigSpace {
    data: Box<[u8; CONFIG_SPACE_SIZE]>,
    write_mask: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c_mask: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; NUM_BARS],
    /// Slots holding the upper half of a 64-bit BAR.
    upper_half: [bool; NUM_BARS],
    /// Offset of the last standard capability (0 when none).
    last_cap: usize,
    /// Next free offset for a standard capability.
    next_cap: usize,
    /// Offset of the last extended capability (0 when none).
    last_ext_cap: usize,
    next_ext_cap: usize,
}

impl ConfigSpace {
    /// A type 0 header for `vendor:device` of class `class` (base, sub, prog-if).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut cs = ConfigSpace {
            data: Box::new([0; CONFIG_SPACE_SIZE]),
            write_mask: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c_mask: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; NUM_BARS],
            upper_half: [false; NUM_BARS],
            last_cap: 0,
            next_cap: 0x40,
            last_ext_cap: 0,
            next_ext_cap: EXT_CAP_START,
        };
        cs.set_u16(VENDOR_ID, vendor);
        cs.set_u16(DEVICE_ID, device);
        cs.data[REVISION_ID] = revision;
        cs.data[CLASS_PROG] = class as u8;
        cs.data[CLASS_PROG + 1] = (class >> 8) as u8;
        cs.data[CLASS_PROG + 2] = (class >> 16) as u8;
        // Memory space, bus master and INTx disable are the writable command bits.
        cs.set_write_mask_u16(
            COMMAND,
            COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE,
        );
        cs.set_w1c_mask_u16(STATUS, STATUS_RW1C);
        cs.write_mask[INTERRUPT_LINE] = 0xff;
        cs
    }

    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(SUBSYSTEM_VENDOR_ID, vendor);
        self.set_u16(SUBSYSTEM_ID, id);
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.data.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Guest write: only writable bits change, RW1C bits clear where a 1 is written.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let wm = self.write_mask[o];
            let cm = self.w1c_mask[o];
            let old = self.data[o];
            self.data[o] = (old & !wm) | (v & wm);
            self.data[o] &= !(v & cm);
        }
    }

    pub fn read_u8(&self, offset: usize) -> u8 {
        self.data.get(offset).copied().unwrap_or(0xff)
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Device-side store that ignores the write masks.
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        if let Some(dst) = self
            .data
            .get_mut(offset..offset.saturating_add(bytes.len()))
        {
            dst.copy_from_slice(bytes);
        }
    }

    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub fn set_write_mask(&mut self, offset: usize, mask: &[u8]) {
        if let Some(dst) = self
            .write_mask
            .get_mut(offset..offset.saturating_add(mask.len()))
        {
            dst.copy_from_slice(mask);
        }
    }

    pub fn set_write_mask_u16(&mut self, offset: usize, mask: u16) {
        self.set_write_mask(offset, &mask.to_le_bytes());
    }

    pub fn set_write_mask_u32(&mut self, offset: usize, mask: u32) {
        self.set_write_mask(offset, &mask.to_le_bytes());
    }

    pub fn set_w1c_mask_u16(&mut self, offset: usize, mask: u16) {
        if let Some(dst) = self.w1c_mask.get_mut(offset..offset + 2) {
            dst.copy_from_slice(&mask.to_le_bytes());
        }
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Declares BAR `index` (a 64-bit BAR also takes `index + 1`).
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), ConfigError> {
        if bar.size < 16 || !bar.size.is_power_of_two() {
            return Err(ConfigError::BadBarSize(bar.size));
        }
        let slots = if bar.kind == BarKind::Mem64 { 2 } else { 1 };
        if index + slots > NUM_BARS
            || (index..index + slots).any(|i| self.bars[i].is_some() || self.upper_half[i])
        {
            return Err(ConfigError::BadBarIndex(index));
        }
        if bar.kind == BarKind::Mem32 && bar.size > 1 << 31 {
            return Err(ConfigError::BadBarSize(bar.size));
        }
        self.bars[index] = Some(bar);
        if bar.kind == BarKind::Mem64 {
            self.upper_half[index + 1] = true;
        }
        let off = BAR0 + index * 4;
        let mut flags = 0u32;
        if bar.kind == BarKind::Mem64 {
            flags |= 0b100;
        }
        if bar.prefetchable {
            flags |= 0b1000;
        }
        let mask = !(bar.size - 1);
        self.set_u32(off, flags);
        self.set_write_mask_u32(off, (mask as u32) & !0xf);
        if bar.kind == BarKind::Mem64 {
            self.set_u32(off + 4, 0);
            self.set_write_mask_u32(off + 4, (mask >> 32) as u32);
        }
        Ok(())
    }

    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Programs a BAR's address as firmware would.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        let Some(bar) = self.bar(index) else { return };
        let off = BAR0 + index * 4;
        let flags = self.read_u32(off) & 0xf;
        self.set_u32(off, (addr as u32 & !0xf) | flags);
        if bar.kind == BarKind::Mem64 {
            self.set_u32(off + 4, (addr >> 32) as u32);
        }
    }

    /// The address the guest programmed into BAR `index`.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = BAR0 + index * 4;
        let lo = (self.read_u32(off) & !0xf) as u64;
        let hi = if bar.kind == BarKind::Mem64 {
            (self.read_u32(off + 4) as u64) << 32
        } else {
            0
        };
        Some(hi | lo)
    }

    /// The BAR whose window (decoded or not) contains `addr`, with the offset into it.
    pub fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
        if self.command() & COMMAND_MEMORY_SPACE == 0 {
            return None;
        }
        (0..NUM_BARS).find_map(|i| {
            let bar = self.bar(i)?;
            let base = self.bar_address(i)?;
            // An all-ones sizing value leaves the BAR at an address that
            // cannot be a real window.
            if base == 0 || base.checked_add(bar.size).is_none() {
                return None;
            }
            (addr >= base && addr < base + bar.size).then(|| (i, addr - base))
        })
    }

    /// Appends a standard capability: `body` starts after the 2-byte header
    /// (ID, next). `write_mask` (same length as `body`, may be shorter) marks the
    /// guest-writable bits. Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        write_mask: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (2 + body.len()).next_multiple_of(4);
        let off = self.next_cap;
        if off + len > PCI_CONFIG_SIZE {
            return Err(ConfigError::NoRoom(len));
        }
        self.data[off] = id;
        self.data[off + 1] = 0;
        self.set_bytes(off + 2, body);
        self.set_write_mask(off + 2, write_mask);
        if self.last_cap == 0 {
            self.data[CAPABILITIES_POINTER] = off as u8;
            let st = self.read_u16(STATUS) | STATUS_CAP_LIST;
            self.set_u16(STATUS, st);
        } else {
            self.data[self.last_cap + 1] = off as u8;
        }
        self.last_cap = off;
        self.next_cap = off + len;
        Ok(off)
    }

    /// Appends an extended capability (PCIe §7.6): a 4-byte header (ID,
    /// version, next) then `body`. Returns its offset.
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        write_mask: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (4 + body.len()).next_multiple_of(4);
        let off = self.next_ext_cap;
        if off + len > CONFIG_SPACE_SIZE {
            return Err(ConfigError::NoRoom(len));
        }
        let header = id as u32 | ((version as u32 & 0xf) << 16);
        self.set_u32(off, header);
        self.set_bytes(off + 4, body);
        self.set_write_mask(off + 4, write_mask);
        if self.last_ext_cap != 0 {
            let prev = self.read_u32(self.last_ext_cap);
            self.set_u32(
                self.last_ext_cap,
                (prev & 0x000f_ffff) | ((off as u32) << 20),
            );
        }
        self.last_ext_cap = off;
        self.next_ext_cap = off + len;
        Ok(off)
    }

    /// Walks the standard capability list: (offset, id) pairs, loop-safe.
    pub fn capabilities(&self) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        let mut ptr = (self.read_u8(CAPABILITIES_POINTER) & !3) as usize;
        while ptr >= 0x40 && out.len() < 48 {
            out.push((ptr, self.read_u8(ptr)));
            ptr = (self.read_u8(ptr + 1) & !3) as usize;
        }
        out
    }

    /// Walks the extended capability list: (offset, id) pairs, loop-safe.
    pub fn extended_capabilities(&self) -> Vec<(usize, u16)> {
        let mut out = Vec::new();
        let mut ptr = EXT_CAP_START;
        while ptr >= EXT_CAP_START && out.len() < 960 {
            let h = self.read_u32(ptr);
            if h == 0 || h == u32::MAX {
                break;
            }
            out.push((ptr, h as u16));
            ptr = ((h >> 20) & 0xffc) as usize;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs() -> ConfigSpace {
        ConfigSpace::new(0x1af4, 0x1042, 0x018000, 1)
    }

    #[test]
    fn ids_are_read_only() {
        let mut c = cs();
        c.write(VENDOR_ID, &[0, 0, 0, 0]);
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        c.write(CLASS_PROG, &[0xff, 0xff, 0xff]);
        assert_eq!(c.read_u32(8) >> 8, 0x018000);
    }

    #[test]
    fn command_register_writable_bits_only() {
        let mut c = cs();
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.command(),
            COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
    }

    #[test]
    fn status_error_bits_are_rw1c() {
        let mut c = cs();
        c.set_u16(STATUS, 0x8000 | 0x0100 | STATUS_CAP_LIST);
        // Writing 0 changes nothing.
        c.write(STATUS, &[0, 0]);
        assert_eq!(c.read_u16(STATUS), 0x8110);
        // Writing 1 clears just that bit; the read-only cap-list bit stays.
        c.write(STATUS, &0x8010u16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0x0110);
    }

    #[test]
    fn bar32_sizing() {
        let mut c = cs();
        c.add_bar(
            1,
            Bar {
                kind: BarKind::Mem32,
                size: 0x1000,
                prefetchable: false,
            },
        )
        .unwrap();
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_f000);
        c.write(BAR0 + 4, &0xc000_1234u32.to_le_bytes());
        assert_eq!(c.read_u32(BAR0 + 4), 0xc000_1000);
        assert_eq!(c.bar_address(1), Some(0xc000_1000));
        // Unimplemented BARs read as zero and ignore writes.
        c.write(BAR0, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0), 0);
    }

    #[test]
    fn bar64_sizing_and_decode() {
        let mut c = cs();
        c.add_bar(
            0,
            Bar {
                kind: BarKind::Mem64,
                size: 0x4000,
                prefetchable: true,
            },
        )
        .unwrap();
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0), 0xffff_c00c);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_ffff);
        c.set_bar_address(0, 0x10_0000_0000);
        assert_eq!(c.bar_containing(0x10_0000_0010), None, "decode off");
        c.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        assert_eq!(c.bar_containing(0x10_0000_0010), Some((0, 0x10)));
        assert_eq!(c.bar_containing(0x10_0000_4000), None);
        assert!(c
            .add_bar(
                1,
                Bar {
                    kind: BarKind::Mem32,
                    size: 16,
                    prefetchable: false
                }
            )
            .is_err());
    }

    #[test]
    fn bad_bar_sizes_rejected() {
        let mut c = cs();
        let b = |size| Bar {
            kind: BarKind::Mem32,
            size,
            prefetchable: false,
        };
        assert!(c.add_bar(0, b(0x1800)).is_err());
        assert!(c.add_bar(0, b(8)).is_err());
        assert!(c.add_bar(6, b(0x1000)).is_err());
    }

    #[test]
    fn capability_chains() {
        let mut c = cs();
        let a = c.add_capability(0x11, &[0; 10], &[]).unwrap();
        let b = c.add_capability(0x10, &[0; 58], &[]).unwrap();
        assert_eq!(c.capabilities(), vec![(a, 0x11), (b, 0x10)]);
        assert_ne!(c.read_u16(STATUS) & STATUS_CAP_LIST, 0);
        let e1 = c.add_extended_capability(0x3, 1, &[1; 8], &[]).unwrap();
        let e2 = c.add_extended_capability(0xb, 1, &[2; 4], &[]).unwrap();
        assert_eq!(e1, 0x100);
        assert_eq!(c.extended_capabilities(), vec![(e1, 3), (e2, 0xb)]);
        // Capability headers are read-only.
        c.write(a, &[0xff, 0xff]);
        assert_eq!(c.read_u8(a), 0x11);
    }

    #[test]
    fn capability_list_loop_is_bounded() {
        let mut c = cs();
        let a = c.add_capability(0x5, &[0; 2], &[]).unwrap();
        c.set_bytes(a + 1, &[a as u8]);
        assert_eq!(c.capabilities().len(), 48);
    }

    #[test]
    fn out_of_range_access_is_harmless() {
        let mut c = cs();
        c.write(4094, &[1, 2, 3, 4]);
        let mut b = [0; 4];
        c.read(4094, &mut b);
        assert_eq!(&b[2..], &[0xff, 0xff]);
        c.read(usize::MAX - 1, &mut b);
        assert_eq!(b, [0xff; 4]);
    }
}
