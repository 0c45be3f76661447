//! I/O page-fault queues (IOMMU_FAULT_QUEUE_ALLOC).
//!
//! A nested HWPT allocated with a fault queue delivers the device's page
//! requests (PCI PRI, or the mock's injected faults) to userspace instead of
//! failing them: the VMM reads them as 40-byte `struct iommu_hwpt_pgfault`
//! records, forwards them to the guest's page request queue, and writes one
//! 8-byte `struct iommu_hwpt_page_response` per fault group once the guest
//! answers. Replacing or detaching the table answers pending groups with
//! INVALID on the kernel side, so a late response for such a group is
//! refused.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::sync::Arc;

use iommufd_bindings::iommufd::{
    iommu_fault_alloc, iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_LAST_PAGE as FLAG_LAST_PAGE,
    iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_PASID_VALID as FLAG_PASID_VALID,
    iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_EXEC as PERM_EXEC,
    iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_PRIV as PERM_PRIV,
    iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_READ as PERM_READ,
    iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_WRITE as PERM_WRITE,
    iommufd_page_response_code_IOMMUFD_PAGE_RESP_INVALID as RESP_INVALID,
    iommufd_page_response_code_IOMMUFD_PAGE_RESP_SUCCESS as RESP_SUCCESS,
    IOMMUFD_CMD_FAULT_QUEUE_ALLOC,
};

use super::{ErrorKind, Iommufd, IommufdError, Result};

const OP_ALLOC: &str = "IOMMU_FAULT_QUEUE_ALLOC";
const OP_READ: &str = "read fault queue";
const OP_WRITE: &str = "write fault queue";

/// Size of one `struct iommu_hwpt_pgfault` record.
pub const PAGE_FAULT_RECORD_SIZE: usize = 40;
/// Size of one `struct iommu_hwpt_page_response`.
const RESPONSE_SIZE: usize = 8;

/// Records per read at first; a fault group larger than this makes the
/// kernel refuse the read (EINVAL), and the buffer grows up to
/// `MAX_RECORDS_PER_READ`.
const FIRST_RECORDS_PER_READ: usize = 32;
const MAX_RECORDS_PER_READ: usize = 4096;
/// A bound on one `read_faults` call, so a device that faults without end
/// cannot keep the caller here.
const MAX_RECORDS_PER_CALL: usize = 16384;

/// One page request, as `struct iommu_hwpt_pgfault` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// `PASID_VALID` (bit 0), `LAST_PAGE` (bit 1); the kernel may set
    /// further bits (bit 2 marks a response that must carry the PASID).
    pub flags: u32,
    /// The iommufd device id (not the PCI requester id).
    pub dev_id: u32,
    pub pasid: u32,
    /// The page request group index.
    pub grpid: u32,
    /// `READ` 1, `WRITE` 2, `EXEC` 4, `PRIV` 8.
    pub perm: u32,
    pub addr: u64,
    /// A hint of how much the device wants (0 when unknown).
    pub length: u32,
    /// Identifies the fault group; echo it in the response.
    pub cookie: u32,
}

impl PageFault {
    pub const FLAG_PASID_VALID: u32 = FLAG_PASID_VALID;
    pub const FLAG_LAST_PAGE: u32 = FLAG_LAST_PAGE;
    pub const PERM_READ: u32 = PERM_READ;
    pub const PERM_WRITE: u32 = PERM_WRITE;
    pub const PERM_EXEC: u32 = PERM_EXEC;
    pub const PERM_PRIV: u32 = PERM_PRIV;

    /// Parses one 40-byte record (the kernel's native byte order).
    pub fn parse(record: &[u8; PAGE_FAULT_RECORD_SIZE]) -> Self {
        let u32_at =
            |o: usize| u32::from_ne_bytes([record[o], record[o + 1], record[o + 2], record[o + 3]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&record[24..32]);
        // Offset 20 is `__reserved`.
        PageFault {
            flags: u32_at(0),
            dev_id: u32_at(4),
            pasid: u32_at(8),
            grpid: u32_at(12),
            perm: u32_at(16),
            addr: u64::from_ne_bytes(addr),
            length: u32_at(32),
            cookie: u32_at(36),
        }
    }

    /// Parses a buffer of whole records; a trailing partial record is a
    /// protocol error (the kernel only hands out whole records).
    pub fn parse_records(buf: &[u8]) -> Result<Vec<Self>> {
        let records = buf.chunks_exact(PAGE_FAULT_RECORD_SIZE);
        if !records.remainder().is_empty() {
            return Err(IommufdError::rejected(
                OP_READ,
                ErrorKind::Protocol,
                format!(
                    "{} bytes is not a whole number of {PAGE_FAULT_RECORD_SIZE}-byte records",
                    buf.len()
                ),
            ));
        }
        Ok(records
            .filter_map(|r| <&[u8; PAGE_FAULT_RECORD_SIZE]>::try_from(r).ok())
            .map(Self::parse)
            .collect())
    }

    pub fn pasid_valid(&self) -> bool {
        self.flags & Self::FLAG_PASID_VALID != 0
    }

    /// The last request of its group: answer the group after this one.
    pub fn last_page(&self) -> bool {
        self.flags & Self::FLAG_LAST_PAGE != 0
    }

    pub fn read(&self) -> bool {
        self.perm & Self::PERM_READ != 0
    }

    pub fn write(&self) -> bool {
        self.perm & Self::PERM_WRITE != 0
    }

    pub fn exec(&self) -> bool {
        self.perm & Self::PERM_EXEC != 0
    }

    pub fn privileged(&self) -> bool {
        self.perm & Self::PERM_PRIV != 0
    }
}

/// The answer to a fault group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageResponseCode {
    /// The page is there now: the device retries.
    Success,
    /// The request cannot be served (also what a guest's "response
    /// failure" 0xf maps to): the device gives up on it.
    Invalid,
}

impl PageResponseCode {
    pub fn raw(self) -> u32 {
        match self {
            PageResponseCode::Success => RESP_SUCCESS,
            PageResponseCode::Invalid => RESP_INVALID,
        }
    }

    fn encode(self, cookie: u32) -> [u8; RESPONSE_SIZE] {
        let mut b = [0u8; RESPONSE_SIZE];
        b[..4].copy_from_slice(&cookie.to_ne_bytes());
        b[4..].copy_from_slice(&self.raw().to_ne_bytes());
        b
    }
}

/// A fault queue object and its file descriptor.
///
/// The open descriptor holds a reference on the object (and on the iommufd
/// context), so the object cannot be destroyed while it is open. Dropping a
/// `FaultQueue` closes the descriptor first and then destroys the object;
/// while a HWPT still uses it that destroy is refused and the object goes
/// away with the iommufd.
pub struct FaultQueue {
    id: u32,
    /// Closed in `drop`, before the object is destroyed.
    file: ManuallyDrop<File>,
    iommufd: Iommufd,
}

impl FaultQueue {
    /// The object id to pass as a HWPT's `fault_id`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads every pending fault without blocking (the kernel returns
    /// nothing when the queue is empty; poll the descriptor to wait).
    pub fn read_faults(&self) -> Result<Vec<PageFault>> {
        let mut faults = Vec::new();
        let mut records = FIRST_RECORDS_PER_READ;
        while faults.len() < MAX_RECORDS_PER_CALL {
            let mut buf = vec![0u8; records * PAGE_FAULT_RECORD_SIZE];
            let n = match (&*self.file).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The first pending group does not fit: read it with a
                // larger buffer.
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL) && records < MAX_RECORDS_PER_READ =>
                {
                    records = (records * 4).min(MAX_RECORDS_PER_READ);
                    continue;
                }
                Err(e) => return Err(IommufdError::from_io(OP_READ, e)),
            };
            if n == 0 {
                break;
            }
            faults.extend(PageFault::parse_records(&buf[..n])?);
        }
        Ok(faults)
    }

    /// Answers the fault group identified by `cookie`. A cookie the kernel
    /// does not know (never read, answered already, or auto-answered when
    /// the table was replaced) gives [`ErrorKind::InvalidArgument`].
    pub fn respond(&self, cookie: u32, code: PageResponseCode) -> Result<()> {
        self.respond_all(&[(cookie, code)])
    }

    /// Answers several groups with one write. On failure, the responses
    /// before the refused one have been delivered.
    pub fn respond_all(&self, responses: &[(u32, PageResponseCode)]) -> Result<()> {
        let buf: Vec<u8> = responses
            .iter()
            .flat_map(|(cookie, code)| code.encode(*cookie))
            .collect();
        let mut done = 0;
        while done < buf.len() {
            match (&*self.file).write(&buf[done..]) {
                Ok(0) => {
                    return Err(IommufdError::rejected(
                        OP_WRITE,
                        ErrorKind::Protocol,
                        "the kernel accepted no response",
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(IommufdError::from_io(OP_WRITE, e)),
            }
        }
        Ok(())
    }
}

impl AsRawFd for FaultQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for FaultQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl std::fmt::Debug for FaultQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultQueue")
            .field("id", &self.id)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl Drop for FaultQueue {
    fn drop(&mut self) {
        // SAFETY: `file` is dropped exactly once, here, and never used
        // after this line.
        unsafe { ManuallyDrop::drop(&mut self.file) };
        if let Err(e) = self.iommufd.destroy(self.id) {
            log::debug!("fault queue {}: {e}", self.id);
        }
    }
}

impl Iommufd {
    /// Allocates a fault queue.
    pub fn fault_queue_alloc(&self) -> Result<FaultQueue> {
        let mut arg = iommu_fault_alloc {
            size: size_of::<iommu_fault_alloc>() as u32,
            ..Default::default()
        };
        self.ioctl(OP_ALLOC, IOMMUFD_CMD_FAULT_QUEUE_ALLOC, &mut arg)?;
        let fd = arg.out_fault_fd as RawFd;
        if fd < 0 {
            return Err(IommufdError::rejected(
                OP_ALLOC,
                ErrorKind::Protocol,
                format!("the kernel returned fd {fd}"),
            ));
        }
        // SAFETY: the kernel just installed `fd` for us and nothing else
        // owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(FaultQueue {
            id: arg.out_fault_id,
            file: ManuallyDrop::new(file),
            iommufd: Iommufd::from_raw(Arc::clone(self.raw())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommufd_bindings::iommufd::{iommu_hwpt_page_response, iommu_hwpt_pgfault};
    use std::mem::offset_of;

    fn record(f: &iommu_hwpt_pgfault) -> [u8; PAGE_FAULT_RECORD_SIZE] {
        let mut b = [0u8; PAGE_FAULT_RECORD_SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(
            offset_of!(iommu_hwpt_pgfault, flags),
            &f.flags.to_ne_bytes(),
        );
        put(
            offset_of!(iommu_hwpt_pgfault, dev_id),
            &f.dev_id.to_ne_bytes(),
        );
        put(
            offset_of!(iommu_hwpt_pgfault, pasid),
            &f.pasid.to_ne_bytes(),
        );
        put(
            offset_of!(iommu_hwpt_pgfault, grpid),
            &f.grpid.to_ne_bytes(),
        );
        put(offset_of!(iommu_hwpt_pgfault, perm), &f.perm.to_ne_bytes());
        put(
            offset_of!(iommu_hwpt_pgfault, __reserved),
            &f.__reserved.to_ne_bytes(),
        );
        put(offset_of!(iommu_hwpt_pgfault, addr), &f.addr.to_ne_bytes());
        put(
            offset_of!(iommu_hwpt_pgfault, length),
            &f.length.to_ne_bytes(),
        );
        put(
            offset_of!(iommu_hwpt_pgfault, cookie),
            &f.cookie.to_ne_bytes(),
        );
        b
    }

    #[test]
    fn record_sizes_match_the_uapi() {
        assert_eq!(size_of::<iommu_hwpt_pgfault>(), PAGE_FAULT_RECORD_SIZE);
        assert_eq!(size_of::<iommu_hwpt_page_response>(), RESPONSE_SIZE);
    }

    #[test]
    fn parses_every_field() {
        let raw = iommu_hwpt_pgfault {
            flags: 3 | 1 << 2,
            dev_id: 7,
            pasid: 0x800,
            grpid: 2,
            perm: 1 | 2 | 4 | 8,
            __reserved: 0xffff_ffff,
            addr: 0xdead_b000,
            length: 0x2000,
            cookie: 42,
        };
        let f = PageFault::parse(&record(&raw));
        assert_eq!(f.flags, raw.flags);
        assert_eq!(f.dev_id, 7);
        assert_eq!(f.pasid, 0x800);
        assert_eq!(f.grpid, 2);
        assert_eq!(f.perm, 15);
        assert_eq!(f.addr, 0xdead_b000);
        assert_eq!(f.length, 0x2000);
        assert_eq!(f.cookie, 42);
        assert!(f.pasid_valid() && f.last_page());
        assert!(f.read() && f.write() && f.exec() && f.privileged());
    }

    #[test]
    fn parses_several_records_and_refuses_partial_ones() {
        let a = iommu_hwpt_pgfault {
            flags: 0,
            cookie: 1,
            perm: 1,
            ..Default::default()
        };
        let b = iommu_hwpt_pgfault {
            flags: 2,
            cookie: 1,
            perm: 2,
            addr: 0x1000,
            ..Default::default()
        };
        let mut buf = record(&a).to_vec();
        buf.extend_from_slice(&record(&b));
        let faults = PageFault::parse_records(&buf).expect("two records");
        assert_eq!(faults.len(), 2);
        assert!(!faults[0].last_page() && faults[0].read() && !faults[0].write());
        assert!(faults[1].last_page() && faults[1].write() && faults[1].addr == 0x1000);
        assert!(PageFault::parse_records(&[]).expect("empty").is_empty());
        let e = PageFault::parse_records(&buf[..41]).expect_err("partial");
        assert_eq!(e.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn response_encoding() {
        assert_eq!(PageResponseCode::Success.raw(), 0);
        assert_eq!(PageResponseCode::Invalid.raw(), 1);
        let b = PageResponseCode::Invalid.encode(0x1234);
        assert_eq!(
            b[offset_of!(iommu_hwpt_page_response, cookie)..][..4],
            0x1234u32.to_ne_bytes()
        );
        assert_eq!(
            b[offset_of!(iommu_hwpt_page_response, code)..][..4],
            1u32.to_ne_bytes()
        );
    }
}
