//! A deterministic fuzz driver for PCI config space: the root complex with
//! its host bridge, a virtio-blk function and a passthrough (VFIO)
//! function whose device is a recorded config space (an NVMe-like function
//! with PM, MSI, PCIe, MSI-X, AER, ATS and PRI, and a synthesized PASID
//! capability), reached through ECAM, the 0xcf8/0xcfc ports and directly,
//! with reads and writes of every size at every offset, BAR accesses
//! (MSI-X tables, virtio registers) and a device that changes its own
//! config space underneath.
//!
//! Properties: nothing panics; nothing out of a region's bounds reaches
//! the VFIO backend (the fake checks, as the kernel would refuse); the
//! identity of every function (vendor and device ID) and the single
//! function header type of the passthrough function stay what they were.
//!
//! Used by `cargo fuzz` (`fuzz/fuzz_targets/pci_config.rs`) and the smoke
//! test `devices/tests/fuzz_smoke_devices.rs`.

use std::io;
use std::sync::{Arc, Mutex};

use viommu::pasid_cap::PasidHostInfo;
use viommu::DmaSpace;
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{DeviceMmio, DevicePio};
use vmm_sys_util::eventfd::EventFd;

use super::{memfd, Input, PooledMemory};
use crate::interrupt::test_utils::{RecordingIoEvents, RecordingRouter};
use crate::memory_slots::test_utils::RecordingSlots;
use crate::pci::root::{PciConfigIo, PciMmio};
use crate::pci::{Bdf, PciDevice, PciRoot};
use crate::vfio::{
    HostMmap, IrqInfo, IrqKind, RegionInfo, VfioBackend, VfioPciDevice, CONFIG_REGION,
};
use crate::virtio::block::{Block, Disk};
use crate::virtio::pci::VirtioPciDevice;
use crate::virtio::VirtioDevice;

/// Operations per input at most.
pub const MAX_OPS: usize = 512;

const ECAM: u64 = 0xe000_0000;
const VIRTIO: Bdf = Bdf(1 << 3);
const VFIO: Bdf = Bdf(2 << 3);
/// Where firmware put the BARs.
const VIRTIO_BAR: u64 = 0x1_0000_0000;
const VFIO_BAR0: u64 = 0x1_0001_0000;
const VFIO_BAR2: u64 = 0x8000_0000;

const MSI: usize = 0x50;
const PCIE: usize = 0x70;
const MSIX: usize = 0xb0;
const AER: usize = 0x100;
const ATS: usize = 0x148;
const PRI: usize = 0x150;
const VECTORS: u16 = 8;

fn put(c: &mut [u8], off: usize, bytes: &[u8]) {
    c[off..off + bytes.len()].copy_from_slice(bytes);
}

/// The config space of the recorded device, as vfio-pci presents it.
fn recorded_config() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    put(&mut c, 0x00, &0x8086u16.to_le_bytes());
    put(&mut c, 0x02, &0x0a54u16.to_le_bytes());
    put(&mut c, 0x04, &0x0406u16.to_le_bytes());
    put(&mut c, 0x06, &0x0010u16.to_le_bytes());
    put(&mut c, 0x08, &[0x01, 0x02, 0x08, 0x01]);
    c[0x0e] = 0x80;
    put(&mut c, 0x10, &0xfeb0_0004u32.to_le_bytes());
    put(&mut c, 0x18, &0xfe00_0008u32.to_le_bytes());
    put(&mut c, 0x20, &0x0000_e001u32.to_le_bytes());
    put(&mut c, 0x30, &0xfea0_0001u32.to_le_bytes());
    c[0x34] = 0x40;
    c[0x3c] = 0x0b;
    c[0x3d] = 0x01;
    put(&mut c, 0x40, &[0x01, MSI as u8, 0x03, 0x00]);
    put(&mut c, MSI, &[0x05, PCIE as u8]);
    put(&mut c, MSI + 2, &(0x0186u16 | 0x0021).to_le_bytes());
    put(&mut c, MSI + 4, &0xfee0_1000u32.to_le_bytes());
    put(&mut c, PCIE, &[0x10, MSIX as u8, 0x02, 0x00]);
    put(&mut c, PCIE + 0x0c, &0x0000_0443u32.to_le_bytes());
    put(&mut c, PCIE + 0x12, &0x1043u16.to_le_bytes());
    put(&mut c, PCIE + 0x24, &(1u32 << 21).to_le_bytes());
    put(&mut c, MSIX, &[0x11, 0x00]);
    put(&mut c, MSIX + 2, &((VECTORS - 1) | 0x8000).to_le_bytes());
    put(&mut c, MSIX + 4, &0x2000u32.to_le_bytes());
    put(&mut c, MSIX + 8, &0x3000u32.to_le_bytes());
    let hdr = |id: u32, ver: u32, next: usize| id | (ver << 16) | ((next as u32) << 20);
    put(&mut c, AER, &hdr(1, 2, ATS).to_le_bytes());
    put(&mut c, ATS, &hdr(0x0f, 1, PRI).to_le_bytes());
    put(&mut c, ATS + 4, &0x0020u16.to_le_bytes());
    put(&mut c, PRI, &hdr(0x13, 1, 0).to_le_bytes());
    put(&mut c, PRI + 4, &0x0001u16.to_le_bytes());
    put(&mut c, PRI + 8, &0x200u32.to_le_bytes());
    put(&mut c, PRI + 12, &0x200u32.to_le_bytes());
    c
}

/// A VFIO device over the recorded config space: BAR0 (16 KiB, MSI-X
/// table and PBA, mmap-able), BAR2 (8 KiB), BAR4 (I/O), a ROM. Panics on
/// any access the kernel would refuse.
struct RecordedVfio {
    config: Mutex<Vec<u8>>,
    regions: Vec<Option<RegionInfo>>,
    memory: Mutex<Vec<Vec<u8>>>,
}

impl RecordedVfio {
    fn new() -> Self {
        let region = |size: u64, mmappable: bool| {
            Some(RegionInfo {
                size,
                readable: true,
                writable: true,
                mmappable,
                sparse_areas: None,
            })
        };
        let regions = vec![
            region(0x4000, true),
            None,
            region(0x2000, false),
            None,
            region(0x100, false),
            None,
            region(0x1_0000, false),
            region(0x1000, false),
        ];
        let memory = regions
            .iter()
            .map(|r| vec![0u8; r.as_ref().map_or(0, |r| r.size) as usize])
            .collect();
        RecordedVfio {
            config: Mutex::new(recorded_config()),
            regions,
            memory: Mutex::new(memory),
        }
    }

    fn access(&self, index: u32, offset: u64, len: usize) -> std::ops::Range<usize> {
        let size = self
            .regions
            .get(index as usize)
            .cloned()
            .flatten()
            .map_or(0, |r| r.size);
        let end = offset.checked_add(len as u64).expect("offset wraps");
        assert!(
            end <= size,
            "access {offset:#x}+{len} past the end of region {index}"
        );
        offset as usize..end as usize
    }
}

impl VfioBackend for RecordedVfio {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).cloned().flatten()
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        let r = self.access(index, offset, data.len());
        if index == CONFIG_REGION {
            data.copy_from_slice(&self.config.lock().unwrap_or_else(|e| e.into_inner())[r]);
        } else {
            data.copy_from_slice(
                &self.memory.lock().unwrap_or_else(|e| e.into_inner())[index as usize][r],
            );
        }
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        let r = self.access(index, offset, data.len());
        if index == CONFIG_REGION {
            let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
            // The IDs are read-only in hardware.
            for (at, b) in r.zip(data) {
                if at >= 4 {
                    c[at] = *b;
                }
            }
        } else {
            self.memory.lock().unwrap_or_else(|e| e.into_inner())[index as usize][r]
                .copy_from_slice(data);
        }
    }
    fn mmap_region(&self, index: u32, offset: u64, len: u64) -> io::Result<HostMmap> {
        let r = self.access(index, offset, len as usize);
        HostMmap::anonymous(r.len())
    }
    fn irq_info(&self, kind: IrqKind) -> Option<IrqInfo> {
        let count = match kind {
            IrqKind::Intx => 1,
            IrqKind::Msi => 8,
            IrqKind::Msix => u32::from(VECTORS),
        };
        Some(IrqInfo { count, flags: 0 })
    }
    fn set_irq_eventfds(&self, kind: IrqKind, start: u32, fds: &[&EventFd]) -> io::Result<()> {
        let count = self.irq_info(kind).map_or(0, |i| i.count);
        assert!(
            u64::from(start) + fds.len() as u64 <= u64::from(count),
            "{kind:?} vectors {start}+{} of {count}",
            fds.len()
        );
        Ok(())
    }
    fn disable_irq(&self, _kind: IrqKind) -> io::Result<()> {
        Ok(())
    }
    fn unmask_intx(&self) -> io::Result<()> {
        Ok(())
    }
    fn reset_device(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs one input. Never panics unless a config space model has a bug.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let setup = inp.u8();
    let Some(ram) = PooledMemory::new(0x10_0000) else {
        return;
    };
    let Ok(file) = memfd(64 * 512) else { return };
    let Ok(block) = Block::new(Disk::new(file, setup & 1 != 0, 64 * 512)) else {
        return;
    };
    let block: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let dma = DmaSpace::identity(VIRTIO.0);
    let Ok(mut virtio) = VirtioPciDevice::new(
        block,
        dma,
        setup & 2 != 0,
        (*ram).clone(),
        Arc::new(RecordingRouter::default()),
        Arc::new(RecordingIoEvents::default()),
    ) else {
        return;
    };
    virtio.set_bar_address(0, VIRTIO_BAR);
    let backend = Arc::new(RecordedVfio::new());
    let pasid = (setup & 4 != 0).then_some((
        PasidHostInfo {
            max_pasid_log2: 20,
            exec: setup & 8 != 0,
            privileged: false,
        },
        setup >> 4,
    ));
    let mut vfio = VfioPciDevice::new(
        backend.clone(),
        VFIO.0,
        Arc::new(RecordingRouter::default()),
        Arc::new(RecordingSlots::default()),
        pasid,
    )
    .expect("the recorded device is accepted");
    vfio.set_bar_address(0, VFIO_BAR0);
    vfio.set_bar_address(2, VFIO_BAR2);
    let mut root = PciRoot::new(ECAM);
    root.add_device(VIRTIO, Arc::new(Mutex::new(virtio)));
    root.add_device(VFIO, Arc::new(Mutex::new(vfio)));
    let root = Arc::new(root);
    let mmio = PciMmio(root.clone());
    let pio = PciConfigIo(root.clone());

    let ids: Vec<[u8; 4]> = [Bdf(0), VIRTIO, VFIO]
        .iter()
        .map(|&b| {
            let mut id = [0u8; 4];
            root.config_read(b, 0, &mut id);
            id
        })
        .collect();
    let mut ops = 0;
    while !inp.done() && ops < MAX_OPS {
        ops += 1;
        step(&mut inp, &root, &mmio, &pio, &backend);
        if ops % 16 == 0 {
            check(&root, &ids);
        }
    }
    check(&root, &ids);
}

fn check(root: &PciRoot, ids: &[[u8; 4]]) {
    for (b, id) in [Bdf(0), VIRTIO, VFIO].iter().zip(ids) {
        let mut now = [0u8; 4];
        root.config_read(*b, 0, &mut now);
        assert_eq!(&now, id, "{b}: identity changed");
    }
    let mut ht = [0u8];
    root.config_read(VFIO, 0x0e, &mut ht);
    assert_eq!(ht[0] & 0x80, 0, "passthrough function is single-function");
}

/// A config offset: in the header or a capability, anywhere in the 4 KiB,
/// or past it.
fn offset(inp: &mut Input) -> usize {
    const HOT: [usize; 12] = [
        0x04, 0x10, 0x30, 0x3c, 0x40, MSI, PCIE, MSIX, AER, ATS, PRI, 0x180,
    ];
    match inp.u8() % 8 {
        0..=3 => HOT[inp.u8() as usize % HOT.len()] + usize::from(inp.u8() % 24),
        4..=6 => usize::from(inp.u16() % 0x1010),
        _ => inp.u64() as usize,
    }
}

fn size(inp: &mut Input) -> usize {
    [1, 2, 4, 4, 8, 0, 3, 16][inp.u8() as usize % 8]
}

fn bdf(inp: &mut Input) -> Bdf {
    match inp.u8() % 8 {
        0 => Bdf(0),
        1..=3 => VIRTIO,
        4..=6 => VFIO,
        _ => Bdf(inp.u16()),
    }
}

fn step(
    inp: &mut Input,
    root: &PciRoot,
    mmio: &PciMmio,
    pio: &PciConfigIo,
    backend: &RecordedVfio,
) {
    match inp.u8() % 12 {
        0..=2 => {
            let (b, off, n) = (bdf(inp), offset(inp), size(inp));
            let data = inp.vec(n);
            root.config_write(b, off, &data);
        }
        3 | 4 => {
            let (b, off, n) = (bdf(inp), offset(inp), size(inp));
            let mut data = vec![0u8; n];
            root.config_read(b, off, &mut data);
        }
        // Through ECAM: the whole 256 MiB window and past it.
        5 => {
            let (b, off, n) = (bdf(inp), offset(inp), size(inp));
            let at = u64::from(b.0) << 12 | (off as u64 & 0xfff) | u64::from(inp.u8() & 1) << 28;
            if inp.u8() & 1 == 0 {
                let data = inp.vec(n);
                mmio.mmio_write(MmioAddress(ECAM), at, &data);
            } else {
                let mut data = vec![0u8; n];
                mmio.mmio_read(MmioAddress(ECAM), at, &mut data);
            }
        }
        // Through 0xcf8/0xcfc, any port offset.
        6 => {
            let port = u16::from(inp.u8() % 9);
            let n = size(inp);
            if inp.u8() & 1 == 0 {
                let data = if port < 4 && inp.u8() & 1 == 0 {
                    let (b, off) = (bdf(inp), offset(inp) as u32);
                    (1u32 << 31 | u32::from(b.0) << 8 | (off & 0xfc) | (off & 0xf00) << 16)
                        .to_le_bytes()[..n.min(4)]
                        .to_vec()
                } else {
                    inp.vec(n)
                };
                pio.pio_write(PioAddress(0xcf8), port, &data);
            } else {
                let mut data = vec![0u8; n];
                pio.pio_read(PioAddress(0xcf8), port, &mut data);
            }
        }
        // BARs: the virtio registers, the MSI-X table and PBA, BAR2.
        7 | 8 => {
            let base = [VIRTIO_BAR, VFIO_BAR0, VFIO_BAR2][inp.u8() as usize % 3];
            let off = match inp.u8() % 4 {
                0 => u64::from(inp.u8() % 8) << 12 | u64::from(inp.u8()),
                1 => 0x2000 + u64::from(inp.u8()),
                _ => u64::from(inp.u16()),
            };
            let n = size(inp);
            if inp.u8() & 1 == 0 {
                let data = inp.vec(n);
                root.mmio_write(base + off, &data);
            } else {
                let mut data = vec![0u8; n];
                root.mmio_read(base + off, &mut data);
            }
        }
        // The device changes its own config space (a hostile or buggy
        // device, or one reset behind our back).
        9 => {
            let off = match inp.u8() % 2 {
                0 => [MSI + 2, MSIX + 2, PCIE + 2, 0x34, ATS + 4, PRI + 4][inp.u8() as usize % 6],
                _ => 4 + usize::from(inp.u16() % 0xffc),
            };
            let n = usize::from(inp.u8() % 4) + 1;
            let data = inp.vec(n);
            let mut c = backend.config.lock().unwrap_or_else(|e| e.into_inner());
            let end = (off + data.len()).min(c.len());
            let n = end - off;
            c[off..end].copy_from_slice(&data[..n]);
        }
        // A whole-space read or write, as a dump does.
        _ => {
            let b = bdf(inp);
            let mut all = vec![0u8; 4096 + usize::from(inp.u8())];
            if inp.u8() & 1 == 0 {
                root.config_read(b, 0, &mut all);
            } else {
                all.fill(inp.u8());
                root.config_write(b, usize::from(inp.u8()), &all);
            }
        }
    }
}
