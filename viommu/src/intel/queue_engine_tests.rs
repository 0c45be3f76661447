//! The queue engine under concurrent tail writes. An invalidation wait
//! drains the DMA fence with the unit unlocked (§6.5.2.8), so other vCPUs
//! can write IQT, GCMD or IQA while it is open. Whatever they do, every
//! descriptor runs exactly once and in queue order, and a wait's status
//! write happens once.
//!
//! A device holding the fence keeps the window open as long as a test
//! needs it; the rig is minimal (legacy mode, no translation) because only
//! the queue is exercised.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::counters::Invalidation;
use super::regs::*;
use super::{IntelIommu, InterruptSink, VtdConfig};
use crate::{GuestMemoryMmap, Translate};

struct Quiet;

impl InterruptSink for Quiet {
    fn send(&self, _address: u64, _data: u32) {}
}

/// Base of the invalidation queue.
const IQ: u64 = 0x10_0000;
/// Status words of the waits, 8 bytes apart.
const STATUS: u64 = 0x20_0000;

struct Rig {
    mem: GuestMemoryMmap,
    u: IntelIommu,
}

impl Rig {
    /// A legacy-mode unit with queued invalidation on, 128-bit
    /// descriptors and a queue of 4 KiB << `qs`.
    fn new(qs: u64) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let cfg = VtdConfig {
            scalable: false,
            first_stage: false,
            ..VtdConfig::default()
        };
        let u = IntelIommu::new(cfg, mem.clone(), Arc::new(Quiet)).unwrap();
        let r = Rig { mem, u };
        r.w64(IQA, IQ | qs);
        r.w32(GCMD, GCMD_QIE);
        r
    }

    fn w32(&self, off: usize, v: u32) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }
    fn w64(&self, off: usize, v: u64) {
        self.u.mmio_write(off as u64, &v.to_le_bytes());
    }
    fn r32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        self.u.mmio_read(off as u64, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.u.mmio_read(off as u64, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a 128-bit descriptor into queue slot `slot`.
    fn put(&self, slot: u64, d: [u64; 2]) {
        for (i, w) in d.iter().enumerate() {
            let at = GuestAddress(IQ + slot * 16 + i as u64 * 8);
            self.mem.write_obj(*w, at).unwrap();
        }
    }
    /// The status word of wait `k`.
    fn status(&self, k: u64) -> u32 {
        self.mem.read_obj(GuestAddress(STATUS + k * 8)).unwrap()
    }

    fn waits(&self) -> u64 {
        self.u.counters.invalidation_waits.load(Relaxed)
    }
    fn iotlb_invalidations(&self) -> u64 {
        self.u.counters.invalidation_count(Invalidation::Iotlb)
    }
}

/// The requester ID of the device whose DMA holds the waits open. The
/// waits follow global invalidations, which drain every device.
const DEVICE: u16 = 0x0008;

/// Global IOTLB invalidation.
fn d_iotlb() -> [u64; 2] {
    [2 | 1 << 4, 0]
}
/// Invalidation wait writing `k + 1` to the status word of wait `k`.
fn d_wait(k: u64) -> [u64; 2] {
    [5 | 1 << 5 | (k + 1) << 32, STATUS + k * 8]
}

/// Polls until `cond` holds; a test that never gets there fails rather
/// than hangs.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// The exact interleaving of the race: vCPU A stops at a wait and drains
/// the fence with the unit unlocked; vCPU B writes a later tail meanwhile.
/// B must not run the wait A is completing, and the descriptors after it
/// must neither be skipped nor run twice.
#[test]
fn bug_tail_write_during_a_wait_runs_each_descriptor_once() {
    let r = Rig::new(0);
    let fence = r.u.fence().unwrap().clone();
    let dma = fence.enter(DEVICE);
    r.put(0, d_iotlb());
    r.put(1, d_wait(0));
    std::thread::scope(|s| {
        let a = s.spawn(|| r.w32(IQT, 0x20));
        wait_until("A to stop at the wait", || r.r64(IQH) == 0x10);
        r.put(2, d_iotlb());
        r.put(3, d_wait(1));
        let b = s.spawn(|| r.w32(IQT, 0x40));
        // Once IQT reads back, B's write has been handled under the lock.
        wait_until("B's tail write", || r.r64(IQT) == 0x40);
        assert_eq!(r.status(0), 0, "the wait is held by the DMA in flight");
        drop(dma);
        a.join().unwrap();
        b.join().unwrap();
    });
    assert_eq!(r.waits(), 2, "each wait executed once");
    assert_eq!(r.iotlb_invalidations(), 2);
    assert_eq!((r.status(0), r.status(1)), (1, 2));
    assert_eq!(r.r64(IQH), 0x40);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.u.counters.queue_errors.load(Relaxed), 0);
}

/// Several vCPUs submitting batches (an IOTLB invalidation and a wait with
/// its own status word) and writing IQT, while a device keeps entering the
/// fence so that most waits have to drain. Tail writes are made in queue
/// order (as a guest's queue lock would), but without holding anything
/// across the MMIO write, so they land while other vCPUs' waits are open.
#[test]
fn concurrent_tail_writers_each_descriptor_once_in_order() {
    const WRITERS: u64 = 4;
    const BATCHES: u64 = 192;
    // Two 16-byte descriptors per batch: 6 KiB, so QS = 1 (8 KiB) and the
    // ring never wraps, which keeps every tail value distinct.
    let r = Rig::new(1);
    let fence = r.u.fence().unwrap().clone();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Operations overlap, so one is always in flight when a wait drains,
    // and each ends within a few hundred microseconds.
    let first = fence.enter(DEVICE);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut op = first;
            while !stop.load(Relaxed) {
                let next_op = fence.enter(DEVICE);
                std::thread::sleep(Duration::from_micros(300));
                drop(std::mem::replace(&mut op, next_op));
            }
        });
        let observer = s.spawn(|| {
            // Scanning from the newest wait down: a completed wait seen
            // first means every older one must read as completed too.
            while !stop.load(Relaxed) {
                let mut seen_done = false;
                for k in (0..BATCHES).rev() {
                    let v = r.status(k);
                    assert!(v == 0 || v as u64 == k + 1, "wait {k} wrote {v}");
                    assert!(!seen_done || v != 0, "wait {k} after a later one");
                    seen_done |= v != 0;
                }
                std::thread::yield_now();
            }
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Relaxed);
                    if k >= BATCHES {
                        break;
                    }
                    r.put(2 * k, d_iotlb());
                    r.put(2 * k + 1, d_wait(k));
                    wait_until("the previous batch's tail", || r.r64(IQT) == k * 0x20);
                    r.w32(IQT, (k as u32 + 1) * 0x20);
                })
            })
            .collect();
        let writers_ok = writers.into_iter().all(|w| w.join().is_ok());
        stop.store(true, Relaxed);
        observer.join().unwrap();
        assert!(writers_ok);
    });
    assert_eq!(r.waits(), BATCHES, "each wait executed once");
    assert_eq!(r.iotlb_invalidations(), BATCHES);
    for k in 0..BATCHES {
        assert_eq!(r.status(k) as u64, k + 1, "wait {k}");
    }
    assert_eq!(r.r64(IQH), BATCHES * 0x20);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.u.counters.queue_errors.load(Relaxed), 0);
}

/// Software disables the queue and enables it again while a wait is open
/// (the enable resets IQH, §6.5.2). The fetched wait still completes once;
/// the queue then runs from the reset head, not from the stale one.
#[test]
fn queue_reset_during_a_wait() {
    let r = Rig::new(0);
    let fence = r.u.fence().unwrap().clone();
    let dma = fence.enter(DEVICE);
    r.put(0, d_iotlb());
    r.put(1, d_wait(0));
    std::thread::scope(|s| {
        let a = s.spawn(|| r.w32(IQT, 0x20));
        wait_until("the wait", || r.r64(IQH) == 0x10);
        r.w32(GCMD, 0);
        assert_eq!(r.r32(GSTS) & GSTS_QIES, 0);
        r.w32(GCMD, GCMD_QIE);
        assert_eq!(r.r64(IQH), 0, "reset by the enable");
        r.put(0, d_wait(1));
        let b = s.spawn(|| r.w32(IQT, 0x10));
        wait_until("the new tail", || r.r64(IQT) == 0x10);
        drop(dma);
        a.join().unwrap();
        b.join().unwrap();
    });
    assert_eq!((r.status(0), r.status(1)), (1, 2));
    assert_eq!(r.waits(), 2);
    assert_eq!(r.iotlb_invalidations(), 1);
    assert_eq!(r.r64(IQH), 0x10);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
}

/// Software disables the queue while a wait is open: the wait completes
/// and IQH moves past it, so IQH == IQT as a driver polling before the
/// disable expects; nothing more runs while the queue is off.
#[test]
fn queue_disable_during_a_wait() {
    let r = Rig::new(0);
    let fence = r.u.fence().unwrap().clone();
    let dma = fence.enter(DEVICE);
    r.put(0, d_iotlb());
    r.put(1, d_wait(0));
    r.put(2, d_wait(1));
    std::thread::scope(|s| {
        let a = s.spawn(|| r.w32(IQT, 0x30));
        // IQT reads back once the write was handled: A is at the wait.
        wait_until("the wait", || r.r64(IQT) == 0x30);
        r.w32(GCMD, 0);
        drop(dma);
        a.join().unwrap();
    });
    assert_eq!((r.status(0), r.status(1)), (1, 0));
    assert_eq!(r.waits(), 1);
    assert_eq!(r.r64(IQH), 0x20);
}

/// A tail written out of range while a wait is open is an Invalidation
/// Queue Error once the engine gets to it (§6.5.2.10): the open wait
/// completes, IQH stops after it and IQERCD says why; nothing else runs.
#[test]
fn bad_tail_during_a_wait() {
    let r = Rig::new(0);
    let fence = r.u.fence().unwrap().clone();
    let dma = fence.enter(DEVICE);
    r.put(0, d_iotlb());
    r.put(1, d_wait(0));
    r.put(2, d_wait(1));
    std::thread::scope(|s| {
        let a = s.spawn(|| r.w32(IQT, 0x20));
        wait_until("the wait", || r.r64(IQH) == 0x10);
        // Beyond the 4 KiB queue.
        r.w32(IQT, 0x2000);
        drop(dma);
        a.join().unwrap();
    });
    assert_eq!((r.status(0), r.status(1)), (1, 0));
    assert_ne!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.r64(IQERCD) & 0xf, 1);
    assert_eq!(r.r64(IQH), 0x20);
    // Software repairs the tail and clears IQE: the queue resumes.
    r.w32(IQT, 0x30);
    r.w32(FSTS, FSTS_IQE);
    assert_eq!(r.r32(FSTS) & FSTS_IQE, 0);
    assert_eq!(r.status(1), 2);
    assert_eq!(r.waits(), 2);
    assert_eq!(r.r64(IQH), 0x30);
}
