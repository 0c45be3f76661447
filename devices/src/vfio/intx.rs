//! INTx of a passthrough function, on a pin of the emulated I/O APIC.
//!
//! VFIO signals an eventfd when the device asserts INTx and masks the
//! host interrupt until told otherwise (INTx is level-triggered). With
//! KVM's split irqchip the I/O APIC is ours, so no KVM irqfd/resamplefd
//! pair can do the job: a small thread waits on the eventfd and raises the
//! pin; the guest's EOI of that pin (reported by the I/O APIC) lowers it
//! and unmasks VFIO's interrupt, which fires again at once if the device
//! still asserts the line.
//!
//! A guest that programmed the pin as edge-triggered never sends an EOI
//! the I/O APIC can attribute to it; the line is then pulsed and unmasked
//! immediately.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::backend::{IrqKind, VfioBackend};
use crate::host_log;
use crate::ioapic::Ioapic;

pub struct Intx {
    backend: Arc<dyn VfioBackend>,
    ioapic: Arc<Ioapic>,
    pin: usize,
    trigger: Arc<EventFd>,
    /// VFIO's INTx is on: the EOI listener may unmask it.
    on: Arc<AtomicBool>,
    /// VFIO refused to turn INTx on; retried after the next MSI episode.
    failed: bool,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    listener: u64,
}

impl Intx {
    /// Wires INTx to `pin` of `ioapic`; VFIO's side is turned on by
    /// [`Intx::vfio_on`].
    pub fn new(backend: Arc<dyn VfioBackend>, ioapic: Arc<Ioapic>, pin: usize) -> io::Result<Self> {
        let trigger = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let on = Arc::new(AtomicBool::new(false));
        let thread = {
            let (trigger, stop, on) = (trigger.clone(), stop.clone(), on.clone());
            let (backend, ioapic) = (backend.clone(), Arc::downgrade(&ioapic));
            std::thread::Builder::new()
                .name(format!("vfio-intx-{pin}"))
                .spawn(move || forward(&trigger, &stop, &on, &*backend, &ioapic, pin))?
        };
        let listener = {
            let (backend, on) = (backend.clone(), on.clone());
            let weak = Arc::downgrade(&ioapic);
            ioapic.add_eoi_listener(
                pin,
                Arc::new(move || {
                    if !on.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(io) = weak.upgrade() {
                        io.set_irq(pin, false);
                    }
                    if let Err(e) = backend.unmask_intx() {
                        host_log!(log::Level::Error, "INTx: VFIO unmask failed: {e}");
                    }
                }),
            )
        };
        Ok(Intx {
            backend,
            ioapic,
            pin,
            trigger,
            on,
            failed: false,
            stop,
            thread: Some(thread),
            listener,
        })
    }

    #[cfg(test)]
    pub fn trigger(&self) -> &EventFd {
        &self.trigger
    }

    pub fn vfio_on(&mut self) {
        if self.on.load(Ordering::SeqCst) || self.failed {
            return;
        }
        match self
            .backend
            .set_irq_eventfds(IrqKind::Intx, 0, &[&*self.trigger])
        {
            Ok(()) => self.on.store(true, Ordering::SeqCst),
            Err(e) => {
                host_log!(log::Level::Error, "INTx: VFIO could not enable it: {e}");
                self.failed = true;
            }
        }
    }

    pub fn vfio_off(&mut self) {
        self.failed = false;
        if !self.on.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.backend.disable_irq(IrqKind::Intx) {
            host_log!(log::Level::Warn, "INTx: VFIO could not disable it: {e}");
        }
        let _ = self.trigger.read();
        self.ioapic.set_irq(self.pin, false);
    }
}

/// The forwarding thread: VFIO's eventfd raises the pin.
fn forward(
    trigger: &EventFd,
    stop: &EventFd,
    on: &AtomicBool,
    backend: &dyn VfioBackend,
    ioapic: &Weak<Ioapic>,
    pin: usize,
) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: trigger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::warn!("INTx: poll failed: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & !libc::POLLIN != 0 {
            log::warn!("INTx: VFIO's eventfd failed; INTx is no longer forwarded");
            return;
        }
        if trigger.read().is_err() {
            continue;
        }
        let Some(io) = ioapic.upgrade() else { return };
        io.set_irq(pin, true);
        if !io.is_level_triggered(pin) && on.load(Ordering::SeqCst) {
            io.set_irq(pin, false);
            if let Err(e) = backend.unmask_intx() {
                host_log!(log::Level::Error, "INTx: VFIO unmask failed: {e}");
            }
        }
    }
}

impl Drop for Intx {
    fn drop(&mut self) {
        self.ioapic.remove_eoi_listener(self.listener);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.vfio_off();
    }
}
