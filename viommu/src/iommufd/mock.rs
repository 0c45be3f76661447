//! The kernel's iommufd mock (CONFIG_IOMMUFD_TEST): **a test-only kernel
//! interface**, never present on production kernels.
//!
//! With CONFIG_IOMMUFD_TEST, `/dev/iommu` accepts one more ioctl,
//! IOMMU_TEST_CMD (`_IO(';', 0xa0)`), whose operations create mock devices
//! behind a mock IOMMU driver, attach and replace their page tables, inject
//! I/O page faults and inspect the mock driver's state (its page table, its
//! nested IOTLB). The kernel's own selftests
//! (tools/testing/selftests/iommu) drive the generic iommufd code through
//! it; this module lets our iommufd layer be tested the same way, against
//! the real kernel, with no IOMMU hardware.
//!
//! The command layout and constants are those documented in the kernel's
//! drivers/iommu/iommufd/iommufd_test.h (Linux 7.2). That header is not a
//! uAPI header and may change between kernel versions; nothing outside
//! tests should use this module. Mock devices are not VFIO devices and the
//! mock driver has no vendor payloads: it exercises object lifecycles, the
//! ABI, error paths and the fault queue, not VT-d or SMMUv3 page tables.

use iommufd_bindings::iommufd::IOMMUFD_CMD_BASE;

use super::{ErrorKind, Iommufd, IommufdError, Result};

/// IOMMU_TEST_CMD's command number (`IOMMUFD_CMD_BASE + 32`).
pub const IOMMU_TEST_CMD_NR: u32 = IOMMUFD_CMD_BASE + 32;

/// `IOMMU_HW_INFO_TYPE_SELFTEST`: the mock's IOMMU_GET_HW_INFO type.
pub const HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// `IOMMU_HW_INFO_SELFTEST_REGVAL`: `test_reg` of `struct iommu_test_hw_info`.
pub const HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;
/// `IOMMU_HWPT_DATA_SELFTEST`: the mock's nested HWPT data type.
pub const HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`.
pub const HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID`: a type the mock refuses.
pub const HWPT_INVALIDATE_DATA_SELFTEST_INVALID: u32 = 0x0dad_beef;
/// `IOMMU_TEST_IOTLB_DEFAULT`: a conventional initial IOTLB value.
pub const IOTLB_DEFAULT: u32 = 0x0bad_beef;
/// `MOCK_NESTED_DOMAIN_IOTLB_NUM`: IOTLB entries of a mock nested table.
pub const NESTED_IOTLB_NUM: u32 = 4;
/// `MOCK_APERTURE_START`/`_LAST`: the IOVAs a mock paging table translates.
pub const APERTURE_START: u64 = 1 << 24;
pub const APERTURE_LAST: u64 = (1 << 31) - 1;
/// `MOCK_PAGE_SIZE`: the mock page table's smallest page.
pub const PAGE_SIZE: u64 = 2048;
/// `MOCK_PASID_WIDTH`: PASID bits of a mock device made with
/// [`MockDeviceFlags::pasid`].
pub const PASID_WIDTH: u8 = 20;
/// `IOMMU_TEST_PASID_RESERVED`: the mock fails every second attach or
/// replace of this PASID with ENOMEM, to test the core's rollback.
pub const PASID_FAKE_ERROR: u32 = 1024;

/// `IOMMU_TEST_OP_*` (the order of the enum in iommufd_test.h).
pub mod op {
    pub const ADD_RESERVED: u32 = 1;
    pub const MOCK_DOMAIN: u32 = 2;
    pub const MD_CHECK_MAP: u32 = 3;
    pub const MD_CHECK_REFS: u32 = 4;
    pub const CREATE_ACCESS: u32 = 5;
    pub const DESTROY_ACCESS_PAGES: u32 = 6;
    pub const ACCESS_PAGES: u32 = 7;
    pub const ACCESS_RW: u32 = 8;
    pub const SET_TEMP_MEMORY_LIMIT: u32 = 9;
    pub const MOCK_DOMAIN_REPLACE: u32 = 10;
    pub const ACCESS_REPLACE_IOAS: u32 = 11;
    pub const MOCK_DOMAIN_FLAGS: u32 = 12;
    pub const DIRTY: u32 = 13;
    pub const MD_CHECK_IOTLB: u32 = 14;
    pub const TRIGGER_IOPF: u32 = 15;
    pub const DEV_CHECK_CACHE: u32 = 16;
    pub const TRIGGER_VEVENT: u32 = 17;
    pub const PASID_ATTACH: u32 = 18;
    pub const PASID_REPLACE: u32 = 19;
    pub const PASID_DETACH: u32 = 20;
    pub const PASID_CHECK_HWPT: u32 = 21;
}

/// The error-message name of each operation.
fn op_name(op: u32) -> &'static str {
    match op {
        op::ADD_RESERVED => "IOMMU_TEST_CMD(ADD_RESERVED)",
        op::MOCK_DOMAIN => "IOMMU_TEST_CMD(MOCK_DOMAIN)",
        op::MD_CHECK_MAP => "IOMMU_TEST_CMD(MD_CHECK_MAP)",
        op::MOCK_DOMAIN_REPLACE => "IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE)",
        op::MOCK_DOMAIN_FLAGS => "IOMMU_TEST_CMD(MOCK_DOMAIN_FLAGS)",
        op::MD_CHECK_IOTLB => "IOMMU_TEST_CMD(MD_CHECK_IOTLB)",
        op::TRIGGER_IOPF => "IOMMU_TEST_CMD(TRIGGER_IOPF)",
        op::PASID_ATTACH => "IOMMU_TEST_CMD(PASID_ATTACH)",
        op::PASID_REPLACE => "IOMMU_TEST_CMD(PASID_REPLACE)",
        op::PASID_DETACH => "IOMMU_TEST_CMD(PASID_DETACH)",
        op::PASID_CHECK_HWPT => "IOMMU_TEST_CMD(PASID_CHECK_HWPT)",
        _ => "IOMMU_TEST_CMD",
    }
}

/// Size of the payload union of `struct iommu_test_cmd` (its largest
/// member, `dirty`, is 48 bytes).
const PAYLOAD_SIZE: usize = 48;

/// `struct iommu_test_cmd`: `{size, op, id, __reserved}`, a 48-byte union
/// of per-operation payloads at offset 16, and `last` at offset 64 (the
/// member the kernel's minimum size ends with); 72 bytes with padding.
///
/// The payload is kept as bytes and written at the documented offsets of
/// each operation's union member, so no Rust union is needed.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestCmd {
    pub size: u32,
    pub op: u32,
    /// The object the operation is about (an IOAS, HWPT or mock device id).
    pub id: u32,
    reserved: u32,
    payload: [u8; PAYLOAD_SIZE],
    last: u32,
    pad: u32,
}

impl TestCmd {
    /// `sizeof(struct iommu_test_cmd)`.
    pub const SIZE: u32 = 72;
    /// The kernel's minimum size: `offsetofend(struct iommu_test_cmd, last)`.
    pub const MIN_SIZE: u32 = 68;

    pub fn new(op: u32, id: u32) -> Self {
        TestCmd {
            size: Self::SIZE,
            op,
            id,
            reserved: 0,
            payload: [0; PAYLOAD_SIZE],
            last: 0,
            pad: 0,
        }
    }

    /// Writes `v` at byte `off` of the payload union.
    pub fn put_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.payload[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn put_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.payload[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    /// Reads the `u32` at byte `off` of the payload union.
    pub fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.payload[off..off + 4]);
        u32::from_ne_bytes(b)
    }

    /// The command as the bytes the kernel reads.
    fn to_bytes(self) -> [u8; Self::SIZE as usize] {
        let mut b = [0u8; Self::SIZE as usize];
        b[0..4].copy_from_slice(&self.size.to_ne_bytes());
        b[4..8].copy_from_slice(&self.op.to_ne_bytes());
        b[8..12].copy_from_slice(&self.id.to_ne_bytes());
        b[12..16].copy_from_slice(&self.reserved.to_ne_bytes());
        b[16..64].copy_from_slice(&self.payload);
        b[64..68].copy_from_slice(&self.last.to_ne_bytes());
        b
    }
}

const _: () = assert!(size_of::<TestCmd>() == TestCmd::SIZE as usize);

/// Flags of a mock device (`MOCK_FLAGS_DEVICE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MockDeviceFlags {
    /// `MOCK_FLAGS_DEVICE_NO_DIRTY`: the device refuses dirty tracking.
    pub no_dirty: bool,
    /// `MOCK_FLAGS_DEVICE_PASID`: the device has 20 PASID bits.
    pub pasid: bool,
}

impl MockDeviceFlags {
    fn bits(self) -> u32 {
        (if self.no_dirty { 1 << 0 } else { 0 }) | (if self.pasid { 1 << 2 } else { 0 })
    }
}

/// A mock device made by MOCK_DOMAIN(_FLAGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockDevice {
    /// The selftest object: destroy it to remove the device; the PASID and
    /// replace operations take it.
    pub stdev_id: u32,
    /// The HWPT the device was attached to (an automatic paging table when
    /// created on an IOAS).
    pub hwpt_id: u32,
    /// The iommufd device id: what IOMMU_GET_HW_INFO and IOMMU_HWPT_ALLOC
    /// take as `dev_id`.
    pub idev_id: u32,
}

/// A page request to inject (IOMMU_TEST_OP_TRIGGER_IOPF). The mock always
/// marks it as the last of its group, and as PASID-tagged when `pasid` is
/// not 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Iopf {
    pub dev_id: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub addr: u64,
}

/// The mock behind one iommufd.
#[derive(Debug, Clone)]
pub struct MockIommu {
    iommufd: Iommufd,
}

impl MockIommu {
    /// The mock of `iommufd`'s kernel, or `None` if the kernel was built
    /// without CONFIG_IOMMUFD_TEST.
    ///
    /// Probes with an operation number the mock does not have: a kernel
    /// with the mock answers EOPNOTSUPP, one without has no such ioctl
    /// (ENOTTY).
    pub fn probe(iommufd: &Iommufd) -> Result<Option<Self>> {
        let mock = MockIommu {
            iommufd: iommufd.clone(),
        };
        match mock.cmd(&mut TestCmd::new(0, 0)) {
            Ok(()) => Ok(Some(mock)),
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(Some(mock)),
            Err(e) if e.kind() == ErrorKind::NotImplemented => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Issues one IOMMU_TEST_CMD as it is.
    pub fn cmd(&self, cmd: &mut TestCmd) -> Result<()> {
        self.iommufd.ioctl(op_name(cmd.op), IOMMU_TEST_CMD_NR, cmd)
    }

    /// Issues `cmd` claiming to be `size` bytes long (at most 256), with
    /// every byte past the real structure set to `tail`: for testing how
    /// the kernel treats wrong sizes. The kernel reads `size` bytes, all
    /// from a buffer this function owns.
    pub fn cmd_with_size(&self, cmd: &TestCmd, size: u32, tail: u8) -> Result<()> {
        const BUF: usize = 256;
        if size < 4 || size as usize > BUF {
            return Err(IommufdError::rejected(
                op_name(cmd.op),
                ErrorKind::InvalidArgument,
                format!("size {size} outside 4..={BUF}"),
            ));
        }
        // u64 elements: the kernel's copy does not need alignment, but the
        // structure prefers it.
        let mut buf = [0u64; BUF / 8];
        let mut bytes = [tail; BUF];
        bytes[..TestCmd::SIZE as usize].copy_from_slice(&cmd.to_bytes());
        bytes[0..4].copy_from_slice(&size.to_ne_bytes());
        for (w, chunk) in buf.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        self.iommufd
            .ioctl(op_name(cmd.op), IOMMU_TEST_CMD_NR, &mut buf)
    }

    /// Creates a mock device attached to `pt_id` (an IOAS, which gets an
    /// automatic mock paging table, or a HWPT).
    pub fn add_device(&self, pt_id: u32, flags: MockDeviceFlags) -> Result<MockDevice> {
        // Without flags, use the original operation: both are supported.
        let bits = flags.bits();
        let mut c = if bits == 0 {
            TestCmd::new(op::MOCK_DOMAIN, pt_id)
        } else {
            let mut c = TestCmd::new(op::MOCK_DOMAIN_FLAGS, pt_id);
            c.put_u32(12, bits);
            c
        };
        self.cmd(&mut c)?;
        Ok(MockDevice {
            stdev_id: c.get_u32(0),
            hwpt_id: c.get_u32(4),
            idev_id: c.get_u32(8),
        })
    }

    /// Moves mock device `stdev_id` (its RID) to `pt_id`; returns the HWPT
    /// it is attached to now.
    pub fn replace(&self, stdev_id: u32, pt_id: u32) -> Result<u32> {
        let mut c = TestCmd::new(op::MOCK_DOMAIN_REPLACE, stdev_id);
        c.put_u32(0, pt_id);
        self.cmd(&mut c)?;
        Ok(c.get_u32(0))
    }

    /// Reserves `[start, start + len)` of `ioas` as the mock's own reserved
    /// region.
    pub fn add_reserved(&self, ioas: u32, start: u64, len: u64) -> Result<()> {
        let mut c = TestCmd::new(op::ADD_RESERVED, ioas);
        c.put_u64(0, start).put_u64(8, len);
        self.cmd(&mut c)
    }

    /// Checks that the mock paging HWPT `hwpt_id` translates
    /// `[iova, iova + len)` to the pages behind `user_va` in this process.
    /// A mismatch (or nothing mapped) gives [`ErrorKind::InvalidArgument`].
    pub fn check_map(&self, hwpt_id: u32, iova: u64, len: u64, user_va: u64) -> Result<()> {
        let mut c = TestCmd::new(op::MD_CHECK_MAP, hwpt_id);
        c.put_u64(0, iova).put_u64(8, len).put_u64(16, user_va);
        self.cmd(&mut c)
    }

    /// Checks that entry `iotlb_id` of the mock nested HWPT `hwpt_id` holds
    /// `value` (0 once invalidated); a mismatch gives InvalidArgument.
    pub fn check_iotlb(&self, hwpt_id: u32, iotlb_id: u32, value: u32) -> Result<()> {
        let mut c = TestCmd::new(op::MD_CHECK_IOTLB, hwpt_id);
        c.put_u32(0, iotlb_id).put_u32(4, value);
        self.cmd(&mut c)
    }

    /// Injects a page request from mock device `iopf.dev_id` (an idev id).
    pub fn trigger_iopf(&self, iopf: &Iopf) -> Result<()> {
        let mut c = TestCmd::new(op::TRIGGER_IOPF, 0);
        c.put_u32(0, iopf.dev_id)
            .put_u32(4, iopf.pasid)
            .put_u32(8, iopf.grpid)
            .put_u32(12, iopf.perm)
            .put_u64(16, iopf.addr);
        self.cmd(&mut c)
    }

    /// Attaches `pasid` of mock device `stdev_id` to `pt_id`; returns the
    /// HWPT attached. A PASID already attached gives [`ErrorKind::Busy`].
    pub fn pasid_attach(&self, stdev_id: u32, pasid: u32, pt_id: u32) -> Result<u32> {
        self.pasid_op(op::PASID_ATTACH, stdev_id, pasid, pt_id)
    }

    /// Replaces what `pasid` of `stdev_id` is attached to with `pt_id`.
    pub fn pasid_replace(&self, stdev_id: u32, pasid: u32, pt_id: u32) -> Result<u32> {
        self.pasid_op(op::PASID_REPLACE, stdev_id, pasid, pt_id)
    }

    /// Detaches `pasid` of `stdev_id` (succeeds when nothing is attached).
    pub fn pasid_detach(&self, stdev_id: u32, pasid: u32) -> Result<()> {
        let mut c = TestCmd::new(op::PASID_DETACH, stdev_id);
        c.put_u32(0, pasid);
        self.cmd(&mut c)
    }

    /// Checks that `pasid` of `stdev_id` is attached to `hwpt_id` (0: that
    /// it is detached); a mismatch gives InvalidArgument.
    pub fn pasid_check_hwpt(&self, stdev_id: u32, pasid: u32, hwpt_id: u32) -> Result<()> {
        let mut c = TestCmd::new(op::PASID_CHECK_HWPT, stdev_id);
        c.put_u32(0, pasid).put_u32(4, hwpt_id);
        self.cmd(&mut c)
    }

    fn pasid_op(&self, op: u32, stdev_id: u32, pasid: u32, pt_id: u32) -> Result<u32> {
        let mut c = TestCmd::new(op, stdev_id);
        c.put_u32(0, pasid).put_u32(4, pt_id);
        self.cmd(&mut c)?;
        Ok(c.get_u32(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_layout() {
        assert_eq!(size_of::<TestCmd>(), 72);
        assert_eq!(align_of::<TestCmd>(), 8);
        assert_eq!(std::mem::offset_of!(TestCmd, payload), 16);
        assert_eq!(std::mem::offset_of!(TestCmd, last), 64);
        assert_eq!(
            TestCmd::MIN_SIZE as usize,
            std::mem::offset_of!(TestCmd, last) + 4
        );
        let mut c = TestCmd::new(op::TRIGGER_IOPF, 9);
        c.put_u32(0, 1).put_u64(16, 0xdead_beaf);
        let b = c.to_bytes();
        assert_eq!(&b[0..4], &72u32.to_ne_bytes());
        assert_eq!(&b[4..8], &15u32.to_ne_bytes());
        assert_eq!(&b[8..12], &9u32.to_ne_bytes());
        assert_eq!(&b[16..20], &1u32.to_ne_bytes());
        assert_eq!(&b[32..40], &0xdead_beafu64.to_ne_bytes());
        assert_eq!(c.get_u32(0), 1);
    }

    #[test]
    fn device_flags() {
        assert_eq!(MockDeviceFlags::default().bits(), 0);
        let f = MockDeviceFlags {
            no_dirty: true,
            pasid: true,
        };
        assert_eq!(f.bits(), 0b101);
    }

    #[test]
    fn constants_match_the_header() {
        assert_eq!(IOMMU_TEST_CMD_NR, 0xa0);
        assert_eq!(op::PASID_CHECK_HWPT, 21);
        assert_eq!(op::TRIGGER_IOPF, 15);
        assert_eq!(op::MOCK_DOMAIN_FLAGS, 12);
        assert_eq!(APERTURE_LAST + 1, 2 << 30);
    }
}
