//! Hardware page tables (HWPT): allocation (paging, nest parent, nested
//! stage 1) and the batched cache invalidation of nested tables.
//!
//! A nested HWPT holds the guest's own first-stage table (for VT-d the
//! guest's PASID-entry fields), so the host IOMMU walks it directly and the
//! guest's invalidations must be forwarded: a whole guest queue goes down in
//! one IOMMU_HWPT_INVALIDATE, which takes an array.

use iommufd_bindings::iommufd::{
    iommu_hwpt_alloc, iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE as DATA_NONE,
    iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1 as DATA_VTD_S1, iommu_hwpt_invalidate,
    iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 as INVALIDATE_VTD_S1,
    iommu_hwpt_vtd_s1, iommu_hwpt_vtd_s1_invalidate,
    iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF as VTD_INV_LEAF,
    iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_DIRTY_TRACKING as ALLOC_DIRTY_TRACKING,
    iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT as ALLOC_NEST_PARENT,
    iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_PASID as ALLOC_PASID,
    iommufd_hwpt_alloc_flags_IOMMU_HWPT_FAULT_ID_VALID as FAULT_ID_VALID,
};

#[cfg(any(test, feature = "test-utils"))]
use super::mock::{HWPT_DATA_SELFTEST, HWPT_INVALIDATE_DATA_SELFTEST};
use super::{ErrorKind, Iommufd, IommufdError, Result};

const OP_ALLOC: &str = "IOMMU_HWPT_ALLOC";
const OP_INVALIDATE: &str = "IOMMU_HWPT_INVALIDATE";

/// `IOMMU_VTD_S1_SRE`: supervisor requests allowed in the first stage.
pub const VTD_S1_SRE: u64 = 1 << 0;
/// `IOMMU_VTD_S1_EAFE`: extended access flag.
pub const VTD_S1_EAFE: u64 = 1 << 1;
/// `IOMMU_VTD_S1_WPE`: write protect enable.
pub const VTD_S1_WPE: u64 = 1 << 2;

/// Allocation flags of a HWPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HwptFlags {
    /// IOMMU_HWPT_ALLOC_NEST_PARENT: may be the stage 2 of nested HWPTs.
    pub nest_parent: bool,
    /// IOMMU_HWPT_ALLOC_DIRTY_TRACKING.
    pub dirty_tracking: bool,
    /// IOMMU_HWPT_ALLOC_PASID: may be attached to PASIDs (and, on VT-d,
    /// must be set on every table of a device that uses PASIDs).
    pub pasid: bool,
}

impl HwptFlags {
    fn bits(self) -> u32 {
        let mut b = 0;
        if self.nest_parent {
            b |= ALLOC_NEST_PARENT;
        }
        if self.dirty_tracking {
            b |= ALLOC_DIRTY_TRACKING;
        }
        if self.pasid {
            b |= ALLOC_PASID;
        }
        b
    }
}

/// The driver-specific data of a HWPT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HwptData {
    /// A paging table built from the IOAS (`pt_id` is an IOAS).
    #[default]
    None,
    /// A VT-d first stage nested on a parent HWPT (`struct iommu_hwpt_vtd_s1`).
    VtdS1 {
        /// `VTD_S1_SRE` | `VTD_S1_EAFE` | `VTD_S1_WPE`.
        flags: u64,
        /// Guest-physical address of the first-stage root table.
        pgtbl_addr: u64,
        /// 48 or 57.
        addr_width: u32,
    },
    /// The kernel mock's nested table (`struct iommu_hwpt_selftest`); only
    /// the test-only mock driver accepts it (see [`super::mock`]), hence
    /// the `test-utils` feature.
    #[cfg(any(test, feature = "test-utils"))]
    Selftest {
        /// The value every entry of the mock's IOTLB starts with.
        iotlb: u32,
    },
    /// Any other type, as raw bytes (e.g. another vendor's structure). The
    /// kernel reads exactly `bytes.len()` bytes.
    Raw { data_type: u32, bytes: Vec<u8> },
}

impl HwptData {
    /// The uAPI data type and the bytes the kernel reads.
    fn encode(&self) -> (u32, Vec<u8>) {
        match self {
            HwptData::None => (DATA_NONE, Vec::new()),
            HwptData::VtdS1 {
                flags,
                pgtbl_addr,
                addr_width,
            } => {
                let s1 = iommu_hwpt_vtd_s1 {
                    flags: *flags,
                    pgtbl_addr: *pgtbl_addr,
                    addr_width: *addr_width,
                    __reserved: 0,
                };
                let mut b = Vec::with_capacity(size_of::<iommu_hwpt_vtd_s1>());
                b.extend_from_slice(&s1.flags.to_ne_bytes());
                b.extend_from_slice(&s1.pgtbl_addr.to_ne_bytes());
                b.extend_from_slice(&s1.addr_width.to_ne_bytes());
                b.extend_from_slice(&s1.__reserved.to_ne_bytes());
                (DATA_VTD_S1, b)
            }
            // Only `iotlb` (the structure's first version): newer fields
            // default to zero, and an older kernel refuses longer data.
            #[cfg(any(test, feature = "test-utils"))]
            HwptData::Selftest { iotlb } => (HWPT_DATA_SELFTEST, iotlb.to_ne_bytes().to_vec()),
            HwptData::Raw { data_type, bytes } => (*data_type, bytes.clone()),
        }
    }
}

/// One IOMMU_HWPT_ALLOC request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HwptAlloc {
    /// The iommufd device the table is for.
    pub dev_id: u32,
    /// An IOAS (paging table), or a nest-parent HWPT (nested table).
    pub pt_id: u32,
    pub flags: HwptFlags,
    /// A fault queue for I/O page faults on this (nested) table; sets
    /// IOMMU_HWPT_FAULT_ID_VALID. The kernel refuses it with a nest parent.
    pub fault_id: Option<u32>,
    pub data: HwptData,
}

impl HwptAlloc {
    /// A paging table of `ioas` for `dev_id`, no flags.
    pub fn paging(dev_id: u32, ioas: u32) -> Self {
        HwptAlloc {
            dev_id,
            pt_id: ioas,
            ..Default::default()
        }
    }

    /// A nest-parent (stage 2) table of `ioas` for `dev_id`.
    pub fn nest_parent(dev_id: u32, ioas: u32) -> Self {
        HwptAlloc {
            dev_id,
            pt_id: ioas,
            flags: HwptFlags {
                nest_parent: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A nested table on `parent` described by `data`.
    pub fn nested(dev_id: u32, parent: u32, data: HwptData) -> Self {
        HwptAlloc {
            dev_id,
            pt_id: parent,
            data,
            ..Default::default()
        }
    }
}

/// One VT-d first-stage invalidation (`struct iommu_hwpt_vtd_s1_invalidate`),
/// laid out as the kernel reads it so a batch goes down without copying.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VtdInvalidation {
    /// 4 KiB aligned; 0 with `npages == u64::MAX` for everything.
    pub addr: u64,
    pub npages: u64,
    /// `VtdInvalidation::LEAF` (only leaf entries changed).
    pub flags: u32,
    reserved: u32,
}

impl VtdInvalidation {
    /// IOMMU_VTD_INV_FLAGS_LEAF.
    pub const LEAF: u32 = VTD_INV_LEAF;

    pub fn new(addr: u64, npages: u64, leaf: bool) -> Self {
        VtdInvalidation {
            addr,
            npages,
            flags: if leaf { Self::LEAF } else { 0 },
            reserved: 0,
        }
    }

    /// Everything the table may have cached.
    pub fn all() -> Self {
        Self::new(0, u64::MAX, false)
    }
}

/// One invalidation of the kernel mock's nested table
/// (`struct iommu_hwpt_invalidate_selftest`), test-only (`test-utils`).
#[cfg(any(test, feature = "test-utils"))]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SelftestInvalidation {
    /// `SelftestInvalidation::ALL` ignores `iotlb_id`.
    pub flags: u32,
    /// Which of the mock's four IOTLB entries to clear.
    pub iotlb_id: u32,
}

#[cfg(any(test, feature = "test-utils"))]
impl SelftestInvalidation {
    /// IOMMU_TEST_INVALIDATE_FLAG_ALL.
    pub const ALL: u32 = 1 << 0;
}

/// The entries of one IOMMU_HWPT_INVALIDATE.
#[derive(Debug, Clone, Copy)]
pub enum InvalidateBatch<'a> {
    /// IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 on a nested VT-d HWPT.
    Vtd(&'a [VtdInvalidation]),
    /// The mock's IOMMU_HWPT_INVALIDATE_DATA_SELFTEST (`test-utils`).
    #[cfg(any(test, feature = "test-utils"))]
    Selftest(&'a [SelftestInvalidation]),
    /// Any type as raw bytes: `entry_num` entries of `entry_len` bytes.
    /// `data` must hold them all (checked), since the kernel reads
    /// `entry_len * entry_num` bytes.
    Raw {
        data_type: u32,
        entry_len: u32,
        entry_num: u32,
        data: &'a [u8],
    },
}

impl InvalidateBatch<'_> {
    /// (data type, entry length, entry count, pointer) after checking that
    /// the pointer covers every entry.
    fn describe(&self) -> Result<(u32, u32, u32, u64)> {
        fn count(n: usize) -> Result<u32> {
            u32::try_from(n).map_err(|_| {
                IommufdError::rejected(
                    OP_INVALIDATE,
                    ErrorKind::OutOfRange,
                    format!("{n} entries do not fit one call"),
                )
            })
        }
        match self {
            InvalidateBatch::Vtd(e) => Ok((
                INVALIDATE_VTD_S1,
                size_of::<VtdInvalidation>() as u32,
                count(e.len())?,
                e.as_ptr() as u64,
            )),
            #[cfg(any(test, feature = "test-utils"))]
            InvalidateBatch::Selftest(e) => Ok((
                HWPT_INVALIDATE_DATA_SELFTEST,
                size_of::<SelftestInvalidation>() as u32,
                count(e.len())?,
                e.as_ptr() as u64,
            )),
            InvalidateBatch::Raw {
                data_type,
                entry_len,
                entry_num,
                data,
            } => {
                let need = u64::from(*entry_len) * u64::from(*entry_num);
                if need > data.len() as u64 {
                    return Err(IommufdError::rejected(
                        OP_INVALIDATE,
                        ErrorKind::InvalidArgument,
                        format!(
                            "{entry_num} entries of {entry_len} bytes need {need} bytes, \
                             the buffer has {}",
                            data.len()
                        ),
                    ));
                }
                Ok((*data_type, *entry_len, *entry_num, data.as_ptr() as u64))
            }
        }
    }
}

/// What one IOMMU_HWPT_INVALIDATE did: the kernel handles entries in order
/// and stops at the first it refuses, reporting how many it processed.
#[derive(Debug)]
pub struct InvalidateOutcome {
    /// Entries handled (all of them when `error` is `None`).
    pub processed: u32,
    /// Why entry `processed` (or the whole call) was refused.
    pub error: Option<IommufdError>,
}

impl InvalidateOutcome {
    /// `Ok(processed)`, or the error.
    pub fn into_result(self) -> Result<u32> {
        match self.error {
            None => Ok(self.processed),
            Some(e) => Err(e),
        }
    }
}

impl Iommufd {
    /// Allocates a HWPT and returns its id.
    ///
    /// Typical refusals: an unknown `dev_id` or `pt_id` that is not an
    /// IOAS/HWPT → [`ErrorKind::NotFound`] / [`ErrorKind::InvalidArgument`];
    /// flags or a data type this IOMMU cannot do (nesting on a host without
    /// it, a fault queue with a nest parent) → [`ErrorKind::Unsupported`];
    /// data of the wrong size → [`ErrorKind::InvalidArgument`]; a nested
    /// table on a parent that is not a nest parent → InvalidArgument.
    pub fn hwpt_alloc(&self, req: &HwptAlloc) -> Result<u32> {
        let (data_type, bytes) = req.data.encode();
        let mut flags = req.flags.bits();
        if req.fault_id.is_some() {
            flags |= FAULT_ID_VALID;
        }
        let data_len = u32::try_from(bytes.len()).map_err(|_| {
            IommufdError::rejected(OP_ALLOC, ErrorKind::OutOfRange, "data larger than 4 GiB")
        })?;
        let mut arg = iommu_hwpt_alloc {
            size: size_of::<iommu_hwpt_alloc>() as u32,
            flags,
            dev_id: req.dev_id,
            pt_id: req.pt_id,
            data_type,
            data_len,
            data_uptr: if bytes.is_empty() {
                0
            } else {
                bytes.as_ptr() as u64
            },
            fault_id: req.fault_id.unwrap_or(0),
            ..Default::default()
        };
        self.raw()
            .alloc_iommu_hwpt(&mut arg)
            .map_err(IommufdError::from_crate(OP_ALLOC))?;
        Ok(arg.out_hwpt_id)
    }

    /// Whether the host can nest for `dev_id`: allocates a nest-parent HWPT
    /// on `ioas` and destroys it again. A host that refuses
    /// (EOPNOTSUPP/EINVAL, e.g. VT-d without ECAP.NEST) gives `Ok(false)`;
    /// other failures (a stale id, no memory) are errors.
    pub fn probe_nesting(&self, dev_id: u32, ioas: u32) -> Result<bool> {
        match self.hwpt_alloc(&HwptAlloc::nest_parent(dev_id, ioas)) {
            Ok(id) => {
                self.destroy(id)?;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Unsupported | ErrorKind::InvalidArgument
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Invalidates `hwpt_id`'s caches with every entry of `req` in one
    /// ioctl; returns the number of entries processed (all of them).
    pub fn hwpt_invalidate(&self, hwpt_id: u32, req: InvalidateBatch<'_>) -> Result<u32> {
        self.hwpt_invalidate_partial(hwpt_id, req).into_result()
    }

    /// Like [`Iommufd::hwpt_invalidate`], but on failure also says how many
    /// entries the kernel processed before the one it refused (a vIOMMU
    /// reports the failing descriptor to the guest).
    pub fn hwpt_invalidate_partial(
        &self,
        hwpt_id: u32,
        req: InvalidateBatch<'_>,
    ) -> InvalidateOutcome {
        let (data_type, entry_len, entry_num, data_uptr) = match req.describe() {
            Ok(d) => d,
            Err(e) => {
                return InvalidateOutcome {
                    processed: 0,
                    error: Some(e),
                }
            }
        };
        let mut arg = iommu_hwpt_invalidate {
            size: size_of::<iommu_hwpt_invalidate>() as u32,
            hwpt_id,
            data_uptr,
            data_type,
            entry_len,
            entry_num,
            __reserved: 0,
        };
        // The kernel writes entry_num back on failure as well.
        let error = self
            .raw()
            .invalidate_hwpt(&mut arg)
            .map_err(IommufdError::from_crate(OP_INVALIDATE))
            .err();
        InvalidateOutcome {
            processed: arg.entry_num.min(entry_num),
            error,
        }
    }
}

// The batch entries are handed to the kernel as arrays of these layouts.
const _: () = assert!(size_of::<VtdInvalidation>() == size_of::<iommu_hwpt_vtd_s1_invalidate>());
const _: () = assert!(size_of::<VtdInvalidation>() == 24);
#[cfg(any(test, feature = "test-utils"))]
const _: () = assert!(size_of::<SelftestInvalidation>() == 8);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn flags_bits() {
        assert_eq!(HwptFlags::default().bits(), 0);
        let all = HwptFlags {
            nest_parent: true,
            dirty_tracking: true,
            pasid: true,
        };
        assert_eq!(all.bits(), 1 | 2 | 8);
    }

    #[test]
    fn vtd_invalidation_layout() {
        assert_eq!(
            offset_of!(VtdInvalidation, npages),
            offset_of!(iommu_hwpt_vtd_s1_invalidate, npages)
        );
        assert_eq!(
            offset_of!(VtdInvalidation, flags),
            offset_of!(iommu_hwpt_vtd_s1_invalidate, flags)
        );
        assert_eq!(VtdInvalidation::new(0x1000, 1, true).flags, 1);
        assert_eq!(VtdInvalidation::all().npages, u64::MAX);
    }

    #[test]
    fn data_encoding() {
        assert_eq!(HwptData::None.encode(), (0, vec![]));
        let (t, b) = HwptData::VtdS1 {
            flags: VTD_S1_SRE,
            pgtbl_addr: 0x1234_5000,
            addr_width: 48,
        }
        .encode();
        assert_eq!(t, 1);
        assert_eq!(b.len(), size_of::<iommu_hwpt_vtd_s1>());
        assert_eq!(&b[8..16], &0x1234_5000u64.to_ne_bytes());
        assert_eq!(&b[16..20], &48u32.to_ne_bytes());
        let (t, b) = HwptData::Selftest { iotlb: 0xbadbeef }.encode();
        assert_eq!(t, 0xdead);
        assert_eq!(b, 0xbadbeefu32.to_ne_bytes());
    }

    #[test]
    fn raw_batch_must_cover_its_entries() {
        let data = [0u8; 16];
        let ok = InvalidateBatch::Raw {
            data_type: 7,
            entry_len: 8,
            entry_num: 2,
            data: &data,
        };
        assert_eq!(ok.describe().map(|d| (d.0, d.1, d.2)).ok(), Some((7, 8, 2)));
        let short = InvalidateBatch::Raw {
            data_type: 7,
            entry_len: 8,
            entry_num: 3,
            data: &data,
        };
        let e = short.describe().expect_err("reads past the buffer");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.op(), OP_INVALIDATE);
        let huge = InvalidateBatch::Raw {
            data_type: 7,
            entry_len: u32::MAX,
            entry_num: u32::MAX,
            data: &data,
        };
        assert!(huge.describe().is_err());
    }
}
