//! The iommufd layer against the real kernel, through the kernel's own
//! iommufd mock (CONFIG_IOMMUFD_TEST, `viommu::iommufd::mock`).
//!
//! Each test is one check and prints `MOCK-CHECK-OK <name>` once it has
//! passed; tests/tests/iommufd_mock.rs runs this binary inside an L1 whose
//! kernel has the mock and requires every one of those lines. Where
//! `/dev/iommu` or the mock is missing (any stock kernel), each test prints
//! `MOCK-SKIP <name>: <why>` and returns, unless VMM_REQUIRE_IOMMUFD_MOCK=1
//! makes that a failure.
//!
//! Run by hand (inside such a kernel):
//! `cargo test -p viommu --test iommufd_mock -- --nocapture --test-threads=1`

use viommu::iommufd::mock::{self, MockDevice, MockDeviceFlags, MockIommu};
use viommu::iommufd::{ErrorKind, HwptAlloc, HwptData, IoPerm, Iommufd, IommufdError};

mod errors;
mod faults;
mod hwpt;
mod ioas;

/// Anonymous memory to map into an IOAS; unmapped on drop. Declare it
/// before the fixture so the iommufd (and with it every IOVA mapping) goes
/// first.
struct Buffer {
    addr: *mut libc::c_void,
    len: usize,
}

impl Buffer {
    fn new(len: usize) -> Self {
        Self::with_prot(len, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn with_prot(len: usize, prot: libc::c_int) -> Self {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {len}");
        Buffer { addr, len }
    }

    fn va(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `with_prot`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

struct Fixture {
    fd: Iommufd,
    mock: MockIommu,
}

/// The iommufd and its mock, or `None` (after saying why) when this kernel
/// has neither and the mock is not required.
fn fixture(check: &str) -> Option<Fixture> {
    let required = std::env::var("VMM_REQUIRE_IOMMUFD_MOCK").as_deref() == Ok("1");
    let skip = |why: String| {
        assert!(!required, "{check}: VMM_REQUIRE_IOMMUFD_MOCK=1 but {why}");
        println!("MOCK-SKIP {check}: {why}");
        None
    };
    let fd = match Iommufd::open() {
        Ok(fd) => fd,
        Err(e) => return skip(e.to_string()),
    };
    match MockIommu::probe(&fd) {
        Ok(Some(mock)) => Some(Fixture { fd, mock }),
        Ok(None) => skip("the kernel has no IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST)".into()),
        Err(e) => panic!("{check}: probing the mock: {e}"),
    }
}

fn passed(check: &str) {
    println!("MOCK-CHECK-OK {check}");
}

/// `r`'s error, which must be of `kind`.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(r: Result<T, IommufdError>, kind: ErrorKind) -> IommufdError {
    match r {
        Ok(v) => panic!("expected {kind:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            e
        }
    }
}

const KIB: u64 = 1024;
/// An IOVA inside the mock's aperture.
const IOVA: u64 = mock::APERTURE_START;
const PASID_DEV: MockDeviceFlags = MockDeviceFlags {
    no_dirty: false,
    pasid: true,
};

impl Fixture {
    /// A fresh IOAS with a mock device on it.
    fn ioas_with_device(&self, flags: MockDeviceFlags) -> (u32, MockDevice) {
        let ioas = self.fd.ioas_alloc().expect("IOAS");
        let dev = self.mock.add_device(ioas, flags).expect("mock device");
        (ioas, dev)
    }

    fn map(&self, ioas: u32, iova: u64, buf: &Buffer, len: u64) -> Result<(), IommufdError> {
        // SAFETY: `buf` outlives the fixture (declared before it in every
        // test), and no device writes to it (the mock does no DMA).
        unsafe {
            self.fd
                .ioas_map(ioas, iova, buf.va(), len, IoPerm::READ_WRITE)
        }
    }

    fn nest_parent(&self, dev: &MockDevice, ioas: u32) -> u32 {
        self.fd
            .hwpt_alloc(&HwptAlloc::nest_parent(dev.idev_id, ioas))
            .expect("nest parent")
    }

    fn nested(&self, dev: &MockDevice, parent: u32, pasid: bool, fault: Option<u32>) -> u32 {
        let mut req = HwptAlloc::nested(
            dev.idev_id,
            parent,
            HwptData::Selftest {
                iotlb: mock::IOTLB_DEFAULT,
            },
        );
        req.flags.pasid = pasid;
        req.fault_id = fault;
        self.fd.hwpt_alloc(&req).expect("nested HWPT")
    }

    fn check_iotlbs(&self, hwpt: u32, expected: [u32; 4]) {
        for (i, v) in expected.into_iter().enumerate() {
            self.mock
                .check_iotlb(hwpt, i as u32, v)
                .unwrap_or_else(|e| panic!("iotlb[{i}] != {v:#x}: {e}"));
        }
    }
}
