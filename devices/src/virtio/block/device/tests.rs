//! Queue handling of the block device: the per-pass budget and what a
//! driver that keeps breaking its queue makes the VMM log.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use log::Level;
use viommu::{DmaFault, DmaSpace, GuestMemoryMmap, Translation};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::test_log::capture;
use crate::virtio::block::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};

const QSIZE: u16 = 256;
/// Where the rings are (virtio-queue's mock overlaps the used ring with
/// the available ring at this queue size).
const DESC_TABLE: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const T_IN: u32 = 0;
const T_FLUSH: u32 = 4;

#[derive(Default)]
struct Signals {
    queue: AtomicUsize,
    needs_reset: AtomicUsize,
}

impl VirtioInterrupt for Signals {
    fn signal_queue(&self, _queue: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config(&self) {}
    fn set_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
    }
}

/// Identity translation, except that `blocked` faults while `on` is set.
struct Faulty {
    blocked: Range<u64>,
    on: AtomicBool,
}

impl viommu::Translate for Faulty {
    fn translate(
        &self,
        _requester_id: u16,
        _pasid: Option<u32>,
        iova: u64,
        len: u64,
        _access: viommu::Access,
    ) -> Result<Vec<Translation>, DmaFault> {
        let end = iova
            .checked_add(len)
            .ok_or(DmaFault::Overflow { iova, len })?;
        if self.on.load(Ordering::SeqCst) && iova < self.blocked.end && end > self.blocked.start {
            return Err(DmaFault::Blocked {
                iova,
                len,
                reason: "not mapped".into(),
            });
        }
        Ok(vec![Translation {
            iova,
            gpa: iova,
            len,
        }])
    }
}

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

fn block() -> (Block, TempFile) {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(64 * 512).unwrap();
    let disk = Disk::new(f.as_file().try_clone().unwrap(), false, 64 * 512);
    (Block::new(disk).unwrap(), f)
}

/// A ready queue on the rings above, as a driver would set it up.
fn queue() -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.try_set_size(QSIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    q
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// Writes a request of type `kind` at descriptor 0 (header, `data` if
/// any, status) and makes it available `n` times: a driver would use
/// distinct chains, the device cannot tell.
fn make_available(ram: &GuestMemoryMmap, kind: u32, data: Option<u64>, n: u16) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    ram.write_slice(&header, GuestAddress(HDR)).unwrap();
    let descs: Vec<RawDescriptor> = match data {
        Some(d) => vec![
            desc(HDR, 16, VRING_DESC_F_NEXT, 1),
            desc(d, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
            desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
        ],
        None => vec![
            desc(HDR, 16, VRING_DESC_F_NEXT, 1),
            desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
        ],
    };
    for (i, d) in descs.iter().enumerate() {
        ram.write_obj(*d, GuestAddress(DESC_TABLE + 16 * i as u64))
            .unwrap();
    }
    let avail = AVAIL;
    let idx: u16 = ram.read_obj(GuestAddress(avail + 2)).unwrap();
    for k in 0..n {
        let slot = u64::from(idx.wrapping_add(k) % QSIZE);
        ram.write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
    }
    ram.write_obj(idx.wrapping_add(n), GuestAddress(avail + 2))
        .unwrap();
}

fn used_idx(ram: &GuestMemoryMmap) -> u16 {
    ram.read_obj(GuestAddress(USED + 2)).unwrap()
}

fn used_flags(ram: &GuestMemoryMmap) -> u16 {
    ram.read_obj(GuestAddress(USED)).unwrap()
}

#[test]
fn a_pass_takes_its_budget_and_comes_back_for_the_rest() {
    let ram = ram();
    let n = 2 * CHAINS_PER_PASS as u16 + 5;
    make_available(&ram, T_FLUSH, None, n);
    let (mut b, _file) = block();
    let sig = Arc::new(Signals::default());
    let mem = DmaSpace::identity(8).into_memory(ram.clone());
    b.activate(mem, 0, vec![queue()], sig.clone()).unwrap();
    // Activation runs on a vCPU: it leaves the requests to the event loop.
    assert_eq!(used_idx(&ram), 0);
    assert_eq!(b.kick.read().unwrap(), 1);

    b.process_queue();
    assert_eq!(used_idx(&ram), CHAINS_PER_PASS as u16);
    assert_eq!(sig.queue.load(Ordering::SeqCst), 1, "completions signalled");
    assert_eq!(b.kick.read().unwrap(), 1, "re-signalled for the rest");
    // The device comes back by itself: the driver need not notify.
    assert_eq!(
        used_flags(&ram) & VRING_USED_F_NO_NOTIFY as u16,
        VRING_USED_F_NO_NOTIFY as u16
    );

    b.process_queue();
    assert_eq!(used_idx(&ram), 2 * CHAINS_PER_PASS as u16);
    assert_eq!(b.kick.read().unwrap(), 1);

    b.process_queue();
    assert_eq!(used_idx(&ram), n);
    assert!(b.kick.read().is_err(), "nothing left: no self-signal");
    assert_eq!(used_flags(&ram) & VRING_USED_F_NO_NOTIFY as u16, 0);
    assert_eq!(sig.queue.load(Ordering::SeqCst), 3);
    assert_eq!(b.counters.requests.load(Ordering::SeqCst), u64::from(n));
    assert_eq!(b.counters.errors.load(Ordering::SeqCst), 0);
    assert_eq!(
        ram.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK
    );

    // Later requests come with a notification again, and are served.
    make_available(&ram, T_FLUSH, None, 1);
    b.process_queue();
    assert_eq!(used_idx(&ram), n + 1);
    assert_eq!(sig.needs_reset.load(Ordering::SeqCst), 0);
}

/// Activates `b` on a fresh queue behind `t` (not faulting yet).
fn activate_behind(b: &mut Block, ram: &GuestMemoryMmap, t: &Arc<Faulty>, sig: &Arc<Signals>) {
    t.on.store(false, Ordering::SeqCst);
    let mem = DmaSpace::translated(8, t.clone()).into_memory(ram.clone());
    b.activate(mem, 0, vec![queue()], sig.clone()).unwrap();
    t.on.store(true, Ordering::SeqCst);
}

fn assert_rate_limited_guest_lines(lines: &[(Level, String)]) {
    assert!(lines.len() <= 1, "{} lines: {lines:?}", lines.len());
    for (level, line) in lines {
        assert_eq!(*level, Level::Warn, "{line}");
        assert!(line.starts_with("guest: "), "{line}");
    }
}

#[test]
fn a_driver_breaking_its_avail_ring_again_and_again_is_one_line() {
    let ram = ram();
    let t = Arc::new(Faulty {
        blocked: AVAIL..USED,
        on: AtomicBool::new(false),
    });
    let (mut b, _file) = block();
    let sig = Arc::new(Signals::default());
    let cycles = 50;
    let lines = capture(|| {
        for _ in 0..cycles {
            // Reset, set the queue up again, then make the ring fault.
            b.reset();
            activate_behind(&mut b, &ram, &t, &sig);
            b.process_queue();
        }
    });
    assert_rate_limited_guest_lines(&lines);
    assert_eq!(sig.needs_reset.load(Ordering::SeqCst), cycles);
    assert_eq!(b.counters.errors.load(Ordering::SeqCst), cycles as u64);
}

#[test]
fn requests_faulting_behind_the_iommu_are_one_line() {
    let ram = ram();
    let t = Arc::new(Faulty {
        blocked: DATA..DATA + 0x1000,
        on: AtomicBool::new(false),
    });
    let (mut b, _file) = block();
    let sig = Arc::new(Signals::default());
    let n = CHAINS_PER_PASS as u16;
    make_available(&ram, T_IN, Some(DATA), n);
    activate_behind(&mut b, &ram, &t, &sig);
    let lines = capture(|| b.process_queue());
    assert_rate_limited_guest_lines(&lines);
    // Each request was answered, and counted.
    assert_eq!(used_idx(&ram), n);
    assert_eq!(
        ram.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(b.counters.errors.load(Ordering::SeqCst), u64::from(n));
    assert_eq!(sig.needs_reset.load(Ordering::SeqCst), 0);
}

#[test]
fn a_head_outside_the_queue_breaks_it_without_touching_the_used_ring() {
    let ram = ram();
    make_available(&ram, T_FLUSH, None, 1);
    // The driver puts a head index the ring cannot hold.
    ram.write_obj(QSIZE + 3, GuestAddress(AVAIL + 4)).unwrap();
    let (mut b, _file) = block();
    let sig = Arc::new(Signals::default());
    let mem = DmaSpace::identity(8).into_memory(ram.clone());
    b.activate(mem, 0, vec![queue()], sig.clone()).unwrap();
    let lines = capture(|| b.process_queue());
    assert_rate_limited_guest_lines(&lines);
    assert_eq!(used_idx(&ram), 0);
    assert_eq!(sig.needs_reset.load(Ordering::SeqCst), 1);
}
