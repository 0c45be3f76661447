//! MSI-X table and pending bit array (PCI 3.0 §6.8.2).
//!
//! The table lives in a BAR; each vector is backed by an irqfd whose KVM
//! route follows the guest's table entry. A masked vector (per entry, or the
//! whole function) records a pending bit instead of firing, and fires when
//! unmasked, as the specification requires.
//!
//! Routes are pushed to the router only when they change, and all the
//! changes one guest write causes go in one batch: enabling MSI-X or
//! toggling the function mask is one routing table update however many
//! vectors the function has.

use std::ops::Range;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::host_log;
use crate::interrupt::{MsiMessage, MsiRouter, RouteUpdate};

const ENTRY_SIZE: u64 = 16;
const VECTOR_CTRL_MASK: u32 = 1;
pub const MSIX_ENABLE: u16 = 1 << 15;
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & VECTOR_CTRL_MASK != 0
    }
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: ((self.addr_hi as u64) << 32) | self.addr_lo as u64,
            data: self.data,
        }
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
}

/// MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    vectors: Vec<Vector>,
    /// The route the router has for each vector.
    routes: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    requester_id: u16,
    router: Arc<dyn MsiRouter>,
}

impl Msix {
    /// Allocates `count` vectors (GSIs with irqfds) from `router`.
    pub fn new(count: u16, requester_id: u16, router: Arc<dyn MsiRouter>) -> std::io::Result<Self> {
        let mut vectors = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
            let gsi = router.allocate_gsi()?;
            router.register_irqfd(&irqfd, gsi)?;
            vectors.push(Vector { gsi, irqfd });
        }
        Ok(Msix {
            entries: vec![
                Entry {
                    control: VECTOR_CTRL_MASK,
                    ..Default::default()
                };
                count as usize
            ],
            pending: vec![false; count as usize],
            vectors,
            routes: vec![None; count as usize],
            enabled: false,
            function_masked: false,
            requester_id,
            router,
        })
    }

    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    pub fn pba_size(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64) * 8
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The eventfd that injects vector `i` (for a device that signals
    /// interrupts itself, e.g. through VFIO).
    pub fn irqfd(&self, i: u16) -> Option<&EventFd> {
        self.vectors.get(i as usize).map(|v| &v.irqfd)
    }

    /// Whether vector `i` would be delivered now: MSI-X on, the function
    /// and the entry unmasked.
    pub fn is_deliverable(&self, i: u16) -> bool {
        (i as usize) < self.entries.len() && self.deliverable(i as usize)
    }

    /// Applies a write of the MSI-X Message Control register.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & MSIX_ENABLE != 0;
        self.function_masked = control & MSIX_FUNCTION_MASK != 0;
        self.update_routes(0..self.entries.len());
        for i in 0..self.entries.len() {
            self.fire_pending(i);
        }
    }

    fn deliverable(&self, i: usize) -> bool {
        self.enabled && !self.function_masked && !self.entries[i].masked()
    }

    /// Brings the routes of `vectors` in line with the table and the
    /// control register, in one router call for everything that changed.
    fn update_routes(&mut self, vectors: Range<usize>) {
        let mut changed = Vec::new();
        let mut updates = Vec::new();
        for i in vectors {
            let msg = self.deliverable(i).then(|| self.entries[i].message());
            if self.routes.get(i).is_some_and(|r| *r != msg) {
                log::trace!("MSI-X vector {i}: route {msg:x?}");
                changed.push((i, msg));
                updates.push(RouteUpdate {
                    gsi: self.vectors[i].gsi,
                    requester_id: self.requester_id,
                    msg,
                });
            }
        }
        if updates.is_empty() {
            return;
        }
        match self.router.set_routes(&updates) {
            Ok(()) => {
                for (i, msg) in changed {
                    self.routes[i] = msg;
                }
            }
            // Left as they were: the next write retries them.
            Err(e) => host_log!(
                log::Level::Error,
                "MSI-X {:#06x}: routes of {} vectors not updated: {e}",
                self.requester_id,
                updates.len()
            ),
        }
    }

    fn fire_pending(&mut self, i: usize) {
        if self.pending[i] && self.deliverable(i) {
            self.pending[i] = false;
            let _ = self.vectors[i].irqfd.write(1);
        }
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (idx, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(idx) else {
            return;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        let mut bytes = [0u8; 16];
        for (k, w) in words.iter().enumerate() {
            bytes[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let n = data.len().min(16 - start);
        data[..n].copy_from_slice(&bytes[start..start + n]);
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (idx, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get_mut(idx) else {
            return;
        };
        let mut bytes = [0u8; 16];
        for (k, w) in [e.addr_lo, e.addr_hi, e.data, e.control].iter().enumerate() {
            bytes[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let n = data.len().min(16 - start);
        bytes[start..start + n].copy_from_slice(&data[..n]);
        let w = |k: usize| u32::from_le_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
        e.addr_lo = w(0);
        e.addr_hi = w(4);
        e.data = w(8);
        // Only the mask bit of Vector Control is defined; the rest is reserved.
        e.control = w(12) & VECTOR_CTRL_MASK;
        self.update_routes(idx..idx + 1);
        self.fire_pending(idx);
    }

    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset + i as u64;
            let mut v = 0u8;
            for bit in 0..8 {
                let vec = (byte * 8 + bit) as usize;
                if self.pending.get(vec).copied().unwrap_or(false) {
                    v |= 1 << bit;
                }
            }
            *b = v;
        }
    }

    /// Signals vector `i`, or leaves it pending when masked.
    pub fn trigger(&mut self, i: u16) {
        let i = i as usize;
        if i >= self.entries.len() {
            return;
        }
        if self.deliverable(i) {
            let _ = self.vectors[i].irqfd.write(1);
        } else {
            self.pending[i] = true;
        }
    }

    /// Back to the reset state: disabled, every entry masked.
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            *e = Entry {
                control: VECTOR_CTRL_MASK,
                ..Default::default()
            };
        }
        self.pending.iter_mut().for_each(|p| *p = false);
        self.enabled = false;
        self.function_masked = false;
        self.update_routes(0..self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::test_utils::RecordingRouter;

    #[test]
    fn masked_vector_pends_and_fires_on_unmask() {
        let router = Arc::new(RecordingRouter::default());
        let mut m = Msix::new(2, 0x8, router.clone()).unwrap();
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(24, &0x41u32.to_le_bytes());
        m.set_control(MSIX_ENABLE);
        m.trigger(1);
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        // Unmask: the route is set and the pending bit clears.
        m.write_table(28, &0u32.to_le_bytes());
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        let routes = router.routes.lock().unwrap();
        let last = routes.last().unwrap();
        assert_eq!(
            last.2,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(m.vectors[1].irqfd.read().unwrap(), 1);
    }

    /// Programs every entry of an `n`-vector table, unmasked, with MSI-X
    /// still disabled.
    fn programmed(n: u16) -> (Msix, Arc<RecordingRouter>) {
        let router = Arc::new(RecordingRouter::default());
        let mut m = Msix::new(n, 0x8, router.clone()).unwrap();
        for i in 0..n as u64 {
            m.write_table(i * 16, &0xfee0_0000u32.to_le_bytes());
            m.write_table(i * 16 + 8, &(0x40 + i as u32).to_le_bytes());
            m.write_table(i * 16 + 12, &0u32.to_le_bytes());
        }
        (m, router)
    }

    #[test]
    fn one_control_write_is_one_routing_update() {
        let n = 64;
        let (mut m, router) = programmed(n);
        // Nothing deliverable yet: no route changed, nothing sent.
        assert_eq!(router.table_updates(), 0);
        m.set_control(MSIX_ENABLE);
        assert_eq!(router.table_updates(), 1);
        assert_eq!(router.routes.lock().unwrap().len(), n as usize);
        // Function mask on and off: one update each.
        m.set_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert_eq!(router.table_updates(), 2);
        m.set_control(MSIX_ENABLE);
        assert_eq!(router.table_updates(), 3);
        assert_eq!(router.routes.lock().unwrap().len(), 3 * n as usize);
        // Rewriting the same control value changes nothing.
        m.set_control(MSIX_ENABLE);
        assert_eq!(router.table_updates(), 3);
        // One entry masked: one update, for that vector only.
        m.write_table(5 * 16 + 12, &1u32.to_le_bytes());
        assert_eq!(router.table_updates(), 4);
        let routes = router.routes.lock().unwrap();
        assert_eq!(*routes.last().unwrap(), (m.vectors[5].gsi, 0x8, None));
        drop(routes);
        // Reset: one update removing the other routes.
        m.reset();
        assert_eq!(router.table_updates(), 5);
        assert_eq!(router.routes.lock().unwrap().len(), 3 * n as usize + 1 + 63);
    }

    #[test]
    fn out_of_range_table_accesses() {
        let router = Arc::new(RecordingRouter::default());
        let mut m = Msix::new(1, 0x8, router).unwrap();
        m.write_table(16 * 100, &[1, 2, 3, 4]);
        m.write_table(14, &[0xff; 8]);
        let mut d = [0xaa; 8];
        m.read_table(u64::MAX - 3, &mut d);
        assert_eq!(d, [0; 8]);
        m.trigger(7);
    }
}
