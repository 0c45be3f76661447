//! End-to-end tests of the request layer: chains built with virtio-queue's
//! driver-side mock, run against a temp file, checked in guest memory and in
//! the file.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::*;

const MEM_SIZE: usize = 0x100_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
/// Disk size used by most tests: 64 sectors.
const DISK_SIZE: u64 = 64 * 512;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

type Mem = GuestMemoryMmap<()>;

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn r(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

fn w(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

fn header<M: GuestMemory>(mem: &M, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

/// A temp file of `DISK_SIZE` bytes where byte i of sector s is (s + i) % 251.
fn image() -> TempFile {
    let f = TempFile::new().unwrap();
    let data: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    f.as_file().write_all_at(&data, 0).unwrap();
    f
}

fn pattern(off: u64) -> u8 {
    ((off / 512 + off % 512) % 251) as u8
}

fn disk(f: &TempFile, read_only: bool) -> Disk {
    Disk::new(f.as_file().try_clone().unwrap(), read_only, DISK_SIZE)
}

fn run_on<M: GuestMemory>(
    mem: &M,
    qsize: u16,
    disk: &Disk,
    descs: &[RawDescriptor],
) -> Result<Completion, ProcessError> {
    let vq = MockSplitQueue::new(mem, qsize);
    let mut chain = vq.build_desc_chain(descs).unwrap();
    disk.process(&mut chain)
}

fn run(mem: &Mem, disk: &Disk, descs: &[RawDescriptor]) -> Result<Completion, ProcessError> {
    run_on(mem, 16, disk, descs)
}

fn parse(mem: &Mem, descs: &[RawDescriptor]) -> Result<Request, ParseError> {
    let vq = MockSplitQueue::new(mem, 2048);
    let mut chain = vq.build_desc_chain(descs).unwrap();
    Request::parse(&mut chain, DISK_SIZE / 512)
}

fn status(mem: &Mem) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn ok(used_len: u32) -> Completion {
    Completion {
        status: VIRTIO_BLK_S_OK,
        used_len,
    }
}

const IOERR: Completion = Completion {
    status: VIRTIO_BLK_S_IOERR,
    used_len: 1,
};

#[test]
fn read_round_trip() {
    let (m, f) = (mem(), image());
    let d = disk(&f, false);
    header(&m, HDR, T_IN, 2);
    mem_fill(&m, STATUS, 1, 0xaa);
    let descs = [
        r(HDR, 16),
        w(DATA, 512),
        w(DATA + 0x10000, 1024),
        w(STATUS, 1),
    ];
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(1537));
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
    assert_eq!(guest(&m, DATA, 512), file_bytes(2 * 512, 512));
    assert_eq!(guest(&m, DATA + 0x10000, 1024), file_bytes(3 * 512, 1024));
}

#[test]
fn write_round_trip() {
    let (m, f) = (mem(), image());
    let d = disk(&f, false);
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    m.write_slice(&payload[..512], GuestAddress(DATA)).unwrap();
    m.write_slice(&payload[512..], GuestAddress(DATA + 0x8000))
        .unwrap();
    header(&m, HDR, T_OUT, 5);
    let descs = [
        r(HDR, 16),
        r(DATA, 512),
        r(DATA + 0x8000, 512),
        w(STATUS, 1),
    ];
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(1));
    let mut on_disk = vec![0u8; 1024];
    f.as_file().read_exact_at(&mut on_disk, 5 * 512).unwrap();
    assert_eq!(on_disk, payload);
    // Neighbours untouched.
    let mut b = [0u8; 1];
    f.as_file().read_exact_at(&mut b, 7 * 512).unwrap();
    assert_eq!(b[0], pattern(7 * 512));

    // Read it back through a fresh chain.
    header(&m, HDR, T_IN, 5);
    let descs = [r(HDR, 16), w(DATA + 0x40000, 1024), w(STATUS, 1)];
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(1025));
    assert_eq!(guest(&m, DATA + 0x40000, 1024), payload);
}

#[test]
fn large_scattered_read() {
    // 1 MiB in 256 scattered 4 KiB pages, like a Linux O_DIRECT read.
    let m = mem();
    let f = TempFile::new().unwrap();
    let size = 2u64 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    f.as_file().write_all_at(&data, 0).unwrap();
    let d = Disk::from_file(f.as_file().try_clone().unwrap(), false).unwrap();
    assert_eq!(d.capacity(), 4096);
    header(&m, HDR, T_IN, 1024);
    let mut descs = vec![r(HDR, 16)];
    // Pages in reverse order so guest-contiguity cannot hide ordering bugs.
    descs.extend((0..256u64).rev().map(|p| w(0x40_0000 + p * 0x2000, 4096)));
    descs.push(w(STATUS, 1));
    assert_eq!(run_on(&m, 512, &d, &descs).unwrap(), ok((1 << 20) + 1));
    for (i, p) in (0..256u64).rev().enumerate() {
        let off = 1024 * 512 + i * 4096;
        assert_eq!(
            guest(&m, 0x40_0000 + p * 0x2000, 4096),
            data[off..off + 4096]
        );
    }
}

#[test]
fn flush_and_get_id() {
    let (m, f) = (mem(), image());
    let d = disk(&f, false).with_id(b"disk-0123456789abcdefXYZ");
    header(&m, HDR, T_FLUSH, 0);
    assert_eq!(run(&m, &d, &[r(HDR, 16), w(STATUS, 1)]).unwrap(), ok(1));
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);

    // Full 20-byte buffer: truncated id, no NUL.
    header(&m, HDR, T_GET_ID, 0);
    let descs = [r(HDR, 16), w(DATA, 20), w(STATUS, 1)];
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(21));
    assert_eq!(guest(&m, DATA, 20), b"disk-0123456789abcde");

    // Short id is zero padded; short buffer truncates.
    let d = disk(&f, false).with_id(b"vda");
    mem_fill(&m, DATA, 20, 0xff);
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(21));
    assert_eq!(
        guest(&m, DATA, 20),
        b"vda\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );
    let descs = [r(HDR, 16), w(DATA, 2), w(STATUS, 1)];
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(3));
}

#[test]
fn read_only_disk_refuses_writes() {
    let (m, f) = (mem(), image());
    let d = disk(&f, true);
    mem_fill(&m, DATA, 512, 0x55);
    header(&m, HDR, T_OUT, 0);
    let descs = [r(HDR, 16), r(DATA, 512), w(STATUS, 1)];
    assert_eq!(run(&m, &d, &descs).unwrap(), IOERR);
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    let mut b = [0u8; 512];
    f.as_file().read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b.to_vec(), file_bytes(0, 512));
    // Reads and flushes still work.
    header(&m, HDR, T_FLUSH, 0);
    assert_eq!(run(&m, &d, &[r(HDR, 16), w(STATUS, 1)]).unwrap(), ok(1));
}

#[test]
fn unsupported_type() {
    let (m, f) = (mem(), image());
    header(&m, HDR, 11, 0); // DISCARD, not offered
    let descs = [r(HDR, 16), r(DATA, 16), w(STATUS, 1)];
    let c = run(&m, &disk(&f, false), &descs).unwrap();
    assert_eq!(c.status, VIRTIO_BLK_S_UNSUPP);
    assert_eq!(c.used_len, 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn chains_without_status_are_errors() {
    let (m, f) = (mem(), image());
    let d = disk(&f, false);
    header(&m, HDR, T_IN, 0);
    // Only the header.
    let e = run(&m, &d, &[r(HDR, 16)]).unwrap_err();
    assert!(matches!(
        e,
        ProcessError::NoStatus(RequestError::StatusNotWritable)
    ));
    // Status read-only.
    let e = run(&m, &d, &[r(HDR, 16), w(DATA, 512), r(STATUS, 1)]).unwrap_err();
    assert!(matches!(
        e,
        ProcessError::NoStatus(RequestError::StatusNotWritable)
    ));
    // Status of length 0.
    let e = run(&m, &d, &[r(HDR, 16), w(DATA, 512), w(STATUS, 0)]).unwrap_err();
    assert!(matches!(
        e,
        ProcessError::NoStatus(RequestError::StatusTooShort)
    ));
    // Status outside guest memory: the request runs but cannot be answered.
    let e = run(&m, &d, &[r(HDR, 16), w(DATA, 512), w(1 << 40, 1)]).unwrap_err();
    assert!(matches!(e, ProcessError::StatusFault { .. }));
    let e = run(&m, &d, &[r(HDR, 16), w(u64::MAX, 2)]).unwrap_err();
    assert!(matches!(
        e,
        ProcessError::NoStatus(RequestError::DmaFault { .. })
    ));
}

/// Runs a malformed chain: the driver must get IOERR, and parsing must give
/// `expected`.
fn expect_ioerr(m: &Mem, descs: &[RawDescriptor], expected: impl Fn(&RequestError) -> bool) {
    let f = image();
    mem_fill(m, STATUS, 1, 0xaa);
    assert_eq!(run_on(m, 2048, &disk(&f, false), descs).unwrap(), IOERR);
    assert_eq!(status(m), VIRTIO_BLK_S_IOERR);
    let e = parse(m, descs).unwrap_err();
    assert_eq!(e.status_addr, Some(GuestAddress(STATUS)));
    assert!(expected(&e.error), "unexpected error {:?}", e.error);
}

#[test]
fn malformed_chains_get_ioerr() {
    use RequestError as E;
    let m = mem();
    header(&m, HDR, T_IN, 0);
    expect_ioerr(&m, &[w(STATUS, 1)], |e| *e == E::ChainTooShort(1));
    expect_ioerr(&m, &[w(HDR, 16), w(STATUS, 1)], |e| {
        *e == E::HeaderWriteOnly
    });
    expect_ioerr(&m, &[r(HDR, 8), r(HDR + 8, 4), w(STATUS, 1)], |e| {
        *e == E::HeaderTooShort(12)
    });
    // Header not in guest memory.
    expect_ioerr(
        &m,
        &[r(1 << 40, 16), w(STATUS, 1)],
        |e| matches!(e, E::DmaFault { addr, .. } if *addr == 1 << 40),
    );
    // IN with device-readable data.
    expect_ioerr(&m, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], |e| {
        matches!(
            e,
            E::WrongDirection {
                index: 1,
                kind: RequestType::In
            }
        )
    });
    // Readable after writable.
    expect_ioerr(
        &m,
        &[r(HDR, 16), w(DATA, 512), r(DATA, 512), w(STATUS, 1)],
        |e| matches!(e, E::WrongDirection { index: 2, .. }),
    );
    // Not whole sectors.
    expect_ioerr(&m, &[r(HDR, 16), w(DATA, 500), w(STATUS, 1)], |e| {
        *e == E::UnalignedLength(500)
    });
    // Past the end of the disk (64 sectors).
    header(&m, HDR, T_IN, 63);
    expect_ioerr(&m, &[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)], |e| {
        matches!(
            e,
            E::BeyondEndOfDisk {
                sector: 63,
                sectors: 2,
                capacity: 64
            }
        )
    });
    // OUT with device-writable data.
    header(&m, HDR, T_OUT, 0);
    expect_ioerr(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], |e| {
        matches!(
            e,
            E::WrongDirection {
                index: 1,
                kind: RequestType::Out
            }
        )
    });
    // Too many descriptors.
    header(&m, HDR, T_IN, 0);
    let mut descs = vec![r(HDR, 16)];
    descs.extend((0..MAX_DESCRIPTORS as u64).map(|i| w(DATA + i * 512, 512)));
    descs.push(w(STATUS, 1));
    expect_ioerr(&m, &descs, |e| *e == E::TooManyDescriptors);
}

#[test]
fn huge_sectors_overflow() {
    let m = mem();
    for sector in [u64::MAX, u64::MAX / 512 + 1, 1 << 62] {
        header(&m, HDR, T_IN, sector);
        expect_ioerr(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], |e| {
            *e == RequestError::SectorOverflow(sector)
        });
    }
    // Fits in a byte offset, but lies far beyond the end of the disk.
    header(&m, HDR, T_OUT, u64::MAX / 512);
    expect_ioerr(&m, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], |e| {
        matches!(e, RequestError::BeyondEndOfDisk { .. })
    });
}

#[test]
fn data_outside_guest_memory_is_a_fault() {
    let (m, f) = (mem(), image());
    let d = disk(&f, false);
    header(&m, HDR, T_IN, 0);
    // Entirely outside, straddling the end, and at the top of the space.
    for descs in [
        [r(HDR, 16), w(1 << 40, 512), w(STATUS, 1)],
        [r(HDR, 16), w(MEM_SIZE as u64 - 256, 512), w(STATUS, 1)],
        [r(HDR, 16), w(u64::MAX - 100, 512), w(STATUS, 1)],
    ] {
        mem_fill(&m, STATUS, 1, 0xaa);
        assert_eq!(run(&m, &d, &descs).unwrap(), IOERR);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    }
    header(&m, HDR, T_OUT, 0);
    assert_eq!(
        run(&m, &d, &[r(HDR, 16), r(1 << 40, 512), w(STATUS, 1)]).unwrap(),
        IOERR
    );
}

#[test]
fn any_layout_is_accepted() {
    let (m, f) = (mem(), image());
    let d = disk(&f, false);
    // Header split 8 + 8, IN data and status sharing one descriptor.
    header(&m, HDR, T_IN, 1);
    let descs = [r(HDR, 8), r(HDR + 8, 8), w(DATA, 513)];
    assert_eq!(run(&m, &d, &descs).unwrap(), ok(513));
    assert_eq!(guest(&m, DATA, 512), file_bytes(512, 512));
    assert_eq!(guest(&m, DATA + 512, 1), [VIRTIO_BLK_S_OK]);

    // OUT header and data in one descriptor.
    mem_fill(&m, HDR + 16, 512, 0x3c);
    header(&m, HDR, T_OUT, 9);
    let req = parse(&m, &[r(HDR, 16 + 512), w(STATUS, 1)]).unwrap();
    assert_eq!(req.data, vec![(GuestAddress(HDR + 16), 512)]);
    assert_eq!(
        run(&m, &d, &[r(HDR, 16 + 512), w(STATUS, 1)]).unwrap(),
        ok(1)
    );
    let mut b = [0u8; 512];
    f.as_file().read_exact_at(&mut b, 9 * 512).unwrap();
    assert!(b.iter().all(|&x| x == 0x3c));
}

#[test]
fn short_backing_file_is_ioerr() {
    let m = mem();
    let f = TempFile::new().unwrap();
    f.as_file().write_all_at(&[1u8; 1024], 0).unwrap();
    // Claims 8 sectors, has 2.
    let d = Disk::new(f.as_file().try_clone().unwrap(), false, 4096);
    header(&m, HDR, T_IN, 1);
    assert_eq!(
        run(&m, &d, &[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)]).unwrap(),
        IOERR
    );
}

/// Blocks DMA to one page, identity elsewhere.
struct BlockPage(u64);

impl viommu::Translate for BlockPage {
    fn translate(
        &self,
        _rid: u16,
        _pasid: Option<u32>,
        iova: u64,
        len: u64,
        _access: viommu::Access,
    ) -> Result<Vec<viommu::Translation>, viommu::DmaFault> {
        let end = iova
            .checked_add(len)
            .ok_or(viommu::DmaFault::Overflow { iova, len })?;
        if iova < self.0 + 0x1000 && end > self.0 {
            return Err(viommu::DmaFault::Blocked {
                iova,
                len,
                reason: "not mapped".into(),
            });
        }
        Ok(vec![viommu::Translation {
            iova,
            gpa: iova,
            len,
        }])
    }
}

#[test]
fn works_through_dma_memory() {
    let f = image();
    let d = disk(&f, false);
    for translated in [false, true] {
        let space = if translated {
            viommu::DmaSpace::translated(8, Arc::new(BlockPage(0x50_0000)))
        } else {
            viommu::DmaSpace::identity(8)
        };
        let m = space.into_memory(mem());
        header(&m, HDR, T_IN, 4);
        let descs = [r(HDR, 16), w(DATA, 512), w(STATUS, 1)];
        let c = run_on(&m, 16, &d, &descs).unwrap();
        assert_eq!(c, ok(513));
        let mut got = vec![0u8; 512];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, file_bytes(4 * 512, 512));

        let descs = [r(HDR, 16), w(0x50_0000, 512), w(STATUS, 1)];
        let c = run_on(&m, 16, &d, &descs).unwrap();
        assert_eq!(
            c.status,
            if translated {
                VIRTIO_BLK_S_IOERR
            } else {
                VIRTIO_BLK_S_OK
            }
        );
    }
}

fn mem_fill(m: &Mem, addr: u64, len: usize, byte: u8) {
    m.write_slice(&vec![byte; len], GuestAddress(addr)).unwrap();
}

fn guest(m: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn file_bytes(off: u64, len: u64) -> Vec<u8> {
    (off..off + len).map(pattern).collect()
}
