//! Interrupts of a passthrough function: which kind VFIO delivers (MSI-X,
//! MSI or INTx; the kernel allows one at a time), and where each vector's
//! eventfd goes.
//!
//! A vector the guest can receive signals its irqfd: KVM injects it with
//! the route the guest programmed (through the vIOMMU's interrupt
//! remapping when the device sits behind it), without a trip through the
//! VMM. A masked vector is re-pointed, with one VFIO_DEVICE_SET_IRQS for
//! just that vector, at a "parking" eventfd instead: what fires there is a
//! pending bit the guest reads in the PBA (or MSI Pending register) and
//! that is delivered when it unmasks the vector, as the specifications
//! require. Without parking, an interrupt raised while masked would be
//! dropped (a masked vector has no route).

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::backend::{IrqKind, VfioBackend};
use super::config::MsixLayout;
use super::intx::Intx;
use super::msi::MsiVectors;
use crate::host_log;
use crate::interrupt::MsiRouter;
use crate::pci::config::ConfigSpace;
use crate::pci::msix::Msix;

/// Which eventfd VFIO signals for one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Irqfd,
    Park,
}

/// VFIO's side of the vectors of one interrupt kind.
pub struct VfioVectors {
    kind: IrqKind,
    parks: Vec<EventFd>,
    /// Each vector's target while VFIO has this kind on.
    on: Option<Vec<Target>>,
    /// VFIO refused to turn it on; not retried until the guest turns the
    /// kind off (one warning per attempt, not one per register write).
    failed: bool,
}

impl VfioVectors {
    pub fn new(kind: IrqKind, count: usize) -> io::Result<Self> {
        let parks = (0..count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(VfioVectors {
            kind,
            parks,
            on: None,
            failed: false,
        })
    }

    pub fn target(&self, i: usize) -> Option<Target> {
        self.on.as_ref().and_then(|t| t.get(i).copied())
    }

    #[cfg(test)]
    pub fn park(&self, i: usize) -> Option<&EventFd> {
        self.parks.get(i)
    }

    /// Consumes what fired on vector `i`'s parking eventfd.
    pub fn take_parked(&self, i: usize) -> bool {
        self.parks
            .get(i)
            .is_some_and(|p| p.read().is_ok_and(|n| n > 0))
    }

    /// Makes VFIO deliver `irqfds.len()` vectors, vector `i` to `irqfds[i]`
    /// when `deliverable[i]`, else to its parking eventfd. Turns the kind on
    /// when it is off (or on with another vector count). Returns the
    /// vectors just moved from parked to deliverable: the caller replays
    /// what fired while they were parked.
    pub fn sync(
        &mut self,
        backend: &dyn VfioBackend,
        irqfds: &[&EventFd],
        deliverable: &[bool],
    ) -> Vec<usize> {
        let n = irqfds.len().min(deliverable.len()).min(self.parks.len());
        let want: Vec<Target> = deliverable[..n]
            .iter()
            .map(|&d| if d { Target::Irqfd } else { Target::Park })
            .collect();
        if let Some(cur) = &self.on {
            if cur.len() == n {
                let mut cur = cur.clone();
                let mut moved = Vec::new();
                let mut i = 0;
                while i < n {
                    if cur[i] == want[i] {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < n && cur[i] != want[i] {
                        i += 1;
                    }
                    let fds: Vec<&EventFd> = (start..i)
                        .map(|k| pick(&self.parks, irqfds, k, want[k]))
                        .collect();
                    match backend.set_irq_eventfds(self.kind, start as u32, &fds) {
                        Ok(()) => {
                            log::debug!(
                                "{:?} vectors {start}..{i} now {:?}",
                                self.kind,
                                want[start]
                            );
                            for k in start..i {
                                cur[k] = want[k];
                                if want[k] == Target::Irqfd {
                                    moved.push(k);
                                }
                            }
                        }
                        Err(e) => host_log!(
                            log::Level::Error,
                            "{:?} vectors {start}..{i}: VFIO did not take the new eventfds: {e}",
                            self.kind
                        ),
                    }
                }
                self.on = Some(cur);
                return moved;
            }
            self.off(backend);
        }
        if self.failed || n == 0 {
            return Vec::new();
        }
        let fds: Vec<&EventFd> = (0..n)
            .map(|k| pick(&self.parks, irqfds, k, want[k]))
            .collect();
        match backend.set_irq_eventfds(self.kind, 0, &fds) {
            Ok(()) => {
                log::debug!("{:?}: {n} vectors enabled in VFIO", self.kind);
                self.on = Some(want)
            }
            Err(e) => {
                host_log!(
                    log::Level::Error,
                    "{:?}: VFIO could not enable {n} vectors: {e}; the device's interrupts are lost",
                    self.kind
                );
                self.failed = true;
            }
        }
        Vec::new()
    }

    /// Turns the kind off in VFIO (if on) and forgets parked events.
    pub fn off(&mut self, backend: &dyn VfioBackend) {
        if self.on.take().is_some() {
            if let Err(e) = backend.disable_irq(self.kind) {
                host_log!(
                    log::Level::Warn,
                    "{:?}: VFIO could not disable the vectors: {e}",
                    self.kind
                );
            }
            for i in 0..self.parks.len() {
                self.take_parked(i);
            }
        }
        self.failed = false;
    }
}

fn pick<'a>(parks: &'a [EventFd], irqfds: &[&'a EventFd], k: usize, t: Target) -> &'a EventFd {
    match t {
        Target::Irqfd => irqfds[k],
        Target::Park => &parks[k],
    }
}

/// The emulated MSI-X table (`Msix`: routes and irqfds from the router)
/// and VFIO's vectors behind it.
pub struct MsixVectors {
    pub layout: MsixLayout,
    msix: Msix,
    vfio: VfioVectors,
    /// Vectors VFIO can deliver (it may offer fewer than the table holds).
    wired: u16,
}

impl MsixVectors {
    pub fn new(
        layout: MsixLayout,
        vfio_count: u32,
        requester_id: u16,
        router: Arc<dyn MsiRouter>,
    ) -> io::Result<Self> {
        let wired = layout
            .table_size
            .min(vfio_count.min(u16::MAX as u32) as u16);
        if wired < layout.table_size {
            log::warn!(
                "MSI-X: VFIO delivers {wired} of the {} vectors of the table",
                layout.table_size
            );
        }
        Ok(MsixVectors {
            layout,
            msix: Msix::new(layout.table_size, requester_id, router)?,
            vfio: VfioVectors::new(IrqKind::Msix, wired as usize)?,
            wired,
        })
    }

    pub fn guest_enabled(&self) -> bool {
        self.msix.enabled()
    }

    pub fn table_len(&self) -> u64 {
        self.msix.table_size()
    }

    pub fn pba_len(&self) -> u64 {
        self.msix.pba_size()
    }

    #[cfg(test)]
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    #[cfg(test)]
    pub fn vfio(&self) -> &VfioVectors {
        &self.vfio
    }

    pub fn control_written(&mut self, control: u16) {
        self.msix.set_control(control);
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        self.msix.read_table(offset, data);
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        self.msix.write_table(offset, data);
    }

    /// The PBA: what fired while parked becomes pending first.
    pub fn read_pba(&mut self, offset: u64, data: &mut [u8]) {
        for i in 0..self.wired {
            if self.vfio.target(i as usize) == Some(Target::Park)
                && self.vfio.take_parked(i as usize)
            {
                self.msix.trigger(i);
            }
        }
        self.msix.read_pba(offset, data);
    }

    fn vfio_sync(&mut self, backend: &dyn VfioBackend) {
        let irqfds: Vec<&EventFd> = (0..self.wired).filter_map(|i| self.msix.irqfd(i)).collect();
        let deliverable: Vec<bool> = (0..self.wired)
            .map(|i| self.msix.is_deliverable(i))
            .collect();
        for i in self.vfio.sync(backend, &irqfds, &deliverable) {
            if self.vfio.take_parked(i) {
                self.msix.trigger(i as u16);
            }
        }
    }

    fn reset(&mut self, backend: &dyn VfioBackend) {
        self.vfio.off(backend);
        self.msix.reset();
    }
}

/// All interrupt kinds of the function and which one VFIO delivers.
pub struct Interrupts {
    backend: Arc<dyn VfioBackend>,
    pub msix: Option<MsixVectors>,
    pub msi: Option<MsiVectors>,
    pub intx: Option<Intx>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Active {
    Msix,
    Msi,
    Intx,
}

impl Interrupts {
    pub fn new(
        backend: Arc<dyn VfioBackend>,
        msix: Option<MsixVectors>,
        msi: Option<MsiVectors>,
    ) -> Self {
        Interrupts {
            backend,
            msix,
            msi,
            intx: None,
        }
    }

    /// Hands the device's interrupts to VFIO as the guest configured them:
    /// MSI-X if enabled, else MSI if enabled, else INTx. The kind going off
    /// is turned off first, since VFIO refuses a second kind.
    pub fn sync(&mut self) {
        let want = if self.msix.as_ref().is_some_and(|m| m.guest_enabled()) {
            Active::Msix
        } else if self.msi.as_ref().is_some_and(|m| m.guest_enabled()) {
            Active::Msi
        } else {
            Active::Intx
        };
        let backend = &*self.backend;
        if want != Active::Msix {
            if let Some(m) = &mut self.msix {
                m.vfio.off(backend);
            }
        }
        if want != Active::Msi {
            if let Some(m) = &mut self.msi {
                m.vfio_off(backend);
            }
        }
        if want != Active::Intx {
            if let Some(i) = &mut self.intx {
                i.vfio_off();
            }
        }
        match want {
            Active::Msix => {
                if let Some(m) = &mut self.msix {
                    m.vfio_sync(backend);
                }
            }
            Active::Msi => {
                if let Some(m) = &mut self.msi {
                    m.vfio_sync(backend);
                }
            }
            Active::Intx => {
                if let Some(i) = &mut self.intx {
                    i.vfio_on();
                }
            }
        }
    }

    /// The guest wrote the MSI capability (already applied to `emu`).
    pub fn msi_written(&mut self, emu: &ConfigSpace) {
        if let Some(m) = &mut self.msi {
            m.config_written(emu);
        }
        self.sync();
    }

    pub fn msix_control_written(&mut self, control: u16) {
        if let Some(m) = &mut self.msix {
            m.control_written(control);
        }
        self.sync();
    }

    /// Function reset: every vector off and masked, INTx back.
    pub fn reset(&mut self, emu: &ConfigSpace) {
        let backend = &*self.backend;
        if let Some(m) = &mut self.msix {
            m.reset(backend);
        }
        if let Some(m) = &mut self.msi {
            m.vfio_off(backend);
            m.config_written(emu);
        }
        self.sync();
    }
}
