//! The event-loop side of a passthrough device's page requests: when the
//! host's fault queue has requests, the bridge moves them into the guest's
//! page request queue (`viommu::passthrough::page_requests`).

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use viommu::iommufd::FaultQueue;
use viommu::passthrough::page_requests::PageRequestBridge;

/// Watches one device's fault queue.
pub struct PageRequestWatch {
    pub queue: Arc<FaultQueue>,
    pub bridge: Arc<PageRequestBridge>,
}

impl MutEventSubscriber for PageRequestWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.queue.as_ref(), EventSet::IN)) {
            log::error!("passthrough: cannot watch the page request queue: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            self.bridge.forward();
        }
    }
}
