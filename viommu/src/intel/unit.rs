//! The unit: register side effects, invalidations, fault reporting and the
//! translation entry point, all under one lock so that a translation and
//! an invalidation never interleave (§6.5.2.8: an invalidation wait
//! completes only after translations that started before it finished).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vm_memory::{Bytes, GuestAddress};

use super::counters::Counters;
use super::fault::{Fault, FaultLog, Reason, Recorded};
use super::interrupt_remap::{self, IrOutcome, IrtConfig, MsiRequest};
use super::invalidation_queue::{self as iq, Descriptor};
use super::iotlb::Caches;
use super::passthrough::{HostDirty, HostEndpoint, PassthroughMode};
use super::regs::*;
use super::translation::{self, Request, Resolved, WalkConfig};
use crate::host::HostIommu;
use crate::{
    Access, AtsEndpoint, DmaFault, DmaFence, GuestMemoryMmap, PageRequest, Translate, Translation,
};

/// Delivers the unit's own interrupts (fault events, invalidation
/// completion, page requests). These are never remapped (§5.1.6).
pub trait InterruptSink: Send + Sync {
    fn send(&self, address: u64, data: u32);
    /// Interrupt-remapping state changed: routes must be recomputed.
    fn remapping_changed(&self) {}
}

/// The command-line options of `--viommu intel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    pub scalable: bool,
    pub first_stage: bool,
    pub caching_mode: bool,
    pub intremap: bool,
    pub aw_bits: u8,
    pub pasid_bits: u8,
}

impl Default for VtdConfig {
    fn default() -> Self {
        VtdConfig {
            scalable: true,
            first_stage: true,
            caching_mode: false,
            intremap: true,
            aw_bits: 48,
            pasid_bits: 0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VtdConfigError {
    #[error("aw-bits must be 39, 48 or 57")]
    AwBits,
    #[error("pasid-bits must be 0-20")]
    PasidBits,
    #[error("pasid-bits needs scalable=on")]
    PasidNeedsScalable,
    #[error("first-stage=on needs scalable=on (first-stage tables exist only in scalable mode)")]
    FirstStageNeedsScalable,
}

impl VtdConfig {
    pub fn validate(&self) -> Result<(), VtdConfigError> {
        if ![39, 48, 57].contains(&self.aw_bits) {
            return Err(VtdConfigError::AwBits);
        }
        if self.pasid_bits > 20 {
            return Err(VtdConfigError::PasidBits);
        }
        if self.pasid_bits > 0 && !self.scalable {
            return Err(VtdConfigError::PasidNeedsScalable);
        }
        if self.first_stage && !self.scalable {
            return Err(VtdConfigError::FirstStageNeedsScalable);
        }
        Ok(())
    }

    pub fn features(&self) -> Features {
        Features {
            aw_bits: self.aw_bits,
            scalable: self.scalable,
            first_stage: self.first_stage,
            caching_mode: self.caching_mode,
            intremap: self.intremap,
            pasid_bits: self.pasid_bits,
            // PASIDs come with the rest of what SVA needs: device TLBs
            // (ATS) and page requests (PRI).
            device_tlb: self.pasid_bits > 0,
            page_requests: self.pasid_bits > 0,
        }
    }
}

/// Host address width the unit reports and checks table pointers against.
pub const HAW: u8 = 46;
pub use HAW as HOST_ADDRESS_WIDTH;

struct State {
    regs: RegFile,
    features: Features,
    caches: Caches,
    faults: FaultLog,
    /// Root table pointer latched by SRTP.
    rtaddr: u64,
    /// Interrupt-remapping table latched by SIRTP.
    irt: IrtConfig,
    /// Interrupts to send once the lock is released.
    outbox: Vec<(u64, u32)>,
    remap_changed: bool,
    /// Devices with ATS/PRI, by requester ID.
    endpoints: HashMap<u16, Weak<dyn AtsEndpoint>>,
    /// Messages to endpoints, delivered once the lock is released.
    to_endpoints: Vec<(Arc<dyn AtsEndpoint>, EndpointMsg)>,
    /// Passthrough endpoints, whose host IOMMU follows the guest.
    hosts: Vec<HostEndpoint>,
    /// What the invalidations since the last host sync touched.
    host_dirty: HostDirty,
}

enum EndpointMsg {
    Response {
        pasid: Option<u32>,
        index: u16,
        code: u8,
    },
    InvalidateAtc {
        pasid: Option<u32>,
    },
}

pub struct IntelIommu {
    state: Mutex<State>,
    /// Device operations in flight, drained by invalidation waits.
    fence: Arc<DmaFence>,
    mem: GuestMemoryMmap,
    sink: Arc<dyn InterruptSink>,
    pub counters: Counters,
}

impl IntelIommu {
    pub fn new(
        config: VtdConfig,
        mem: GuestMemoryMmap,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<Self, VtdConfigError> {
        config.validate()?;
        let features = config.features();
        Ok(IntelIommu {
            state: Mutex::new(State {
                regs: RegFile::new(&features),
                features,
                caches: Caches::default(),
                faults: FaultLog::default(),
                rtaddr: 0,
                irt: IrtConfig::from_irta(0),
                outbox: Vec::new(),
                remap_changed: false,
                endpoints: HashMap::new(),
                to_endpoints: Vec::new(),
                hosts: Vec::new(),
                host_dirty: HostDirty::default(),
            }),
            fence: Arc::new(DmaFence::default()),
            mem,
            sink,
            counters: Counters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the lock, then delivers what the operation queued.
    fn finish(&self, mut st: MutexGuard<'_, State>) {
        let outbox = std::mem::take(&mut st.outbox);
        let changed = std::mem::take(&mut st.remap_changed);
        let messages = std::mem::take(&mut st.to_endpoints);
        drop(st);
        for (addr, data) in outbox {
            self.sink.send(addr, data);
        }
        for (ep, msg) in messages {
            match msg {
                EndpointMsg::Response { pasid, index, code } => {
                    ep.page_response(pasid, index, code)
                }
                EndpointMsg::InvalidateAtc { pasid } => ep.invalidate_atc(pasid),
            }
        }
        if changed {
            self.sink.remapping_changed();
        }
    }

    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let st = self.lock();
        st.regs.read(offset, data);
        // GCMD is write-only: it reads as zero.
        if touches(offset, data.len(), GCMD, 4) {
            for (i, b) in data.iter_mut().enumerate() {
                if touches(offset + i as u64, 1, GCMD, 4) {
                    *b = 0;
                }
            }
        }
    }

    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let mut st = self.lock();
        let fsts_before = st.regs.get32(FSTS);
        let fectl_before = st.regs.get32(FECTL);
        let iectl_before = st.regs.get32(IECTL);
        let pectl_before = st.regs.get32(PECTL);
        st.regs.write(offset, data);
        let len = data.len();
        if touches(offset, len, GCMD, 4) {
            let cmd = st.regs.get32(GCMD);
            self.global_command(&mut st, cmd);
            st.regs.set32(GCMD, 0);
        }
        // Commands fire when the byte holding their start bit is written.
        if touches(offset, len, CCMD + 7, 1) && st.regs.get64(CCMD) & CCMD_ICC != 0 {
            self.context_command(&mut st);
        }
        if touches(offset, len, IOTLB + 7, 1) && st.regs.get64(IOTLB) & IOTLB_IVT != 0 {
            self.iotlb_command(&mut st);
        }
        let mut run_queue = false;
        if touches(offset, len, FSTS, 4) {
            let now = st.regs.get32(FSTS);
            // Clearing IQE resumes the queue from IQH.
            run_queue |= fsts_before & FSTS_IQE != 0 && now & FSTS_IQE == 0;
        }
        if touches(offset, len, FRCD, NUM_FAULT_RECORDS * 16) {
            self.sync_fault_records_from_regs(&mut st);
        }
        // Software serviced every pending status while the event was
        // masked: the held interrupt is dropped (§11.4.7.1, §11.4.9.2).
        if st.regs.get32(FSTS) & Self::FSTS_PENDING == 0 {
            let c = st.regs.get32(FECTL);
            st.regs.set32(FECTL, c & !CTL_IP);
        }
        if st.regs.get32(ICS) & ICS_IWC == 0 {
            let c = st.regs.get32(IECTL);
            st.regs.set32(IECTL, c & !CTL_IP);
        }
        if touches(offset, len, FECTL, 4) {
            Self::unmask(&mut st, FECTL, FEDATA, FEADDR, FEUADDR, fectl_before);
        }
        if touches(offset, len, IECTL, 4) {
            Self::unmask(&mut st, IECTL, IEDATA, IEADDR, IEUADDR, iectl_before);
        }
        if touches(offset, len, PECTL, 4) {
            Self::unmask(&mut st, PECTL, PEDATA, PEADDR, PEUADDR, pectl_before);
        }
        run_queue |= touches(offset, len, IQT, 8);
        self.sync_hosts(&mut st);
        if run_queue {
            self.drive_queue(st);
        } else {
            self.finish(st);
        }
    }

    /// Processes the queue; at each invalidation wait, drops the lock and
    /// waits for device operations that started earlier, so no device can
    /// still be using a translation the guest invalidated (§6.5.2.8).
    fn drive_queue<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        while let Some(wait) = self.process_queue(&mut st) {
            // What the guest invalidated before the wait is in effect on
            // the host before the wait completes.
            self.sync_hosts(&mut st);
            self.finish(st);
            self.fence.drain();
            st = self.lock();
            self.execute(&mut st, wait);
            let (size, desc) = Self::queue_geometry(&st);
            let head = st.regs.get64(IQH) & 0x7fff0;
            st.regs.set64(IQH, (head + desc) % size);
        }
        self.sync_hosts(&mut st);
        self.finish(st);
    }

    fn queue_geometry(st: &State) -> (u64, u64) {
        let iqa = st.regs.get64(IQA);
        let desc = if iqa & (1 << 11) != 0 { 32 } else { 16 };
        (4096u64 << (iqa & 7), desc)
    }

    // --- interrupts of the unit (§7.3, §6.5.2.9) ---

    /// Clearing IM with IP set delivers the held interrupt.
    fn unmask(st: &mut State, ctl: usize, data: usize, addr: usize, uaddr: usize, before: u32) {
        let now = st.regs.get32(ctl);
        if before & CTL_IM != 0 && now & CTL_IM == 0 && now & CTL_IP != 0 {
            st.regs.set32(ctl, now & !CTL_IP);
            Self::queue_msi(st, data, addr, uaddr);
        }
    }

    fn queue_msi(st: &mut State, data: usize, addr: usize, uaddr: usize) {
        let a = ((st.regs.get32(uaddr) as u64) << 32) | st.regs.get32(addr) as u64;
        let d = st.regs.get32(data);
        st.outbox.push((a, d));
    }

    /// Raises an interrupt through a control register: delivered now, or
    /// held pending (IP) while masked.
    fn raise(st: &mut State, ctl: usize, data: usize, addr: usize, uaddr: usize) {
        let c = st.regs.get32(ctl);
        if c & CTL_IM != 0 {
            st.regs.set32(ctl, c | CTL_IP);
        } else {
            Self::queue_msi(st, data, addr, uaddr);
        }
    }

    fn fault_event(st: &mut State) {
        Self::raise(st, FECTL, FEDATA, FEADDR, FEUADDR);
    }

    // --- global command (§10.4.4) ---

    fn global_command(&self, st: &mut State, cmd: u32) {
        let mut gsts = st.regs.get32(GSTS);
        if cmd & GCMD_SRTP != 0 {
            st.rtaddr = st.regs.get64(RTADDR);
            st.caches.clear();
            st.host_dirty.everything();
            gsts |= GSTS_RTPS;
        }
        if cmd & GCMD_SIRTP != 0 {
            st.irt = IrtConfig::from_irta(st.regs.get64(IRTA));
            gsts |= GSTS_IRTPS;
            st.remap_changed = true;
        }
        if cmd & GCMD_WBF != 0 {
            gsts |= GSTS_WBFS;
            gsts &= !GSTS_WBFS;
        }
        let set = |g: &mut u32, bit: u32, on: bool| {
            if on {
                *g |= bit
            } else {
                *g &= !bit
            }
        };
        if (cmd & GCMD_TE != 0) != (gsts & GSTS_TES != 0) {
            st.caches.clear();
            st.host_dirty.everything();
        }
        set(&mut gsts, GSTS_TES, cmd & GCMD_TE != 0);
        let qie = cmd & GCMD_QIE != 0;
        if qie && gsts & GSTS_QIES == 0 {
            st.regs.set64(IQH, 0);
        }
        set(&mut gsts, GSTS_QIES, qie);
        if st.features.intremap {
            let ire = cmd & GCMD_IRE != 0;
            if ire != (gsts & GSTS_IRES != 0) {
                st.remap_changed = true;
            }
            set(&mut gsts, GSTS_IRES, ire);
            let cfi = cmd & GCMD_CFI != 0;
            if cfi != (gsts & GSTS_CFIS != 0) {
                st.remap_changed = true;
            }
            set(&mut gsts, GSTS_CFIS, cfi);
        }
        st.regs.set32(GSTS, gsts);
    }

    // --- register-based invalidation (§6.5.1) ---

    fn context_command(&self, st: &mut State) {
        let v = st.regs.get64(CCMD);
        let cirg = (v >> 61) & 3;
        match cirg {
            1 => st.caches.flush_context_all(),
            2 => st.caches.flush_context_domain(v as u16),
            3 => st
                .caches
                .flush_context_device((v >> 16) as u16, ((v >> 32) & 3) as u8),
            _ => {}
        }
        st.host_dirty.everything();
        self.counters.invalidations[0].fetch_add(1, Relaxed);
        // Done: ICC clears and CAIG reports the granularity performed.
        let caig = if cirg == 0 { 0 } else { cirg };
        st.regs
            .set64(CCMD, (v & !CCMD_ICC & !(3 << 59)) | (caig << 59));
    }

    fn iotlb_command(&self, st: &mut State) {
        let v = st.regs.get64(IOTLB);
        let iva = st.regs.get64(IVA);
        let did = (v >> 32) as u16;
        let iirg = (v >> 60) & 3;
        match iirg {
            1 => st.caches.flush_iotlb_all(),
            2 => st.caches.flush_iotlb_domain(did),
            3 => st
                .caches
                .flush_iotlb_pages(did, None, iva & !0xfff, (iva & 0x3f) as u8),
            _ => {}
        }
        Self::iotlb_dirty(st, iirg, did, iva & !0xfff, (iva & 0x3f) as u8);
        self.counters.invalidations[10].fetch_add(1, Relaxed);
        st.regs
            .set64(IOTLB, (v & !IOTLB_IVT & !(3 << 57)) | (iirg << 57));
    }

    // --- queued invalidation (§6.5.2) ---

    /// Status bits whose presence means a new one is not a new interrupt
    /// condition (§11.4.7.1).
    const FSTS_PENDING: u32 = FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE;

    /// Sets a fault status bit; the fault event fires only when no status
    /// was already pending.
    fn fault_status(st: &mut State, bit: u32) {
        let fsts = st.regs.get32(FSTS);
        st.regs.set32(FSTS, fsts | bit);
        if fsts & Self::FSTS_PENDING == 0 {
            Self::fault_event(st);
        }
    }

    fn queue_error(&self, st: &mut State, code: u64) {
        self.counters.queue_errors.fetch_add(1, Relaxed);
        st.regs.set64(IQERCD, code);
        Self::fault_status(st, FSTS_IQE);
    }

    /// Runs descriptors from IQH to IQT; stops before an invalidation wait
    /// (leaving IQH on it) and returns it for the caller to complete.
    fn process_queue(&self, st: &mut State) -> Option<Descriptor> {
        if st.regs.get32(GSTS) & GSTS_QIES == 0 || st.regs.get32(FSTS) & FSTS_IQE != 0 {
            return None;
        }
        let iqa = st.regs.get64(IQA);
        let wide = iqa & (1 << 11) != 0;
        let desc = if wide { 32 } else { 16 };
        let size = 4096u64 << (iqa & 7);
        let base = iqa & !0xfff;
        let tail = st.regs.get64(IQT) & 0x7fff0;
        if tail >= size || !tail.is_multiple_of(desc) {
            self.queue_error(st, iq::iqei::BAD_TAIL);
            return None;
        }
        // IQH may sit off the ring if software changed IQA under an
        // enabled queue: realign it rather than loop forever.
        let mut head = (st.regs.get64(IQH) & 0x7fff0) % size / desc * desc;
        let scalable = st.features.scalable;
        let pasid = st.features.page_requests;
        // At most one pass over the ring per tail write.
        let mut budget = size / desc;
        while head != tail && budget > 0 {
            budget -= 1;
            let d =
                iq::fetch(&self.mem, base, head, wide).and_then(|q| iq::decode(q, scalable, pasid));
            match d {
                Ok(w @ Descriptor::Wait { .. }) => {
                    st.regs.set64(IQH, head);
                    return Some(w);
                }
                Ok(d) => self.execute(st, d),
                Err(code) => {
                    st.regs.set64(IQH, head);
                    self.queue_error(st, code);
                    return None;
                }
            }
            head = (head + desc) % size;
        }
        st.regs.set64(IQH, head);
        None
    }

    fn execute(&self, st: &mut State, d: Descriptor) {
        let slot = match d {
            Descriptor::ContextCache {
                granularity,
                did,
                sid,
                fm,
            } => {
                match granularity {
                    1 => st.caches.flush_context_all(),
                    2 => st.caches.flush_context_domain(did),
                    _ => st.caches.flush_context_device(sid, fm),
                }
                st.host_dirty.everything();
                1
            }
            Descriptor::Iotlb {
                granularity,
                did,
                addr,
                am,
                ..
            } => {
                match granularity {
                    1 => st.caches.flush_iotlb_all(),
                    2 => st.caches.flush_iotlb_domain(did),
                    _ => st.caches.flush_iotlb_pages(did, None, addr, am),
                }
                Self::iotlb_dirty(st, granularity as u64, did, addr, am);
                2
            }
            Descriptor::DeviceTlb { sid, .. } => {
                Self::to_endpoint(st, sid, EndpointMsg::InvalidateAtc { pasid: None });
                3
            }
            Descriptor::InterruptEntryCache { .. } => {
                st.remap_changed = true;
                4
            }
            Descriptor::Wait {
                interrupt,
                status_write,
                data,
                addr,
                ..
            } => {
                // Every translation that started before this point has
                // finished: they run under the same lock.
                self.counters.invalidation_waits.fetch_add(1, Relaxed);
                if status_write && self.mem.write_obj(data, GuestAddress(addr)).is_err() {
                    // A status address outside memory is an invalidation
                    // completion error (§6.5.2.8).
                    Self::fault_status(st, FSTS_ICE);
                }
                if interrupt {
                    let ics = st.regs.get32(ICS);
                    st.regs.set32(ICS, ics | ICS_IWC);
                    if ics & ICS_IWC == 0 {
                        Self::raise(st, IECTL, IEDATA, IEADDR, IEUADDR);
                    }
                }
                5
            }
            Descriptor::PasidIotlb {
                granularity,
                did,
                pasid,
                addr,
                am,
                ..
            } => {
                match granularity {
                    2 => st.caches.flush_iotlb_pasid(did, pasid),
                    _ => st.caches.flush_iotlb_pages(did, Some(pasid), addr, am),
                }
                Self::iotlb_dirty(st, if granularity == 2 { 2 } else { 3 }, did, addr, am);
                6
            }
            Descriptor::PasidCache {
                granularity,
                did,
                pasid,
            } => {
                match granularity {
                    0 => st.caches.flush_pasid_domain(did),
                    1 => st.caches.flush_pasid_selective(did, pasid),
                    _ => st.caches.flush_pasid_all(),
                }
                st.host_dirty.everything();
                7
            }
            Descriptor::PasidDeviceTlb { sid, pasid, .. } => {
                Self::to_endpoint(st, sid, EndpointMsg::InvalidateAtc { pasid: Some(pasid) });
                8
            }
            Descriptor::PageGroupResponse {
                rid,
                pasid,
                code,
                index,
                ..
            } => {
                self.counters.page_responses.fetch_add(1, Relaxed);
                Self::to_endpoint(st, rid, EndpointMsg::Response { pasid, index, code });
                9
            }
        };
        self.counters.invalidations[slot].fetch_add(1, Relaxed);
    }

    fn to_endpoint(st: &mut State, rid: u16, msg: EndpointMsg) {
        if let Some(ep) = st.endpoints.get(&rid).and_then(Weak::upgrade) {
            st.to_endpoints.push((ep, msg));
        }
    }

    // --- page requests (§7.5) ---

    /// Writes a page request descriptor into the page request queue.
    fn queue_page_request(&self, st: &mut State, r: &PageRequest) -> Result<(), DmaFault> {
        let refuse = |reason: &str| DmaFault::Blocked {
            iova: r.address,
            len: 0,
            reason: reason.into(),
        };
        if !st.features.page_requests {
            return Err(refuse("page requests not supported"));
        }
        let pqa = st.regs.get64(PQA);
        let size = 4096u64 << (pqa & 7);
        let base = pqa & !0xfff;
        let head = st.regs.get64(PQH) & 0x7ffe0;
        let tail = st.regs.get64(PQT) & 0x7ffe0;
        if base == 0 || (tail + 32) % size == head {
            // No queue, or full: Page Request Overflow (§7.5.1); the
            // request is answered with a failure.
            let prs = st.regs.get32(PRS);
            st.regs.set32(PRS, prs | PRS_PRO);
            return Err(refuse("page request queue full"));
        }
        let mut qw0 = 1u64 | ((r.requester_id as u64) << 16);
        if let Some(p) = r.pasid {
            qw0 |= 1 << 8 | ((p as u64 & 0xf_ffff) << 32);
        }
        if r.exec {
            qw0 |= 1 << 52;
        }
        if r.privileged {
            qw0 |= 1 << 53;
        }
        let mut qw1 = r.address & !0xfff;
        qw1 |= r.read as u64 | (r.write as u64) << 1 | (r.last as u64) << 2;
        qw1 |= ((r.prg_index as u64) & 0x1ff) << 3;
        let at = base + tail;
        let written = [qw0, qw1, 0, 0].iter().enumerate().all(|(i, w)| {
            self.mem
                .write_obj(*w, GuestAddress(at + i as u64 * 8))
                .is_ok()
        });
        if !written {
            return Err(refuse("page request queue outside guest memory"));
        }
        st.regs.set64(PQT, (tail + 32) % size);
        self.counters.page_requests.fetch_add(1, Relaxed);
        let prs = st.regs.get32(PRS);
        st.regs.set32(PRS, prs | PRS_PPR);
        if prs & PRS_PPR == 0 {
            Self::raise(st, PECTL, PEDATA, PEADDR, PEUADDR);
        }
        Ok(())
    }

    // --- fault recording (§7.2) ---

    /// Mirrors the fault log into the registers and FSTS.PPF/FRI.
    fn publish_faults(st: &mut State) {
        for i in 0..NUM_FAULT_RECORDS {
            let r = st.faults.records[i];
            st.regs.set64(FRCD + i * 16, r.lo);
            st.regs.set64(FRCD + i * 16 + 8, r.hi);
        }
        let mut fsts = st.regs.get32(FSTS) & !(FSTS_PPF | 0xff00);
        if let Some(i) = st.faults.first_pending() {
            fsts |= FSTS_PPF | ((i as u32) << 8);
        }
        st.regs.set32(FSTS, fsts);
    }

    /// Software cleared F bits: take the registers as the truth.
    fn sync_fault_records_from_regs(&self, st: &mut State) {
        for i in 0..NUM_FAULT_RECORDS {
            if st.regs.get64(FRCD + i * 16 + 8) & (1 << 63) == 0 {
                st.faults.records[i].hi &= !(1 << 63);
            }
        }
        Self::publish_faults(st);
    }

    fn report(&self, st: &mut State, f: &Fault) {
        self.counters.bump_fault(f.reason.0);
        if !f.record {
            return;
        }
        let fsts = st.regs.get32(FSTS);
        if fsts & FSTS_PFO != 0 {
            return;
        }
        match st.faults.record(f) {
            Recorded::At(_) => {
                self.counters.faults_recorded.fetch_add(1, Relaxed);
                Self::publish_faults(st);
                if fsts & Self::FSTS_PENDING == 0 {
                    Self::fault_event(st);
                }
            }
            // Overflow is not an interrupt condition of its own.
            Recorded::Overflow => st.regs.set32(FSTS, fsts | FSTS_PFO),
        }
    }

    fn walk_config(st: &State) -> WalkConfig {
        let f = &st.features;
        let ttm = (st.rtaddr >> RTADDR_TTM_SHIFT) & 3;
        WalkConfig {
            enabled: st.regs.get32(GSTS) & GSTS_TES != 0,
            rtaddr: st.rtaddr & !0xfff,
            scalable_tables: f.scalable && ttm == 1,
            ttm_invalid: ttm > 1 || (ttm == 1 && !f.scalable),
            haw: HAW,
            mgaw: f.aw_bits,
            sagaw: f.sagaw(),
            pass_through: true,
            device_tlb: f.device_tlb,
            first_stage: f.first_stage,
            five_level_fs: f.first_stage,
            nested: f.first_stage,
            fl_1g: f.first_stage,
            rid_pasid_supported: false,
        }
    }

    /// Translates one request; a fault is recorded as the spec says.
    pub fn translate_request(&self, req: &Request) -> Result<Resolved, Fault> {
        let mut st = self.lock();
        let r = self.resolve_locked(&mut st, req);
        self.finish(st);
        r
    }

    fn resolve_locked(&self, st: &mut State, req: &Request) -> Result<Resolved, Fault> {
        let cfg = Self::walk_config(st);
        let r = translation::resolve(&self.mem, &cfg, &mut st.caches, req);
        match &r {
            Ok(Resolved::Identity) => {
                self.counters.identity.fetch_add(1, Relaxed);
            }
            Ok(Resolved::Page { hit, .. }) => {
                self.counters.translations.fetch_add(1, Relaxed);
                let c = if *hit {
                    &self.counters.iotlb_hits
                } else {
                    &self.counters.iotlb_misses
                };
                c.fetch_add(1, Relaxed);
            }
            Err(_) if req.translation_request => {
                // Returned to the device (it may use PRI); not a fault.
                self.counters.ats_failures.fetch_add(1, Relaxed);
            }
            Err(f) => self.report(st, f),
        }
        r
    }

    /// Interrupt remapping of one MSI (§5.1). `Ok(None)`: blocked (a
    /// fault was recorded); `Ok(Some)`: deliver this message.
    pub fn remap_interrupt(&self, source_id: u16, address: u64, data: u32) -> Option<(u64, u32)> {
        let mut st = self.lock();
        let gsts = st.regs.get32(GSTS);
        if gsts & GSTS_IRES == 0 {
            drop(st);
            return Some((address, data));
        }
        let req = MsiRequest {
            address,
            data,
            source_id,
        };
        let out = match interrupt_remap::remap(&self.mem, &st.irt, gsts & GSTS_CFIS != 0, &req) {
            Ok(IrOutcome::Remapped(m)) => {
                self.counters.interrupts_remapped.fetch_add(1, Relaxed);
                Some((m.address, m.data))
            }
            Ok(IrOutcome::Compatibility) => Some((address, data)),
            Err(f) => {
                let fault = Fault {
                    reason: Reason(f.reason),
                    source_id: f.source_id,
                    address: (f.index as u64) << 48,
                    write: true,
                    pasid: None,
                    privileged: false,
                    record: f.record,
                };
                self.report(&mut st, &fault);
                None
            }
        };
        self.finish(st);
        out
    }

    /// Puts a passthrough endpoint behind the unit: from now on its host
    /// IOMMU follows what the guest programs for `host.requester_id()`.
    pub fn add_host_endpoint(&self, host: Arc<dyn HostIommu>) {
        let mut st = self.lock();
        st.hosts.push(HostEndpoint::new(host));
        st.host_dirty.everything();
        self.sync_hosts(&mut st);
        self.finish(st);
    }

    /// The path each passthrough endpoint is on, by requester ID, and how
    /// often it entered each path (indexed by `PassthroughMode as usize`).
    pub fn passthrough_modes(&self) -> Vec<(u16, Option<PassthroughMode>, [u64; 3])> {
        let st = self.lock();
        st.hosts
            .iter()
            .map(|h| (h.host.requester_id(), h.mode, h.entered))
            .collect()
    }

    /// Bytes the shadow spaces map right now.
    pub fn shadow_live_bytes(&self) -> u64 {
        let st = self.lock();
        st.hosts.iter().map(|h| h.shadow.live_bytes()).sum()
    }

    /// Records an IOTLB invalidation of granularity `g` (1 global, 2
    /// domain, 3 pages: 2^am pages at addr) for the passthrough endpoints.
    fn iotlb_dirty(st: &mut State, g: u64, did: u16, addr: u64, am: u8) {
        if st.hosts.is_empty() {
            return;
        }
        match g {
            1 => st.host_dirty.everything(),
            2 => st.host_dirty.domain(did),
            _ => {
                let span = 4096u64.checked_shl(am.min(52) as u32).unwrap_or(u64::MAX);
                let start = addr & !(span - 1);
                st.host_dirty
                    .range(Some(did), start, start.saturating_add(span));
            }
        }
    }

    /// Replays what the guest invalidated on the passthrough endpoints'
    /// host IOMMU (under the unit's lock, so the next guest change waits).
    fn sync_hosts(&self, st: &mut State) {
        if st.hosts.is_empty() || st.host_dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut st.host_dirty);
        let cfg = Self::walk_config(st);
        let State { hosts, caches, .. } = st;
        for h in hosts.iter_mut() {
            let domain = translation::device_domain(&self.mem, &cfg, caches, h.host.requester_id());
            let stats = h.sync(&self.mem, domain, &dirty);
            self.counters.host_syncs.fetch_add(1, Relaxed);
            self.counters
                .host_map_calls
                .fetch_add(stats.map_calls, Relaxed);
            self.counters
                .host_unmap_calls
                .fetch_add(stats.unmap_calls, Relaxed);
            self.counters.host_errors.fetch_add(stats.errors, Relaxed);
        }
    }

    /// Whether interrupt remapping is on (routes must go through it).
    pub fn remapping_enabled(&self) -> bool {
        self.lock().regs.get32(GSTS) & GSTS_IRES != 0
    }
}

impl IntelIommu {
    /// Translates `[iova, iova + len)` under one hold of the lock, one
    /// resolution per page (a large page or a pass-through context covers
    /// more than 4 KiB at once).
    fn translate_range(
        &self,
        requester_id: u16,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
        translation_request: bool,
    ) -> Result<Vec<Translation>, DmaFault> {
        let end = iova
            .checked_add(len)
            .ok_or(DmaFault::Overflow { iova, len })?;
        let mut out: Vec<Translation> = Vec::with_capacity(1);
        let mut st = self.lock();
        let mut cur = iova;
        while cur < end {
            let mut req = Request {
                sid: requester_id,
                pasid,
                iova: cur,
                write: access != Access::Read,
                privileged: false,
                translation_request,
            };
            let resolved = self.resolve_locked(&mut st, &req).and_then(|r| {
                if access == Access::ReadWrite && matches!(r, Resolved::Page { .. }) {
                    // A read-write access also needs read permission.
                    req.write = false;
                    self.resolve_locked(&mut st, &req)?;
                }
                Ok(r)
            });
            let (gpa, chunk_end) = match resolved {
                Ok(Resolved::Identity) => (cur, end),
                Ok(Resolved::Page { leaf, .. }) => {
                    let page_end = (cur | ((1u64 << leaf.size_shift) - 1)).saturating_add(1);
                    (leaf.translate(cur), page_end.min(end))
                }
                Err(f) => {
                    self.finish(st);
                    return Err(DmaFault::Blocked {
                        iova: cur,
                        len,
                        reason: format!("fault reason {:#04x}", f.reason.0),
                    });
                }
            };
            let n = chunk_end - cur;
            match out.last_mut() {
                Some(last) if last.iova + last.len == cur && last.gpa + last.len == gpa => {
                    last.len += n;
                }
                _ => out.push(Translation {
                    iova: cur,
                    gpa,
                    len: n,
                }),
            }
            cur = chunk_end;
        }
        self.finish(st);
        Ok(out)
    }
}

impl Translate for IntelIommu {
    fn translate(
        &self,
        requester_id: u16,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<Translation>, DmaFault> {
        self.translate_range(requester_id, pasid, iova, len, access, false)
    }

    fn translate_ats(
        &self,
        requester_id: u16,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<Translation>, DmaFault> {
        self.translate_range(requester_id, pasid, iova, len, access, true)
    }

    fn page_request(&self, req: &PageRequest) -> Result<(), DmaFault> {
        let mut st = self.lock();
        let r = self.queue_page_request(&mut st, req);
        self.finish(st);
        r
    }

    fn register_endpoint(&self, requester_id: u16, endpoint: Weak<dyn AtsEndpoint>) {
        self.lock().endpoints.insert(requester_id, endpoint);
    }

    fn fence(&self) -> Option<&Arc<DmaFence>> {
        Some(&self.fence)
    }
}

impl vm_device::DeviceMmio for IntelIommu {
    fn mmio_read(
        &self,
        _base: vm_device::bus::MmioAddress,
        offset: vm_device::bus::MmioAddressOffset,
        data: &mut [u8],
    ) {
        IntelIommu::mmio_read(self, offset, data)
    }

    fn mmio_write(
        &self,
        _base: vm_device::bus::MmioAddress,
        offset: vm_device::bus::MmioAddressOffset,
        data: &[u8],
    ) {
        IntelIommu::mmio_write(self, offset, data)
    }
}
