//! Fault queues and PASID attachment.

use viommu::iommufd::mock::{self, Iopf, MockDeviceFlags};
use viommu::iommufd::{
    ErrorKind, FaultQueue, HwptAlloc, HwptData, HwptFlags, PageFault, PageResponseCode,
};

use super::{expect_err, fixture, passed, PASID_DEV};

/// The one record `fq` must hold now.
#[track_caller]
fn one_fault(fq: &FaultQueue) -> PageFault {
    let faults = fq.read_faults().expect("read faults");
    assert_eq!(faults.len(), 1, "{faults:?}");
    faults[0]
}

#[test]
fn fault_queue_iopf() {
    let Some(f) = fixture("fault_queue_iopf") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let fq = f.fd.fault_queue_alloc().expect("fault queue");
    let iopf_hwpt = f.nested(&dev, parent, false, Some(fq.id()));
    f.mock.replace(dev.stdev_id, iopf_hwpt).expect("attach");
    expect_err(f.fd.destroy(iopf_hwpt), ErrorKind::Busy);
    assert!(fq.read_faults().expect("empty read").is_empty());

    let rw = PageFault::PERM_READ | PageFault::PERM_WRITE;
    let iopf = Iopf {
        dev_id: dev.idev_id,
        pasid: 1,
        grpid: 2,
        perm: rw,
        addr: 0xdead_b000,
    };
    f.mock.trigger_iopf(&iopf).expect("trigger");
    let fault = one_fault(&fq);
    assert_eq!(fault.dev_id, dev.idev_id);
    assert_eq!(fault.pasid, 1);
    assert_eq!(fault.grpid, 2);
    assert_eq!(fault.perm, rw);
    assert_eq!(fault.addr, 0xdead_b000);
    assert_eq!(fault.length, 0);
    assert!(fault.pasid_valid() && fault.last_page(), "{fault:?}");
    assert!(fault.read() && fault.write() && !fault.exec() && !fault.privileged());
    fq.respond(fault.cookie, PageResponseCode::Success)
        .expect("respond");
    // One answer per group.
    expect_err(
        fq.respond(fault.cookie, PageResponseCode::Success),
        ErrorKind::InvalidArgument,
    );

    // Without a PASID; answered INVALID.
    f.mock
        .trigger_iopf(&Iopf {
            pasid: 0,
            perm: PageFault::PERM_READ,
            ..iopf
        })
        .expect("trigger");
    let fault = one_fault(&fq);
    assert!(!fault.pasid_valid() && fault.last_page(), "{fault:?}");
    assert_eq!(fault.perm, PageFault::PERM_READ);
    fq.respond(fault.cookie, PageResponseCode::Invalid)
        .expect("respond invalid");
    assert!(fq.read_faults().expect("drained").is_empty());

    // Several groups in one read, answered in one write.
    for grpid in [5, 6, 7] {
        f.mock
            .trigger_iopf(&Iopf { grpid, ..iopf })
            .expect("trigger");
    }
    let faults = fq.read_faults().expect("three faults");
    assert_eq!(
        faults.iter().map(|f| f.grpid).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    let answers: Vec<_> = faults
        .iter()
        .map(|f| (f.cookie, PageResponseCode::Success))
        .collect();
    fq.respond_all(&answers).expect("respond all");
    expect_err(
        fq.respond(u32::MAX, PageResponseCode::Success),
        ErrorKind::InvalidArgument,
    );

    f.mock.replace(dev.stdev_id, ioas).expect("detach");
    f.fd.destroy(iopf_hwpt).expect("destroy");
    passed("fault_queue_iopf");
}

#[test]
fn fault_queue_auto_response() {
    let Some(f) = fixture("fault_queue_auto_response") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let fq = f.fd.fault_queue_alloc().expect("fault queue");
    let iopf_hwpt = f.nested(&dev, parent, false, Some(fq.id()));
    f.mock.replace(dev.stdev_id, iopf_hwpt).expect("attach");
    let iopf = Iopf {
        dev_id: dev.idev_id,
        pasid: 0,
        grpid: 1,
        perm: PageFault::PERM_READ,
        addr: 0x1000,
    };
    // A group read but not answered, and one never read.
    f.mock.trigger_iopf(&iopf).expect("trigger");
    let fault = one_fault(&fq);
    f.mock
        .trigger_iopf(&Iopf { grpid: 2, ..iopf })
        .expect("trigger");
    // Replacing the table answers both with INVALID in the kernel.
    f.mock.replace(dev.stdev_id, parent).expect("replace");
    expect_err(
        fq.respond(fault.cookie, PageResponseCode::Success),
        ErrorKind::InvalidArgument,
    );
    assert!(fq.read_faults().expect("nothing left").is_empty());
    f.fd.destroy(iopf_hwpt).expect("destroy");
    passed("fault_queue_auto_response");
}

#[test]
fn fault_queue_errors() {
    let Some(f) = fixture("fault_queue_errors") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(MockDeviceFlags::default());
    let parent = f.nest_parent(&dev, ioas);
    let nested = |fault_id: u32| HwptAlloc {
        fault_id: Some(fault_id),
        ..HwptAlloc::nested(
            dev.idev_id,
            parent,
            HwptData::Selftest {
                iotlb: mock::IOTLB_DEFAULT,
            },
        )
    };
    // No such fault queue; an object that is not one.
    expect_err(f.fd.hwpt_alloc(&nested(u32::MAX)), ErrorKind::NotFound);
    expect_err(f.fd.hwpt_alloc(&nested(ioas)), ErrorKind::NotFound);
    // A fault queue in use cannot be destroyed; dropping it leaves the
    // object to the iommufd.
    let fq = f.fd.fault_queue_alloc().expect("fault queue");
    let id = fq.id();
    let hwpt = f.fd.hwpt_alloc(&nested(id)).expect("nested with faults");
    expect_err(f.fd.destroy(id), ErrorKind::Busy);
    drop(fq);
    f.fd.destroy(hwpt).expect("destroy HWPT");
    f.fd.destroy(id).expect("destroy the fault queue now");
    passed("fault_queue_errors");
}

#[test]
fn pasid_attach_replace_detach() {
    let Some(f) = fixture("pasid_attach_replace_detach") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(PASID_DEV);
    let m = &f.mock;
    let sd = dev.stdev_id;
    let parent = f.nest_parent(&dev, ioas);
    let n0 = f.nested(&dev, parent, true, None);
    let n1 = f.nested(&dev, parent, true, None);
    let s2 =
        f.fd.hwpt_alloc(&HwptAlloc {
            flags: HwptFlags {
                pasid: true,
                ..Default::default()
            },
            ..HwptAlloc::paging(dev.idev_id, ioas)
        })
        .expect("PASID-capable paging HWPT");
    // Detaching what is not attached is harmless.
    m.pasid_detach(sd, 100).expect("detach nothing");
    // The RID's table must be PASID-compatible before any PASID attach.
    m.replace(sd, parent).expect("RID on the parent");
    expect_err(m.pasid_attach(sd, 100, s2), ErrorKind::InvalidArgument);
    m.replace(sd, s2).expect("RID on a PASID table");
    assert_eq!(m.pasid_attach(sd, 100, n0).expect("attach"), n0);
    m.pasid_check_hwpt(sd, 100, n0).expect("attached");
    expect_err(m.pasid_attach(sd, 100, n1), ErrorKind::Busy);
    // Now the RID cannot move to a table without PASID support.
    expect_err(m.replace(sd, parent), ErrorKind::InvalidArgument);
    assert_eq!(m.pasid_replace(sd, 100, n1).expect("replace"), n1);
    m.pasid_check_hwpt(sd, 100, n1).expect("replaced");
    expect_err(m.pasid_check_hwpt(sd, 100, n0), ErrorKind::InvalidArgument);
    m.pasid_detach(sd, 100).expect("detach");
    m.pasid_check_hwpt(sd, 100, 0).expect("detached");
    // An IOAS is not a table for a PASID; replace needs an attach first.
    expect_err(m.pasid_attach(sd, 100, ioas), ErrorKind::InvalidArgument);
    expect_err(m.pasid_replace(sd, 200, s2), ErrorKind::InvalidArgument);
    // A failing replace leaves the old table (the mock fails every second
    // attach of this PASID).
    m.pasid_attach(sd, mock::PASID_FAKE_ERROR, s2)
        .expect("attach");
    expect_err(
        m.pasid_replace(sd, mock::PASID_FAKE_ERROR, n0),
        ErrorKind::NoMemory,
    );
    m.pasid_check_hwpt(sd, mock::PASID_FAKE_ERROR, s2)
        .expect("rolled back");
    m.pasid_detach(sd, mock::PASID_FAKE_ERROR).expect("detach");
    // A device without PASIDs refuses them.
    let plain = m
        .add_device(ioas, MockDeviceFlags::default())
        .expect("mock device");
    m.replace(plain.stdev_id, s2).expect("RID");
    expect_err(
        m.pasid_attach(plain.stdev_id, 100, s2),
        ErrorKind::InvalidArgument,
    );
    passed("pasid_attach_replace_detach");
}

#[test]
fn pasid_iopf() {
    let Some(f) = fixture("pasid_iopf") else {
        return;
    };
    let (ioas, dev) = f.ioas_with_device(PASID_DEV);
    let sd = dev.stdev_id;
    let parent = f.nest_parent(&dev, ioas);
    let s2 =
        f.fd.hwpt_alloc(&HwptAlloc {
            flags: HwptFlags {
                pasid: true,
                ..Default::default()
            },
            ..HwptAlloc::paging(dev.idev_id, ioas)
        })
        .expect("PASID-capable paging HWPT");
    let fq = f.fd.fault_queue_alloc().expect("fault queue");
    let iopf_hwpt = f.nested(&dev, parent, true, Some(fq.id()));
    f.mock.replace(sd, s2).expect("RID");
    f.mock
        .pasid_attach(sd, 2048, iopf_hwpt)
        .expect("PASID attach");
    f.mock
        .trigger_iopf(&Iopf {
            dev_id: dev.idev_id,
            pasid: 2048,
            grpid: 9,
            perm: PageFault::PERM_WRITE,
            addr: 0x4000,
        })
        .expect("trigger");
    let fault = one_fault(&fq);
    assert!(fault.pasid_valid(), "{fault:?}");
    assert_eq!((fault.pasid, fault.grpid, fault.addr), (2048, 9, 0x4000));
    fq.respond(fault.cookie, PageResponseCode::Success)
        .expect("respond");
    f.mock
        .pasid_replace(sd, 2048, s2)
        .expect("replace to stage 2");
    f.mock.pasid_check_hwpt(sd, 2048, s2).expect("replaced");
    f.mock.pasid_detach(sd, 2048).expect("detach");
    f.fd.destroy(iopf_hwpt).expect("destroy");
    passed("pasid_iopf");
}
