//! I/O address spaces (IOAS): the IOVA → process-memory mappings that every
//! paging HWPT of the IOAS mirrors into the IOMMU.

use iommufd_bindings::iommufd::{
    iommu_ioas_alloc, iommu_ioas_iova_ranges, iommu_ioas_map, iommu_ioas_unmap, iommu_iova_range,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA as MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE as MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE as MAP_WRITEABLE, IOMMUFD_CMD_IOAS_IOVA_RANGES,
    IOMMUFD_CMD_IOAS_MAP,
};

use super::{ErrorKind, Iommufd, IommufdError, Result};

/// What a device may do with a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoPerm {
    pub read: bool,
    pub write: bool,
}

impl IoPerm {
    pub const READ_WRITE: IoPerm = IoPerm {
        read: true,
        write: true,
    };
    pub const READ_ONLY: IoPerm = IoPerm {
        read: true,
        write: false,
    };

    fn map_flags(self) -> u32 {
        let mut flags = 0;
        if self.read {
            flags |= MAP_READABLE;
        }
        if self.write {
            flags |= MAP_WRITEABLE;
        }
        flags
    }
}

/// An inclusive IOVA interval, as IOMMU_IOAS_IOVA_RANGES reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IovaRange {
    pub start: u64,
    /// The last IOVA of the range (inclusive).
    pub last: u64,
}

/// The IOVAs an IOAS accepts right now: they narrow as devices (with their
/// apertures and reserved regions) attach, and widen when they detach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IovaRanges {
    pub ranges: Vec<IovaRange>,
    /// Every mapping's start and length must be a multiple of this.
    pub alignment: u64,
}

impl IovaRanges {
    /// Whether `[iova, iova + len)` lies inside one allowed range.
    pub fn contains(&self, iova: u64, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return false;
        };
        self.ranges
            .iter()
            .any(|r| r.start <= iova && last <= r.last)
    }
}

/// The kernel's "unmap everything" encoding for IOMMU_IOAS_UNMAP.
const UNMAP_ALL_IOVA: u64 = 0;
const UNMAP_ALL_LENGTH: u64 = u64::MAX;

impl Iommufd {
    /// Allocates an empty IOAS and returns its id.
    pub fn ioas_alloc(&self) -> Result<u32> {
        let mut arg = iommu_ioas_alloc {
            size: size_of::<iommu_ioas_alloc>() as u32,
            ..Default::default()
        };
        self.raw()
            .alloc_iommu_ioas(&mut arg)
            .map_err(IommufdError::from_crate("IOMMU_IOAS_ALLOC"))?;
        Ok(arg.out_ioas_id)
    }

    /// Maps `[user_va, user_va + len)` of this process at `iova` in `ioas`
    /// (IOMMU_IOAS_MAP with FIXED_IOVA).
    ///
    /// The kernel pins the pages while they are mapped. An IOVA range that
    /// overlaps a mapping gives [`ErrorKind::Exists`]; one that is reserved,
    /// outside an attached device's aperture or misaligned gives
    /// [`ErrorKind::InvalidArgument`]; memory that cannot be pinned gives
    /// [`ErrorKind::BadAddress`].
    ///
    /// # Safety
    ///
    /// `user_va..user_va + len` must stay mapped, and be memory that devices
    /// are allowed to read (and, with `perm.write`, to write at any time
    /// without the knowledge of Rust code), for as long as the IOVA range is
    /// mapped: until it is unmapped, the IOAS destroyed or the iommufd
    /// closed.
    pub unsafe fn ioas_map(
        &self,
        ioas: u32,
        iova: u64,
        user_va: u64,
        len: u64,
        perm: IoPerm,
    ) -> Result<()> {
        // The crate's map call passes the structure by shared reference, but
        // the kernel writes `iova` back into it: issue the ioctl here with a
        // mutable one.
        let mut arg = iommu_ioas_map {
            size: size_of::<iommu_ioas_map>() as u32,
            flags: MAP_FIXED_IOVA | perm.map_flags(),
            ioas_id: ioas,
            __reserved: 0,
            user_va,
            length: len,
            iova,
        };
        self.ioctl("IOMMU_IOAS_MAP", IOMMUFD_CMD_IOAS_MAP, &mut arg)
    }

    /// Unmaps every mapping inside `[iova, iova + len)` of `ioas` and
    /// returns how many bytes were unmapped.
    ///
    /// The range must cover whole mappings: cutting a mapping, or a range
    /// with nothing mapped, gives [`ErrorKind::NotFound`] (mappings that lie
    /// entirely inside the range before the cut one may already be gone).
    pub fn ioas_unmap(&self, ioas: u32, iova: u64, len: u64) -> Result<u64> {
        if iova == UNMAP_ALL_IOVA && len == UNMAP_ALL_LENGTH {
            // The kernel would read this as "unmap all"; say it explicitly.
            return self.ioas_unmap_all(ioas);
        }
        self.unmap(ioas, iova, len)
    }

    /// Unmaps everything in `ioas` and returns how many bytes were mapped.
    /// An empty IOAS gives `Ok(0)`.
    pub fn ioas_unmap_all(&self, ioas: u32) -> Result<u64> {
        self.unmap(ioas, UNMAP_ALL_IOVA, UNMAP_ALL_LENGTH)
    }

    fn unmap(&self, ioas: u32, iova: u64, len: u64) -> Result<u64> {
        let mut arg = iommu_ioas_unmap {
            size: size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: ioas,
            iova,
            length: len,
        };
        self.raw()
            .unmap_iommu_ioas(&mut arg)
            .map_err(IommufdError::from_crate("IOMMU_IOAS_UNMAP"))?;
        Ok(arg.length)
    }

    /// The IOVA ranges `ioas` accepts now (IOMMU_IOAS_IOVA_RANGES).
    pub fn ioas_iova_ranges(&self, ioas: u32) -> Result<IovaRanges> {
        const OP: &str = "IOMMU_IOAS_IOVA_RANGES";
        // Ranges only change when devices attach or detach, so a second
        // attempt with the size the kernel asked for almost always fits;
        // a few more tolerate a concurrent attach.
        let mut capacity: u32 = 8;
        for _ in 0..4 {
            let mut ranges = vec![iommu_iova_range::default(); capacity as usize];
            let mut arg = iommu_ioas_iova_ranges {
                size: size_of::<iommu_ioas_iova_ranges>() as u32,
                ioas_id: ioas,
                num_iovas: capacity,
                __reserved: 0,
                allowed_iovas: ranges.as_mut_ptr() as u64,
                out_iova_alignment: 0,
            };
            match self.ioctl(OP, IOMMUFD_CMD_IOAS_IOVA_RANGES, &mut arg) {
                Ok(()) => {
                    ranges.truncate(arg.num_iovas.min(capacity) as usize);
                    return Ok(IovaRanges {
                        ranges: ranges
                            .into_iter()
                            .map(|r| IovaRange {
                                start: r.start,
                                last: r.last,
                            })
                            .collect(),
                        alignment: arg.out_iova_alignment,
                    });
                }
                Err(e) if e.errno() == Some(libc::EMSGSIZE) && arg.num_iovas > capacity => {
                    capacity = arg.num_iovas;
                }
                Err(e) => return Err(e),
            }
        }
        Err(IommufdError::rejected(
            OP,
            ErrorKind::Protocol,
            "the number of IOVA ranges kept changing",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_flags() {
        assert_eq!(IoPerm::default().map_flags(), 0);
        assert_eq!(IoPerm::READ_ONLY.map_flags(), 4);
        assert_eq!(IoPerm::READ_WRITE.map_flags(), 6);
        assert_eq!(
            IoPerm {
                read: false,
                write: true
            }
            .map_flags(),
            2
        );
    }

    #[test]
    fn ranges_contain() {
        let r = IovaRanges {
            ranges: vec![IovaRange {
                start: 1 << 24,
                last: (1 << 31) - 1,
            }],
            alignment: 4096,
        };
        assert!(r.contains(1 << 24, 4096));
        assert!(r.contains((1 << 31) - 4096, 4096));
        assert!(!r.contains((1 << 31) - 4096, 8192));
        assert!(!r.contains(0, 4096));
        assert!(!r.contains(1 << 24, 0));
        assert!(!r.contains(u64::MAX, 2));
    }
}
