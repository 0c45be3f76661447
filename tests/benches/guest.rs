//! Guest-level benchmark: prints the figures, asserts nothing about speed.
//!
//! - VMM start → guest userspace marker (ms), measured from spawning the
//!   VMM to the marker line arriving on its serial console;
//! - the VMM's peak RSS for a 512 MiB guest (from wait4's rusage);
//! - guest-side sequential O_DIRECT read of 64 MiB from virtio-blk (MiB/s),
//!   as the guest's dd reports it (best of three).
//!
//! Runs itself inside the nested L1: the outer run (on the host) starts L1
//! with this same binary in `--inner` mode, which drives the VMM there.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use guest_tests::*;

fn inner(args: &[String]) {
    let start = Instant::now();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let stdout = child.stdout.take().expect("vmm stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("BENCH-USERSPACE") {
            println!(
                "BENCH-RESULT boot_to_userspace_ms={}",
                start.elapsed().as_millis()
            );
        }
        println!("{line}");
    }
    let status = child.wait().expect("wait for vmm");
    // The VMM is our only child, so the children's peak RSS is its own.
    // SAFETY: rusage is plain data the kernel fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    println!("BENCH-RESULT vmm_peak_rss_kib={}", ru.ru_maxrss);
    println!(
        "BENCH-RESULT vmm_exit_status={}",
        status.code().unwrap_or(-1)
    );
    // The VMM's status is the run's: the harness sees an unexpected guest
    // reset (3) as it does in the tests.
    std::process::exit(status.code().unwrap_or(1));
}

struct Case {
    name: &'static str,
    cmdline: &'static str,
    disk_opts: &'static str,
    vmm_extra: &'static [&'static str],
}

/// Boots one guest configuration and returns its figures and read MiB/s.
fn run_case(c: &Case) -> (Vec<String>, f64) {
    let _l1 = serial();
    let dir = scratch(&format!("bench-{}", c.name));
    let disk = dir.join("disk.img");
    let data: Vec<u8> = (0..(64u64 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(&disk, &data).expect("write disk image");
    let mut vmm = VmmArgs::new(initramfs(&dir, "bench-read.sh", &["virtio_blk"]));
    vmm.cmdline = format!("console=ttyS0 quiet panic=-1 {}", c.cmdline);
    vmm.disks.push(format!(
        "path={},readonly=on{}",
        disk.display(),
        c.disk_opts
    ));
    vmm.extra = c.vmm_extra.iter().map(|s| s.to_string()).collect();
    let mut cmd = vec![
        std::env::current_exe()
            .expect("own path")
            .display()
            .to_string(),
        "--inner".to_string(),
    ];
    cmd.extend(vmm.command());
    let run = run_in_l1(&dir, &cmd);
    let results: Vec<String> = run
        .output
        .lines()
        .filter_map(|l| l.split("BENCH-RESULT ").nth(1).map(str::to_string))
        .collect();
    let best = run
        .output
        .lines()
        .filter_map(|l| l.split("BENCH-READ ").nth(1).and_then(mib_per_s))
        .fold(0.0f64, f64::max);
    if run.status != 0 || best == 0.0 {
        eprintln!("benchmark case {} failed:\n{}", c.name, run.output);
        std::process::exit(1);
    }
    (results, best)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--inner") {
        inner(&args[i + 1..]);
        return;
    }
    let plain = Case {
        name: "no-viommu",
        cmdline: "",
        disk_opts: "",
        vmm_extra: &[],
    };
    let strict = Case {
        name: "viommu-strict",
        cmdline: "intel_iommu=on iommu.strict=1",
        disk_opts: ",iommu=on",
        vmm_extra: &["--viommu", "intel"],
    };
    let (figures, base) = run_case(&plain);
    println!("virtio-blk guest benchmark (512 MiB guest, 1 vCPU, nested L1 under TCG):");
    for r in &figures {
        println!("  {r}");
    }
    println!("  guest_seq_read_64mib_odirect_mib_s={base:.1}");
    let (_, translated) = run_case(&strict);
    println!("  viommu_strict_seq_read_64mib_odirect_mib_s={translated:.1}");
    println!(
        "  viommu_strict_over_no_viommu_ratio={:.2}",
        translated / base
    );
}
