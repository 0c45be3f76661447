//! The VMM's VT-d as the host IOMMU of a guest hypervisor: the 7.2 kernel
//! that resources/l1-kernel.sh builds (iommufd, VFIO cdev, intel-iommu)
//! boots as a guest with `--viommu intel,offer-nesting=on` and the
//! dma-test device behind the unit. Its real intel-iommu driver allocates
//! a NEST_PARENT domain (refused by an IOMMU without ECAP.NEST, e.g.
//! QEMU's VT-d) and a nested one from a first-stage table a guest program
//! built, and programs a nested PASID entry into the emulated unit; the
//! device's DMA then lands where first stage ∘ second stage says, follows
//! a batched first-stage invalidation, and a DMA the first stage does not
//! map faults in the unit and reaches the guest's DMAR driver.

use guest_tests::*;

#[test]
fn guest_hypervisor_nests_through_the_emulated_vtd() {
    let _l1 = serial();
    let dir = scratch("nesting-guest-hypervisor");
    let probe = guest_program(&dir, "nest-probe.c");
    let initrd = initramfs_with(&dir, "nest-check.sh", &[], &[(probe, "/bin/nest-probe")]);
    let mut args = VmmArgs::new(initrd);
    args.memory = "1G";
    args.cmdline = "console=ttyS0 quiet panic=-1 intel_iommu=on".into();
    args.extra = vec![
        "--viommu".into(),
        "intel,offer-nesting=on".into(),
        "--device".into(),
        "dma-test,iommu=on".into(),
        "--counters".into(),
    ];
    let mut cmd = args.command();
    // The guest is the 7.2 kernel (iommufd and VFIO cdev built in).
    let k = cmd.iter().position(|a| a == "--kernel").expect("--kernel") + 1;
    cmd[k] = l1_kernel_dir().join("vmlinuz").display().to_string();
    let run = run_in_l1(&dir, &cmd);
    let out = &run.output;
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{out}");
    assert_eq!(run.status, 0, "{out}");
    assert_eq!(run.value("HW-INFO-TYPE").as_deref(), Some("1"), "{out}");
    assert_eq!(run.value("HW-INFO-NEST").as_deref(), Some("1"), "{out}");
    for key in ["NEST-PARENT", "NESTED", "ATTACH", "DMA1", "DMA2"] {
        assert_eq!(run.value(key).as_deref(), Some("ok"), "{key}: {out}");
    }
    assert_eq!(run.value("DMA1-STATUS").as_deref(), Some("1"), "{out}");
    assert_eq!(run.value("DMA2-STATUS").as_deref(), Some("1"), "{out}");
    // vfio-pci resets the function with FLR, which it advertises.
    assert_eq!(run.value("RESET-METHOD").as_deref(), Some("flr"), "{out}");
    assert_eq!(run.value("RESET").as_deref(), Some("ok"), "{out}");
    // One ioctl took the whole batch.
    assert_eq!(run.value("INVALIDATE").as_deref(), Some("ok"), "{out}");
    assert_eq!(run.value("entries").as_deref(), Some("8"), "{out}");
    let bad: Vec<&str> = out.lines().filter(|l| l.contains("BAD-DMESG")).collect();
    assert!(bad.is_empty(), "fault/error lines in dmesg: {bad:?}");
    // DMA3 went to a page the first stage does not map: a DMA fault for
    // the device, recorded by the unit and logged by the guest's driver
    // with the address the device used.
    assert_eq!(run.value("DMA3-STATUS").as_deref(), Some("2"), "{out}");
    let faults: Vec<&str> = out.lines().filter(|l| l.contains("FAULT-DMESG")).collect();
    assert!(
        faults.len() == 1 && faults[0].contains("fault addr 0x40008000"),
        "{faults:?}"
    );
    // The guest's nested invalidations reached the unit as PASID-based
    // IOTLB invalidations; DMA3 was the only fault.
    assert!(run.counter("inv_p_iotlb") >= 8, "{out}");
    assert!(run.counter("translations") >= 2, "{out}");
    assert_eq!(run.counter("faults"), 1, "{out}");
}
