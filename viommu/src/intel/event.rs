//! The unit's own interrupts: fault events (§7.3), invalidation
//! completion events (§6.5.2.9) and page request events (§7.5). Each has a
//! control register with a mask (IM) and a pending bit (IP), and data and
//! address registers; the messages go straight to the sink, never through
//! interrupt remapping (§5.1.6).

use super::regs::*;
use super::unit::{IntelIommu, State};

/// The registers of one of the unit's interrupts.
#[derive(Clone, Copy, Debug)]
pub(super) struct Event {
    ctl: usize,
    data: usize,
    addr: usize,
    uaddr: usize,
}

/// Fault event: FECTL, FEDATA, FEADDR, FEUADDR.
pub(super) const FAULT_EVENT: Event = Event {
    ctl: FECTL,
    data: FEDATA,
    addr: FEADDR,
    uaddr: FEUADDR,
};
/// Invalidation completion event: IECTL, IEDATA, IEADDR, IEUADDR.
pub(super) const COMPLETION_EVENT: Event = Event {
    ctl: IECTL,
    data: IEDATA,
    addr: IEADDR,
    uaddr: IEUADDR,
};
/// Page request event: PECTL, PEDATA, PEADDR, PEUADDR.
pub(super) const PAGE_REQUEST_EVENT: Event = Event {
    ctl: PECTL,
    data: PEDATA,
    addr: PEADDR,
    uaddr: PEUADDR,
};

impl IntelIommu {
    /// Clearing IM with IP set delivers the held interrupt; `before` is
    /// the control register before the write.
    pub(super) fn unmask(st: &mut State, e: Event, before: u32) {
        let now = st.regs.get32(e.ctl);
        if before & CTL_IM != 0 && now & CTL_IM == 0 && now & CTL_IP != 0 {
            st.regs.set32(e.ctl, now & !CTL_IP);
            Self::queue_msi(st, e);
        }
    }

    fn queue_msi(st: &mut State, e: Event) {
        let a = ((st.regs.get32(e.uaddr) as u64) << 32) | st.regs.get32(e.addr) as u64;
        let d = st.regs.get32(e.data);
        st.outbox.push((a, d));
    }

    /// Raises an interrupt: delivered now, or held pending (IP) while
    /// masked.
    pub(super) fn raise(st: &mut State, e: Event) {
        let c = st.regs.get32(e.ctl);
        if c & CTL_IM != 0 {
            st.regs.set32(e.ctl, c | CTL_IP);
        } else {
            Self::queue_msi(st, e);
        }
    }

    pub(super) fn fault_event(st: &mut State) {
        Self::raise(st, FAULT_EVENT);
    }
}
