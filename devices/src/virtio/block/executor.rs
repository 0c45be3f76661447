//! Executing virtio-blk requests against a backing file.
//!
//! Data moves between the file and guest memory without a bounce buffer: the
//! data segments are translated once into host `VolatileSlice`s (through the
//! device's `GuestMemory`, i.e. through the IOMMU when there is one) and the
//! whole request becomes a single `preadv`/`pwritev` on the file (more only
//! for short transfers or more than `IOV_MAX` pieces). A 1 MiB guest request
//! made of 256 scattered pages is thus one system call and one copy, which is
//! what keeps sequential guest I/O close to host speed.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::Deref;
use std::os::fd::AsRawFd;

use log::debug;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::{Bitmap, BS};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};

use super::request::{Request, RequestError, RequestType};
use super::{ID_BYTES, SECTOR_SHIFT, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use crate::{guest_warn, host_log};

/// The most iovecs one `preadv`/`pwritev` accepts on Linux.
const IOV_MAX: usize = 1024;

/// How a request ended, as seen by the queue handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The status byte written to the driver (`VIRTIO_BLK_S_*`).
    pub status: u8,
    /// Bytes written into device-writable buffers, status byte included:
    /// the `len` to put in the used ring element. A failed IN reports 1
    /// even if the kernel filled part of the buffers: the spec only forbids
    /// over-reporting (§2.7.8.1), and the data is not valid anyway.
    pub used_len: u32,
}

/// A chain that could not be completed at all: no status byte could be
/// written, so the driver cannot be told about the failure.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("malformed request without a usable status descriptor: {0}")]
    NoStatus(RequestError),
    #[error("cannot write the status byte at {addr:#x}: {reason}")]
    StatusFault { addr: u64, reason: String },
}

/// Why a well-formed request failed; reported to the driver as IOERR and
/// only logged here.
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("host I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("the disk is read-only")]
    ReadOnly,
}

/// A disk image backing one virtio-blk device.
#[derive(Debug)]
pub struct Disk {
    file: File,
    read_only: bool,
    size: u64,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// `size` is the disk size in bytes; the device exposes
    /// `size / 512` sectors (a partial last sector is not addressable).
    pub fn new(file: File, read_only: bool, size: u64) -> Self {
        Disk {
            file,
            read_only,
            size,
            id: [0; ID_BYTES],
        }
    }

    /// Like [`Disk::new`], with the size taken from the file. Seeking to the
    /// end works for block devices too, where `metadata().len()` is 0.
    pub fn from_file(mut file: File, read_only: bool) -> io::Result<Self> {
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self::new(file, read_only, size))
    }

    /// Sets the GET_ID identifier: truncated to 20 bytes, zero padded (a
    /// 20-byte id has no terminating NUL, as the spec allows).
    pub fn with_id(mut self, id: &[u8]) -> Self {
        self.id = [0; ID_BYTES];
        for (dst, src) in self.id.iter_mut().zip(id) {
            *dst = *src;
        }
        self
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Size in bytes, as given.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors: the config space `capacity`.
    pub fn capacity(&self) -> u64 {
        self.size >> SECTOR_SHIFT
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Parses and executes one chain, using the chain's memory object for
    /// every access.
    ///
    /// Contract with the queue handler:
    /// - `Ok(c)`: the driver has been answered through the status byte
    ///   (`OK`, `IOERR` for a malformed request, a host I/O error or a DMA
    ///   fault, `UNSUPP` for unknown types). Put the chain on the used ring
    ///   with `c.used_len` and notify as usual.
    /// - `Err(_)`: the chain has no usable status byte (the last descriptor
    ///   is missing, not device-writable or empty, or the write to it
    ///   faulted), so nothing could be reported. The request may or may not
    ///   have been carried out. This is a driver bug; the caller decides
    ///   between returning the chain with length 0 and setting
    ///   `DEVICE_NEEDS_RESET`.
    pub fn process<M>(&self, chain: &mut DescriptorChain<M>) -> Result<Completion, ProcessError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        match Request::parse(chain, self.capacity()) {
            Ok(request) => self.execute(chain.memory(), &request),
            Err(e) => {
                guest_warn!("virtio-blk: {e}");
                match e.status_addr {
                    Some(addr) => {
                        write_status(chain.memory(), addr, VIRTIO_BLK_S_IOERR)?;
                        Ok(Completion {
                            status: VIRTIO_BLK_S_IOERR,
                            used_len: 1,
                        })
                    }
                    None => Err(ProcessError::NoStatus(e.error)),
                }
            }
        }
    }

    /// Executes a parsed request and writes its status byte. Same contract
    /// as [`Disk::process`]; `Err` only when the status byte cannot be
    /// written.
    pub fn execute<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        req: &Request,
    ) -> Result<Completion, ProcessError> {
        let result = match req.kind {
            RequestType::In => self.read(mem, req),
            RequestType::Out => self.write(mem, req).map(|()| 0),
            RequestType::Flush => self.flush().map(|()| 0),
            RequestType::GetId => self.get_id(mem, req),
            RequestType::Unsupported(t) => {
                debug!("virtio-blk: unsupported request type {t}");
                write_status(mem, req.status_addr, VIRTIO_BLK_S_UNSUPP)?;
                return Ok(Completion {
                    status: VIRTIO_BLK_S_UNSUPP,
                    used_len: 1,
                });
            }
        };
        let (status, written) = match result {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(e) => {
                match &e {
                    // The host's failure, which the guest can retry at will.
                    ExecError::Io(_) => {
                        host_log!(log::Level::Error, "virtio-blk: {:?} failed: {e}", req.kind)
                    }
                    // A DMA fault or a write to a read-only disk.
                    _ => guest_warn!("virtio-blk: {:?} failed: {e}", req.kind),
                }
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        write_status(mem, req.status_addr, status)?;
        Ok(Completion {
            status,
            used_len: written.saturating_add(1),
        })
    }

    /// IN: file -> guest. Returns the bytes transferred.
    fn read<M: GuestMemory + ?Sized>(&self, mem: &M, req: &Request) -> Result<u32, ExecError> {
        let offset = req.disk_offset(self.capacity())?;
        let slices = translate(mem, &req.data, Permissions::Write)?;
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .filter(|g| g.len() > 0)
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: every iovec describes guest memory that stays mapped while
        // `guards` (and the memory object borrowed by `slices`) are alive,
        // which covers the whole call; the kernel writes through raw
        // pointers, so overlapping guest buffers are not a Rust aliasing
        // problem.
        let result = unsafe { transfer(&self.file, offset, &mut iovs, Direction::Read) };
        // The kernel may have written part of it even on error.
        for s in &slices {
            s.bitmap().mark_dirty(0, s.len());
        }
        result?;
        Ok(data_len_u32(req))
    }

    /// OUT: guest -> file.
    fn write<M: GuestMemory + ?Sized>(&self, mem: &M, req: &Request) -> Result<(), ExecError> {
        if self.read_only {
            return Err(ExecError::ReadOnly);
        }
        let offset = req.disk_offset(self.capacity())?;
        let slices = translate(mem, &req.data, Permissions::Read)?;
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .filter(|g| g.len() > 0)
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: as in `read`; with `Direction::Write` the kernel only reads
        // through the iovecs.
        unsafe { transfer(&self.file, offset, &mut iovs, Direction::Write) }?;
        Ok(())
    }

    fn flush(&self) -> Result<(), ExecError> {
        // Nothing can be dirty on a read-only disk (and the fd may be
        // O_RDONLY); report success as a plain disk would.
        if !self.read_only {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// GET_ID: copies the id into the buffer, truncated to its size.
    fn get_id<M: GuestMemory + ?Sized>(&self, mem: &M, req: &Request) -> Result<u32, ExecError> {
        let mut src: &[u8] = &self.id;
        let mut written = 0u32;
        for &(addr, len) in &req.data {
            if src.is_empty() {
                break;
            }
            let n = src.len().min(len as usize);
            let (chunk, tail) = src.split_at(n);
            mem.write_slice(chunk, addr)
                .map_err(|e| RequestError::DmaFault {
                    addr: addr.0,
                    len: n as u64,
                    reason: e.to_string(),
                })?;
            src = tail;
            // n <= ID_BYTES, so neither conversion nor sum can overflow.
            written = written.saturating_add(n as u32);
        }
        Ok(written)
    }
}

/// Data length as a used-ring length. A chain cannot carry more than
/// 2^32 - 1 bytes (virtio-queue stops the chain otherwise); saturate anyway.
fn data_len_u32(req: &Request) -> u32 {
    u32::try_from(req.data_len()).unwrap_or(u32::MAX)
}

fn write_status<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    status: u8,
) -> Result<(), ProcessError> {
    mem.write_slice(&[status], addr)
        .map_err(|e| ProcessError::StatusFault {
            addr: addr.0,
            reason: e.to_string(),
        })
}

/// Translates the data segments into host slices, in order. Any segment that
/// is not fully accessible with `access` is a DMA fault.
fn translate<'a, M: GuestMemory + ?Sized>(
    mem: &'a M,
    data: &[(GuestAddress, u32)],
    access: Permissions,
) -> Result<Vec<VolatileSlice<'a, BS<'a, M::Bitmap>>>, RequestError> {
    let mut slices = Vec::with_capacity(data.len());
    for &(addr, len) in data {
        let len = len as usize;
        let to_fault = |e: vm_memory::GuestMemoryError| RequestError::DmaFault {
            addr: addr.0,
            len: len as u64,
            reason: e.to_string(),
        };
        let mut covered = 0usize;
        for slice in mem.get_slices(addr, len, access).map_err(to_fault)? {
            let slice = slice.map_err(to_fault)?;
            covered = covered.saturating_add(slice.len());
            slices.push(slice);
        }
        if covered != len {
            return Err(RequestError::DmaFault {
                addr: addr.0,
                len: len as u64,
                reason: format!("only {covered} bytes are accessible"),
            });
        }
    }
    Ok(slices)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Moves all bytes described by `iovs` between the file at `offset` and
/// memory, retrying short transfers and EINTR. `iovs` is consumed (its
/// entries are advanced in place).
///
/// # Safety
///
/// Every iovec must describe memory valid for the whole call: writable for
/// `Direction::Read`, readable for `Direction::Write`.
unsafe fn transfer(
    file: &File,
    mut offset: u64,
    iovs: &mut [libc::iovec],
    dir: Direction,
) -> io::Result<()> {
    // Index of the first iovec not yet fully transferred.
    let mut start = 0usize;
    loop {
        let pending = iovs.get(start..).unwrap_or_default();
        if pending.is_empty() {
            return Ok(());
        }
        let batch = pending.len().min(IOV_MAX);
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // batch <= IOV_MAX fits a c_int.
        let cnt = batch as libc::c_int;
        let fd = file.as_raw_fd();
        let ret = match dir {
            // SAFETY: the fd is valid for the life of `file`; the first
            // `batch` iovecs of `pending` are valid per the caller's contract.
            Direction::Read => unsafe { libc::preadv(fd, pending.as_ptr(), cnt, off) },
            // SAFETY: as above.
            Direction::Write => unsafe { libc::pwritev(fd, pending.as_ptr(), cnt, off) },
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut done = usize::try_from(ret).unwrap_or(0);
        if done == 0 {
            return Err(match dir {
                Direction::Read => io::Error::from(io::ErrorKind::UnexpectedEof),
                Direction::Write => io::Error::from(io::ErrorKind::WriteZero),
            });
        }
        offset = offset
            .checked_add(done as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // Skip the fully transferred iovecs and trim the partial one.
        while done > 0 {
            let Some(first) = iovs.get_mut(start) else {
                break;
            };
            if done >= first.iov_len {
                done -= first.iov_len;
                start = start.saturating_add(1);
            } else {
                first.iov_base = first.iov_base.cast::<u8>().wrapping_add(done).cast();
                first.iov_len -= done;
                done = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vmm_sys_util::tempfile::TempFile;

    fn iovecs(buf: &mut [u8], piece: usize) -> Vec<libc::iovec> {
        buf.chunks_mut(piece)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: c.len(),
            })
            .collect()
    }

    #[test]
    fn transfer_handles_more_than_iov_max_pieces() {
        let f = TempFile::new().unwrap();
        let mut src: Vec<u8> = (0..3 * IOV_MAX * 7).map(|i| (i % 241) as u8).collect();
        let mut iovs = iovecs(&mut src, 7);
        assert!(iovs.len() > IOV_MAX);
        // SAFETY: the iovecs point into `src`, alive and unaliased meanwhile.
        unsafe { transfer(f.as_file(), 100, &mut iovs, Direction::Write) }.unwrap();
        let mut back = vec![0u8; src.len()];
        f.as_file().read_exact_at(&mut back, 100).unwrap();
        assert_eq!(back, src);

        let mut dst = vec![0u8; src.len()];
        let mut iovs = iovecs(&mut dst, 5);
        // SAFETY: as above, for `dst`.
        unsafe { transfer(f.as_file(), 100, &mut iovs, Direction::Read) }.unwrap();
        assert_eq!(dst, src);

        // Reading past the end of the file is an error, not a hang.
        let mut iovs = iovecs(&mut dst, 5);
        // SAFETY: as above.
        let e = unsafe { transfer(f.as_file(), 200, &mut iovs, Direction::Read) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
