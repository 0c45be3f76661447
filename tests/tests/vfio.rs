//! VFIO passthrough through iommufd: an NVMe controller that QEMU emulates
//! for L1 (behind QEMU's VT-d, so L1's real iommufd and vfio-pci drive a
//! real host IOMMU) is bound to vfio-pci in L1 and handed to an L2 guest
//! running Debian's stock kernel and its nvme driver. The NVMe's backing
//! image lives on the machine that runs L1, so the bytes the guest wrote
//! are checked there after the run.

use std::path::{Path, PathBuf};

use guest_tests::*;

const IMAGE_SIZE: u64 = 96 << 20;
const ROUND_TRIP: u64 = 64 << 20;

/// A command line word for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The VMM command line for `script`, with the L1's vfio-bound NVMe
/// (`$VMM_VFIO_NVME`) added with `vfio_opts` (e.g. ",iommu=on").
fn vmm_command(dir: &Path, script: &str, cmdline: &str, extra: &[&str], vfio_opts: &str) -> String {
    let mut args = VmmArgs::new(initramfs(dir, script, &["nvme"]));
    args.cpus = 2;
    args.cmdline = format!("console=ttyS0 quiet panic=-1 {cmdline}");
    args.extra = extra.iter().map(|s| s.to_string()).collect();
    args.extra.push("--counters".into());
    let words: Vec<String> = args.command().iter().map(|w| quote(w)).collect();
    format!(
        "{} --vfio \"$VMM_VFIO_NVME\"{}",
        words.join(" "),
        quote(vfio_opts)
    )
}

fn l1_with_nvme(dir: &Path) -> (L1Options, PathBuf) {
    let image = dir.join("nvme.img");
    disk_image(&image, IMAGE_SIZE);
    let native = dir.join("native.img");
    disk_image(&native, 16 << 20);
    let opts = L1Options {
        kernel_dir: Some(l1_kernel_dir()),
        nvme: Some(image.clone()),
        nvme_native: Some(native),
        ..L1Options::default()
    };
    (opts, image)
}

/// The part of `out` between `from` and the next `to` marker.
fn section<'a>(out: &'a str, from: &str, to: &str) -> &'a str {
    let start = out.find(from).map(|i| i + from.len()).unwrap_or(out.len());
    let rest = &out[start..];
    &rest[..rest.find(to).unwrap_or(rest.len())]
}

/// `key=` of the VMM's last `counters: <line>` line in `out`.
fn counter(out: &str, line: &str, key: &str) -> u64 {
    out.lines()
        .rev()
        .filter(|l| l.contains(&format!("counters: {line}")))
        .find_map(|l| field(l, key))
        .unwrap_or_else(|| panic!("no counter {line} {key}:\n{out}"))
}

/// The guest's round trip in `out` went through and landed in `image`.
fn check_round_trip(out: &str, image: &Path, whole: &str) {
    assert!(out.contains("GUEST-CHECKS-DONE"), "{whole}");
    assert!(out.contains("NVME-DISK=present"), "{whole}");
    let bad: Vec<&str> = out.lines().filter(|l| l.contains("BAD-DMESG")).collect();
    assert!(
        bad.is_empty(),
        "fault/error lines in dmesg: {bad:?}\n{whole}"
    );
    assert_eq!(
        value(out.lines(), "WRITE").as_deref(),
        Some("ok"),
        "{whole}"
    );
    let src = value(out.lines(), "SRC-SHA").expect("data hash");
    assert_eq!(value(out.lines(), "READ-SHA"), Some(src.clone()), "{whole}");
    assert_eq!(sha256_prefix(image, ROUND_TRIP), src, "NVMe image differs");
}

fn assert_no_pasid_cap(out: &str) {
    assert_eq!(
        value(out.lines(), "CONFIG-SIZE").as_deref(),
        Some("4096"),
        "{out}"
    );
    assert!(!out.contains("PASID-CAP"), "{out}");
}

/// No vIOMMU: the device sits on the guest-RAM IOAS. The same L1 then
/// runs the bad-input cases and a second VMM on the same device, started
/// while the first one still holds it (refused: in use) and again after
/// it exited (works: the device was reset and released).
#[test]
fn passthrough_without_viommu_and_bad_input() {
    let _l1 = serial();
    let dir = scratch("vfio-plain");
    let (opts, image) = l1_with_nvme(&dir);
    let vmm = vmm_binary().display().to_string();
    let kernel = guest_kernel().display().to_string();
    let run1 = vmm_command(&dir, "nvme-check.sh", "", &[], "");
    let bad = |name: &str, prefix: &str, spec: &str| {
        format!(
            "out=$({prefix} {vmm} --kernel \"$KERNEL\" --vfio {spec} 2>&1 </dev/null); s=$?; \
             echo \"BADINPUT {name} status=$s lines=$(printf '%s\\n' \"$out\" | wc -l) msg=$out\"\n",
            vmm = quote(&vmm),
        )
    };
    // The unprivileged case must fail on the device node itself: KVM,
    // /dev/iommu and the kernel file are made usable for everyone (L1's
    // own /dev and /tmp, thrown away with it).
    let mut script = format!(
        "chmod 0666 /dev/kvm /dev/iommu; cp {} /tmp/vmlinuz; chmod 0644 /tmp/vmlinuz; \
         KERNEL=/tmp/vmlinuz\n",
        quote(&kernel)
    );
    script += "echo VMM-RUN-1\n";
    script += &format!("{run1} & first=$!\n");
    // The first VMM opens the device at once; a second one must be refused.
    script += "sleep 2\n";
    script += &bad("in-use", "", "\"$VMM_VFIO_NVME\"");
    script += "wait $first; echo \"VMM-RUN-1-STATUS=$?\"\n";
    script += &bad("nonexistent", "", "/dev/vfio/devices/vfio77");
    script += &bad("not-vfio-pci", "", "\"$VMM_NATIVE_NVME_SYSFS\"");
    script += &bad(
        "permission",
        "setpriv --reuid=65534 --regid=65534 --clear-groups",
        "\"$VMM_VFIO_NVME\"",
    );
    // No /dev/iommu: a private /dev with only KVM and the device node.
    script += &bad(
        "no-iommufd",
        "unshare -m sh -c 'set -e; k=$(stat -c \"%t %T\" /dev/kvm); v=$(stat -c \"%t %T\" \"$VMM_VFIO_NVME\"); \
         mount -t tmpfs none /dev; mkdir -p /dev/vfio/devices; \
         mknod /dev/kvm c $((0x${k% *})) $((0x${k#* })); \
         mknod \"$VMM_VFIO_NVME\" c $((0x${v% *})) $((0x${v#* })); exec \"$0\" \"$@\"'",
        "\"$VMM_VFIO_NVME\"",
    );
    // What the real host IOMMU offers decides the vIOMMU: QEMU's VT-d in
    // L1 cannot nest, so nested=on and an explicit first stage are refused.
    script += &bad(
        "nested-on",
        "",
        "\"$VMM_VFIO_NVME,iommu=on\" --viommu intel,nested=on",
    );
    script += &bad(
        "first-stage-on",
        "",
        "\"$VMM_VFIO_NVME,iommu=on\" --viommu intel,first-stage=on",
    );
    script += "echo VMM-RUN-2\n";
    script += &format!("{run1}; echo \"VMM-RUN-2-STATUS=$?\"\n");
    let run = run_in_l1_opts(&dir, &opts, &["bash".into(), "-c".into(), script]);
    let out = &run.output;
    assert_eq!(run.status, 0, "{out}");

    let first = section(out, "VMM-RUN-1", "VMM-RUN-1-STATUS");
    assert_eq!(
        value(out.lines(), "VMM-RUN-1-STATUS").as_deref(),
        Some("0"),
        "{out}"
    );
    assert!(first.contains("NVME-PCI="), "{out}");
    assert_no_pasid_cap(first);
    let first_sha = value(first.lines(), "SRC-SHA");
    let second = section(out, "VMM-RUN-2", "VMM-RUN-2-STATUS");
    assert_eq!(
        value(out.lines(), "VMM-RUN-2-STATUS").as_deref(),
        Some("0"),
        "{out}"
    );
    check_round_trip(second, &image, out);
    assert_ne!(
        first_sha,
        value(second.lines(), "SRC-SHA"),
        "two runs, two data sets"
    );
    assert!(first.contains("counters: vfio0 mode=bypass"), "{out}");

    for (name, expect) in [
        ("in-use", "in use"),
        ("nonexistent", "no such device"),
        ("not-vfio-pci", "not vfio-pci"),
        ("permission", "ermission denied"),
        ("permission", "--vfio /dev/vfio/devices/"),
        ("no-iommufd", "/dev/iommu"),
        ("nested-on", "cannot nest translations"),
        ("first-stage-on", "first-stage=on cannot be used"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("BADINPUT {name} ")))
            .unwrap_or_else(|| panic!("no {name} case:\n{out}"));
        let status: i32 = value(line.lines(), "status")
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(status != 0, "{name}: {line}");
        assert_eq!(
            value(line.lines(), "lines").as_deref(),
            Some("1"),
            "{name}: {line}"
        );
        assert!(line.contains("msg=vmm: error:"), "{name}: {line}");
        assert!(line.contains(expect), "{name}: expected '{expect}': {line}");
        assert!(!line.contains("panicked"), "{name}: {line}");
    }
}

struct Shadowed {
    name: &'static str,
    cmdline: &'static str,
    viommu: &'static str,
    vfio_opts: &'static str,
    group_type: &'static str,
    mode: &'static str,
}

fn run_behind_viommu(m: &Shadowed) -> (String, PathBuf) {
    let _l1 = serial();
    let dir = scratch(&format!("vfio-{}", m.name));
    let (opts, image) = l1_with_nvme(&dir);
    // Counters are also taken (SIGUSR1) right after the guest's read-back,
    // while its IOMMU still translates.
    let cmd = format!(
        "set -o pipefail; {} 2>&1 | while IFS= read -r l; do printf '%s\\n' \"$l\"; \
         case \"$l\" in *READ-SHA=*) pkill -USR1 -x vmm;; esac; done",
        vmm_command(
            &dir,
            "nvme-check.sh",
            m.cmdline,
            &["--viommu", m.viommu],
            m.vfio_opts
        )
    );
    let run = run_in_l1_opts(&dir, &opts, &["bash".into(), "-c".into(), cmd]);
    let out = run.output.clone();
    assert_eq!(run.status, 0, "{out}");
    check_round_trip(&out, &image, &out);
    assert!(out.contains("IOMMU-CLASS: dmar0"), "{out}");
    assert_eq!(
        value(out.lines(), "NVME-GROUP-TYPE").as_deref(),
        Some(m.group_type),
        "{out}"
    );
    // The path the device was on while the guest ran (at power-off the
    // guest turns translation off, which is bypass again).
    assert!(
        counter(&out, "vfio0", &format!("entered_{}", m.mode)) >= 1,
        "{out}"
    );
    // Its MSI-X vectors go through the vIOMMU's interrupt remapping.
    assert!(out.contains("IR-PCI-MSIX-0000:00:01.0"), "{out}");
    assert_eq!(counter(&out, "viommu intel", "host_errors"), 0, "{out}");
    eprintln!("{}: {:?}", m.name, run.elapsed);
    (out, image)
}

/// The guest's IOMMU in pass-through for the device: bypass on the host.
#[test]
fn passthrough_viommu_guest_pt() {
    let (out, _) = run_behind_viommu(&Shadowed {
        name: "pt",
        cmdline: "intel_iommu=on iommu=pt",
        viommu: "intel,pasid-bits=8",
        vfio_opts: ",iommu=on",
        group_type: "identity",
        mode: "bypass",
    });
    // The host reports no PASID for this device: no capability.
    assert_no_pasid_cap(&out);
    assert_eq!(counter(&out, "vfio0", "entered_shadow"), 0, "{out}");
    assert_eq!(counter(&out, "vfio0", "map_ioctls"), 0, "{out}");
}

fn check_shadow(out: &str) {
    // Right after the I/O, with translation still on, the shadow IOAS holds
    // what the driver keeps mapped (its queues), not the data buffers.
    assert!(out.contains("vmm: counters-snapshot"), "{out}");
    let after_io = section(out, "vmm: counters-snapshot", "GUEST-CHECKS-DONE");
    let live_after_io = counter(after_io, "vfio0", "live_bytes");
    assert!(
        (1..2 << 20).contains(&live_after_io),
        "{live_after_io} bytes mapped after the I/O\n{out}"
    );
    assert!(after_io.contains("counters: vfio0 mode=shadow"), "{out}");
    // The shadow IOAS followed the guest's maps and unmaps...
    let maps = counter(out, "vfio0", "map_ioctls");
    let unmaps = counter(out, "vfio0", "unmap_ioctls");
    assert!(
        maps > 100 && unmaps > 100,
        "maps {maps} unmaps {unmaps}\n{out}"
    );
    // ...never held more than the I/O in flight plus the driver's queues,
    // far from the 128 MiB of data that went through it, let alone all of
    // guest RAM, and was empty once the guest turned translation off.
    let peak = counter(out, "vfio0", "peak_live_bytes");
    let mapped = counter(out, "vfio0", "mapped_bytes");
    assert!(mapped >= 2 * ROUND_TRIP, "mapped only {mapped}\n{out}");
    assert!(peak < 16 << 20, "{peak} bytes mapped at once\n{out}");
    assert_eq!(counter(out, "vfio0", "live_bytes"), 0, "{out}");
    assert!(counter(out, "viommu intel", "host_syncs") > 100, "{out}");
}

/// A translating guest domain, strict invalidation: the shadow path. The
/// test-only PASID width override shows the synthesized capability.
#[test]
fn passthrough_shadow_strict() {
    let (out, _) = run_behind_viommu(&Shadowed {
        name: "shadow-strict",
        cmdline: "intel_iommu=on iommu.strict=1",
        viommu: "intel,pasid-bits=8",
        vfio_opts: ",iommu=on,x-pasid-width=10",
        group_type: "DMA",
        mode: "shadow",
    });
    check_shadow(&out);
    // The PASID capability, capped at the vIOMMU's 8 bits (bits 12:8 of
    // the capability register).
    let regs = value(out.lines(), "regs").expect("PASID capability");
    let cap = u32::from_str_radix(&regs, 16).unwrap() & 0xffff;
    assert_eq!((cap >> 8) & 0x1f, 8, "{out}");
}

/// The default lazy setting: caching mode makes the guest switch to
/// strict invalidation, and the shadow follows it the same way.
#[test]
fn passthrough_shadow_lazy_becomes_strict() {
    let (out, _) = run_behind_viommu(&Shadowed {
        name: "shadow-lazy",
        cmdline: "intel_iommu=on",
        viommu: "intel",
        vfio_opts: ",iommu=on",
        group_type: "DMA",
        mode: "shadow",
    });
    assert!(
        out.contains("IOMMU batching disallowed due to virtualization"),
        "{out}"
    );
    check_shadow(&out);
}
