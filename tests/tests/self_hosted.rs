//! The VMM inside its own guest: the outer VMM boots the 7.2 kernel of
//! resources/l1-kernel.sh (KVM, iommufd, VFIO cdev built in) with its
//! virtio-blk disk behind the emulated VT-d. That guest gets /dev/kvm
//! (the VMM passes SVM through), binds the disk to vfio-pci, and runs the
//! same vmm binary, which passes the disk to a Debian L3 guest behind its
//! own VT-d on the shadow path (the outer unit offers no nesting): the
//! L3 guest's intel-iommu (strict) does an 8 MiB round trip whose bytes
//! end up in the outer disk file. This is the loop the nested path is to
//! make cheap; today it is the shadow baseline.

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_tests::*;

const DISK_SIZE: u64 = 32 << 20;
const ROUND_TRIP: u64 = 8 << 20;

/// The shared libraries `binary` loads (from ldd), to copy beside it.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[test]
fn the_vmm_passes_its_guest_disk_through_inside_its_own_guest() {
    let _l1 = serial();
    let dir = scratch("self-hosted-shadow");
    let disk = dir.join("disk.img");
    disk_image(&disk, DISK_SIZE);
    // The inner VMM (stripped: the guest's initramfs holds it in RAM).
    let inner = dir.join("vmm");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(vmm_binary())
        .arg(&inner)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy --strip-all");
    let l3_initrd = initramfs(&dir, "l3-round-trip.sh", &["virtio_blk"]);
    let mut files: Vec<(PathBuf, String)> = vec![
        (inner.clone(), "/bin/vmm".into()),
        (
            repo_root().join("tests/guest/vfio-bind.sh"),
            "/bin/vfio-bind".into(),
        ),
        (guest_kernel(), "/l3/vmlinuz".into()),
        (l3_initrd, "/l3/initrd.cpio.gz".into()),
    ];
    for lib in shared_libraries(&inner) {
        let dst = lib.display().to_string();
        files.push((lib, dst));
    }
    let files: Vec<(PathBuf, &str)> = files.iter().map(|(s, d)| (s.clone(), d.as_str())).collect();
    let initrd = initramfs_with(&dir, "self-hosted.sh", &[], &files);
    let mut args = VmmArgs::new(initrd);
    args.memory = "2G";
    args.cpus = 2;
    args.cmdline = "console=ttyS0 quiet panic=-1 intel_iommu=on".into();
    args.disks.push(format!("path={},iommu=on", disk.display()));
    args.extra = vec!["--viommu".into(), "intel".into()];
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
    // The inner VMM shadowed the L3 guest's strict maps and unmaps into
    // its host (the 7.2 guest's iommufd over the outer unit).
    let inner_counters = out
        .lines()
        .find(|l| l.contains("L3: vmm: counters: vfio0"))
        .unwrap_or_else(|| panic!("no inner passthrough counters:\n{out}"));
    // (At exit the L3 guest had turned translation off: bypass again.)
    let shadowed = inner_counters
        .split_whitespace()
        .find_map(|w| w.strip_prefix("entered_shadow="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(shadowed.is_some_and(|n| n >= 1), "{inner_counters}");
    assert!(run.counter("host_map_calls") > 0, "{out}");
    assert_eq!(run.counter("faults"), 0, "{out}");
    eprintln!("{inner_counters}");
}
