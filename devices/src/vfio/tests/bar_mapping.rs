//! BAR sizing, placement and memory decode → memory slots, split around
//! the MSI-X table and PBA; trapped accesses.

use super::*;
use crate::memory_slots::test_utils::SlotMapping;
use crate::pci::config::{Bar, BarKind};

const BAR0_AT: u64 = 0x1_0000_0000;
const BAR2_AT: u64 = 0xc000_0000;

fn live(r: &Rig) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = r
        .slots
        .live
        .lock()
        .unwrap()
        .iter()
        .map(|m| (m.gpa, m.len))
        .collect();
    v.sort();
    v
}

fn placed() -> Rig {
    let mut r = rig();
    r.dev.set_bar_address(0, BAR0_AT);
    r.dev.set_bar_address(2, BAR2_AT);
    r
}

#[test]
fn bars_come_from_vfio_regions() {
    let r = rig();
    assert_eq!(
        r.dev.bars(),
        vec![
            (
                0,
                Bar {
                    kind: BarKind::Mem64,
                    size: 0x4000,
                    prefetchable: false
                }
            ),
            (
                2,
                Bar {
                    kind: BarKind::Mem32,
                    size: 0x2000,
                    prefetchable: true
                }
            ),
        ]
    );
    // BAR0 is mmapped except the MSI-X table and PBA pages.
    let mmaps: Vec<Call> = r
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Mmap { .. }))
        .collect();
    assert_eq!(
        mmaps,
        vec![
            Call::Mmap {
                index: 0,
                offset: 0,
                len: 0x2000
            },
            Call::Mmap {
                index: 2,
                offset: 0,
                len: 0x2000
            },
        ]
    );
}

#[test]
fn sizing_reads_sizes_and_maps_nothing() {
    let mut r = placed();
    r.cfg_write(0x04, 2, 0x2);
    assert_eq!(live(&r).len(), 2);
    // Sizing with decode on (Linux turns it off, others may not).
    r.cfg_write(0x10, 4, 0xffff_ffff);
    assert_eq!(live(&r), vec![(BAR2_AT, 0x2000)], "BAR0 left the guest");
    r.cfg_write(0x14, 4, 0xffff_ffff);
    assert_eq!(r.cfg_read(0x10, 4), 0xffff_c004);
    assert_eq!(r.cfg_read(0x14, 4), 0xffff_ffff);
    r.cfg_write(0x18, 4, 0xffff_ffff);
    assert_eq!(r.cfg_read(0x18, 4), 0xffff_e008);
    assert!(live(&r).is_empty());
    // Restoring the addresses maps them again.
    r.cfg_write(0x10, 4, BAR0_AT & 0xffff_ffff);
    r.cfg_write(0x14, 4, BAR0_AT >> 32);
    r.cfg_write(0x18, 4, BAR2_AT);
    assert_eq!(live(&r), vec![(BAR2_AT, 0x2000), (BAR0_AT, 0x2000)]);
}

#[test]
fn decode_maps_and_unmaps_split_around_msix() {
    let mut r = placed();
    assert!(live(&r).is_empty(), "decode off: nothing mapped");
    r.cfg_write(0x04, 2, 0x6);
    let maps: Vec<SlotMapping> = r.slots.live.lock().unwrap().clone();
    assert_eq!(live(&r), vec![(BAR2_AT, 0x2000), (BAR0_AT, 0x2000)]);
    for m in &maps {
        assert_ne!(m.host_addr, 0);
        assert_eq!(m.host_addr % 4096, 0);
    }
    // The MSI-X pages stay trapped: they exit to us.
    assert_eq!(r.dev.bar_containing(BAR0_AT + TABLE), Some((0, TABLE)));
    assert_eq!(r.dev.bar_containing(BAR0_AT + PBA + 8), Some((0, PBA + 8)));
    // Relocation while decoding: unmapped, mapped at the new place, same memory.
    let host2 = maps.iter().find(|m| m.gpa == BAR2_AT).unwrap().host_addr;
    r.cfg_write(0x18, 4, 0xd000_0000);
    assert_eq!(live(&r), vec![(0xd000_0000, 0x2000), (BAR0_AT, 0x2000)]);
    let moved = r.slots.live.lock().unwrap().clone();
    let m2 = moved.iter().find(|m| m.gpa == 0xd000_0000).unwrap();
    assert_eq!(m2.host_addr, host2);
    assert_eq!(r.dev.bar_containing(BAR2_AT), None);
    // Decode off: everything leaves the guest's address space.
    r.cfg_write(0x04, 2, 0x4);
    assert!(live(&r).is_empty());
    assert_eq!(r.dev.bar_containing(BAR0_AT + TABLE), None);
    // Unmapping happened before the device saw decode go off.
    let calls = r.fake.config_writes();
    assert_eq!(calls.last(), Some(&(4, vec![0x04, 0x00])));
}

#[test]
fn trapped_accesses_reach_the_device_or_msix() {
    let mut r = placed();
    r.cfg_write(0x04, 2, 0x2);
    r.fake.clear_calls();
    // A register access that exits (KVM would not exit for a mapped page,
    // but the dispatch must still work) goes to VFIO.
    assert_eq!(r.bar_read(0, 0x10, 4), vec![0x10, 0x11, 0x12, 0x13]);
    r.bar_write32(0, 0x1000, 0xdead_beef);
    // The MSI-X table and PBA are ours.
    r.bar_write32(0, TABLE, 0xfee0_0000);
    assert_eq!(r.bar_read(0, TABLE, 4), 0xfee0_0000u32.to_le_bytes());
    r.bar_write32(0, PBA, 0xffff_ffff);
    assert_eq!(r.bar_read(0, PBA, 8), vec![0; 8]);
    assert_eq!(
        r.fake.calls(),
        vec![
            Call::RegionRead {
                index: 0,
                offset: 0x10,
                len: 4
            },
            Call::RegionWrite {
                index: 0,
                offset: 0x1000,
                data: 0xdead_beefu32.to_le_bytes().to_vec()
            },
        ]
    );
    // Past the table (same page) is the device's again.
    r.fake.clear_calls();
    r.bar_read(0, TABLE + 16 * VECTORS as u64, 4);
    assert_eq!(r.fake.calls().len(), 1);
}

#[test]
fn unmappable_bar_is_served_trapped() {
    let fake = FakeVfio::new(nvme_config());
    fake.fail_mmap.lock().unwrap().push(2);
    let mut r = rig_from(fake, None);
    r.dev.set_bar_address(0, BAR0_AT);
    r.dev.set_bar_address(2, BAR2_AT);
    r.cfg_write(0x04, 2, 0x2);
    assert_eq!(live(&r), vec![(BAR0_AT, 0x2000)]);
    assert_eq!(r.dev.bar_containing(BAR2_AT + 0x20), Some((2, 0x20)));
    assert_eq!(r.bar_read(2, 0x20, 2), vec![0x20, 0x21]);
}

#[test]
fn refused_slot_leaves_the_bar_trapped() {
    let mut r = placed();
    *r.slots.fail_at.lock().unwrap() = Some(BAR2_AT);
    r.cfg_write(0x04, 2, 0x2);
    assert_eq!(live(&r), vec![(BAR0_AT, 0x2000)]);
    assert_eq!(r.bar_read(2, 0x1ffe, 2), vec![0xfe, 0xff]);
}

#[test]
fn sparse_mmap_areas_are_respected() {
    let mut fake = FakeVfio::new(nvme_config());
    if let Some(info) = &mut fake.regions[0] {
        info.sparse_areas = Some(vec![(0x1000, 0x1000), (0x3000, 0x1000)]);
    }
    let mut r = rig_from(fake, None);
    r.dev.set_bar_address(0, BAR0_AT);
    r.cfg_write(0x04, 2, 0x2);
    // 0x3000 is the PBA page: only 0x1000..0x2000 remains.
    assert_eq!(live(&r), vec![(BAR0_AT + 0x1000, 0x1000)]);
}

#[test]
fn set_bar_address_maps_when_decode_is_on() {
    let mut r = rig();
    r.cfg_write(0x04, 2, 0x2);
    r.dev.set_bar_address(2, BAR2_AT);
    assert_eq!(live(&r), vec![(BAR2_AT, 0x2000)]);
    // Unknown BARs are ignored.
    r.dev.set_bar_address(4, 0xe000_0000);
    r.dev.set_bar_address(1, 0xe000_0000);
    assert_eq!(r.cfg_read(0x20, 4), 0);
    // A 32-bit BAR cannot end above 4 GiB.
    r.cfg_write(0x18, 4, 0xffff_f000);
    assert!(live(&r).is_empty());
}

#[test]
fn dropping_the_device_removes_its_slots() {
    let mut r = placed();
    r.cfg_write(0x04, 2, 0x2);
    assert_eq!(live(&r).len(), 2);
    let Rig { dev, slots, .. } = r;
    drop(dev);
    assert!(slots.live.lock().unwrap().is_empty());
}
