//! A fuzz driver for concurrent use of one unit: several vCPUs submitting
//! invalidation descriptors and moving IQT, toggling queued invalidation
//! and servicing faults, while devices translate (inside the DMA fence, as
//! the block device does) and send page requests.
//!
//! The input is a configuration, then records of operations; each record
//! names the thread it belongs to, so the input splits into one operation
//! stream per thread. The streams are fixed by the input; only their
//! interleaving is up to the scheduler, which makes the driver
//! deterministic enough to replay a crash most of the time (the smoke test
//! runs each input once; a crash found by `cargo fuzz` reproduces with a
//! few runs of the artifact).
//!
//! Properties: nothing panics or deadlocks (each run ends, or the fuzzer's
//! timeout reports a hang), and once every thread is done a tail write
//! runs the queue to its tail unless the queue stopped on an error, with
//! a final invalidation wait completing.
//!
//! Used by `cargo fuzz` (`fuzz/fuzz_targets/vtd_threads.rs`) and the CI
//! smoke test (`viommu/tests/fuzz_smoke_threads.rs`).

use std::sync::{Arc, Barrier};

use vm_memory::GuestAddress;

use super::fuzz_rig::*;
use super::regs::*;
use super::IntelIommu;
use crate::{GuestMemoryMmap, PageRequest, Translate};

/// Submitting threads (the vCPUs).
pub const SUBMITTERS: usize = 2;
/// Translating threads (the devices).
pub const TRANSLATORS: usize = 1;
/// Operations per thread at most.
pub const MAX_OPS: usize = 96;

/// One thread's share of the input.
struct Stream {
    bytes: Vec<u8>,
}

/// Runs one input. Never panics unless the model has a bug.
pub fn run(data: &[u8]) {
    run_counted(data);
}

/// [`run`], returning how many descriptors the unit ran (for checking that
/// the threads really submit).
pub fn run_counted(data: &[u8]) -> u64 {
    let mut inp = Input::new(data);
    let cfg = inp.config();
    let setup = inp.u8();
    // Records of up to 24 bytes: a header byte (thread and length), then
    // the operation.
    let mut streams: Vec<Stream> = (0..SUBMITTERS + TRANSLATORS)
        .map(|_| Stream { bytes: Vec::new() })
        .collect();
    while !inp.done() {
        let h = inp.u8();
        let n = usize::from(h >> 3) + 1;
        let t = usize::from(h & 7) % streams.len();
        streams[t].bytes.extend_from_slice(inp.bytes(n));
    }
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]) else {
        return 0;
    };
    let u = Arc::new(
        IntelIommu::new(cfg, mem.clone(), Arc::new(Quiet)).expect("a valid configuration"),
    );
    let rig = Rig { u: &u, mem: &mem };
    rig.prebuild(&cfg);
    if setup & 1 != 0 {
        // A bigger ring, so that tails race over more slots.
        rig.command(GCMD_QIE, false);
        rig.w64(IQT, 0);
        rig.w64(IQA, IQ | u64::from(cfg.scalable) << 11 | 1);
        rig.command(GCMD_QIE, true);
    }
    let start = Barrier::new(streams.len());
    std::thread::scope(|s| {
        for (i, st) in streams.iter().enumerate() {
            let (u, mem, start) = (&*u, &mem, &start);
            s.spawn(move || {
                let rig = Rig { u, mem };
                let mut inp = Input::new(&st.bytes);
                start.wait();
                let mut ops = 0;
                while !inp.done() && ops < MAX_OPS {
                    if i < SUBMITTERS {
                        submitter_step(&rig, &mut inp);
                    } else {
                        translator_step(&rig, &mut inp);
                    }
                    ops += 1;
                }
            });
        }
    });
    settle(&rig);
    u.counters
        .invalidations
        .iter()
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

fn submitter_step(rig: &Rig, inp: &mut Input) {
    match inp.u8() % 12 {
        0..=5 => rig.submit(Rig::make_descriptor(inp)),
        // A wait of its own, as a driver's invalidate-and-wait does.
        6 | 7 => {
            rig.submit(Rig::make_descriptor(inp));
            rig.submit([5 | 1 << 5 | 1 << 32, STATUS, 0, 0]);
        }
        8 => rig.service_faults(),
        9 => {
            let on = inp.u8() & 3 != 0;
            rig.command(GCMD_QIE, on);
        }
        10 => {
            // A tail write of any value (misaligned, past the ring).
            let v = u64::from(inp.u16()) << 4;
            rig.w64(IQT, v);
        }
        _ => {
            let slot = inp.slot();
            let v = inp.word();
            rig.put(slot, v);
        }
    }
}

fn translator_step(rig: &Rig, inp: &mut Input) {
    let sid = inp.sid();
    let pasid = inp.pasid();
    let iova = inp.iova();
    let len = inp.dma_len();
    let access = inp.access();
    match inp.u8() % 4 {
        0 | 1 => {
            // Inside the fence: an invalidation wait waits for this.
            let _guard = rig.u.fence().map(|f| f.enter(sid));
            if let Ok(v) = rig.u.translate(sid, pasid, iova, len, access) {
                check_pieces(&v, iova, len);
            }
        }
        2 => {
            if let Ok(v) = rig.u.translate_ats(sid, pasid, iova, len, access) {
                check_pieces(&v, iova, len);
            }
        }
        _ => {
            let req = PageRequest {
                requester_id: sid,
                pasid,
                address: iova,
                read: true,
                write: len & 1 != 0,
                exec: false,
                privileged: false,
                prg_index: (len % 8) as u16,
                last: true,
            };
            let _ = rig.u.page_request(&req);
        }
    }
}

/// Once the threads are done: a tail write runs the queue to its tail
/// (unless it stopped on an error), and a wait appended then completes.
fn settle(rig: &Rig) {
    let enabled = || rig.r32(GSTS) & GSTS_QIES != 0;
    let stopped = || rig.r32(FSTS) & FSTS_IQE != 0;
    let tail = rig.r64(IQT);
    rig.w64(IQT, tail);
    if !enabled() || stopped() {
        return;
    }
    assert_eq!(
        rig.r64(IQH),
        rig.r64(IQT) & 0x7fff0,
        "an idle queue ran to its tail"
    );
    rig.put(STATUS, 0);
    rig.submit([5 | 1 << 5 | 0x5a5a << 32, STATUS, 0, 0]);
    if !stopped() {
        assert_eq!(rig.get(STATUS) as u32, 0x5a5a, "the last wait completed");
        assert_eq!(
            rig.r64(IQH),
            rig.r64(IQT) & 0x7fff0,
            "and the queue is idle"
        );
    }
}
