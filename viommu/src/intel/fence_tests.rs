//! The DMA fence scoped to what was invalidated: an invalidation wait (or
//! a register-based invalidation) drains only the devices that may use
//! what the invalidations removed, so a busy device of one domain does not
//! hold up another domain's waits, and still holds up its own.
//!
//! A passthrough endpoint's host sync follows the same rule from the other
//! side: it holds up the wait after its invalidation, and nothing else.
//!
//! The rig is a legacy-mode unit whose devices all translate through one
//! second-stage table, each in a domain of its own (a guest may share
//! tables between domains; the IOTLB, and so the fence, goes by domain).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::regs::*;
use super::{IntelIommu, InterruptSink, VtdConfig};
use crate::host::{HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping};
use crate::{Access, DmaGuard, GuestMemoryMmap, Translate};

struct Quiet;

impl InterruptSink for Quiet {
    fn send(&self, _address: u64, _data: u32) {}
}

const ROOT: u64 = 0x1000;
const CTX: u64 = 0x2000;
const IQ: u64 = 0x8000;
const STATUS: u64 = 0xf000;
/// The shared 4-level second-stage table, one page per level.
const SL: u64 = 0x1_0000;
const DATA: u64 = 0x10_0000;
/// The one mapped page.
const IOVA: u64 = 0x5000;

/// Device A (00:01.0) in domain 1, device B (00:02.0) in domain 2, and
/// device C (00:03.0), which never translates.
const A: u16 = 0x08;
const B: u16 = 0x10;
const C: u16 = 0x18;
const DID_A: u16 = 1;
const DID_B: u16 = 2;
/// A domain no device uses.
const DID_NONE: u16 = 100;

/// How long a wait that nothing holds up may take before a test calls
/// it held up, and how long a held-up one is watched before release.
const PROMPTLY: Duration = Duration::from_secs(10);
const A_WHILE: Duration = Duration::from_millis(200);

/// Queued invalidation descriptors (128-bit).
#[derive(Clone, Copy)]
enum Desc {
    IotlbGlobal,
    IotlbDomain(u16),
    IotlbPage(u16, u64),
    ContextGlobal,
    DeviceTlb(u16),
    InterruptEntryGlobal,
}

impl Desc {
    fn encode(self) -> [u64; 2] {
        const CONTEXT: u64 = 1;
        const IOTLB: u64 = 2;
        const DEVICE_TLB: u64 = 3;
        const IEC: u64 = 4;
        const GLOBAL: u64 = 1 << 4;
        const DOMAIN: u64 = 2 << 4;
        const PAGE: u64 = 3 << 4;
        match self {
            Desc::IotlbGlobal => [IOTLB | GLOBAL, 0],
            Desc::IotlbDomain(did) => [IOTLB | DOMAIN | u64::from(did) << 16, 0],
            Desc::IotlbPage(did, addr) => [IOTLB | PAGE | u64::from(did) << 16, addr],
            Desc::ContextGlobal => [CONTEXT | GLOBAL, 0],
            Desc::DeviceTlb(sid) => [DEVICE_TLB | u64::from(sid) << 32, 0],
            Desc::InterruptEntryGlobal => [IEC, 0],
        }
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    u: IntelIommu,
    /// Byte offset of the next free queue slot.
    tail: AtomicU64,
    /// The value the next wait writes to STATUS.
    seq: AtomicU64,
}

impl Rig {
    /// Devices A and B in their domains, translation on, and queued
    /// invalidation on when `qi`.
    fn new(qi: bool) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let cfg = VtdConfig {
            scalable: false,
            first_stage: false,
            ..VtdConfig::default()
        };
        let u = IntelIommu::new(cfg, mem.clone(), Arc::new(Quiet)).unwrap();
        let r = Rig {
            mem,
            u,
            tail: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        };
        r.put(ROOT, CTX | 1);
        // PML4 -> PDPT -> PD -> PT, each at the start of the next page.
        for level in 0..3 {
            r.put(SL + level * 0x1000, (SL + (level + 1) * 0x1000) | 3);
        }
        r.put(SL + 3 * 0x1000 + (IOVA >> 12) * 8, DATA | 3);
        r.set_domain(A, DID_A);
        r.set_domain(B, DID_B);
        r.w64(RTADDR, ROOT);
        r.w32(GCMD, GCMD_SRTP);
        r.w32(GCMD, GCMD_TE);
        if qi {
            r.w64(IQA, IQ);
            r.w32(GCMD, GCMD_TE | GCMD_QIE);
        }
        r
    }

    /// Points the context entry of `sid` at the shared table, in `did`
    /// (4 levels; the caller invalidates the context cache).
    fn set_domain(&self, sid: u16, did: u16) {
        let entry = CTX + u64::from(sid & 0xff) * 16;
        self.put(entry, SL | 1);
        self.put(entry + 8, 2 | u64::from(did) << 8);
    }

    fn put(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
    fn w32(&self, off: usize, v: u32) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }
    fn w64(&self, off: usize, v: u64) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }

    /// One DMA of `sid` through the unit (a device does this inside its
    /// operation, after entering the fence).
    fn translate(&self, sid: u16) {
        let t = self.u.translate(sid, None, IOVA, 8, Access::Read).unwrap();
        assert_eq!(t[0].gpa, DATA);
    }

    /// An operation of `sid` in flight.
    fn enter(&self, sid: u16) -> DmaGuard {
        self.u.fence().expect("the unit has a fence").enter(sid)
    }

    /// Submits `descs` and a wait, as one vCPU; returns once the wait
    /// completed (the vCPU writing the tail drives the queue).
    fn submit(&self, descs: &[Desc]) {
        let seq = self.seq.fetch_add(1, Relaxed) + 1;
        let wait = [5 | 1 << 5 | seq << 32, STATUS];
        let mut t = self.tail.load(Relaxed);
        for d in descs.iter().map(|d| d.encode()).chain([wait]) {
            self.put(IQ + t, d[0]);
            self.put(IQ + t + 8, d[1]);
            t = (t + 16) % 4096;
        }
        self.tail.store(t, Relaxed);
        self.w32(IQT, t as u32);
        let status: u32 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        assert_eq!(u64::from(status), seq, "the wait completed");
    }
}

/// Runs `op` on another thread (a vCPU) while `held` are in flight.
/// Returns whether it finished within `within`; then ends the operations
/// and lets `op` finish either way, so a failing test does not hang.
fn finishes_while_held(within: Duration, held: Vec<DmaGuard>, op: impl FnOnce() + Send) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            op();
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(within).is_ok();
        drop(held);
        done
    })
}

/// The case: device A is busy (a long disk request); the guest
/// invalidates domain 2, which only device B uses, and waits. The wait
/// must not wait for A. (With a unit-wide fence it did.)
#[test]
fn busy_device_does_not_hold_up_a_wait_on_another_domain() {
    let r = Rig::new(true);
    r.translate(B);
    for d in [Desc::IotlbDomain(DID_B), Desc::IotlbPage(DID_B, IOVA)] {
        let a = r.enter(A);
        r.translate(A);
        assert!(
            finishes_while_held(PROMPTLY, vec![a], || r.submit(&[d])),
            "a wait on domain 2 waited for device A"
        );
    }
}

/// A busy device holds up a wait after an invalidation of its own domain
/// until its operation ends: what the wait guarantees is unchanged.
#[test]
fn busy_device_holds_up_a_wait_on_its_own_domain() {
    let r = Rig::new(true);
    r.translate(B);
    for d in [Desc::IotlbDomain(DID_A), Desc::IotlbPage(DID_A, IOVA)] {
        let a = r.enter(A);
        r.translate(A);
        assert!(
            !finishes_while_held(A_WHILE, vec![a], || r.submit(&[d])),
            "the wait did not wait for device A"
        );
    }
}

/// Global IOTLB and context-cache invalidations drain every device,
/// including one that never translated.
#[test]
fn global_invalidations_drain_every_device() {
    let r = Rig::new(true);
    for d in [Desc::IotlbGlobal, Desc::ContextGlobal] {
        for sid in [A, C] {
            let busy = r.enter(sid);
            r.translate(B);
            assert!(
                !finishes_while_held(A_WHILE, vec![busy], || r.submit(&[d])),
                "a global invalidation did not wait for {sid:#x}"
            );
        }
    }
}

/// A wait after no invalidation, or after one that no DMA uses (interrupt
/// entries), drains nothing; a device-TLB invalidation drains its device
/// only.
#[test]
fn scope_of_waits_device_tlb_and_interrupt_entries() {
    let r = Rig::new(true);
    let a = r.enter(A);
    r.translate(A);
    assert!(finishes_while_held(PROMPTLY, vec![a], || r.submit(&[])));
    let a = r.enter(A);
    r.translate(A);
    assert!(finishes_while_held(PROMPTLY, vec![a], || {
        r.submit(&[Desc::InterruptEntryGlobal, Desc::DeviceTlb(B)])
    }));
    let a = r.enter(A);
    assert!(!finishes_while_held(A_WHILE, vec![a], || {
        r.submit(&[Desc::DeviceTlb(A)])
    }));
}

/// A device that translated under more domains than the unit remembers,
/// while busy, counts as using any domain: an invalidation of a domain it
/// never used drains it too.
#[test]
fn too_many_domains_fall_back_to_draining_the_device() {
    let r = Rig::new(true);
    let per_device = super::domain_users::DOMAINS_PER_REQUESTER as u16;
    // Idle, A translates under as many domains as are remembered.
    for did in 1..=per_device {
        r.set_domain(A, did);
        r.submit(&[Desc::ContextGlobal]);
        r.translate(A);
    }
    r.set_domain(A, per_device + 1);
    r.submit(&[Desc::ContextGlobal]);
    // Busy, A is still known to use only those.
    let busy = r.enter(A);
    assert!(
        finishes_while_held(PROMPTLY, vec![busy], || r
            .submit(&[Desc::IotlbDomain(DID_NONE)])),
        "A's domains fit"
    );
    // One more while busy: A may now use any domain.
    let busy = r.enter(A);
    r.translate(A);
    assert!(
        !finishes_while_held(A_WHILE, vec![busy], || {
            r.submit(&[Desc::IotlbDomain(DID_NONE)])
        }),
        "the overflowed device was not drained"
    );
}

/// A register-based IOTLB invalidation completes only once the DMA of the
/// domain's devices drained, and does not wait for other domains' DMA.
#[test]
fn register_based_invalidation_drains_its_domain() {
    let r = Rig::new(false);
    r.translate(B);
    let domain = |did: u16| IOTLB_IVT | 2 << 60 | u64::from(did) << 32;
    let a = r.enter(A);
    r.translate(A);
    assert!(finishes_while_held(PROMPTLY, vec![a], || {
        r.w64(IOTLB, domain(DID_B))
    }));
    let a = r.enter(A);
    r.translate(A);
    assert!(!finishes_while_held(A_WHILE, vec![a], || {
        r.w64(IOTLB, domain(DID_A))
    }));
    let mut v = [0u8; 8];
    r.u.mmio_read(IOTLB as u64, &mut v);
    assert_eq!(u64::from_le_bytes(v) & IOTLB_IVT, 0, "done");
}

/// A passthrough endpoint's host whose calls take as long as a test keeps
/// its gate shut (a slow map ioctl).
#[derive(Default)]
struct SlowHost {
    shut: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    calls: AtomicU64,
}

impl SlowHost {
    fn gate(&self, shut: bool) {
        *self.shut.lock().unwrap() = shut;
        self.opened.notify_all();
    }

    fn call(&self) -> Result<(), HostIommuError> {
        self.calls.fetch_add(1, Relaxed);
        let mut shut = self.shut.lock().unwrap();
        while *shut {
            shut = self.opened.wait(shut).unwrap();
        }
        Ok(())
    }
}

impl HostIommu for SlowHost {
    fn requester_id(&self) -> u16 {
        C
    }
    fn capabilities(&self) -> HostCapabilities {
        HostCapabilities::default()
    }
    fn attach(&self, _: HostAttachment) -> Result<(), HostIommuError> {
        self.call()
    }
    fn shadow_map(&self, _: &[HostMapping]) -> Result<(), HostIommuError> {
        self.call()
    }
    fn shadow_unmap(&self, _: u64, _: u64) -> Result<(), HostIommuError> {
        self.call()
    }
}

/// A host sync runs outside the unit's lock: while the host is slow to
/// follow an invalidation of the passthrough device's domain, other
/// devices translate and the registers answer, and the guest's wait
/// completes only once the host call is done.
#[test]
fn a_slow_host_sync_holds_up_its_wait_and_nothing_else() {
    const DID_C: u16 = 3;
    let r = Rig::new(true);
    r.set_domain(C, DID_C);
    r.submit(&[Desc::ContextGlobal]);
    let host = Arc::new(SlowHost::default());
    r.u.add_host_endpoint(host.clone());
    let before = host.calls.load(Relaxed);
    assert!(before > 0, "the endpoint was synced when it was added");
    // The guest maps a second page and invalidates the domain; the host
    // takes its time with the map.
    r.put(
        SL + 3 * 0x1000 + ((IOVA >> 12) + 1) * 8,
        (DATA + 0x1000) | 3,
    );
    host.gate(true);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| r.submit(&[Desc::IotlbDomain(DID_C)]));
        let started = std::time::Instant::now();
        while host.calls.load(Relaxed) == before && started.elapsed() < PROMPTLY {
            std::thread::sleep(Duration::from_millis(1));
        }
        let in_host_call = host.calls.load(Relaxed) > before;
        let (tx, rx) = mpsc::channel();
        let rig = &r;
        let other = s.spawn(move || {
            rig.translate(A);
            let mut v = [0u8; 4];
            rig.u.mmio_read(FSTS as u64, &mut v);
            let _ = tx.send(());
        });
        let others_went_on = in_host_call && rx.recv_timeout(PROMPTLY).is_ok();
        let wait_done_early = waiter.is_finished();
        // Opened before the verdicts, so that a failing run ends.
        host.gate(false);
        waiter.join().unwrap();
        other.join().unwrap();
        assert!(in_host_call, "the invalidation reached the host");
        assert!(others_went_on, "a translation waited for the host call");
        assert!(!wait_done_early, "the wait completed before the host sync");
    });
}
