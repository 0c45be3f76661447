//! `dma-test`: a PCI Express endpoint whose only job is to do DMA on
//! command, so tests can make a device read or write any IOVA and watch
//! what the IOMMU does with it.
//!
//! BAR 0 (4 KiB, 32-bit) registers, little-endian:
//!
//! ```text
//! 0x00 ID (RO)       0x444d_4154 ("TAMD")
//! 0x08 ADDR          DMA address (IOVA), 64-bit
//! 0x10 LEN           bytes to transfer (max 1 MiB)
//! 0x14 PATTERN       byte written by a WRITE command
//! 0x18 PASID         bit 31: tag the DMA with PASID bits 19:0
//! 0x1c COMMAND       1 = WRITE pattern to ADDR, 2 = READ from ADDR
//! 0x20 STATUS (RO)   0 idle, 1 done, 2 DMA fault
//! 0x24 RESULT (RO)   sum of the bytes a READ fetched (wrapping u32)
//! 0x28 FAULTS (RO)   DMA faults so far
//! 0x2c DONE (RO)     commands completed so far
//! ```
//!
//! Commands run synchronously on the write to COMMAND. DMA needs Bus
//! Master Enable, as on real hardware.

use vm_memory::{Bytes, GuestAddress};

use crate::pci::caps::add_pcie_rciep;
use crate::pci::config::{Bar, BarKind, ConfigError, ConfigSpace, COMMAND_BUS_MASTER};
use crate::pci::PciDevice;
use viommu::DmaMemory;

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x5a5a;
const ID: u32 = 0x444d_4154;
const BAR_SIZE: u64 = 0x1000;
const MAX_LEN: u32 = 1 << 20;

const REG_ID: u64 = 0x00;
const REG_ADDR: u64 = 0x08;
const REG_LEN: u64 = 0x10;
const REG_PATTERN: u64 = 0x14;
const REG_PASID: u64 = 0x18;
const REG_COMMAND: u64 = 0x1c;
const REG_STATUS: u64 = 0x20;
const REG_RESULT: u64 = 0x24;
const REG_FAULTS: u64 = 0x28;
const REG_DONE: u64 = 0x2c;

const CMD_WRITE: u32 = 1;
const CMD_READ: u32 = 2;
const STATUS_DONE: u32 = 1;
const STATUS_FAULT: u32 = 2;

pub struct DmaTest {
    config: ConfigSpace,
    mem: DmaMemory,
    addr: u64,
    len: u32,
    pattern: u32,
    pasid: u32,
    status: u32,
    result: u32,
    faults: u32,
    done: u32,
}

impl DmaTest {
    pub fn new(mem: DmaMemory) -> Result<Self, ConfigError> {
        let mut config = ConfigSpace::new(VENDOR_ID, DEVICE_ID, 0xff_00_00, 1);
        config.add_bar(
            0,
            Bar {
                kind: BarKind::Mem32,
                size: BAR_SIZE,
                prefetchable: false,
            },
        )?;
        add_pcie_rciep(&mut config)?;
        Ok(DmaTest {
            config,
            mem,
            addr: 0,
            len: 0,
            pattern: 0,
            pasid: 0,
            status: 0,
            result: 0,
            faults: 0,
            done: 0,
        })
    }

    fn run(&mut self, cmd: u32) {
        if self.config.command() & COMMAND_BUS_MASTER == 0 || self.len > MAX_LEN {
            self.status = STATUS_FAULT;
            return;
        }
        let len = self.len as usize;
        let ok = match cmd {
            CMD_WRITE => {
                let buf = vec![self.pattern as u8; len];
                self.mem.write_slice(&buf, GuestAddress(self.addr)).is_ok()
            }
            CMD_READ => {
                let mut buf = vec![0u8; len];
                let r = self.mem.read_slice(&mut buf, GuestAddress(self.addr));
                self.result = buf.iter().fold(0u32, |a, &b| a.wrapping_add(b as u32));
                r.is_ok()
            }
            _ => return,
        };
        if ok {
            self.status = STATUS_DONE;
        } else {
            self.status = STATUS_FAULT;
            self.faults = self.faults.wrapping_add(1);
        }
        self.done = self.done.wrapping_add(1);
    }

    fn reg(&self, off: u64) -> u64 {
        match off {
            REG_ID => ID as u64,
            REG_ADDR => self.addr,
            REG_LEN => self.len as u64,
            REG_PATTERN => self.pattern as u64,
            REG_PASID => self.pasid as u64,
            REG_STATUS => self.status as u64,
            REG_RESULT => self.result as u64,
            REG_FAULTS => self.faults as u64,
            REG_DONE => self.done as u64,
            _ => 0,
        }
    }
}

impl PciDevice for DmaTest {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data)
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.config.bar(0).map(|b| (0, b)).into_iter().collect()
    }

    fn set_bar_address(&mut self, index: usize, addr: u64) {
        self.config.set_bar_address(index, addr)
    }

    fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
        self.config.bar_containing(addr)
    }

    fn read_bar(&mut self, _index: usize, offset: u64, data: &mut [u8]) {
        // Registers are read as aligned 32-bit words (ADDR also as 64).
        let base = offset & !3;
        let v = if base == REG_ADDR + 4 {
            self.addr >> 32
        } else {
            self.reg(base)
        };
        let bytes = v.to_le_bytes();
        let start = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    fn write_bar(&mut self, _index: usize, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        match (offset, n) {
            (REG_ADDR, 8) => self.addr = v,
            (REG_ADDR, 4) => self.addr = (self.addr & !0xffff_ffff) | (v & 0xffff_ffff),
            (o, 4) if o == REG_ADDR + 4 => self.addr = (self.addr & 0xffff_ffff) | (v << 32),
            (REG_LEN, 4) => self.len = v as u32,
            (REG_PATTERN, 4) => self.pattern = v as u32,
            (REG_PASID, 4) => self.pasid = v as u32,
            (REG_COMMAND, 4) => self.run(v as u32),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::COMMAND;
    use viommu::{DmaSpace, GuestMemoryMmap};

    fn dev() -> (DmaTest, GuestMemoryMmap) {
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let d = DmaTest::new(DmaSpace::identity(0x10).into_memory(ram.clone())).unwrap();
        (d, ram)
    }

    fn w32(d: &mut DmaTest, off: u64, v: u32) {
        d.write_bar(0, off, &v.to_le_bytes());
    }

    fn r32(d: &mut DmaTest, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read_bar(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn write_and_read_dma() {
        let (mut d, ram) = dev();
        d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
        d.write_bar(0, REG_ADDR, &0x2000u64.to_le_bytes());
        w32(&mut d, REG_LEN, 16);
        w32(&mut d, REG_PATTERN, 0xab);
        w32(&mut d, REG_COMMAND, CMD_WRITE);
        assert_eq!(r32(&mut d, REG_STATUS), STATUS_DONE);
        assert_eq!(ram.read_obj::<u8>(GuestAddress(0x200f)).unwrap(), 0xab);
        w32(&mut d, REG_COMMAND, CMD_READ);
        assert_eq!(r32(&mut d, REG_RESULT), 16 * 0xab);
        assert_eq!(r32(&mut d, REG_ID), ID);
    }

    #[test]
    fn no_bus_master_or_bad_address_fails_cleanly() {
        let (mut d, _) = dev();
        w32(&mut d, REG_LEN, 16);
        w32(&mut d, REG_COMMAND, CMD_WRITE);
        assert_eq!(r32(&mut d, REG_STATUS), STATUS_FAULT);
        d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
        d.write_bar(0, REG_ADDR, &(u64::MAX - 4).to_le_bytes());
        w32(&mut d, REG_COMMAND, CMD_READ);
        assert_eq!(r32(&mut d, REG_STATUS), STATUS_FAULT);
        assert_eq!(r32(&mut d, REG_FAULTS), 1);
        w32(&mut d, REG_LEN, MAX_LEN + 1);
        w32(&mut d, REG_COMMAND, CMD_WRITE);
        assert_eq!(r32(&mut d, REG_STATUS), STATUS_FAULT);
    }
}
