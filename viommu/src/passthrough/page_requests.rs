//! Page requests of a passthrough device, from the host into the guest.
//!
//! A device that uses PRI behind a nested table sends its page requests to
//! the host IOMMU, and the host's kernel hands them to the VMM through an
//! iommufd fault queue attached to the nested table
//! (IOMMU_HWPT_FAULT_ID_VALID). The bridge puts each one in the emulated
//! IOMMU's page request queue as if the device had sent it to the guest's
//! IOMMU ([`Translate::page_request`]), and turns the guest's page group
//! response back into a response to the host, with the cookie the kernel
//! gave the group. The guest's driver does what it does for any PRI device
//! (fault the page in, update its tables, invalidate, respond).
//!
//! Everything here is bounded by what the host hands over, never by the
//! guest: a guest that never responds leaves at most
//! [`MAX_OPEN_GROUPS`] groups open, past which new groups are refused at
//! once; a response for a group that is not open is dropped and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use log::warn;

use crate::iommufd::{FaultQueue, IommufdError, PageFault, PageResponseCode};
use crate::{AtsEndpoint, PageRequest, Translate};

/// Groups waiting for the guest's response, at most (PCIe allows 512 page
/// request groups per function and PASID; the host's queue holds fewer).
pub const MAX_OPEN_GROUPS: usize = 4096;

/// Where a passthrough device's page requests come from on the host, and
/// where the answers go: the iommufd fault queue, or a test's recording.
pub trait HostPageRequests: Send + Sync {
    /// Every request pending now (empty when there are none).
    fn read(&self) -> Result<Vec<PageFault>, IommufdError>;
    fn respond(&self, cookie: u32, code: PageResponseCode) -> Result<(), IommufdError>;
}

impl HostPageRequests for FaultQueue {
    fn read(&self) -> Result<Vec<PageFault>, IommufdError> {
        self.read_faults()
    }
    fn respond(&self, cookie: u32, code: PageResponseCode) -> Result<(), IommufdError> {
        FaultQueue::respond(self, cookie, code)
    }
}

/// What the bridge did, for `--counters`.
#[derive(Debug, Default)]
pub struct PageRequestCounters {
    /// Requests queued for the guest.
    pub forwarded: AtomicU64,
    /// Groups answered to the host with the guest's response.
    pub answered: AtomicU64,
    /// Groups answered with a failure without the guest (its page request
    /// queue full or off, too many open groups).
    pub refused: AtomicU64,
    /// Guest responses to no open group, dropped.
    pub stray_responses: AtomicU64,
    /// Host reads or writes that failed.
    pub host_errors: AtomicU64,
}

/// One passthrough device's page requests, between the host's fault queue
/// and the emulated IOMMU. Register it with the IOMMU as the device's
/// [`AtsEndpoint`] so that the guest's responses reach it.
pub struct PageRequestBridge {
    requester_id: u16,
    host: Arc<dyn HostPageRequests>,
    viommu: Arc<dyn Translate>,
    /// Open groups by (PASID, PRG index): the cookie to answer with.
    open: Mutex<HashMap<(Option<u32>, u16), u32>>,
    pub counters: PageRequestCounters,
}

impl PageRequestBridge {
    pub fn new(
        requester_id: u16,
        host: Arc<dyn HostPageRequests>,
        viommu: Arc<dyn Translate>,
    ) -> Self {
        PageRequestBridge {
            requester_id,
            host,
            viommu,
            open: Mutex::new(HashMap::new()),
            counters: PageRequestCounters::default(),
        }
    }

    /// Moves what the host queued into the guest's page request queue.
    /// Call when the fault queue's descriptor is readable.
    pub fn forward(&self) {
        let faults = match self.host.read() {
            Ok(f) => f,
            Err(e) => {
                self.host_error("reading page requests", &e);
                return;
            }
        };
        for f in faults {
            self.forward_one(&f);
        }
    }

    fn forward_one(&self, f: &PageFault) {
        let pasid = f.pasid_valid().then_some(f.pasid);
        // PCIe page request group indexes are 9 bits (§10.4.1).
        let prg_index = (f.grpid & 0x1ff) as u16;
        let key = (pasid, prg_index);
        {
            let mut open = self.lock();
            if !open.contains_key(&key) && open.len() >= MAX_OPEN_GROUPS {
                drop(open);
                if f.last_page() {
                    self.refuse(f.cookie);
                }
                return;
            }
            // The last record's cookie identifies the group.
            open.insert(key, f.cookie);
        }
        let req = PageRequest {
            requester_id: self.requester_id,
            pasid,
            address: f.addr & !0xfff,
            read: f.read(),
            write: f.write(),
            exec: f.exec(),
            privileged: f.privileged(),
            prg_index,
            last: f.last_page(),
        };
        match self.viommu.page_request(&req) {
            Ok(()) => {
                self.counters.forwarded.fetch_add(1, Relaxed);
            }
            // The guest's queue is full or off (the IOMMU records the
            // overflow): the group fails, as the emulated IOMMU answers
            // its own devices' requests then.
            Err(_) if f.last_page() => {
                self.lock().remove(&key);
                self.refuse(f.cookie);
            }
            Err(_) => {}
        }
    }

    fn refuse(&self, cookie: u32) {
        self.counters.refused.fetch_add(1, Relaxed);
        if let Err(e) = self.host.respond(cookie, PageResponseCode::Invalid) {
            self.host_error("answering a page request", &e);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Option<u32>, u16), u32>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counted every time, logged at the 1st, 2nd, 4th … only.
    fn host_error(&self, what: &str, e: &IommufdError) {
        let n = self.counters.host_errors.fetch_add(1, Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(
                "passthrough {:04x}: {what}: {e} ({n} such errors so far)",
                self.requester_id
            );
        }
    }
}

impl AtsEndpoint for PageRequestBridge {
    fn page_response(&self, pasid: Option<u32>, prg_index: u16, code: u8) {
        let Some(cookie) = self.lock().remove(&(pasid, prg_index)) else {
            self.counters.stray_responses.fetch_add(1, Relaxed);
            return;
        };
        // Success (0) lets the device retry; invalid request (1) and
        // response failure (0xf) both make it give up (PCIe §10.4.2.1),
        // which is what the host's one failure code does.
        let code = if code == 0 {
            PageResponseCode::Success
        } else {
            PageResponseCode::Invalid
        };
        self.counters.answered.fetch_add(1, Relaxed);
        if let Err(e) = self.host.respond(cookie, code) {
            self.host_error("answering a page request", &e);
        }
    }

    /// The host flushes the device's TLB itself when the guest's
    /// invalidations reach the nested table (IOMMU_HWPT_INVALIDATE).
    fn invalidate_atc(&self, _pasid: Option<u32>) {}
}
