//! Deterministic fuzz drivers for the devices a guest programs directly:
//! the PCI config space of every function on the root bus
//! ([`pci_config`]) and virtio-blk descriptor chains ([`virtio_blk`]).
//!
//! Test-only (the `test-utils` feature): used by the `cargo fuzz` targets
//! in /fuzz and by the smoke tests in `devices/tests/`, never by the VMM.

pub mod pci_config;
pub mod virtio_blk;

/// The input, read front to back; past its end everything reads as zero.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// `n` bytes of the input, zero past its end.
    pub fn vec(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// A memfd of `len` bytes as a disk image: no file system, gone with the
/// run.
pub fn memfd(len: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated string; the call only creates a
    // file descriptor, which we own from here on.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len)?;
    Ok(f)
}
