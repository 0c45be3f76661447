//! What the unit did, for tests and benchmarks to check that DMA really
//! went through it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Invalidations by descriptor type (1..=9) or register (index 0 = CCMD, 10 = IOTLB reg).
    pub invalidations: [AtomicU64; 16],
    /// Faults by reason code.
    pub fault_reasons: [AtomicU64; 256],
    pub invalidation_waits: AtomicU64,
    pub queue_errors: AtomicU64,
    /// Passthrough endpoints: host syncs after guest invalidation batches,
    /// shadow map/unmap requests the model made, and host errors.
    pub host_syncs: AtomicU64,
    pub host_map_calls: AtomicU64,
    pub host_unmap_calls: AtomicU64,
    pub host_errors: AtomicU64,
}

/// Names of the invalidation counters' slots.
const INVALIDATION_NAMES: [&str; 11] = [
    "ccmd",
    "cc",
    "iotlb",
    "dev_tlb",
    "iec",
    "wait",
    "p_iotlb",
    "pasid_cache",
    "p_dev_tlb",
    "page_response",
    "iotlb_reg",
];

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
        }
    }
}

impl Counters {
    pub fn bump_fault(&self, reason: u8) {
        self.faults.fetch_add(1, Relaxed);
        self.fault_reasons[reason as usize].fetch_add(1, Relaxed);
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
            " host_syncs={} host_map_calls={} host_unmap_calls={} host_errors={}",
            self.host_syncs.load(Relaxed),
            self.host_map_calls.load(Relaxed),
            self.host_unmap_calls.load(Relaxed),
            self.host_errors.load(Relaxed),
        );
        for (i, name) in INVALIDATION_NAMES.iter().enumerate() {
            let _ = write!(s, " inv_{name}={}", self.invalidations[i].load(Relaxed));
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
