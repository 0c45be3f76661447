//! The page request queue (§7.5): page requests of devices with PRI are
//! written as descriptors into the ring at PQA, from PQT on, for software
//! to consume up to PQH and answer with page group responses on the
//! invalidation queue.

use std::sync::atomic::Ordering::Relaxed;

use vm_memory::{Bytes, GuestAddress};

use super::event::PAGE_REQUEST_EVENT;
use super::regs::*;
use super::unit::{IntelIommu, State};
use crate::{DmaFault, PageRequest};

impl IntelIommu {
    /// Writes a page request descriptor into the page request queue.
    pub(super) fn queue_page_request(
        &self,
        st: &mut State,
        r: &PageRequest,
    ) -> Result<(), DmaFault> {
        let refuse = |reason: &str| DmaFault::Blocked {
            iova: r.address,
            len: 0,
            reason: reason.into(),
        };
        if !st.features.page_requests {
            return Err(refuse("page requests not supported"));
        }
        let pqa = st.regs.get64(PQA);
        let size = 4096u64 << (pqa & 7);
        let base = pqa & !0xfff;
        let head = st.regs.get64(PQH) & 0x7ffe0;
        let tail = st.regs.get64(PQT) & 0x7ffe0;
        if base == 0 || (tail + 32) % size == head {
            // No queue, or full: Page Request Overflow (§7.5.1); the
            // request is answered with a failure.
            let prs = st.regs.get32(PRS);
            st.regs.set32(PRS, prs | PRS_PRO);
            return Err(refuse("page request queue full"));
        }
        let mut qw0 = 1u64 | ((r.requester_id as u64) << 16);
        if let Some(p) = r.pasid {
            qw0 |= 1 << 8 | ((p as u64 & 0xf_ffff) << 32);
        }
        if r.exec {
            qw0 |= 1 << 52;
        }
        if r.privileged {
            qw0 |= 1 << 53;
        }
        let mut qw1 = r.address & !0xfff;
        qw1 |= r.read as u64 | (r.write as u64) << 1 | (r.last as u64) << 2;
        qw1 |= ((r.prg_index as u64) & 0x1ff) << 3;
        let at = base + tail;
        let written = [qw0, qw1, 0, 0].iter().enumerate().all(|(i, w)| {
            self.mem
                .write_obj(*w, GuestAddress(at + i as u64 * 8))
                .is_ok()
        });
        if !written {
            return Err(refuse("page request queue outside guest memory"));
        }
        st.regs.set64(PQT, (tail + 32) % size);
        self.counters.page_requests.fetch_add(1, Relaxed);
        let prs = st.regs.get32(PRS);
        st.regs.set32(PRS, prs | PRS_PPR);
        if prs & PRS_PPR == 0 {
            Self::raise(st, PAGE_REQUEST_EVENT);
        }
        Ok(())
    }
}
