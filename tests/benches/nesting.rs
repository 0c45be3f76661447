//! Nested-path benchmark: prints figures, asserts nothing about speed.
//!
//! The VMM inside its own guest, as in tests/self_hosted.rs: the outer VMM
//! offers nesting to the 7.2 kernel, whose virtio-blk disk (behind the
//! outer unit) the inner VMM passes to an L3 guest, three times in one
//! run: on the *bypass* path (no vIOMMU), the *shadow* path (`nested=off`:
//! map/unmap ioctls mirror the L3 guest's second-stage tables; caching
//! mode without a first stage makes the L3 guest strict) and the *nested*
//! path (`nested=on`: the L3 guest's first-stage table is a nested HWPT,
//! its invalidations forwarded in batches), with the L3 guest's default
//! invalidation policy (lazy) and strict. The L3 guest reads 64 MiB
//! sequentially with O_DIRECT after a warm-up. Printed: MiB/s on each
//! path, nested over bypass and over shadow, and from the inner VMM's
//! counters over the whole L3 run the host ioctls per guest invalidation
//! batch on the shadow and the nested path.

use guest_tests::*;

const DISK_SIZE: u64 = 80 << 20;

/// `key=` in the `<path>: vmm: counters: <what>` line.
fn counter(out: &str, path: &str, what: &str, key: &str) -> u64 {
    out.lines()
        .filter(|l| l.contains(&format!("{path}: vmm: counters: {what}")))
        .find_map(|l| field(l, key))
        .unwrap_or(0)
}

fn best(out: &str, path: &str) -> f64 {
    out.lines()
        .filter_map(|l| l.strip_prefix(&format!("{path}: ")))
        .filter_map(|l| l.split("BENCH-READ ").nth(1).and_then(mib_per_s))
        .fold(0.0f64, f64::max)
}

fn main() {
    let _l1 = serial();
    let dir = scratch("bench-nesting");
    let disk = dir.join("disk.img");
    let data: Vec<u8> = (0..DISK_SIZE).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &data).expect("write disk image");
    let l3_initrd = initramfs(&dir, "l3-read-bench.sh", &["virtio_blk"]);
    let initrd = self_hosted_initramfs(&dir, "nesting-bench.sh", &l3_initrd);
    let mut args = VmmArgs::new(initrd);
    args.memory = "2G";
    args.cpus = 2;
    args.cmdline = "console=ttyS0 quiet panic=-1 intel_iommu=on".into();
    args.disks.push(format!("path={},iommu=on", disk.display()));
    args.extra = vec![
        "--viommu".into(),
        "intel,offer-nesting=on".into(),
        "--counters".into(),
    ];
    let mut cmd = args.command();
    let k = cmd.iter().position(|a| a == "--kernel").expect("--kernel") + 1;
    cmd[k] = l1_kernel_dir().join("vmlinuz").display().to_string();
    // Two L1 vCPUs, as in tests/tests/self_hosted.rs.
    let opts = L1Options {
        timeout: Some(1200),
        vcpus: Some(2),
        ..L1Options::default()
    };
    let run = run_in_l1_opts(&dir, &opts, &cmd);
    let out = &run.output;
    let paths = ["bypass", "shadow", "nested", "nested-strict"];
    let mib: Vec<f64> = paths.iter().map(|p| best(out, p)).collect();
    if run.status != 0
        || mib.contains(&0.0)
        || paths
            .iter()
            .any(|p| !out.contains(&format!("{p}: INNER-VMM-STATUS=0")))
    {
        eprintln!("nesting benchmark failed:\n{out}");
        std::process::exit(1);
    }
    println!(
        "nested-path benchmark (L3 guest, 128 MiB, 1 vCPU, in a 7.2 guest of the VMM with \
         offer-nesting=on, in the nested L1 under TCG):"
    );
    for (p, m) in paths.iter().zip(&mib) {
        let domain = out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{p}: L3-DOMAIN-TYPE=")))
            .next()
            .unwrap_or("none");
        println!(
            "  {}_seq_read_64mib_odirect_mib_s={m:.1} (L3 domain {domain})",
            p.replace('-', "_")
        );
    }
    println!("  nested_over_bypass_ratio={:.2}", mib[2] / mib[0]);
    println!("  nested_over_shadow_ratio={:.2}", mib[2] / mib[1]);
    println!("  nested_strict_over_shadow_ratio={:.2}", mib[3] / mib[1]);
    let shadow_ioctls = counter(out, "shadow", "vfio0", "map_ioctls")
        + counter(out, "shadow", "vfio0", "unmap_ioctls");
    let shadow_batches = counter(out, "shadow", "viommu intel", "host_syncs");
    let nested_ioctls = counter(out, "nested-strict", "vfio0", "invalidate_ioctls");
    let nested_batches = counter(out, "nested-strict", "viommu intel", "host_stage1_batches");
    println!("  shadow_map_unmap_ioctls={shadow_ioctls} (whole L3 run)");
    println!("  shadow_invalidation_batches={shadow_batches}");
    if shadow_batches > 0 {
        println!(
            "  shadow_ioctls_per_invalidation_batch={:.2}",
            shadow_ioctls as f64 / shadow_batches as f64
        );
    }
    println!(
        "  nested_map_ioctls={}",
        counter(out, "nested", "vfio0", "map_ioctls")
    );
    println!(
        "  nested_hwpts={}",
        counter(out, "nested", "vfio0", "nested_hwpts")
    );
    println!(
        "  nested_lazy_invalidate_ioctls={} (whole L3 run)",
        counter(out, "nested", "vfio0", "invalidate_ioctls")
    );
    println!("  nested_strict_invalidate_ioctls={nested_ioctls} (whole L3 run)");
    println!("  nested_strict_invalidation_batches={nested_batches}");
    if nested_batches > 0 {
        println!(
            "  nested_strict_ioctls_per_invalidation_batch={:.2}",
            nested_ioctls as f64 / nested_batches as f64
        );
    }
}
