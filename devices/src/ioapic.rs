//! The I/O APIC (Intel 82093AA datasheet), emulated in the VMM.
//!
//! KVM runs with a split irqchip: the local APICs are in the kernel, the I/O
//! APIC is here. A pin becomes a message-signalled interrupt built from its
//! redirection entry and leaves through the [`MsiRouter`] with the I/O APIC's
//! requester ID, so an IOMMU's interrupt remapping can see and translate it
//! (a remappable-format entry maps bit for bit onto a remappable MSI).
//!
//! Level-triggered pins also publish their message as the MSI route of the
//! GSI reserved for the pin: with the split irqchip that is how KVM learns
//! which vectors need an EOI exit, and the EOI is what lowers remote IRR and
//! lets a device behind the pin (a passthrough function's INTx) be
//! re-armed through [`Ioapic::add_eoi_listener`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;

use crate::host_log;
use crate::interrupt::{MsiMessage, MsiRouter};

pub const NUM_PINS: usize = 24;
const IOAPIC_VERSION: u32 = 0x20;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIR_BASE: u32 = 0x10;

// Redirection entry fields.
const RTE_VECTOR_MASK: u64 = 0xff;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_TRIGGER_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Bits the guest cannot write: delivery status and remote IRR.
const RTE_RO_BITS: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;

struct State {
    ioregsel: u32,
    id: u32,
    rte: [u64; NUM_PINS],
    level: [bool; NUM_PINS],
    /// The route last published for each pin's GSI.
    published: [Option<MsiMessage>; NUM_PINS],
}

/// Called after the guest ended an interrupt of a level-triggered pin
/// (remote IRR cleared), before the pin's level is looked at again.
pub type EoiListener = Arc<dyn Fn() + Send + Sync>;

pub struct Ioapic {
    state: Mutex<State>,
    requester_id: u16,
    router: Arc<dyn MsiRouter>,
    eoi_listeners: Mutex<Vec<(u64, usize, EoiListener)>>,
    next_listener: AtomicU64,
}

impl Ioapic {
    pub fn new(requester_id: u16, router: Arc<dyn MsiRouter>) -> Self {
        Ioapic {
            state: Mutex::new(State {
                ioregsel: 0,
                id: 0,
                rte: [RTE_MASKED; NUM_PINS],
                level: [false; NUM_PINS],
                published: [None; NUM_PINS],
            }),
            requester_id,
            router,
            eoi_listeners: Mutex::new(Vec::new()),
            next_listener: AtomicU64::new(1),
        }
    }

    /// Calls `listener` whenever the guest ends an interrupt of `pin`
    /// (level-triggered pins only: edge pins have no end of interrupt).
    /// The listener may call [`Ioapic::set_irq`]: a line lowered there is
    /// not redelivered. Returns an id for [`Ioapic::remove_eoi_listener`].
    pub fn add_eoi_listener(&self, pin: usize, listener: EoiListener) -> u64 {
        let id = self.next_listener.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.eoi_listeners.lock() {
            l.push((id, pin, listener));
        }
        id
    }

    pub fn remove_eoi_listener(&self, id: u64) {
        if let Ok(mut l) = self.eoi_listeners.lock() {
            l.retain(|(i, _, _)| *i != id);
        }
    }

    /// Whether the guest programmed `pin` as level-triggered.
    pub fn is_level_triggered(&self, pin: usize) -> bool {
        self.state
            .lock()
            .ok()
            .and_then(|st| st.rte.get(pin).copied())
            .is_some_and(|rte| rte & RTE_TRIGGER_LEVEL != 0)
    }

    /// Publishes the route of the GSI reserved for `pin`: the pin's message
    /// when it is level-triggered and unmasked, else none. Nothing signals
    /// these GSIs; KVM scans them to decide which vectors' EOIs exit to us.
    fn publish_route(&self, st: &mut State, pin: usize) {
        let rte = st.rte[pin];
        let msg =
            (rte & RTE_TRIGGER_LEVEL != 0 && rte & RTE_MASKED == 0).then(|| Self::message(rte));
        if st.published[pin] == msg {
            return;
        }
        match self.router.set_route(pin as u32, self.requester_id, msg) {
            Ok(()) => st.published[pin] = msg,
            Err(e) => host_log!(
                log::Level::Error,
                "IOAPIC pin {pin}: EOI route not updated: {e}"
            ),
        }
    }

    /// The MSI an entry produces (address bits 19:4 take entry bits 63:48,
    /// bit 2 takes the destination mode bit 11).
    fn message(rte: u64) -> MsiMessage {
        let address = 0xfee0_0000u64 | (((rte >> 48) & 0xffff) << 4) | (((rte >> 11) & 1) << 2);
        let data = (rte & RTE_VECTOR_MASK) as u32
            | (((rte >> 8) & 7) as u32) << 8
            | (((rte >> 15) & 1) as u32) << 15
            | (((rte >> 15) & 1) as u32) << 14;
        MsiMessage { address, data }
    }

    fn deliver(&self, st: &mut State, pin: usize) {
        let rte = st.rte[pin];
        if rte & RTE_MASKED != 0 {
            return;
        }
        if rte & RTE_TRIGGER_LEVEL != 0 {
            if rte & RTE_REMOTE_IRR != 0 {
                return;
            }
            st.rte[pin] |= RTE_REMOTE_IRR;
        }
        if let Err(e) = self.router.send(self.requester_id, Self::message(rte)) {
            host_log!(
                log::Level::Error,
                "IOAPIC pin {pin}: interrupt not delivered: {e}"
            );
        }
    }

    /// Sets the level of input `pin`; a rising edge (or a high level on a
    /// level-triggered pin) delivers the interrupt.
    pub fn set_irq(&self, pin: usize, high: bool) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if pin >= NUM_PINS {
            return;
        }
        let was = st.level[pin];
        st.level[pin] = high;
        let level_triggered = st.rte[pin] & RTE_TRIGGER_LEVEL != 0;
        if high && (!was || level_triggered) {
            self.deliver(&mut st, pin);
        }
    }

    /// An edge: raise and lower `pin`.
    pub fn pulse(&self, pin: usize) {
        self.set_irq(pin, true);
        self.set_irq(pin, false);
    }

    /// End of interrupt for `vector` (from a local APIC EOI or the EOI register).
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut ended = [false; NUM_PINS];
        {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            for (pin, e) in ended.iter_mut().enumerate() {
                let rte = st.rte[pin];
                if rte & RTE_REMOTE_IRR != 0 && (rte & RTE_VECTOR_MASK) as u8 == vector {
                    st.rte[pin] &= !RTE_REMOTE_IRR;
                    *e = true;
                }
            }
        }
        if !ended.contains(&true) {
            return;
        }
        // Listeners run without the state lock: they usually lower the line.
        let listeners: Vec<EoiListener> = self
            .eoi_listeners
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, pin, _)| ended.get(*pin) == Some(&true))
                    .map(|(_, _, f)| f.clone())
                    .collect()
            })
            .unwrap_or_default();
        for f in listeners {
            f();
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        for (pin, &e) in ended.iter().enumerate() {
            // A line still high is delivered again (unless someone already did).
            if e && st.level[pin] {
                self.deliver(&mut st, pin);
            }
        }
    }

    fn read_reg(st: &State) -> u32 {
        match st.ioregsel {
            REG_ID => st.id,
            REG_VERSION => IOAPIC_VERSION | ((NUM_PINS as u32 - 1) << 16),
            REG_ARBITRATION => st.id,
            r if (REG_REDIR_BASE..REG_REDIR_BASE + 2 * NUM_PINS as u32).contains(&r) => {
                let idx = ((r - REG_REDIR_BASE) / 2) as usize;
                let v = st.rte[idx];
                if r & 1 == 0 {
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_reg(&self, st: &mut State, val: u32) {
        match st.ioregsel {
            REG_ID => st.id = val & 0x0f00_0000,
            r if (REG_REDIR_BASE..REG_REDIR_BASE + 2 * NUM_PINS as u32).contains(&r) => {
                let idx = ((r - REG_REDIR_BASE) / 2) as usize;
                let old = st.rte[idx];
                let new = if r & 1 == 0 {
                    (old & !0xffff_ffff) | val as u64
                } else {
                    (old & 0xffff_ffff) | ((val as u64) << 32)
                };
                st.rte[idx] = (new & !RTE_RO_BITS) | (old & RTE_RO_BITS);
                // An edge entry has no remote IRR.
                if st.rte[idx] & RTE_TRIGGER_LEVEL == 0 {
                    st.rte[idx] &= !RTE_REMOTE_IRR;
                }
                self.publish_route(st, idx);
                // Unmasking a level-triggered pin that is still asserted delivers it.
                if st.level[idx] && st.rte[idx] & RTE_TRIGGER_LEVEL != 0 {
                    self.deliver(st, idx);
                }
            }
            _ => {}
        }
    }
}

impl DeviceMmio for Ioapic {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let Ok(st) = self.state.lock() else { return };
        let v = match offset & !3 {
            IOREGSEL => st.ioregsel,
            IOWIN => Self::read_reg(&st),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let start = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        // Registers are 32-bit; narrower writes update the addressed bytes.
        let mut bytes = [0u8; 4];
        let start = (offset & 3) as usize;
        for (i, b) in data.iter().enumerate() {
            if let Some(s) = bytes.get_mut(start + i) {
                *s = *b;
            }
        }
        let val = u32::from_le_bytes(bytes);
        match offset & !3 {
            IOREGSEL => {
                if let Ok(mut st) = self.state.lock() {
                    st.ioregsel = val & 0xff;
                }
            }
            IOWIN => {
                if let Ok(mut st) = self.state.lock() {
                    self.write_reg(&mut st, val);
                }
            }
            EOI => self.end_of_interrupt(val as u8),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::test_utils::RecordingRouter;

    fn write_reg(io: &Ioapic, reg: u32, v: u32) {
        io.mmio_write(MmioAddress(0), IOREGSEL, &reg.to_le_bytes());
        io.mmio_write(MmioAddress(0), IOWIN, &v.to_le_bytes());
    }

    fn read_reg(io: &Ioapic, reg: u32) -> u32 {
        io.mmio_write(MmioAddress(0), IOREGSEL, &reg.to_le_bytes());
        let mut d = [0u8; 4];
        io.mmio_read(MmioAddress(0), IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn edge_pin_delivers_msi() {
        let r = Arc::new(RecordingRouter::default());
        let io = Ioapic::new(0xf8, r.clone());
        assert_eq!(read_reg(&io, 1), 0x0017_0020);
        write_reg(&io, 0x10 + 8, 0x31);
        write_reg(&io, 0x10 + 9, 0x0100_0000);
        io.pulse(4);
        let sent = r.sent.lock().unwrap();
        assert_eq!(
            sent[0],
            (
                0xf8,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x31
                }
            )
        );
    }

    #[test]
    fn masked_and_level_pins() {
        let r = Arc::new(RecordingRouter::default());
        let io = Ioapic::new(0xf8, r.clone());
        io.pulse(3);
        assert!(r.sent.lock().unwrap().is_empty());
        write_reg(&io, 0x10 + 6, 0x8040);
        io.set_irq(3, true);
        io.set_irq(3, true);
        assert_eq!(r.sent.lock().unwrap().len(), 1, "remote IRR holds it");
        assert_ne!(read_reg(&io, 0x16) & (1 << 14), 0);
        io.end_of_interrupt(0x40);
        assert_eq!(r.sent.lock().unwrap().len(), 2, "still high: redelivered");
        io.set_irq(3, false);
        io.end_of_interrupt(0x40);
        assert_eq!(read_reg(&io, 0x16) & (1 << 14), 0);
    }

    #[test]
    fn eoi_listener_lowers_the_line_before_redelivery() {
        let r = Arc::new(RecordingRouter::default());
        let io = Arc::new(Ioapic::new(0xf8, r.clone()));
        // Level-triggered, vector 0x51: the pin's GSI gets a route.
        write_reg(&io, 0x10 + 2 * 17, 0x8051);
        assert!(io.is_level_triggered(17));
        let routes = r.routes.lock().unwrap().clone();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].0, 17);
        assert_eq!(routes[0].2.unwrap().data & 0xff, 0x51);
        let calls = Arc::new(Mutex::new(0));
        let weak = Arc::downgrade(&io);
        let c = calls.clone();
        let id = io.add_eoi_listener(
            17,
            Arc::new(move || {
                *c.lock().unwrap() += 1;
                if let Some(io) = weak.upgrade() {
                    io.set_irq(17, false);
                }
            }),
        );
        io.set_irq(17, true);
        assert_eq!(r.sent.lock().unwrap().len(), 1);
        io.end_of_interrupt(0x51);
        assert_eq!(*calls.lock().unwrap(), 1);
        assert_eq!(r.sent.lock().unwrap().len(), 1, "lowered: not redelivered");
        // Another vector's EOI does not call it; removal stops it.
        io.set_irq(17, true);
        io.end_of_interrupt(0x52);
        assert_eq!(*calls.lock().unwrap(), 1);
        io.remove_eoi_listener(id);
        io.end_of_interrupt(0x51);
        assert_eq!(*calls.lock().unwrap(), 1);
        assert_eq!(r.sent.lock().unwrap().len(), 3, "still high: redelivered");
        // Masking the pin withdraws its route.
        write_reg(&io, 0x10 + 2 * 17, 0x1_8051);
        assert_eq!(r.routes.lock().unwrap().last().unwrap().2, None);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let r = Arc::new(RecordingRouter::default());
        let io = Ioapic::new(0xf8, r);
        io.mmio_write(MmioAddress(0), 0x13, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut d = [0u8; 8];
        io.mmio_read(MmioAddress(0), 0xfff, &mut d);
        write_reg(&io, 0xff, 5);
        assert_eq!(read_reg(&io, 0xff), 0);
        io.set_irq(99, true);
    }
}
