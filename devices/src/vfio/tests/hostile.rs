//! Guest accesses are untrusted: any offset, any size, any value. The
//! fake panics on any access VFIO would reject (past a region's end), so
//! these also check that nothing out of bounds reaches the backend.

use super::*;

const SIZES: [usize; 7] = [0, 1, 2, 3, 4, 8, 16];

#[test]
fn config_space_survives_every_offset_and_size() {
    let mut r = rig_with(nvme_config(), Some((PASID_HOST, 20)));
    r.dev.set_bar_address(0, 0x1_0000_0000);
    for value in [0xffu8, 0x00, 0xa5, 0x5a] {
        for size in SIZES {
            for offset in 0..4100usize {
                let data = vec![value; size];
                r.dev.write_config(offset, &data);
                let mut out = vec![0u8; size];
                r.dev.read_config(offset, &mut out);
            }
        }
    }
    for offset in [usize::MAX, usize::MAX - 3, 4095, 4096, 1 << 40] {
        r.dev.write_config(offset, &[0xff; 8]);
        let mut out = [0u8; 8];
        r.dev.read_config(offset, &mut out);
    }
    let mut big = vec![0xffu8; 10000];
    r.dev.write_config(0, &big);
    r.dev.read_config(0, &mut big);
    assert_eq!(big[4096..], vec![0xff; 10000 - 4096][..]);
    // Still a working device afterwards.
    r.cfg_write(MSIX + 2, 2, 0);
    r.cfg_write(MSIX + 2, 2, 0x8000);
    r.bar_write32(0, TABLE, 0xfee0_0000);
    assert_eq!(r.bar_read(0, TABLE, 4), 0xfee0_0000u32.to_le_bytes());
    assert_eq!(r.cfg_read(0x0e, 1), 0, "our registers are still ours");
}

#[test]
fn bar_accesses_survive_every_offset_and_size() {
    let mut r = rig();
    r.cfg_write(0x04, 2, 0x2);
    let offsets = [
        0u64,
        1,
        0xfff,
        TABLE - 1,
        TABLE,
        TABLE + 15,
        TABLE + 16 * VECTORS as u64 - 1,
        PBA - 3,
        PBA,
        PBA + 7,
        0x3ffc,
        0x3fff,
        0x4000,
        0x1_0000,
        u64::MAX - 8,
        u64::MAX,
    ];
    for index in 0..8usize {
        for &offset in &offsets {
            for size in SIZES {
                r.dev.write_bar(index, offset, &vec![0xff; size]);
                let mut out = vec![0u8; size];
                r.dev.read_bar(index, offset, &mut out);
            }
        }
    }
    // Accesses are cut at the BAR's end; the rest reads as all ones.
    r.fake.clear_calls();
    assert_eq!(r.bar_read(0, 0x3ffe, 4)[2..], [0xff, 0xff]);
    assert_eq!(
        r.fake.calls(),
        vec![Call::RegionRead {
            index: 0,
            offset: 0x3ffe,
            len: 2
        }]
    );
    assert_eq!(r.bar_read(4, 0, 2), vec![0xff, 0xff], "hidden BAR");
    for addr in [0, u64::MAX, u64::MAX - 0x1000] {
        r.dev.set_bar_address(0, addr);
        r.dev.set_bar_address(2, addr);
        let _ = r.dev.bar_containing(addr);
    }
    r.dev.set_bar_address(usize::MAX, 0x1000);
}

#[test]
fn random_guest_writes() {
    // A deterministic xorshift: random offsets, sizes and values.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut r = rig_with(nvme_config(), Some((PASID_HOST, 20)));
    for _ in 0..20000 {
        let v = next();
        let size = SIZES[(v % SIZES.len() as u64) as usize];
        let data = next().to_le_bytes().repeat(2);
        match (v >> 8) % 4 {
            0 | 1 => r
                .dev
                .write_config(((v >> 16) % 4200) as usize, &data[..size]),
            2 => r
                .dev
                .write_bar(((v >> 16) % 7) as usize, (v >> 24) % 0x4100, &data[..size]),
            _ => {
                let mut out = vec![0u8; size];
                r.dev
                    .read_bar(((v >> 16) % 7) as usize, (v >> 24) % 0x4100, &mut out);
                r.dev.read_config(((v >> 32) % 4200) as usize, &mut out);
            }
        }
    }
}
