//! What the guest sees in config space: passthrough where vfio-pci is
//! authoritative, our registers where we virtualize.

use super::*;
use crate::vfio::config::{extended_caps, standard_caps};

fn presented(r: &mut Rig) -> Vec<u8> {
    let mut all = vec![0u8; 4096];
    r.dev.read_config(0, &mut all);
    all
}

#[test]
fn header_is_virtualized_where_it_must_be() {
    let mut r = rig();
    assert_eq!(r.cfg_read(0, 4), 0x0a54_8086, "IDs come from the device");
    assert_eq!(r.cfg_read(0x08, 4), 0x0108_0201, "class and revision too");
    // BARs carry our flags and no host address; the I/O BAR is hidden.
    assert_eq!(r.cfg_read(0x10, 4), 0x4);
    assert_eq!(r.cfg_read(0x14, 4), 0);
    assert_eq!(r.cfg_read(0x18, 4), 0x8);
    assert_eq!(r.cfg_read(0x20, 4), 0);
    r.cfg_write(0x20, 4, 0xffff_ffff);
    assert_eq!(r.cfg_read(0x20, 4), 0);
    // Only this function is passed through.
    assert_eq!(r.cfg_read(0x0e, 1), 0);
    // The interrupt line is guest scratch, not forwarded.
    r.cfg_write(0x3c, 1, 0x2a);
    assert_eq!(r.cfg_read(0x3c, 1), 0x2a);
    assert_eq!(r.cfg_read(0x3d, 1), 1, "the pin is the device's");
    assert!(r.fake.config_writes().is_empty());
}

#[test]
fn endpoint_on_the_root_bus_is_integrated() {
    let mut r = rig();
    assert_eq!(r.cfg_read(PCIE + 2, 2), 0x0092, "v2, RCiEP");
    assert_eq!(r.cfg_read(PCIE + 0x0c, 4), 0, "no link");
    assert_eq!(r.cfg_read(PCIE + 0x12, 2), 0);
    assert_eq!(r.cfg_read(PCIE + 0x2c, 4), 0);
    assert_eq!(
        r.cfg_read(PCIE + 0x24, 4),
        1 << 21,
        "DEVCAP2 from the device"
    );
    r.cfg_write(PCIE + 0x10, 2, 0x0003);
    r.cfg_write(PCIE + 2, 2, 0);
    assert_eq!(r.cfg_read(PCIE + 2, 2), 0x0092);
    assert!(
        r.fake.config_writes().is_empty(),
        "link control is not the guest's"
    );
    // Device Control is the device's.
    r.cfg_write(PCIE + 8, 2, 0x2810);
    assert_eq!(
        r.fake.config_writes(),
        vec![(PCIE as u64 + 8, vec![0x10, 0x28])]
    );
}

#[test]
fn a_device_without_config_space_is_refused() {
    let mut fake = FakeVfio::new(nvme_config());
    fake.regions[7] = None;
    let e = VfioPciDevice::new(
        Arc::new(fake),
        0x10,
        Arc::new(RecordingRouter::default()),
        Arc::new(RecordingSlots::default()),
        None,
    );
    assert!(matches!(e, Err(crate::vfio::VfioPciError::NoConfigSpace)));
}

#[test]
fn host_enables_are_cleared_at_start() {
    let mut cfg = nvme_config();
    cfg[4..6].copy_from_slice(&0x0406u16.to_le_bytes());
    let mut r = rig_with(cfg, None);
    assert_eq!(r.fake.config_writes(), vec![(4, vec![0x00, 0x04])]);
    assert_eq!(r.cfg_read(4, 2), 0x0400);
}

#[test]
fn rom_is_hidden() {
    let mut r = rig();
    assert_eq!(r.cfg_read(0x30, 4), 0);
    r.cfg_write(0x30, 4, 0xffff_f800);
    assert_eq!(r.cfg_read(0x30, 4), 0, "sizing finds no ROM");
    r.cfg_write(0x30, 4, 0xc000_0001);
    assert_eq!(r.cfg_read(0x30, 4), 0);
    assert!(r.fake.config_writes().is_empty());
    assert!(!r.dev.bars().iter().any(|(i, _)| *i > 5));
}

#[test]
fn capability_chains_are_intact() {
    let mut r = rig();
    let cfg = presented(&mut r);
    let std: Vec<u8> = standard_caps(&cfg).iter().map(|c| c.1).collect();
    assert_eq!(std, vec![0x01, 0x05, 0x10, 0x11]);
    let ext: Vec<(usize, u16)> = extended_caps(&cfg);
    assert_eq!(ext, vec![(AER, 1), (ATS, 0x0f), (PRI, 0x13)]);
}

#[test]
fn msi_and_msix_capabilities_show_our_state() {
    let mut r = rig();
    // The host's enable and MME bits are not the guest's; MMC is.
    assert_eq!(r.cfg_read(MSI + 2, 2), 0x0186);
    assert_eq!(r.cfg_read(MSI + 4, 4), 0, "no host message address");
    assert_eq!(r.cfg_read(MSIX + 2, 2), 0x0007);
    assert_eq!(r.cfg_read(MSIX + 4, 4), TABLE);
    assert_eq!(r.cfg_read(MSIX + 8, 4), PBA);
    // Table size and BIR are read-only; enable and mask are ours.
    r.cfg_write(MSIX + 2, 2, 0xffff);
    assert_eq!(r.cfg_read(MSIX + 2, 2), 0xc007);
    r.cfg_write(MSIX + 4, 4, 0);
    assert_eq!(r.cfg_read(MSIX + 4, 4), TABLE);
    r.cfg_write(MSI + 2, 2, 0xffff);
    assert_eq!(
        r.cfg_read(MSI + 2, 2),
        0x01f7,
        "enable + MME, rest read-only"
    );
    assert!(
        r.fake.config_writes().is_empty(),
        "MSI state never reaches the device"
    );
}

#[test]
fn msi_capable_count_follows_vfio() {
    let mut fake_cfg = nvme_config();
    // The function asks for 32 vectors; VFIO (fake) offers 8.
    fake_cfg[MSI + 2] = 0x8a;
    let mut r = rig_with(fake_cfg, None);
    assert_eq!((r.cfg_read(MSI + 2, 2) >> 1) & 7, 3);
}

#[test]
fn pri_can_be_enabled_by_the_guest() {
    let mut r = rig();
    // The host has PRI enabled on the device; the guest sees it stopped.
    assert_eq!(r.cfg_read(PRI + 4, 2), 0);
    assert_eq!(r.cfg_read(PRI + 6, 2), 0x8100, "Stopped, PASID required");
    assert_eq!(r.cfg_read(PRI + 8, 4), 0x200, "capacity from the device");
    assert_eq!(r.cfg_read(PRI + 12, 4), 0);
    // pci_enable_pri: allocation, then enable.
    r.cfg_write(PRI + 12, 4, 0x20);
    r.cfg_write(PRI + 4, 2, 1);
    assert_eq!(r.cfg_read(PRI + 12, 4), 0x20);
    assert_eq!(r.cfg_read(PRI + 4, 2), 1);
    assert_eq!(r.cfg_read(PRI + 6, 2), 0x8000, "running: not stopped");
    // Capacity and the PASID-required bit are read-only.
    r.cfg_write(PRI + 8, 4, 0);
    r.cfg_write(PRI + 6, 2, 0xffff);
    assert_eq!(r.cfg_read(PRI + 8, 4), 0x200);
    assert_eq!(
        r.cfg_read(PRI + 6, 2),
        0x8000,
        "RW1C clears nothing that is set"
    );
    // pci_disable_pri + pci_reset_pri: disable, then reset; reset reads 0.
    r.cfg_write(PRI + 4, 2, 0);
    assert_eq!(r.cfg_read(PRI + 6, 2), 0x8100);
    r.cfg_write(PRI + 4, 2, 2);
    assert_eq!(r.cfg_read(PRI + 4, 2), 0);
    // A dword write over control and status at once.
    r.cfg_write(PRI + 4, 4, 0x0003_0001);
    assert_eq!(r.cfg_read(PRI + 4, 4), 0x8000_0001);
    assert!(r.fake.config_writes().is_empty(), "PRI is the host's");
    // Error bits, if they were set, clear by writing 1.
    r.dev.config_for_test().emu_mut().set_u16(PRI + 6, 0x8003);
    r.cfg_write(PRI + 6, 2, 0x0001);
    assert_eq!(r.cfg_read(PRI + 6, 2), 0x8002);
}

#[test]
fn ats_and_command_go_to_the_device() {
    let mut r = rig();
    assert_eq!(r.cfg_read(ATS, 4) & 0xffff, 0x0f);
    assert_eq!(r.cfg_read(ATS + 4, 2), 0x0020);
    r.cfg_write(ATS + 6, 2, 0x8000);
    r.cfg_write(0x04, 2, 0x0006);
    assert_eq!(
        r.fake.config_writes(),
        vec![(ATS as u64 + 6, vec![0x00, 0x80]), (4, vec![0x06, 0x00])]
    );
    assert_eq!(r.cfg_read(0x04, 2), 0x0006);
}

#[test]
fn mixed_writes_split_between_device_and_us() {
    let mut r = rig();
    // 0x3c..0x40: interrupt line (ours), pin (device), min_gnt, max_lat.
    r.cfg_write(0x3c, 4, 0x1122_3344);
    assert_eq!(r.cfg_read(0x3c, 1), 0x44);
    assert_eq!(r.fake.config_writes(), vec![(0x3d, vec![0x33, 0x22, 0x11])]);
    // A read across owners stitches them together.
    assert_eq!(r.cfg_read(0x3c, 2), 0x3344);
}

#[test]
fn pasid_capability_is_synthesized_and_linked() {
    let mut r = rig_with(nvme_config(), Some((PASID_HOST, 10)));
    let cfg = presented(&mut r);
    let ext = extended_caps(&cfg);
    let (off, id) = *ext.last().unwrap();
    assert_eq!(id, 0x1b);
    assert_eq!(ext.len(), 4);
    assert_eq!(
        ext[2],
        (PRI, 0x13),
        "linked from the device's last capability"
    );
    assert_eq!(r.cfg_read(off, 4) & 0xf_ffff, 0x1_001b);
    assert_eq!(r.cfg_read(off, 4) >> 20, 0, "last in the chain");
    assert_eq!(
        (r.cfg_read(off + 4, 2) >> 8) & 0x1f,
        10,
        "width: the vIOMMU's"
    );
    // The guest enables it; the device never hears about it.
    r.cfg_write(off + 6, 2, 1);
    assert_eq!(r.cfg_read(off + 6, 2), 1);
    r.cfg_write(off, 4, 0);
    assert_eq!(r.cfg_read(off, 4) & 0xffff, 0x1b, "header read-only");
    // PRI still works through the patched header.
    r.cfg_write(PRI + 4, 2, 1);
    assert_eq!(r.cfg_read(PRI + 4, 2), 1);
    assert_eq!(r.cfg_read(PRI, 4) >> 20, off as u64);
    assert!(r.fake.config_writes().is_empty());
    // Function reset: PASID disabled, still there.
    r.dev.reset();
    assert_eq!(r.cfg_read(off + 6, 2), 0);
    assert_eq!(r.cfg_read(PRI, 4) >> 20, off as u64);
    assert_eq!(r.cfg_read(PRI + 4, 2), 0);
}

#[test]
fn pasid_links_from_a_device_owned_header() {
    let mut cfg = nvme_config();
    // ATS last: its header is the device's, and gets patched.
    cfg[ATS + 2..ATS + 4].copy_from_slice(&0x0001u16.to_le_bytes());
    let mut r = rig_with(cfg, Some((PASID_HOST, 20)));
    let ext = extended_caps(&presented(&mut r));
    assert_eq!(
        ext.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![1, 0x0f, 0x1b]
    );
    let pasid = ext[2].0;
    assert_eq!(r.cfg_read(ATS, 4), 0x0001_000f | ((pasid as u64) << 20));
    // Writes to the patched header do not reach the device.
    r.cfg_write(ATS, 4, 0);
    assert!(r.fake.config_writes().is_empty());
}

#[test]
fn no_room_for_pasid_leaves_the_chain_alone() {
    let mut cfg = nvme_config();
    // PRI links to a capability of unknown length reaching the end.
    let pri_hdr = 0x13u32 | (1 << 16) | (0x160 << 20);
    cfg[PRI..PRI + 4].copy_from_slice(&pri_hdr.to_le_bytes());
    cfg[0x160..0x164].copy_from_slice(&(0x0030u32 | (1 << 16)).to_le_bytes());
    let mut r = rig_with(cfg, Some((PASID_HOST, 20)));
    let ext = extended_caps(&presented(&mut r));
    assert_eq!(
        ext.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![1, 0x0f, 0x13, 0x30]
    );
}

#[test]
fn no_pasid_without_viommu_pasids() {
    let mut r = rig_with(nvme_config(), Some((PASID_HOST, 0)));
    assert_eq!(extended_caps(&presented(&mut r)).len(), 3);
}

/// A device whose page requests would reach nobody shows no PRI: the
/// capability reads as a null one that keeps the chain, writes to it do
/// nothing, and a function reset keeps it hidden.
#[test]
fn pri_can_be_hidden() {
    let mut r = rig();
    assert!(r.dev.has_pri());
    r.dev.hide_pri();
    assert!(!r.dev.has_pri());
    let cfg = presented(&mut r);
    let ext: Vec<(usize, u16)> = extended_caps(&cfg);
    // PRI was last: the null header (Next 0) ends the list there.
    assert_eq!(ext, vec![(AER, 1), (ATS, 0x0f)]);
    assert_eq!(r.cfg_read(PRI, 4), 0, "ID 0, version 0, Next 0");
    for off in (4..16).step_by(4) {
        assert_eq!(r.cfg_read(PRI + off, 4), 0);
    }
    r.cfg_write(PRI + 4, 2, 1);
    r.cfg_write(PRI + 12, 4, 0x20);
    assert_eq!(r.cfg_read(PRI + 4, 4), 0);
    assert_eq!(r.cfg_read(PRI + 12, 4), 0);
    assert!(
        r.fake.config_writes().is_empty(),
        "nothing reached the device"
    );
    r.dev.reset();
    assert_eq!(extended_caps(&presented(&mut r)), ext);
    assert_eq!(r.cfg_read(PRI + 4, 4), 0);
}
