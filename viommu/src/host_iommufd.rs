//! [`HostIommu`] over iommufd: the bypass, shadow and nested paths of a
//! passthrough device.
//!
//! Every passthrough device is bound to one iommufd. Guest RAM is mapped
//! once into a shared IOAS at IOVA = GPA (the bypass path). Each device
//! also gets its own shadow IOAS, which the model fills with the guest's
//! second-stage mappings as the guest invalidates them (IOVA → the host
//! address of the guest-physical page). On a host that nests, the device
//! also gets a NEST_PARENT HWPT over the guest-RAM IOAS, and each guest
//! stage-1 table the model hands over becomes a nested HWPT on it. Which
//! one the device is attached to is the model's choice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use iommufd_ioctls::IommufdIoas;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::host::{
    HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping, HostPerm,
    PasidAttachment, Stage1Invalidation, Stage1Table,
};
use crate::iommufd::{
    FaultQueue, HwptAlloc, HwptData, InvalidateBatch, IoPerm, Iommufd, IommufdError,
    VtdInvalidation, VTD_S1_SRE, VTD_S1_WPE,
};
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
    /// Attaches (or replaces) what requests with `pasid` go through.
    fn attach_pasid(&self, pasid: u32, pt_id: u32) -> Result<(), String> {
        let _ = (pasid, pt_id);
        Err("PASID attach is not supported".into())
    }
    fn detach_pasid(&self, pasid: u32) -> Result<(), String> {
        let _ = pasid;
        Err("PASID attach is not supported".into())
    }
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
    /// Nested HWPTs allocated (one per guest stage-1 table installed).
    pub nested_hwpts: AtomicU64,
    /// IOMMU_HWPT_INVALIDATE calls and the entries they carried.
    pub invalidate_ioctls: AtomicU64,
    pub invalidate_entries: AtomicU64,
}

impl HostCounters {
    pub fn summary(&self) -> String {
        format!(
            "map_ioctls={} unmap_ioctls={} attach_ioctls={} mapped_bytes={} unmapped_bytes={} \
             live_bytes={} peak_live_bytes={} nested_hwpts={} invalidate_ioctls={} \
             invalidate_entries={}",
            self.map_ioctls.load(Relaxed),
            self.unmap_ioctls.load(Relaxed),
            self.attach_ioctls.load(Relaxed),
            self.mapped_bytes.load(Relaxed),
            self.unmapped_bytes.load(Relaxed),
            self.live_bytes.load(Relaxed),
            self.peak_live_bytes.load(Relaxed),
            self.nested_hwpts.load(Relaxed),
            self.invalidate_ioctls.load(Relaxed),
            self.invalidate_entries.load(Relaxed),
        )
    }
}

/// Where the device is attached on the host.
#[derive(Debug, Default)]
struct Attached {
    /// None: unknown (an attach failed part-way).
    to: Option<HostAttachment>,
    /// The nested HWPT of `HostAttachment::Nested`, destroyed when the
    /// device moves off it.
    nested_hwpt: Option<u32>,
    /// The nested HWPTs attached to PASIDs, by PASID (a PASID on the nest
    /// parent has none here).
    pasid_hwpts: HashMap<u32, u32>,
}

/// One passthrough device on iommufd.
pub struct IommufdEndpoint {
    requester_id: u16,
    iommufd: Arc<Iommufd>,
    device: Arc<dyn DeviceAttach>,
    dev_id: u32,
    guest_ioas: u32,
    shadow_ioas: u32,
    /// The NEST_PARENT HWPT over guest RAM (IOVA = GPA), when the nested
    /// path is taken (`caps.nesting`).
    nest_parent: Option<u32>,
    /// Every table of the device was allocated for PASID use
    /// (IOMMU_HWPT_ALLOC_PASID), so PASIDs can be attached: the host gives
    /// the device PASIDs and took the flag on the nest parent. The kernel
    /// then wants a flagged table on the requests without PASID too, so
    /// the bypass path goes through the nest parent, not the IOAS.
    pasid_tables: bool,
    /// Where the host queues the device's page requests on its nested
    /// tables (`caps.page_requests` on the nested path); the VMM forwards
    /// them to the guest (`passthrough::page_requests`).
    fault_queue: Option<Arc<FaultQueue>>,
    mem: GuestMemoryMmap,
    caps: HostCapabilities,
    attached: Mutex<Attached>,
    pub counters: Arc<HostCounters>,
}

impl IommufdEndpoint {
    /// `device` (iommufd device `dev_id`) is currently attached to
    /// `guest_ram` (the bypass path). With `caps.nesting` the endpoint
    /// takes the nested path for guest stage-1 tables.
    pub fn new(
        requester_id: u16,
        guest_ram: &GuestRamIoas,
        device: Arc<dyn DeviceAttach>,
        dev_id: u32,
        mem: GuestMemoryMmap,
        caps: HostCapabilities,
    ) -> Result<Self, IommufdError> {
        let iommufd = guest_ram.iommufd().clone();
        let shadow_ioas = iommufd.ioas_alloc()?;
        let mut pasid_tables = false;
        let nest_parent = if caps.nesting {
            let mut req = HwptAlloc::nest_parent(dev_id, guest_ram.id());
            req.flags.pasid = caps.max_pasid_log2 > 0;
            // A host IOMMU without PASID support refuses the flag: the
            // device then runs without PASIDs.
            let first = iommufd.hwpt_alloc(&req);
            let id = match first {
                Ok(id) => {
                    pasid_tables = req.flags.pasid;
                    Ok(id)
                }
                Err(_) if req.flags.pasid => {
                    iommufd.hwpt_alloc(&HwptAlloc::nest_parent(dev_id, guest_ram.id()))
                }
                Err(e) => Err(e),
            };
            match id {
                Ok(id) => Some(id),
                Err(e) => {
                    let _ = iommufd.destroy(shadow_ioas);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let fault_queue = match nest_parent {
            Some(_) if caps.page_requests => match iommufd.fault_queue_alloc() {
                Ok(q) => Some(Arc::new(q)),
                Err(e) => {
                    if let Some(id) = nest_parent {
                        let _ = iommufd.destroy(id);
                    }
                    let _ = iommufd.destroy(shadow_ioas);
                    return Err(e);
                }
            },
            _ => None,
        };
        Ok(IommufdEndpoint {
            requester_id,
            iommufd,
            device,
            dev_id,
            guest_ioas: guest_ram.id(),
            shadow_ioas,
            nest_parent,
            pasid_tables,
            fault_queue,
            mem,
            caps,
            attached: Mutex::new(Attached {
                to: Some(HostAttachment::Bypass),
                nested_hwpt: None,
                pasid_hwpts: HashMap::new(),
            }),
            counters: Arc::new(HostCounters::default()),
        })
    }

    /// Allocates the nested HWPT for a guest stage-1 table.
    fn alloc_nested(&self, table: &Stage1Table) -> Result<u32, HostIommuError> {
        let parent = self
            .nest_parent
            .ok_or(HostIommuError::Unsupported("nested translation"))?;
        let data = match *table {
            Stage1Table::VtdFirstStage {
                pgtbl_addr,
                addr_width,
                sre,
                wpe,
            } => HwptData::VtdS1 {
                flags: if sre { VTD_S1_SRE } else { 0 } | if wpe { VTD_S1_WPE } else { 0 },
                pgtbl_addr,
                addr_width: addr_width as u32,
            },
        };
        let mut req = HwptAlloc::nested(self.dev_id, parent, data);
        req.flags.pasid = self.pasid_tables;
        req.fault_id = self.fault_queue.as_ref().map(|q| q.id());
        let id = self
            .iommufd
            .hwpt_alloc(&req)
            .map_err(host_err("IOMMU_HWPT_ALLOC (nested)"))?;
        self.counters.nested_hwpts.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// The queue of the device's page requests, when its nested tables
    /// have one.
    pub fn fault_queue(&self) -> Option<Arc<FaultQueue>> {
        self.fault_queue.clone()
    }

    /// The page table for `to`, and the nested HWPT allocated for it.
    fn attachment_table(&self, to: HostAttachment) -> Result<(u32, Option<u32>), HostIommuError> {
        Ok(match to {
            HostAttachment::Bypass => (self.guest_ioas, None),
            HostAttachment::Shadow => (self.shadow_ioas, None),
            HostAttachment::Nested(table) => {
                let id = self.alloc_nested(&table)?;
                (id, Some(id))
            }
        })
    }

    /// One IOMMU_HWPT_INVALIDATE of nested table `hwpt` with `batch`;
    /// returns how many entries the host carried out.
    fn invalidate_hwpt(
        &self,
        hwpt: u32,
        batch: &[Stage1Invalidation],
    ) -> Result<usize, HostIommuError> {
        let entries: Vec<VtdInvalidation> = batch
            .iter()
            .map(|i| VtdInvalidation::new(i.addr, i.npages, i.leaf))
            .collect();
        self.counters.invalidate_ioctls.fetch_add(1, Relaxed);
        let out = self
            .iommufd
            .hwpt_invalidate_partial(hwpt, InvalidateBatch::Vtd(&entries));
        self.counters
            .invalidate_entries
            .fetch_add(out.processed as u64, Relaxed);
        match out.error {
            None => Ok(out.processed as usize),
            Some(e) if out.processed > 0 => {
                log::warn!(
                    "passthrough {:04x}: IOMMU_HWPT_INVALIDATE stopped after {} of {} entries: {e}",
                    self.requester_id,
                    out.processed,
                    entries.len()
                );
                Ok(out.processed as usize)
            }
            Some(e) => Err(host_err("IOMMU_HWPT_INVALIDATE")(e)),
        }
    }
}

impl Drop for IommufdEndpoint {
    fn drop(&mut self) {
        // The device may still be attached to the shadow IOAS or a nested
        // HWPT, which then cannot be destroyed: move it back to guest RAM
        // first.
        let _ = self.device.attach(self.guest_ioas);
        let attached = self.attached.get_mut().unwrap_or_else(|e| e.into_inner());
        for (pasid, id) in attached.pasid_hwpts.drain() {
            let _ = self.device.detach_pasid(pasid);
            let _ = self.iommufd.destroy(id);
        }
        if let Some(id) = attached.nested_hwpt.take() {
            let _ = self.iommufd.destroy(id);
        }
        if let Some(id) = self.nest_parent {
            let _ = self.iommufd.destroy(id);
        }
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
        if attached.to == Some(to) {
            return Ok(());
        }
        let (pt, nested) = match (to, self.nest_parent) {
            (HostAttachment::Bypass, Some(parent)) if self.pasid_tables => (parent, None),
            _ => self.attachment_table(to)?,
        };
        self.counters.attach_ioctls.fetch_add(1, Relaxed);
        // Unknown until the attach succeeds again.
        attached.to = None;
        if let Err(reason) = self.device.attach(pt) {
            if let Some(id) = nested {
                let _ = self.iommufd.destroy(id);
            }
            return Err(HostIommuError::Host {
                op: "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                reason,
            });
        }
        // The device is off the previous nested table (attach replaces).
        if let Some(old) = std::mem::replace(&mut attached.nested_hwpt, nested) {
            let _ = self.iommufd.destroy(old);
        }
        attached.to = Some(to);
        Ok(())
    }

    fn attach_pasid(&self, pasid: u32, to: PasidAttachment) -> Result<(), HostIommuError> {
        if !self.pasid_tables {
            return Err(HostIommuError::Unsupported("PASID attach"));
        }
        let parent = self
            .nest_parent
            .ok_or(HostIommuError::Unsupported("PASID attach"))?;
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        let nested = match to {
            PasidAttachment::Detached => {
                self.counters.attach_ioctls.fetch_add(1, Relaxed);
                let r = self.device.detach_pasid(pasid);
                if let Some(old) = attached.pasid_hwpts.remove(&pasid) {
                    let _ = self.iommufd.destroy(old);
                }
                return r.map_err(|reason| HostIommuError::Host {
                    op: "VFIO_DEVICE_DETACH_IOMMUFD_PT (PASID)",
                    reason,
                });
            }
            PasidAttachment::Bypass => None,
            PasidAttachment::Nested(table) => Some(self.alloc_nested(&table)?),
        };
        self.counters.attach_ioctls.fetch_add(1, Relaxed);
        if let Err(reason) = self.device.attach_pasid(pasid, nested.unwrap_or(parent)) {
            if let Some(id) = nested {
                let _ = self.iommufd.destroy(id);
            }
            return Err(HostIommuError::Host {
                op: "VFIO_DEVICE_ATTACH_IOMMUFD_PT (PASID)",
                reason,
            });
        }
        // Replaced: the PASID is off its previous nested table.
        let old = match nested {
            Some(id) => attached.pasid_hwpts.insert(pasid, id),
            None => attached.pasid_hwpts.remove(&pasid),
        };
        if let Some(old) = old {
            let _ = self.iommufd.destroy(old);
        }
        Ok(())
    }

    fn invalidate_stage1_pasid(
        &self,
        pasid: u32,
        batch: &[Stage1Invalidation],
    ) -> Result<usize, HostIommuError> {
        let hwpt = {
            let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
            attached.pasid_hwpts.get(&pasid).copied()
        };
        let Some(hwpt) = hwpt else {
            return Err(HostIommuError::Host {
                op: "IOMMU_HWPT_INVALIDATE",
                reason: format!("PASID {pasid} is not on a nested table"),
            });
        };
        self.invalidate_hwpt(hwpt, batch)
    }

    fn invalidate_stage1(&self, batch: &[Stage1Invalidation]) -> Result<usize, HostIommuError> {
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        let Some(hwpt) = attached.nested_hwpt else {
            return Err(HostIommuError::Host {
                op: "IOMMU_HWPT_INVALIDATE",
                reason: "the device is not on a nested table".into(),
            });
        };
        self.invalidate_hwpt(hwpt, batch)
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
