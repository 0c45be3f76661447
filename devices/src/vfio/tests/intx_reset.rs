//! INTx through the I/O APIC, and function reset.

use std::time::{Duration, Instant};

use super::*;
use crate::ioapic::Ioapic;
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;

const PIN: usize = 17;
const VECTOR: u8 = 0x61;

fn program_pin(io: &Ioapic, level: bool) {
    let reg = 0x10 + 2 * PIN as u32;
    let low = VECTOR as u32 | if level { 1 << 15 } else { 0 };
    io.mmio_write(MmioAddress(0), 0, &reg.to_le_bytes());
    io.mmio_write(MmioAddress(0), 0x10, &low.to_le_bytes());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn intx_rig(level: bool) -> (Rig, Arc<Ioapic>, Arc<RecordingRouter>) {
    let mut r = rig();
    let ioapic_router = Arc::new(RecordingRouter::default());
    let io = Arc::new(Ioapic::new(0xf8, ioapic_router.clone()));
    program_pin(&io, level);
    r.dev.attach_intx(io.clone(), PIN);
    (r, io, ioapic_router)
}

fn trigger_fd(r: &Rig) -> RawFd {
    r.dev
        .interrupts()
        .intx
        .as_ref()
        .unwrap()
        .trigger()
        .as_raw_fd()
}

fn fire(r: &Rig) {
    r.dev
        .interrupts()
        .intx
        .as_ref()
        .unwrap()
        .trigger()
        .write(1)
        .unwrap();
}

#[test]
fn intx_raises_the_pin_and_eoi_unmasks() {
    let (mut r, io, sent) = intx_rig(true);
    assert_eq!(
        r.fake.irq_calls(),
        vec![Call::SetIrqs {
            kind: IrqKind::Intx,
            start: 0,
            fds: vec![trigger_fd(&r)]
        }]
    );
    assert_eq!(
        r.cfg_read(0x3c, 1),
        PIN as u64,
        "interrupt line tells the pin"
    );
    fire(&r);
    wait_for("delivery", || sent.sent.lock().unwrap().len() == 1);
    assert_eq!(sent.sent.lock().unwrap()[0].1.data & 0xff, VECTOR as u32);
    // The guest's EOI lowers the line and re-arms VFIO.
    io.end_of_interrupt(VECTOR);
    assert_eq!(r.fake.irq_calls().last(), Some(&Call::UnmaskIntx));
    assert_eq!(
        sent.sent.lock().unwrap().len(),
        1,
        "line lowered: no redelivery"
    );
    fire(&r);
    wait_for("second delivery", || sent.sent.lock().unwrap().len() == 2);
    // MSI-X takes over: INTx off first; back when MSI-X goes.
    r.fake.clear_calls();
    r.cfg_write(MSIX + 2, 2, 0x8000);
    let calls = r.fake.irq_calls();
    assert_eq!(calls[0], Call::DisableIrq(IrqKind::Intx));
    assert!(matches!(
        calls[1],
        Call::SetIrqs {
            kind: IrqKind::Msix,
            ..
        }
    ));
    // An EOI while INTx is off does not touch VFIO.
    r.fake.clear_calls();
    io.end_of_interrupt(VECTOR);
    assert!(r.fake.irq_calls().is_empty());
    r.cfg_write(MSIX + 2, 2, 0);
    assert_eq!(
        r.fake.irq_calls(),
        vec![
            Call::DisableIrq(IrqKind::Msix),
            Call::SetIrqs {
                kind: IrqKind::Intx,
                start: 0,
                fds: vec![trigger_fd(&r)]
            }
        ]
    );
}

#[test]
fn edge_programmed_pin_is_pulsed_and_unmasked() {
    let (r, _io, sent) = intx_rig(false);
    r.fake.clear_calls();
    fire(&r);
    wait_for("delivery", || sent.sent.lock().unwrap().len() == 1);
    wait_for("unmask", || r.fake.irq_calls() == vec![Call::UnmaskIntx]);
    fire(&r);
    wait_for("second delivery", || sent.sent.lock().unwrap().len() == 2);
}

#[test]
fn dropping_the_device_stops_intx() {
    let (r, io, sent) = intx_rig(true);
    let fake = r.fake.clone();
    drop(r);
    assert_eq!(
        fake.irq_calls().last(),
        Some(&Call::DisableIrq(IrqKind::Intx))
    );
    // The EOI listener is gone with it.
    fake.clear_calls();
    io.end_of_interrupt(VECTOR);
    assert!(fake.irq_calls().is_empty());
    assert!(sent.sent.lock().unwrap().is_empty());
}

#[test]
fn no_intx_without_a_pin() {
    let mut cfg = nvme_config();
    cfg[0x3d] = 0;
    let mut r = rig_with(cfg, None);
    let io = Arc::new(Ioapic::new(0xf8, Arc::new(RecordingRouter::default())));
    r.dev.attach_intx(io, PIN);
    assert!(r.dev.interrupts().intx.is_none());
    assert!(r.fake.irq_calls().is_empty());
}

#[test]
fn reset_quiesces_and_restores_power_on_state() {
    let mut r = rig();
    r.dev.set_bar_address(0, 0x1_0000_0000);
    r.cfg_write(0x04, 2, 0x6);
    r.cfg_write(0x3c, 1, 5);
    r.cfg_write(MSIX + 2, 2, 0x8000);
    r.cfg_write(PRI + 4, 2, 1);
    assert_eq!(r.slots.live.lock().unwrap().len(), 1);
    r.fake.clear_calls();
    r.dev.reset();
    let calls = r.fake.calls();
    let pos = |c: &Call| calls.iter().position(|x| x == c).unwrap();
    assert!(pos(&Call::DisableIrq(IrqKind::Msix)) < pos(&Call::Reset));
    assert_eq!(
        calls.last(),
        Some(&Call::ConfigWrite {
            offset: 4,
            data: vec![0, 0]
        })
    );
    assert!(r.slots.live.lock().unwrap().is_empty());
    assert_eq!(r.cfg_read(MSIX + 2, 2), 0x0007);
    assert_eq!(r.cfg_read(PRI + 4, 2), 0);
    assert_eq!(r.cfg_read(PRI + 6, 2), 0x8100);
    assert_eq!(r.cfg_read(0x3c, 1), 0);
    // The BAR keeps its address; decode on maps it again.
    assert_eq!(r.cfg_read(0x14, 4), 1);
    r.cfg_write(0x04, 2, 0x2);
    assert_eq!(r.slots.live.lock().unwrap().len(), 1);
}
