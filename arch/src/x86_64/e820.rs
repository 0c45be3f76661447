//! The BIOS e820 memory map handed to Linux in `boot_params`.

use super::layout::*;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The map for `ram_size` bytes of RAM: conventional memory below the EBDA,
/// the reserved BIOS area with the ACPI tables, RAM from 1 MiB to the PCI
/// hole, the ECAM window (reserved: Linux wants MMCONFIG reserved) and RAM
/// above 4 GiB.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_regions(ram_size) {
        let (start, size) = if start == 0 {
            (HIGH_RAM_START, size.saturating_sub(HIGH_RAM_START))
        } else {
            (start, size)
        };
        if size > 0 {
            map.push(E820Entry {
                addr: start,
                size,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_ECAM_START,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total_ram(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    fn assert_sorted_disjoint(map: &[E820Entry]) {
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{map:x?}");
        }
    }

    #[test]
    fn small_guest_has_no_high_ram() {
        let map = e820_map(512 << 20);
        assert_sorted_disjoint(&map);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert!(map.iter().all(|e| e.addr < RAM_64BIT_START));
        assert_eq!(total_ram(&map), EBDA_START + (512 << 20) - HIGH_RAM_START);
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let map = e820_map(4 << 30);
        assert_sorted_disjoint(&map);
        let high = map.iter().find(|e| e.addr == RAM_64BIT_START).unwrap();
        assert_eq!(high.size, (4 << 30) - MMIO_HOLE_START);
        let low = map.iter().find(|e| e.addr == HIGH_RAM_START).unwrap();
        assert_eq!(low.addr + low.size, MMIO_HOLE_START);
        // No RAM overlaps the MMIO hole.
        assert!(map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= RAM_64BIT_START));
        assert!(map
            .iter()
            .any(|e| e.addr == PCI_ECAM_START && e.kind == E820_RESERVED));
    }

    #[test]
    fn hole_boundary_exact() {
        let map = e820_map(MMIO_HOLE_START);
        assert!(map.iter().all(|e| e.addr != RAM_64BIT_START));
        assert_sorted_disjoint(&map);
    }
}
