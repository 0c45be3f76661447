//! What one guest batch may cost the host.
//!
//! A batch is what the guest asks for before it waits: the invalidations
//! before one invalidation wait (§6.5.2.8), the ones a queue pass runs
//! when no wait ends it, or one register-based invalidation (§6.5.1). All
//! ranges and all passthrough endpoints a batch touches share one
//! [`SyncBudget`]: guest tables are untrusted, and without a shared bound
//! one batch of 4096 page invalidations over tables that alias one small
//! table everywhere would read and map 4096 times what one range may.
//!
//! Past the budget the rest of the batch fails closed: what was not read
//! or not mapped stays unmapped on the host, so the device faults in the
//! host IOMMU instead of using a mapping the guest may have removed. The
//! guest repairs it by invalidating again (the next batch has a budget of
//! its own); a Linux guest never gets there (see the defaults).

/// Default for [`BatchLimits::reads`]: 2^26 second-stage entries, a few
/// hundred milliseconds of reading at worst. A strict-mode Linux guest
/// invalidates a few pages per batch (tens of entries: one walk from the
/// top per page); a lazy-mode one flushes its whole domain every 10 ms or
/// 256 unmaps, which re-reads the live tables of the domain; a domain
/// mapping all of a 1 TiB guest with 2 MiB pages has ~2^19 leaf entries,
/// one mapping it with 4 KiB pages 2^28 (a guest running its own VFIO
/// driver on 4 KiB pages; a full flush of that degrades, a 256 GiB one
/// does not).
pub const DEFAULT_BATCH_READS: u64 = 1 << 26;

/// Default for [`BatchLimits::maps`]: 2^20 map calls (each one ioctl, a
/// few microseconds, so seconds at worst). Unchanged areas cost nothing,
/// so a batch maps only what the guest changed: a handful of runs in
/// strict mode, at most 256 per CPU in lazy mode. Even re-mapping all of a
/// 1 TiB guest with 2 MiB pages (after a table switch) where no two pages
/// coalesce is 2^19 calls.
pub const DEFAULT_BATCH_MAPS: u64 = 1 << 20;

/// The cost one batch may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Second-stage entries read, over all ranges and endpoints.
    pub reads: u64,
    /// Map calls (host ioctls), over all ranges and endpoints. Unmaps are
    /// not limited: they are how the space fails closed, and each removes
    /// areas an earlier map (bounded by `max_areas`) installed.
    pub maps: u64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            reads: DEFAULT_BATCH_READS,
            maps: DEFAULT_BATCH_MAPS,
        }
    }
}

/// Which budget of a batch ran out first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    Reads,
    Maps,
}

/// What a sync does with the maps it still has after a host error other
/// than "not RAM".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnHostError {
    /// Stop mapping for the rest of the sync (unmaps still go): a host
    /// that failed once is likely to fail every call, and each costs an
    /// ioctl.
    StopMapping,
    /// Map whatever does not depend on the failed call.
    CarryOn,
}

/// What a map may do now, see [`SyncBudget::may_map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapGate {
    Go,
    OverBudget,
    AfterHostError,
}

/// The budget of one batch, spent by every sync of it.
#[derive(Debug)]
pub struct SyncBudget {
    reads_left: u64,
    maps_left: u64,
    exhausted: Option<Exhausted>,
    on_error: OnHostError,
    /// A host error (not "not RAM") happened in the current endpoint's sync.
    host_failed: bool,
}

impl SyncBudget {
    pub fn new(limits: BatchLimits) -> Self {
        SyncBudget {
            reads_left: limits.reads,
            maps_left: limits.maps,
            exhausted: None,
            on_error: OnHostError::StopMapping,
            host_failed: false,
        }
    }

    /// No limit, carrying on after errors: for syncs whose caller already
    /// bounds the input (an explicit list of mappings).
    pub fn unlimited() -> Self {
        SyncBudget {
            on_error: OnHostError::CarryOn,
            ..Self::new(BatchLimits {
                reads: u64::MAX,
                maps: u64::MAX,
            })
        }
    }

    pub fn reads_left(&self) -> u64 {
        self.reads_left
    }

    pub fn maps_left(&self) -> u64 {
        self.maps_left
    }

    /// What ran out first, if anything did.
    pub fn exhausted(&self) -> Option<Exhausted> {
        self.exhausted
    }

    /// `n` entries were read (at most what was left).
    pub(crate) fn spend_reads(&mut self, n: u64) {
        self.reads_left = self.reads_left.saturating_sub(n);
        if self.reads_left == 0 {
            self.exhausted.get_or_insert(Exhausted::Reads);
        }
    }

    /// Whether a map call may be made now; `Go` spends one.
    pub(crate) fn may_map(&mut self) -> MapGate {
        if self.host_failed && self.on_error == OnHostError::StopMapping {
            return MapGate::AfterHostError;
        }
        if self.maps_left == 0 {
            self.exhausted.get_or_insert(Exhausted::Maps);
            return MapGate::OverBudget;
        }
        self.maps_left -= 1;
        MapGate::Go
    }

    pub(crate) fn host_error(&mut self) {
        self.host_failed = true;
    }

    /// The next endpoint's sync starts: another host, so an error of the
    /// previous one does not stop its maps. The budget stays shared.
    pub fn next_endpoint(&mut self) {
        self.host_failed = false;
    }
}
