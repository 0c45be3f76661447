//! KVM memory slots for device memory mapped into the guest (the BARs of
//! passthrough devices), next to the slots of guest RAM.

use std::io;
use std::sync::{Arc, Mutex};

use devices::memory_slots::GuestMemorySlots;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

/// Slots below this belong to guest RAM.
pub const FIRST_DEVICE_SLOT: u32 = 16;

pub struct KvmSlots {
    vm: Arc<VmFd>,
    /// Slot numbers in use (index = slot - FIRST_DEVICE_SLOT).
    used: Mutex<Vec<bool>>,
    max_slots: u32,
}

impl KvmSlots {
    pub fn new(vm: Arc<VmFd>, max_slots: u32) -> Self {
        KvmSlots {
            vm,
            used: Mutex::new(Vec::new()),
            max_slots,
        }
    }

    fn set(&self, slot: u32, gpa: u64, len: u64, host: u64) -> io::Result<()> {
        let r = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: map()'s contract makes the caller keep `host..host+len`
        // mapped until unmap(); a zero size deletes the slot.
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl GuestMemorySlots for KvmSlots {
    unsafe fn map(&self, gpa: u64, len: u64, host_addr: u64) -> io::Result<u32> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let index = match used.iter().position(|u| !u) {
            Some(i) => i,
            None => {
                used.push(false);
                used.len() - 1
            }
        };
        let slot = FIRST_DEVICE_SLOT + index as u32;
        if slot >= self.max_slots {
            return Err(io::Error::other("no free KVM memory slot"));
        }
        self.set(slot, gpa, len, host_addr)?;
        used[index] = true;
        Ok(slot)
    }

    fn unmap(&self, slot: u32) -> io::Result<()> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let index = slot
            .checked_sub(FIRST_DEVICE_SLOT)
            .map(|i| i as usize)
            .filter(|&i| used.get(i) == Some(&true))
            .ok_or_else(|| io::Error::other(format!("slot {slot} is not a device slot")))?;
        self.set(slot, 0, 0, 0)?;
        used[index] = false;
        Ok(())
    }
}
