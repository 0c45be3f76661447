//! The synthesized PASID capability against recorded configuration spaces of
//! real (QEMU-emulated) PCIe functions and against hand-built edge cases.
//!
//! Fixtures live in tests/fixtures/pci-config/*.hex; each says where it was
//! recorded. Every check of a placement reads the configuration space the
//! way the guest will — through `overlay_read` on top of the device's bytes —
//! and walks that chain with a walker written independently of the module's.

use viommu::pasid_cap::{ext_capabilities, ExtCap, PasidCapError, PasidCapability, PasidHostInfo};

const FULL_HOST: PasidHostInfo = PasidHostInfo {
    max_pasid_log2: 20,
    exec: true,
    privileged: true,
};

/// Loads a fixture: `#` comments, one `size N` line, then `OFF: hex...` lines
/// (omitted lines are zero).
fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/pci-config/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut data: Option<Vec<u8>> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(size) = line.strip_prefix("size ") {
            data = Some(vec![0; size.parse().expect("size")]);
            continue;
        }
        let (off, hex) = line.split_once(':').expect("OFF: bytes");
        let off = usize::from_str_radix(off, 16).expect("offset");
        let hex: String = hex.split_whitespace().collect();
        let buf = data.as_mut().expect("size before data");
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).expect("ascii");
            buf[off + i] = u8::from_str_radix(s, 16).expect("hex byte");
        }
    }
    data.expect("size line")
}

fn rd32(cfg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(cfg[at..at + 4].try_into().unwrap())
}

fn wr32(cfg: &mut [u8], at: usize, v: u32) {
    cfg[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// An extended capability header.
fn header(id: u16, version: u32, next: u16) -> u32 {
    u32::from(id) | (version << 16) | (u32::from(next) << 20)
}

/// Points the last header of `cfg`'s chain at `new` (which must already
/// hold a header).
fn append(cfg: &mut [u8], new: u16) {
    let last = walk(cfg).last().copied().expect("a chain");
    let h = rd32(cfg, usize::from(last));
    wr32(
        cfg,
        usize::from(last),
        (h & 0x000f_ffff) | (u32::from(new) << 20),
    );
}

/// What the guest sees: the device's bytes with the capability overlaid,
/// read with dword accesses as a guest would.
fn presented(cfg: &[u8], cap: &PasidCapability) -> Vec<u8> {
    let mut out = cfg.to_vec();
    for (i, chunk) in out.chunks_mut(4).enumerate() {
        cap.overlay_read(i * 4, chunk);
    }
    out
}

/// Header offsets along the chain, the way Linux walks it: nothing if the
/// dword at 0x100 is 0 or all-ones, else follow next pointers (masked) until
/// one is below 0x100, for a bounded number of steps.
fn walk(cfg: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let first = rd32(cfg, 0x100);
    if first == 0 || first == u32::MAX {
        return out;
    }
    let mut at = 0x100usize;
    for _ in 0..(4096 - 256) / 8 {
        out.push(at as u16);
        at = ((rd32(cfg, at) >> 20) & 0xffc) as usize;
        if at < 0x100 {
            break;
        }
    }
    out
}

/// Checks everything a placement must satisfy on `cfg` and returns the
/// capability. `expected` is the device's chain, independently known.
fn check_placement(cfg: &[u8], expected: &[(u16, u16, usize)], at: u16) -> PasidCapability {
    let caps = ext_capabilities(cfg).expect("walkable chain");
    let got: Vec<(u16, u16, usize)> = caps.iter().map(|c| (c.offset, c.id, c.len)).collect();
    assert_eq!(got, expected, "chain and lengths");

    let cap = PasidCapability::synthesize(cfg, FULL_HOST, 20)
        .expect("room")
        .expect("synthesized");
    assert_eq!(cap.offset(), at);
    let off = usize::from(cap.offset());
    assert_eq!(off % 4, 0);
    assert!((0x100..=0xff8).contains(&off));
    for c in &caps {
        assert!(
            !c.overlaps(off, 8),
            "{c:x?} overlaps the PASID capability at {off:#x}"
        );
    }

    let view = presented(cfg, &cap);
    let chain = walk(&view);
    let mut want: Vec<u16> = expected.iter().map(|e| e.0).collect();
    want.push(cap.offset());
    assert_eq!(chain, want, "the guest's walk ends at the PASID capability");
    assert_eq!(rd32(&view, off), 0x0001_001b, "ID 0x1b, version 1, next 0");
    assert_eq!(rd32(&view, off + 4), (20 << 8) | 0b110);

    // Only the capability and the link header differ from the device.
    let link = cap.link();
    for i in 0..4096 {
        let ours = (off..off + 8).contains(&i)
            || link.is_some_and(|(l, _)| (usize::from(l)..usize::from(l) + 4).contains(&i));
        if !ours {
            assert_eq!(view[i], cfg[i], "byte {i:#x} changed");
        }
    }
    if let Some((l, v)) = link {
        let real = rd32(cfg, usize::from(l));
        assert_eq!(v, cap.patch_header(real));
        assert_eq!(
            v & 0x003f_ffff,
            real & 0x003f_ffff,
            "ID, version, reserved bits kept"
        );
        assert_eq!((v >> 20) & 0xffc, u32::from(cap.offset()));
    }
    cap
}

#[test]
fn igb() {
    let cfg = fixture("igb");
    let cap = check_placement(
        &cfg,
        &[(0x100, 0x01, 0x48), (0x150, 0x0e, 8), (0x160, 0x10, 0x40)],
        0xff8,
    );
    assert_eq!(cap.link(), Some((0x160, 0xff81_0010)));
}

#[test]
fn e1000e() {
    // AER's largest form (0x48) runs past the DSN header at 0x140: harmless,
    // the occupied ranges only have to cover the real registers.
    let cfg = fixture("e1000e");
    let cap = check_placement(&cfg, &[(0x100, 0x01, 0x48), (0x140, 0x03, 0x0c)], 0xff8);
    assert_eq!(cap.link(), Some((0x140, 0xff81_0003)));
}

#[test]
fn nvme_sriov() {
    let cfg = fixture("nvme-sriov");
    check_placement(&cfg, &[(0x100, 0x0e, 8), (0x120, 0x10, 0x40)], 0xff8);
}

#[test]
fn virtio_net_ats() {
    let cfg = fixture("virtio-net-ats");
    check_placement(&cfg, &[(0x100, 0x01, 0x48), (0x148, 0x0f, 8)], 0xff8);
}

#[test]
fn pcie_root_port_acs() {
    // ACS without Egress Control: 8 bytes.
    let cfg = fixture("pcie-root-port");
    check_placement(&cfg, &[(0x100, 0x01, 0x48), (0x148, 0x0d, 8)], 0xff8);
}

#[test]
fn cxl_type3_dvsec_and_doe() {
    // DVSEC lengths come from DVSEC header 1; the DOE mailbox is 0x18 bytes.
    let cfg = fixture("cxl-type3");
    check_placement(
        &cfg,
        &[
            (0x100, 0x23, 0x3c),
            (0x13c, 0x23, 0x24),
            (0x160, 0x23, 0x10),
            (0x170, 0x23, 0x20),
            (0x190, 0x2e, 0x18),
            (0x200, 0x01, 0x48),
        ],
        0xff8,
    );
}

#[test]
fn cxl_root_port() {
    let cfg = fixture("cxl-root-port");
    check_placement(
        &cfg,
        &[
            (0x100, 0x01, 0x48),
            (0x148, 0x0d, 8),
            (0x150, 0x23, 0x28),
            (0x178, 0x23, 0x10),
            (0x188, 0x23, 0x20),
            (0x1a8, 0x23, 0x24),
        ],
        0xff8,
    );
}

#[test]
fn real_devices_without_extended_capabilities() {
    for name in ["nvme", "host-bridge-8086-0d57"] {
        let cfg = fixture(name);
        assert_eq!(cfg.len(), 4096);
        assert_eq!(ext_capabilities(&cfg), Ok(vec![]));
        let cap = check_placement(&cfg, &[], 0x100);
        assert_eq!(cap.link(), None, "{name}");
    }
}

#[test]
fn conventional_function_gets_nothing() {
    let cfg = fixture("ich9-ahci");
    assert_eq!(cfg.len(), 256);
    assert_eq!(PasidCapability::synthesize(&cfg, FULL_HOST, 20), Ok(None));
    assert_eq!(PasidCapability::synthesize(&[], FULL_HOST, 20), Ok(None));
    assert_eq!(ext_capabilities(&cfg), Ok(vec![]));
}

#[test]
fn no_extended_capabilities_variants() {
    // All-ones at 0x100 (nothing answers there), a bare Null capability.
    for first in [u32::MAX, 0x0001_0000, 0] {
        let mut cfg = fixture("nvme");
        wr32(&mut cfg, 0x100, first);
        let cap = PasidCapability::synthesize(&cfg, FULL_HOST, 20)
            .unwrap()
            .unwrap();
        assert_eq!((cap.offset(), cap.link()), (0x100, None));
        assert_eq!(walk(&presented(&cfg, &cap)), vec![0x100]);
    }
}

#[test]
fn vfio_null_placeholder_at_0x100_is_walked_through() {
    // vfio-pci hides an unknown first capability as ID 0 / version 0 and
    // keeps its next pointer.
    let mut cfg = fixture("nvme");
    wr32(&mut cfg, 0x100, header(0, 0, 0x140));
    wr32(&mut cfg, 0x140, header(0x03, 1, 0));
    let cap = check_placement(&cfg, &[(0x100, 0, 4), (0x140, 0x03, 0x0c)], 0xff8);
    assert_eq!(cap.link(), Some((0x140, 0xff81_0003)));
}

#[test]
fn body_at_0xff8_is_respected_not_just_headers() {
    // A vendor-specific capability whose header is at 0xf00 but whose
    // registers reach 0xfff: QEMU's header check would put PASID inside it.
    let mut cfg = fixture("igb");
    wr32(&mut cfg, 0xf00, header(0x0b, 1, 0));
    wr32(&mut cfg, 0xf04, (0x100 << 20) | 0x0001); // VSEC Length 0x100
    append(&mut cfg, 0xf00);
    check_placement(
        &cfg,
        &[
            (0x100, 0x01, 0x48),
            (0x150, 0x0e, 8),
            (0x160, 0x10, 0x40),
            (0xf00, 0x0b, 0x100),
        ],
        0xef8,
    );
}

#[test]
fn capability_at_the_very_end() {
    // An unknown ID at 0xffc runs to 0x1000: 0xff4..0xffc is the top slot.
    let mut cfg = fixture("e1000e");
    wr32(&mut cfg, 0xffc, header(0x7ff, 1, 0));
    append(&mut cfg, 0xffc);
    check_placement(
        &cfg,
        &[(0x100, 0x01, 0x48), (0x140, 0x03, 0x0c), (0xffc, 0x7ff, 4)],
        0xff4,
    );

    // An ATS capability at 0xff8: the slot below it. Both pointers carry
    // reserved bits 21:20, which the walk masks and the patch keeps.
    let mut cfg = fixture("virtio-net-ats");
    wr32(&mut cfg, 0xff8, header(0x0f, 1, 0) | 0x0030_0000);
    wr32(&mut cfg, 0x148, header(0x0f, 1, 0xff8) | 0x0030_0000);
    let cap = check_placement(
        &cfg,
        &[(0x100, 0x01, 0x48), (0x148, 0x0f, 8), (0xff8, 0x0f, 8)],
        0xff0,
    );
    assert_eq!(cap.link(), Some((0xff8, 0xff31_000f)));
}

#[test]
fn unknown_capability_extends_to_next_header() {
    let mut cfg = fixture("nvme");
    wr32(&mut cfg, 0x100, header(0x7f0, 1, 0x400));
    wr32(&mut cfg, 0x400, header(0x7f1, 1, 0x200));
    wr32(&mut cfg, 0x200, header(0x0e, 1, 0));
    // Unknown at 0x400 is the highest: it runs to 0x1000.
    check_placement(
        &cfg,
        &[
            (0x100, 0x7f0, 0x100),
            (0x400, 0x7f1, 0xc00),
            (0x200, 0x0e, 8),
        ],
        0x3f8,
    );
}

#[test]
fn full_extended_space_is_no_room() {
    // One unknown capability covering everything.
    let mut cfg = fixture("nvme");
    wr32(&mut cfg, 0x100, header(0x7ff, 1, 0));
    assert_eq!(
        PasidCapability::synthesize(&cfg, FULL_HOST, 20),
        Err(PasidCapError::NoRoom)
    );

    // Eight-byte capabilities every 12 bytes: 4-byte gaps only.
    let mut cfg = fixture("nvme");
    let offsets: Vec<usize> = (0x100..=0xff4).step_by(12).collect();
    for w in offsets.windows(2) {
        wr32(&mut cfg, w[0], header(0x0e, 1, w[1] as u16));
    }
    wr32(&mut cfg, *offsets.last().unwrap(), header(0x0e, 1, 0));
    assert_eq!(ext_capabilities(&cfg).unwrap().len(), offsets.len());
    assert_eq!(
        PasidCapability::synthesize(&cfg, FULL_HOST, 20),
        Err(PasidCapError::NoRoom)
    );

    // Widen one gap to exactly 8 bytes: that is the only slot.
    let mut cfg2 = fixture("nvme");
    let offsets: Vec<usize> = (0x100..=0xff4)
        .step_by(12)
        .map(|o| if o > 0x800 { o + 4 } else { o })
        .filter(|&o| o <= 0xff8)
        .collect();
    for w in offsets.windows(2) {
        wr32(&mut cfg2, w[0], header(0x0e, 1, w[1] as u16));
    }
    wr32(&mut cfg2, *offsets.last().unwrap(), header(0x0e, 1, 0));
    let cap = PasidCapability::synthesize(&cfg2, FULL_HOST, 20)
        .unwrap()
        .unwrap();
    let gap = offsets.windows(2).find(|w| w[1] - w[0] == 16).unwrap()[0] + 8;
    assert_eq!(usize::from(cap.offset()), gap);
}

#[test]
fn loops_and_bad_pointers_fail_cleanly() {
    let mut cfg = fixture("igb");
    // SR-IOV back to ARI.
    wr32(&mut cfg, 0x160, header(0x10, 1, 0x150));
    assert_eq!(
        PasidCapability::synthesize(&cfg, FULL_HOST, 20),
        Err(PasidCapError::Loop {
            at: 0x160,
            next: 0x150
        })
    );
    // A self-loop at 0x100.
    wr32(&mut cfg, 0x100, header(0x01, 2, 0x100));
    assert_eq!(
        ext_capabilities(&cfg),
        Err(PasidCapError::Loop {
            at: 0x100,
            next: 0x100
        })
    );
    // Into conventional space.
    let mut cfg = fixture("igb");
    wr32(&mut cfg, 0x150, header(0x0e, 1, 0x40));
    assert_eq!(
        PasidCapability::synthesize(&cfg, FULL_HOST, 20),
        Err(PasidCapError::BadPointer {
            at: 0x150,
            next: 0x40
        })
    );
    // A header that reads all-ones mid-chain (0xffc pointing at itself).
    let mut cfg = fixture("igb");
    wr32(&mut cfg, 0x160, header(0x10, 1, 0xffc));
    wr32(&mut cfg, 0xffc, u32::MAX);
    assert_eq!(
        ext_capabilities(&cfg),
        Err(PasidCapError::Loop {
            at: 0xffc,
            next: 0xffc
        })
    );
}

#[test]
fn random_configs_never_panic_and_never_overlap() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = fixture("cxl-type3");
    let (mut placed, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut cfg = base.clone();
        for _ in 0..(rand() % 8) {
            // Half the time hit one of the device's own headers.
            let headers = [0x100, 0x13c, 0x160, 0x170, 0x190, 0x200];
            let at = match rand() as usize {
                r if r % 2 == 0 => headers[r / 2 % headers.len()],
                r => 0x100 + (r % 0xf00) / 4 * 4,
            };
            let v = rand() as u32;
            // Mostly plausible headers (small IDs, pointers 0 or >= 0x100),
            // sometimes anything.
            let v = match v % 4 {
                0 => v,
                1 => v & 0xffff,
                _ => ((0x100 + (v >> 20) % 0xf00) << 20) | ((v >> 4) % 0x30),
            };
            wr32(&mut cfg, at, v);
        }
        let host = PasidHostInfo {
            max_pasid_log2: (rand() % 32) as u8,
            exec: rand() & 1 == 1,
            privileged: rand() & 1 == 1,
        };
        let cap = match PasidCapability::synthesize(&cfg, host, (rand() % 32) as u8) {
            Ok(Some(cap)) => cap,
            Ok(None) => continue,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        placed += 1;
        let caps: Vec<ExtCap> = ext_capabilities(&cfg).unwrap();
        let off = usize::from(cap.offset());
        assert!(caps.iter().all(|c| !c.overlaps(off, 8)));
        assert!(cap.width() >= 1 && cap.width() <= 20);
        let view = presented(&cfg, &cap);
        assert_eq!(walk(&view).last().copied(), Some(cap.offset()));
    }
    assert!(
        placed > 1000 && refused > 100,
        "{placed} placed, {refused} refused"
    );
}

#[test]
fn existing_pasid_capability_means_none() {
    let mut cfg = fixture("igb");
    wr32(&mut cfg, 0x1a0, header(0x1b, 1, 0));
    wr32(&mut cfg, 0x1a4, 0x0000_1400);
    append(&mut cfg, 0x1a0);
    assert_eq!(PasidCapability::synthesize(&cfg, FULL_HOST, 20), Ok(None));
}

#[test]
fn width_is_capped() {
    let cfg = fixture("igb");
    let width = |host: u8, viommu: u8| {
        let h = PasidHostInfo {
            max_pasid_log2: host,
            ..FULL_HOST
        };
        PasidCapability::synthesize(&cfg, h, viommu)
            .unwrap()
            .map(|c| c.width())
    };
    assert_eq!(width(20, 8), Some(8));
    assert_eq!(width(5, 20), Some(5));
    assert_eq!(width(20, 0), None);
    assert_eq!(width(0, 20), None);
    assert_eq!(width(31, 31), Some(20), "the PASID field is 20 bits");

    let cap = PasidCapability::synthesize(
        &cfg,
        PasidHostInfo {
            max_pasid_log2: 20,
            ..FULL_HOST
        },
        8,
    )
    .unwrap()
    .unwrap();
    let mut reg = [0; 2];
    cap.read(4, &mut reg);
    assert_eq!((u16::from_le_bytes(reg) >> 8) & 0x1f, 8);
}

#[test]
fn exec_and_priv_follow_the_host() {
    let cfg = fixture("nvme-sriov");
    for (caps, exec, privileged) in [
        (0u64, false, false),
        (2, true, false),
        (4, false, true),
        (7, true, true),
    ] {
        let host = PasidHostInfo::from_hw_info(16, caps);
        assert_eq!((host.exec, host.privileged), (exec, privileged));
        let cap = PasidCapability::synthesize(&cfg, host, 20)
            .unwrap()
            .unwrap();
        assert_eq!(
            (cap.exec_supported(), cap.priv_supported()),
            (exec, privileged)
        );
        let expected = (16 << 8) | (u16::from(exec) << 1) | (u16::from(privileged) << 2);
        assert_eq!(cap.capability_register(), expected);
        let mut reg = [0; 2];
        cap.read(4, &mut reg);
        assert_eq!(u16::from_le_bytes(reg), expected);
    }
}

fn cap_with(exec: bool, privileged: bool) -> PasidCapability {
    let host = PasidHostInfo {
        max_pasid_log2: 20,
        exec,
        privileged,
    };
    PasidCapability::synthesize(&fixture("virtio-net-ats"), host, 20)
        .unwrap()
        .unwrap()
}

#[test]
fn control_register_is_virtualized() {
    for (exec, privileged, writable) in [
        (false, false, 1u16),
        (true, false, 3),
        (false, true, 5),
        (true, true, 7),
    ] {
        let mut cap = cap_with(exec, privileged);
        let before = {
            let mut b = [0; 8];
            cap.read(0, &mut b);
            b
        };
        // Everything written everywhere: only the supported enables stick.
        cap.write(0, &[0xff; 8]);
        assert_eq!(cap.control_register(), writable);
        let mut after = [0; 8];
        cap.read(0, &mut after);
        assert_eq!(
            after[..6],
            before[..6],
            "header and capability register are read-only"
        );
        assert_eq!(u16::from_le_bytes([after[6], after[7]]), writable);
        assert!(cap.enabled());
        assert_eq!(cap.exec_enabled(), exec);
        assert_eq!(cap.priv_enabled(), privileged);

        cap.write(6, &[0, 0]);
        assert_eq!(cap.control_register(), 0);
        assert!(!cap.enabled() && !cap.exec_enabled() && !cap.priv_enabled());
    }
}

#[test]
fn partial_and_odd_writes() {
    let mut cap = cap_with(true, true);
    cap.write(7, &[0xff]); // high byte: reserved
    assert_eq!(cap.control_register(), 0);
    cap.write(6, &[0x01]);
    assert_eq!(cap.control_register(), 1);
    cap.write(4, &[0xff, 0xff, 0x06, 0x00]); // dword write: cap RO, control = 6
    assert_eq!(cap.control_register(), 6);
    assert_eq!(cap.width(), 20);
    cap.write(5, &[0xff, 0x03]); // straddles cap and control
    assert_eq!(cap.control_register(), 3);
    cap.write(7, &[0, 0, 0, 0]); // runs past the end
    cap.write(8, &[0xff]);
    cap.write(usize::MAX, &[0xff, 0xff]);
    cap.write(6, &[]);
    assert_eq!(cap.control_register(), 3);
    cap.reset();
    assert_eq!(cap.control_register(), 0);
}

#[test]
fn reads_of_any_size_at_any_offset() {
    let mut cap = cap_with(true, false);
    cap.write(6, &[0x03]);
    let image = [0x1b, 0x00, 0x01, 0x00, 0x02, 0x14, 0x03, 0x00];
    for off in 0..10 {
        for len in 0..=8 {
            let mut buf = vec![0xaa; len];
            cap.read(off, &mut buf);
            let want: Vec<u8> = (off..off + len)
                .map(|o| image.get(o).copied().unwrap_or(0))
                .collect();
            assert_eq!(buf, want, "read {len} at {off}");
        }
    }
    let mut buf = [0xaa; 4];
    cap.read(usize::MAX, &mut buf);
    assert_eq!(buf, [0; 4]);
}

#[test]
fn overlay_read_and_write_by_config_offset() {
    let cfg = fixture("igb");
    let mut cap = PasidCapability::synthesize(&cfg, FULL_HOST, 20)
        .unwrap()
        .unwrap();
    assert_eq!(cap.offset(), 0xff8);

    // Word and byte reads of the link header (SR-IOV at 0x160).
    let mut w = [cfg[0x162], cfg[0x163]];
    cap.overlay_read(0x162, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0xff81);
    let mut b = [cfg[0x160]];
    cap.overlay_read(0x160, &mut b);
    assert_eq!(b, [0x10]);
    // A read straddling the start of the capability.
    let mut s = [0x55; 8];
    cap.overlay_read(0xff4, &mut s);
    assert_eq!(s, [0x55, 0x55, 0x55, 0x55, 0x1b, 0x00, 0x01, 0x00]);
    let mut far = [0x77; 4];
    cap.overlay_read(usize::MAX - 1, &mut far);
    assert_eq!(far, [0x77; 4]);

    // Writes that touch us are ours; others go to the device.
    assert!(!cap.overlay_write(0xff4, &[0xff; 4]));
    assert!(!cap.overlay_write(0x160, &[0; 4]));
    assert!(!cap.overlay_write(0xffe, &[]));
    assert!(cap.overlay_write(0xffe, &[0x07]));
    assert_eq!(cap.control_register(), 7);
    assert!(cap.overlay_write(0xffc, &[0, 0, 0x01, 0]));
    assert_eq!(cap.control_register(), 1);
    // Bytes before the capability are dropped, not forwarded.
    assert!(cap.overlay_write(0xff6, &[0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x04]));
    assert_eq!(cap.control_register(), 4);
    assert!(cap.overlay_write(0xffa, &[0, 0, 0, 0, 0x05, 0, 0xff, 0xff]));
    assert_eq!(cap.control_register(), 5);
    let mut ctrl = [0; 2];
    cap.overlay_read(0xffe, &mut ctrl);
    assert_eq!(ctrl, [0x05, 0]);
}

#[test]
fn variable_lengths_from_registers() {
    let lens = |build: &dyn Fn(&mut Vec<u8>)| {
        let mut cfg = fixture("nvme");
        build(&mut cfg);
        ext_capabilities(&cfg)
            .unwrap()
            .iter()
            .map(|c| c.len)
            .collect::<Vec<_>>()
    };
    // ACS with a 7-bit egress vector: rounded to 32 bits.
    let acs = lens(&|c| {
        wr32(c, 0x100, header(0x0d, 1, 0));
        wr32(c, 0x104, 0x0000_0720);
    });
    assert_eq!(acs, [8 + 4]);
    // ACS egress vector size 0 means 256 bits.
    let acs256 = lens(&|c| {
        wr32(c, 0x100, header(0x0d, 1, 0));
        wr32(c, 0x104, 0x0000_0020);
    });
    assert_eq!(acs256, [8 + 32]);
    // Resizable BAR with three BARs.
    let rebar = lens(&|c| {
        wr32(c, 0x100, header(0x15, 1, 0));
        wr32(c, 0x108, 3 << 5);
    });
    assert_eq!(rebar, [4 + 3 * 8]);
    // TPH with a 4-entry ST table in the capability.
    let tph = lens(&|c| {
        wr32(c, 0x100, header(0x17, 1, 0));
        wr32(c, 0x104, (3 << 16) | (1 << 9));
    });
    assert_eq!(tph, [0x0c + 8]);
    // DPA with 5 substates.
    let dpa = lens(&|c| {
        wr32(c, 0x100, header(0x16, 1, 0));
        wr32(c, 0x104, 4);
    });
    assert_eq!(dpa, [0x10 + 5]);
    // VC with one extra VC and a 64-phase VC arbitration table at 0x40.
    let vc = lens(&|c| {
        wr32(c, 0x100, header(0x02, 1, 0));
        wr32(c, 0x104, 1);
        wr32(c, 0x108, (4 << 24) | 0x4);
    });
    assert_eq!(vc, [0x40 + 32]);
    // VSEC with a silly length falls back to "up to the next header".
    let vsec = lens(&|c| {
        wr32(c, 0x100, header(0x0b, 1, 0x300));
        wr32(c, 0x104, 4 << 20);
        wr32(c, 0x300, header(0x0e, 1, 0));
    });
    assert_eq!(vsec, [0x200, 8]);
}
