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

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Barrier, Mutex};

use super::fuzz_rig::*;
use super::regs::*;
use super::IntelIommu;
use crate::{PageRequest, Translate};

/// Submitting threads (the vCPUs).
pub const SUBMITTERS: usize = 2;
/// Translating threads (the devices).
pub const TRANSLATORS: usize = 1;
/// Operations per thread at most.
pub const MAX_OPS: usize = 96;

/// What a worker runs for one input.
type Job = Box<dyn FnOnce() + Send>;
/// A job and where to report how it ended.
type Task = (Job, Sender<std::thread::Result<()>>);

/// Idle workers, each a thread waiting for tasks on its channel.
static WORKERS: Mutex<Vec<Sender<Task>>> = Mutex::new(Vec::new());

/// Runs every job on a thread of its own, all at once, and returns when
/// all are done; a panic in a job is raised again here once all are done
/// (as `std::thread::scope` does). Concurrent callers (test threads) get
/// distinct workers.
fn run_on_workers(jobs: Vec<Job>) {
    let workers: Vec<Sender<Task>> = {
        let mut idle = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
        let keep = idle.len().saturating_sub(jobs.len());
        idle.split_off(keep)
    };
    let mut workers = workers.into_iter();
    let (done_tx, done_rx) = channel();
    let mut used = Vec::new();
    for job in jobs {
        let mut task = (job, done_tx.clone());
        // A worker whose thread is gone hands the task back.
        loop {
            let w = workers.next().unwrap_or_else(spawn_worker);
            match w.send(task) {
                Ok(()) => {
                    used.push(w);
                    break;
                }
                Err(e) => task = e.0,
            }
        }
    }
    drop(done_tx);
    let mut panic = None;
    for _ in 0..used.len() {
        match done_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(p)) => panic = panic.or(Some(p)),
            Err(_) => break,
        }
    }
    WORKERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(used);
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

fn spawn_worker() -> Sender<Task> {
    let (tx, rx) = channel::<Task>();
    std::thread::spawn(move || {
        for (job, done) in rx {
            let _ = done.send(catch_unwind(AssertUnwindSafe(job)));
        }
    });
    tx
}

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
    let Some(mem) = PooledMemory::new(MEM_SIZE) else {
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
    // The threads live on from run to run (spawning three threads per
    // input, each with its stack and sanitizer state to map and unmap, was
    // most of a run); every run hands each its stream and waits for all.
    let start = Arc::new(Barrier::new(streams.len()));
    let jobs: Vec<Job> = streams
        .into_iter()
        .enumerate()
        .map(|(i, st)| {
            let (u, mem, start) = (u.clone(), (*mem).clone(), start.clone());
            Box::new(move || {
                let rig = Rig { u: &u, mem: &mem };
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
            }) as Job
        })
        .collect();
    run_on_workers(jobs);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;

    #[test]
    fn workers_run_every_job_at_once_and_pass_panics_on() {
        // All three wait for each other: they run at the same time.
        let start = Arc::new(Barrier::new(3));
        let ran = Arc::new(AtomicUsize::new(0));
        let jobs = (0..3)
            .map(|_| {
                let (start, ran) = (start.clone(), ran.clone());
                Box::new(move || {
                    start.wait();
                    ran.fetch_add(1, SeqCst);
                }) as Job
            })
            .collect();
        run_on_workers(jobs);
        assert_eq!(ran.load(SeqCst), 3);
        // A panic comes back once every job is done.
        let ran2 = ran.clone();
        let jobs: Vec<Job> = vec![
            Box::new(|| panic!("job failed")),
            Box::new(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                ran2.fetch_add(1, SeqCst);
            }),
        ];
        let r = catch_unwind(AssertUnwindSafe(|| run_on_workers(jobs)));
        assert!(r.is_err());
        assert_eq!(ran.load(SeqCst), 4);
    }
}
