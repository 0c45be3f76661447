//! A deterministic fuzz driver for virtio-blk request handling: random
//! descriptor tables, available rings and request headers in guest memory,
//! run through the queue (virtio-queue's chain walking, direct and
//! indirect) and the request layer ([`Disk::process`]: parser, executor,
//! status byte) the way the block device's queue pass does, over a DMA
//! space that faults on one page.
//!
//! Properties: nothing panics; a completion never reports more bytes than
//! the chain's device-writable buffers hold (virtio 1.2 §2.7.8.1), and a
//! successful read reports exactly its data plus the status byte.
//!
//! Used by `cargo fuzz` (`fuzz/fuzz_targets/virtio_blk.rs`) and the smoke
//! test `devices/tests/fuzz_smoke_devices.rs`.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use viommu::{Access, DmaFault, DmaMemory, DmaSpace, Translate, Translation};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{memfd, Input, PooledMemory};
use crate::virtio::block::{Disk, Request, RequestType, VIRTIO_BLK_S_OK};
use crate::virtio::device::validate_queues;

/// Guest memory of every run.
pub const MEM_SIZE: u64 = 1 << 20;
/// Disk size: 64 sectors and a partial one.
pub const DISK_SIZE: u64 = 64 * 512 + 100;
/// Operations per input at most.
pub const MAX_OPS: usize = 256;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const INDIRECT: u64 = 0x6000;
const HDR: u64 = 0x8000;
const DATA: u64 = 0x1_0000;
/// DMA to this page faults.
const HOLE: u64 = 0x2_0000;

/// Identity, except for [`HOLE`].
struct Holey;

impl Translate for Holey {
    fn translate(
        &self,
        _rid: u16,
        _pasid: Option<u32>,
        iova: u64,
        len: u64,
        _access: Access,
    ) -> Result<Vec<Translation>, DmaFault> {
        let end = iova
            .checked_add(len)
            .ok_or(DmaFault::Overflow { iova, len })?;
        // No empty pieces (the contract `DmaSpace` relies on: it panics
        // on one).
        if len == 0 {
            return Ok(Vec::new());
        }
        if iova < HOLE + 0x1000 && end > HOLE {
            return Err(DmaFault::Blocked {
                iova,
                len,
                reason: "hole".into(),
            });
        }
        Ok(vec![Translation {
            iova,
            gpa: iova,
            len,
        }])
    }
}

/// Places descriptors point at.
fn addr(inp: &mut Input) -> u64 {
    match inp.u8() % 8 {
        0..=2 => HDR + u64::from(inp.u8()) * 16,
        3..=5 => DATA + u64::from(inp.u16()) % 0x1_0000,
        6 => HOLE - 8 + u64::from(inp.u8() % 32),
        _ => inp.u64(),
    }
}

fn len(inp: &mut Input) -> u32 {
    match inp.u8() % 8 {
        0 => 0,
        1 => 1,
        2 => 16,
        3 => 512 * u32::from(inp.u8() % 9),
        4 | 5 => u32::from(inp.u16()),
        6 => 16 + 512 * u32::from(inp.u8() % 3),
        _ => inp.u32(),
    }
}

/// A descriptor: mostly chains of small `next`, with flags NEXT (1),
/// WRITE (2) and now and then INDIRECT (4).
fn descriptor(inp: &mut Input, qsize: u16) -> [u8; 16] {
    let a = addr(inp);
    let l = len(inp);
    let f = inp.u8();
    let flags =
        u16::from(f & 3) | if f >= 0xf0 { 4 } else { 0 } | if f == 0xef { inp.u16() } else { 0 };
    let next = if inp.u8() < 240 {
        u16::from(inp.u8()) % qsize.max(1)
    } else {
        inp.u16()
    };
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&a.to_le_bytes());
    d[8..12].copy_from_slice(&l.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// Runs one input. Never panics unless the request layer has a bug.
pub fn run(data: &[u8]) {
    run_counted(data);
}

/// [`run`], returning (chains completed, completions with status OK).
pub fn run_counted(data: &[u8]) -> (u64, u64) {
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let qsize = 1u16 << (cfg & 7).min(8);
    let read_only = cfg & 8 != 0;
    let Some(ram) = PooledMemory::new(MEM_SIZE) else {
        return (0, 0);
    };
    let Ok(file) = memfd(DISK_SIZE) else {
        return (0, 0);
    };
    let disk = Disk::new(file, read_only, DISK_SIZE).with_id(b"fuzz");
    let space = if cfg & 0x10 != 0 {
        DmaSpace::translated(8, Arc::new(Holey))
    } else {
        DmaSpace::identity(8)
    };
    // The driver writes guest memory as the CPU does, not through the
    // IOMMU; the device reads and writes it through its DMA space.
    let mem = space.into_memory(ram.clone());
    let mut q = match Queue::new(256) {
        Ok(q) => q,
        Err(_) => return (0, 0),
    };
    q.set_size(qsize);
    // Rings where a driver puts them, or anywhere (overlapping, unaligned,
    // outside memory): activation refuses what it must.
    let (desc, avail, used) = if cfg & 0x20 != 0 {
        (
            inp.u32() as u64 % (MEM_SIZE + 0x1000),
            inp.u32() as u64 % (MEM_SIZE + 0x1000),
            inp.u32() as u64 % (MEM_SIZE + 0x1000),
        )
    } else {
        (DESC, AVAIL, USED)
    };
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(cfg & 0x40 != 0);
    q.set_ready(true);
    if validate_queues(std::slice::from_ref(&q), &mem).is_err() {
        return (0, 0);
    }
    let mut done = (0, 0);
    let mut avail_idx = 0u16;
    let mut ops = 0;
    while !inp.done() && ops < MAX_OPS {
        ops += 1;
        match inp.u8() % 8 {
            0 | 1 => {
                let i = u64::from(inp.u16() % qsize);
                let d = descriptor(&mut inp, qsize);
                let _ = ram.write_slice(&d, GuestAddress(desc + 16 * i));
            }
            2 => {
                let i = u64::from(inp.u8() % 16);
                let d = descriptor(&mut inp, 16);
                let _ = ram.write_slice(&d, GuestAddress(INDIRECT + 16 * i));
            }
            // A request header: type, reserved, sector.
            3 => {
                let at = HDR + u64::from(inp.u8()) * 16;
                let kind = match inp.u8() % 8 {
                    0..=1 => 0,
                    2..=3 => 1,
                    4 => 4,
                    5 => 8,
                    _ => inp.u32(),
                };
                let sector = match inp.u8() % 4 {
                    0..=1 => u64::from(inp.u8() % 70),
                    2 => u64::MAX - u64::from(inp.u8()),
                    _ => inp.u64(),
                };
                let _ = ram.write_obj(kind, GuestAddress(at));
                let _ = ram.write_obj(sector, GuestAddress(at + 8));
            }
            // Heads made available.
            4 | 5 => {
                for _ in 0..1 + inp.u8() % 4 {
                    let slot = u64::from(avail_idx % qsize);
                    let head = if inp.u8() < 250 {
                        u16::from(inp.u8()) % qsize
                    } else {
                        inp.u16()
                    };
                    let _ = ram.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
                    avail_idx = avail_idx.wrapping_add(1);
                }
                let _ = ram.write_obj(avail_idx, GuestAddress(avail + 2));
            }
            // A well-formed request, as a driver builds it: header, data,
            // status at descriptors i, i+1, i+2; then made available.
            6 if inp.u8() & 1 == 0 => {
                let i = inp.u16() % qsize;
                let next = |k: u16| (i + k) % qsize;
                let at = HDR + u64::from(inp.u8()) * 16;
                let kind = [0u32, 1, 4, 8][inp.u8() as usize % 4];
                let _ = ram.write_obj(kind, GuestAddress(at));
                let _ = ram.write_obj(u64::from(inp.u8() % 66), GuestAddress(at + 8));
                let data = DATA + u64::from(inp.u8()) * 0x100;
                let dlen = 512 * u32::from(1 + inp.u8() % 4);
                let dflags = if kind == 1 { 1 } else { 3 };
                for (k, (a, l, f)) in [(at, 16, 1), (data, dlen, dflags), (HDR + 0xff0, 1, 2)]
                    .into_iter()
                    .enumerate()
                {
                    let mut d = [0u8; 16];
                    d[..8].copy_from_slice(&a.to_le_bytes());
                    d[8..12].copy_from_slice(&l.to_le_bytes());
                    d[12..14].copy_from_slice(&(f as u16).to_le_bytes());
                    d[14..].copy_from_slice(&next(k as u16 + 1).to_le_bytes());
                    let _ =
                        ram.write_slice(&d, GuestAddress(desc + 16 * u64::from(next(k as u16))));
                }
                let slot = u64::from(avail_idx % qsize);
                let _ = ram.write_obj(i, GuestAddress(avail + 4 + 2 * slot));
                avail_idx = avail_idx.wrapping_add(1);
                let _ = ram.write_obj(avail_idx, GuestAddress(avail + 2));
            }
            6 => {
                let at = u64::from(inp.u32()) % MEM_SIZE;
                let n = usize::from(inp.u8() % 24);
                let bytes = inp.vec(n);
                let _ = ram.write_slice(&bytes, GuestAddress(at));
            }
            _ => {
                let (c, ok) = pass(&mut q, &mem, &disk);
                done.0 += c;
                done.1 += ok;
            }
        }
    }
    let (c, ok) = pass(&mut q, &mem, &disk);
    (done.0 + c, done.1 + ok)
}

/// One pass over the queue as the block device makes it; returns the
/// chains completed and how many of them with status OK. Stops where the
/// device would flag itself broken.
fn pass(q: &mut Queue, mem: &DmaMemory, disk: &Disk) -> (u64, u64) {
    let (mut chains, mut ok) = (0, 0);
    for _ in 0..64 {
        let Ok(idx) = q.avail_idx(mem, Ordering::Acquire) else {
            break;
        };
        if idx == Wrapping(q.next_avail()) {
            break;
        }
        let Ok(mut iter) = q.iter(mem) else { break };
        let Some(mut chain) = iter.next() else { break };
        let head = chain.head_index();
        if head >= q.size() {
            break;
        }
        let writable: u64 = chain
            .clone()
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        let parsed = Request::parse(&mut chain.clone(), disk.capacity());
        let len = match disk.process(&mut chain) {
            Ok(c) => {
                chains += 1;
                assert!(c.used_len >= 1, "the status byte counts");
                assert!(
                    u64::from(c.used_len) <= writable,
                    "used {} of {writable} writable bytes",
                    c.used_len
                );
                if c.status == VIRTIO_BLK_S_OK {
                    ok += 1;
                    let req = parsed.expect("a request that succeeded parses");
                    match req.kind {
                        RequestType::In => {
                            assert_eq!(u64::from(c.used_len), req.data_len() + 1, "{req:?}")
                        }
                        RequestType::Out | RequestType::Flush => {
                            assert_eq!(c.used_len, 1, "{req:?}");
                            assert!(!disk.is_read_only() || req.kind == RequestType::Flush);
                        }
                        _ => {}
                    }
                }
                c.used_len
            }
            Err(_) => 0,
        };
        if q.add_used(mem, head, len).is_err() {
            break;
        }
    }
    (chains, ok)
}
