//! The virtio-blk device: one request queue served from the event loop.
//!
//! Locking: the event loop holds the device's mutex while it processes the
//! queue, host I/O included. The transport takes the same mutex only to
//! activate or reset the device; config space accesses go through the
//! lock-free [`SharedConfig`] instead. A pass over the queue is bounded
//! ([`CHAINS_PER_PASS`]), so neither other devices on the event loop nor a
//! vCPU resetting the device wait for more than one pass.

use std::num::Wrapping;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{device_features, BlockConfig, Disk};
use crate::guest_warn;
use crate::virtio::device::{ActivateError, SharedConfig, VirtioDevice, VirtioInterrupt};
use viommu::DmaMemory;

const QUEUE_SIZE: u16 = 256;
const VIRTIO_ID_BLOCK: u32 = 2;

/// Chains one pass takes from the queue before it hands the event loop
/// back (other devices share it) and re-signals itself for the rest. A
/// chain moves up to `seg_max` pages, so this bounds a pass to a few
/// hundred MiB of I/O at worst instead of a whole ring, refilled as fast
/// as it drains.
pub const CHAINS_PER_PASS: usize = 64;

/// Counters a test or benchmark can read after the run.
#[derive(Default, Debug)]
pub struct BlockCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

struct Active {
    mem: DmaMemory,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Why the queue itself (not one request) cannot be used any more.
#[derive(Debug, thiserror::Error)]
enum QueueFault {
    #[error("the available ring at {0:#x} cannot be read")]
    AvailRing(u64),
    #[error("the used ring cannot be written")]
    UsedRing,
    #[error("descriptor head {head} is outside a queue of {size}")]
    HeadOutOfRange { head: u16, size: u16 },
}

/// The next chain the driver made available, if any.
///
/// virtio-queue's own `pop_descriptor_chain` logs an error for every
/// unreadable available ring, which a driver can repeat at will; the ring
/// is read here first so that case is reported (rate-limited) by the
/// caller instead.
fn next_chain<'a>(
    queue: &mut Queue,
    mem: &'a DmaMemory,
) -> Result<Option<DescriptorChain<&'a DmaMemory>>, QueueFault> {
    let avail = queue.avail_ring();
    let idx = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| QueueFault::AvailRing(avail))?;
    let next = queue.next_avail();
    if idx == Wrapping(next) {
        return Ok(None);
    }
    // The slot the iterator reads next: ring[next % size] after the
    // 4-byte header (validate_queues checked size is a power of two).
    let slot = u64::from(next.checked_rem(queue.size()).unwrap_or(0));
    let slot_addr = avail
        .checked_add(4 + 2 * slot)
        .ok_or(QueueFault::AvailRing(avail))?;
    mem.read_obj::<u16>(GuestAddress(slot_addr))
        .map_err(|_| QueueFault::AvailRing(slot_addr))?;
    let mut iter = queue.iter(mem).map_err(|_| QueueFault::AvailRing(avail))?;
    Ok(iter.next())
}

pub struct Block {
    disk: Disk,
    config: Arc<BlockConfig>,
    kick: EventFd,
    active: Option<Active>,
    /// Set when the driver broke the queue; cleared by a device reset.
    broken: bool,
    pub counters: Arc<BlockCounters>,
}

impl Block {
    pub fn new(disk: Disk) -> std::io::Result<Self> {
        let config = BlockConfig::new(disk.capacity(), QUEUE_SIZE as u32 - 2);
        Ok(Block {
            disk,
            config: Arc::new(config),
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            active: None,
            broken: false,
            counters: Arc::new(BlockCounters::default()),
        })
    }

    /// One pass over the queue: at most [`CHAINS_PER_PASS`] chains. When
    /// the budget runs out, notifications stay disabled and the queue's
    /// own eventfd is signalled, so the event loop comes back for the rest
    /// after serving the other devices: nothing the driver queued is left
    /// waiting for a notification it will not send.
    fn process_queue(&mut self) {
        if self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used_any = false;
        let mut budget = CHAINS_PER_PASS;
        let mut more = false;
        let mut fault = None;
        'pass: loop {
            if active.queue.disable_notification(mem).is_err() {
                fault = Some(QueueFault::UsedRing);
                break;
            }
            loop {
                if budget == 0 {
                    more = true;
                    break 'pass;
                }
                // Everything this request translates stays in use until the
                // guard drops: an IOMMU invalidation wait waits for it.
                let _in_flight = mem.iommu().begin_dma();
                let mut chain = match next_chain(&mut active.queue, mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(e) => {
                        fault = Some(e);
                        break 'pass;
                    }
                };
                budget -= 1;
                let head = chain.head_index();
                let size = active.queue.size();
                if head >= size {
                    // Not a chain the used ring can return: not run either.
                    fault = Some(QueueFault::HeadOutOfRange { head, size });
                    break 'pass;
                }
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                let len = match self.disk.process(&mut chain) {
                    Ok(c) => {
                        if c.status != super::VIRTIO_BLK_S_OK {
                            self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        c.used_len
                    }
                    Err(e) => {
                        // No status byte to answer through: the driver broke
                        // the protocol. Return the buffer and flag the device.
                        guest_warn!("virtio-blk: {e}; device needs reset");
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        self.broken = true;
                        0
                    }
                };
                if active.queue.add_used(mem, head, len).is_err() {
                    fault = Some(QueueFault::UsedRing);
                    break 'pass;
                }
                used_any = true;
                if self.broken {
                    break 'pass;
                }
            }
            match active.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    fault = Some(QueueFault::AvailRing(active.queue.avail_ring()));
                    break;
                }
            }
        }
        if let Some(f) = fault {
            guest_warn!("virtio-blk: {f}; device needs reset");
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            self.broken = true;
        }
        if self.broken {
            active.interrupt.set_needs_reset();
            return;
        }
        if used_any && active.queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_queue(0);
        }
        if more {
            // The eventfd is the queue's notifier: the event loop sees it
            // as a kick once it has served whatever else is ready.
            if let Err(e) = self.kick.write(1) {
                log::error!("virtio-blk: cannot re-signal the queue: {e}");
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        device_features(self.disk.is_read_only())
    }

    fn queue_events(&self) -> Vec<EventFd> {
        self.kick.try_clone().into_iter().collect()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn shared_config(&self) -> Option<Arc<dyn SharedConfig>> {
        Some(self.config.clone())
    }

    fn activate(
        &mut self,
        mem: DmaMemory,
        _features: u64,
        mut queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount(queues.len()));
        }
        let queue = queues.remove(0);
        if !queue.ready() {
            return Err(ActivateError::InvalidQueue(0));
        }
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        self.broken = false;
        // Requests may have been queued before DRIVER_OK. The event loop
        // serves them: activation runs on a vCPU, which must not do the I/O.
        if let Err(e) = self.kick.write(1) {
            log::error!("virtio-blk: cannot signal the queue: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.kick, EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the queue notifier: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.kick.read();
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests;
