//! The seam through which a device maps host memory into guest-physical
//! space (KVM memory slots), so guest accesses to it run at full speed
//! instead of exiting to the VMM.
//!
//! Passthrough devices use it for the mmap-able parts of their BARs. The
//! VMM implements it over KVM; devices never see KVM.

use std::io;

pub trait GuestMemorySlots: Send + Sync {
    /// Makes guest-physical `gpa..gpa + len` reach host memory at
    /// `host_addr`; returns a handle for [`GuestMemorySlots::unmap`].
    ///
    /// `gpa`, `len` and `host_addr` are page aligned.
    ///
    /// # Safety
    /// `host_addr..host_addr + len` must stay mapped in this process until
    /// `unmap` of the returned slot has returned: the guest reads and
    /// writes it at any time.
    unsafe fn map(&self, gpa: u64, len: u64, host_addr: u64) -> io::Result<u32>;

    /// Removes a mapping made by `map`; guest accesses exit to the VMM again.
    fn unmap(&self, slot: u32) -> io::Result<()>;
}

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    //! A recording fake for unit tests.
    use super::*;
    use std::sync::Mutex;

    /// One live mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SlotMapping {
        pub slot: u32,
        pub gpa: u64,
        pub len: u64,
        pub host_addr: u64,
    }

    #[derive(Default)]
    pub struct RecordingSlots {
        /// Mappings in place now.
        pub live: Mutex<Vec<SlotMapping>>,
        /// Every map call that succeeded, in order.
        pub history: Mutex<Vec<SlotMapping>>,
        /// Slots unmapped, in order.
        pub unmapped: Mutex<Vec<u32>>,
        /// A `map` at this guest address fails (to test the fallback).
        pub fail_at: Mutex<Option<u64>>,
        next: Mutex<u32>,
    }

    impl GuestMemorySlots for RecordingSlots {
        unsafe fn map(&self, gpa: u64, len: u64, host_addr: u64) -> io::Result<u32> {
            if *self.fail_at.lock().unwrap() == Some(gpa) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            let mut n = self.next.lock().unwrap();
            *n += 1;
            let m = SlotMapping {
                slot: *n + 15,
                gpa,
                len,
                host_addr,
            };
            self.live.lock().unwrap().push(m);
            self.history.lock().unwrap().push(m);
            Ok(m.slot)
        }

        fn unmap(&self, slot: u32) -> io::Result<()> {
            let mut live = self.live.lock().unwrap();
            let before = live.len();
            live.retain(|m| m.slot != slot);
            if live.len() == before {
                return Err(io::Error::other(format!("slot {slot} is not mapped")));
            }
            self.unmapped.lock().unwrap().push(slot);
            Ok(())
        }
    }
}
