//! The host's iommufd (`/dev/iommu`): IOAS, hardware page tables, IOMMU
//! information, invalidation and page-fault queues.
//!
//! This is the one place that speaks the iommufd uAPI
//! (include/uapi/linux/iommufd.h). It wraps the `iommufd-ioctls` crate where
//! that crate's calls fit and issues the ioctls the crate lacks itself
//! (IOMMU_FAULT_QUEUE_ALLOC, IOMMU_IOAS_IOVA_RANGES, a map whose output the
//! kernel writes back, a batched invalidation that reports how many entries
//! were processed). Every failure comes back as an [`IommufdError`] that
//! names the operation and classifies the errno ([`ErrorKind`]), so callers
//! can tell "this host cannot nest" from "that id is stale".
//!
//! Object ids are plain `u32`s: the owner of an object (a passthrough
//! device, the vIOMMU model) decides when to destroy it, and all objects go
//! away with the file descriptor anyway.
//!
//! `mock` (with the `test-utils` feature only) drives the kernel's own
//! test-only mock IOMMU (CONFIG_IOMMUFD_TEST) so that this layer can be
//! tested against the real kernel without hardware.

mod error;
mod fault_queue;
mod hw_info;
mod hwpt;
mod ioas;
// Test-only (the `test-utils` feature): no production kernel has the mock,
// so the VMM has no use for it.
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use iommufd_bindings::iommufd::IOMMUFD_TYPE;
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

pub use error::{ErrorKind, IommufdError, Result};
pub use fault_queue::{FaultQueue, PageFault, PageResponseCode, PAGE_FAULT_RECORD_SIZE};
pub use hw_info::{HwInfo, VtdHwInfo, HW_INFO_TYPE_INTEL_VTD};
#[cfg(any(test, feature = "test-utils"))]
pub use hwpt::SelftestInvalidation;
pub use hwpt::{
    HwptAlloc, HwptData, HwptFlags, InvalidateBatch, InvalidateOutcome, VtdInvalidation,
    VTD_S1_EAFE, VTD_S1_SRE, VTD_S1_WPE,
};
pub use ioas::{IoPerm, IovaRange, IovaRanges};

/// The iommufd ioctl number for command `nr` (`_IO(';', nr)`).
pub(crate) fn ioctl_nr(nr: u32) -> libc::c_ulong {
    vmm_sys_util::ioctl::ioctl_expr(vmm_sys_util::ioctl::_IOC_NONE, IOMMUFD_TYPE as u32, nr, 0)
}

/// One open `/dev/iommu`: the iommufd context that owns every object made
/// through it.
#[derive(Clone)]
pub struct Iommufd {
    fd: Arc<iommufd_ioctls::IommuFd>,
}

impl Iommufd {
    /// Opens `/dev/iommu`.
    ///
    /// A kernel without iommufd gives [`IommufdError::NotPresent`]; a node
    /// the process may not open gives [`ErrorKind::PermissionDenied`].
    pub fn open() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/iommu")
            .map_err(error::open_error)?;
        Ok(Iommufd {
            fd: Arc::new(iommufd_ioctls::IommuFd::new_from_fd(file)),
        })
    }

    /// Wraps an iommufd opened elsewhere (e.g. shared with vfio-ioctls).
    pub fn from_raw(fd: Arc<iommufd_ioctls::IommuFd>) -> Self {
        Iommufd { fd }
    }

    /// The underlying handle, as `vfio-ioctls`' `VfioIommufd::new` takes it.
    pub fn raw(&self) -> &Arc<iommufd_ioctls::IommuFd> {
        &self.fd
    }

    /// Destroys object `id` (IOAS, HWPT, fault queue, mock device...).
    ///
    /// An object still in use gives [`ErrorKind::Busy`]; an id that does
    /// not exist (or was destroyed already) gives [`ErrorKind::NotFound`].
    pub fn destroy(&self, id: u32) -> Result<()> {
        self.fd
            .destroy_iommu_object(id)
            .map_err(IommufdError::from_crate("IOMMU_DESTROY"))
    }

    /// Issues iommufd ioctl `nr` with `arg`, whose first `u32` must hold
    /// its size. Every structure passed here is a plain `repr(C)` uAPI
    /// struct that lives on the caller's stack for the whole call.
    pub(crate) fn ioctl<T>(&self, op: &'static str, nr: u32, arg: &mut T) -> Result<()> {
        // SAFETY: the fd is an open /dev/iommu; `arg` is a valid, writable
        // uAPI structure whose size field tells the kernel how much of it
        // to read and write; pointers inside it are checked by each
        // caller. The return value is checked.
        let ret = unsafe { ioctl_with_mut_ref(self.fd.as_ref(), ioctl_nr(nr), arg) };
        if ret < 0 {
            Err(IommufdError::last_os_error(op))
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for Iommufd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Iommufd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.fd`, which lives at
        // least as long as the borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) }
    }
}

impl std::fmt::Debug for Iommufd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iommufd")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommufd_bindings::iommufd::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // _IO(';', nr) = (0x3b << 8) | nr, as listed in kernel-uapi.md.
        assert_eq!(ioctl_nr(IOMMUFD_CMD_DESTROY), 0x3b80);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_IOAS_ALLOC), 0x3b81);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_IOAS_IOVA_RANGES), 0x3b84);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_IOAS_MAP), 0x3b85);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_HWPT_ALLOC), 0x3b89);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_GET_HW_INFO), 0x3b8a);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_HWPT_INVALIDATE), 0x3b8d);
        assert_eq!(ioctl_nr(IOMMUFD_CMD_FAULT_QUEUE_ALLOC), 0x3b8e);
        assert_eq!(ioctl_nr(mock::IOMMU_TEST_CMD_NR), 0x3ba0);
    }

    #[test]
    fn uapi_struct_sizes() {
        // Sizes from include/uapi/linux/iommufd.h (kernel-uapi.md §1).
        assert_eq!(size_of::<iommu_destroy>(), 8);
        assert_eq!(size_of::<iommu_ioas_alloc>(), 12);
        assert_eq!(size_of::<iommu_ioas_map>(), 40);
        assert_eq!(size_of::<iommu_ioas_unmap>(), 24);
        assert_eq!(size_of::<iommu_ioas_iova_ranges>(), 32);
        assert_eq!(size_of::<iommu_hwpt_alloc>(), 48);
        assert_eq!(size_of::<iommu_hw_info>(), 40);
        assert_eq!(size_of::<iommu_hw_info_vtd>(), 24);
        assert_eq!(size_of::<iommu_hwpt_vtd_s1>(), 24);
        assert_eq!(size_of::<iommu_hwpt_invalidate>(), 32);
        assert_eq!(size_of::<iommu_hwpt_vtd_s1_invalidate>(), 24);
        assert_eq!(size_of::<iommu_fault_alloc>(), 16);
        assert_eq!(size_of::<iommu_hwpt_pgfault>(), 40);
        assert_eq!(size_of::<iommu_hwpt_page_response>(), 8);
    }
}
