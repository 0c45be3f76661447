//! The emulated Intel VT-d under a real guest: Debian's stock kernel drives
//! it with its own intel-iommu driver, in each of the modes Linux uses.

use guest_tests::*;

const DISK_SIZE: u64 = 96 << 20;
const ROUND_TRIP: u64 = 64 << 20;

struct Mode {
    name: &'static str,
    cmdline: &'static str,
    viommu: &'static str,
    group_type: &'static str,
    translates: bool,
}

fn run_mode(m: &Mode) -> L1Run {
    let _l1 = serial();
    let dir = scratch(&format!("viommu-{}", m.name));
    let disk = dir.join("disk.img");
    disk_image(&disk, DISK_SIZE);
    let mut args = VmmArgs::new(initramfs(&dir, "iommu-check.sh", &["virtio_blk"]));
    args.cpus = 2;
    args.cmdline = format!("console=ttyS0 quiet panic=-1 {}", m.cmdline);
    args.disks.push(format!("path={},iommu=on", disk.display()));
    args.extra = vec!["--viommu".into(), m.viommu.into(), "--counters".into()];
    let run = run_in_l1(&dir, &args.command());
    let out = &run.output;
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{out}");
    assert_eq!(run.status, 0, "{out}");
    assert!(
        run.has_line("DMAR: dmar0: Using Queued invalidation"),
        "{out}"
    );
    assert!(run.has_line("IOMMU-CLASS: dmar0"), "{out}");
    assert_eq!(
        run.value("VDA-GROUP-TYPE").as_deref(),
        Some(m.group_type),
        "{out}"
    );
    let bad: Vec<&str> = out.lines().filter(|l| l.contains("BAD-DMESG")).collect();
    assert!(bad.is_empty(), "fault/error lines in dmesg: {bad:?}");
    assert_eq!(run.value("WRITE").as_deref(), Some("ok"), "{out}");
    let src = run.value("SRC-SHA").expect("data hash");
    assert_eq!(run.value("READ-SHA"), Some(src.clone()));
    assert_eq!(sha256_prefix(&disk, ROUND_TRIP), src, "disk file differs");
    // Interrupt remapping is on, in x2APIC mode, and carries the disk's MSI-X.
    assert!(
        run.has_line("Enabled IRQ remapping in x2apic mode"),
        "{out}"
    );
    assert!(run.has_line("IR-PCI-MSIX-0000:00:01.0"), "{out}");
    assert!(run.counter("interrupts_remapped") > 0);
    assert_eq!(run.counter("faults"), 0, "{out}");
    let translations = run.counter("translations");
    if m.translates {
        // 64 MiB each way is 32768 pages at least.
        assert!(translations > 32768, "only {translations} translations");
    } else {
        assert_eq!(translations, 0, "pass-through must not translate");
        // Every DMA still went through the unit, which passed it through.
        assert!(run.counter("identity") > 1000);
    }
    eprintln!("{}: {:?}", m.name, run.elapsed);
    run
}

#[test]
fn scalable_mode_first_stage_lazy() {
    let run = run_mode(&Mode {
        name: "scalable",
        cmdline: "intel_iommu=on",
        viommu: "intel",
        group_type: "DMA-FQ",
        translates: true,
    });
    assert!(
        run.counter("inv_p_iotlb") > 0,
        "first-stage domains flush by PASID"
    );
}

#[test]
fn legacy_mode_second_stage() {
    let run = run_mode(&Mode {
        name: "legacy",
        cmdline: "intel_iommu=on,sm_off",
        viommu: "intel",
        group_type: "DMA-FQ",
        translates: true,
    });
    assert!(run.counter("inv_iotlb") > 0);
}

#[test]
fn scalable_mode_strict() {
    let run = run_mode(&Mode {
        name: "strict",
        cmdline: "intel_iommu=on iommu.strict=1",
        viommu: "intel",
        group_type: "DMA",
        translates: true,
    });
    // Strict mode invalidates on every unmap.
    assert!(run.counter("inv_p_iotlb") > 100);
}

#[test]
fn pass_through() {
    run_mode(&Mode {
        name: "pt",
        cmdline: "intel_iommu=on iommu=pt",
        viommu: "intel",
        group_type: "identity",
        translates: false,
    });
}

#[test]
fn second_stage_in_scalable_mode() {
    run_mode(&Mode {
        name: "scalable-sl",
        cmdline: "intel_iommu=on",
        viommu: "intel,first-stage=off",
        group_type: "DMA-FQ",
        translates: true,
    });
}

/// The dma-test device DMAs to IOVAs the guest never mapped; the guest's
/// own fault handler reports what it read from the fault recording
/// registers.
fn fault_run(name: &str, cmdline: &str) -> L1Run {
    let _l1 = serial();
    let dir = scratch(&format!("viommu-fault-{name}"));
    let mut args = VmmArgs::new(initramfs(&dir, "dma-fault.sh", &[]));
    args.cpus = 2;
    args.cmdline = format!("console=ttyS0 quiet panic=-1 iomem=relaxed {cmdline}");
    args.extra = vec![
        "--device".into(),
        "dma-test,iommu=on".into(),
        "--viommu".into(),
        "intel".into(),
        "--counters".into(),
    ];
    let run = run_in_l1(&dir, &args.command());
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{}", run.output);
    assert_eq!(run.status, 0, "{}", run.output);
    assert_eq!(
        run.value("FAULTS").as_deref(),
        Some("0x00000002"),
        "{}",
        run.output
    );
    assert_eq!(run.counter("faults_recorded"), 2);
    run
}

#[test]
fn dma_fault_reported_by_guest_driver_scalable() {
    let run = fault_run("scalable", "intel_iommu=on");
    // First-stage default domain: the leaf for an unmapped IOVA is not present.
    assert!(run.has_line(
        "DMAR: [DMA Write NO_PASID] Request device [00:01.0] fault addr 0xdead0000 [fault reason 0x71]"
    ), "{}", run.output);
    assert!(run.has_line(
        "DMAR: [DMA Read NO_PASID] Request device [00:01.0] fault addr 0xbeef0000 [fault reason 0x71]"
    ), "{}", run.output);
}

#[test]
fn dma_fault_reported_by_guest_driver_legacy() {
    let run = fault_run("legacy", "intel_iommu=on,sm_off");
    // Legacy second stage: a non-present entry is a missing write (5h) or
    // read (6h) permission.
    assert!(run.has_line(
        "DMAR: [DMA Write NO_PASID] Request device [00:01.0] fault addr 0xdead0000 [fault reason 0x05] PTE Write access is not set"
    ), "{}", run.output);
    assert!(run.has_line(
        "DMAR: [DMA Read NO_PASID] Request device [00:01.0] fault addr 0xbeef0000 [fault reason 0x06] PTE Read access is not set"
    ), "{}", run.output);
}

#[test]
fn caching_mode_makes_the_guest_strict() {
    // With CAP.CM and second-stage tables the guest must flush on every
    // map, and Linux switches the DMA domain to strict invalidation.
    let run = run_mode(&Mode {
        name: "caching-mode",
        cmdline: "intel_iommu=on",
        viommu: "intel,caching-mode=on,first-stage=off",
        group_type: "DMA",
        translates: true,
    });
    assert!(run.counter("inv_iotlb") > 1000, "flushes on map and unmap");
}
