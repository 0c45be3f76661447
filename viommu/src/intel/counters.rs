//! What the unit did, for tests and benchmarks to check that DMA really
//! went through it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::fault::Reason;

pub struct Counters {
    /// Pages translated through the tables (IOTLB hit or walk).
    pub translations: AtomicU64,
    /// DMA ranges passed through untranslated (translation off or
    /// pass-through); one per access, however many pages it spans.
    pub identity: AtomicU64,
    pub iotlb_hits: AtomicU64,
    pub iotlb_misses: AtomicU64,
    pub faults: AtomicU64,
    /// ATS translation requests that failed (answered to the device).
    pub ats_failures: AtomicU64,
    pub faults_recorded: AtomicU64,
    pub page_requests: AtomicU64,
    pub page_responses: AtomicU64,
    pub interrupts_remapped: AtomicU64,
    /// Invalidations, indexed by [`Invalidation`] (`kind as usize`).
    pub invalidations: [AtomicU64; 16],
    /// Faults, indexed by reason code ([`Reason`]`.0`).
    pub fault_reasons: [AtomicU64; 256],
    pub invalidation_waits: AtomicU64,
    pub queue_errors: AtomicU64,
    /// Passthrough endpoints: host syncs after guest invalidation batches,
    /// shadow map/unmap requests the model made, and host errors.
    pub host_syncs: AtomicU64,
    pub host_map_calls: AtomicU64,
    pub host_unmap_calls: AtomicU64,
    pub host_errors: AtomicU64,
    /// Nested path: stage-1 tables installed on the host, invalidation
    /// batches forwarded (one host call each) and the entries in them.
    pub host_nested_attaches: AtomicU64,
    pub host_stage1_batches: AtomicU64,
    pub host_stage1_invalidations: AtomicU64,
}

/// What one slot of [`Counters::invalidations`] counts: a queued
/// descriptor type, at its type number (§6.5.2), or one of the
/// register-based commands (§6.5.1) at the slots descriptor types leave
/// free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Context command register (CCMD).
    ContextCommand = 0,
    ContextCache = 1,
    Iotlb = 2,
    DeviceTlb = 3,
    InterruptEntryCache = 4,
    Wait = 5,
    PasidIotlb = 6,
    PasidCache = 7,
    PasidDeviceTlb = 8,
    PageGroupResponse = 9,
    /// IOTLB invalidate register.
    IotlbCommand = 10,
}

impl Invalidation {
    /// Every slot, in the order the summary prints them.
    pub const ALL: [Invalidation; 11] = [
        Invalidation::ContextCommand,
        Invalidation::ContextCache,
        Invalidation::Iotlb,
        Invalidation::DeviceTlb,
        Invalidation::InterruptEntryCache,
        Invalidation::Wait,
        Invalidation::PasidIotlb,
        Invalidation::PasidCache,
        Invalidation::PasidDeviceTlb,
        Invalidation::PageGroupResponse,
        Invalidation::IotlbCommand,
    ];

    /// The name in the summary (`inv_<name>=`), which tools parse.
    pub fn name(self) -> &'static str {
        match self {
            Invalidation::ContextCommand => "ccmd",
            Invalidation::ContextCache => "cc",
            Invalidation::Iotlb => "iotlb",
            Invalidation::DeviceTlb => "dev_tlb",
            Invalidation::InterruptEntryCache => "iec",
            Invalidation::Wait => "wait",
            Invalidation::PasidIotlb => "p_iotlb",
            Invalidation::PasidCache => "pasid_cache",
            Invalidation::PasidDeviceTlb => "p_dev_tlb",
            Invalidation::PageGroupResponse => "page_response",
            Invalidation::IotlbCommand => "iotlb_reg",
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            translations: AtomicU64::new(0),
            identity: AtomicU64::new(0),
            iotlb_hits: AtomicU64::new(0),
            iotlb_misses: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            ats_failures: AtomicU64::new(0),
            faults_recorded: AtomicU64::new(0),
            page_requests: AtomicU64::new(0),
            page_responses: AtomicU64::new(0),
            interrupts_remapped: AtomicU64::new(0),
            invalidations: std::array::from_fn(|_| AtomicU64::new(0)),
            fault_reasons: std::array::from_fn(|_| AtomicU64::new(0)),
            invalidation_waits: AtomicU64::new(0),
            queue_errors: AtomicU64::new(0),
            host_syncs: AtomicU64::new(0),
            host_map_calls: AtomicU64::new(0),
            host_unmap_calls: AtomicU64::new(0),
            host_errors: AtomicU64::new(0),
            host_nested_attaches: AtomicU64::new(0),
            host_stage1_batches: AtomicU64::new(0),
            host_stage1_invalidations: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub fn bump_fault(&self, reason: Reason) {
        self.faults.fetch_add(1, Relaxed);
        self.fault_reasons[reason.0 as usize].fetch_add(1, Relaxed);
    }

    /// One host sync of a passthrough endpoint and what it cost.
    pub(crate) fn add_host_sync(&self, s: &crate::passthrough::HostSyncStats) {
        self.host_syncs.fetch_add(1, Relaxed);
        self.host_map_calls.fetch_add(s.map_calls, Relaxed);
        self.host_unmap_calls.fetch_add(s.unmap_calls, Relaxed);
        self.host_errors.fetch_add(s.errors, Relaxed);
        self.host_nested_attaches
            .fetch_add(s.nested_attaches, Relaxed);
        self.host_stage1_batches
            .fetch_add(s.stage1_batches, Relaxed);
        self.host_stage1_invalidations
            .fetch_add(s.stage1_invalidations, Relaxed);
    }

    pub fn bump_invalidation(&self, kind: Invalidation) {
        self.invalidations[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn invalidation_count(&self, kind: Invalidation) -> u64 {
        self.invalidations[kind as usize].load(Relaxed)
    }

    /// One line of `key=value` pairs.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "translations={} identity={} iotlb_hits={} iotlb_misses={} faults={} faults_recorded={} \
             ats_failures={} \
             page_requests={} page_responses={} interrupts_remapped={} waits={} queue_errors={}",
            self.translations.load(Relaxed),
            self.identity.load(Relaxed),
            self.iotlb_hits.load(Relaxed),
            self.iotlb_misses.load(Relaxed),
            self.faults.load(Relaxed),
            self.faults_recorded.load(Relaxed),
            self.ats_failures.load(Relaxed),
            self.page_requests.load(Relaxed),
            self.page_responses.load(Relaxed),
            self.interrupts_remapped.load(Relaxed),
            self.invalidation_waits.load(Relaxed),
            self.queue_errors.load(Relaxed),
        );
        let _ = write!(
            s,
            " host_syncs={} host_map_calls={} host_unmap_calls={} host_errors={} \
             host_nested_attaches={} host_stage1_batches={} host_stage1_invalidations={}",
            self.host_syncs.load(Relaxed),
            self.host_map_calls.load(Relaxed),
            self.host_unmap_calls.load(Relaxed),
            self.host_errors.load(Relaxed),
            self.host_nested_attaches.load(Relaxed),
            self.host_stage1_batches.load(Relaxed),
            self.host_stage1_invalidations.load(Relaxed),
        );
        for kind in Invalidation::ALL {
            let _ = write!(s, " inv_{}={}", kind.name(), self.invalidation_count(kind));
        }
        for (r, c) in self.fault_reasons.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                let _ = write!(s, " fault_{r:#04x}={n}");
            }
        }
        s
    }
}
