//! The interrupt seam between devices and the hypervisor.
//!
//! A device raises an MSI as (requester ID, address, data). It never sees a
//! KVM route: the VMM implements [`MsiRouter`] and decides how a message
//! becomes a vCPU interrupt (directly, or through an IOMMU's interrupt
//! remapping table keyed by the requester ID).

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// A message-signalled interrupt as the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// One change of an irqfd-backed vector's route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteUpdate {
    pub gsi: u32,
    pub requester_id: u16,
    /// None: the vector is masked, nothing is delivered.
    pub msg: Option<MsiMessage>,
}

pub trait MsiRouter: Send + Sync {
    /// Delivers one message now.
    fn send(&self, requester_id: u16, msg: MsiMessage) -> io::Result<()>;
    /// Reserves a GSI for an irqfd-backed vector.
    fn allocate_gsi(&self) -> io::Result<u32>;
    /// Connects `fd` to `gsi`: a write to the eventfd injects the route's interrupt.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Points `gsi` at `msg` (None: the vector is masked, nothing is delivered).
    fn set_route(&self, gsi: u32, requester_id: u16, msg: Option<MsiMessage>) -> io::Result<()>;
    /// Applies several route changes at once. KVM takes the routing table
    /// only as a whole, so a router should make this one table update: a
    /// guest write that moves every vector of a function (MSI-X enable,
    /// function mask) then costs one update instead of one per vector,
    /// each as large as the table.
    fn set_routes(&self, updates: &[RouteUpdate]) -> io::Result<()> {
        for u in updates {
            self.set_route(u.gsi, u.requester_id, u.msg)?;
        }
        Ok(())
    }
}

/// Registers doorbell addresses so a guest write signals an eventfd without
/// a VM exit to the VMM's device code (KVM ioeventfd).
pub trait IoEventRegistry: Send + Sync {
    fn register_mmio(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
    fn unregister_mmio(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
}

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    //! Recording fakes for unit tests.
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct RecordingRouter {
        pub sent: Mutex<Vec<(u16, MsiMessage)>>,
        pub routes: Mutex<Vec<(u32, u16, Option<MsiMessage>)>>,
        /// Routing table updates: one per `set_route` or `set_routes` call,
        /// as KVM_SET_GSI_ROUTING would be.
        pub table_updates: Mutex<usize>,
        next_gsi: Mutex<u32>,
    }

    impl RecordingRouter {
        pub fn table_updates(&self) -> usize {
            *self.table_updates.lock().unwrap()
        }
    }

    impl MsiRouter for RecordingRouter {
        fn send(&self, requester_id: u16, msg: MsiMessage) -> io::Result<()> {
            self.sent.lock().unwrap().push((requester_id, msg));
            Ok(())
        }
        fn allocate_gsi(&self) -> io::Result<u32> {
            let mut g = self.next_gsi.lock().unwrap();
            *g += 1;
            Ok(*g + 23)
        }
        fn register_irqfd(&self, _fd: &EventFd, _gsi: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_route(&self, gsi: u32, rid: u16, msg: Option<MsiMessage>) -> io::Result<()> {
            self.routes.lock().unwrap().push((gsi, rid, msg));
            *self.table_updates.lock().unwrap() += 1;
            Ok(())
        }
        fn set_routes(&self, updates: &[RouteUpdate]) -> io::Result<()> {
            let mut routes = self.routes.lock().unwrap();
            routes.extend(updates.iter().map(|u| (u.gsi, u.requester_id, u.msg)));
            *self.table_updates.lock().unwrap() += 1;
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct RecordingIoEvents {
        pub registered: Mutex<Vec<u64>>,
    }

    impl IoEventRegistry for RecordingIoEvents {
        fn register_mmio(&self, _fd: &EventFd, addr: u64) -> io::Result<()> {
            self.registered.lock().unwrap().push(addr);
            Ok(())
        }
        fn unregister_mmio(&self, _fd: &EventFd, addr: u64) -> io::Result<()> {
            self.registered.lock().unwrap().retain(|&a| a != addr);
            Ok(())
        }
    }
}
