//! Opening a passthrough device: from a VFIO cdev or a sysfs PCI device
//! path to a [`VfioDevice`] bound to iommufd and attached to guest RAM.
//!
//! Every way this fails on a real host gets its own one-line message, since
//! the person reading it has to fix the host (bind the driver, fix
//! permissions, stop the other user), not the VMM.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iommufd_ioctls::{IommuFd, IommufdIoas};
use vfio_ioctls::{VfioError, VfioIommufd};

use super::backend::VfioDevice;

/// Where VFIO device cdevs live (`/dev/vfio/devices/vfioN`).
const CDEV_DIR: &str = "/dev/vfio/devices";
/// The driver a PCI device must be bound to.
const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// Why a passthrough device could not be opened. The messages name the
/// derived cdev when it differs from the path the user gave, never the
/// given path itself (the caller prefixes that).
#[derive(Debug, thiserror::Error)]
pub enum VfioOpenError {
    #[error("no such file or directory")]
    NotFound,
    #[error("permission denied opening {0}")]
    PermissionDenied(PathBuf),
    #[error("the device is bound to {0}, not vfio-pci")]
    WrongDriver(String),
    #[error("the device is not bound to any driver; bind it to vfio-pci")]
    NoDriver,
    #[error(
        "the device is bound to vfio-pci but has no VFIO cdev \
         (vfio-dev/ is missing: host kernel without CONFIG_VFIO_DEVICE_CDEV?)"
    )]
    NoCdev,
    #[error("the device's VFIO cdev {0} does not exist (is /dev/vfio/devices populated?)")]
    CdevMissing(PathBuf),
    #[error(
        "neither a VFIO device cdev (/dev/vfio/devices/vfioN) \
         nor a PCI device directory in sysfs (/sys/bus/pci/devices/DDDD:BB:DD.F)"
    )]
    NotAVfioDevice,
    #[error("{0} is already in use (another VFIO user holds the device or its IOMMU group)")]
    InUse(PathBuf),
    #[error("binding {path} to iommufd failed: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("attaching {path} to the guest-RAM address space failed: {source}")]
    Attach { path: PathBuf, source: io::Error },
    #[error("{path} is not a usable VFIO PCI device: {reason}")]
    NotPci { path: PathBuf, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Opens `path` — a VFIO cdev (`/dev/vfio/devices/vfioN`) or a PCI device's
/// sysfs directory (`/sys/bus/pci/devices/0000:00:10.0`) — binds it to
/// `iommufd` and attaches it to `ioas` (the guest-RAM IOAS, IOVA = GPA).
///
/// The returned device is not reset; call [`VfioDevice::reset`] before
/// handing it to the guest.
pub fn open_device(
    path: &Path,
    iommufd: Arc<IommuFd>,
    ioas: Arc<IommufdIoas>,
) -> Result<VfioDevice, VfioOpenError> {
    let cdev = resolve_cdev(path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cdev)
        .map_err(|e| open_error(&cdev, e))?;
    // No KVM VFIO device fd: nothing for the drop to unregister (and the
    // KVM side only matters for non-coherent DMA, which we do not offer).
    let vfio_iommufd =
        VfioIommufd::new(iommufd, Some(ioas), None).map_err(|e| VfioOpenError::Bind {
            path: cdev.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    let device = vfio_ioctls::VfioDevice::new_from_fd(file, Arc::new(vfio_iommufd), true)
        .map_err(|e| bind_error(&cdev, e))?;
    Ok(VfioDevice::new(device))
}

/// The cdev to open for `path`.
pub fn resolve_cdev(path: &Path) -> Result<PathBuf, VfioOpenError> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => VfioOpenError::NotFound,
        io::ErrorKind::PermissionDenied => VfioOpenError::PermissionDenied(path.to_path_buf()),
        _ => VfioOpenError::Io {
            op: "stat",
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if meta.file_type().is_char_device() {
        if !is_vfio_cdev(meta.rdev()) {
            return Err(VfioOpenError::NotAVfioDevice);
        }
        return Ok(path.to_path_buf());
    }
    if meta.is_dir() {
        return sysfs_cdev(path);
    }
    Err(VfioOpenError::NotAVfioDevice)
}

/// Whether the char device `rdev` is a VFIO device cdev, from its sysfs
/// node (`/sys/dev/char/MAJ:MIN` → `.../vfio-dev/vfioN`). Without sysfs we
/// cannot tell and let the bind decide.
fn is_vfio_cdev(rdev: u64) -> bool {
    match fs::canonicalize(char_node(rdev)) {
        Ok(target) => target
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "vfio-dev"),
        Err(_) => !Path::new("/sys/dev/char").exists(),
    }
}

/// The sysfs node of the char device `rdev`: `/sys/dev/char/MAJ:MIN`.
fn char_node(rdev: u64) -> PathBuf {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    PathBuf::from(format!("/sys/dev/char/{major}:{minor}"))
}

/// What the kernel can reset the PCI function behind the VFIO cdev `rdev`
/// with, for a failed VFIO_DEVICE_RESET: its sysfs `reset_method` (the
/// cdev's node is `<pci device>/vfio-dev/vfioN`; its `device` link leads
/// back to the function).
pub(super) fn reset_methods(rdev: u64) -> String {
    match fs::canonicalize(char_node(rdev).join("device")) {
        Ok(dir) => describe_reset_methods(&dir),
        Err(e) => format!("the device's sysfs directory was not found: {e}"),
    }
}

/// `reset_method` of the PCI function at `dir`. The kernel hides the
/// attribute when it found no method at all, which is when vfio-pci
/// refuses VFIO_DEVICE_RESET with EINVAL.
fn describe_reset_methods(dir: &Path) -> String {
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match fs::read_to_string(dir.join("reset_method")) {
        Ok(m) if !m.trim().is_empty() => format!("{name} reset_method: {}", m.trim()),
        Ok(_) => format!("{name} reset_method: none"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
            "{name} has no reset_method in sysfs: the kernel found no reset \
             (no FLR, no PM reset, no bus or slot reset)"
        ),
        Err(e) => format!("{name} reset_method unreadable: {e}"),
    }
}

/// The cdev of a PCI device given by its sysfs directory.
fn sysfs_cdev(dir: &Path) -> Result<PathBuf, VfioOpenError> {
    match fs::read_dir(dir.join("vfio-dev")) {
        Ok(entries) => {
            let names: Vec<_> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("vfio"))
                .collect();
            match names.as_slice() {
                [name] => Ok(Path::new(CDEV_DIR).join(name)),
                _ => Err(VfioOpenError::NoCdev),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(VfioOpenError::PermissionDenied(dir.join("vfio-dev")))
        }
        Err(_) => {
            // Every PCI function's sysfs directory has a config file.
            if !dir.join("config").exists() {
                return Err(VfioOpenError::NotAVfioDevice);
            }
            let driver = fs::read_link(dir.join("driver"))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
            match driver {
                Some(d) if d == VFIO_PCI_DRIVER => Err(VfioOpenError::NoCdev),
                Some(d) => Err(VfioOpenError::WrongDriver(d)),
                None => Err(VfioOpenError::NoDriver),
            }
        }
    }
}

fn open_error(cdev: &Path, e: io::Error) -> VfioOpenError {
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => VfioOpenError::CdevMissing(cdev.to_path_buf()),
        (io::ErrorKind::PermissionDenied, _) => VfioOpenError::PermissionDenied(cdev.to_path_buf()),
        (_, Some(libc::EBUSY)) => VfioOpenError::InUse(cdev.to_path_buf()),
        _ => VfioOpenError::Io {
            op: "open",
            path: cdev.to_path_buf(),
            source: e,
        },
    }
}

/// Our reading of vfio-ioctls' nested errors.
fn bind_error(cdev: &Path, e: VfioError) -> VfioOpenError {
    let path = cdev.to_path_buf();
    match e {
        VfioError::VfioDeviceBindIommufd(err) => match err.errno() {
            // EBUSY: the IOMMU group is open through the legacy group
            // interface. EINVAL: with our well-formed arguments on a fresh
            // fd, the kernel's only EINVAL is "already opened through
            // another cdev fd" (vfio_df_open).
            libc::EBUSY | libc::EINVAL => VfioOpenError::InUse(path),
            errno => VfioOpenError::Bind {
                path,
                source: io::Error::from_raw_os_error(errno),
            },
        },
        VfioError::VfioDeviceAttachIommufdPt(err) => VfioOpenError::Attach {
            path,
            source: io::Error::from_raw_os_error(err.errno()),
        },
        VfioError::VfioDeviceGetInfo(err) | VfioError::VfioDeviceGetRegionInfo(err) => {
            VfioOpenError::NotPci {
                path,
                reason: io::Error::from_raw_os_error(err.errno()).to_string(),
            }
        }
        VfioError::VfioDeviceGetInfoPCI | VfioError::VfioDeviceGetInfoOther => {
            VfioOpenError::NotPci {
                path,
                reason: e.to_string(),
            }
        }
        other => VfioOpenError::Io {
            op: "setting up",
            path,
            source: io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn sysfs_device(driver: Option<&str>) -> TempDir {
        let t = TempDir::new().unwrap();
        fs::write(t.as_path().join("config"), [0u8; 64]).unwrap();
        if let Some(d) = driver {
            let drv = t.as_path().join("drivers").join(d);
            fs::create_dir_all(&drv).unwrap();
            std::os::unix::fs::symlink(&drv, t.as_path().join("driver")).unwrap();
        }
        t
    }

    #[test]
    fn reset_methods_from_sysfs() {
        let t = sysfs_device(Some("vfio-pci"));
        let dir = t.as_path().join("0000:00:03.0");
        fs::create_dir(&dir).unwrap();
        let none = describe_reset_methods(&dir);
        assert!(
            none.starts_with("0000:00:03.0 has no reset_method in sysfs"),
            "{none}"
        );
        fs::write(dir.join("reset_method"), "flr bus\n").unwrap();
        assert_eq!(
            describe_reset_methods(&dir),
            "0000:00:03.0 reset_method: flr bus"
        );
        // Not a char device with a sysfs node: said so, on one line.
        let missing = reset_methods(u64::MAX);
        assert!(!missing.contains('\n'), "{missing}");
    }

    #[test]
    fn nonexistent_path() {
        let e = resolve_cdev(Path::new("/nonexistent/vfio42")).unwrap_err();
        assert!(matches!(e, VfioOpenError::NotFound));
        assert_eq!(e.to_string(), "no such file or directory");
    }

    #[test]
    fn sysfs_device_bound_elsewhere_names_the_driver() {
        let t = sysfs_device(Some("nvme"));
        let e = resolve_cdev(t.as_path()).unwrap_err();
        assert_eq!(e.to_string(), "the device is bound to nvme, not vfio-pci");
        let t = sysfs_device(None);
        assert!(matches!(
            resolve_cdev(t.as_path()).unwrap_err(),
            VfioOpenError::NoDriver
        ));
    }

    #[test]
    fn vfio_pci_without_cdev_support() {
        let t = sysfs_device(Some("vfio-pci"));
        assert!(matches!(
            resolve_cdev(t.as_path()).unwrap_err(),
            VfioOpenError::NoCdev
        ));
    }

    #[test]
    fn sysfs_device_with_vfio_dev_gives_its_cdev() {
        let t = sysfs_device(Some("vfio-pci"));
        fs::create_dir_all(t.as_path().join("vfio-dev/vfio7")).unwrap();
        assert_eq!(
            resolve_cdev(t.as_path()).unwrap(),
            PathBuf::from("/dev/vfio/devices/vfio7")
        );
    }

    #[test]
    fn neither_cdev_nor_sysfs_device() {
        let t = TempDir::new().unwrap();
        assert!(matches!(
            resolve_cdev(t.as_path()).unwrap_err(),
            VfioOpenError::NotAVfioDevice
        ));
        let f = t.as_path().join("file");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            resolve_cdev(&f).unwrap_err(),
            VfioOpenError::NotAVfioDevice
        ));
        // A char device that is not VFIO (its sysfs node is elsewhere).
        if Path::new("/sys/dev/char").exists() {
            assert!(matches!(
                resolve_cdev(Path::new("/dev/null")).unwrap_err(),
                VfioOpenError::NotAVfioDevice
            ));
        }
    }

    #[test]
    fn open_errors_are_classified() {
        let p = Path::new("/dev/vfio/devices/vfio3");
        let e = open_error(p, io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(
            e.to_string(),
            "permission denied opening /dev/vfio/devices/vfio3"
        );
        let e = open_error(p, io::Error::from_raw_os_error(libc::EBUSY));
        assert!(matches!(e, VfioOpenError::InUse(_)));
        let e = open_error(p, io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, VfioOpenError::CdevMissing(_)));
        let e = open_error(p, io::Error::from_raw_os_error(libc::EIO));
        assert!(e.to_string().starts_with("open /dev/vfio/devices/vfio3: "));
    }

    #[test]
    fn bind_errors_are_classified() {
        use vmm_sys_util::errno::Error as SysError;
        let p = Path::new("/dev/vfio/devices/vfio3");
        for errno in [libc::EBUSY, libc::EINVAL] {
            let e = bind_error(p, VfioError::VfioDeviceBindIommufd(SysError::new(errno)));
            assert_eq!(
                e.to_string(),
                "/dev/vfio/devices/vfio3 is already in use (another VFIO user holds \
                 the device or its IOMMU group)"
            );
        }
        let e = bind_error(
            p,
            VfioError::VfioDeviceBindIommufd(SysError::new(libc::ENODEV)),
        );
        assert!(matches!(e, VfioOpenError::Bind { .. }));
        let e = bind_error(
            p,
            VfioError::VfioDeviceAttachIommufdPt(SysError::new(libc::EINVAL)),
        );
        assert!(e
            .to_string()
            .starts_with("attaching /dev/vfio/devices/vfio3"));
        let e = bind_error(p, VfioError::VfioDeviceGetInfoPCI);
        assert!(matches!(e, VfioOpenError::NotPci { .. }));
        assert!(!e.to_string().contains('\n'));
    }
}
