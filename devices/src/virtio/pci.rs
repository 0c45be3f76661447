//! Virtio over PCI, modern interface (virtio 1.2 §4.1).
//!
//! BAR 0 (64-bit) holds every structure the capabilities point at:
//!
//! ```text
//! 0x0000 common configuration     0x3000 notifications (4 bytes per queue)
//! 0x1000 ISR status               0x4000 MSI-X table
//! 0x2000 device configuration     0x5000 MSI-X pending bits
//! ```
//!
//! Queue notifications are KVM ioeventfds once the driver is running, so a
//! kick reaches the device's event loop without a trip through this code.
//!
//! Function Level Reset (PCIe 6.0 §6.6.2) is the driver's reset (device
//! status 0: ioeventfds removed, the device stopped under its lock, queues,
//! features, vectors and ISR cleared) plus config generation, the MSI-X
//! table (every vector masked, KVM routes withdrawn) and config space back
//! to power-on. The backing disk is not touched.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::device::{validate_queues, SharedConfig, VirtioDevice, VirtioInterrupt};
use super::{features, status};
use crate::interrupt::{IoEventRegistry, MsiRouter};
use crate::pci::caps::{add_dsn, add_msix, add_pcie_rciep, Flr, CAP_ID_VENDOR};
use crate::pci::config::{Bar, BarKind, ConfigError, ConfigSpace};
use crate::pci::msix::Msix;
use crate::pci::PciDevice;
use crate::{guest_warn, host_log};
use viommu::{DmaSpace, GuestMemoryMmap};

const BAR_INDEX: usize = 0;
const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x40;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;

/// Virtio PCI capability types (virtio 1.2 §4.1.4).
const CFG_TYPE_COMMON: u8 = 1;
const CFG_TYPE_NOTIFY: u8 = 2;
const CFG_TYPE_ISR: u8 = 3;
const CFG_TYPE_DEVICE: u8 = 4;
const CFG_TYPE_PCI: u8 = 5;

const NO_VECTOR: u16 = 0xffff;
const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

/// Routes a device's interrupts to MSI-X vectors chosen by the driver.
struct MsixInterrupt {
    msix: Arc<Mutex<Msix>>,
    queue_vectors: Arc<Mutex<Vec<u16>>>,
    config_vector: Arc<AtomicU16>,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
}

impl MsixInterrupt {
    fn fire(&self, vector: u16, isr_bit: u8) {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != NO_VECTOR {
            if let Ok(mut m) = self.msix.lock() {
                m.trigger(vector);
            }
        }
    }
}

impl VirtioInterrupt for MsixInterrupt {
    fn signal_queue(&self, queue: u16) {
        let v = self
            .queue_vectors
            .lock()
            .ok()
            .and_then(|v| v.get(queue as usize).copied())
            .unwrap_or(NO_VECTOR);
        self.fire(v, 1);
    }
    fn signal_config(&self) {
        self.fire(self.config_vector.load(Ordering::SeqCst), 2);
    }
    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    flr: Flr,
    msix_cap: usize,
    pci_cfg_cap: usize,
    msix: Arc<Mutex<Msix>>,
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// The device's config space when it can be reached without the
    /// device's lock (held while it does I/O).
    shared_config: Option<Arc<dyn SharedConfig>>,
    device_features: u64,
    device_feature_select: u32,
    driver_features: u64,
    driver_feature_select: u32,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    queue_vectors: Arc<Mutex<Vec<u16>>>,
    config_vector: Arc<AtomicU16>,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
    queue_events: Vec<EventFd>,
    ioevents: Arc<dyn IoEventRegistry>,
    registered_notify: Vec<(usize, u64)>,
    ram: GuestMemoryMmap,
    dma: DmaSpace,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("config space: {0}")]
    Config(#[from] ConfigError),
    #[error("MSI-X vectors: {0}")]
    Msix(#[from] std::io::Error),
    #[error("queue: {0}")]
    Queue(#[from] virtio_queue::Error),
}

impl VirtioPciDevice {
    /// `dma` is the device's DMA space; when it is translated by an IOMMU the
    /// device offers VIRTIO_F_ACCESS_PLATFORM so the driver uses the DMA API.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        dma: DmaSpace,
        access_platform: bool,
        ram: GuestMemoryMmap,
        router: Arc<dyn MsiRouter>,
        ioevents: Arc<dyn IoEventRegistry>,
    ) -> Result<Self, VirtioPciError> {
        let (dev_type, max_sizes, dev_features, queue_events, shared_config) = {
            let d = device
                .lock()
                .map_err(|_| std::io::Error::other("virtio device lock poisoned"))?;
            (
                d.device_type(),
                d.queue_max_sizes(),
                d.device_features(),
                d.queue_events(),
                d.shared_config(),
            )
        };
        let num_queues = max_sizes.len();
        let vectors = num_queues as u16 + 1;
        let msix = Msix::new(vectors, dma.requester_id(), router)?;

        // Class: mass storage / other for block, otherwise "other".
        let class = if dev_type == 2 {
            0x01_80_00
        } else {
            0xff_00_00
        };
        let mut config = ConfigSpace::new(
            VIRTIO_PCI_VENDOR,
            VIRTIO_PCI_DEVICE_BASE + dev_type as u16,
            class,
            1,
        );
        config.set_subsystem(VIRTIO_PCI_VENDOR, 0x40);
        config.add_bar(
            BAR_INDEX,
            Bar {
                kind: BarKind::Mem64,
                size: BAR_SIZE,
                prefetchable: false,
            },
        )?;
        let vcap = |cfg_type: u8, offset: u64, length: u64, extra: &[u8]| {
            let cap_len = 16 + extra.len() as u8;
            let mut body = vec![cap_len, cfg_type, BAR_INDEX as u8, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(length as u32).to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        config.add_capability(
            CAP_ID_VENDOR,
            &vcap(CFG_TYPE_COMMON, COMMON_OFFSET, COMMON_SIZE, &[]),
            &[],
        )?;
        config.add_capability(
            CAP_ID_VENDOR,
            &vcap(
                CFG_TYPE_NOTIFY,
                NOTIFY_OFFSET,
                num_queues as u64 * NOTIFY_MULTIPLIER as u64,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        config.add_capability(CAP_ID_VENDOR, &vcap(CFG_TYPE_ISR, ISR_OFFSET, 1, &[]), &[])?;
        config.add_capability(
            CAP_ID_VENDOR,
            &vcap(CFG_TYPE_DEVICE, DEVICE_OFFSET, DEVICE_SIZE, &[]),
            &[],
        )?;
        // The PCI configuration access capability: bar, offset, length and
        // the data window are the driver's to write (virtio 1.2 §4.1.4.9).
        let mut pci_cfg_mask = vec![0u8; 18];
        pci_cfg_mask[2] = 0xff;
        pci_cfg_mask[6..18].fill(0xff);
        let pci_cfg_cap = config.add_capability(
            CAP_ID_VENDOR,
            &vcap(CFG_TYPE_PCI, 0, 0, &[0; 4]),
            &pci_cfg_mask,
        )?;
        let pcie_cap = add_pcie_rciep(&mut config)?;
        let msix_cap = add_msix(
            &mut config,
            vectors,
            BAR_INDEX as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        )?;
        add_dsn(
            &mut config,
            0x5649_5254_0000_0000 | dma.requester_id() as u64,
        )?;

        let mut queues = Vec::with_capacity(num_queues);
        for &max in &max_sizes {
            queues.push(Queue::new(max)?);
        }
        let mut device_features = dev_features | features::VERSION_1 | features::RING_EVENT_IDX;
        if access_platform {
            device_features |= features::ACCESS_PLATFORM;
        }
        Ok(VirtioPciDevice {
            flr: Flr::new(&config, pcie_cap),
            config,
            msix_cap,
            pci_cfg_cap,
            msix: Arc::new(Mutex::new(msix)),
            device,
            shared_config,
            device_features,
            device_feature_select: 0,
            driver_features: 0,
            driver_feature_select: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            queue_vectors: Arc::new(Mutex::new(vec![NO_VECTOR; num_queues])),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            isr: Arc::new(AtomicU8::new(0)),
            needs_reset: Arc::new(AtomicBool::new(false)),
            queue_events,
            ioevents,
            registered_notify: Vec::new(),
            ram,
            dma,
        })
    }

    fn bar_base(&self) -> Option<u64> {
        self.config.bar_address(BAR_INDEX)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let q = self.queue_select as usize;
        let qv = |s: &Self| s.queue_vectors.lock().ok().and_then(|v| v.get(q).copied());
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select as u64,
            (0x04, 4) => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            (0x08, 4) => self.driver_feature_select as u64,
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => self.config_vector.load(Ordering::SeqCst) as u64,
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => {
                let mut s = self.status;
                if self.needs_reset.load(Ordering::SeqCst) {
                    s |= status::DEVICE_NEEDS_RESET;
                }
                s as u64
            }
            (0x15, 1) => self.config_generation as u64,
            (0x16, 2) => self.queue_select as u64,
            (0x18, 2) => self.queues.get(q).map_or(0, |x| x.size() as u64),
            (0x1a, 2) => qv(self).unwrap_or(NO_VECTOR) as u64,
            (0x1c, 2) => self.queues.get(q).map_or(0, |x| x.ready() as u64),
            (0x1e, 2) if q < self.queues.len() => q as u64,
            (0x20, 4) => self
                .queues
                .get(q)
                .map_or(0, |x| x.desc_table() & 0xffff_ffff),
            (0x24, 4) => self.queues.get(q).map_or(0, |x| x.desc_table() >> 32),
            (0x28, 4) => self
                .queues
                .get(q)
                .map_or(0, |x| x.avail_ring() & 0xffff_ffff),
            (0x2c, 4) => self.queues.get(q).map_or(0, |x| x.avail_ring() >> 32),
            (0x30, 4) => self
                .queues
                .get(q)
                .map_or(0, |x| x.used_ring() & 0xffff_ffff),
            (0x34, 4) => self.queues.get(q).map_or(0, |x| x.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        // Queue configuration is frozen once the driver is running.
        let running = self.status & status::DRIVER_OK != 0;
        let q = self.queue_select as usize;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | ((v & 0xffff_ffff) << 32)
                    }
                    _ => {}
                }
            }
            (0x10, 2) => self.config_vector.store(v as u16, Ordering::SeqCst),
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) if !running => {
                if let Some(queue) = self.selected_queue() {
                    // An invalid size is refused; the queue keeps the last
                    // valid one (virtio-queue's set_size would log an error
                    // for each such write).
                    if queue.try_set_size(v as u16).is_err() {
                        guest_warn!("virtio: queue {q}: invalid size {v}");
                    }
                }
            }
            (0x1a, 2) => {
                if let Ok(mut qv) = self.queue_vectors.lock() {
                    if let Some(slot) = qv.get_mut(q) {
                        *slot = v as u16;
                    }
                }
            }
            (0x1c, 2) if !running => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(v == 1);
                }
            }
            (0x20..=0x37, 4) if !running => {
                let Some(queue) = self.selected_queue() else {
                    return;
                };
                let (lo, hi) = if offset.is_multiple_of(8) {
                    (Some(v as u32), None)
                } else {
                    (None, Some(v as u32))
                };
                // One half of a 64-bit address; a misaligned result is
                // refused and the old address kept.
                let merge = |old: u64| {
                    let lo = lo.map_or(old & 0xffff_ffff, u64::from);
                    let hi = hi.map_or(old >> 32, u64::from);
                    GuestAddress((hi << 32) | lo)
                };
                let result = match offset & !7 {
                    0x20 => queue.try_set_desc_table_address(merge(queue.desc_table())),
                    0x28 => queue.try_set_avail_ring_address(merge(queue.avail_ring())),
                    _ => queue.try_set_used_ring_address(merge(queue.used_ring())),
                };
                if let Err(e) = result {
                    guest_warn!("virtio: queue {q}: ring address refused: {e}");
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = new;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // The driver may only accept what we offer, and must accept VERSION_1.
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = self.dma.clone().into_memory(self.ram.clone());
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        for q in &mut self.queues {
            q.set_event_idx(event_idx);
        }
        let interrupt = Arc::new(MsixInterrupt {
            msix: self.msix.clone(),
            queue_vectors: self.queue_vectors.clone(),
            config_vector: self.config_vector.clone(),
            isr: self.isr.clone(),
            needs_reset: self.needs_reset.clone(),
        });
        let result = validate_queues(&self.queues, &mem).and_then(|()| {
            // The device gets its own copy of each queue's state; the
            // transport keeps the configuration the driver reads back.
            let queues = self
                .queues
                .iter()
                .map(|q| Queue::try_from(q.state()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| super::device::ActivateError::QueueCount(self.queues.len()))?;
            let mut dev = self
                .device
                .lock()
                .map_err(|_| super::device::ActivateError::QueueCount(0))?;
            dev.activate(mem, self.driver_features, queues, interrupt.clone())
        });
        match result {
            Ok(()) => self.register_notify(),
            Err(e) => {
                guest_warn!("virtio device {:#06x}: {e}", self.dma.requester_id());
                interrupt.set_needs_reset();
            }
        }
    }

    fn register_notify(&mut self) {
        let Some(base) = self.bar_base() else { return };
        for (i, fd) in self.queue_events.iter().enumerate() {
            let addr = base + NOTIFY_OFFSET + i as u64 * NOTIFY_MULTIPLIER as u64;
            match self.ioevents.register_mmio(fd, addr) {
                Ok(()) => self.registered_notify.push((i, addr)),
                Err(e) => host_log!(
                    log::Level::Warn,
                    "virtio device {:#06x}: queue {i} notification stays trapped: {e}",
                    self.dma.requester_id()
                ),
            }
        }
    }

    fn reset(&mut self) {
        for (i, addr) in self.registered_notify.drain(..) {
            if let Some(fd) = self.queue_events.get(i) {
                let _ = self.ioevents.unregister_mmio(fd, addr);
            }
        }
        if let Ok(mut d) = self.device.lock() {
            d.reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        if let Ok(mut qv) = self.queue_vectors.lock() {
            qv.iter_mut().for_each(|v| *v = NO_VECTOR);
        }
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.read_common(o - COMMON_OFFSET, data),
            ISR_OFFSET => {
                // Reading the ISR clears it (virtio 1.2 §4.1.4.5).
                if let Some(b) = data.first_mut() {
                    *b = self.isr.swap(0, Ordering::SeqCst);
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                match &self.shared_config {
                    Some(c) => c.read(o - DEVICE_OFFSET, data),
                    None => {
                        if let Ok(d) = self.device.lock() {
                            d.read_config(o - DEVICE_OFFSET, data);
                        }
                    }
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                if let Ok(m) = self.msix.lock() {
                    m.read_table(o - MSIX_TABLE_OFFSET, data);
                }
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                if let Ok(m) = self.msix.lock() {
                    m.read_pba(o - MSIX_PBA_OFFSET, data);
                }
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.write_common(o - COMMON_OFFSET, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                match &self.shared_config {
                    Some(c) => c.write(o - DEVICE_OFFSET, data),
                    None => {
                        if let Ok(mut d) = self.device.lock() {
                            d.write_config(o - DEVICE_OFFSET, data);
                        }
                    }
                }
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // A trapped notification (no ioeventfd): kick the queue by hand.
                let q = ((o - NOTIFY_OFFSET) / NOTIFY_MULTIPLIER as u64) as usize;
                if self.status & status::DRIVER_OK != 0 {
                    if let Some(fd) = self.queue_events.get(q) {
                        let _ = fd.write(1);
                    }
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                if let Ok(mut m) = self.msix.lock() {
                    m.write_table(o - MSIX_TABLE_OFFSET, data);
                }
            }
            _ => {}
        }
    }

    /// The BAR access window of the PCI configuration access capability.
    fn pci_cfg_window(&self) -> (usize, u64, usize) {
        let c = self.pci_cfg_cap;
        let bar = self.config.read_u8(c + 4) as usize;
        let offset = self.config.read_u32(c + 8) as u64;
        let len = self.config.read_u32(c + 12) as usize;
        (bar, offset, len)
    }

    fn overlaps(offset: usize, len: usize, start: usize, size: usize) -> bool {
        offset < start + size && start < offset + len
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        let data_off = self.pci_cfg_cap + 16;
        if offset == data_off && matches!(data.len(), 1 | 2 | 4) {
            let (bar, off, len) = self.pci_cfg_window();
            if bar == BAR_INDEX && len == data.len() {
                self.bar_read(off, data);
                return;
            }
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let data_off = self.pci_cfg_cap + 16;
        if offset == data_off && matches!(data.len(), 1 | 2 | 4) {
            let (bar, off, len) = self.pci_cfg_window();
            if bar == BAR_INDEX && len == data.len() {
                self.bar_write(off, data);
            }
            return;
        }
        self.config.write(offset, data);
        if self.flr.initiated_by(offset, data) {
            self.function_level_reset();
            return;
        }
        if Self::overlaps(offset, data.len(), self.msix_cap + 2, 2) {
            let control = self.config.read_u16(self.msix_cap + 2);
            if let Ok(mut m) = self.msix.lock() {
                m.set_control(control);
            }
        }
    }

    /// The driver's reset first: it unregisters the ioeventfds (at the
    /// addresses they were registered at, whatever the BAR says now) and
    /// stops the device under its lock, so a pass the event loop is making
    /// over the queue (bounded, see the block device) completes before
    /// the queues and the memory they use are dropped. The stopped device
    /// keeps no interrupt handle, so nothing signals MSI-X after that; its
    /// reset then masks every vector, withdraws the KVM routes and clears
    /// what the last pass left pending. Lock order is as for status 0: the
    /// device's lock is released before the MSI-X lock is taken (the event
    /// loop takes them in that order too).
    fn function_level_reset(&mut self) {
        self.reset();
        self.config_generation = 0;
        if let Ok(mut m) = self.msix.lock() {
            m.reset();
        }
        self.flr.reset_config(&mut self.config);
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.config
            .bar(BAR_INDEX)
            .map(|b| (BAR_INDEX, b))
            .into_iter()
            .collect()
    }

    fn set_bar_address(&mut self, index: usize, addr: u64) {
        self.config.set_bar_address(index, addr);
    }

    fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
        self.config.bar_containing(addr)
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        if index == BAR_INDEX {
            self.bar_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index == BAR_INDEX {
            self.bar_write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests;
