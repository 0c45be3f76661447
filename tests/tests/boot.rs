//! Boots Debian's stock kernel under the VMM (inside the nested L1) and
//! checks what the guest reports and what it wrote to its disk.

use guest_tests::*;

const DISK_SIZE: u64 = 96 << 20;
const ROUND_TRIP: u64 = 64 << 20;

fn assert_common(run: &L1Run, cpus: u32, mem_mib: u64) {
    assert!(
        run.has_line("GUEST-USERSPACE-REACHED"),
        "guest never reached userspace:\n{}",
        run.output
    );
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{}", run.output);
    assert_eq!(run.value("CPUS"), Some(cpus.to_string()), "{}", run.output);
    let mem_kb: u64 = run
        .value("MEMTOTAL_KB")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The kernel keeps some memory for itself; expect at least 85% of it.
    assert!(
        mem_kb <= mem_mib * 1024 && mem_kb >= mem_mib * 1024 * 85 / 100,
        "MemTotal {mem_kb} kB for {mem_mib} MiB"
    );
    assert!(
        run.has_line("PCI-DEVICE 0000:00:00.0 vendor=0x1b36 device=0x0008 class=0x060000"),
        "host bridge missing:\n{}",
        run.output
    );
    assert!(
        run.has_line("PCI-DEVICE 0000:00:01.0 vendor=0x1af4 device=0x1042 class=0x018000"),
        "virtio-blk missing:\n{}",
        run.output
    );
    // 4 KiB config space with a readable extended capability (the Device
    // Serial Number, ID 3, version 1) proves ECAM works, not just 0xcf8.
    assert_eq!(run.value("VIRTIO-CONFIG-SIZE").as_deref(), Some("4096"));
    assert_eq!(run.value("VIRTIO-EXTCAP").as_deref(), Some("00010003"));
    assert_eq!(
        run.value("VDA-SECTORS"),
        Some((DISK_SIZE / 512).to_string())
    );
    // Poweroff from the guest ends the VMM with status 0.
    assert_eq!(run.status, 0, "VMM exit status:\n{}", run.output);
}

fn boot_with_disk(name: &str, cpus: u8, memory: &'static str, mem_mib: u64) {
    let _l1 = serial();
    let dir = scratch(name);
    let disk = dir.join("disk.img");
    disk_image(&disk, DISK_SIZE);
    let mut args = VmmArgs::new(initramfs(&dir, "boot-check.sh", &["virtio_blk"]));
    args.cpus = cpus;
    args.memory = memory;
    args.disks.push(format!("path={}", disk.display()));
    let run = run_in_l1(&dir, &args.command());
    assert_common(&run, cpus as u32, mem_mib);
    assert_eq!(run.value("WRITE").as_deref(), Some("ok"), "{}", run.output);
    let src = run.value("SRC-SHA").expect("guest printed its data hash");
    assert_eq!(
        run.value("READ-SHA"),
        Some(src.clone()),
        "read back differs"
    );
    // The bytes really reached the file the VMM was given.
    assert_eq!(sha256_prefix(&disk, ROUND_TRIP), src, "disk file differs");
    eprintln!("{name}: L1+guest run took {:?}", run.elapsed);
}

#[test]
fn boot_one_vcpu_disk_round_trip() {
    boot_with_disk("boot-1cpu", 1, "512M", 512);
}

#[test]
fn boot_four_vcpus_disk_round_trip() {
    boot_with_disk("boot-4cpu", 4, "1G", 1024);
}

#[test]
fn readonly_disk_refuses_writes() {
    let _l1 = serial();
    let dir = scratch("boot-readonly");
    let disk = dir.join("disk.img");
    // Known non-zero content the guest must read back unchanged.
    let pattern: Vec<u8> = (0..DISK_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&disk, &pattern).expect("write disk image");
    let before = sha256_prefix(&disk, ROUND_TRIP);
    let mut args = VmmArgs::new(initramfs(&dir, "boot-check.sh", &["virtio_blk"]));
    args.cpus = 2;
    args.disks
        .push(format!("path={},readonly=on", disk.display()));
    let run = run_in_l1(&dir, &args.command());
    assert_common(&run, 2, 512);
    assert_eq!(run.value("VDA-RO").as_deref(), Some("1"));
    assert_eq!(
        run.value("WRITE").as_deref(),
        Some("failed"),
        "{}",
        run.output
    );
    assert_eq!(run.value("READ-SHA"), Some(before.clone()));
    assert_eq!(sha256_prefix(&disk, ROUND_TRIP), before);
}

#[test]
fn guest_reboot_ends_the_vmm_with_status_3() {
    let _l1 = serial();
    let dir = scratch("boot-reboot");
    let args = VmmArgs::new(initramfs(&dir, "reboot.sh", &[]));
    let run = run_in_l1(&dir, &args.command());
    assert!(run.has_line("GUEST-REBOOTING"), "{}", run.output);
    assert!(!run.has_line("REBOOT-DID-NOT-HAPPEN"), "{}", run.output);
    // The documented reboot status (README: exit status 3).
    assert_eq!(run.status, 3, "{}", run.output);
}
