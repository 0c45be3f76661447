//! Queued invalidation (VT-d spec §6.5.2): descriptors fetched from the
//! ring at IQA between IQH and IQT, processed in order when software moves
//! the tail. A bad descriptor or tail stops the queue with FSTS.IQE and the
//! cause in IQERCD (§11.4.9.9); IQH is left on the offending descriptor.
//!
//! Here are the descriptors and their decoding, and the engine that runs
//! them for the unit: one vCPU at a time, with the unit unlocked while an
//! invalidation wait drains the DMA fence (see `drive_queue` below).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{MutexGuard, Weak};

use vm_memory::{Bytes, GuestAddress};

use super::counters::Invalidation;
use super::domain_users::Invalidated;
use super::event::COMPLETION_EVENT;
use super::regs::*;
use super::unit::{EndpointMsg, IntelIommu, State};
use crate::{FenceScope, GuestMemoryMmap};

/// Invalidation Queue Error Info codes (IQERCD.IQEI).
pub mod iqei {
    /// IQT beyond the queue or not aligned for 256-bit descriptors.
    pub const BAD_TAIL: u64 = 1;
    /// The descriptor could not be fetched (queue outside memory).
    pub const FETCH: u64 = 2;
    /// Unknown or unsupported descriptor type.
    pub const BAD_TYPE: u64 = 3;
    /// Reserved bits set in a descriptor.
    pub const RESERVED: u64 = 4;
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Context-cache invalidate: granularity 1 global, 2 domain, 3 device.
    ContextCache {
        granularity: u8,
        did: u16,
        sid: u16,
        fm: u8,
    },
    /// IOTLB invalidate: granularity 1 global, 2 domain, 3 page.
    Iotlb {
        granularity: u8,
        did: u16,
        addr: u64,
        am: u8,
        ih: bool,
    },
    DeviceTlb {
        sid: u16,
        addr: u64,
        size: bool,
    },
    /// Interrupt entry cache: global, or `2^im` entries from `index`.
    InterruptEntryCache {
        global: bool,
        index: u16,
        im: u8,
    },
    Wait {
        interrupt: bool,
        status_write: bool,
        fence: bool,
        drain: bool,
        data: u32,
        addr: u64,
    },
    /// PASID-based IOTLB: granularity 2 all of a PASID, 3 page-selective.
    PasidIotlb {
        granularity: u8,
        did: u16,
        pasid: u32,
        addr: u64,
        am: u8,
        ih: bool,
    },
    /// PASID cache: granularity 0 domain, 1 PASID-selective, 3 global.
    PasidCache {
        granularity: u8,
        did: u16,
        pasid: u32,
    },
    PasidDeviceTlb {
        sid: u16,
        pasid: u32,
        addr: u64,
        size: bool,
    },
    PageGroupResponse {
        rid: u16,
        pasid: Option<u32>,
        code: u8,
        lpig: bool,
        index: u16,
    },
}

/// Fetches the descriptor at byte offset `head` of the queue at `base`.
pub fn fetch(mem: &GuestMemoryMmap, base: u64, head: u64, wide: bool) -> Result<[u64; 4], u64> {
    let mut q = [0u64; 4];
    let n = if wide { 4 } else { 2 };
    for (i, w) in q.iter_mut().take(n).enumerate() {
        let addr = base.checked_add(head + i as u64 * 8).ok_or(iqei::FETCH)?;
        *w = mem.read_obj(GuestAddress(addr)).map_err(|_| iqei::FETCH)?;
    }
    Ok(q)
}

/// Decodes one descriptor, checking type and reserved fields.
pub fn decode(q: [u64; 4], scalable: bool, pasid: bool) -> Result<Descriptor, u64> {
    let (q0, q1) = (q[0], q[1]);
    // Type is bits 3:0 with bits 11:9 as its high part.
    let ty = (q0 & 0xf) | ((q0 >> 5) & 0x70);
    let reserved = |cond: bool| if cond { Err(iqei::RESERVED) } else { Ok(()) };
    // The upper 128 bits of a 256-bit descriptor are reserved for all types here.
    reserved(q[2] != 0 || q[3] != 0)?;
    let g = ((q0 >> 4) & 3) as u8;
    match ty {
        1 => {
            reserved(q0 & 0xfffc_0000_0000_f1c0 != 0 || q1 != 0 || g == 0)?;
            Ok(Descriptor::ContextCache {
                granularity: g,
                did: (q0 >> 16) as u16,
                sid: (q0 >> 32) as u16,
                fm: ((q0 >> 48) & 3) as u8,
            })
        }
        2 => {
            reserved(q0 & 0xffff_ffff_0000_f100 != 0 || q1 & 0xf80 != 0 || g == 0)?;
            Ok(Descriptor::Iotlb {
                granularity: g,
                did: (q0 >> 16) as u16,
                addr: q1 & !0xfff,
                am: (q1 & 0x3f) as u8,
                ih: q1 & 0x40 != 0,
            })
        }
        3 => {
            reserved(q1 & 0xffe != 0)?;
            Ok(Descriptor::DeviceTlb {
                sid: (q0 >> 32) as u16,
                addr: q1 & !0xfff,
                size: q1 & 1 != 0,
            })
        }
        4 => {
            reserved(q0 & 0xffff_0000_07ff_f1e0 != 0 || q1 != 0)?;
            Ok(Descriptor::InterruptEntryCache {
                global: q0 & 0x10 == 0,
                index: (q0 >> 32) as u16,
                im: ((q0 >> 27) & 0x1f) as u8,
            })
        }
        5 => {
            reserved(q0 & 0xffff_f100 != 0 || q1 & 3 != 0)?;
            Ok(Descriptor::Wait {
                interrupt: q0 & 0x10 != 0,
                status_write: q0 & 0x20 != 0,
                fence: q0 & 0x40 != 0,
                drain: q0 & 0x80 != 0,
                data: (q0 >> 32) as u32,
                addr: q1 & !3,
            })
        }
        6 if scalable => {
            reserved(q0 & 0xfff0_0000_0000_f1c0 != 0 || q1 & 0xf80 != 0 || g < 2)?;
            Ok(Descriptor::PasidIotlb {
                granularity: g,
                did: (q0 >> 16) as u16,
                pasid: ((q0 >> 32) & 0xf_ffff) as u32,
                addr: q1 & !0xfff,
                am: (q1 & 0x3f) as u8,
                ih: q1 & 0x40 != 0,
            })
        }
        7 if scalable => {
            reserved(q0 & 0xfff0_0000_0000_f1c0 != 0 || q1 != 0 || g == 2)?;
            Ok(Descriptor::PasidCache {
                granularity: g,
                did: (q0 >> 16) as u16,
                pasid: ((q0 >> 32) & 0xf_ffff) as u32,
            })
        }
        8 if scalable => Ok(Descriptor::PasidDeviceTlb {
            sid: (q0 >> 16) as u16,
            pasid: ((q0 >> 32) & 0xf_ffff) as u32,
            addr: q1 & !0xfff,
            size: q1 & (1 << 11) != 0,
        }),
        9 if scalable && pasid => Ok(Descriptor::PageGroupResponse {
            rid: (q0 >> 16) as u16,
            pasid: (q0 & 0x10 != 0).then_some(((q0 >> 32) & 0xf_ffff) as u32),
            code: ((q0 >> 12) & 0xf) as u8,
            lpig: q1 & 4 != 0,
            index: ((q1 >> 3) & 0x1ff) as u16,
        }),
        _ => Err(iqei::BAD_TYPE),
    }
}

// --- the queue engine (§6.5.2) ---

/// Who runs the queue, and which enable its head belongs to.
#[derive(Debug, Default)]
pub(super) struct Engine {
    /// A vCPU is running descriptors. It owns IQH, also while it waits
    /// for the DMA fence with the unit unlocked, and it runs until IQH
    /// reaches IQT: a tail write that finds the engine busy only moves
    /// IQT.
    busy: bool,
    /// Counts queue enables, each of which resets IQH (§6.5.2). A wait
    /// that was opened under an earlier enable leaves IQH alone when it
    /// completes.
    enables: u64,
    /// What the invalidations run since the last wait removed, as the
    /// requesters whose DMA the next wait drains (see `domain_users.rs`).
    /// Kept across queue errors and re-enables: a later wait draining too
    /// much is harmless.
    drain: FenceScope,
}

impl Engine {
    /// QIE went from 0 to 1 (and IQH was reset).
    pub(super) fn enabled(&mut self) {
        self.enables = self.enables.wrapping_add(1);
    }
}

/// An invalidation wait the engine is completing with the unit unlocked.
struct OpenWait {
    wait: Descriptor,
    /// Its offset in the queue and its size: IQH moves to `head + len`
    /// once it completed.
    head: u64,
    len: u64,
    /// [`Engine::enables`] when it was fetched.
    enable: u64,
}

/// Hands the queue back if the vCPU running it unwinds (a panicking sink
/// or endpoint): otherwise every later tail write would find the engine
/// busy, and the queue would never run again.
struct Owner<'a>(&'a IntelIommu);

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().queue.busy = false;
        }
    }
}

impl IntelIommu {
    /// Runs the queue until IQH reaches IQT, one vCPU at a time.
    ///
    /// At an invalidation wait the running vCPU drops the lock and drains
    /// the DMA fence, so that no device still uses a translation the guest
    /// invalidated once the wait completes (§6.5.2.8), without stopping
    /// other devices' translations meanwhile. It drains only the devices
    /// that may use what the invalidations before the wait removed
    /// (`Engine::drain`), so a busy device of another domain does not
    /// hold the wait up. Other vCPUs may write IQT in
    /// that window. Were they to run the queue too, they would start from
    /// the IQH of the open wait and run it a second time, and the two
    /// completions would each move IQH on, past a descriptor nobody ran.
    /// So a tail write that finds the engine busy only updates IQT, and
    /// the running vCPU, which keeps IQH to itself until the wait
    /// completes, takes the new tail before it lets go of the queue: each
    /// descriptor runs once, in queue order (§6.5.2.11).
    pub(super) fn drive_queue<'a>(&'a self, mut held: MutexGuard<'a, State>) {
        if held.queue.busy {
            self.finish_synced(held);
            return;
        }
        held.queue.busy = true;
        // Declared before `st`, so that on unwinding the state's lock is
        // released before the owner takes it to hand the queue back.
        let _owner = Owner(self);
        let mut st = held;
        while let Some(open) = self.process_queue(&mut st) {
            // The wait drains only the DMA that may use what the
            // invalidations since the last wait removed. A wait after none
            // drains nothing: it completes the invalidations before it and
            // nothing else (§6.5.2.8); draining belongs to invalidations
            // (§6.5).
            let drain = std::mem::take(&mut st.queue.drain);
            // What the guest invalidated before the wait is in effect on
            // the host before the wait completes.
            self.finish_synced(st);
            self.fence.drain(&drain);
            st = self.lock();
            self.complete_wait(&mut st, open);
        }
        // In the same hold of the lock as the last look at IQT: a tail
        // written from now on finds the engine idle and runs it.
        st.queue.busy = false;
        self.finish_synced(st);
    }

    /// Completes a wait once the fence drained, whatever software did to
    /// the queue meanwhile. The wait was fetched, so it completes, once,
    /// even if the queue was disabled since (software is to see IQH reach
    /// IQT before it disables the queue, §6.5.2; moving IQH past the wait
    /// lets such a poll finish). An enable meanwhile reset IQH, which then
    /// stays as the enable left it. A tail written meanwhile is checked
    /// when the engine next fetches, as any tail write is (§6.5.2.10); a
    /// changed IQA is realigned to there too.
    fn complete_wait(&self, st: &mut State, open: OpenWait) {
        self.execute(st, open.wait);
        if st.queue.enables == open.enable {
            let size = 4096u64 << (st.regs.get64(IQA) & 7);
            st.regs.set64(IQH, (open.head + open.len) % size);
        }
    }

    fn queue_error(&self, st: &mut State, code: u64) {
        self.counters.queue_errors.fetch_add(1, Relaxed);
        st.regs.set64(IQERCD, code);
        Self::fault_status(st, FSTS_IQE);
    }

    /// Runs descriptors from IQH to IQT; stops at an invalidation wait
    /// (leaving IQH on it) and returns it for the caller to complete.
    fn process_queue(&self, st: &mut State) -> Option<OpenWait> {
        if st.regs.get32(GSTS) & GSTS_QIES == 0 || st.regs.get32(FSTS) & FSTS_IQE != 0 {
            return None;
        }
        let iqa = st.regs.get64(IQA);
        let wide = iqa & (1 << 11) != 0;
        let desc = if wide { 32 } else { 16 };
        let size = 4096u64 << (iqa & 7);
        let base = iqa & !0xfff;
        let tail = st.regs.get64(IQT) & 0x7fff0;
        if tail >= size || !tail.is_multiple_of(desc) {
            self.queue_error(st, iqei::BAD_TAIL);
            return None;
        }
        // IQH may sit off the ring if software changed IQA under an
        // enabled queue: realign it rather than loop forever.
        let mut head = (st.regs.get64(IQH) & 0x7fff0) % size / desc * desc;
        let scalable = st.features.scalable;
        let pasid = st.features.page_requests;
        // At most one pass over the ring per call.
        let mut budget = size / desc;
        while head != tail && budget > 0 {
            budget -= 1;
            let d = fetch(&self.mem, base, head, wide).and_then(|q| decode(q, scalable, pasid));
            match d {
                Ok(wait @ Descriptor::Wait { .. }) => {
                    st.regs.set64(IQH, head);
                    return Some(OpenWait {
                        wait,
                        head,
                        len: desc,
                        enable: st.queue.enables,
                    });
                }
                Ok(d) => self.execute(st, d),
                Err(code) => {
                    st.regs.set64(IQH, head);
                    self.queue_error(st, code);
                    return None;
                }
            }
            head = (head + desc) % size;
        }
        st.regs.set64(IQH, head);
        None
    }

    fn execute(&self, st: &mut State, d: Descriptor) {
        let kind = match d {
            Descriptor::ContextCache {
                granularity,
                did,
                sid,
                fm,
            } => {
                match granularity {
                    1 => st.caches.flush_context_all(),
                    2 => st.caches.flush_context_domain(did),
                    _ => st.caches.flush_context_device(sid, fm),
                }
                st.host.dirty.everything();
                Self::to_drain(st, Invalidated::Everything);
                Invalidation::ContextCache
            }
            Descriptor::Iotlb {
                granularity,
                did,
                addr,
                am,
                ..
            } => {
                match granularity {
                    1 => st.caches.flush_iotlb_all(),
                    2 => st.caches.flush_iotlb_domain(did),
                    _ => st.caches.flush_iotlb_pages(did, None, addr, am),
                }
                Self::iotlb_dirty(st, granularity as u64, did, addr, am);
                let removed = match granularity {
                    1 => Invalidated::Everything,
                    _ => Invalidated::Domain(did),
                };
                Self::to_drain(st, removed);
                Invalidation::Iotlb
            }
            Descriptor::DeviceTlb { sid, .. } => {
                Self::to_endpoint(st, sid, EndpointMsg::InvalidateAtc { pasid: None });
                Self::to_drain(st, Invalidated::DeviceTlb(sid));
                Invalidation::DeviceTlb
            }
            // No DMA uses interrupt entries: nothing to drain.
            Descriptor::InterruptEntryCache { .. } => {
                st.remap_changed = true;
                Invalidation::InterruptEntryCache
            }
            Descriptor::Wait {
                interrupt,
                status_write,
                data,
                addr,
                ..
            } => {
                // Every translation that started before this point has
                // finished: they run under the same lock.
                self.counters.invalidation_waits.fetch_add(1, Relaxed);
                if status_write && self.mem.write_obj(data, GuestAddress(addr)).is_err() {
                    // A status address outside memory is an invalidation
                    // completion error (§6.5.2.8).
                    Self::fault_status(st, FSTS_ICE);
                }
                if interrupt {
                    let ics = st.regs.get32(ICS);
                    st.regs.set32(ICS, ics | ICS_IWC);
                    if ics & ICS_IWC == 0 {
                        Self::raise(st, COMPLETION_EVENT);
                    }
                }
                Invalidation::Wait
            }
            Descriptor::PasidIotlb {
                granularity,
                did,
                pasid,
                addr,
                am,
                ..
            } => {
                match granularity {
                    2 => st.caches.flush_iotlb_pasid(did, pasid),
                    _ => st.caches.flush_iotlb_pages(did, Some(pasid), addr, am),
                }
                Self::iotlb_dirty(st, if granularity == 2 { 2 } else { 3 }, did, addr, am);
                Self::pasid_announced(st, pasid);
                Self::to_drain(st, Invalidated::Domain(did));
                Invalidation::PasidIotlb
            }
            Descriptor::PasidCache {
                granularity,
                did,
                pasid,
            } => {
                match granularity {
                    0 => st.caches.flush_pasid_domain(did),
                    1 => {
                        st.caches.flush_pasid_selective(did, pasid);
                        Self::pasid_announced(st, pasid);
                    }
                    _ => st.caches.flush_pasid_all(),
                }
                st.host.dirty.everything();
                Self::to_drain(st, Invalidated::Everything);
                Invalidation::PasidCache
            }
            Descriptor::PasidDeviceTlb { sid, pasid, .. } => {
                Self::to_endpoint(st, sid, EndpointMsg::InvalidateAtc { pasid: Some(pasid) });
                Self::to_drain(st, Invalidated::DeviceTlb(sid));
                Invalidation::PasidDeviceTlb
            }
            Descriptor::PageGroupResponse {
                rid,
                pasid,
                code,
                index,
                ..
            } => {
                self.counters.page_responses.fetch_add(1, Relaxed);
                Self::to_endpoint(st, rid, EndpointMsg::Response { pasid, index, code });
                Invalidation::PageGroupResponse
            }
        };
        self.counters.bump_invalidation(kind);
    }

    /// Widens what the next wait drains by what one invalidation removed.
    /// Computed now, under the lock the invalidation runs under, from the
    /// domains recorded so far: see `DomainUsers` for why that is enough.
    fn to_drain(st: &mut State, removed: Invalidated) {
        st.domain_users.widen(&mut st.queue.drain, removed);
    }

    fn to_endpoint(st: &mut State, rid: u16, msg: EndpointMsg) {
        if let Some(ep) = st.endpoints.get(&rid).and_then(Weak::upgrade) {
            st.to_endpoints.push((ep, msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_linux_descriptors() {
        // qi_flush_iotlb: PSI, DID 5, addr 0x1000, AM 2, IH.
        let d = decode(
            [
                2 | (3 << 4) | (5 << 16) | (1 << 7) | (1 << 6),
                0x1000 | 0x40 | 2,
                0,
                0,
            ],
            true,
            false,
        );
        assert_eq!(
            d,
            Ok(Descriptor::Iotlb {
                granularity: 3,
                did: 5,
                addr: 0x1000,
                am: 2,
                ih: true
            })
        );
        // Invalidation wait with status write and interrupt.
        let d = decode([5 | 0x30 | (1u64 << 32), 0x8000, 0, 0], true, false).unwrap();
        assert!(matches!(
            d,
            Descriptor::Wait {
                interrupt: true,
                status_write: true,
                data: 1,
                addr: 0x8000,
                ..
            }
        ));
        // PASID cache, PASID-selective.
        let d = decode([7 | (1 << 4) | (3 << 16) | (9 << 32), 0, 0, 0], true, true).unwrap();
        assert_eq!(
            d,
            Descriptor::PasidCache {
                granularity: 1,
                did: 3,
                pasid: 9
            }
        );
        // Page group response.
        let d = decode(
            [
                9 | 0x10 | (1 << 12) | (0x08 << 16) | (7 << 32),
                4 | (5 << 3),
                0,
                0,
            ],
            true,
            true,
        )
        .unwrap();
        assert_eq!(
            d,
            Descriptor::PageGroupResponse {
                rid: 8,
                pasid: Some(7),
                code: 1,
                lpig: true,
                index: 5
            }
        );
        // Context cache device-selective.
        let d = decode(
            [1 | (3 << 4) | (1 << 16) | (0x08 << 32) | (2 << 48), 0, 0, 0],
            false,
            false,
        );
        assert_eq!(
            d,
            Ok(Descriptor::ContextCache {
                granularity: 3,
                did: 1,
                sid: 8,
                fm: 2
            })
        );
        let d = decode([4 | 0x10 | (7 << 32) | (2 << 27), 0, 0, 0], false, false);
        assert_eq!(
            d,
            Ok(Descriptor::InterruptEntryCache {
                global: false,
                index: 7,
                im: 2
            })
        );
        assert!(matches!(
            decode([3 | (8 << 32), 0x1001, 0, 0], false, false),
            Ok(Descriptor::DeviceTlb { size: true, .. })
        ));
        assert!(matches!(
            decode([6 | (2 << 4), 0, 0, 0], true, true),
            Ok(Descriptor::PasidIotlb { .. })
        ));
        assert!(matches!(
            decode([8, 0, 0, 0], true, true),
            Ok(Descriptor::PasidDeviceTlb { .. })
        ));
    }

    #[test]
    fn rejects_bad_descriptors() {
        assert_eq!(decode([0, 0, 0, 0], true, true), Err(iqei::BAD_TYPE));
        assert_eq!(decode([0xf, 0, 0, 0], true, true), Err(iqei::BAD_TYPE));
        assert_eq!(
            decode([6 | (2 << 4), 0, 0, 0], false, false),
            Err(iqei::BAD_TYPE),
            "scalable-only"
        );
        assert_eq!(
            decode([9, 0, 0, 0], true, false),
            Err(iqei::BAD_TYPE),
            "no PRS"
        );
        assert_eq!(
            decode([2 | (1 << 4), 0x100, 0, 0], true, false),
            Err(iqei::RESERVED)
        );
        assert_eq!(
            decode([2, 0, 0, 0], true, false),
            Err(iqei::RESERVED),
            "granularity 0"
        );
        assert_eq!(decode([5, 1, 0, 0], true, false), Err(iqei::RESERVED));
        assert_eq!(
            decode([1 | (1 << 4), 0, 1, 0], true, false),
            Err(iqei::RESERVED)
        );
        assert_eq!(
            decode([4 | (1 << 8), 0, 0, 0], true, false),
            Err(iqei::RESERVED)
        );
    }

    #[test]
    fn fetch_outside_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(fetch(&mem, 0xff0, 0, true), Err(iqei::FETCH));
        assert_eq!(fetch(&mem, u64::MAX - 4, 0, false), Err(iqei::FETCH));
        assert!(fetch(&mem, 0, 0x20, true).is_ok());
    }
}
