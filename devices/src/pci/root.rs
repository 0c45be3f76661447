//! The PCI Express root complex: a host bridge at 00:00.0, the legacy
//! 0xcf8/0xcfc configuration mechanism, the ECAM window (PCIe 5.0 §7.2.2)
//! and dispatch of memory accesses to the BARs of the devices on bus 0.

use std::sync::{Arc, Mutex};

use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};

use super::config::{Bar, ConfigSpace};
use super::Bdf;

/// A function on the root bus.
pub trait PciDevice: Send {
    /// Reads config space; any offset and length must be handled.
    fn read_config(&mut self, offset: usize, data: &mut [u8]);
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// The BARs the device implements, for address assignment.
    fn bars(&self) -> Vec<(usize, Bar)>;
    /// Programs BAR `index` at `addr` (as firmware does before boot).
    fn set_bar_address(&mut self, index: usize, addr: u64);
    /// Which decoded BAR holds `addr`, and at which offset.
    fn bar_containing(&self, addr: u64) -> Option<(usize, u64)>;
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]);
    /// Function Level Reset (PCIe 6.0 §6.6.2): config space and internal
    /// state back to power-on, except what FLR preserves. A function that
    /// advertises FLR (Device Capabilities bit 28) calls this from
    /// `write_config` when the guest writes Initiate Function Level Reset
    /// (see [`super::caps::Flr`]); it returns once the reset is complete,
    /// so the guest's 100 ms wait is always enough.
    ///
    /// The default does nothing: a function without FLR does not set the
    /// capability bit, and ignores writes of the bit, as the specification
    /// requires of such functions (§7.5.3.4).
    fn function_level_reset(&mut self) {}
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge (type 0 header, class 06/00/00).
struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    fn new() -> Self {
        // Red Hat's PCIe host bridge ID, which Linux treats as a generic bridge.
        HostBridge {
            config: ConfigSpace::new(0x1b36, 0x0008, 0x06_00_00, 0),
        }
    }
}

/// The root complex with its bus-0 devices.
pub struct PciRoot {
    host_bridge: Mutex<HostBridge>,
    devices: Vec<(Bdf, SharedPciDevice)>,
    config_address: Mutex<u32>,
    ecam_base: u64,
}

const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;

impl PciRoot {
    pub fn new(ecam_base: u64) -> Self {
        PciRoot {
            host_bridge: Mutex::new(HostBridge::new()),
            devices: Vec::new(),
            config_address: Mutex::new(0),
            ecam_base,
        }
    }

    /// The first free device number on bus 0 (device 0 is the host bridge).
    pub fn next_bdf(&self) -> Option<Bdf> {
        (1u8..32)
            .map(|d| Bdf::new(0, d, 0))
            .find(|b| self.devices.iter().all(|(x, _)| x != b))
    }

    pub fn add_device(&mut self, bdf: Bdf, dev: SharedPciDevice) {
        self.devices.push((bdf, dev));
    }

    pub fn devices(&self) -> &[(Bdf, SharedPciDevice)] {
        &self.devices
    }

    fn with_function<R>(&self, bdf: Bdf, f: impl FnOnce(&mut dyn PciDevice) -> R) -> Option<R> {
        let dev = self.devices.iter().find(|(b, _)| *b == bdf)?;
        let mut guard = dev.1.lock().ok()?;
        Some(f(&mut *guard))
    }

    /// A configuration read of `bdf`; absent functions read as all ones.
    pub fn config_read(&self, bdf: Bdf, offset: usize, data: &mut [u8]) {
        if bdf == Bdf::new(0, 0, 0) {
            if let Ok(hb) = self.host_bridge.lock() {
                hb.config.read(offset, data);
            }
            return;
        }
        if self
            .with_function(bdf, |d| d.read_config(offset, data))
            .is_none()
        {
            data.fill(0xff);
        }
    }

    pub fn config_write(&self, bdf: Bdf, offset: usize, data: &[u8]) {
        if bdf == Bdf::new(0, 0, 0) {
            if let Ok(mut hb) = self.host_bridge.lock() {
                hb.config.write(offset, data);
            }
            return;
        }
        self.with_function(bdf, |d| d.write_config(offset, data));
    }

    /// Decodes an ECAM offset into (bdf, register offset).
    fn ecam_decode(offset: u64) -> (Bdf, usize) {
        (Bdf((offset >> 12) as u16), (offset & 0xfff) as usize)
    }

    /// A memory access that hit one of the PCI windows.
    fn bar_access(
        &self,
        addr: u64,
        mut access: impl FnMut(&mut dyn PciDevice, usize, u64),
    ) -> bool {
        for (_, dev) in &self.devices {
            let Ok(mut d) = dev.lock() else { continue };
            if let Some((bar, off)) = d.bar_containing(addr) {
                access(&mut *d, bar, off);
                return true;
            }
        }
        false
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.bar_access(addr, |d, bar, off| d.read_bar(bar, off, data)) {
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.bar_access(addr, |d, bar, off| d.write_bar(bar, off, data));
    }

    /// Resolves the 0xcfc data port access at `port_offset` (0..3) to a
    /// function and register, per the configuration mechanism #1.
    fn cf8_target(&self, port_offset: u64) -> Option<(Bdf, usize)> {
        let addr = *self.config_address.lock().ok()?;
        if addr & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let bdf = Bdf(((addr >> 8) & 0xffff) as u16);
        let reg = (addr & 0xfc) as usize | ((addr >> 16) & 0xf00) as usize;
        Some((bdf, reg + port_offset as usize))
    }
}

/// The ECAM window and the PCI memory windows.
pub struct PciMmio(pub Arc<PciRoot>);

impl DeviceMmio for PciMmio {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let root = &self.0;
        if base.0 == root.ecam_base {
            let (bdf, reg) = PciRoot::ecam_decode(offset);
            root.config_read(bdf, reg, data);
        } else {
            root.mmio_read(base.0 + offset, data);
        }
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let root = &self.0;
        if base.0 == root.ecam_base {
            let (bdf, reg) = PciRoot::ecam_decode(offset);
            root.config_write(bdf, reg, data);
        } else {
            root.mmio_write(base.0 + offset, data);
        }
    }
}

/// The 0xcf8 (address) / 0xcfc (data) configuration ports.
pub struct PciConfigIo(pub Arc<PciRoot>);

impl DevicePio for PciConfigIo {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let root = &self.0;
        match offset {
            0..=3 => {
                let v = root.config_address.lock().map(|a| *a).unwrap_or(0);
                let bytes = v.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
                }
            }
            4..=7 => match root.cf8_target(offset as u64 - 4) {
                Some((bdf, reg)) => root.config_read(bdf, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let root = &self.0;
        match offset {
            0..=3 => {
                if let Ok(mut a) = root.config_address.lock() {
                    let mut bytes = a.to_le_bytes();
                    for (i, b) in data.iter().enumerate() {
                        if let Some(slot) = bytes.get_mut(offset as usize + i) {
                            *slot = *b;
                        }
                    }
                    *a = u32::from_le_bytes(bytes);
                }
            }
            4..=7 => {
                if let Some((bdf, reg)) = root.cf8_target(offset as u64 - 4) {
                    root.config_write(bdf, reg, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::BarKind;

    struct Dummy {
        cs: ConfigSpace,
        last_write: Option<(usize, u64, Vec<u8>)>,
    }

    impl PciDevice for Dummy {
        fn read_config(&mut self, offset: usize, data: &mut [u8]) {
            self.cs.read(offset, data)
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.cs.write(offset, data)
        }
        fn bars(&self) -> Vec<(usize, Bar)> {
            self.cs.bar(0).map(|b| (0, b)).into_iter().collect()
        }
        fn set_bar_address(&mut self, index: usize, addr: u64) {
            self.cs.set_bar_address(index, addr)
        }
        fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
            self.cs.bar_containing(addr)
        }
        fn read_bar(&mut self, _i: usize, off: u64, data: &mut [u8]) {
            data.fill(off as u8)
        }
        fn write_bar(&mut self, i: usize, off: u64, data: &[u8]) {
            self.last_write = Some((i, off, data.to_vec()))
        }
    }

    fn root() -> (Arc<PciRoot>, Arc<Mutex<Dummy>>) {
        let mut r = PciRoot::new(0xe000_0000);
        let mut cs = ConfigSpace::new(0x1234, 0x5678, 0xff0000, 0);
        cs.add_bar(
            0,
            Bar {
                kind: BarKind::Mem32,
                size: 0x1000,
                prefetchable: false,
            },
        )
        .unwrap();
        let d = Arc::new(Mutex::new(Dummy {
            cs,
            last_write: None,
        }));
        let bdf = r.next_bdf().unwrap();
        assert_eq!(bdf, Bdf::new(0, 1, 0));
        r.add_device(bdf, d.clone());
        (Arc::new(r), d)
    }

    #[test]
    fn cf8_mechanism_reads_ids() {
        let (r, _) = root();
        let io = PciConfigIo(r);
        io.pio_write(PioAddress(0xcf8), 0, &(0x8000_0800u32).to_le_bytes());
        let mut d = [0u8; 4];
        io.pio_read(PioAddress(0xcf8), 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x5678_1234);
        // Byte access at an offset inside the data port.
        let mut b = [0u8; 2];
        io.pio_read(PioAddress(0xcf8), 6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x5678);
        // Absent device: all ones.
        io.pio_write(PioAddress(0xcf8), 0, &(0x8000_1000u32).to_le_bytes());
        io.pio_read(PioAddress(0xcf8), 4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Host bridge class code.
        io.pio_write(PioAddress(0xcf8), 0, &(0x8000_0008u32).to_le_bytes());
        io.pio_read(PioAddress(0xcf8), 4, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 8, 0x060000);
    }

    #[test]
    fn ecam_reaches_extended_space_and_bars_dispatch() {
        let (r, d) = root();
        let m = PciMmio(r.clone());
        let mut v = [0u8; 4];
        m.mmio_read(MmioAddress(0xe000_0000), 0x8000, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x5678_1234);
        m.mmio_read(MmioAddress(0xe000_0000), 0x8100, &mut v);
        assert_eq!(v, [0; 4]);
        // Program BAR0 and enable memory decoding through ECAM.
        m.mmio_write(
            MmioAddress(0xe000_0000),
            0x8010,
            &0xc000_0000u32.to_le_bytes(),
        );
        m.mmio_write(MmioAddress(0xe000_0000), 0x8004, &2u16.to_le_bytes());
        m.mmio_write(MmioAddress(0xc000_0000), 0x10, &[7]);
        assert_eq!(d.lock().unwrap().last_write, Some((0, 0x10, vec![7])));
        let mut b = [0u8; 1];
        m.mmio_read(MmioAddress(0xc000_0000), 0x2000, &mut b);
        assert_eq!(b, [0xff]);
    }
}
