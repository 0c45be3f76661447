//! What the host IOMMU behind one device can do (IOMMU_GET_HW_INFO).
//!
//! The emulated IOMMU derives what it advertises to the guest from this:
//! the VT-d capability registers bound what a nested first stage may use,
//! `max_pasid_log2` and the PASID EXEC/PRIV capabilities decide the PASID
//! capability the VMM synthesizes for a passthrough device (vfio-pci hides
//! the real one). The answer is per device: two devices behind the same
//! IOMMU can differ in PASID width.

use iommufd_bindings::iommufd::{
    iommu_hw_info, iommu_hw_info__bindgen_ty_1, iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD,
    iommufd_hw_capabilities_IOMMU_HW_CAP_DIRTY_TRACKING as CAP_DIRTY_TRACKING,
    iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED as CAP_ATS_NOT_SUPPORTED,
    iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_EXEC as CAP_PASID_EXEC,
    iommufd_hw_capabilities_IOMMU_HW_CAP_PCI_PASID_PRIV as CAP_PASID_PRIV,
    iommufd_hw_info_flags_IOMMU_HW_INFO_FLAG_INPUT_TYPE as FLAG_INPUT_TYPE,
    IOMMUFD_CMD_GET_HW_INFO,
};

use super::{Iommufd, Result};

/// `IOMMU_HW_INFO_TYPE_INTEL_VTD`.
pub const HW_INFO_TYPE_INTEL_VTD: u32 = iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD;

/// `struct iommu_hw_info_vtd`: the host unit's capability registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VtdHwInfo {
    /// `IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17` (bit 0): the nest parent must
    /// stay writable, so read-only guest memory is DMA-writable.
    pub flags: u32,
    pub cap_reg: u64,
    pub ecap_reg: u64,
}

impl VtdHwInfo {
    /// Size of `struct iommu_hw_info_vtd`.
    pub const SIZE: usize = 24;

    /// Parses the vendor data of a type-1 answer; `None` if it is short.
    pub fn parse(data: &[u8]) -> Option<Self> {
        Some(VtdHwInfo {
            flags: u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?),
            cap_reg: u64::from_ne_bytes(data.get(8..16)?.try_into().ok()?),
            ecap_reg: u64::from_ne_bytes(data.get(16..24)?.try_into().ok()?),
        })
    }
}

/// What IOMMU_GET_HW_INFO said about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwInfo {
    /// `enum iommu_hw_info_type` (1 VT-d, 2 SMMUv3, the mock's 0xfeedbeef...).
    pub data_type: u32,
    /// The VT-d registers when `data_type` is VT-d.
    pub vtd: Option<VtdHwInfo>,
    /// log2 of the number of PASIDs the device may use (0: no PASID).
    pub max_pasid_log2: u8,
    /// `enum iommufd_hw_capabilities` bits.
    pub capabilities: u64,
    /// The vendor data as the kernel wrote it (at most what it reported).
    pub data: Vec<u8>,
}

impl HwInfo {
    /// The host can track DMA-dirty pages for this device.
    pub fn dirty_tracking(&self) -> bool {
        self.capabilities & u64::from(CAP_DIRTY_TRACKING) != 0
    }

    /// The device's PASID capability has Execute Permission enabled.
    pub fn pasid_exec(&self) -> bool {
        self.capabilities & u64::from(CAP_PASID_EXEC) != 0
    }

    /// The device's PASID capability has Privileged Mode enabled.
    pub fn pasid_priv(&self) -> bool {
        self.capabilities & u64::from(CAP_PASID_PRIV) != 0
    }

    /// ATS cannot be used for this device (the guest must not enable it).
    pub fn ats_not_supported(&self) -> bool {
        self.capabilities & u64::from(CAP_ATS_NOT_SUPPORTED) != 0
    }

    /// Builds the answer from the ioctl's output fields and the data buffer.
    fn from_raw(data_type: u32, max_pasid_log2: u8, capabilities: u64, data: Vec<u8>) -> Self {
        let vtd = if data_type == HW_INFO_TYPE_INTEL_VTD {
            VtdHwInfo::parse(&data)
        } else {
            None
        };
        HwInfo {
            data_type,
            vtd,
            max_pasid_log2,
            capabilities,
            data,
        }
    }
}

/// Larger than any vendor structure in the 7.2 uAPI (SMMUv3's is 40 bytes);
/// a newer kernel that reports more gets a second call with its size.
const FIRST_BUFFER: usize = 128;
/// A bound on what we accept to allocate for the vendor data.
const MAX_BUFFER: usize = 4096;

impl Iommufd {
    /// Asks about the IOMMU behind device `dev_id` (an iommufd device id:
    /// from VFIO_DEVICE_BIND_IOMMUFD, or a mock device's `idev_id`).
    pub fn hw_info(&self, dev_id: u32) -> Result<HwInfo> {
        self.get_hw_info(dev_id, None)
    }

    /// Like [`Iommufd::hw_info`], but asks for vendor data of `data_type`
    /// (IOMMU_HW_INFO_FLAG_INPUT_TYPE): for IOMMUs that can report more than
    /// one type. A type the IOMMU does not have gives
    /// [`super::ErrorKind::Unsupported`].
    pub fn hw_info_of_type(&self, dev_id: u32, data_type: u32) -> Result<HwInfo> {
        self.get_hw_info(dev_id, Some(data_type))
    }

    fn get_hw_info(&self, dev_id: u32, data_type: Option<u32>) -> Result<HwInfo> {
        let mut len = FIRST_BUFFER;
        loop {
            // u64 elements keep the buffer aligned for the vendor structs.
            let mut buf = vec![0u64; len.div_ceil(8)];
            let mut arg = iommu_hw_info {
                size: size_of::<iommu_hw_info>() as u32,
                flags: if data_type.is_some() {
                    FLAG_INPUT_TYPE
                } else {
                    0
                },
                dev_id,
                data_len: len as u32,
                data_uptr: buf.as_mut_ptr() as u64,
                __bindgen_anon_1: iommu_hw_info__bindgen_ty_1 {
                    in_data_type: data_type.unwrap_or(0),
                },
                ..Default::default()
            };
            self.ioctl("IOMMU_GET_HW_INFO", IOMMUFD_CMD_GET_HW_INFO, &mut arg)?;
            let reported = arg.data_len as usize;
            if reported > len && reported <= MAX_BUFFER {
                len = reported;
                continue;
            }
            let mut data: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
            data.truncate(reported.min(len));
            // SAFETY: both union members are a u32; the kernel wrote the
            // output one.
            let out_type = unsafe { arg.__bindgen_anon_1.out_data_type };
            return Ok(HwInfo::from_raw(
                out_type,
                arg.out_max_pasid_log2,
                arg.out_capabilities,
                data,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommufd_bindings::iommufd::iommu_hw_info_vtd;

    #[test]
    fn vtd_parse_matches_the_uapi_layout() {
        assert_eq!(size_of::<iommu_hw_info_vtd>(), VtdHwInfo::SIZE);
        let raw = iommu_hw_info_vtd {
            flags: 1,
            __reserved: 0,
            cap_reg: 0x1d2008c222f0606,
            ecap_reg: 0x890000f00f4a,
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&raw.flags.to_ne_bytes());
        bytes.extend_from_slice(&raw.__reserved.to_ne_bytes());
        bytes.extend_from_slice(&raw.cap_reg.to_ne_bytes());
        bytes.extend_from_slice(&raw.ecap_reg.to_ne_bytes());
        let v = VtdHwInfo::parse(&bytes).expect("24 bytes");
        assert_eq!(v.flags, 1);
        assert_eq!(v.cap_reg, raw.cap_reg);
        assert_eq!(v.ecap_reg, raw.ecap_reg);
        assert_eq!(VtdHwInfo::parse(&bytes[..23]), None);
    }

    #[test]
    fn capability_bits() {
        let info = HwInfo::from_raw(1, 20, 0b1011, vec![0; 24]);
        assert!(info.dirty_tracking());
        assert!(info.pasid_exec());
        assert!(!info.pasid_priv());
        assert!(info.ats_not_supported());
        assert!(info.vtd.is_some());
        let info = HwInfo::from_raw(0xfeed_beef, 0, 0b0100, vec![0; 8]);
        assert!(info.pasid_priv());
        assert!(!info.dirty_tracking());
        assert_eq!(info.vtd, None);
    }
}
