//! Host sync of passthrough endpoints as the guest sees it: one budget per
//! invalidation batch, the unit's lock free while the host works, and a
//! wait that completes only once the host did what came before it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use super::*;
use crate::host::{HostAttachment, HostCapabilities, HostIommu, HostIommuError, HostMapping};
use crate::shadow::BatchLimits;

/// An emulated device, 00:02.0, in the same domain as the passthrough one.
const OTHER_SID: u16 = 0x0010;
const OTHER_DEVFN: u64 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    Map(u64, u64, u64),
    Unmap(u64, u64),
}

/// Records each call with the wait's status word at the time, and can be
/// made to block in its next map until told to go on.
struct SlowHost {
    mem: GuestMemoryMmap,
    calls: Mutex<Vec<(Call, u64)>>,
    /// (tell the test the map started, wait for this to go on)
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl SlowHost {
    fn new(mem: &GuestMemoryMmap) -> Arc<SlowHost> {
        Arc::new(SlowHost {
            mem: mem.clone(),
            calls: Mutex::default(),
            gate: Mutex::default(),
        })
    }
    /// The next map blocks: returns (it started, let it go on).
    fn block_next_map(&self) -> (Receiver<()>, Sender<()>) {
        let (started_tx, started_rx) = channel();
        let (go_tx, go_rx) = channel();
        *self.gate.lock().unwrap() = Some((started_tx, go_rx));
        (started_rx, go_tx)
    }
    fn take(&self) -> Vec<(Call, u64)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    fn record(&self, c: Call) {
        let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        self.calls.lock().unwrap().push((c, status));
    }
}

impl HostIommu for SlowHost {
    fn requester_id(&self) -> u16 {
        SID
    }
    fn capabilities(&self) -> HostCapabilities {
        HostCapabilities::default()
    }
    fn attach(&self, _to: HostAttachment) -> Result<(), HostIommuError> {
        Ok(())
    }
    fn shadow_map(&self, m: &[HostMapping]) -> Result<(), HostIommuError> {
        if let Some((started, go)) = self.gate.lock().unwrap().take() {
            started.send(()).unwrap();
            go.recv_timeout(Duration::from_secs(10))
                .expect("the test lets the map go on");
        }
        for m in m {
            self.record(Call::Map(m.iova, m.gpa, m.len));
        }
        Ok(())
    }
    fn shadow_unmap(&self, iova: u64, len: u64) -> Result<(), HostIommuError> {
        self.record(Call::Unmap(iova, len));
        Ok(())
    }
}

/// The legacy rig with a passthrough endpoint on 00:01.0 (shadowing its
/// three pages) and an emulated device on 00:02.0 in the same domain.
fn rig() -> (Rig, u64, Arc<SlowHost>) {
    let (r, sl) = legacy_rig();
    r.put(CTX + OTHER_DEVFN * 16, sl | 1);
    r.put(CTX + OTHER_DEVFN * 16 + 8, aw(4) | DID << 8);
    let host = SlowHost::new(&r.mem);
    r.u.add_host_endpoint(host.clone());
    assert_eq!(r.u.shadow_live_bytes(), 0x3000);
    host.take();
    (r, sl, host)
}

fn other_reads(r: &Rig, iova: u64) -> Result<u64, String> {
    r.gpa(OTHER_SID, None, iova, Access::Read)
}

/// While a wait's host sync is stuck in a map ioctl, the emulated device
/// still translates (the unit's lock is free), and the wait's status
/// write has not happened; it does once the host call returned.
#[test]
fn a_blocked_host_sync_holds_up_the_wait_but_not_other_devices() {
    let (r, sl, host) = rig();
    r.qi_enable(false);
    r.map_sl(sl, 4, 0x9000, DATA + 0x8000, R | W);
    let [a0, a1, ..] = d_iotlb(3, DID, 0x9000, 0);
    let [w0, w1, ..] = d_wait(false, Some((STATUS, 1)));
    for (i, q) in [a0, a1, w0, w1].into_iter().enumerate() {
        r.put(IQ + i as u64 * 8, q);
    }
    let (started, go) = host.block_next_map();
    let u = &r.u;
    std::thread::scope(|s| {
        let vcpu = s.spawn(|| u.mmio_write(IQT as u64, &0x20u32.to_le_bytes()));
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the sync reaches the host");
        // Not served from the IOTLB: a walk, under the unit's lock.
        assert_eq!(other_reads(&r, 0x6000), Ok(DATA + 0x1000));
        assert_eq!(other_reads(&r, 0x9000), Ok(DATA + 0x8000));
        assert_eq!(r.get(STATUS), 0, "the wait waits for the host");
        assert!(!vcpu.is_finished());
        go.send(()).unwrap();
        vcpu.join().unwrap();
    });
    assert_eq!(r.get(STATUS), 1);
    // Every host call of the batch happened before the status write.
    assert_eq!(
        host.take(),
        vec![(Call::Map(0x9000, DATA + 0x8000, 0x1000), 0)]
    );
    assert_eq!(r.u.shadow_live_bytes(), 0x4000);
}

/// A register-based invalidation syncs the host without the unit's lock
/// too, and its MMIO write returns only once the host is done.
#[test]
fn a_register_invalidation_syncs_unlocked_before_its_write_returns() {
    let (r, sl, host) = rig();
    r.map_sl(sl, 4, 0x9000, DATA + 0x8000, R | W);
    let (started, go) = host.block_next_map();
    let u = &r.u;
    std::thread::scope(|s| {
        let v = IOTLB_IVT | 2 << 60 | DID << 32;
        let vcpu = s.spawn(move || u.mmio_write(IOTLB as u64, &v.to_le_bytes()));
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the sync reaches the host");
        assert!(other_reads(&r, 0x7000).is_err(), "write-only");
        assert_eq!(other_reads(&r, 0x5000), Ok(DATA));
        assert!(!vcpu.is_finished());
        go.send(()).unwrap();
        vcpu.join().unwrap();
    });
    assert_eq!(r.u.shadow_live_bytes(), 0x4000);
}

/// One budget for the whole batch: three page-selective invalidations
/// before one wait share it (each once had a fresh one). Past it the rest
/// stays unmapped, stale areas included, the counter says so, and the
/// wait completes; the next batch has a budget of its own.
#[test]
fn a_batch_over_budget_leaves_the_rest_unmapped_and_counts_it() {
    let (r, sl, host) = rig();
    r.qi_enable(false);
    // Three ranges far apart, two runs each (the rights differ).
    let bases = [0x10_0000u64, 0x20_0000, 0x30_0000];
    for (k, &b) in bases.iter().enumerate() {
        let out = DATA + 0x10_0000 + k as u64 * 0x1_0000;
        r.map_sl(sl, 4, b, out, R | W);
        r.map_sl(sl, 4, b + 0x1000, out + 0x1000, R);
    }
    let batch = |r: &Rig| {
        let mut d: Vec<[u64; 4]> = bases.iter().map(|&b| d_iotlb(3, DID, b, 1)).collect();
        d.push(d_wait(false, Some((STATUS, 1))));
        r.put(STATUS, 0);
        r.submit(&d);
        assert_eq!(r.get(STATUS), 1, "the wait completes all the same");
    };
    // The last range was synced before and is stale now.
    r.submit(&[d_iotlb(3, DID, bases[2], 1), d_wait(false, None)]);
    assert_eq!(r.u.shadow_live_bytes(), 0x5000);
    r.map_sl(sl, 4, bases[2], DATA + 0x40_0000, R | W);
    host.take();

    r.u.set_host_batch_limits(BatchLimits {
        reads: u64::MAX,
        maps: 2,
    });
    batch(&r);
    let maps = host
        .take()
        .into_iter()
        .filter(|(c, _)| matches!(c, Call::Map(..)))
        .count();
    assert_eq!(maps, 2);
    assert_eq!(r.u.counters.host_over_budget.load(Relaxed), 1);
    // The first range is mapped; in the last one the stale page is gone
    // and only the page that still matches the tables stays.
    assert_eq!(r.u.shadow_live_bytes(), 0x3000 + 0x2000 + 0x1000);

    // A whole batch over the read budget empties what it did not read.
    r.u.set_host_batch_limits(BatchLimits {
        reads: 2,
        maps: u64::MAX,
    });
    batch(&r);
    assert_eq!(r.u.shadow_live_bytes(), 0x3000);
    assert_eq!(r.u.counters.host_over_budget.load(Relaxed), 2);

    r.u.set_host_batch_limits(BatchLimits::default());
    batch(&r);
    assert_eq!(r.u.shadow_live_bytes(), 0x3000 + 3 * 0x2000);
    assert_eq!(r.u.counters.host_over_budget.load(Relaxed), 2);
    assert_eq!(r.u.counters.host_errors.load(Relaxed), 0);
}
