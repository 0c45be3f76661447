//! The VMM inside its own guest: the outer VMM boots the 7.2 kernel of
//! resources/l1-kernel.sh (KVM, iommufd, VFIO cdev built in) with its
//! virtio-blk disk behind the emulated VT-d. That guest gets /dev/kvm
//! (the VMM passes SVM through), binds the disk to vfio-pci, and runs the
//! same vmm binary, which passes the disk to a Debian L3 guest behind its
//! own VT-d. The L3 guest's intel-iommu does an 8 MiB round trip whose
//! bytes end up in the outer disk file.
//!
//! Two paths for the inner passthrough device:
//! - shadow: the outer unit offers no nesting, so the inner VMM mirrors
//!   the L3 guest's second-stage tables with map/unmap ioctls;
//! - nested: the outer unit offers nesting (`offer-nesting=on`), the 7.2
//!   guest's intel-iommu allocates NEST_PARENT and VTD_S1 nested domains
//!   on it, and the inner VMM (`nested=on`) installs the L3 guest's
//!   first-stage table as a nested HWPT and forwards its invalidations:
//!   no map ioctls for guest mappings at all. The L3 guest runs twice
//!   there, strict and with its default policy (lazy: a first stage is
//!   not forced strict by caching mode).

use guest_tests::*;

const DISK_SIZE: u64 = 32 << 20;
const ROUND_TRIP: u64 = 8 << 20;

/// One boot of the loop: the outer and inner `--viommu` options, and the
/// L3 guest's invalidation policies (one inner run each, in order).
struct Loop<'a> {
    name: &'a str,
    outer_viommu: &'a str,
    inner_viommu: &'a str,
    policies: &'a [&'a str],
}

/// What one inner run printed (its lines without the `L3-<policy>: `
/// prefix).
struct Inner {
    lines: Vec<String>,
}

impl Inner {
    fn value(&self, key: &str) -> Option<String> {
        value(self.lines.iter().map(String::as_str), key)
    }

    fn line(&self, needle: &str) -> String {
        self.lines
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no `{needle}` line:\n{}", self.lines.join("\n")))
    }

    /// The inner VMM's passthrough counters.
    fn vfio(&self) -> String {
        self.line("vmm: counters: vfio0")
    }

    /// The inner VMM's unit counters.
    fn unit(&self) -> String {
        self.line("vmm: counters: viommu intel")
    }
}

/// `key=` in a counters line.
fn count(line: &str, key: &str) -> u64 {
    field(line, key).unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// Boots the loop, asserts every round trip, and returns the run and each
/// inner run.
fn self_hosted(l: &Loop) -> (L1Run, Vec<Inner>) {
    let _l1 = serial();
    let dir = scratch(l.name);
    let disk = dir.join("disk.img");
    disk_image(&disk, DISK_SIZE);
    let l3_initrd = initramfs(&dir, "l3-round-trip.sh", &["virtio_blk"]);
    let initrd = self_hosted_initramfs(&dir, "self-hosted.sh", &l3_initrd);
    let mut args = VmmArgs::new(initrd);
    args.memory = "2G";
    args.cpus = 2;
    args.cmdline = format!(
        "console=ttyS0 quiet panic=-1 intel_iommu=on inner_viommu={} l3_policies={}",
        l.inner_viommu,
        l.policies.join(",")
    );
    args.disks.push(format!("path={},iommu=on", disk.display()));
    args.extra = vec![
        "--viommu".into(),
        l.outer_viommu.into(),
        "--counters".into(),
    ];
    let mut cmd = args.command();
    let k = cmd.iter().position(|a| a == "--kernel").expect("--kernel") + 1;
    cmd[k] = l1_kernel_dir().join("vmlinuz").display().to_string();
    // Three levels of guests under TCG (about 2 minutes alone on the
    // machine for one inner run, 8 beside another TCG machine): the inner
    // VMM pins its guest's RAM through the 7.2 guest's iommufd, a page
    // fault per page.
    //
    // Two L1 vCPUs: with one, L3 under L2 under L1 does not finish within
    // the limit. Two expose the platform's memory corruption under
    // exit-heavy L2 work (resources/README.md); a run it hits shows an L2
    // triple fault or an L1 panic and is recorded as such.
    let opts = L1Options {
        timeout: Some(750),
        vcpus: Some(2),
        ..L1Options::default()
    };
    let run = run_in_l1_opts(&dir, &opts, &cmd);
    let out = &run.output;
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{out}");
    assert_eq!(run.status, 0, "{out}");
    assert_eq!(run.value("L2-KVM").as_deref(), Some("yes"), "{out}");
    assert_eq!(
        run.value("INNER-VIOMMU").as_deref(),
        Some(l.inner_viommu),
        "{out}"
    );
    let mut inners = Vec::new();
    let mut last_src = None;
    for p in l.policies {
        let prefix = format!("L3-{p}: ");
        let inner = Inner {
            lines: out
                .lines()
                .filter_map(|x| x.strip_prefix(&prefix))
                .map(str::to_string)
                .collect(),
        };
        assert_eq!(
            inner.value("INNER-VMM-STATUS").as_deref(),
            Some("0"),
            "{p}: {out}"
        );
        assert!(inner.line("L3-USERSPACE-REACHED").contains("L3"), "{p}");
        assert_eq!(
            inner.value("L3-IOMMU-CLASS").as_deref(),
            Some("dmar0"),
            "{p}: {out}"
        );
        assert_eq!(inner.value("L3-WRITE").as_deref(), Some("ok"), "{p}: {out}");
        let src = inner.value("L3-SRC-SHA").expect("L3 data hash");
        assert_eq!(inner.value("L3-READ-SHA"), Some(src.clone()), "{p}: {out}");
        assert_eq!(count(&inner.unit(), "faults"), 0, "{p}: {out}");
        eprintln!("{p}: {}", inner.vfio());
        last_src = Some(src);
        inners.push(inner);
    }
    assert_eq!(
        Some(sha256_prefix(&disk, ROUND_TRIP)),
        last_src,
        "outer disk file differs"
    );
    assert_eq!(count(&outer_unit(&run), "faults"), 0, "{out}");
    (run, inners)
}

/// The outer VMM's unit counters line.
fn outer_unit(run: &L1Run) -> String {
    run.output
        .lines()
        .find(|l| l.contains("counters: viommu intel") && !l.starts_with("L3-"))
        .unwrap_or_else(|| panic!("no outer unit counters:\n{}", run.output))
        .to_string()
}

#[test]
fn the_vmm_passes_its_guest_disk_through_inside_its_own_guest() {
    let (_, inners) = self_hosted(&Loop {
        name: "self-hosted-shadow",
        outer_viommu: "intel",
        inner_viommu: "intel",
        policies: &["strict"],
    });
    // The inner VMM shadowed the L3 guest's strict maps and unmaps into
    // its host (the 7.2 guest's iommufd over the outer unit). (At exit the
    // L3 guest had turned translation off: bypass again.)
    let vfio = inners[0].vfio();
    assert!(count(&vfio, "entered_shadow") >= 1, "{vfio}");
    assert!(count(&vfio, "map_ioctls") > 0, "{vfio}");
    assert_eq!(count(&vfio, "entered_nested"), 0, "{vfio}");
    assert!(count(&inners[0].unit(), "host_map_calls") > 0);
}

#[test]
fn nested_page_tables_for_the_inner_passthrough_disk() {
    let (run, inners) = self_hosted(&Loop {
        name: "self-hosted-nested",
        outer_viommu: "intel,offer-nesting=on",
        inner_viommu: "intel,nested=on",
        policies: &["strict", "default"],
    });
    for (p, inner) in ["strict", "default"].iter().zip(&inners) {
        // The L3 guest's first-stage table went to the host as a nested
        // HWPT over the NEST_PARENT of its RAM; not one mapping was
        // shadowed.
        let vfio = inner.vfio();
        assert!(count(&vfio, "entered_nested") >= 1, "{p}: {vfio}");
        assert!(count(&vfio, "nested_hwpts") >= 1, "{p}: {vfio}");
        assert_eq!(count(&vfio, "map_ioctls"), 0, "{p}: {vfio}");
        assert_eq!(count(&vfio, "entered_shadow"), 0, "{p}: {vfio}");
        // The L3 guest's unmaps reached the host as batches, one
        // IOMMU_HWPT_INVALIDATE each.
        let unit = inner.unit();
        let batches = count(&unit, "host_stage1_batches");
        assert!(batches > 0, "{p}: {unit}");
        assert_eq!(count(&vfio, "invalidate_ioctls"), batches, "{p}: {vfio}");
        assert_eq!(count(&unit, "host_errors"), 0, "{p}: {unit}");
    }
    // A first stage leaves the L3 guest's default policy lazy (caching
    // mode does not force strict there): invalidations are batched.
    assert_eq!(inners[0].value("L3-DOMAIN-TYPE").as_deref(), Some("DMA"));
    assert_eq!(inners[1].value("L3-DOMAIN-TYPE").as_deref(), Some("DMA-FQ"));
    // And from the 7.2 guest's intel-iommu to the outer unit as PASID-based
    // IOTLB invalidations.
    let outer = outer_unit(&run);
    assert!(count(&outer, "inv_p_iotlb") > 0, "{outer}");
}
