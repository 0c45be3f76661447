//! A deterministic fuzz driver for the unit with company: passthrough
//! endpoints whose host IOMMU follows the guest (the shadow and bypass
//! paths of [`super::passthrough`]) and devices with a device TLB and page
//! requests ([`crate::AtsEndpoint`]), all under random guest behaviour.
//!
//! The plain driver ([`super::fuzz`]) has neither, so the host sync after
//! invalidations, device-TLB invalidations and page group responses never
//! leave the unit there. Here they reach fakes that check what the host
//! contract of [`HostIommu`] promises: mappings are page aligned, grant
//! something, lie in guest RAM and never overlap; an unmap covers whole
//! mappings; and what the unit believes the host maps is what it maps.
//! The endpoints call back into the unit from their callbacks, as a
//! device re-fetching a translation would, which must not deadlock.
//!
//! The same input always does the same thing. Used by `cargo fuzz`
//! (`fuzz/fuzz_targets/vtd_host.rs`) and the CI smoke test
//! (`viommu/tests/fuzz_smoke_host.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::fuzz_rig::*;
use super::regs::*;
use super::{IntelIommu, PassthroughMode};
use crate::host::{
    HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping, Stage1Invalidation,
};
use crate::{Access, AtsEndpoint, GuestMemoryMmap, PageRequest, Translate};

/// Operations per input at most, so every input ends quickly.
pub const MAX_OPS: usize = 384;

#[derive(Default)]
struct HostState {
    live: BTreeMap<u64, HostMapping>,
    /// The sum of the lengths in `live`, kept as it changes: summing it
    /// after every operation cost more than the rest of a run once the
    /// guest had aliased its tables into a few hundred MiB of mappings.
    live_bytes: u64,
    attached: Option<HostAttachment>,
}

/// A host IOMMU that checks every call against the contract and keeps the
/// mappings it was given.
struct CheckingHost {
    rid: u16,
    mem: GuestMemoryMmap,
    state: Mutex<HostState>,
    /// Fail every n-th map (0: never), to exercise recovery.
    fail_every: u64,
    calls: AtomicU64,
    failed: AtomicBool,
    /// The host nests: first-stage tables take the nested path.
    nesting: bool,
}

impl CheckingHost {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.mem.find_region(GuestAddress(gpa)).is_some_and(|r| {
            gpa.checked_add(len - 1)
                .is_some_and(|last| last <= r.last_addr().raw_value())
        })
    }
    fn live_bytes(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live_bytes
    }
    fn attached(&self) -> Option<HostAttachment> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attached
    }
    fn injected(&self, op: &'static str) -> Result<(), HostIommuError> {
        let n = self.calls.fetch_add(1, Relaxed) + 1;
        if self.fail_every != 0 && n.is_multiple_of(self.fail_every) {
            self.failed.store(true, Relaxed);
            return Err(HostIommuError::Host {
                op,
                reason: "injected".into(),
            });
        }
        Ok(())
    }
}

impl HostIommu for CheckingHost {
    fn requester_id(&self) -> u16 {
        self.rid
    }
    fn capabilities(&self) -> HostCapabilities {
        HostCapabilities {
            nesting: self.nesting,
            ..Default::default()
        }
    }
    fn attach(&self, to: HostAttachment) -> Result<(), HostIommuError> {
        self.injected("attach")?;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attached = Some(to);
        Ok(())
    }
    fn invalidate_stage1(&self, batch: &[Stage1Invalidation]) -> Result<usize, HostIommuError> {
        self.injected("invalidate_stage1")?;
        assert!(
            self.nesting,
            "stage-1 invalidation on a host without nesting"
        );
        assert!(!batch.is_empty(), "empty invalidation batch");
        assert!(batch.len() <= 4096, "unbounded batch: {}", batch.len());
        assert!(
            matches!(self.attached(), Some(HostAttachment::Nested(_))),
            "stage-1 invalidation while not nested"
        );
        for i in batch {
            assert_eq!(i.addr & 0xfff, 0, "unaligned invalidation {i:x?}");
            assert!(i.npages > 0, "empty invalidation {i:x?}");
            // What the host computes as the last byte must not wrap.
            assert!(
                i.npages == u64::MAX && i.addr == 0 || i.npages < 1 << 52,
                "invalidation past the address space {i:x?}"
            );
        }
        Ok(batch.len())
    }
    fn shadow_map(&self, mappings: &[HostMapping]) -> Result<(), HostIommuError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for m in mappings {
            assert!(m.len > 0, "empty map {m:x?}");
            assert_eq!((m.iova | m.gpa | m.len) & 0xfff, 0, "unaligned map {m:x?}");
            assert!(m.perm.read || m.perm.write, "map granting nothing {m:x?}");
            let end = m.iova.checked_add(m.len).expect("map wraps");
            if let Some((_, a)) = s.live.range(..end).next_back() {
                assert!(a.iova + a.len <= m.iova, "map {m:x?} overlaps {a:x?}");
            }
            if !self.is_ram(m.gpa, m.len) {
                return Err(HostIommuError::NotRam {
                    gpa: m.gpa,
                    len: m.len,
                });
            }
            self.injected("map")?;
            s.live.insert(m.iova, *m);
            s.live_bytes += m.len;
        }
        Ok(())
    }
    fn shadow_unmap(&self, iova: u64, len: u64) -> Result<(), HostIommuError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            len > 0 && (iova | len) & 0xfff == 0,
            "bad unmap {iova:#x}+{len:#x}"
        );
        let end = iova.checked_add(len).expect("unmap wraps");
        if let Some((_, a)) = s.live.range(..iova).next_back() {
            assert!(
                a.iova + a.len <= iova,
                "unmap {iova:#x}+{len:#x} splits {a:x?}"
            );
        }
        let keys: Vec<u64> = s.live.range(iova..end).map(|(&k, _)| k).collect();
        for k in &keys {
            let a = s.live[k];
            assert!(
                a.iova + a.len <= end,
                "unmap {iova:#x}+{len:#x} splits {a:x?}"
            );
        }
        self.injected("unmap")?;
        for k in keys {
            if let Some(a) = s.live.remove(&k) {
                s.live_bytes -= a.len;
            }
        }
        Ok(())
    }
}

/// A device with a device TLB: counts what reaches it and, like a device
/// re-fetching after an invalidation, asks the unit again from inside the
/// callback.
struct Device {
    rid: u16,
    unit: Weak<IntelIommu>,
    invalidations: AtomicU64,
    responses: AtomicU64,
}

impl AtsEndpoint for Device {
    fn page_response(&self, pasid: Option<u32>, prg_index: u16, _code: u8) {
        self.responses.fetch_add(1, Relaxed);
        if let Some(u) = self.unit.upgrade() {
            let iova = u64::from(prg_index % 64) << 12;
            let _ = u.translate_ats(self.rid, pasid, iova, 0x1000, Access::Read);
        }
    }
    fn invalidate_atc(&self, pasid: Option<u32>) {
        self.invalidations.fetch_add(1, Relaxed);
        if let Some(u) = self.unit.upgrade() {
            let _ = u.translate_ats(self.rid, pasid, 0, 0x2000, Access::ReadWrite);
        }
    }
}

/// What one run reached, for the smoke test to check that inputs get deep.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reach {
    pub shadow: u64,
    pub bypass: u64,
    pub blocked: u64,
    pub host_mapped_bytes: u64,
    pub atc_invalidations: u64,
    pub page_responses: u64,
}

/// Runs one input. Never panics unless the model has a bug.
pub fn run(data: &[u8]) {
    run_reach(data);
}

/// [`run`], returning what the run reached.
pub fn run_reach(data: &[u8]) -> Reach {
    let mut inp = Input::new(data);
    let cfg = inp.config();
    let setup = inp.u8();
    let mut reach = Reach::default();
    let Some(mem) = PooledMemory::new(MEM_SIZE) else {
        return reach;
    };
    let u = Arc::new(
        IntelIommu::new(cfg, mem.clone(), Arc::new(Quiet)).expect("a valid configuration"),
    );
    let rig = Rig { u: &u, mem: &mem };
    if setup & 0x80 == 0 {
        rig.prebuild(&cfg);
    }
    // Passthrough endpoints: 00:00.1 (second stage in both modes), and
    // 00:00.3 (pass-through in legacy mode) or any device.
    let rids = [1, if setup & 1 == 0 { 3 } else { inp.sid() }];
    let fail_every = if setup & 6 == 6 {
        3 + u64::from(inp.u8() % 16)
    } else {
        0
    };
    let hosts: Vec<Arc<CheckingHost>> = rids
        .iter()
        .take(1 + usize::from(setup >> 3 & 1))
        .map(|&rid| {
            Arc::new(CheckingHost {
                rid,
                mem: mem.clone(),
                state: Mutex::default(),
                fail_every,
                calls: AtomicU64::new(0),
                failed: AtomicBool::new(false),
                nesting: setup & 0x20 != 0,
            })
        })
        .collect();
    // Endpoints are registered before or after the hosts, some for the
    // same devices.
    let mut devices = Vec::new();
    let register = |devices: &mut Vec<Arc<Device>>, rid: u16| {
        let d = Arc::new(Device {
            rid,
            unit: Arc::downgrade(&u),
            invalidations: AtomicU64::new(0),
            responses: AtomicU64::new(0),
        });
        let weak: Weak<dyn AtsEndpoint> = Arc::downgrade(&d) as Weak<dyn AtsEndpoint>;
        u.register_endpoint(rid, weak);
        devices.push(d);
    };
    if setup & 0x10 != 0 {
        register(&mut devices, 1);
    }
    // Shadow walks bounded well below the defaults (2^26 entries per
    // sync): an input of aliased tables then costs milliseconds, not a
    // second, and reaches the budget's edges (truncated walks).
    for h in &hosts {
        u.add_host_endpoint_limited(h.clone(), 1 << 16, 1 << 12);
        check(&u, &hosts);
    }
    register(&mut devices, 2);
    register(&mut devices, 5);

    let mut ops = 0;
    while !inp.done() && ops < MAX_OPS {
        step(&rig, &mut inp, &mut devices, &register);
        check(&u, &hosts);
        ops += 1;
    }
    for (_, mode, entered) in u.passthrough_modes() {
        let _ = mode;
        reach.bypass += entered[PassthroughMode::Bypass as usize];
        reach.shadow += entered[PassthroughMode::Shadow as usize];
        reach.blocked += entered[PassthroughMode::Blocked as usize];
    }
    reach.host_mapped_bytes = hosts.iter().map(|h| h.live_bytes()).sum();
    for d in &devices {
        reach.atc_invalidations += d.invalidations.load(Relaxed);
        reach.page_responses += d.responses.load(Relaxed);
    }
    reach
}

/// What the unit believes about the hosts is what the hosts have, unless
/// a host call failed (the unit then knows it is out of step).
fn check(u: &IntelIommu, hosts: &[Arc<CheckingHost>]) {
    if hosts.iter().any(|h| h.failed.load(Relaxed)) {
        return;
    }
    let live: u64 = hosts.iter().map(|h| h.live_bytes()).sum();
    assert_eq!(u.shadow_live_bytes(), live, "shadow bookkeeping = host");
    for ((rid, mode, _), h) in u.passthrough_modes().into_iter().zip(hosts) {
        assert_eq!(rid, h.rid);
        match mode {
            Some(PassthroughMode::Bypass) => {
                assert_eq!(h.attached(), Some(HostAttachment::Bypass), "{rid:#x}");
                assert_eq!(h.live_bytes(), 0, "{rid:#x}: bypass with a shadow");
            }
            Some(PassthroughMode::Blocked) => {
                assert_eq!(h.attached(), Some(HostAttachment::Shadow), "{rid:#x}");
                assert_eq!(h.live_bytes(), 0, "{rid:#x}: blocked with mappings");
            }
            Some(PassthroughMode::Shadow) => {
                assert_eq!(h.attached(), Some(HostAttachment::Shadow), "{rid:#x}");
            }
            Some(PassthroughMode::Nested) => {
                assert!(h.nesting, "{rid:#x}: nested on a host without nesting");
                assert!(
                    matches!(h.attached(), Some(HostAttachment::Nested(_))),
                    "{rid:#x}"
                );
                assert_eq!(h.live_bytes(), 0, "{rid:#x}: nested with a shadow");
            }
            None => {}
        }
    }
}

fn step(
    rig: &Rig,
    inp: &mut Input,
    devices: &mut Vec<Arc<Device>>,
    register: &impl Fn(&mut Vec<Arc<Device>>, u16),
) {
    match inp.u8() % 16 {
        // An entry-like value into a table (without invalidating).
        0..=2 => {
            let slot = inp.slot();
            let v = inp.word();
            rig.put(slot, v);
        }
        // A leaf of the prebuilt second-stage table changes, as a guest
        // map or unmap does.
        3 => {
            let leaf = TABLES + 0x3000 + u64::from(inp.u8() % 64) * 8;
            let v = match inp.u8() % 4 {
                0 => 0,
                1 => (DATA + u64::from(inp.u8()) * 0x1000) | 1,
                2 => (DATA + u64::from(inp.u8()) * 0x1000) | 3,
                _ => inp.word(),
            };
            rig.put(leaf, v);
        }
        // Descriptors, alone or in a batch closed by a wait.
        4..=6 => {
            for _ in 0..1 + inp.u8() % 4 {
                rig.submit(Rig::make_descriptor(inp));
            }
            if inp.u8() & 1 == 0 {
                rig.submit([5 | 1 << 5 | 1 << 32, STATUS, 0, 0]);
            }
        }
        // Register-based invalidation (context and IOTLB commands).
        7 => {
            let g = u64::from(inp.u8() % 4);
            if inp.u8() & 1 == 0 {
                rig.w64(CCMD, 1 << 63 | g << 61 | u64::from(inp.u16()));
            } else {
                rig.w64(
                    IVA,
                    u64::from(inp.u8() % 64) << 12 | u64::from(inp.u8() % 10),
                );
                rig.w64(IOTLB, 1 << 63 | g << 60 | u64::from(inp.u8() % 4) << 32);
            }
        }
        8 => {
            let bits = [GCMD_TE, GCMD_SRTP, GCMD_QIE][inp.u8() as usize % 3];
            let on = inp.u8() & 3 != 0;
            rig.command(bits, on);
        }
        9 => {
            let reg = [RTADDR, IQA, IQT, IQH, GCMD, FSTS][inp.u8() as usize % 6];
            let v = inp.word();
            rig.w64(reg, v);
        }
        10 => {
            let (sid, pasid, iova, len, access) = (
                inp.sid(),
                inp.pasid(),
                inp.iova(),
                inp.dma_len(),
                inp.access(),
            );
            if let Ok(v) = rig.u.translate(sid, pasid, iova, len, access) {
                check_pieces(&v, iova, len);
            }
        }
        11 => {
            let (sid, pasid, iova, len, access) = (
                inp.sid(),
                inp.pasid(),
                inp.iova(),
                inp.dma_len(),
                inp.access(),
            );
            if let Ok(v) = rig.u.translate_ats(sid, pasid, iova, len, access) {
                check_pieces(&v, iova, len);
            }
        }
        12 => {
            let flags = inp.u8();
            let req = PageRequest {
                requester_id: [1, 2, 5][inp.u8() as usize % 3],
                pasid: inp.pasid(),
                address: inp.iova(),
                read: flags & 1 != 0,
                write: flags & 2 != 0,
                exec: flags & 4 != 0,
                privileged: flags & 8 != 0,
                prg_index: u16::from(inp.u8() % 8),
                last: flags & 16 != 0,
            };
            let _ = rig.u.page_request(&req);
        }
        // Devices come and go: a dropped one must not be reached.
        13 => {
            if inp.u8() & 1 == 0 && !devices.is_empty() {
                let i = inp.u8() as usize % devices.len();
                devices.remove(i);
            } else if devices.len() < 6 {
                register(devices, [1, 2, 3, 5][inp.u8() as usize % 4]);
            }
        }
        14 => rig.service_faults(),
        // Bytes anywhere in guest memory.
        _ => {
            let addr = u64::from(inp.u32()) % MEM_SIZE;
            let n = usize::from(inp.u8() % 33);
            let bytes = inp.bytes(n);
            let _ = rig.mem.write_slice(bytes, GuestAddress(addr));
        }
    }
}
