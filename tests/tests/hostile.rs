//! A hostile guest against the emulated VT-d: garbage in every register
//! with every access size, broken tables, a broken invalidation queue and
//! an interrupt-remapping table outside RAM — with DMA in flight. The VMM
//! must keep running, record the faults the spec prescribes, and the guest
//! must still be able to power off.

use guest_tests::*;

#[test]
fn hostile_guest_gets_spec_faults_and_vmm_survives() {
    let _l1 = serial();
    let dir = scratch("viommu-hostile");
    let prog = guest_program(&dir, "vtd-hostile.c");
    let disk = dir.join("disk.img");
    disk_image(&disk, 16 << 20);
    let mut args = VmmArgs::new(initramfs_with(
        &dir,
        "hostile.sh",
        &["virtio_blk"],
        &[(prog, "/bin/vtd-hostile")],
    ));
    args.cpus = 2;
    args.cmdline =
        "console=ttyS0 quiet panic=-1 intel_iommu=off intremap=off iomem=relaxed printk.devkmsg=on"
            .into();
    args.disks.push(format!("path={},iommu=on", disk.display()));
    args.extra = vec![
        "--device".into(),
        "dma-test,iommu=on".into(),
        "--viommu".into(),
        "intel".into(),
        "--counters".into(),
    ];
    let run = run_in_l1(&dir, &args.command());
    let out = &run.output;
    assert!(run.has_line("GARBAGE-DONE"), "{out}");
    assert!(run.has_line("HOSTILE-DONE"), "{out}");
    assert_eq!(run.value("HOSTILE-EXIT").as_deref(), Some("0"), "{out}");
    // Power off still works: the VMM exits 0.
    assert_eq!(run.status, 0, "{out}");
    let expect = [
        ("legacy-root-outside-ram", "0x8"),
        ("legacy-root-reserved", "0xa"),
        ("legacy-context-reserved", "0xb"),
        ("legacy-context-invalid", "0x3"),
        ("legacy-root-not-present", "0x1"),
        ("sm-root-outside-ram", "0x38"),
        ("sm-root-reserved", "0x3a"),
        ("sm-context-reserved", "0x42"),
        ("sm-pasid-dir-outside-ram", "0x50"),
        ("sm-ttm-reserved", "0x30"),
    ];
    for (what, reason) in expect {
        assert_eq!(
            run.value(&format!("REASON {what}")).as_deref(),
            Some(reason),
            "{what}:\n{out}"
        );
    }
    // Queue errors: FSTS.IQE with the IQEI cause (§11.4.9.9).
    let iqe = |what: &str| {
        out.lines()
            .find(|l| l.contains(&format!("IQE {what} ")))
            .unwrap_or_else(|| panic!("no IQE line {what}:\n{out}"))
            .to_string()
    };
    assert!(iqe("queue-outside-ram").contains("fsts=0x10 iqercd=0x2"));
    assert!(iqe("queue-retry").contains("fsts=0x10"));
    assert!(iqe("bad-type").contains("fsts=0x10 iqercd=0x3 iqh=0"));
    assert!(iqe("reserved-bits").contains("fsts=0x10 iqercd=0x4"));
    assert!(iqe("tail-beyond-queue").contains("fsts=0x10 iqercd=0x1"));
    assert!(
        iqe("wrapped").contains("fsts=0 "),
        "a wrapped valid queue is fine"
    );
    // Remapping with the table outside RAM blocked the guest's
    // compatibility-format interrupts (25h) or failed to read it (23h).
    let ir_faults = ["fault_0x23=", "fault_0x25="];
    assert!(ir_faults.iter().any(|f| out.contains(f)), "{out}");
}
