//! The seam between the passthrough PCI logic and the kernel's VFIO device.
//!
//! Everything the guest-visible device needs from VFIO goes through
//! [`VfioBackend`], so the config space, BAR and interrupt logic run in unit
//! tests against a fake. The real implementation is [`VfioDevice`], a
//! wrapper of `vfio_ioctls::VfioDevice` that also makes dropping the device
//! safe (see its documentation).

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vfio_ioctls::VfioRegionInfoCap;
use vmm_sys_util::eventfd::EventFd;

use crate::host_log;

/// VFIO region index of the ROM BAR of a PCI device.
pub const ROM_REGION: u32 = 6;
/// VFIO region index of the config space of a PCI device.
pub const CONFIG_REGION: u32 = 7;

/// What VFIO says about one region (a BAR, the ROM or config space).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes; 0 for a BAR the device does not implement.
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// The region (or the parts in `sparse_areas`) may be mmapped.
    pub mmappable: bool,
    /// `(offset, len)` of the only parts that may be mmapped, when VFIO
    /// restricts mmap to them (sparse mmap capability).
    pub sparse_areas: Option<Vec<(u64, u64)>>,
}

/// The interrupt kinds of a PCI device, as VFIO numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    Intx,
    Msi,
    Msix,
}

impl IrqKind {
    pub fn vfio_index(self) -> u32 {
        match self {
            IrqKind::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
}

/// What VFIO says about one interrupt kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfo {
    /// Number of vectors (0: the device cannot use this kind).
    pub count: u32,
    /// VFIO_IRQ_INFO_* flags.
    pub flags: u32,
}

/// A range of a region mapped into this process; unmapped on drop.
#[derive(Debug)]
pub struct HostMmap {
    addr: usize,
    len: usize,
}

impl HostMmap {
    /// Takes ownership of a mapping made with `mmap`.
    ///
    /// # Safety
    /// `addr..addr + len` must be a mapping of this process that nothing
    /// else unmaps.
    pub unsafe fn from_raw(addr: *mut libc::c_void, len: usize) -> Self {
        HostMmap {
            addr: addr as usize,
            len,
        }
    }

    /// Anonymous shared memory standing in for device memory (tests, fakes).
    pub fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping was just made and is owned by nobody else.
        Ok(unsafe { Self::from_raw(addr, len) })
    }

    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostMmap {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value (from_raw's contract).
        let r = unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        if r != 0 {
            log::warn!(
                "munmap of device memory at {:#x}: {}",
                self.addr,
                io::Error::last_os_error()
            );
        }
    }
}

/// The kernel side of one VFIO PCI device.
///
/// Region accesses never fail loudly: a read VFIO cannot serve leaves the
/// bytes as all ones (what a PCI read of nothing returns), a failed write
/// is logged. Interrupt and reset calls return the error for the caller to
/// log, because the guest keeps running either way.
pub trait VfioBackend: Send + Sync {
    /// None when the region does not exist.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]);
    fn region_write(&self, index: u32, offset: u64, data: &[u8]);
    /// Maps `len` bytes at `offset` of region `index` (page aligned).
    fn mmap_region(&self, index: u32, offset: u64, len: u64) -> io::Result<HostMmap>;

    fn irq_info(&self, kind: IrqKind) -> Option<IrqInfo>;
    /// Makes vectors `start..start + fds.len()` of `kind` signal `fds`.
    /// When `kind` is off this enables it with `start + fds.len()` vectors
    /// (only one kind can be on at a time); when it is on, it re-points
    /// just those vectors.
    fn set_irq_eventfds(&self, kind: IrqKind, start: u32, fds: &[&EventFd]) -> io::Result<()>;
    /// Turns all vectors of `kind` off.
    fn disable_irq(&self, kind: IrqKind) -> io::Result<()>;
    /// Re-arms INTx, which VFIO masks each time it fires (level-triggered).
    fn unmask_intx(&self) -> io::Result<()>;
    /// Function-level (or bus) reset of the device through VFIO.
    fn reset_device(&self) -> io::Result<()>;
}

/// A VFIO cdev device bound to iommufd (see [`super::open_device`]).
///
/// Dereferences to `vfio_ioctls::VfioDevice` for everything else
/// (`iommufd_dev_id`, `attach_hwpt`, ...).
///
/// Dropping it is safe: `vfio_ioctls::VfioDevice`'s drop detaches the
/// device from its page table and unwraps the result. The kernel's detach
/// (`vfio_df_ioctl_detach_pt`) returns 0 whenever the arguments are well
/// formed, which the crate's are, and the device is bound before this type
/// exists; the other unwrap removes the fd from the KVM VFIO device, which
/// is a no-op because we never give it one. A failure could only come from
/// waking a runtime-suspended device that has vanished; the drop then runs
/// under `catch_unwind`, so the VMM logs it instead of aborting, and the
/// device fd stays open until the process exits.
pub struct VfioDevice {
    inner: ManuallyDrop<vfio_ioctls::VfioDevice>,
}

impl VfioDevice {
    pub fn new(inner: vfio_ioctls::VfioDevice) -> Self {
        VfioDevice {
            inner: ManuallyDrop::new(inner),
        }
    }

    /// Resets the device through VFIO; a failure (a device without any
    /// reset method, a reset the kernel refuses) is logged.
    pub fn reset(&self) {
        if let Err(e) = self.reset_device() {
            log::warn!("VFIO device reset failed: {e}");
        }
    }

    /// The device fd offset of `[offset, offset + len)` in region `index`,
    /// when the region holds it and allows `access` (a region info flag).
    ///
    /// Region accesses are made here rather than through vfio-ioctls,
    /// which logs a warning for every refused or failed access: the guest
    /// decides how often those happen.
    fn region_span(&self, index: u32, offset: u64, len: usize, access: u32) -> Option<u64> {
        if index > CONFIG_REGION || self.inner.get_region_flags(index) & access == 0 {
            return None;
        }
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        if end > self.inner.get_region_size(index) {
            return None;
        }
        self.inner.get_region_offset(index).checked_add(offset)
    }

    /// The VFIO device fd as a file, for positioned reads and writes.
    fn device_file(&self) -> ManuallyDrop<File> {
        // SAFETY: the fd stays open as long as `self.inner`, which outlives
        // the returned value's uses (it is borrowed from `&self`'s methods
        // only); ManuallyDrop keeps the File from closing it.
        ManuallyDrop::new(unsafe { File::from_raw_fd(self.inner.as_raw_fd()) })
    }

    fn ioctl_set_irqs(&self, index: u32, flags: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        // struct vfio_irq_set: argsz, flags, index, start, count, then the
        // data (one s32 fd per vector). A u32 buffer keeps it aligned.
        let mut buf: Vec<u32> = vec![0; 5 + fds.len()];
        buf[0] = (buf.len() * 4) as u32;
        buf[1] = flags;
        buf[2] = index;
        buf[3] = start;
        buf[4] = if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            fds.len() as u32
        } else if flags & VFIO_IRQ_SET_ACTION_UNMASK != 0 {
            1
        } else {
            0
        };
        for (slot, fd) in buf[5..].iter_mut().zip(fds) {
            *slot = *fd as u32;
        }
        // SAFETY: VFIO_DEVICE_SET_IRQS reads `argsz` bytes from the buffer,
        // which is exactly that long; the fd is our open VFIO device.
        let r = unsafe {
            libc::ioctl(
                self.inner.as_raw_fd(),
                vfio_io(VFIO_BASE + 10) as _,
                buf.as_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `_IO(VFIO_TYPE, nr)`: VFIO ioctls carry no size in their number.
fn vfio_io(nr: u32) -> libc::c_ulong {
    ((VFIO_TYPE as u32) << 8 | nr) as libc::c_ulong
}

impl Deref for VfioDevice {
    type Target = vfio_ioctls::VfioDevice;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken exactly once, here, and never used again.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(inner)));
        if r.is_err() {
            log::warn!("closing the VFIO device failed; its fd stays open until exit");
        }
    }
}

impl VfioBackend for VfioDevice {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        // vfio-ioctls keeps regions by position; BARs, ROM and config come
        // first and in order, which is all we ask for.
        if index > CONFIG_REGION {
            return None;
        }
        let flags = self.inner.get_region_flags(index);
        let size = self.inner.get_region_size(index);
        let mut sparse = None;
        for cap in self.inner.get_region_caps(index) {
            if let VfioRegionInfoCap::SparseMmap(s) = cap {
                sparse = Some(s.areas.iter().map(|a| (a.offset, a.size)).collect());
            }
        }
        Some(RegionInfo {
            size,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmappable: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse_areas: sparse,
        })
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(at) = self.region_span(index, offset, data.len(), VFIO_REGION_INFO_FLAG_READ)
        else {
            return;
        };
        if let Err(e) = self.device_file().read_exact_at(data, at) {
            data.fill(0xff);
            host_log!(
                log::Level::Warn,
                "VFIO region {index} read at {offset:#x} failed: {e}"
            );
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        let Some(at) = self.region_span(index, offset, data.len(), VFIO_REGION_INFO_FLAG_WRITE)
        else {
            return;
        };
        if let Err(e) = self.device_file().write_all_at(data, at) {
            host_log!(
                log::Level::Warn,
                "VFIO region {index} write at {offset:#x} failed: {e}"
            );
        }
    }

    fn mmap_region(&self, index: u32, offset: u64, len: u64) -> io::Result<HostMmap> {
        let flags = self.inner.get_region_flags(index);
        let size = self.inner.get_region_size(index);
        if flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(io::Error::other("region is not mmap-able"));
        }
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut prot = 0;
        if flags & VFIO_REGION_INFO_FLAG_READ != 0 {
            prot |= libc::PROT_READ;
        }
        if flags & VFIO_REGION_INFO_FLAG_WRITE != 0 {
            prot |= libc::PROT_WRITE;
        }
        let file_offset = self
            .inner
            .get_region_offset(index)
            .checked_add(offset)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a new shared mapping of the device fd at an offset VFIO
        // gave us; the result is checked and owned by the HostMmap.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.inner.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just mapped, owned by nobody else.
        Ok(unsafe { HostMmap::from_raw(addr, len) })
    }

    fn irq_info(&self, kind: IrqKind) -> Option<IrqInfo> {
        self.inner.get_irq_info(kind.vfio_index()).map(|i| IrqInfo {
            count: i.count,
            flags: i.flags,
        })
    }

    fn set_irq_eventfds(&self, kind: IrqKind, start: u32, fds: &[&EventFd]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.ioctl_set_irqs(
            kind.vfio_index(),
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            start,
            &raw,
        )
    }

    fn disable_irq(&self, kind: IrqKind) -> io::Result<()> {
        self.ioctl_set_irqs(
            kind.vfio_index(),
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            &[],
        )
    }

    fn unmask_intx(&self) -> io::Result<()> {
        self.ioctl_set_irqs(
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            &[],
        )
    }

    fn reset_device(&self) -> io::Result<()> {
        // vfio-ioctls' reset drops the result; issue VFIO_DEVICE_RESET here
        // so a refusal (no reset method: EINVAL) can be reported.
        // SAFETY: an argument-less ioctl on our open VFIO device.
        let r = unsafe { libc::ioctl(self.inner.as_raw_fd(), vfio_io(VFIO_BASE + 11) as _) };
        if r < 0 {
            // Say what was tried: the ioctl, and the methods the kernel has
            // for the device (one of which it would have used).
            let e = io::Error::last_os_error();
            let methods = match self.device_file().metadata() {
                Ok(m) => super::open::reset_methods(m.rdev()),
                Err(m) => format!("the device's sysfs node is unknown: {m}"),
            };
            return Err(io::Error::new(
                e.kind(),
                format!("VFIO_DEVICE_RESET ioctl: {e}; {methods}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers() {
        // VFIO_DEVICE_SET_IRQS and VFIO_DEVICE_RESET (include/uapi/linux/vfio.h).
        assert_eq!(vfio_io(VFIO_BASE + 10), 0x3b6e);
        assert_eq!(vfio_io(VFIO_BASE + 11), 0x3b6f);
    }

    #[test]
    fn anonymous_mapping_is_usable() {
        let m = HostMmap::anonymous(8192).unwrap();
        assert_eq!(m.len(), 8192);
        assert!(!m.is_empty());
        assert_eq!(m.addr() % 4096, 0);
    }
}
