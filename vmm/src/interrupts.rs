//! KVM side of the interrupt seam: MSI routes, irqfds and ioeventfds.
//!
//! With the split irqchip every interrupt the VMM delivers is an MSI:
//! device vectors are GSIs with MSI routes (driven by irqfds), and the
//! I/O APIC sends messages directly. The GSI routing table is owned here and
//! rewritten as a whole, as KVM requires.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::interrupt::{IoEventRegistry, MsiMessage, MsiRouter, RouteUpdate};
use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use viommu::intel::{IntelIommu, InterruptSink};
use vmm_sys_util::eventfd::EventFd;

/// GSIs below this are the I/O APIC's pins (reserved with the split irqchip).
const FIRST_MSI_GSI: u32 = 24;
/// KVM's limit on the routing table (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

/// The interrupt-remapping unit and the requester IDs in its scope.
struct Remapper {
    iommu: Arc<IntelIommu>,
    scope: BTreeSet<u16>,
}

/// A route as the device programmed it, before remapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Programmed {
    requester_id: u16,
    msg: MsiMessage,
}

/// Applies `updates` to the programmed routes; true when the table
/// changed and must be handed to KVM again.
fn apply(routes: &mut BTreeMap<u32, Programmed>, updates: &[RouteUpdate]) -> bool {
    let mut changed = false;
    for u in updates {
        let old = match u.msg {
            Some(msg) => routes.insert(
                u.gsi,
                Programmed {
                    requester_id: u.requester_id,
                    msg,
                },
            ),
            None => routes.remove(&u.gsi),
        };
        changed |= old != routes.get(&u.gsi).copied();
    }
    changed
}

pub struct KvmMsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<BTreeMap<u32, Programmed>>,
    next_gsi: AtomicU32,
    remapper: OnceLock<Remapper>,
}

impl KvmMsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsiRouter {
            vm,
            routes: Mutex::new(BTreeMap::new()),
            next_gsi: AtomicU32::new(FIRST_MSI_GSI),
            remapper: OnceLock::new(),
        }
    }

    /// Puts the interrupts of `scope` behind `iommu`'s interrupt remapping.
    pub fn set_remapper(&self, iommu: Arc<IntelIommu>, scope: BTreeSet<u16>) {
        let _ = self.remapper.set(Remapper { iommu, scope });
    }

    /// The message KVM should deliver for what `requester_id` wrote, or
    /// None when the remapping unit blocks it.
    fn effective(&self, requester_id: u16, msg: MsiMessage) -> Option<MsiMessage> {
        match self.remapper.get() {
            Some(r) if r.scope.contains(&requester_id) => r
                .iommu
                .remap_interrupt(requester_id, msg.address, msg.data)
                .map(|(address, data)| MsiMessage { address, data }),
            _ => Some(msg),
        }
    }

    fn signal(&self, msg: MsiMessage) -> io::Result<()> {
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Recomputes every route (the remapping table or its state changed).
    pub fn refresh(&self) {
        let Ok(routes) = self.routes.lock() else {
            return;
        };
        if let Err(e) = self.commit(&routes) {
            log::warn!("interrupt routes not refreshed: {e}");
        }
    }

    fn commit(&self, routes: &BTreeMap<u32, Programmed>) -> io::Result<()> {
        let entries: Vec<_> = routes
            .iter()
            .filter_map(|(&gsi, p)| {
                let m = self.effective(p.requester_id, p.msg)?;
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                e.u.msi.address_lo = m.address as u32;
                e.u.msi.address_hi = (m.address >> 32) as u32;
                e.u.msi.data = m.data;
                Some(e)
            })
            .collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| io::Error::other("too many interrupt routes"))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl MsiRouter for KvmMsiRouter {
    fn send(&self, requester_id: u16, msg: MsiMessage) -> io::Result<()> {
        match self.effective(requester_id, msg) {
            Some(m) => self.signal(m),
            // Blocked by interrupt remapping: the unit recorded the fault.
            None => Ok(()),
        }
    }

    fn allocate_gsi(&self) -> io::Result<u32> {
        let gsi = self.next_gsi.fetch_add(1, Ordering::SeqCst);
        if gsi >= MAX_GSI {
            return Err(io::Error::other("out of interrupt routes"));
        }
        Ok(gsi)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn set_route(&self, gsi: u32, requester_id: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        self.set_routes(&[RouteUpdate {
            gsi,
            requester_id,
            msg,
        }])
    }

    /// One KVM_SET_GSI_ROUTING for the whole batch, none when nothing
    /// changed.
    fn set_routes(&self, updates: &[RouteUpdate]) -> io::Result<()> {
        let mut routes = self
            .routes
            .lock()
            .map_err(|_| io::Error::other("route table lock poisoned"))?;
        if !apply(&mut routes, updates) {
            return Ok(());
        }
        self.commit(&routes)
    }
}

/// KVM ioeventfds for doorbell registers.
pub struct KvmIoEvents {
    pub vm: Arc<VmFd>,
}

impl IoEventRegistry for KvmIoEvents {
    fn register_mmio(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        self.vm
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister_mmio(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        self.vm
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// The IOMMU's own interrupts go straight to KVM (they are never
/// remapped), and remapping changes refresh the routes.
pub struct RouterSink(pub Arc<KvmMsiRouter>);

impl InterruptSink for RouterSink {
    fn send(&self, address: u64, data: u32) {
        if let Err(e) = self.0.signal(MsiMessage { address, data }) {
            log::warn!("IOMMU interrupt not delivered: {e}");
        }
    }

    fn remapping_changed(&self) {
        self.0.refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(gsi: u32, data: Option<u32>) -> RouteUpdate {
        RouteUpdate {
            gsi,
            requester_id: 8,
            msg: data.map(|data| MsiMessage {
                address: 0xfee0_0000,
                data,
            }),
        }
    }

    #[test]
    fn only_real_changes_need_a_commit() {
        let mut routes = BTreeMap::new();
        let batch: Vec<_> = (24..88).map(|g| update(g, Some(g))).collect();
        assert!(apply(&mut routes, &batch));
        assert_eq!(routes.len(), 64);
        // The same routes again, and removing routes that do not exist.
        assert!(!apply(&mut routes, &batch));
        assert!(!apply(&mut routes, &[update(200, None)]));
        // One changed message in a batch is enough.
        let mut again = batch.clone();
        again[10] = update(34, Some(7));
        assert!(apply(&mut routes, &again));
        let all_off: Vec<_> = (24..88).map(|g| update(g, None)).collect();
        assert!(apply(&mut routes, &all_off));
        assert!(routes.is_empty());
    }
}
