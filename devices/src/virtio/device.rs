//! What a virtio device implements, independent of its transport.

use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use std::sync::Arc;

use viommu::DmaMemory;
use virtio_queue::Queue;

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

/// Checks every queue's rings lie in `mem` before use.
pub fn validate_queues<M: GuestMemory>(queues: &[Queue], mem: &M) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    for (i, q) in queues.iter().enumerate() {
        if q.ready() && !q.is_valid(mem) {
            return Err(ActivateError::InvalidQueue(i));
        }
    }
    Ok(())
}
