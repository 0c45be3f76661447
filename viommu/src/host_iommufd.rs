//! [`HostIommu`] over iommufd: the bypass and shadow paths of a passthrough
//! device.
//!
//! Every passthrough device is bound to one iommufd. Guest RAM is mapped
//! once into a shared IOAS at IOVA = GPA (the bypass path). Each device
//! also gets its own shadow IOAS, which the model fills with the guest's
//! second-stage mappings as the guest invalidates them (IOVA → the host
//! address of the guest-physical page). Which of the two the device is
//! attached to is the model's choice.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use iommufd_ioctls::IommufdIoas;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::host::{
    HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping, HostPerm,
};
use crate::iommufd::{IoPerm, Iommufd, IommufdError};
use crate::GuestMemoryMmap;

fn host_err(op: &'static str) -> impl Fn(IommufdError) -> HostIommuError {
    move |e| HostIommuError::Host {
        op,
        reason: e.to_string(),
    }
}

/// The host address of `[gpa, gpa + len)`, which must lie in one RAM region.
fn host_address(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Option<u64> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let offset = gpa - region.start_addr().0;
    if len == 0 || offset.checked_add(len)? > region.len() {
        return None;
    }
    region
        .get_host_address(MemoryRegionAddress(offset))
        .ok()
        .map(|p| p as u64)
}

/// The IOAS that maps all guest RAM at IOVA = GPA, shared by every
/// passthrough device on the bypass path.
pub struct GuestRamIoas {
    iommufd: Arc<Iommufd>,
    /// Destroyed when the last holder (this, or a device's VFIO binding)
    /// drops it.
    ioas: Arc<IommufdIoas>,
}

impl GuestRamIoas {
    /// Allocates the IOAS and maps every RAM region of `mem` into it.
    ///
    /// `mem` must stay mapped as long as the IOAS exists (the VM owns both).
    pub fn new(iommufd: Arc<Iommufd>, mem: &GuestMemoryMmap) -> Result<Self, IommufdError> {
        let ioas = IommufdIoas::new(iommufd.raw().clone())
            .map_err(IommufdError::from_crate("IOMMU_IOAS_ALLOC"))?;
        let id = ioas.id();
        for region in mem.iter() {
            let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
                continue;
            };
            // SAFETY: the region is guest RAM that stays mapped for the
            // VM's lifetime, which outlives the IOAS (destroyed on drop
            // or when the process exits).
            unsafe {
                iommufd.ioas_map(
                    id,
                    region.start_addr().0,
                    host as u64,
                    region.len(),
                    IoPerm {
                        read: true,
                        write: true,
                    },
                )?;
            }
        }
        Ok(GuestRamIoas {
            iommufd,
            ioas: Arc::new(ioas),
        })
    }

    pub fn id(&self) -> u32 {
        self.ioas.id()
    }

    /// The IOAS as vfio-ioctls takes it (to bind and attach devices).
    pub fn raw_ioas(&self) -> Arc<IommufdIoas> {
        self.ioas.clone()
    }

    pub fn iommufd(&self) -> &Arc<Iommufd> {
        &self.iommufd
    }
}

/// Attaches the device to an iommufd page table (IOAS or HWPT); attaching
/// again replaces the previous attachment.
pub trait DeviceAttach: Send + Sync {
    fn attach(&self, pt_id: u32) -> Result<(), String>;
}

/// What the host side did, for `--counters` and the benchmarks.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub map_ioctls: AtomicU64,
    pub unmap_ioctls: AtomicU64,
    pub attach_ioctls: AtomicU64,
    pub mapped_bytes: AtomicU64,
    pub unmapped_bytes: AtomicU64,
    /// Bytes mapped in the shadow IOAS right now.
    pub live_bytes: AtomicU64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: AtomicU64,
}

impl HostCounters {
    pub fn summary(&self) -> String {
        format!(
            "map_ioctls={} unmap_ioctls={} attach_ioctls={} mapped_bytes={} unmapped_bytes={} \
             live_bytes={} peak_live_bytes={}",
            self.map_ioctls.load(Relaxed),
            self.unmap_ioctls.load(Relaxed),
            self.attach_ioctls.load(Relaxed),
            self.mapped_bytes.load(Relaxed),
            self.unmapped_bytes.load(Relaxed),
            self.live_bytes.load(Relaxed),
            self.peak_live_bytes.load(Relaxed),
        )
    }
}

/// One passthrough device on iommufd.
pub struct IommufdEndpoint {
    requester_id: u16,
    iommufd: Arc<Iommufd>,
    device: Arc<dyn DeviceAttach>,
    guest_ioas: u32,
    shadow_ioas: u32,
    mem: GuestMemoryMmap,
    caps: HostCapabilities,
    attached: Mutex<Option<HostAttachment>>,
    pub counters: Arc<HostCounters>,
}

impl IommufdEndpoint {
    /// `device` is currently attached to `guest_ram` (the bypass path).
    pub fn new(
        requester_id: u16,
        guest_ram: &GuestRamIoas,
        device: Arc<dyn DeviceAttach>,
        mem: GuestMemoryMmap,
        caps: HostCapabilities,
    ) -> Result<Self, IommufdError> {
        let iommufd = guest_ram.iommufd().clone();
        let shadow_ioas = iommufd.ioas_alloc()?;
        Ok(IommufdEndpoint {
            requester_id,
            iommufd,
            device,
            guest_ioas: guest_ram.id(),
            shadow_ioas,
            mem,
            caps,
            attached: Mutex::new(Some(HostAttachment::Bypass)),
            counters: Arc::new(HostCounters::default()),
        })
    }
}

impl Drop for IommufdEndpoint {
    fn drop(&mut self) {
        // The device may still be attached to the shadow IOAS, which then
        // cannot be destroyed: move it back to guest RAM first.
        let _ = self.device.attach(self.guest_ioas);
        let _ = self.iommufd.destroy(self.shadow_ioas);
    }
}

impl HostIommu for IommufdEndpoint {
    fn requester_id(&self) -> u16 {
        self.requester_id
    }

    fn capabilities(&self) -> HostCapabilities {
        self.caps
    }

    fn attach(&self, to: HostAttachment) -> Result<(), HostIommuError> {
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if *attached == Some(to) {
            return Ok(());
        }
        let pt = match to {
            HostAttachment::Bypass => self.guest_ioas,
            HostAttachment::Shadow => self.shadow_ioas,
        };
        self.counters.attach_ioctls.fetch_add(1, Relaxed);
        // Unknown until the attach succeeds again.
        *attached = None;
        self.device
            .attach(pt)
            .map_err(|reason| HostIommuError::Host {
                op: "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                reason,
            })?;
        *attached = Some(to);
        Ok(())
    }

    fn shadow_map(&self, mappings: &[HostMapping]) -> Result<(), HostIommuError> {
        for m in mappings {
            let HostPerm { read, write } = m.perm;
            if !read && !write {
                continue;
            }
            let host = host_address(&self.mem, m.gpa, m.len).ok_or(HostIommuError::NotRam {
                gpa: m.gpa,
                len: m.len,
            })?;
            self.counters.map_ioctls.fetch_add(1, Relaxed);
            // SAFETY: `host` is guest RAM of `self.mem`, which stays mapped
            // while this endpoint (and so its shadow IOAS) exists.
            unsafe {
                self.iommufd.ioas_map(
                    self.shadow_ioas,
                    m.iova,
                    host,
                    m.len,
                    IoPerm { read, write },
                )
            }
            .map_err(host_err("IOMMU_IOAS_MAP"))?;
            self.counters.mapped_bytes.fetch_add(m.len, Relaxed);
            let live = self.counters.live_bytes.fetch_add(m.len, Relaxed) + m.len;
            self.counters.peak_live_bytes.fetch_max(live, Relaxed);
        }
        Ok(())
    }

    fn shadow_unmap(&self, iova: u64, len: u64) -> Result<(), HostIommuError> {
        self.counters.unmap_ioctls.fetch_add(1, Relaxed);
        let n = self
            .iommufd
            .ioas_unmap(self.shadow_ioas, iova, len)
            .map_err(host_err("IOMMU_IOAS_UNMAP"))?;
        self.counters.unmapped_bytes.fetch_add(n, Relaxed);
        let _ = self
            .counters
            .live_bytes
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        Ok(())
    }
}
