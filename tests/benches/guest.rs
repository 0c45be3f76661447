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
}

/// MiB/s from the guest's "bytes=N seconds=S" line.
fn mib_per_s(line: &str) -> Option<f64> {
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    let (bytes, secs) = (field("bytes=")?, field("seconds=")?);
    (secs > 0.0).then(|| bytes / secs / (1 << 20) as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--inner") {
        inner(&args[i + 1..]);
        return;
    }
    let _l1 = serial();
    let dir = scratch("bench");
    let disk = dir.join("disk.img");
    let data: Vec<u8> = (0..(64u64 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(&disk, &data).expect("write disk image");
    let mut vmm = VmmArgs::new(initramfs(&dir, "bench-read.sh", &["virtio_blk"]));
    vmm.disks
        .push(format!("path={},readonly=on", disk.display()));
    let mut cmd = vec![
        std::env::current_exe()
            .expect("own path")
            .display()
            .to_string(),
        "--inner".to_string(),
    ];
    cmd.extend(vmm.command());
    let run = run_in_l1(&dir, &cmd);
    let mut results: Vec<String> = run
        .output
        .lines()
        .filter_map(|l| l.split("BENCH-RESULT ").nth(1).map(str::to_string))
        .collect();
    let best = run
        .output
        .lines()
        .filter_map(|l| l.split("BENCH-READ ").nth(1).and_then(mib_per_s))
        .fold(0.0f64, f64::max);
    results.push(format!("guest_seq_read_64mib_odirect_mib_s={best:.1}"));
    println!("virtio-blk guest benchmark (512 MiB guest, 1 vCPU, nested L1 under TCG):");
    for r in &results {
        println!("  {r}");
    }
    if run.status != 0 || best == 0.0 {
        eprintln!("benchmark run failed:\n{}", run.output);
        std::process::exit(1);
    }
}
