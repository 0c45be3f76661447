//! Deterministic fuzz drivers for the devices a guest programs directly:
//! the PCI config space of every function on the root bus
//! ([`pci_config`]) and virtio-blk descriptor chains ([`virtio_blk`]).
//!
//! Test-only (the `test-utils` feature): used by the `cargo fuzz` targets
//! in /fuzz and by the smoke tests in `devices/tests/`, never by the VMM.

pub mod pci_config;
pub mod virtio_blk;

/// The input reader the VT-d fuzz drivers use (front to back, zero past
/// its end), and their guest memory reused across runs.
pub use viommu::intel::fuzz_rig::{Input, PooledMemory};

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
