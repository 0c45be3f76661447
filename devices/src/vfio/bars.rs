//! The memory BARs of a passthrough function: which ones the guest sees,
//! and which parts of them reach the device directly.
//!
//! Sizes and kinds come from VFIO (region sizes, the BAR's flag bits); the
//! addresses are the guest's. Where VFIO allows it, a BAR is mmapped once
//! and its pages are put into guest-physical space as memory slots while
//! memory decode is on and the BAR holds a real address, so the guest's
//! register accesses never exit. The pages holding the MSI-X table and PBA
//! are never mapped: the guest's view of them is emulated. Everything not
//! mapped (those pages, a BAR VFIO will not mmap, a mapping KVM refused)
//! is trapped and served by VFIO's region read/write.
//!
//! I/O space BARs are hidden (they read as unimplemented): the root
//! complex has no I/O window, and the devices we pass through do not need
//! one.

use std::sync::Arc;

use super::backend::{HostMmap, RegionInfo, VfioBackend, CONFIG_REGION};
use crate::memory_slots::GuestMemorySlots;
use crate::pci::config::{Bar, BarKind, ConfigSpace, BAR0, NUM_BARS};
use crate::{guest_warn, host_log};

/// A part of a BAR that must stay trapped: `len` bytes at `offset` of `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trapped {
    pub bar: usize,
    pub offset: u64,
    pub len: u64,
}

/// An mmapped, page-aligned part of a BAR.
struct Area {
    offset: u64,
    host: HostMmap,
}

struct BarState {
    index: usize,
    bar: Bar,
    areas: Vec<Area>,
    /// The guest address the areas are mapped at, and their slots.
    mapped_at: Option<u64>,
    slots: Vec<u32>,
}

pub struct Bars {
    bars: Vec<BarState>,
    slots: Arc<dyn GuestMemorySlots>,
    page_size: u64,
}

pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

/// The page-aligned `(offset, len)` parts of a BAR of `size` bytes that
/// may be mapped: VFIO's sparse areas (or the whole BAR), minus the pages
/// touching a trapped range.
pub fn mappable_areas(
    info: &RegionInfo,
    size: u64,
    trapped: &[(u64, u64)],
    page: u64,
) -> Vec<(u64, u64)> {
    if !info.mmappable || !info.readable || !info.writable || size < page {
        return Vec::new();
    }
    let base = info.sparse_areas.clone().unwrap_or_else(|| vec![(0, size)]);
    let mut areas: Vec<(u64, u64)> = base
        .into_iter()
        .filter_map(|(off, len)| {
            let start = align_up(off, page)?;
            let end = align_down(off.checked_add(len)?.min(size), page);
            (start < end).then_some((start, end))
        })
        .collect();
    for &(off, len) in trapped {
        let (Some(ts), Some(te)) = (
            Some(align_down(off, page)),
            off.checked_add(len).and_then(|e| align_up(e, page)),
        ) else {
            continue;
        };
        areas = areas
            .into_iter()
            .flat_map(|(s, e)| {
                let mut parts = Vec::with_capacity(2);
                if ts >= e || te <= s {
                    parts.push((s, e));
                } else {
                    if s < ts {
                        parts.push((s, ts));
                    }
                    if te < e {
                        parts.push((te, e));
                    }
                }
                parts
            })
            .collect();
    }
    areas.into_iter().map(|(s, e)| (s, e - s)).collect()
}

impl Bars {
    /// Declares the device's memory BARs in `emu` and mmaps what can be.
    pub fn new(
        backend: &dyn VfioBackend,
        emu: &mut ConfigSpace,
        trapped: &[Trapped],
        slots: Arc<dyn GuestMemorySlots>,
        page_size: u64,
    ) -> Self {
        let mut bars = Vec::new();
        let mut i = 0;
        while i < NUM_BARS {
            let info = backend.region_info(i as u32).unwrap_or_default();
            let mut raw = [0u8; 4];
            backend.region_read(CONFIG_REGION, (BAR0 + 4 * i) as u64, &mut raw);
            let raw = u32::from_le_bytes(raw);
            let is_64 = raw & 1 == 0 && (raw >> 1) & 3 == 2;
            let step = if is_64 { 2 } else { 1 };
            if info.size == 0 {
                i += 1;
                continue;
            }
            if raw & 1 != 0 {
                log::info!("BAR{i}: I/O space BAR hidden from the guest");
                i += 1;
                continue;
            }
            let bar = Bar {
                kind: if is_64 {
                    BarKind::Mem64
                } else {
                    BarKind::Mem32
                },
                size: info.size,
                prefetchable: raw & 8 != 0,
            };
            if let Err(e) = emu.add_bar(i, bar) {
                log::warn!("BAR{i} hidden from the guest: {e}");
                i += step;
                continue;
            }
            let own: Vec<(u64, u64)> = trapped
                .iter()
                .filter(|t| t.bar == i)
                .map(|t| (t.offset, t.len))
                .collect();
            let mut areas = Vec::new();
            for (offset, len) in mappable_areas(&info, info.size, &own, page_size) {
                match backend.mmap_region(i as u32, offset, len) {
                    Ok(host) => areas.push(Area { offset, host }),
                    Err(e) => log::warn!(
                        "BAR{i} {offset:#x}+{len:#x} cannot be mmapped ({e}): accesses are trapped"
                    ),
                }
            }
            bars.push(BarState {
                index: i,
                bar,
                areas,
                mapped_at: None,
                slots: Vec::new(),
            });
            i += step;
        }
        Bars {
            bars,
            slots,
            page_size,
        }
    }

    /// The BARs the guest sees.
    pub fn bars(&self) -> Vec<(usize, Bar)> {
        self.bars.iter().map(|b| (b.index, b.bar)).collect()
    }

    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.iter().find(|b| b.index == index).map(|b| b.bar)
    }

    /// The address BAR `index` decodes at, unless it holds no real
    /// address: zero, past the end of its address space, or a sizing
    /// pattern (Linux writes all ones, one dword at a time, to size a BAR;
    /// a 64-bit BAR whose high dword is all ones cannot be guest memory).
    /// A 32-bit-sized BAR placed on the last page below a 4 GiB boundary
    /// is mistaken for a sizing pattern and stays trapped: slower, correct.
    fn real_address(emu: &ConfigSpace, b: &BarState) -> Option<u64> {
        let base = emu.bar_address(b.index)?;
        let end = base.checked_add(b.bar.size)?;
        if base == 0 {
            return None;
        }
        let off = BAR0 + 4 * b.index;
        let lo = emu.read_u32(off) & !0xf;
        let lo_mask = (!(b.bar.size - 1)) as u32 & !0xf;
        match b.bar.kind {
            BarKind::Mem32 => (end <= 1 << 32 && lo != lo_mask).then_some(base),
            BarKind::Mem64 => {
                let hi = emu.read_u32(off + 4);
                let sizing_lo = b.bar.size < 1 << 32 && lo == lo_mask;
                (hi != u32::MAX && !sizing_lo).then_some(base)
            }
        }
    }

    /// Makes the slots follow the BAR registers and memory decode: mapped
    /// while decode is on at a real address, moved when the guest moves a
    /// BAR, removed otherwise.
    pub fn update(&mut self, emu: &ConfigSpace, decode: bool) {
        for i in 0..self.bars.len() {
            let want = if decode {
                Self::real_address(emu, &self.bars[i])
            } else {
                None
            };
            if want == self.bars[i].mapped_at {
                continue;
            }
            self.unmap_bar(i);
            if let Some(gpa) = want {
                self.map_bar(i, gpa);
            }
        }
    }

    fn map_bar(&mut self, i: usize, gpa: u64) {
        let page = self.page_size;
        let b = &mut self.bars[i];
        b.mapped_at = Some(gpa);
        for area in &b.areas {
            let Some(at) = gpa.checked_add(area.offset).filter(|a| a % page == 0) else {
                guest_warn!(
                    "BAR{} at {gpa:#x}: not page aligned, accesses are trapped",
                    b.index
                );
                continue;
            };
            // SAFETY: the HostMmap stays alive (and mapped) as long as this
            // Bars value, whose unmap_bar (called before any area is dropped)
            // removes the slot first.
            match unsafe { self.slots.map(at, area.host.len(), area.host.addr()) } {
                Ok(slot) => {
                    log::debug!(
                        "BAR{} {:#x}+{:#x} mapped at {at:#x} (slot {slot})",
                        b.index,
                        area.offset,
                        area.host.len()
                    );
                    b.slots.push(slot)
                }
                Err(e) => host_log!(
                    log::Level::Warn,
                    "BAR{} {:#x}+{:#x} not mapped into the guest at {at:#x} ({e}): \
                     accesses are trapped",
                    b.index,
                    area.offset,
                    area.host.len()
                ),
            }
        }
    }

    fn unmap_bar(&mut self, i: usize) {
        let b = &mut self.bars[i];
        for slot in b.slots.drain(..) {
            if let Err(e) = self.slots.unmap(slot) {
                host_log!(
                    log::Level::Error,
                    "BAR{}: removing memory slot {slot} failed: {e}",
                    b.index
                );
            }
        }
        b.mapped_at = None;
    }

    /// Removes every slot (memory decode off, reset, teardown).
    pub fn unmap_all(&mut self) {
        for i in 0..self.bars.len() {
            self.unmap_bar(i);
        }
    }

    /// Which BAR decodes `addr`, at which offset (memory decode assumed on).
    pub fn containing(&self, emu: &ConfigSpace, addr: u64) -> Option<(usize, u64)> {
        self.bars.iter().find_map(|b| {
            let base = emu.bar_address(b.index)?;
            let end = base.checked_add(b.bar.size)?;
            (base != 0 && addr >= base && addr < end).then(|| (b.index, addr - base))
        })
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        // Slots go before the mappings they point at.
        self.unmap_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sparse: Option<Vec<(u64, u64)>>) -> RegionInfo {
        RegionInfo {
            size: 0x4000,
            readable: true,
            writable: true,
            mmappable: true,
            sparse_areas: sparse,
        }
    }

    #[test]
    fn areas_skip_trapped_pages() {
        let a = mappable_areas(&info(None), 0x4000, &[(0x2000, 0x80)], 0x1000);
        assert_eq!(a, vec![(0, 0x2000), (0x3000, 0x1000)]);
        // A table straddling pages takes both; a PBA at the end takes the last.
        let a = mappable_areas(&info(None), 0x4000, &[(0x1ff0, 0x20), (0x3ff8, 8)], 0x1000);
        assert_eq!(a, vec![(0, 0x1000)]);
    }

    #[test]
    fn sparse_areas_are_respected_and_aligned() {
        let a = mappable_areas(
            &info(Some(vec![(0, 0x1800), (0x3000, 0x1000)])),
            0x4000,
            &[],
            0x1000,
        );
        assert_eq!(a, vec![(0, 0x1000), (0x3000, 0x1000)]);
    }

    #[test]
    fn nothing_maps_when_vfio_says_no() {
        let mut i = info(None);
        i.mmappable = false;
        assert!(mappable_areas(&i, 0x4000, &[], 0x1000).is_empty());
        // Smaller than a page.
        assert!(mappable_areas(&info(None), 0x800, &[], 0x1000).is_empty());
        // Hostile trapped ranges do not overflow.
        let a = mappable_areas(&info(None), 0x4000, &[(u64::MAX - 1, 8)], 0x1000);
        assert_eq!(a, vec![(0, 0x4000)]);
    }
}
