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

/// Boots the 7.2 guest with nesting offered and runs nest-probe in it
/// (attached to `pasid` when given); checks what every variant shows.
fn nest_run(name: &str, pasid: Option<u32>) -> L1Run {
    let _l1 = serial();
    let dir = scratch(name);
    let probe = guest_program(&dir, "nest-probe.c");
    let bind = repo_root().join("tests/guest/vfio-bind.sh");
    let initrd = initramfs_with(
        &dir,
        "nest-check.sh",
        &[],
        &[(probe, "/bin/nest-probe"), (bind, "/bin/vfio-bind")],
    );
    let mut args = VmmArgs::new(initrd);
    args.memory = "1G";
    args.cmdline = "console=ttyS0 quiet panic=-1 intel_iommu=on".into();
    let mut viommu = "intel,offer-nesting=on".to_string();
    if let Some(p) = pasid {
        args.cmdline.push_str(&format!(" nest.pasid={p}"));
        viommu.push_str(",pasid-bits=8");
    }
    args.extra = vec![
        "--viommu".into(),
        viommu,
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
    // DMA3 went to a page the first stage does not map: the device's DMA
    // fails (how the unit reports it depends on ATS/PRI, see the tests).
    assert_eq!(run.value("DMA3-STATUS").as_deref(), Some("2"), "{out}");
    // The guest's nested invalidations reached the unit as PASID-based
    // IOTLB invalidations.
    assert!(run.counter("inv_p_iotlb") >= 8, "{out}");
    assert!(run.counter("translations") >= 2, "{out}");
    run
}

#[test]
fn guest_hypervisor_nests_through_the_emulated_vtd() {
    let run = nest_run("nesting-guest-hypervisor", None);
    let out = &run.output;
    // No ATS here: DMA3's translation fault is recorded by the unit
    // (reason 71h) and logged by the guest's DMAR driver with the
    // address the device used; it was the only fault.
    let faults: Vec<&str> = out.lines().filter(|l| l.contains("FAULT-DMESG")).collect();
    assert!(
        faults.len() == 1 && faults[0].contains("fault addr 0x40008000"),
        "{faults:?}"
    );
    assert_eq!(run.counter("faults"), 1, "{out}");
}

/// The nested table on PASID 5 of the device, the device itself on the
/// nest parent: DMA tagged with the PASID goes through both stages, DMA
/// without it through the second stage only. With PASIDs the unit offers
/// device TLBs and page requests, and the guest's driver enables ATS and
/// PRI on dma-test: the nested invalidations reach the device TLB too. The
/// nested table has an iommufd fault queue, so a translation the first
/// stage lacks becomes a page request that travels unit PRQ → the guest's
/// driver → the fault queue → the probe: refused, the DMA fails (DMA3);
/// served (PTE written, one invalidation, success), the device's retry
/// lands in the new page (DMA4).
#[test]
fn guest_hypervisor_nests_a_pasid() {
    let run = nest_run("nesting-guest-hypervisor-pasid", Some(5));
    let out = &run.output;
    assert_eq!(run.value("ATTACH-RID").as_deref(), Some("ok"), "{out}");
    assert_eq!(run.value("DMA-RID-STATUS").as_deref(), Some("1"), "{out}");
    assert_eq!(run.value("DMA-RID").as_deref(), Some("ok"), "{out}");
    assert!(run.counter("inv_p_dev_tlb") >= 8, "{out}");
    assert_eq!(run.value("FAULT-QUEUE").as_deref(), Some("ok"), "{out}");
    assert_eq!(
        run.value("PRQ1-ADDR").as_deref(),
        Some("0x40008000"),
        "{out}"
    );
    assert_eq!(run.value("PRQ1-PASID").as_deref(), Some("5"), "{out}");
    assert_eq!(run.value("PRQ-INVALID").as_deref(), Some("ok"), "{out}");
    assert_eq!(
        run.value("DMA4-FIRST-STATUS").as_deref(),
        Some("3"),
        "{out}"
    );
    assert_eq!(
        run.value("PRQ2-ADDR").as_deref(),
        Some("0x40009000"),
        "{out}"
    );
    assert_eq!(run.value("DMA4-STATUS").as_deref(), Some("1"), "{out}");
    assert_eq!(run.value("PRQ-SERVED").as_deref(), Some("ok"), "{out}");
    assert_eq!(run.counter("page_requests"), 2, "{out}");
    assert_eq!(run.counter("page_responses"), 2, "{out}");
    assert_eq!(run.counter("faults"), 0, "{out}");
}
