//! Passthrough devices (`--vfio`): opening them on iommufd, choosing how
//! the vIOMMU reaches them (bypass, shadow, nested), and plugging them in.
//!
//! Order matters: the devices are opened before the vIOMMU is created,
//! because whether the host can nest decides the vIOMMU's capabilities
//! (a host without nesting needs Caching Mode and no first stage).

use std::path::Path;
use std::sync::Arc;

use devices::vfio::{open_device, VfioDevice};
use log::info;
use viommu::host::HostCapabilities;
use viommu::host_iommufd::{DeviceAttach, GuestRamIoas};
use viommu::intel::regs::{ecap_pasid_bits, CAP_FL1GP, CAP_FL5LP};
use viommu::intel::VtdConfig;
use viommu::iommufd::{HwInfo, Iommufd};
use viommu::GuestMemoryMmap;

use crate::config::{Nesting, VfioConfig, ViommuConfig};
use crate::VmmError;

/// A device bound to iommufd and attached to guest RAM, not yet on the bus.
pub struct OpenedDevice {
    pub config: VfioConfig,
    pub device: Arc<VfioDevice>,
    pub hw_info: HwInfo,
    /// The host can allocate a NEST_PARENT page table for it.
    pub nesting: bool,
}

impl OpenedDevice {
    pub fn capabilities(&self) -> HostCapabilities {
        HostCapabilities {
            nesting: self.nesting,
            max_pasid_log2: self.pasid_width(),
            page_requests: false,
        }
    }

    /// The PASID width the host reports, or the test-only override.
    pub fn pasid_width(&self) -> u8 {
        self.config
            .test_pasid_width
            .unwrap_or(self.hw_info.max_pasid_log2)
    }
}

/// The iommufd and the guest-RAM IOAS every passthrough device starts on.
pub struct Passthrough {
    pub guest_ram: GuestRamIoas,
    pub devices: Vec<OpenedDevice>,
}

/// Opens every `--vfio` device; None when there are none.
pub fn open_all(
    configs: &[VfioConfig],
    mem: &GuestMemoryMmap,
) -> Result<Option<Passthrough>, VmmError> {
    if configs.is_empty() {
        return Ok(None);
    }
    for c in configs {
        if !Path::new(&c.path).exists() {
            return Err(VmmError::Input(format!(
                "--vfio {}: no such device",
                c.path.display()
            )));
        }
    }
    let iommufd =
        Arc::new(Iommufd::open().map_err(|e| VmmError::Input(format!("--vfio: /dev/iommu: {e}")))?);
    let guest_ram = GuestRamIoas::new(iommufd.clone(), mem)
        .map_err(|e| VmmError::Setup(format!("mapping guest RAM for passthrough: {e}")))?;
    let mut devices = Vec::new();
    for c in configs {
        let device = open_device(&c.path, iommufd.raw().clone(), guest_ram.raw_ioas())
            .map_err(|e| VmmError::Input(format!("--vfio {}: {e}", c.path.display())))?;
        let dev_id = device.iommufd_dev_id().ok_or_else(|| {
            VmmError::Setup(format!("--vfio {}: not bound to iommufd", c.path.display()))
        })?;
        let hw_info = iommufd.hw_info(dev_id).map_err(|e| {
            VmmError::Setup(format!(
                "--vfio {}: IOMMU_GET_HW_INFO: {e}",
                c.path.display()
            ))
        })?;
        let nesting = iommufd.probe_nesting(dev_id, guest_ram.id()).map_err(|e| {
            VmmError::Setup(format!("--vfio {}: nesting probe: {e}", c.path.display()))
        })?;
        info!(
            "vfio {}: iommufd dev {dev_id}, host IOMMU type {}, max PASID width {}, \
             capabilities {:#x}, nesting {}",
            c.path.display(),
            hw_info.data_type,
            hw_info.max_pasid_log2,
            hw_info.capabilities,
            if nesting { "yes" } else { "no" }
        );
        devices.push(OpenedDevice {
            config: c.clone(),
            device: Arc::new(device),
            hw_info,
            nesting,
        });
    }
    Ok(Some(Passthrough { guest_ram, devices }))
}

/// The vIOMMU configuration once the passthrough devices behind it are
/// known, and the path they take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViommuChoice {
    pub vtd: VtdConfig,
    /// The devices behind the vIOMMU take the nested path for guest
    /// first-stage tables (second-stage tables are still shadowed).
    pub nested: bool,
}

/// Chooses the vIOMMU's configuration for the passthrough devices behind
/// it.
///
/// - The host nests for every device and `nested` is not `off`: the
///   nested path. The guest gets first-stage tables (installed on the host
///   as nested HWPTs) and Caching Mode, so that a guest using second-stage
///   or legacy tables instead is still shadowed.
/// - Otherwise the shadow path: Caching Mode (the guest then reports maps
///   as well as unmaps) and no first stage (Caching Mode announces no
///   first-stage changes, VT-d spec §6.1).
pub fn viommu_config(
    cfg: ViommuConfig,
    passthrough: Option<&Passthrough>,
) -> Result<ViommuChoice, VmmError> {
    let behind: Vec<Behind> = passthrough
        .map(|p| {
            p.devices
                .iter()
                .filter(|d| d.config.iommu)
                .map(|d| Behind {
                    path: d.config.path.display().to_string(),
                    nesting: d.nesting,
                    host_cap: d.hw_info.vtd.map(|v| v.cap_reg),
                    host_ecap: d.hw_info.vtd.map(|v| v.ecap_reg),
                })
                .collect()
        })
        .unwrap_or_default();
    choose_viommu(cfg, &behind)
}

/// A passthrough device behind the vIOMMU, as far as the choice goes.
struct Behind {
    path: String,
    /// The host can nest for it.
    nesting: bool,
    /// The host VT-d unit's Capability Register (IOMMU_GET_HW_INFO).
    host_cap: Option<u64>,
    /// And its Extended Capability Register.
    host_ecap: Option<u64>,
}

/// [`viommu_config`] over the devices behind the vIOMMU.
fn choose_viommu(cfg: ViommuConfig, behind: &[Behind]) -> Result<ViommuChoice, VmmError> {
    let mut vtd = cfg.vtd;
    if behind.is_empty() {
        return Ok(ViommuChoice { vtd, nested: false });
    }
    let all_nest = behind.iter().all(|b| b.nesting);
    if cfg.nested == Nesting::On && !all_nest {
        let path = behind
            .iter()
            .find(|b| !b.nesting)
            .map(|b| b.path.as_str())
            .unwrap_or_default();
        return Err(VmmError::Input(format!(
            "--viommu nested=on: the host IOMMU cannot nest translations for {path} \
             (NEST_PARENT page tables are not supported)"
        )));
    }
    if vtd.offer_nesting {
        return Err(VmmError::Input(
            "--viommu offer-nesting=on cannot be used with a --vfio device behind the vIOMMU \
             (a passthrough device cannot nest a third stage)"
                .into(),
        ));
    }
    if cfg.nested != Nesting::Off && all_nest {
        if !vtd.first_stage {
            if cfg.nested == Nesting::On {
                return Err(VmmError::Input(
                    "--viommu nested=on needs scalable=on and first-stage=on (the nested path \
                     installs the guest's first-stage tables)"
                        .into(),
                ));
            }
        } else {
            if cfg.caching_mode_given != Some(false) {
                vtd.caching_mode = true;
            }
            // The host walks the guest's first-stage tables: offer only the
            // formats every host unit walks (first-stage 1 GiB pages,
            // 5-level tables).
            for b in behind {
                let cap = b.host_cap.unwrap_or(0);
                vtd.fl1gp &= cap & CAP_FL1GP != 0;
                vtd.fl5lp &= cap & CAP_FL5LP != 0;
            }
            // The guest's PASIDs are the host's on this path: no wider
            // than every host unit's (ECAP.PASID/PSS), none without.
            let host_bits = behind
                .iter()
                .map(|b| ecap_pasid_bits(b.host_ecap.unwrap_or(0)))
                .min()
                .unwrap_or(0);
            if vtd.pasid_bits > host_bits {
                info!(
                    "vIOMMU: pasid-bits {} -> {host_bits} (the host IOMMU's PASID width)",
                    vtd.pasid_bits
                );
                vtd.pasid_bits = host_bits;
            }
            info!(
                "vIOMMU: nested path for passthrough devices (guest first-stage tables as \
                 nested page tables{})",
                if vtd.caching_mode {
                    "; second-stage tables shadowed"
                } else {
                    ""
                }
            );
            return Ok(ViommuChoice { vtd, nested: true });
        }
    }
    if cfg.first_stage_given == Some(true) {
        return Err(VmmError::Input(
            "--viommu first-stage=on cannot be used with a --vfio device behind the vIOMMU on \
             a host without nested translation (caching mode announces no first-stage maps)"
                .into(),
        ));
    }
    if cfg.caching_mode_given == Some(false) {
        return Err(VmmError::Input(
            "--viommu caching-mode=off cannot be used with a --vfio device behind the vIOMMU \
             on a host without nested translation (the shadow path needs it)"
                .into(),
        ));
    }
    if !vtd.caching_mode || vtd.first_stage {
        info!("vIOMMU: caching mode on, first stage off, to shadow passthrough devices");
    }
    vtd.caching_mode = true;
    vtd.first_stage = false;
    Ok(ViommuChoice { vtd, nested: false })
}

/// Attaches a VFIO device to an iommufd page table.
pub struct VfioAttach(pub Arc<VfioDevice>);

impl DeviceAttach for VfioAttach {
    fn attach(&self, pt_id: u32) -> Result<(), String> {
        self.0.attach_hwpt(pt_id).map_err(|e| e.to_string())
    }
    fn attach_pasid(&self, pasid: u32, pt_id: u32) -> Result<(), String> {
        self.0
            .attach_iommufd_pt_pasid(pt_id, pasid)
            .map_err(|e| e.to_string())
    }
    fn detach_pasid(&self, pasid: u32) -> Result<(), String> {
        self.0
            .detach_iommufd_pt_pasid(pasid)
            .map_err(|e| e.to_string())
    }
}

/// A passthrough device on the bus, for reset and counters at exit.
#[derive(Clone)]
pub struct PassthroughDevice {
    pub requester_id: u16,
    pub device: Arc<VfioDevice>,
    /// Host-side counters when the device is behind the vIOMMU.
    pub counters: Option<Arc<viommu::host_iommufd::HostCounters>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_viommu;

    /// A host unit with both first-stage formats.
    const HOST_CAP: u64 = CAP_FL1GP | CAP_FL5LP;
    /// And 20-bit PASIDs.
    const HOST_ECAP: u64 = viommu::intel::regs::ECAP_PASID | 19 << 35;

    fn choose_with(spec: &str, behind: &[(&str, bool, u64)]) -> Result<ViommuChoice, String> {
        let behind: Vec<Behind> = behind
            .iter()
            .map(|&(p, nesting, cap)| Behind {
                path: p.to_string(),
                nesting,
                host_cap: Some(cap),
                host_ecap: Some(HOST_ECAP),
            })
            .collect();
        choose_viommu(parse_viommu(spec).unwrap(), &behind).map_err(|e| e.to_string())
    }

    fn choose_path(spec: &str, behind: &[(&str, bool)]) -> Result<ViommuChoice, String> {
        let behind: Vec<(&str, bool, u64)> =
            behind.iter().map(|&(p, n)| (p, n, HOST_CAP)).collect();
        choose_with(spec, &behind)
    }

    fn choose(spec: &str, behind: &[(&str, bool)]) -> Result<VtdConfig, String> {
        choose_path(spec, behind).map(|c| c.vtd)
    }

    #[test]
    fn no_passthrough_keeps_the_configuration() {
        let c = choose("intel", &[]).unwrap();
        assert!(c.first_stage && !c.caching_mode);
        assert!(choose("intel,nested=on", &[]).is_ok());
    }

    #[test]
    fn offered_nesting_cannot_be_shadowed() {
        assert!(choose("intel,offer-nesting=on", &[]).unwrap().offer_nesting);
        let e = choose(
            "intel,offer-nesting=on",
            &[("/dev/vfio/devices/vfio0", false)],
        );
        assert!(e.unwrap_err().contains("offer-nesting=on"));
    }

    #[test]
    fn shadow_needs_caching_mode_and_no_first_stage() {
        let c = choose("intel", &[("/dev/vfio/devices/vfio0", false)]).unwrap();
        assert!(c.caching_mode && !c.first_stage);
        let c = choose("intel,nested=off", &[("/dev/x", true)]).unwrap();
        assert!(c.caching_mode && !c.first_stage);
        let e = choose("intel,first-stage=on", &[("/dev/x", false)]).unwrap_err();
        assert!(e.contains("first-stage=on cannot be used"), "{e}");
        let e = choose("intel,caching-mode=off", &[("/dev/x", false)]).unwrap_err();
        assert!(e.contains("caching-mode=off cannot be used"), "{e}");
        // Explicitly what the shadow path needs anyway: fine.
        assert!(choose(
            "intel,first-stage=off,caching-mode=on",
            &[("/dev/x", false)]
        )
        .is_ok());
    }

    #[test]
    fn a_nesting_host_takes_the_nested_path() {
        let e = choose("intel,nested=on", &[("/dev/vfio/devices/vfio3", false)]).unwrap_err();
        assert!(
            e.contains("cannot nest translations for /dev/vfio/devices/vfio3"),
            "{e}"
        );
        for spec in ["intel", "intel,nested=auto", "intel,nested=on"] {
            let c = choose_path(spec, &[("/dev/x", true)]).unwrap();
            assert!(c.nested, "{spec}");
            assert!(c.vtd.first_stage && c.vtd.caching_mode, "{spec}");
        }
        // Without the second-stage fallback.
        let c = choose_path("intel,nested=on,caching-mode=off", &[("/dev/x", true)]).unwrap();
        assert!(c.nested && !c.vtd.caching_mode);
        // nested=off, or one device that cannot nest: the shadow path.
        let c = choose_path("intel,nested=off", &[("/dev/x", true)]).unwrap();
        assert!(!c.nested && c.vtd.caching_mode && !c.vtd.first_stage);
        let c = choose_path("intel", &[("/dev/x", true), ("/dev/y", false)]).unwrap();
        assert!(!c.nested && !c.vtd.first_stage);
        // No first stage to install.
        let e = choose("intel,nested=on,first-stage=off", &[("/dev/x", true)]).unwrap_err();
        assert!(e.contains("needs scalable=on and first-stage=on"), "{e}");
        let c = choose_path("intel,first-stage=off", &[("/dev/x", true)]).unwrap();
        assert!(!c.nested);
        let e = choose("intel,offer-nesting=on", &[("/dev/x", true)]).unwrap_err();
        assert!(e.contains("third stage"), "{e}");
    }

    #[test]
    fn nested_first_stage_formats_are_what_every_host_walks() {
        let c = choose_path("intel,aw-bits=57", &[("/dev/x", true)]).unwrap();
        assert!(c.vtd.fl1gp && c.vtd.fl5lp);
        let c = choose_with(
            "intel,aw-bits=57",
            &[("/dev/x", true, HOST_CAP), ("/dev/y", true, CAP_FL1GP)],
        )
        .unwrap();
        assert!(c.nested && c.vtd.fl1gp && !c.vtd.fl5lp);
        let f = c.vtd.features();
        assert_eq!(f.cap() & (CAP_FL1GP | CAP_FL5LP), CAP_FL1GP);
        let c = choose_with("intel", &[("/dev/x", true, 0)]).unwrap();
        assert!(!c.vtd.fl1gp && !c.vtd.fl5lp);
    }

    #[test]
    fn nested_pasids_are_no_wider_than_the_host_s() {
        let c = choose_path("intel,pasid-bits=20", &[("/dev/x", true)]).unwrap();
        assert_eq!(c.vtd.pasid_bits, 20);
        let behind = |ecap| {
            vec![Behind {
                path: "/dev/x".into(),
                nesting: true,
                host_cap: Some(HOST_CAP),
                host_ecap: Some(ecap),
            }]
        };
        let narrow = viommu::intel::regs::ECAP_PASID | 7 << 35;
        let c = choose_viommu(
            parse_viommu("intel,pasid-bits=20").unwrap(),
            &behind(narrow),
        );
        assert_eq!(c.unwrap().vtd.pasid_bits, 8);
        let c = choose_viommu(parse_viommu("intel,pasid-bits=20").unwrap(), &behind(0));
        assert_eq!(c.unwrap().vtd.pasid_bits, 0, "a host without PASIDs");
        // The shadow path keeps the option (no PASID reaches the host).
        let c = choose_path("intel,pasid-bits=20,nested=off", &[("/dev/x", true)]).unwrap();
        assert_eq!(c.vtd.pasid_bits, 20);
    }
}
