//! The VMM inside its own guest: the outer VMM boots the 7.2 kernel of
//! resources/l1-kernel.sh (KVM, iommufd, VFIO cdev built in) with its
//! virtio-blk disk behind the emulated VT-d. That guest gets /dev/kvm
//! (the VMM passes SVM through), binds the disk to vfio-pci, and runs the
//! same vmm binary, which passes the disk to a Debian L3 guest behind its
//! own VT-d. The L3 guest's intel-iommu (strict) does an 8 MiB round trip
//! whose bytes end up in the outer disk file.
//!
//! Two paths for the inner passthrough device:
//! - shadow: the outer unit offers no nesting, so the inner VMM mirrors
//!   the L3 guest's second-stage tables with map/unmap ioctls;
//! - nested: the outer unit offers nesting (`offer-nesting=on`), the 7.2
//!   guest's intel-iommu allocates NEST_PARENT and VTD_S1 nested domains
//!   on it, and the inner VMM (`nested=on`) installs the L3 guest's
//!   first-stage table as a nested HWPT and forwards its invalidations:
//!   no map ioctls for guest mappings at all.

use guest_tests::*;

const DISK_SIZE: u64 = 32 << 20;
const ROUND_TRIP: u64 = 8 << 20;

/// Boots the loop with the outer and inner `--viommu` options; asserts the
/// round trip and returns the run and the inner passthrough counters line.
fn self_hosted(name: &str, outer_viommu: &str, inner_viommu: &str) -> (L1Run, String) {
    let _l1 = serial();
    let dir = scratch(name);
    let disk = dir.join("disk.img");
    disk_image(&disk, DISK_SIZE);
    let l3_initrd = initramfs(&dir, "l3-round-trip.sh", &["virtio_blk"]);
    let initrd = self_hosted_initramfs(&dir, "self-hosted.sh", &l3_initrd);
    let mut args = VmmArgs::new(initrd);
    args.memory = "2G";
    args.cpus = 2;
    args.cmdline =
        format!("console=ttyS0 quiet panic=-1 intel_iommu=on inner_viommu={inner_viommu}");
    args.disks.push(format!("path={},iommu=on", disk.display()));
    args.extra = vec!["--viommu".into(), outer_viommu.into(), "--counters".into()];
    let mut cmd = args.command();
    let k = cmd.iter().position(|a| a == "--kernel").expect("--kernel") + 1;
    cmd[k] = l1_kernel_dir().join("vmlinuz").display().to_string();
    // Three levels of guests under TCG (about 2 minutes alone on the
    // machine, 8 beside another TCG machine): the inner VMM pins its
    // guest's RAM through the 7.2 guest's iommufd, a page fault per page.
    let opts = L1Options {
        timeout: Some(750),
        ..L1Options::default()
    };
    let run = run_in_l1_opts(&dir, &opts, &cmd);
    let out = &run.output;
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{out}");
    assert_eq!(run.status, 0, "{out}");
    assert_eq!(run.value("L2-KVM").as_deref(), Some("yes"), "{out}");
    assert_eq!(
        run.value("INNER-VIOMMU").as_deref(),
        Some(inner_viommu),
        "{out}"
    );
    assert_eq!(run.value("INNER-VMM-STATUS").as_deref(), Some("0"), "{out}");
    assert!(run.has_line("L3-USERSPACE-REACHED"), "{out}");
    assert_eq!(
        run.value("L3-IOMMU-CLASS").as_deref(),
        Some("dmar0"),
        "{out}"
    );
    assert_eq!(run.value("L3-WRITE").as_deref(), Some("ok"), "{out}");
    let src = run.value("L3-SRC-SHA").expect("L3 data hash");
    assert_eq!(run.value("L3-READ-SHA"), Some(src.clone()), "{out}");
    assert_eq!(
        sha256_prefix(&disk, ROUND_TRIP),
        src,
        "outer disk file differs"
    );
    assert_eq!(count(&outer_unit(&run), "faults"), 0, "{out}");
    assert_eq!(count(&inner_unit(&run), "faults"), 0, "{out}");
    let inner_counters = out
        .lines()
        .find(|l| l.contains("L3: vmm: counters: vfio0"))
        .unwrap_or_else(|| panic!("no inner passthrough counters:\n{out}"))
        .to_string();
    eprintln!("{inner_counters}");
    (run, inner_counters)
}

/// `key=` in a counters line.
fn count(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// The inner VMM's unit counters line (`L3: vmm: counters: viommu intel`).
fn inner_unit(run: &L1Run) -> String {
    run.output
        .lines()
        .find(|l| l.contains("L3: vmm: counters: viommu intel"))
        .unwrap_or_else(|| panic!("no inner unit counters:\n{}", run.output))
        .to_string()
}

/// The outer VMM's unit counters line.
fn outer_unit(run: &L1Run) -> String {
    run.output
        .lines()
        .find(|l| l.contains("counters: viommu intel") && !l.contains("L3:"))
        .unwrap_or_else(|| panic!("no outer unit counters:\n{}", run.output))
        .to_string()
}

#[test]
fn the_vmm_passes_its_guest_disk_through_inside_its_own_guest() {
    let (run, inner) = self_hosted("self-hosted-shadow", "intel", "intel");
    // The inner VMM shadowed the L3 guest's strict maps and unmaps into
    // its host (the 7.2 guest's iommufd over the outer unit). (At exit the
    // L3 guest had turned translation off: bypass again.)
    assert!(count(&inner, "entered_shadow") >= 1, "{inner}");
    assert!(count(&inner, "map_ioctls") > 0, "{inner}");
    assert_eq!(count(&inner, "entered_nested"), 0, "{inner}");
    assert!(
        count(&inner_unit(&run), "host_map_calls") > 0,
        "{}",
        run.output
    );
}

#[test]
fn nested_page_tables_for_the_inner_passthrough_disk() {
    let (run, inner) = self_hosted(
        "self-hosted-nested",
        "intel,offer-nesting=on",
        "intel,nested=on",
    );
    // The L3 guest's first-stage table went to the host as a nested HWPT
    // over the NEST_PARENT of its RAM; not one mapping was shadowed.
    assert!(count(&inner, "entered_nested") >= 1, "{inner}");
    assert!(count(&inner, "nested_hwpts") >= 1, "{inner}");
    assert_eq!(count(&inner, "map_ioctls"), 0, "{inner}");
    assert_eq!(count(&inner, "entered_shadow"), 0, "{inner}");
    // The strict L3 guest's unmaps reached the host as batches, one
    // IOMMU_HWPT_INVALIDATE each.
    let unit = inner_unit(&run);
    let batches = count(&unit, "host_stage1_batches");
    assert!(batches > 0, "{unit}");
    assert_eq!(count(&inner, "invalidate_ioctls"), batches, "{inner}");
    assert_eq!(count(&unit, "host_errors"), 0, "{unit}");
    // And from the 7.2 guest's intel-iommu to the outer unit as PASID-based
    // IOTLB invalidations.
    let outer = outer_unit(&run);
    assert!(count(&outer, "inv_p_iotlb") > 0, "{outer}");
}
