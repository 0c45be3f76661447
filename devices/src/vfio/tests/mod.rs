//! Unit tests of the passthrough function against a fake VFIO device: an
//! NVMe-like function with a 64-bit BAR0 holding the MSI-X table and PBA,
//! a 32-bit prefetchable BAR2, an I/O BAR4, a ROM, and the capabilities a
//! real one shows through vfio-pci (PM, MSI with per-vector masking,
//! PCIe, MSI-X; AER, ATS, PRI with the host's enable set).

mod bar_mapping;
mod config_space;
mod hostile;
mod intx_reset;
mod msi_msix;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::backend::{HostMmap, IrqInfo, IrqKind, RegionInfo, VfioBackend, CONFIG_REGION};
use super::device::VfioPciDevice;
use crate::interrupt::test_utils::RecordingRouter;
use crate::memory_slots::test_utils::RecordingSlots;
use crate::pci::PciDevice;
use viommu::pasid_cap::PasidHostInfo;

pub const MSI: usize = 0x50;
pub const PCIE: usize = 0x70;
pub const MSIX: usize = 0xb0;
pub const AER: usize = 0x100;
pub const ATS: usize = 0x148;
pub const PRI: usize = 0x150;
pub const TABLE: u64 = 0x2000;
pub const PBA: u64 = 0x3000;
pub const VECTORS: u16 = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    ConfigWrite {
        offset: u64,
        data: Vec<u8>,
    },
    RegionWrite {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    RegionRead {
        index: u32,
        offset: u64,
        len: usize,
    },
    Mmap {
        index: u32,
        offset: u64,
        len: u64,
    },
    SetIrqs {
        kind: IrqKind,
        start: u32,
        fds: Vec<RawFd>,
    },
    DisableIrq(IrqKind),
    UnmaskIntx,
    Reset,
}

pub struct FakeVfio {
    pub config: Mutex<Vec<u8>>,
    pub regions: Vec<Option<RegionInfo>>,
    pub memory: Mutex<HashMap<u32, Vec<u8>>>,
    pub calls: Mutex<Vec<Call>>,
    pub irqs: [IrqInfo; 3],
    pub fail_mmap: Mutex<Vec<u32>>,
    pub fail_irqs: Mutex<bool>,
}

fn put(c: &mut [u8], off: usize, bytes: &[u8]) {
    c[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The config space as vfio-pci would present it for our NVMe-like device.
pub fn nvme_config() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    put(&mut c, 0x00, &0x8086u16.to_le_bytes());
    put(&mut c, 0x02, &0x0a54u16.to_le_bytes());
    put(&mut c, 0x06, &0x0010u16.to_le_bytes());
    put(&mut c, 0x08, &[0x01, 0x02, 0x08, 0x01]);
    c[0x0e] = 0x80;
    // Host addresses in the BARs must never reach the guest.
    put(&mut c, 0x10, &0xfeb0_0004u32.to_le_bytes());
    put(&mut c, 0x18, &0xfe00_0008u32.to_le_bytes());
    put(&mut c, 0x20, &0x0000_e001u32.to_le_bytes());
    put(&mut c, 0x30, &0xfea0_0001u32.to_le_bytes());
    c[0x34] = 0x40;
    c[0x3c] = 0x0b;
    c[0x3d] = 0x01;
    // PM.
    put(&mut c, 0x40, &[0x01, MSI as u8, 0x03, 0x00]);
    // MSI: 64-bit, per-vector masking, 8 vectors, host state left in it.
    put(&mut c, MSI, &[0x05, PCIE as u8]);
    put(&mut c, MSI + 2, &(0x0186u16 | 0x0021).to_le_bytes());
    put(&mut c, MSI + 4, &0xfee0_1000u32.to_le_bytes());
    // PCIe endpoint (v2) on a x4 link, prefix-capable.
    put(&mut c, PCIE, &[0x10, MSIX as u8, 0x02, 0x00]);
    put(&mut c, PCIE + 0x0c, &0x0000_0443u32.to_le_bytes());
    put(&mut c, PCIE + 0x12, &0x1043u16.to_le_bytes());
    put(&mut c, PCIE + 0x24, &(1u32 << 21).to_le_bytes());
    put(&mut c, PCIE + 0x2c, &0x0000_000eu32.to_le_bytes());
    // MSI-X: 8 vectors, table at BAR0+0x2000, PBA at BAR0+0x3000.
    put(&mut c, MSIX, &[0x11, 0x00]);
    put(&mut c, MSIX + 2, &(0x0007u16 | 0x8000).to_le_bytes());
    put(&mut c, MSIX + 4, &(TABLE as u32).to_le_bytes());
    put(&mut c, MSIX + 8, &(PBA as u32).to_le_bytes());
    // AER, ATS, PRI.
    let hdr = |id: u32, ver: u32, next: usize| id | (ver << 16) | ((next as u32) << 20);
    put(&mut c, AER, &hdr(1, 2, ATS).to_le_bytes());
    put(&mut c, ATS, &hdr(0x0f, 1, PRI).to_le_bytes());
    put(&mut c, ATS + 4, &0x0020u16.to_le_bytes());
    put(&mut c, PRI, &hdr(0x13, 1, 0).to_le_bytes());
    put(&mut c, PRI + 4, &0x0001u16.to_le_bytes());
    put(&mut c, PRI + 6, &0x8000u16.to_le_bytes());
    put(&mut c, PRI + 8, &0x200u32.to_le_bytes());
    put(&mut c, PRI + 12, &0x200u32.to_le_bytes());
    c
}

fn region(size: u64, mmap: bool) -> Option<RegionInfo> {
    Some(RegionInfo {
        size,
        readable: true,
        writable: true,
        mmappable: mmap,
        sparse_areas: None,
    })
}

impl FakeVfio {
    pub fn new(config: Vec<u8>) -> Self {
        let mut regions = vec![
            region(0x4000, true),
            region(0, false),
            region(0x2000, true),
            region(0, false),
            region(0x100, false),
            region(0, false),
            region(0x10000, false),
            region(0x1000, false),
        ];
        if let Some(r) = &mut regions[6] {
            r.writable = false;
        }
        let memory = [0u32, 2, 4]
            .iter()
            .map(|&i| {
                let len = regions[i as usize].as_ref().map_or(0, |r| r.size) as usize;
                (i, (0..len).map(|b| b as u8).collect())
            })
            .collect();
        let irq = |count| IrqInfo { count, flags: 0 };
        FakeVfio {
            config: Mutex::new(config),
            regions,
            memory: Mutex::new(memory),
            calls: Mutex::new(Vec::new()),
            irqs: [irq(1), irq(8), irq(VECTORS as u32)],
            fail_mmap: Mutex::new(Vec::new()),
            fail_irqs: Mutex::new(false),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    pub fn irq_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::SetIrqs { .. } | Call::DisableIrq(_) | Call::UnmaskIntx
                )
            })
            .collect()
    }

    pub fn config_writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::ConfigWrite { offset, data } => Some((offset, data)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl VfioBackend for FakeVfio {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).cloned().flatten()
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if index == CONFIG_REGION {
            let c = self.config.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = c.get(offset as usize + i) {
                    *b = *v;
                }
            }
            return;
        }
        self.record(Call::RegionRead {
            index,
            offset,
            len: data.len(),
        });
        let m = self.memory.lock().unwrap();
        let Some(mem) = m.get(&index) else { return };
        let end = offset as usize + data.len();
        assert!(end <= mem.len(), "access past the end of region {index}");
        data.copy_from_slice(&mem[offset as usize..end]);
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        if index == CONFIG_REGION {
            let mut c = self.config.lock().unwrap();
            assert!(offset as usize + data.len() <= c.len());
            c[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            self.record(Call::ConfigWrite {
                offset,
                data: data.to_vec(),
            });
            return;
        }
        self.record(Call::RegionWrite {
            index,
            offset,
            data: data.to_vec(),
        });
        let mut m = self.memory.lock().unwrap();
        if let Some(mem) = m.get_mut(&index) {
            let end = offset as usize + data.len();
            assert!(end <= mem.len(), "access past the end of region {index}");
            mem[offset as usize..end].copy_from_slice(data);
        }
    }

    fn mmap_region(&self, index: u32, offset: u64, len: u64) -> io::Result<HostMmap> {
        self.record(Call::Mmap { index, offset, len });
        if self.fail_mmap.lock().unwrap().contains(&index) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        HostMmap::anonymous(len as usize)
    }

    fn irq_info(&self, kind: IrqKind) -> Option<IrqInfo> {
        Some(self.irqs[kind.vfio_index() as usize])
    }

    fn set_irq_eventfds(&self, kind: IrqKind, start: u32, fds: &[&EventFd]) -> io::Result<()> {
        self.record(Call::SetIrqs {
            kind,
            start,
            fds: fds.iter().map(|f| f.as_raw_fd()).collect(),
        });
        if *self.fail_irqs.lock().unwrap() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    fn disable_irq(&self, kind: IrqKind) -> io::Result<()> {
        self.record(Call::DisableIrq(kind));
        Ok(())
    }

    fn unmask_intx(&self) -> io::Result<()> {
        self.record(Call::UnmaskIntx);
        Ok(())
    }

    fn reset_device(&self) -> io::Result<()> {
        self.record(Call::Reset);
        Ok(())
    }
}

pub struct Rig {
    pub dev: VfioPciDevice,
    pub fake: Arc<FakeVfio>,
    pub router: Arc<RecordingRouter>,
    pub slots: Arc<RecordingSlots>,
}

pub const PASID_HOST: PasidHostInfo = PasidHostInfo {
    max_pasid_log2: 20,
    exec: false,
    privileged: false,
};

pub fn rig_with(config: Vec<u8>, pasid: Option<(PasidHostInfo, u8)>) -> Rig {
    rig_from(FakeVfio::new(config), pasid)
}

pub fn rig_from(fake: FakeVfio, pasid: Option<(PasidHostInfo, u8)>) -> Rig {
    let fake = Arc::new(fake);
    let router = Arc::new(RecordingRouter::default());
    let slots = Arc::new(RecordingSlots::default());
    let dev = VfioPciDevice::new(fake.clone(), 0x0010, router.clone(), slots.clone(), pasid)
        .expect("device");
    Rig {
        dev,
        fake,
        router,
        slots,
    }
}

pub fn rig() -> Rig {
    rig_with(nvme_config(), None)
}

impl Rig {
    pub fn cfg_read(&mut self, offset: usize, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        self.dev.read_config(offset, &mut b);
        let mut v = [0u8; 8];
        v[..len.min(8)].copy_from_slice(&b[..len.min(8)]);
        u64::from_le_bytes(v)
    }

    pub fn cfg_write(&mut self, offset: usize, len: usize, value: u64) {
        self.dev
            .write_config(offset, &value.to_le_bytes()[..len.min(8)]);
    }

    pub fn bar_write32(&mut self, index: usize, offset: u64, v: u32) {
        self.dev.write_bar(index, offset, &v.to_le_bytes());
    }

    pub fn bar_read(&mut self, index: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.dev.read_bar(index, offset, &mut b);
        b
    }
}
