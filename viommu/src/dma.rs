//! The DMA address space of one PCI endpoint.
//!
//! Devices access guest memory through [`DmaMemory`], which is vm-memory's
//! `IommuMemory` over the guest RAM with a [`DmaSpace`] as its IOMMU. When the
//! endpoint is not behind a translating IOMMU the space is disabled and
//! accesses go straight to guest physical addresses; otherwise every access is
//! translated by the IOMMU model for this endpoint's requester ID.
//!
//! The model keeps its own IOTLB (with the invalidation rules of its
//! architecture), so this layer deliberately keeps no cache of its own: a
//! translation is only valid for the access it was made for, and an
//! invalidation in the model can never leave a stale entry here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use std::sync::{Arc, Condvar, Mutex};

use vm_memory::iommu::{Error as IommuError, Iommu, IotlbIterator};
use vm_memory::{GuestAddress, IommuMemory, Iotlb, Permissions};

/// Guest RAM as mapped into the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// What a device uses to reach memory by DMA.
pub type DmaMemory = IommuMemory<GuestMemoryMmap, DmaSpace>;

/// The kind of access a DMA makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl From<Permissions> for Access {
    fn from(p: Permissions) -> Self {
        match p {
            Permissions::Write => Access::Write,
            Permissions::ReadWrite => Access::ReadWrite,
            // A request for no access at all is checked like a read.
            Permissions::Read | Permissions::No => Access::Read,
        }
    }
}

/// One contiguous piece of a translated range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub iova: u64,
    pub gpa: u64,
    pub len: u64,
}

/// Why a DMA could not be translated. The model has already recorded the
/// fault the way its architecture prescribes; this only tells the device that
/// the access must fail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    #[error("DMA to {iova:#x} (+{len}) was blocked by the IOMMU: {reason}")]
    Blocked { iova: u64, len: u64, reason: String },
    #[error("DMA range {iova:#x} (+{len}) overflows the address space")]
    Overflow { iova: u64, len: u64 },
}

/// Which device operations an IOMMU drain waits for: every one, or those
/// of some requester IDs. Vendor-neutral: each IOMMU model works out from
/// its own invalidations which requesters may have used what they removed.
///
/// Over-draining is always safe (a wait takes longer); a scope that misses
/// a requester still using a removed translation is a correctness bug, so
/// a model that cannot tell says [`FenceScope::All`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceScope {
    /// Every operation in flight, whoever started it.
    All,
    /// The operations of these requester IDs (empty: nothing to wait for).
    Requesters(BTreeSet<u16>),
}

impl Default for FenceScope {
    /// Nothing to wait for.
    fn default() -> Self {
        FenceScope::Requesters(BTreeSet::new())
    }
}

impl FenceScope {
    /// Whether a drain of this scope waits for nothing.
    pub fn is_empty(&self) -> bool {
        matches!(self, FenceScope::Requesters(s) if s.is_empty())
    }

    /// Widens the scope to everything.
    pub fn add_all(&mut self) {
        *self = FenceScope::All;
    }

    /// Adds the operations of `requester_id`.
    pub fn add(&mut self, requester_id: u16) {
        if let FenceScope::Requesters(s) = self {
            s.insert(requester_id);
        }
    }

    /// Adds everything `other` covers.
    pub fn merge(&mut self, other: FenceScope) {
        match other {
            FenceScope::All => self.add_all(),
            FenceScope::Requesters(rids) => rids.into_iter().for_each(|r| self.add(r)),
        }
    }

    pub fn contains(&self, requester_id: u16) -> bool {
        match self {
            FenceScope::All => true,
            FenceScope::Requesters(s) => s.contains(&requester_id),
        }
    }
}

/// Tracks DMA in flight so an IOMMU can wait for it (VT-d §6.5, draining
/// of requests to memory: an invalidation completes only after the
/// requests that used what it removed have drained; §6.5.2.8: a queued
/// invalidation wait completes after the invalidations before it).
///
/// Devices hold a [`DmaGuard`] for the whole of an operation that uses
/// translations (a virtio request, a DMA command), entered before the
/// first translation; the IOMMU calls [`DmaFence::drain`] without holding
/// any lock a device needs. Guards never block; only the drainer waits.
///
/// Operations are tracked by requester ID, so that a drain can be scoped
/// to the requesters an invalidation concerns ([`FenceScope`]): a busy
/// device then does not hold up the waits of another device's domain.
#[derive(Default)]
pub struct DmaFence {
    state: Mutex<FenceState>,
    idle: Condvar,
}

#[derive(Default)]
struct FenceState {
    /// Bumped by each drain: operations entered from then on carry a
    /// later epoch, and do not hold that drain up.
    epoch: u64,
    /// Operations in flight by (requester ID, epoch entered).
    inflight: BTreeMap<(u16, u64), usize>,
}

impl FenceState {
    /// Whether an operation in `scope` entered at or before `epoch` is
    /// still in flight.
    fn holds(&self, scope: &FenceScope, epoch: u64) -> bool {
        match scope {
            FenceScope::All => self.inflight.keys().any(|&(_, e)| e <= epoch),
            FenceScope::Requesters(rids) => rids
                .iter()
                .any(|&r| self.inflight.range((r, 0)..=(r, epoch)).next().is_some()),
        }
    }
}

/// An operation in flight; dropping it ends the operation.
pub struct DmaGuard {
    fence: Arc<DmaFence>,
    requester_id: u16,
    epoch: u64,
}

impl DmaFence {
    /// Starts an operation of `requester_id`.
    pub fn enter(self: &Arc<Self>, requester_id: u16) -> DmaGuard {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = st.epoch;
        *st.inflight.entry((requester_id, epoch)).or_insert(0) += 1;
        DmaGuard {
            fence: self.clone(),
            requester_id,
            epoch,
        }
    }

    /// Waits until every operation in `scope` that started before this
    /// call ended. Operations that start meanwhile do not hold it up.
    pub fn drain(&self, scope: &FenceScope) {
        if scope.is_empty() {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let target = st.epoch;
        st.epoch += 1;
        while st.holds(scope, target) {
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether `requester_id` has no operation in flight. An IOMMU that
    /// remembers what a requester translated may forget it then: every
    /// operation that used it has ended (operations enter before they
    /// translate).
    pub fn is_idle(&self, requester_id: u16) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.inflight
            .range((requester_id, 0)..=(requester_id, u64::MAX))
            .next()
            .is_none()
    }
}

impl Drop for DmaGuard {
    fn drop(&mut self) {
        let mut st = self.fence.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.requester_id, self.epoch);
        if let Some(n) = st.inflight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                st.inflight.remove(&key);
            }
        }
        self.fence.idle.notify_all();
    }
}

/// A device with an address translation cache (PCIe ATS) and page
/// request interface (PRI), as the IOMMU sees it.
pub trait AtsEndpoint: Send + Sync {
    /// The answer to a page request group (`code`: 0 success, 1 invalid
    /// request, 0xf response failure; PCIe 5.0 §10.4.2.1).
    fn page_response(&self, pasid: Option<u32>, prg_index: u16, code: u8);
    /// A device-TLB invalidation reached the device: drop cached
    /// translations (the whole cache is allowed: over-invalidation is legal).
    fn invalidate_atc(&self, pasid: Option<u32>);
}

/// One PRI page request (PCIe 5.0 §10.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub requester_id: u16,
    pub pasid: Option<u32>,
    pub address: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub privileged: bool,
    pub prg_index: u16,
    pub last: bool,
}

/// The IOMMU model's side of the seam.
pub trait Translate: Send + Sync {
    /// Translates `[iova, iova + len)` for `requester_id` (bus/dev/fn) and an
    /// optional PASID, returning pieces that cover the whole range in order.
    fn translate(
        &self,
        requester_id: u16,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<Translation>, DmaFault>;

    /// An ATS Translation Request: like `translate`, but a failure is
    /// returned to the device instead of being recorded as a fault, so the
    /// device can ask for the page with PRI.
    fn translate_ats(
        &self,
        requester_id: u16,
        pasid: Option<u32>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<Vec<Translation>, DmaFault> {
        self.translate(requester_id, pasid, iova, len, access)
    }

    /// Sends a PRI page request; the answer arrives at the endpoint
    /// registered for the requester ID. Err when the IOMMU cannot take page
    /// requests (the device then treats the access as failed).
    fn page_request(&self, _req: &PageRequest) -> Result<(), DmaFault> {
        Err(DmaFault::Blocked {
            iova: 0,
            len: 0,
            reason: "no page request interface".into(),
        })
    }

    /// Registers the device that answers page responses and device-TLB
    /// invalidations for `requester_id`.
    fn register_endpoint(&self, _requester_id: u16, _endpoint: std::sync::Weak<dyn AtsEndpoint>) {}

    /// The fence devices enter for each operation that uses translations
    /// (tagged with their requester ID, which the model drains by).
    fn fence(&self) -> Option<&Arc<DmaFence>> {
        None
    }
}

/// The DMA address space of one endpoint (and, optionally, one PASID).
#[derive(Clone)]
pub struct DmaSpace {
    requester_id: u16,
    translator: Option<Arc<dyn Translate>>,
    pasid: Option<u32>,
}

impl Debug for DmaSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaSpace")
            .field("requester_id", &format_args!("{:#06x}", self.requester_id))
            .field("translated", &self.translator.is_some())
            .finish()
    }
}

impl DmaSpace {
    /// An untranslated space: IOVA = guest physical address.
    pub fn identity(requester_id: u16) -> Self {
        DmaSpace {
            requester_id,
            translator: None,
            pasid: None,
        }
    }

    /// A space translated by an IOMMU model.
    pub fn translated(requester_id: u16, translator: Arc<dyn Translate>) -> Self {
        DmaSpace {
            requester_id,
            translator: Some(translator),
            pasid: None,
        }
    }

    /// The same endpoint, with every request tagged with `pasid`.
    pub fn with_pasid(&self, pasid: Option<u32>) -> Self {
        DmaSpace {
            pasid,
            ..self.clone()
        }
    }

    pub fn requester_id(&self) -> u16 {
        self.requester_id
    }

    pub fn pasid(&self) -> Option<u32> {
        self.pasid
    }

    /// Marks the start of an operation whose translations must stay in use
    /// until the returned guard drops (None: nothing to wait for).
    pub fn begin_dma(&self) -> Option<DmaGuard> {
        let rid = self.requester_id;
        self.translator.as_ref()?.fence().map(|f| f.enter(rid))
    }

    /// The IOMMU translating this space, if any.
    pub fn translator(&self) -> Option<&Arc<dyn Translate>> {
        self.translator.as_ref()
    }

    /// Builds the memory view a device uses for its DMA.
    pub fn into_memory(self, ram: GuestMemoryMmap) -> DmaMemory {
        let translated = self.translator.is_some();
        IommuMemory::new(ram, self, translated, ())
    }

    fn resolve(&self, iova: u64, len: u64, access: Access) -> Result<Iotlb, DmaFault> {
        if iova.checked_add(len).is_none() {
            return Err(DmaFault::Overflow { iova, len });
        }
        let mut tlb = Iotlb::new();
        match &self.translator {
            // An empty mapping would trip vm-memory's range map: a zero-length
            // access needs no translation.
            None if len == 0 => {}
            None => {
                // Never reached through IommuMemory (the space is disabled), but
                // keep the identity meaning if it is.
                let _ = tlb.set_mapping(
                    GuestAddress(iova),
                    GuestAddress(iova),
                    len as usize,
                    Permissions::ReadWrite,
                );
            }
            Some(t) => {
                let pieces = t.translate(self.requester_id, self.pasid, iova, len, access)?;
                // A translator may answer a zero-length piece (nothing to map);
                // vm-memory's range map asserts on empty ranges.
                for piece in pieces.into_iter().filter(|p| p.len != 0) {
                    let perm = match access {
                        Access::Read => Permissions::Read,
                        Access::Write => Permissions::Write,
                        Access::ReadWrite => Permissions::ReadWrite,
                    };
                    if piece.iova.checked_add(piece.len).is_none()
                        || piece.gpa.checked_add(piece.len).is_none()
                    {
                        return Err(DmaFault::Overflow { iova, len });
                    }
                    let _ = tlb.set_mapping(
                        GuestAddress(piece.iova),
                        GuestAddress(piece.gpa),
                        piece.len as usize,
                        perm,
                    );
                }
            }
        }
        Ok(tlb)
    }
}

impl Iommu for DmaSpace {
    type IotlbGuard<'a> = Box<Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let len = length as u64;
        let tlb = self
            .resolve(iova.0, len, Access::from(access))
            .map_err(|e| IommuError::CannotResolve {
                iova_range: vm_memory::iommu::IovaRange { base: iova, length },
                reason: e.to_string(),
            })?;
        Iotlb::lookup(Box::new(tlb), iova, length, access).map_err(|_| IommuError::CannotResolve {
            iova_range: vm_memory::iommu::IovaRange { base: iova, length },
            reason: "the IOMMU did not cover the whole range".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory};

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    struct Offset(u64);
    impl Translate for Offset {
        fn translate(
            &self,
            _rid: u16,
            _pasid: Option<u32>,
            iova: u64,
            len: u64,
            _access: Access,
        ) -> Result<Vec<Translation>, DmaFault> {
            if iova < 0x1000 {
                return Err(DmaFault::Blocked {
                    iova,
                    len,
                    reason: "unmapped".into(),
                });
            }
            Ok(vec![Translation {
                iova,
                gpa: iova - self.0,
                len,
            }])
        }
    }

    #[test]
    fn identity_space_reaches_guest_physical() {
        let mem = DmaSpace::identity(8).into_memory(ram());
        mem.write_obj(0xabcdu32, GuestAddress(0x100)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x100)).unwrap(), 0xabcd);
        assert!(!mem.check_range(GuestAddress(0xfff0), 0x20, Permissions::Read));
    }

    #[test]
    fn translated_space_goes_through_the_model() {
        let ram = ram();
        let mem = DmaSpace::translated(8, Arc::new(Offset(0x1000))).into_memory(ram.clone());
        mem.write_obj(0x1234u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(ram.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0x1234);
        assert!(mem.read_obj::<u32>(GuestAddress(0x10)).is_err());
    }

    /// Runs `drain(scope)` on a thread; the receiver hears when it returns.
    fn drain_in_background(
        fence: &Arc<DmaFence>,
        scope: FenceScope,
    ) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>) {
        let f2 = fence.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            f2.drain(&scope);
            let _ = tx.send(());
        });
        (t, rx)
    }

    fn rids(r: &[u16]) -> FenceScope {
        FenceScope::Requesters(r.iter().copied().collect())
    }

    #[test]
    fn fence_waits_for_operations_started_before_it() {
        let fence = Arc::new(DmaFence::default());
        let g = fence.enter(8);
        let (t, rx) = drain_in_background(&fence, FenceScope::All);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "drain must wait for the guard");
        // An operation that starts after the drain began does not hold it up.
        let _late = fence.enter(8);
        drop(g);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn scoped_drain_waits_only_for_its_requesters() {
        let fence = Arc::new(DmaFence::default());
        let busy = fence.enter(0x10);
        // Another requester's drain is not held up by 0x10.
        let (t, rx) = drain_in_background(&fence, rids(&[0x8, 0x18]));
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("a drain of other requesters returns at once");
        t.join().unwrap();
        // One that names 0x10 waits for it.
        let (t, rx) = drain_in_background(&fence, rids(&[0x8, 0x10]));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "drain must wait for 0x10");
        drop(busy);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn empty_scope_drains_nothing_and_idleness_is_per_requester() {
        let fence = Arc::new(DmaFence::default());
        let g = fence.enter(3);
        assert!(FenceScope::default().is_empty());
        fence.drain(&FenceScope::default());
        assert!(!fence.is_idle(3));
        assert!(fence.is_idle(4));
        let g2 = fence.enter(3);
        drop(g);
        assert!(!fence.is_idle(3), "a second operation is still in flight");
        drop(g2);
        assert!(fence.is_idle(3));
    }

    #[test]
    fn scope_merges() {
        let mut s = FenceScope::default();
        s.add(1);
        s.merge(rids(&[2]));
        assert_eq!(s, rids(&[1, 2]));
        assert!(s.contains(2) && !s.contains(3));
        s.merge(FenceScope::All);
        assert_eq!(s, FenceScope::All);
        s.add(9);
        assert_eq!(s, FenceScope::All, "All stays All");
        assert!(s.contains(3));
    }

    /// Answers every request with an empty piece first, then the identity.
    struct EmptyFirst;
    impl Translate for EmptyFirst {
        fn translate(
            &self,
            _rid: u16,
            _pasid: Option<u32>,
            iova: u64,
            len: u64,
            _access: Access,
        ) -> Result<Vec<Translation>, DmaFault> {
            Ok(vec![
                Translation {
                    iova,
                    gpa: iova,
                    len: 0,
                },
                Translation {
                    iova,
                    gpa: iova,
                    len,
                },
            ])
        }
    }

    #[test]
    fn empty_pieces_and_empty_accesses_are_harmless() {
        let space = DmaSpace::translated(8, Arc::new(EmptyFirst));
        assert!(space.resolve(0x100, 0, Access::Write).is_ok());
        let mem = space.into_memory(ram());
        mem.write_obj(7u32, GuestAddress(0x100)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x100)).unwrap(), 7);
        mem.write_slice(&[], GuestAddress(0x200)).unwrap();
        assert!(DmaSpace::identity(8)
            .resolve(0x100, 0, Access::Read)
            .is_ok());
    }

    #[test]
    fn overflowing_range_faults_without_panic() {
        let mem = DmaSpace::translated(8, Arc::new(Offset(0))).into_memory(ram());
        assert!(mem.read_obj::<u64>(GuestAddress(u64::MAX - 2)).is_err());
    }
}
