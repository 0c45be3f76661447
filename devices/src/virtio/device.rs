//! What a virtio device implements, independent of its transport.

use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use std::sync::Arc;

use viommu::DmaMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, Permissions};

/// Signals the driver; implemented by the transport (MSI-X).
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers were added to queue `queue`.
    fn signal_queue(&self, queue: u16);
    /// The device configuration (or status) changed.
    fn signal_config(&self);
    /// The device hit an error it cannot recover from without a reset:
    /// it sets DEVICE_NEEDS_RESET and notifies the driver (virtio 1.2 §2.1.1).
    fn set_needs_reset(&self);
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("wrong number of queues: {0}")]
    QueueCount(usize),
}

/// A device configuration space the transport reads and writes without
/// taking the device's lock. The lock is held while the device processes
/// its queues (host I/O included); a vCPU reading, say, the capacity of a
/// disk must not wait for that.
pub trait SharedConfig: Send + Sync {
    /// Any offset and length must be handled (bytes outside read as zero).
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Writes to read-only fields are ignored.
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

/// A virtio device type.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Device-specific feature bits (the transport adds VERSION_1 & co).
    fn device_features(&self) -> u64;
    /// One eventfd per queue, signalled when the driver notifies the queue.
    fn queue_events(&self) -> Vec<EventFd>;
    /// Reads the device configuration space; any offset must be handled.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The configuration space as a [`SharedConfig`], when the device has
    /// one: the transport then uses it instead of `read_config` and
    /// `write_config`, and never takes the device's lock for config
    /// accesses.
    fn shared_config(&self) -> Option<Arc<dyn SharedConfig>> {
        None
    }
    /// The driver set DRIVER_OK: start processing `queues` in `mem`.
    fn activate(
        &mut self,
        mem: DmaMemory,
        features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop and forget the queues.
    fn reset(&mut self);
}

/// Bytes of the split virtqueue parts for `size` entries (virtio 1.2
/// §2.7): 16 per descriptor; flags, idx, the ring and used_event/avail_event.
fn ring_sizes(size: u16) -> [(u64, Permissions); 3] {
    let n = u64::from(size);
    [
        (16 * n, Permissions::Read),
        (6 + 2 * n, Permissions::Read),
        (6 + 8 * n, Permissions::Write),
    ]
}

/// Checks every queue's rings lie in `mem` before use.
///
/// The accessibility checks are made here first, quietly: virtio-queue's
/// `is_valid` logs an error for each inaccessible ring, and a driver could
/// repeat that with every reset. It still has the last word.
pub fn validate_queues<M: GuestMemory>(queues: &[Queue], mem: &M) -> Result<(), ActivateError> {
    for (i, q) in queues.iter().enumerate() {
        if !q.ready() {
            continue;
        }
        let addrs = [q.desc_table(), q.avail_ring(), q.used_ring()];
        let accessible = addrs
            .iter()
            .zip(ring_sizes(q.size()))
            .all(|(&addr, (len, access))| {
                usize::try_from(len)
                    .is_ok_and(|len| mem.check_range(GuestAddress(addr), len, access))
            });
        if !accessible || !q.is_valid(mem) {
            return Err(ActivateError::InvalidQueue(i));
        }
    }
    Ok(())
}
