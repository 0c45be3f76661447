//! IOMMU information, HWPT allocation and batched invalidation.

use viommu::iommufd::mock::{self, MockDeviceFlags};
use viommu::iommufd::{
    ErrorKind, HwptAlloc, HwptData, HwptFlags, InvalidateBatch, SelftestInvalidation,
    VtdInvalidation,
};

use super::{expect_err, fixture, passed, Buffer, IOVA, KIB, PASID_DEV};

#[test]
fn hw_info_selftest() {
    let Some(f) = fixture("hw_info_selftest") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(PASID_DEV);
    let info = f.fd.hw_info(dev.idev_id).expect("hw_info");
    assert_eq!(info.data_type, mock::HW_INFO_TYPE_SELFTEST);
    assert_eq!(info.vtd, None);
    // struct iommu_test_hw_info { flags, test_reg }.
    assert_eq!(info.data.len(), 8, "{info:?}");
    assert_eq!(
        info.data[4..8],
        mock::HW_INFO_SELFTEST_REGVAL.to_ne_bytes(),
        "{info:?}"
    );
    assert_eq!(info.max_pasid_log2, mock::PASID_WIDTH);
    assert!(info.dirty_tracking(), "{info:?}");
    // Not a PCI device: no PASID control bits, no ATS.
    assert!(!info.pasid_exec() && !info.pasid_priv());
    assert!(info.ats_not_supported(), "{info:?}");
    // Asking for the mock's own type works; another type is refused.
    let same =
        f.fd.hw_info_of_type(dev.idev_id, mock::HW_INFO_TYPE_SELFTEST)
            .expect("typed hw_info");
    assert_eq!(same, info);
    expect_err(
        f.fd.hw_info_of_type(dev.idev_id, viommu::iommufd::HW_INFO_TYPE_INTEL_VTD),
        ErrorKind::Unsupported,
    );
    // Per device: no PASID, no dirty tracking.
    let plain = f
        .mock
        .add_device(
            ioas,
            MockDeviceFlags {
                no_dirty: true,
                pasid: false,
            },
        )
        .expect("mock device");
    let info = f.fd.hw_info(plain.idev_id).expect("hw_info");
    assert_eq!(info.max_pasid_log2, 0);
    assert!(!info.dirty_tracking(), "{info:?}");
    expect_err(f.fd.hw_info(ioas), ErrorKind::NotFound);
    expect_err(f.fd.hw_info(u32::MAX), ErrorKind::NotFound);
    passed("hw_info_selftest");
}

#[test]
fn hwpt_alloc_paging() {
    let buf = Buffer::new(16 * KIB as usize);
    let Some(f) = fixture("hwpt_alloc_paging") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let hwpt =
        f.fd.hwpt_alloc(&HwptAlloc::paging(dev.idev_id, ioas))
            .expect("paging HWPT");
    assert_eq!(f.mock.replace(dev.stdev_id, hwpt).expect("attach"), hwpt);
    expect_err(f.fd.destroy(hwpt), ErrorKind::Busy);
    // IOAS mappings reach every paging table of the IOAS.
    f.map(ioas, IOVA, &buf, 16 * KIB).expect("map");
    f.mock
        .check_map(hwpt, IOVA, 16 * KIB, buf.va())
        .expect("new table maps the buffer");
    f.fd.ioas_unmap_all(ioas).expect("unmap");
    // Back to an automatic table; now the HWPT can go.
    f.mock
        .replace(dev.stdev_id, ioas)
        .expect("back to the IOAS");
    f.fd.destroy(hwpt).expect("destroy");
    expect_err(f.fd.destroy(hwpt), ErrorKind::NotFound);
    passed("hwpt_alloc_paging");
}

#[test]
fn hwpt_alloc_flags() {
    let Some(f) = fixture("hwpt_alloc_flags") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(PASID_DEV);
    assert!(f.fd.probe_nesting(dev.idev_id, ioas).expect("probe"));
    let parent = f.nest_parent(&dev, ioas);
    let all = HwptAlloc {
        flags: HwptFlags {
            nest_parent: true,
            dirty_tracking: true,
            pasid: true,
        },
        ..HwptAlloc::paging(dev.idev_id, ioas)
    };
    let hwpt = f.fd.hwpt_alloc(&all).expect("all flags");
    f.fd.destroy(hwpt).expect("destroy");
    // A fault queue belongs on nested tables, not on a nest parent.
    let fq = f.fd.fault_queue_alloc().expect("fault queue");
    let bad = HwptAlloc {
        fault_id: Some(fq.id()),
        ..HwptAlloc::nest_parent(dev.idev_id, ioas)
    };
    expect_err(f.fd.hwpt_alloc(&bad), ErrorKind::Unsupported);
    // Dirty tracking on a device without it.
    let no_dirty = f
        .mock
        .add_device(
            ioas,
            MockDeviceFlags {
                no_dirty: true,
                pasid: false,
            },
        )
        .expect("mock device");
    let dirty = HwptAlloc {
        flags: HwptFlags {
            dirty_tracking: true,
            ..Default::default()
        },
        ..HwptAlloc::paging(no_dirty.idev_id, ioas)
    };
    expect_err(f.fd.hwpt_alloc(&dirty), ErrorKind::Unsupported);
    f.fd.destroy(parent).expect("destroy");
    passed("hwpt_alloc_flags");
}

#[test]
fn hwpt_alloc_nested() {
    let Some(f) = fixture("hwpt_alloc_nested") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let nested = f.nested(&dev, parent, false, None);
    f.check_iotlbs(nested, [mock::IOTLB_DEFAULT; 4]);
    // The parent is in use now.
    expect_err(f.fd.destroy(parent), ErrorKind::Busy);
    // Nested on a table that is not a nest parent, or on a nested one.
    let plain =
        f.fd.hwpt_alloc(&HwptAlloc::paging(dev.idev_id, ioas))
            .expect("paging");
    let data = HwptData::Selftest { iotlb: 1 };
    let on_plain = HwptAlloc::nested(dev.idev_id, plain, data.clone());
    expect_err(f.fd.hwpt_alloc(&on_plain), ErrorKind::InvalidArgument);
    let on_nested = HwptAlloc::nested(dev.idev_id, nested, data);
    expect_err(f.fd.hwpt_alloc(&on_nested), ErrorKind::InvalidArgument);
    // A nested table needs data of a type the driver knows.
    let no_data = HwptAlloc::nested(dev.idev_id, parent, HwptData::None);
    expect_err(f.fd.hwpt_alloc(&no_data), ErrorKind::Unsupported);
    let unknown = HwptAlloc::nested(
        dev.idev_id,
        parent,
        HwptData::Raw {
            data_type: mock::HWPT_DATA_SELFTEST + 1,
            bytes: vec![0; 4],
        },
    );
    expect_err(f.fd.hwpt_alloc(&unknown), ErrorKind::Unsupported);
    // The device runs on the nested table; then both go.
    f.mock.replace(dev.stdev_id, nested).expect("attach nested");
    expect_err(f.fd.destroy(nested), ErrorKind::Busy);
    f.mock.replace(dev.stdev_id, ioas).expect("detach");
    f.fd.destroy(nested).expect("destroy nested");
    f.fd.destroy(parent).expect("destroy parent");
    f.fd.destroy(plain).expect("destroy paging");
    passed("hwpt_alloc_nested");
}

#[test]
fn hwpt_alloc_wrong_size() {
    let Some(f) = fixture("hwpt_alloc_wrong_size") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let raw = |len: usize| {
        HwptAlloc::nested(
            dev.idev_id,
            parent,
            HwptData::Raw {
                data_type: mock::HWPT_DATA_SELFTEST,
                bytes: vec![0; len],
            },
        )
    };
    // Shorter than the first version of struct iommu_hwpt_selftest.
    expect_err(f.fd.hwpt_alloc(&raw(3)), ErrorKind::InvalidArgument);
    // Longer than the kernel's structure.
    expect_err(f.fd.hwpt_alloc(&raw(64)), ErrorKind::InvalidArgument);
    // The whole current structure is fine.
    let ok = f.fd.hwpt_alloc(&raw(8)).expect("8-byte data");
    f.fd.destroy(ok).expect("destroy");
    passed("hwpt_alloc_wrong_size");
}

#[test]
fn hwpt_invalidate_batch() {
    let Some(f) = fixture("hwpt_invalidate_batch") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let a = f.nested(&dev, parent, false, None);
    let b = f.nested(&dev, parent, false, None);
    let d = mock::IOTLB_DEFAULT;
    // An empty batch only checks the type.
    assert_eq!(
        f.fd.hwpt_invalidate(a, InvalidateBatch::Selftest(&[]))
            .expect("empty"),
        0
    );
    // Two entries in one call.
    let two = [
        SelftestInvalidation {
            flags: 0,
            iotlb_id: 0,
        },
        SelftestInvalidation {
            flags: 0,
            iotlb_id: 2,
        },
    ];
    assert_eq!(
        f.fd.hwpt_invalidate(a, InvalidateBatch::Selftest(&two))
            .expect("two"),
        2
    );
    f.check_iotlbs(a, [0, d, 0, d]);
    f.check_iotlbs(b, [d; 4]);
    // "All" ignores the id.
    let all = [SelftestInvalidation {
        flags: SelftestInvalidation::ALL,
        iotlb_id: 3,
    }];
    assert_eq!(
        f.fd.hwpt_invalidate(b, InvalidateBatch::Selftest(&all))
            .expect("all"),
        1
    );
    f.check_iotlbs(b, [0; 4]);
    f.check_iotlbs(a, [0, d, 0, d]);
    // The same through a raw batch.
    let mut raw = Vec::new();
    for id in [1u32, 3] {
        raw.extend_from_slice(&0u32.to_ne_bytes());
        raw.extend_from_slice(&id.to_ne_bytes());
    }
    let batch = InvalidateBatch::Raw {
        data_type: mock::HWPT_INVALIDATE_DATA_SELFTEST,
        entry_len: 8,
        entry_num: 2,
        data: &raw,
    };
    assert_eq!(f.fd.hwpt_invalidate(a, batch).expect("raw"), 2);
    f.check_iotlbs(a, [0; 4]);
    passed("hwpt_invalidate_batch");
}

#[test]
fn hwpt_invalidate_partial() {
    let Some(f) = fixture("hwpt_invalidate_partial") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let hwpt = f.nested(&dev, parent, false, None);
    let d = mock::IOTLB_DEFAULT;
    // The second entry has flags the mock does not know: the first is done.
    let entries = [
        SelftestInvalidation {
            flags: 0,
            iotlb_id: 0,
        },
        SelftestInvalidation {
            flags: 0xffff_ffff,
            iotlb_id: 1,
        },
    ];
    let out =
        f.fd.hwpt_invalidate_partial(hwpt, InvalidateBatch::Selftest(&entries));
    assert_eq!(out.processed, 1);
    assert_eq!(
        out.error.as_ref().map(|e| e.kind()),
        Some(ErrorKind::Unsupported)
    );
    f.check_iotlbs(hwpt, [0, d, d, d]);
    // The second entry names an IOTLB entry the mock does not have.
    let entries = [
        SelftestInvalidation {
            flags: 0,
            iotlb_id: 2,
        },
        SelftestInvalidation {
            flags: 0,
            iotlb_id: mock::NESTED_IOTLB_NUM,
        },
    ];
    let out =
        f.fd.hwpt_invalidate_partial(hwpt, InvalidateBatch::Selftest(&entries));
    assert_eq!(out.processed, 1);
    let e = out.into_result().expect_err("second entry refused");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(e.op(), "IOMMU_HWPT_INVALIDATE");
    f.check_iotlbs(hwpt, [0, d, 0, d]);
    passed("hwpt_invalidate_partial");
}

#[test]
fn hwpt_invalidate_errors() {
    let Some(f) = fixture("hwpt_invalidate_errors") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let hwpt = f.nested(&dev, parent, false, None);
    let one = [SelftestInvalidation::default()];
    let bytes = [0u8; 64];
    let raw = |data_type: u32, entry_len: u32| InvalidateBatch::Raw {
        data_type,
        entry_len,
        entry_num: 1,
        data: &bytes,
    };
    let t = mock::HWPT_INVALIDATE_DATA_SELFTEST;
    // Wrong entry sizes.
    for len in [0, 1, 9] {
        let out = f.fd.hwpt_invalidate_partial(hwpt, raw(t, len));
        assert_eq!(out.processed, 0, "entry_len {len}");
        expect_err(out.into_result(), ErrorKind::InvalidArgument);
    }
    // A type the mock refuses, and VT-d entries on a mock table.
    expect_err(
        f.fd.hwpt_invalidate(hwpt, raw(mock::HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 8)),
        ErrorKind::InvalidArgument,
    );
    expect_err(
        f.fd.hwpt_invalidate(hwpt, InvalidateBatch::Vtd(&[VtdInvalidation::all()])),
        ErrorKind::InvalidArgument,
    );
    // A nest parent has no user-managed cache.
    expect_err(
        f.fd.hwpt_invalidate(parent, InvalidateBatch::Selftest(&one)),
        ErrorKind::InvalidArgument,
    );
    // No such object.
    expect_err(
        f.fd.hwpt_invalidate(u32::MAX, InvalidateBatch::Selftest(&one)),
        ErrorKind::NotFound,
    );
    // A raw batch that claims more than its buffer holds never reaches the
    // kernel.
    let short = InvalidateBatch::Raw {
        data_type: t,
        entry_len: 8,
        entry_num: 9,
        data: &bytes,
    };
    let e = expect_err(
        f.fd.hwpt_invalidate(hwpt, short),
        ErrorKind::InvalidArgument,
    );
    assert_eq!(e.errno(), None);
    f.check_iotlbs(hwpt, [mock::IOTLB_DEFAULT; 4]);
    passed("hwpt_invalidate_errors");
}
