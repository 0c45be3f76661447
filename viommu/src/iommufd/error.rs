//! Typed errors of the iommufd layer.
//!
//! The kernel reports every iommufd failure as a bare errno, and the same
//! errno means the same class of mistake across all iommufd ioctls (see the
//! "Return codes" notes in include/uapi/linux/iommufd.h): ENOENT is an
//! object id that does not exist or is of the wrong type, or an IOVA range
//! with nothing mapped; EINVAL a malformed argument (a wrong size, flags that
//! make no sense together, a range outside the aperture); EBUSY an object
//! still in use; EOPNOTSUPP something this IOMMU cannot do. Callers decide
//! on that class (skip a feature, retry, report a guest error), so the class
//! is an enum ([`ErrorKind`]) next to the name of the operation that failed,
//! and the original `io::Error` stays attached as the source.

use std::io;

use thiserror::Error;

/// What class of failure happened, independent of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// ENOENT: no object with that id (or not of the expected type), or
    /// nothing mapped in the IOVA range; also `/dev/iommu` missing.
    NotFound,
    /// EINVAL: a malformed request, e.g. a wrong structure or entry size, an
    /// unaligned or reserved IOVA, an object of an unusable kind.
    InvalidArgument,
    /// EBUSY / EADDRINUSE: the object or range is still in use (a HWPT with
    /// devices attached, a nest parent with children, a PASID already
    /// attached).
    Busy,
    /// EEXIST: something is already mapped or allocated there.
    Exists,
    /// EOPNOTSUPP: this kernel or IOMMU cannot do it (nesting on an IOMMU
    /// without it, unknown flags, an unknown data type).
    Unsupported,
    /// ENOTTY / ENOSYS: the ioctl itself does not exist in this kernel (for
    /// example the test-only IOMMU_TEST_CMD without CONFIG_IOMMUFD_TEST).
    NotImplemented,
    /// EFAULT: a user address the kernel could not read, write or pin.
    BadAddress,
    /// EACCES / EPERM.
    PermissionDenied,
    /// EOVERFLOW / ERANGE / E2BIG / EMSGSIZE: a value past what the kernel
    /// accepts (an IOVA range that wraps, a structure larger than the
    /// kernel's with non-zero trailing bytes).
    OutOfRange,
    /// ENOMEM / ENOSPC.
    NoMemory,
    /// ENODEV / ENXIO.
    NoDevice,
    /// The kernel answered with data this layer cannot make sense of (a
    /// short or truncated record).
    Protocol,
    /// Any other errno.
    Other(i32),
}

impl ErrorKind {
    /// The class of a raw errno.
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::ENOENT => ErrorKind::NotFound,
            libc::EINVAL => ErrorKind::InvalidArgument,
            libc::EBUSY | libc::EADDRINUSE => ErrorKind::Busy,
            libc::EEXIST => ErrorKind::Exists,
            libc::EOPNOTSUPP => ErrorKind::Unsupported,
            libc::ENOTTY | libc::ENOSYS => ErrorKind::NotImplemented,
            libc::EFAULT => ErrorKind::BadAddress,
            libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
            libc::EOVERFLOW | libc::ERANGE | libc::E2BIG | libc::EMSGSIZE => ErrorKind::OutOfRange,
            libc::ENOMEM | libc::ENOSPC => ErrorKind::NoMemory,
            libc::ENODEV | libc::ENXIO => ErrorKind::NoDevice,
            e => ErrorKind::Other(e),
        }
    }
}

/// Why an iommufd operation failed.
///
/// `Display` is one line naming the operation, e.g.
/// `IOMMU_IOAS_MAP: Invalid argument (os error 22)`.
#[derive(Debug, Error)]
pub enum IommufdError {
    /// `/dev/iommu` does not exist: the kernel has no iommufd (Debian's
    /// stock kernels never enable it).
    #[error("/dev/iommu is not present (kernel without CONFIG_IOMMUFD): {0}")]
    NotPresent(#[source] io::Error),
    /// A system call failed; `kind` classifies `source`'s errno.
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        kind: ErrorKind,
        #[source]
        source: io::Error,
    },
    /// Refused before reaching the kernel, or refused by a wrapper that does
    /// not report an errno (e.g. a buffer shorter than the entries it is
    /// said to hold, which the kernel would read past).
    #[error("{op}: {reason}")]
    Rejected {
        op: &'static str,
        kind: ErrorKind,
        reason: String,
    },
}

impl IommufdError {
    /// The error for `op` failing with `errno`.
    pub fn from_errno(op: &'static str, errno: i32) -> Self {
        IommufdError::Os {
            op,
            kind: ErrorKind::from_errno(errno),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The error for `op` after a failed system call, from `errno`.
    pub fn last_os_error(op: &'static str) -> Self {
        Self::from_io(op, io::Error::last_os_error())
    }

    /// The error for `op` failing with `e`.
    pub fn from_io(op: &'static str, e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => IommufdError::Os {
                op,
                kind: ErrorKind::from_errno(errno),
                source: e,
            },
            None => IommufdError::Rejected {
                op,
                kind: ErrorKind::Other(0),
                reason: e.to_string(),
            },
        }
    }

    /// A request this layer refuses before making the system call.
    pub fn rejected(op: &'static str, kind: ErrorKind, reason: impl Into<String>) -> Self {
        IommufdError::Rejected {
            op,
            kind,
            reason: reason.into(),
        }
    }

    /// Converts an error of the `iommufd-ioctls` crate, which names the
    /// operation in its variant but keeps only the errno, into ours.
    ///
    /// Used as `.map_err(IommufdError::from_crate("IOMMU_IOAS_ALLOC"))`.
    pub fn from_crate(op: &'static str) -> impl Fn(iommufd_ioctls::IommufdError) -> IommufdError {
        move |e| Self::convert_crate(op, e)
    }

    fn convert_crate(op: &'static str, e: iommufd_ioctls::IommufdError) -> IommufdError {
        use iommufd_ioctls::IommufdError as C;
        match e {
            C::OpenIommufd(e) => open_error(e),
            C::IommuDestroy(e)
            | C::IommuIoasAlloc(e)
            | C::IommuIoasMap(e)
            | C::IommuIoasMapFile(e)
            | C::IommuIoasUnmap(e)
            | C::IommuHwptAlloc(e)
            | C::IommuViommuAlloc(e)
            | C::IommuVdeviceAlloc(e)
            | C::IommuGetHwInfo(e)
            | C::IommuHwptInvalidate(e)
            | C::IommuVeventqAlloc(e)
            | C::VeventqNonBlocking(e)
            | C::IommuHwQueueAlloc(e) => Self::from_errno(op, e.errno()),
            C::AttachHwpt(e) => Self::from_io(op, e),
            other => Self::rejected(op, ErrorKind::Unsupported, other.to_string()),
        }
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IommufdError::NotPresent(_) => ErrorKind::NotFound,
            IommufdError::Os { kind, .. } | IommufdError::Rejected { kind, .. } => *kind,
        }
    }

    /// The operation that failed (an ioctl name, or `open /dev/iommu`).
    pub fn op(&self) -> &'static str {
        match self {
            IommufdError::NotPresent(_) => OPEN,
            IommufdError::Os { op, .. } | IommufdError::Rejected { op, .. } => op,
        }
    }

    /// The errno, when the kernel reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IommufdError::NotPresent(e) | IommufdError::Os { source: e, .. } => e.raw_os_error(),
            IommufdError::Rejected { .. } => None,
        }
    }

    /// Whether this is `kind` (shorthand for `e.kind() == kind`).
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind() == kind
    }
}

pub(crate) const OPEN: &str = "open /dev/iommu";

/// The error for a failed open of `/dev/iommu`.
pub(crate) fn open_error(e: io::Error) -> IommufdError {
    if e.raw_os_error() == Some(libc::ENOENT) {
        IommufdError::NotPresent(e)
    } else {
        IommufdError::from_io(OPEN, e)
    }
}

/// Result of an iommufd operation.
pub type Result<T> = std::result::Result<T, IommufdError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classes() {
        let cases = [
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::EINVAL, ErrorKind::InvalidArgument),
            (libc::EBUSY, ErrorKind::Busy),
            (libc::EADDRINUSE, ErrorKind::Busy),
            (libc::EEXIST, ErrorKind::Exists),
            (libc::EOPNOTSUPP, ErrorKind::Unsupported),
            (libc::ENOTTY, ErrorKind::NotImplemented),
            (libc::EFAULT, ErrorKind::BadAddress),
            (libc::EACCES, ErrorKind::PermissionDenied),
            (libc::EPERM, ErrorKind::PermissionDenied),
            (libc::EOVERFLOW, ErrorKind::OutOfRange),
            (libc::E2BIG, ErrorKind::OutOfRange),
            (libc::ERANGE, ErrorKind::OutOfRange),
            (libc::ENOMEM, ErrorKind::NoMemory),
            (libc::ENODEV, ErrorKind::NoDevice),
            (libc::EIO, ErrorKind::Other(libc::EIO)),
        ];
        for (errno, kind) in cases {
            assert_eq!(ErrorKind::from_errno(errno), kind, "errno {errno}");
            let e = IommufdError::from_errno("IOMMU_DESTROY", errno);
            assert_eq!(e.kind(), kind);
            assert!(e.is(kind));
            assert_eq!(e.errno(), Some(errno));
            assert_eq!(e.op(), "IOMMU_DESTROY");
        }
    }

    #[test]
    fn display_is_one_line_with_the_op() {
        let e = IommufdError::from_errno("IOMMU_IOAS_MAP", libc::EINVAL);
        assert_eq!(
            e.to_string(),
            "IOMMU_IOAS_MAP: Invalid argument (os error 22)"
        );
        let e = IommufdError::rejected(
            "IOMMU_HWPT_INVALIDATE",
            ErrorKind::InvalidArgument,
            "buffer too short",
        );
        assert_eq!(e.to_string(), "IOMMU_HWPT_INVALIDATE: buffer too short");
        assert_eq!(e.errno(), None);
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn open_errors() {
        let e = open_error(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, IommufdError::NotPresent(_)));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = open_error(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(e.op(), OPEN);
        assert!(e.to_string().starts_with("open /dev/iommu: "));
    }

    #[test]
    fn crate_errors_keep_the_errno() {
        use vmm_sys_util::errno::Error as SysError;
        let f = IommufdError::from_crate("IOMMU_IOAS_ALLOC");
        let e = f(iommufd_ioctls::IommufdError::IommuIoasAlloc(SysError::new(
            libc::ENOMEM,
        )));
        assert_eq!(e.kind(), ErrorKind::NoMemory);
        assert_eq!(e.op(), "IOMMU_IOAS_ALLOC");
        let e = f(iommufd_ioctls::IommufdError::OpenIommufd(
            io::Error::from_raw_os_error(libc::ENOENT),
        ));
        assert!(matches!(e, IommufdError::NotPresent(_)));
        let e = f(iommufd_ioctls::IommufdError::HwQueueUnsupported);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.errno(), None);
    }
}
