//! vCPU threads: set up the boot state and run, dispatching exits to the
//! port and memory buses.

use std::sync::Arc;
use std::thread::JoinHandle;

use arch::x86_64::{cpuid, regs};
use devices::ioapic::Ioapic;
use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::GuestMemoryMmap;

use crate::exit::{ExitHandle, ExitReason};
use crate::tsc;
use crate::VmmError;

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Makes vCPU `id`'s TSC rate the host's (see [`crate::tsc`]); false when
/// KVM refuses, so the guest must not use the TSC-deadline timer.
fn settle_tsc_rate(fd: &VcpuFd, id: u8, host_khz: Option<u32>) -> bool {
    let (Some(host_khz), Ok(kvm_khz)) = (host_khz, fd.get_tsc_khz()) else {
        return true;
    };
    match tsc::plan(kvm_khz, host_khz) {
        tsc::TscRate::Consistent => true,
        tsc::TscRate::Set { kvm_khz, host_khz } => {
            match fd.set_tsc_khz(host_khz) {
                Ok(()) => {
                    if id == 0 {
                        log::info!("TSC rate {kvm_khz} kHz from KVM corrected to the host's {host_khz} kHz");
                    }
                    true
                }
                Err(e) => {
                    if id == 0 {
                        log::warn!(
                        "KVM's TSC rate {kvm_khz} kHz differs from the host's {host_khz} kHz and \
                         KVM_SET_TSC_KHZ failed ({e}): the guest gets no TSC-deadline timer"
                    );
                    }
                    false
                }
            }
        }
    }
}

pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    io: Arc<IoManager>,
    ioapic: Arc<Ioapic>,
    exit: Arc<ExitHandle>,
}

fn set_lvt(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, v) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *v as std::os::raw::c_char;
    }
}

impl Vcpu {
    /// The registers at a triple fault, for post-mortems of guest resets.
    fn log_state(&self) {
        if let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            log::warn!(
                "vCPU {}: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} \
                 cr4={:#x} efer={:#x} cs={:#x} idt={:#x}+{:#x}",
                self.id,
                r.rip,
                r.rsp,
                r.rflags,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.idt.base,
                s.idt.limit
            );
        }
    }

    /// Prepares vCPU `id`: CPUID, MSRs, LAPIC LINT pins, and for the boot
    /// vCPU the long-mode registers at the kernel's 64-bit entry point.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fd: VcpuFd,
        id: u8,
        num_cpus: u8,
        base_cpuid: &CpuId,
        host_tsc_khz: Option<u32>,
        mem: &GuestMemoryMmap,
        entry: u64,
        io: Arc<IoManager>,
        ioapic: Arc<Ioapic>,
        exit: Arc<ExitHandle>,
    ) -> Result<Self, VmmError> {
        let mut cpuid = base_cpuid.clone();
        cpuid::filter_cpuid(&mut cpuid, id, num_cpus);
        if !settle_tsc_rate(&fd, id, host_tsc_khz) {
            cpuid::hide_tsc_deadline(&mut cpuid);
        }
        fd.set_cpuid2(&cpuid).map_err(VmmError::Vcpu)?;
        let msrs = Msrs::from_entries(&regs::boot_msrs())
            .map_err(|_| VmmError::Setup("MSR list too long".into()))?;
        fd.set_msrs(&msrs).map_err(VmmError::Vcpu)?;

        let mut lapic = fd.get_lapic().map_err(VmmError::Vcpu)?;
        set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(VmmError::Vcpu)?;

        if id == 0 {
            let mut sregs = fd.get_sregs().map_err(VmmError::Vcpu)?;
            regs::setup_sregs(mem, &mut sregs).map_err(|e| VmmError::Setup(e.to_string()))?;
            fd.set_sregs(&sregs).map_err(VmmError::Vcpu)?;
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(VmmError::Vcpu)?;
            fd.set_fpu(&regs::boot_fpu()).map_err(VmmError::Vcpu)?;
        }
        Ok(Vcpu {
            fd,
            id,
            io,
            ioapic,
            exit,
        })
    }

    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if self.io.pio_read(PioAddress(port), data).is_err() {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    let _ = self.io.pio_write(PioAddress(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if self.io.mmio_read(MmioAddress(addr), data).is_err() {
                        log::debug!("unhandled MMIO read at {addr:#x}");
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if self.io.mmio_write(MmioAddress(addr), data).is_err() {
                        log::debug!("unhandled MMIO write at {addr:#x}");
                    }
                }
                Ok(VcpuExit::IoapicEoi(vector)) => self.ioapic.end_of_interrupt(vector),
                Ok(VcpuExit::Hlt) => {}
                Ok(VcpuExit::Shutdown) => {
                    // A triple fault: the machine resets.
                    log::warn!("vCPU {}: triple fault, resetting", self.id);
                    self.log_state();
                    self.exit.request(ExitReason::Reset);
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
                    log::info!("vCPU {}: system event {kind}", self.id);
                    let reason = if kind == KVM_SYSTEM_EVENT_SHUTDOWN {
                        ExitReason::Poweroff
                    } else {
                        ExitReason::Reset
                    };
                    self.exit.request(reason);
                    return;
                }
                Ok(other) => {
                    log::error!("vCPU {}: unexpected exit {other:?}", self.id);
                    self.exit.request(ExitReason::Error);
                    return;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    log::error!("vCPU {}: KVM_RUN failed: {e}", self.id);
                    self.exit.request(ExitReason::Error);
                    return;
                }
            }
        }
    }
}
