//! IOAS allocation, mapping and unmapping.

use viommu::iommufd::mock::{self, MockDeviceFlags};
use viommu::iommufd::{ErrorKind, IoPerm};

use super::{expect_err, fixture, passed, Buffer, IOVA, KIB};

#[test]
fn ioas_alloc_destroy() {
    let Some(f) = fixture("ioas_alloc_destroy") else {
        return;
    };
    let a = f.fd.ioas_alloc().expect("IOAS");
    let b = f.fd.ioas_alloc().expect("IOAS");
    assert_ne!(a, b);
    f.fd.destroy(a).expect("destroy");
    let e = expect_err(f.fd.destroy(a), ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "IOMMU_DESTROY: No such file or directory (os error 2)"
    );
    assert_eq!(f.fd.ioas_unmap_all(b).expect("empty IOAS"), 0);
    f.fd.destroy(b).expect("destroy");
    passed("ioas_alloc_destroy");
}

#[test]
fn ioas_map_unmap() {
    let buf = Buffer::new(64 * KIB as usize);
    let Some(f) = fixture("ioas_map_unmap") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    // The mock device narrows the IOAS to its aperture.
    let ranges = f.fd.ioas_iova_ranges(ioas).expect("IOVA ranges");
    assert!(ranges.contains(mock::APERTURE_START, mock::APERTURE_LAST - IOVA + 1));
    assert!(!ranges.contains(0, 4 * KIB), "{ranges:?}");
    assert!(ranges.alignment >= mock::PAGE_SIZE, "{ranges:?}");

    f.map(ioas, IOVA, &buf, 64 * KIB).expect("map");
    // The mock's page table now translates the IOVAs to the buffer's pages.
    f.mock
        .check_map(dev.hwpt_id, IOVA, 64 * KIB, buf.va())
        .expect("mock page table maps the buffer");
    assert_eq!(
        f.fd.ioas_unmap(ioas, IOVA, 64 * KIB).expect("unmap"),
        64 * KIB
    );
    expect_err(
        f.mock.check_map(dev.hwpt_id, IOVA, 64 * KIB, buf.va()),
        ErrorKind::InvalidArgument,
    );
    // Read-only maps too.
    // SAFETY: as in Fixture::map.
    unsafe {
        f.fd.ioas_map(ioas, IOVA, buf.va(), 4 * KIB, IoPerm::READ_ONLY)
    }
    .expect("read-only map");
    assert_eq!(f.fd.ioas_unmap_all(ioas).expect("unmap all"), 4 * KIB);
    passed("ioas_map_unmap");
}

#[test]
fn ioas_unmap_partial() {
    let buf = Buffer::new(64 * KIB as usize);
    let Some(f) = fixture("ioas_unmap_partial") else {
        return;
    };
    let (ioas, _dev) = f.ioas_with_device(MockDeviceFlags::default());
    let far = IOVA + (1 << 20);
    f.map(ioas, IOVA, &buf, 16 * KIB).expect("map 1");
    f.map(ioas, IOVA + 16 * KIB, &buf, 16 * KIB).expect("map 2");
    f.map(ioas, far, &buf, 16 * KIB).expect("map 3");
    // Cutting a mapping in two is refused.
    expect_err(
        f.fd.ioas_unmap(ioas, IOVA + 4 * KIB, 8 * KIB),
        ErrorKind::NotFound,
    );
    expect_err(f.fd.ioas_unmap(ioas, IOVA, 8 * KIB), ErrorKind::NotFound);
    // A range covering whole mappings unmaps them all, gaps included.
    assert_eq!(
        f.fd.ioas_unmap(ioas, IOVA, 32 * KIB).expect("two mappings"),
        32 * KIB
    );
    assert_eq!(
        f.fd.ioas_unmap(ioas, far - 64 * KIB, 256 * KIB)
            .expect("one mapping inside a wider range"),
        16 * KIB
    );
    assert_eq!(f.fd.ioas_unmap_all(ioas).expect("empty"), 0);
    passed("ioas_unmap_partial");
}

#[test]
fn ioas_unmap_not_mapped() {
    let buf = Buffer::new(16 * KIB as usize);
    let Some(f) = fixture("ioas_unmap_not_mapped") else {
        return;
    };
    let (ioas, _dev) = f.ioas_with_device(MockDeviceFlags::default());
    let e = expect_err(f.fd.ioas_unmap(ioas, IOVA, 4 * KIB), ErrorKind::NotFound);
    assert_eq!(e.op(), "IOMMU_IOAS_UNMAP");
    f.map(ioas, IOVA, &buf, 16 * KIB).expect("map");
    expect_err(
        f.fd.ioas_unmap(ioas, IOVA + 16 * KIB, 16 * KIB),
        ErrorKind::NotFound,
    );
    expect_err(
        f.fd.ioas_unmap(ioas + 1000, IOVA, 16 * KIB),
        ErrorKind::NotFound,
    );
    assert_eq!(
        f.fd.ioas_unmap(ioas, IOVA, 16 * KIB).expect("unmap"),
        16 * KIB
    );
    expect_err(f.fd.ioas_unmap(ioas, IOVA, 16 * KIB), ErrorKind::NotFound);
    passed("ioas_unmap_not_mapped");
}

#[test]
fn ioas_map_errors() {
    let buf = Buffer::new(16 * KIB as usize);
    let inaccessible = Buffer::with_prot(16 * KIB as usize, libc::PROT_NONE);
    let Some(f) = fixture("ioas_map_errors") else {
        return;
    };
    let (ioas, _dev) = f.ioas_with_device(MockDeviceFlags::default());
    f.map(ioas, IOVA, &buf, 16 * KIB).expect("map");
    // Overlap.
    expect_err(
        f.map(ioas, IOVA + 4 * KIB, &buf, 4 * KIB),
        ErrorKind::Exists,
    );
    // Below the mock's aperture (a reserved range of the IOAS).
    expect_err(
        f.map(ioas, 64 * KIB, &buf, 4 * KIB),
        ErrorKind::InvalidArgument,
    );
    // Misaligned IOVA.
    let e = expect_err(
        f.map(ioas, IOVA + (1 << 20) + 1, &buf, 4 * KIB),
        ErrorKind::InvalidArgument,
    );
    assert_eq!(
        e.to_string(),
        "IOMMU_IOAS_MAP: Invalid argument (os error 22)"
    );
    // Wrapping range.
    expect_err(
        f.map(ioas, u64::MAX - 4 * KIB + 1, &buf, 8 * KIB),
        ErrorKind::OutOfRange,
    );
    // Memory the kernel cannot pin.
    // SAFETY: the mapping is refused; nothing is ever mapped.
    let r = unsafe {
        f.fd.ioas_map(
            ioas,
            IOVA + (2 << 20),
            inaccessible.va(),
            16 * KIB,
            IoPerm::READ_WRITE,
        )
    };
    expect_err(r, ErrorKind::BadAddress);
    // No such IOAS.
    expect_err(f.map(ioas + 1000, IOVA, &buf, 4 * KIB), ErrorKind::NotFound);
    assert_eq!(f.fd.ioas_unmap_all(ioas).expect("unmap all"), 16 * KIB);
    passed("ioas_map_errors");
}
