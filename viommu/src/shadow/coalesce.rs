//! Guest table leaves into host mappings: the runs the shadow space
//! installs.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{continues, grants_nothing};
use crate::guest_table::LeafRange;
use crate::host::{HostMapping, HostPerm};
use crate::GuestMemoryMmap;

/// What [`Coalescer`] dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoalesceStats {
    /// Leaves in, and mappings out.
    pub leaves: u64,
    pub runs: u64,
    /// Runs (contiguous in IOVA) of leaves or parts of leaves that are not
    /// guest RAM, and their size.
    pub not_ram_runs: u64,
    pub not_ram_bytes: u64,
}

/// Turns table leaves (in ascending IOVA order) into host mappings:
/// leaves contiguous in IOVA and guest-physical address with the same
/// rights become one mapping, except across a boundary between RAM regions
/// (each region is its own host mapping of guest memory, so the backend
/// cannot map a run crossing one). The parts of leaves outside guest RAM
/// are dropped and counted: the guest may point IOVAs at MMIO or at
/// nothing, and that must not keep its RAM mappings from working.
pub struct Coalescer<'a> {
    mem: &'a GuestMemoryMmap,
    out: Vec<HostMapping>,
    cur: Option<HostMapping>,
    /// Last byte of the RAM region `cur` lies in.
    cur_region_last: u64,
    /// End of the last piece when it was not RAM: a piece continuing it
    /// is part of the same non-RAM run.
    gap_end: Option<u64>,
    stats: CoalesceStats,
}

impl<'a> Coalescer<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        Coalescer {
            mem,
            out: Vec::new(),
            cur: None,
            cur_region_last: 0,
            gap_end: None,
            stats: CoalesceStats::default(),
        }
    }

    pub fn push(&mut self, l: &LeafRange) {
        self.stats.leaves += 1;
        let perm = HostPerm {
            read: l.read,
            write: l.write,
        };
        if l.len == 0 || grants_nothing(perm) {
            return;
        }
        // Neither range may wrap (leaves from `for_each_leaf` never do).
        let len = l.len.min(u64::MAX - l.iova).min(u64::MAX - l.gpa);
        let (mut iova, mut gpa, mut left) = (l.iova, l.gpa, len);
        // One piece per RAM region or gap the leaf's output crosses.
        while left > 0 {
            match self.mem.find_region(GuestAddress(gpa)) {
                Some(r) => {
                    let last = r.last_addr().raw_value();
                    let len = left.min((last - gpa).saturating_add(1));
                    self.ram_piece(
                        HostMapping {
                            iova,
                            gpa,
                            len,
                            perm,
                        },
                        last,
                    );
                    (iova, gpa, left) = (iova.wrapping_add(len), gpa.wrapping_add(len), left - len);
                }
                None => {
                    let next = self
                        .mem
                        .iter()
                        .map(|r| r.start_addr().raw_value())
                        .filter(|&s| s > gpa)
                        .min();
                    let len = next.map_or(left, |n| left.min(n - gpa));
                    if self.gap_end != Some(iova) {
                        self.stats.not_ram_runs += 1;
                    }
                    self.gap_end = Some(iova.wrapping_add(len));
                    self.stats.not_ram_bytes = self.stats.not_ram_bytes.saturating_add(len);
                    (iova, gpa, left) = (iova.wrapping_add(len), gpa.wrapping_add(len), left - len);
                }
            }
        }
    }

    fn ram_piece(&mut self, m: HostMapping, region_last: u64) {
        self.gap_end = None;
        if let Some(c) = &mut self.cur {
            if continues(c, &m) && region_last == self.cur_region_last {
                c.len += m.len;
                return;
            }
            self.out.push(*c);
        }
        self.cur = Some(m);
        self.cur_region_last = region_last;
    }

    pub fn finish(mut self) -> (Vec<HostMapping>, CoalesceStats) {
        if let Some(c) = self.cur.take() {
            self.out.push(c);
        }
        self.stats.runs = self.out.len() as u64;
        (self.out, self.stats)
    }
}

/// [`Coalescer`] over a slice.
pub fn coalesce(mem: &GuestMemoryMmap, leaves: &[LeafRange]) -> (Vec<HostMapping>, CoalesceStats) {
    let mut c = Coalescer::new(mem);
    leaves.iter().for_each(|l| c.push(l));
    c.finish()
}
