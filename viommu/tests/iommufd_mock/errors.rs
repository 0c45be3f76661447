//! Error paths: bad ids, wrong sizes, double destroy.

use viommu::iommufd::mock::{MockDeviceFlags, TestCmd};
use viommu::iommufd::{ErrorKind, HwptAlloc};

use super::{expect_err, fixture, passed};

#[test]
fn error_paths() {
    let Some(f) = fixture("error_paths") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    // Bad ids.
    expect_err(f.fd.destroy(0), ErrorKind::NotFound);
    expect_err(f.fd.destroy(u32::MAX), ErrorKind::NotFound);
    // A device id that is an IOAS; a page-table id that is a device.
    expect_err(
        f.fd.hwpt_alloc(&HwptAlloc::paging(ioas, ioas)),
        ErrorKind::NotFound,
    );
    expect_err(
        f.fd.hwpt_alloc(&HwptAlloc::paging(dev.idev_id, dev.idev_id)),
        ErrorKind::InvalidArgument,
    );
    expect_err(
        f.mock.add_device(u32::MAX, MockDeviceFlags::default()),
        ErrorKind::NotFound,
    );
    // An IOAS with a device attached is busy.
    expect_err(f.fd.destroy(ioas), ErrorKind::Busy);
    // A range that does not fit in the address space.
    expect_err(
        f.fd.ioas_unmap(ioas, 1 << 12, u64::MAX - 1),
        ErrorKind::OutOfRange,
    );
    // Wrong command sizes: shorter than the kernel's minimum, and longer
    // than its structure with non-zero bytes past it.
    let probe = TestCmd::new(0, 0);
    let short = f.mock.cmd_with_size(&probe, TestCmd::MIN_SIZE - 1, 0);
    expect_err(short, ErrorKind::InvalidArgument);
    let long = f.mock.cmd_with_size(&probe, TestCmd::SIZE + 8, 0xff);
    expect_err(long, ErrorKind::OutOfRange);
    // Longer with zero bytes past it is accepted (the unknown op is what
    // gets refused then).
    let zero_tail = f.mock.cmd_with_size(&probe, TestCmd::SIZE + 8, 0);
    expect_err(zero_tail, ErrorKind::Unsupported);
    // Destroying the mock device removes it; twice is an error.
    f.fd.destroy(dev.stdev_id).expect("destroy the mock device");
    expect_err(f.fd.destroy(dev.stdev_id), ErrorKind::NotFound);
    expect_err(f.fd.hw_info(dev.idev_id), ErrorKind::NotFound);
    f.fd.destroy(ioas).expect("IOAS free again");
    expect_err(f.fd.destroy(ioas), ErrorKind::NotFound);
    passed("error_paths");
}
