//! The virtio-blk device: one request queue served from the event loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{device_features, BlockConfig, Disk};
use crate::virtio::device::{ActivateError, VirtioDevice, VirtioInterrupt};
use viommu::DmaMemory;

const QUEUE_SIZE: u16 = 256;
const VIRTIO_ID_BLOCK: u32 = 2;

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

pub struct Block {
    disk: Disk,
    config: BlockConfig,
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
            config,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            active: None,
            broken: false,
            counters: Arc::new(BlockCounters::default()),
        })
    }

    fn process_queue(&mut self) {
        if self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            if active.queue.disable_notification(mem).is_err() {
                self.broken = true;
                break;
            }
            loop {
                // Everything this request translates stays in use until the
                // guard drops: an IOMMU invalidation wait waits for it.
                let _in_flight = mem.iommu().begin_dma();
                let Some(mut chain) = active.queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
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
                        log::warn!("virtio-blk: {e}; device needs reset");
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        self.broken = true;
                        0
                    }
                };
                if active.queue.add_used(mem, head, len).is_err() {
                    self.broken = true;
                }
                used_any = true;
                if self.broken {
                    break;
                }
            }
            if self.broken {
                break;
            }
            match active.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        if self.broken {
            active.interrupt.set_needs_reset();
            return;
        }
        if used_any && active.queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_queue(0);
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
        // Requests may have been queued before DRIVER_OK.
        self.process_queue();
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
