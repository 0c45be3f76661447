//! Passthrough benchmark: prints figures, asserts nothing about speed.
//!
//! The L1's emulated NVMe (bound to vfio-pci in L1) is passed to an L2
//! guest, which reads 64 MiB sequentially with O_DIRECT three times
//! (after a warm-up pass), once on the *bypass* path (no vIOMMU) and once
//! on the *shadow* path (vIOMMU translating, strict). Printed: the best
//! MiB/s of each and their ratio, and, from the VMM's own counters taken
//! with SIGUSR1 right before and after the timed reads, the shadow IOAS
//! map/unmap ioctls issued during them and per guest invalidation batch
//! (one host sync of the vIOMMU).
//!
//! Runs itself inside the nested L1: the outer run starts L1 with this
//! same binary in `--inner` mode, which drives the VMM there.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use guest_tests::*;

fn inner(args: &[String]) {
    let dev = std::env::var("VMM_VFIO_NVME").expect("L1 has a vfio-bound NVMe");
    let mut args = args.to_vec();
    let i = args
        .iter()
        .position(|a| a == "--vfio")
        .expect("--vfio placeholder");
    args[i + 1] = format!("{dev}{}", args[i + 1]);
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vmm");
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().expect("vmm stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        if line.contains("BENCH-READ-START") || line.contains("BENCH-READ-END") {
            // SAFETY: signals our own child, which is still running (its
            // stdout is open).
            unsafe { libc::kill(pid, libc::SIGUSR1) };
            // Let the snapshot reach stderr before the guest moves on far.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let status = child.wait().expect("wait for vmm");
    println!("BENCH-VMM-EXIT={}", status.code().unwrap_or(-1));
    // The VMM's status is the run's: the harness sees an unexpected guest
    // reset (3) as it does in the tests.
    std::process::exit(status.code().unwrap_or(1));
}

/// `key=` in the `counters: <what>` line of snapshot `n` (0 = before the
/// timed reads, 1 = after).
fn snapshot(out: &str, n: usize, what: &str, key: &str) -> u64 {
    out.split("vmm: counters-snapshot")
        .nth(n + 1)
        .and_then(|s| {
            s.lines()
                .filter(|l| l.contains(&format!("counters: {what}")))
                .find_map(|l| field(l, key))
        })
        .unwrap_or(0)
}

fn run_case(name: &str, cmdline: &str, viommu: &[&str], vfio_opts: &str) -> (f64, String) {
    let _l1 = serial();
    let dir = scratch(&format!("bench-vfio-{name}"));
    let image = dir.join("nvme.img");
    let data: Vec<u8> = (0..(80u64 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &data).expect("write NVMe image");
    let mut vmm = VmmArgs::new(initramfs(&dir, "nvme-check.sh", &["nvme"]));
    vmm.cpus = 2;
    vmm.cmdline = format!("console=ttyS0 quiet panic=-1 vmm.bench {cmdline}");
    vmm.extra = viommu.iter().map(|s| s.to_string()).collect();
    vmm.extra
        .extend(["--counters".to_string(), "--vfio".into(), vfio_opts.into()]);
    let mut cmd = vec![
        std::env::current_exe()
            .expect("own path")
            .display()
            .to_string(),
        "--inner".to_string(),
    ];
    cmd.extend(vmm.command());
    let opts = L1Options {
        kernel_dir: Some(l1_kernel_dir()),
        nvme: Some(image),
        ..L1Options::default()
    };
    let run = run_in_l1_opts(&dir, &opts, &cmd);
    let best = run
        .output
        .lines()
        .filter_map(|l| l.split("BENCH-READ ").nth(1).and_then(mib_per_s))
        .fold(0.0f64, f64::max);
    if run.status != 0 || best == 0.0 {
        eprintln!("benchmark case {name} failed:\n{}", run.output);
        std::process::exit(1);
    }
    (best, run.output)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--inner") {
        inner(&args[i + 1..]);
        return;
    }
    println!("passthrough NVMe benchmark (L2 guest, 512 MiB, 2 vCPUs, nested L1 under TCG):");
    let (bypass, _) = run_case("bypass", "", &[], "");
    println!("  bypass_seq_read_64mib_odirect_mib_s={bypass:.1}");
    let (shadow, out) = run_case(
        "shadow",
        "intel_iommu=on iommu.strict=1",
        &["--viommu", "intel"],
        ",iommu=on",
    );
    println!("  shadow_seq_read_64mib_odirect_mib_s={shadow:.1}");
    println!("  shadow_over_bypass_ratio={:.2}", shadow / bypass);
    let delta = |what: &str, key: &str| snapshot(&out, 1, what, key) - snapshot(&out, 0, what, key);
    let maps = delta("vfio0", "map_ioctls");
    let unmaps = delta("vfio0", "unmap_ioctls");
    let batches = delta("viommu intel", "host_syncs");
    println!("  shadow_reads_bytes=201326592 (3 x 64 MiB)");
    println!("  shadow_map_ioctls_during_reads={maps}");
    println!("  shadow_unmap_ioctls_during_reads={unmaps}");
    println!("  shadow_invalidation_batches_during_reads={batches}");
    if batches > 0 {
        println!(
            "  shadow_ioctls_per_invalidation_batch={:.2}",
            (maps + unmaps) as f64 / batches as f64
        );
    }
    println!(
        "  shadow_live_bytes_after_reads={}",
        snapshot(&out, 1, "vfio0", "live_bytes")
    );
}
