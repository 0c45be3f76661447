//! The unit: its state, register side effects (global command,
//! register-based invalidation) and the translation entry points, all under
//! one lock so that a translation and an invalidation never interleave
//! (§6.5.2.8: an invalidation wait completes only after translations that
//! started before it finished). The passthrough endpoints' host syncs are
//! planned under that lock and carried out after it is released
//! (`finish_synced`), so no translation waits for a host ioctl.
//!
//! The hardware objects the unit drives have files of their own, each an
//! `impl IntelIommu` block over this state: the invalidation queue engine
//! in `invalidation_queue.rs`, the page request queue in
//! `page_request_queue.rs`, fault status and recording in `fault.rs` and
//! the unit's own interrupts in `event.rs`.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::counters::{Counters, Invalidation};
use super::domain_users::{DomainUsers, Invalidated};
use super::event::{COMPLETION_EVENT, FAULT_EVENT, PAGE_REQUEST_EVENT};
use super::fault::{Fault, FaultLog, Reason};
use super::interrupt_remap::{self, IrOutcome, IrtConfig, MsiRequest};
use super::invalidation_queue::Engine;
use super::iotlb::Caches;
use super::passthrough::dirty_pages;
use super::regs::*;
use super::second_stage::SlTable;
use super::translation::{self, Request, Resolved, WalkConfig};
use crate::host::HostIommu;
use crate::passthrough::{HostEndpoint, HostSync, PassthroughMode, PlannedSync, SyncPlanner};
use crate::{
    Access, AtsEndpoint, DmaFault, DmaFence, FenceScope, GuestMemoryMmap, PageRequest, Translate,
    Translation,
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
    /// Advertise nested translation (ECAP.NEST, §3.8): a guest that is
    /// itself a hypervisor may then put its guests' first-stage tables
    /// over its own second stage (PASID entries with PGTT = 011b).
    pub offer_nesting: bool,
    /// First-stage 1 GiB pages (CAP.FL1GP) and 5-level first-stage tables
    /// (CAP.FL5LP), when the first stage is on. A vIOMMU whose first-stage
    /// tables a host IOMMU walks (the nested path) offers them only where
    /// the host has them.
    pub fl1gp: bool,
    pub fl5lp: bool,
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
            offer_nesting: false,
            fl1gp: true,
            fl5lp: true,
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
    #[error(
        "offer-nesting=on needs scalable=on and first-stage=on (nested translation walks \
         first-stage tables through the second stage)"
    )]
    NestingNeedsFirstStage,
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
        if self.offer_nesting && !(self.scalable && self.first_stage) {
            return Err(VtdConfigError::NestingNeedsFirstStage);
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
            nesting: self.offer_nesting,
            fl1gp: self.first_stage && self.fl1gp,
            fl5lp: self.first_stage && self.fl5lp,
        }
    }
}

/// Host address width the unit reports and checks table pointers against.
pub const HAW: u8 = 46;
pub use HAW as HOST_ADDRESS_WIDTH;

/// Everything the unit keeps, under its one lock. The files of the
/// hardware objects (see the module comment) reach into it directly.
pub(super) struct State {
    pub(super) regs: RegFile,
    pub(super) features: Features,
    pub(super) caches: Caches,
    pub(super) faults: FaultLog,
    /// Root table pointer latched by SRTP.
    pub(super) rtaddr: u64,
    /// Interrupt-remapping table latched by SIRTP.
    pub(super) irt: IrtConfig,
    /// Interrupts to send once the lock is released.
    pub(super) outbox: Vec<(u64, u32)>,
    pub(super) remap_changed: bool,
    /// Devices with ATS/PRI, by requester ID.
    pub(super) endpoints: HashMap<u16, Weak<dyn AtsEndpoint>>,
    /// Messages to endpoints, delivered once the lock is released.
    pub(super) to_endpoints: Vec<(Arc<dyn AtsEndpoint>, EndpointMsg)>,
    /// The passthrough endpoints' requester IDs and what the guest
    /// invalidated since their last host sync: the half of the host sync
    /// planned under the lock ([`IntelIommu::hosts`] is the other).
    pub(super) host: SyncPlanner,
    /// The invalidation queue engine's own state.
    pub(super) queue: Engine,
    /// The domains each requester translated under: what scopes the
    /// fence drains of invalidations (see `domain_users.rs`).
    pub(super) domain_users: DomainUsers,
}

/// What the queue sends to an ATS/PRI endpoint once the lock is released.
pub(super) enum EndpointMsg {
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
    /// Device operations in flight, by requester ID: invalidation waits
    /// (and register-based invalidations) drain those that may use what
    /// was invalidated.
    pub(super) fence: Arc<DmaFence>,
    pub(super) mem: GuestMemoryMmap,
    sink: Arc<dyn InterruptSink>,
    /// Passthrough endpoints, whose host IOMMU follows the guest. Synced
    /// outside the unit's lock, in the guest's order (see
    /// `passthrough/host_sync.rs`): a translation of an emulated device
    /// never waits for a host ioctl.
    hosts: HostSync<SlTable>,
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
                host: SyncPlanner::default(),
                queue: Engine::default(),
                domain_users: DomainUsers::default(),
            }),
            fence: Arc::new(DmaFence::default()),
            mem,
            sink,
            hosts: HostSync::default(),
            counters: Counters::default(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the lock, then delivers what the operation queued.
    pub(super) fn finish(&self, st: MutexGuard<'_, State>) {
        self.finish_with(st, None);
    }

    /// [`Self::finish`], and brings the passthrough endpoints' host IOMMU
    /// in line with what the guest invalidated so far: planned under the
    /// lock, applied once it is released, before anything is delivered
    /// (an interrupt or a wait completion after this follows the sync).
    pub(super) fn finish_synced(&self, mut st: MutexGuard<'_, State>) {
        let plan = self.plan_host_sync(&mut st);
        self.finish_with(st, plan);
    }

    fn finish_with(&self, mut st: MutexGuard<'_, State>, plan: Option<PlannedSync<SlTable>>) {
        let outbox = std::mem::take(&mut st.outbox);
        let changed = std::mem::take(&mut st.remap_changed);
        let messages = std::mem::take(&mut st.to_endpoints);
        drop(st);
        if let Some(plan) = plan {
            self.hosts
                .apply(&self.mem, plan, |s| self.counters.add_host_sync(s));
        }
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
        // What a register-based invalidation removed is drained before
        // the write returns (below).
        let mut drain = FenceScope::default();
        if touches(offset, len, CCMD + 7, 1) && st.regs.get64(CCMD) & CCMD_ICC != 0 {
            drain.merge(self.context_command(&mut st));
        }
        if touches(offset, len, IOTLB + 7, 1) && st.regs.get64(IOTLB) & IOTLB_IVT != 0 {
            drain.merge(self.iotlb_command(&mut st));
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
            Self::unmask(&mut st, FAULT_EVENT, fectl_before);
        }
        if touches(offset, len, IECTL, 4) {
            Self::unmask(&mut st, COMPLETION_EVENT, iectl_before);
        }
        if touches(offset, len, PECTL, 4) {
            Self::unmask(&mut st, PAGE_REQUEST_EVENT, pectl_before);
        }
        run_queue |= touches(offset, len, IQT, 8);
        // The queue engine syncs the hosts before it runs anything, and so
        // takes what a register-based invalidation above touched too.
        if run_queue {
            self.drive_queue(st);
        } else {
            self.finish_synced(st);
        }
        // A register-based invalidation completes (IVT or ICC reads 0)
        // only once the DMA that may use what it removed has drained
        // (§6.5; the unit reports DRD and DWD, and Linux sets DR and DW in
        // the IOTLB register, §11.4.8.1). Drained unlocked, as a queued
        // wait does.
        self.fence.drain(&drain);
    }

    // --- global command (§10.4.4) ---

    fn global_command(&self, st: &mut State, cmd: u32) {
        let mut gsts = st.regs.get32(GSTS);
        if cmd & GCMD_SRTP != 0 {
            st.rtaddr = st.regs.get64(RTADDR);
            st.caches.clear();
            st.host.dirty.everything();
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
            st.host.dirty.everything();
        }
        set(&mut gsts, GSTS_TES, cmd & GCMD_TE != 0);
        let qie = cmd & GCMD_QIE != 0;
        if qie && gsts & GSTS_QIES == 0 {
            st.regs.set64(IQH, 0);
            st.queue.enabled();
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

    /// Runs the context-cache invalidation in CCMD; returns what must
    /// drain before it completes.
    fn context_command(&self, st: &mut State) -> FenceScope {
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
        st.host.dirty.everything();
        self.counters
            .bump_invalidation(Invalidation::ContextCommand);
        // Done: ICC clears and CAIG reports the granularity performed.
        let caig = if cirg == 0 { 0 } else { cirg };
        st.regs
            .set64(CCMD, (v & !CCMD_ICC & !(3 << 59)) | (caig << 59));
        if cirg == 0 {
            // Reserved granularity: nothing was invalidated.
            FenceScope::default()
        } else {
            st.domain_users.scope_of(Invalidated::Everything)
        }
    }

    /// Runs the IOTLB invalidation in the IOTLB register; returns what
    /// must drain before it completes.
    fn iotlb_command(&self, st: &mut State) -> FenceScope {
        let v = st.regs.get64(IOTLB);
        let iva = st.regs.get64(IVA);
        let did = (v >> 32) as u16;
        let iirg = (v >> 60) & 3;
        let drain = match iirg {
            1 => {
                st.caches.flush_iotlb_all();
                st.domain_users.scope_of(Invalidated::Everything)
            }
            2 => {
                st.caches.flush_iotlb_domain(did);
                st.domain_users.scope_of(Invalidated::Domain(did))
            }
            3 => {
                st.caches
                    .flush_iotlb_pages(did, None, iva & !0xfff, (iva & 0x3f) as u8);
                st.domain_users.scope_of(Invalidated::Domain(did))
            }
            // Reserved granularity: nothing was invalidated.
            _ => FenceScope::default(),
        };
        Self::iotlb_dirty(st, iirg, did, iva & !0xfff, (iva & 0x3f) as u8);
        self.counters.bump_invalidation(Invalidation::IotlbCommand);
        st.regs
            .set64(IOTLB, (v & !IOTLB_IVT & !(3 << 57)) | (iirg << 57));
        drain
    }

    // --- translation and interrupt remapping ---

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
            five_level_fs: f.fl5lp,
            nested: f.nesting,
            fl_1g: f.fl1gp,
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
            Ok(Resolved::Page { hit, did, .. }) => {
                // Before the translation is used: see `DomainUsers`.
                st.domain_users.record(req.sid, *did, &self.fence);
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

    // --- passthrough endpoints ---

    /// Puts a passthrough endpoint behind the unit: from now on its host
    /// IOMMU follows what the guest programs for `host.requester_id()`.
    pub fn add_host_endpoint(&self, host: Arc<dyn HostIommu>) {
        self.add_host_endpoint_with(HostEndpoint::new(host));
    }

    /// [`Self::add_host_endpoint`] with shadow walk limits of the caller's
    /// (test-only: the fuzz rigs).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn add_host_endpoint_limited(
        &self,
        host: Arc<dyn HostIommu>,
        walk_budget: u64,
        max_areas: usize,
    ) {
        let shadow = crate::shadow::ShadowSpace::with_limits(walk_budget, max_areas);
        self.add_host_endpoint_with(HostEndpoint::with_shadow(host, shadow));
    }

    fn add_host_endpoint_with(&self, endpoint: HostEndpoint<SlTable>) {
        let rid = self.hosts.add(endpoint);
        let mut st = self.lock();
        st.host.register(rid);
        self.finish_synced(st);
    }

    /// The path each passthrough endpoint is on, by requester ID, and how
    /// often it entered each path (indexed by `PassthroughMode as usize`).
    pub fn passthrough_modes(
        &self,
    ) -> Vec<(u16, Option<PassthroughMode>, [u64; PassthroughMode::COUNT])> {
        self.hosts.with_endpoints(|hosts| {
            hosts
                .iter()
                .map(|h| (h.host.requester_id(), h.mode, h.entered))
                .collect()
        })
    }

    /// Bytes the shadow spaces map right now.
    pub fn shadow_live_bytes(&self) -> u64 {
        self.hosts
            .with_endpoints(|hosts| hosts.iter().map(|h| h.shadow.live_bytes()).sum())
    }

    /// Records an IOTLB invalidation of granularity `g` (1 global, 2
    /// domain, 3 pages: 2^am pages at addr) for the passthrough endpoints.
    pub(super) fn iotlb_dirty(st: &mut State, g: u64, did: u16, addr: u64, am: u8) {
        if !st.host.has_endpoints() {
            return;
        }
        match g {
            1 => st.host.dirty.everything(),
            2 => st.host.dirty.domain(did),
            _ => dirty_pages(&mut st.host.dirty, did, addr, am),
        }
    }

    /// The guest named `pasid` in a PASID-selective invalidation: its
    /// entry may have been set up, so the passthrough endpoints follow it
    /// (`passthrough/pasid.rs`).
    pub(super) fn pasid_announced(st: &mut State, pasid: u32) {
        if st.host.has_endpoints() {
            st.host.pasids.note(pasid);
        }
    }

    /// What the passthrough endpoints' host IOMMU must replay of the
    /// guest's invalidations so far, with the guest structures each
    /// endpoint's requests go through now (applied by `finish_with`).
    fn plan_host_sync(&self, st: &mut State) -> Option<PlannedSync<SlTable>> {
        let cfg = Self::walk_config(st);
        let State { host, caches, .. } = st;
        host.plan(|rid, pasid| {
            match pasid {
                None => translation::device_domain(&self.mem, &cfg, caches, rid),
                Some(p) => translation::pasid_domain(&self.mem, &cfg, caches, rid, p),
            }
            .into()
        })
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
