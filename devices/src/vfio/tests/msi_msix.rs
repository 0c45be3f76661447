//! MSI-X table and MSI capability → routes and VFIO eventfds.

use super::*;
use crate::interrupt::MsiMessage;

fn msix_fds(r: &Rig) -> (Vec<RawFd>, Vec<RawFd>) {
    let m = r.dev.interrupts().msix.as_ref().unwrap();
    let irqfds = (0..VECTORS)
        .map(|i| m.msix().irqfd(i).unwrap().as_raw_fd())
        .collect();
    let parks = (0..VECTORS as usize)
        .map(|i| m.vfio().park(i).unwrap().as_raw_fd())
        .collect();
    (irqfds, parks)
}

fn program_entry(r: &mut Rig, i: u64, addr: u32, data: u32) {
    r.bar_write32(0, TABLE + 16 * i, addr);
    r.bar_write32(0, TABLE + 16 * i + 4, 0);
    r.bar_write32(0, TABLE + 16 * i + 8, data);
}

fn set_masked(r: &mut Rig, i: u64, masked: bool) {
    r.bar_write32(0, TABLE + 16 * i + 12, masked as u32);
}

fn last_route(r: &Rig, gsi: u32) -> Option<Option<MsiMessage>> {
    r.router
        .routes
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|x| x.0 == gsi)
        .map(|x| {
            assert_eq!(x.1, 0x0010, "routes carry the requester ID");
            x.2
        })
}

fn set_irqs(kind: IrqKind, start: u32, fds: Vec<RawFd>) -> Call {
    Call::SetIrqs { kind, start, fds }
}

#[test]
fn msix_vectors_move_between_parking_and_irqfds() {
    let mut r = rig();
    let (irqfds, parks) = msix_fds(&r);
    program_entry(&mut r, 0, 0xfee0_0000, 0x41);
    program_entry(&mut r, 1, 0xfee0_1000, 0x42);
    assert!(r.fake.irq_calls().is_empty(), "nothing before MSI-X is on");
    // Linux enables with the function masked, then unmasks entries.
    r.cfg_write(MSIX + 2, 2, 0xc000);
    assert_eq!(
        r.fake.irq_calls(),
        vec![set_irqs(IrqKind::Msix, 0, parks.clone())]
    );
    set_masked(&mut r, 0, false);
    set_masked(&mut r, 1, false);
    assert_eq!(r.fake.irq_calls().len(), 1, "function still masked");
    r.fake.clear_calls();
    r.cfg_write(MSIX + 2, 2, 0x8000);
    assert_eq!(
        r.fake.irq_calls(),
        vec![set_irqs(IrqKind::Msix, 0, irqfds[..2].to_vec())],
        "one call for the run of vectors that changed"
    );
    assert_eq!(
        last_route(&r, 24),
        Some(Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        }))
    );
    assert_eq!(
        last_route(&r, 25),
        Some(Some(MsiMessage {
            address: 0xfee0_1000,
            data: 0x42
        }))
    );
    // Masking one vector parks just that one, and withdraws its route.
    r.fake.clear_calls();
    set_masked(&mut r, 1, true);
    assert_eq!(
        r.fake.irq_calls(),
        vec![set_irqs(IrqKind::Msix, 1, vec![parks[1]])]
    );
    assert_eq!(last_route(&r, 25), Some(None));
    // Rewriting an unmasked entry's message updates the route only.
    r.fake.clear_calls();
    r.bar_write32(0, TABLE + 8, 0x51);
    assert!(r.fake.irq_calls().is_empty());
    assert_eq!(last_route(&r, 24).unwrap().unwrap().data, 0x51);
    // Disable.
    r.cfg_write(MSIX + 2, 2, 0);
    assert_eq!(r.fake.irq_calls(), vec![Call::DisableIrq(IrqKind::Msix)]);
    assert!(r.fake.config_writes().is_empty());
}

#[test]
fn parked_interrupts_are_pending_and_delivered_on_unmask() {
    let mut r = rig();
    program_entry(&mut r, 2, 0xfee0_0000, 0x43);
    program_entry(&mut r, 3, 0xfee0_0000, 0x44);
    r.cfg_write(MSIX + 2, 2, 0x8000);
    let m = r.dev.interrupts().msix.as_ref().unwrap();
    // The device fires masked vectors 2 and 3 (VFIO signals the parks).
    m.vfio().park(2).unwrap().write(1).unwrap();
    m.vfio().park(3).unwrap().write(1).unwrap();
    // Vector 2's pending bit shows in the PBA.
    assert_eq!(r.bar_read(0, PBA, 8)[0], 0b1100);
    set_masked(&mut r, 2, false);
    set_masked(&mut r, 3, false);
    let m = r.dev.interrupts().msix.as_ref().unwrap();
    assert_eq!(m.msix().irqfd(2).unwrap().read().unwrap(), 1, "delivered");
    assert_eq!(m.msix().irqfd(3).unwrap().read().unwrap(), 1, "delivered");
    assert_eq!(r.bar_read(0, PBA, 8)[0], 0);
}

#[test]
fn msi_multiple_vectors() {
    let mut r = rig();
    let (irqfd, park, gsi): (Vec<RawFd>, Vec<RawFd>, Vec<u32>) = {
        let m = r.dev.interrupts().msi.as_ref().unwrap();
        (
            (0..4).map(|i| m.irqfd(i).unwrap().as_raw_fd()).collect(),
            (0..4)
                .map(|i| m.vfio().park(i).unwrap().as_raw_fd())
                .collect(),
            (0..4).map(|i| m.gsi(i).unwrap()).collect(),
        )
    };
    r.cfg_write(MSI + 4, 4, 0xfee0_2000);
    r.cfg_write(MSI + 8, 4, 0);
    r.cfg_write(MSI + 12, 2, 0x4060);
    // MME = 2 (4 vectors), enable.
    r.cfg_write(MSI + 2, 2, 0x21);
    assert_eq!(
        r.fake.irq_calls(),
        vec![set_irqs(IrqKind::Msi, 0, irqfd.clone())]
    );
    for (i, g) in gsi.iter().enumerate() {
        let route = last_route(&r, *g).unwrap().unwrap();
        assert_eq!(route.address, 0xfee0_2000);
        assert_eq!(
            route.data,
            0x4060 | i as u32,
            "vector number in the low bits"
        );
    }
    // Per-vector mask: vector 1 parks, its route goes.
    r.fake.clear_calls();
    r.cfg_write(MSI + 16, 4, 0b10);
    assert_eq!(
        r.fake.irq_calls(),
        vec![set_irqs(IrqKind::Msi, 1, vec![park[1]])]
    );
    assert_eq!(last_route(&r, gsi[1]), Some(None));
    // What fires while masked shows as pending and is delivered on unmask.
    r.dev
        .interrupts()
        .msi
        .as_ref()
        .unwrap()
        .vfio()
        .park(1)
        .unwrap()
        .write(1)
        .unwrap();
    assert_eq!(r.cfg_read(MSI + 20, 4), 0b10);
    r.cfg_write(MSI + 16, 4, 0);
    let m = r.dev.interrupts().msi.as_ref().unwrap();
    assert_eq!(m.irqfd(1).unwrap().read().unwrap(), 1);
    assert_eq!(r.cfg_read(MSI + 20, 4), 0);
    // Changing the vector count while enabled re-enables with the new count.
    r.fake.clear_calls();
    r.cfg_write(MSI + 2, 2, 0x01);
    assert_eq!(
        r.fake.irq_calls(),
        vec![
            Call::DisableIrq(IrqKind::Msi),
            set_irqs(IrqKind::Msi, 0, vec![irqfd[0]])
        ]
    );
    r.fake.clear_calls();
    r.cfg_write(MSI + 2, 2, 0);
    assert_eq!(r.fake.irq_calls(), vec![Call::DisableIrq(IrqKind::Msi)]);
    assert!(r.fake.config_writes().is_empty());
}

#[test]
fn single_vector_32bit_msi() {
    let mut cfg = nvme_config();
    // 32-bit, no per-vector masking, one vector.
    cfg[MSI + 2..MSI + 4].copy_from_slice(&0u16.to_le_bytes());
    let mut r = rig_with(cfg, None);
    let (irqfd, gsi) = {
        let m = r.dev.interrupts().msi.as_ref().unwrap();
        (m.irqfd(0).unwrap().as_raw_fd(), m.gsi(0).unwrap())
    };
    assert!(r.dev.interrupts().msi.as_ref().unwrap().irqfd(1).is_none());
    r.cfg_write(MSI + 4, 4, 0xfee0_0000);
    r.cfg_write(MSI + 8, 2, 0x4031);
    // MME beyond what is offered is clamped.
    r.cfg_write(MSI + 2, 2, 0x51);
    assert_eq!(r.cfg_read(MSI + 2, 2), 0x51);
    assert_eq!(
        r.fake.irq_calls(),
        vec![set_irqs(IrqKind::Msi, 0, vec![irqfd])]
    );
    assert_eq!(
        last_route(&r, gsi),
        Some(Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x4031
        }))
    );
    // The dword after the data register is the next capability's.
    assert_eq!(r.cfg_read(MSI + 10, 2), 0);
}

#[test]
fn one_kind_at_a_time() {
    let mut r = rig();
    r.cfg_write(MSI + 2, 2, 0x01);
    r.fake.clear_calls();
    r.cfg_write(MSIX + 2, 2, 0x8000);
    let calls = r.fake.irq_calls();
    assert_eq!(calls[0], Call::DisableIrq(IrqKind::Msi), "off first");
    assert!(matches!(
        calls[1],
        Call::SetIrqs {
            kind: IrqKind::Msix,
            ..
        }
    ));
    // MSI-X off: MSI (still enabled in its capability) comes back.
    r.fake.clear_calls();
    r.cfg_write(MSIX + 2, 2, 0);
    let calls = r.fake.irq_calls();
    assert_eq!(calls[0], Call::DisableIrq(IrqKind::Msix));
    assert!(matches!(
        calls[1],
        Call::SetIrqs {
            kind: IrqKind::Msi,
            ..
        }
    ));
}

#[test]
fn vfio_refusal_is_not_retried_on_every_write() {
    let mut r = rig();
    *r.fake.fail_irqs.lock().unwrap() = true;
    r.cfg_write(MSIX + 2, 2, 0x8000);
    for i in 0..4 {
        set_masked(&mut r, i, false);
    }
    assert_eq!(r.fake.irq_calls().len(), 1, "one attempt, logged");
    // The guest's next try (disable, enable) tries again.
    *r.fake.fail_irqs.lock().unwrap() = false;
    r.cfg_write(MSIX + 2, 2, 0);
    r.cfg_write(MSIX + 2, 2, 0x8000);
    assert!(matches!(
        r.fake.irq_calls().last(),
        Some(Call::SetIrqs {
            kind: IrqKind::Msix,
            ..
        })
    ));
}
