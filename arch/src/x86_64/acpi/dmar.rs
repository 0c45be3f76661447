//! The ACPI DMAR table (Intel VT-d specification, chapter 8), which is how a
//! guest learns about emulated DMA-remapping units.
//!
//! acpi_tables has no DMAR type, so the table is serialised here by hand and
//! handed to [`super::create_acpi_tables`] through
//! [`super::AcpiConfig::extra_tables`]. Linux parses it in
//! `drivers/iommu/intel/dmar.c` (layouts in `include/acpi/actbl1.h`); the
//! checks in [`try_dmar_table`] reject what the spec forbids or what Linux
//! would refuse, so that a bad configuration fails in the VMM instead of
//! silently leaving the guest without an IOMMU.
//!
//! Layout: the 36-byte SDT header, Host Address Width, Flags, 10 reserved
//! bytes, then remapping structures (`type: u16, length: u16, ...`). The spec
//! requires the structures in ascending type order, so every DRHD (type 0)
//! precedes every SATC (type 5).

use acpi_tables::sdt::Sdt;

use super::{OEM_ID, OEM_REVISION};

/// OEM table ID of the DMAR.
const OEM_TABLE_ID: [u8; 8] = *b"VMMDMAR ";
/// DMAR revision defined by the VT-d spec.
const DMAR_REVISION: u8 = 1;
/// SDT header plus Host Address Width, Flags and 10 reserved bytes.
const DMAR_HEADER_LEN: usize = 48;

/// Offsets of the DMAR-specific header fields.
const HAW_OFFSET: usize = 36;
const FLAGS_OFFSET: usize = 37;

/// DMAR flags.
const FLAG_INTR_REMAP: u8 = 1 << 0;
const FLAG_X2APIC_OPT_OUT: u8 = 1 << 1;

/// Remapping structure types.
const TYPE_DRHD: u16 = 0;
const TYPE_SATC: u16 = 5;

/// Fixed part of a DRHD: type, length, flags, size, segment, base address.
const DRHD_LEN: usize = 16;
/// Fixed part of a SATC: type, length, flags, reserved, segment.
const SATC_LEN: usize = 8;
/// Fixed part of a device scope: type, length, reserved, enumeration id, bus.
const SCOPE_LEN: usize = 6;

const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
const SATC_ATC_REQUIRED: u8 = 1 << 0;

/// Linux rejects a DMAR whose width field (HAW - 1) is below `PAGE_SHIFT - 1`,
/// and the spec caps addresses at 64 bits.
const MIN_HOST_ADDRESS_WIDTH: u8 = 12;
const MAX_HOST_ADDRESS_WIDTH: u8 = 64;

/// The DRHD size field holds N in bits 3:0 (2^N 4 KiB pages); bits 7:4 are
/// reserved.
const MAX_SIZE_PAGES_LOG2: u8 = 15;
/// Register sets are made of 4 KiB pages and must be page aligned.
const PAGE_SIZE: u64 = 0x1000;

/// What the DMAR describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DmarConfig {
    /// Maximum DMA physical address width in bits (e.g. 46); the table stores
    /// it minus one.
    pub host_address_width: u8,
    /// Interrupt remapping is supported (flags bit 0); without it Linux will
    /// not enable IR, and so not x2APIC with more than 255 APIC ids.
    pub intr_remap: bool,
    /// Asks the OS not to enable x2APIC mode (flags bit 1).
    pub x2apic_opt_out: bool,
    /// The remapping hardware units; at least one is required.
    pub units: Vec<DrhdConfig>,
    /// SoC-integrated address translation caches.
    pub satc: Vec<SatcConfig>,
}

/// A DMA Remapping Hardware Unit Definition (DRHD): one IOMMU register set and
/// the devices behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrhdConfig {
    /// Guest physical address of the register set; 4 KiB aligned, non-zero.
    pub base: u64,
    /// The register set is `2^size_pages_log2` 4 KiB pages (0 = one page).
    pub size_pages_log2: u8,
    /// PCI segment of the devices this unit translates.
    pub segment: u16,
    /// The unit covers every device of `segment` not claimed by another unit.
    /// Such a unit may only list IOAPIC, HPET and ACPI namespace scopes, and at
    /// most one per segment is allowed.
    pub include_pci_all: bool,
    /// Devices under this unit (and, for interrupt remapping, its IOAPICs).
    pub scopes: Vec<DeviceScope>,
}

/// A SoC Integrated Address Translation Cache (SATC) structure: endpoints with
/// an integrated ATC whose ATS use the OS should know about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SatcConfig {
    /// The devices must use ATS for correct operation (flags bit 0).
    pub atc_required: bool,
    /// PCI segment of the devices.
    pub segment: u16,
    /// The devices; only [`DeviceScopeKind::Endpoint`] is allowed.
    pub scopes: Vec<DeviceScope>,
}

/// Device scope entry types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceScopeKind {
    /// A PCI endpoint device (type 1).
    Endpoint,
    /// A PCI-PCI bridge and everything below it (type 2).
    Bridge,
    /// An I/O APIC; `enumeration_id` is its APIC id (type 3).
    IoApic,
    /// An HPET capable of MSI; `enumeration_id` is its HPET number (type 4).
    Hpet,
    /// An ACPI namespace device; `enumeration_id` is its ANDD number (type 5).
    AcpiNamespace,
}

impl DeviceScopeKind {
    fn type_code(self) -> u8 {
        match self {
            DeviceScopeKind::Endpoint => 1,
            DeviceScopeKind::Bridge => 2,
            DeviceScopeKind::IoApic => 3,
            DeviceScopeKind::Hpet => 4,
            DeviceScopeKind::AcpiNamespace => 5,
        }
    }
}

/// A device scope: the device is found by starting at `start_bus` and walking
/// `path` through bridges; the last entry is the device itself. For IOAPIC and
/// HPET scopes this yields the source id the device's interrupts carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    /// What the scope describes.
    pub kind: DeviceScopeKind,
    /// IOAPIC id, HPET number or ANDD number; 0 for PCI scopes.
    pub enumeration_id: u8,
    /// Bus number where the path walk starts.
    pub start_bus: u8,
    /// `(device, function)` hops, at least one; device < 32, function < 8.
    pub path: Vec<(u8, u8)>,
}

/// Why a [`DmarConfig`] cannot be turned into a DMAR table.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmarError {
    #[error(
        "host address width {0} is outside {MIN_HOST_ADDRESS_WIDTH}..={MAX_HOST_ADDRESS_WIDTH}"
    )]
    InvalidHostAddressWidth(u8),
    #[error("a DMAR needs at least one remapping unit")]
    NoUnits,
    #[error("DRHD #{index} is invalid: {reason}")]
    InvalidUnit { index: usize, reason: &'static str },
    #[error("more than one INCLUDE_PCI_ALL unit for PCI segment {segment}")]
    DuplicateIncludeAll { segment: u16 },
    #[error("{structure} #{index}, device scope #{scope}: {reason}")]
    InvalidScope {
        structure: &'static str,
        index: usize,
        scope: usize,
        reason: &'static str,
    },
    #[error("{structure} #{index} is longer than 65535 bytes")]
    StructureTooLong {
        structure: &'static str,
        index: usize,
    },
    #[error("the DMAR is longer than 4 GiB")]
    TableTooLong,
}

/// Builds the DMAR as a complete, checksummed SDT for
/// [`super::AcpiConfig::extra_tables`].
///
/// DRHDs with `include_pci_all` are moved after the other units (keeping the
/// relative order otherwise), as the spec requires them to be enumerated last
/// for their segment.
pub fn try_dmar_table(cfg: &DmarConfig) -> Result<Vec<u8>, DmarError> {
    if !(MIN_HOST_ADDRESS_WIDTH..=MAX_HOST_ADDRESS_WIDTH).contains(&cfg.host_address_width) {
        return Err(DmarError::InvalidHostAddressWidth(cfg.host_address_width));
    }
    if cfg.units.is_empty() {
        return Err(DmarError::NoUnits);
    }

    let mut body = Vec::new();
    let mut units: Vec<(usize, &DrhdConfig)> = cfg.units.iter().enumerate().collect();
    units.sort_by_key(|(_, unit)| unit.include_pci_all);
    let mut include_all_segments = Vec::new();
    for (index, unit) in units {
        if unit.include_pci_all {
            if include_all_segments.contains(&unit.segment) {
                return Err(DmarError::DuplicateIncludeAll {
                    segment: unit.segment,
                });
            }
            include_all_segments.push(unit.segment);
        }
        drhd(&mut body, index, unit)?;
    }
    for (index, satc_cfg) in cfg.satc.iter().enumerate() {
        satc(&mut body, index, satc_cfg)?;
    }

    let len = u32::try_from(DMAR_HEADER_LEN + body.len()).map_err(|_| DmarError::TableTooLong)?;
    let mut flags = 0;
    if cfg.intr_remap {
        flags |= FLAG_INTR_REMAP;
    }
    if cfg.x2apic_opt_out {
        flags |= FLAG_X2APIC_OPT_OUT;
    }
    let mut table = Sdt::new(
        *b"DMAR",
        DMAR_HEADER_LEN as u32,
        DMAR_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.write_u8(HAW_OFFSET, cfg.host_address_width - 1);
    table.write_u8(FLAGS_OFFSET, flags);
    table.append_slice(&body);
    debug_assert_eq!(table.len(), len as usize);
    Ok(table.as_slice().to_vec())
}

/// Like [`try_dmar_table`], for configurations the VMM derives itself and
/// knows to be valid.
///
/// # Panics
///
/// If [`try_dmar_table`] would fail: an invalid configuration is a VMM bug,
/// and a malformed DMAR would make the guest silently ignore the IOMMU.
pub fn dmar_table(cfg: &DmarConfig) -> Vec<u8> {
    match try_dmar_table(cfg) {
        Ok(table) => table,
        Err(e) => panic!("invalid DMAR configuration: {e}"),
    }
}

/// Appends DRHD `index` to `out`.
fn drhd(out: &mut Vec<u8>, index: usize, unit: &DrhdConfig) -> Result<(), DmarError> {
    let invalid = |reason| DmarError::InvalidUnit { index, reason };
    if unit.base == 0 {
        // Linux treats a zero base as a firmware bug and ignores the DMAR.
        return Err(invalid("register base address is zero"));
    }
    if !unit.base.is_multiple_of(PAGE_SIZE) {
        return Err(invalid("register base address is not 4 KiB aligned"));
    }
    if unit.size_pages_log2 > MAX_SIZE_PAGES_LOG2 {
        return Err(invalid("register set size does not fit bits 3:0"));
    }
    let size = PAGE_SIZE << unit.size_pages_log2;
    if unit.base.checked_add(size - 1).is_none() {
        return Err(invalid("register set extends beyond 2^64"));
    }

    let start = out.len();
    out.extend_from_slice(&TYPE_DRHD.to_le_bytes());
    out.extend_from_slice(&[0, 0]); // length, patched below
    out.push(if unit.include_pci_all {
        DRHD_INCLUDE_PCI_ALL
    } else {
        0
    });
    out.push(unit.size_pages_log2);
    out.extend_from_slice(&unit.segment.to_le_bytes());
    out.extend_from_slice(&unit.base.to_le_bytes());
    debug_assert_eq!(out.len() - start, DRHD_LEN);
    for (i, scope) in unit.scopes.iter().enumerate() {
        // An INCLUDE_PCI_ALL unit already covers every PCI device; the spec
        // only lets it name the non-PCI devices whose requester ids it owns.
        let pci = matches!(
            scope.kind,
            DeviceScopeKind::Endpoint | DeviceScopeKind::Bridge
        );
        if unit.include_pci_all && pci {
            return Err(DmarError::InvalidScope {
                structure: "DRHD",
                index,
                scope: i,
                reason: "INCLUDE_PCI_ALL units cannot list PCI devices",
            });
        }
        device_scope(out, scope).map_err(|reason| DmarError::InvalidScope {
            structure: "DRHD",
            index,
            scope: i,
            reason,
        })?;
    }
    patch_length(out, start, "DRHD", index)
}

/// Appends SATC `index` to `out`.
fn satc(out: &mut Vec<u8>, index: usize, satc: &SatcConfig) -> Result<(), DmarError> {
    let start = out.len();
    out.extend_from_slice(&TYPE_SATC.to_le_bytes());
    out.extend_from_slice(&[0, 0]); // length, patched below
    out.push(if satc.atc_required {
        SATC_ATC_REQUIRED
    } else {
        0
    });
    out.push(0); // reserved
    out.extend_from_slice(&satc.segment.to_le_bytes());
    debug_assert_eq!(out.len() - start, SATC_LEN);
    for (i, scope) in satc.scopes.iter().enumerate() {
        let invalid = |reason| DmarError::InvalidScope {
            structure: "SATC",
            index,
            scope: i,
            reason,
        };
        if scope.kind != DeviceScopeKind::Endpoint {
            return Err(invalid("SATC scopes must be PCI endpoints"));
        }
        device_scope(out, scope).map_err(invalid)?;
    }
    patch_length(out, start, "SATC", index)
}

/// Appends a device scope to `out`.
fn device_scope(out: &mut Vec<u8>, scope: &DeviceScope) -> Result<(), &'static str> {
    if scope.path.is_empty() {
        // Linux derives the device (or the interrupt source id) from the
        // last path entry, so a scope without one is meaningless.
        return Err("empty path");
    }
    if scope.path.iter().any(|&(dev, func)| dev >= 32 || func >= 8) {
        return Err("path entry is not a valid PCI device/function");
    }
    let len = u8::try_from(SCOPE_LEN + 2 * scope.path.len()).map_err(|_| "path too long")?;
    out.extend_from_slice(&[scope.kind.type_code(), len, 0, 0]);
    out.extend_from_slice(&[scope.enumeration_id, scope.start_bus]);
    for &(dev, func) in &scope.path {
        out.extend_from_slice(&[dev, func]);
    }
    Ok(())
}

/// Writes the length of the remapping structure that starts at `start` and
/// runs to the end of `out`.
fn patch_length(
    out: &mut [u8],
    start: usize,
    structure: &'static str,
    index: usize,
) -> Result<(), DmarError> {
    let len = u16::try_from(out.len() - start)
        .map_err(|_| DmarError::StructureTooLong { structure, index })?;
    out[start + 2..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{create_acpi_tables, AcpiConfig};
    use super::*;
    use crate::x86_64::layout;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn ioapic_scope() -> DeviceScope {
        DeviceScope {
            kind: DeviceScopeKind::IoApic,
            enumeration_id: 0,
            start_bus: 0,
            path: vec![(31, 0)],
        }
    }

    fn endpoint(dev: u8) -> DeviceScope {
        DeviceScope {
            kind: DeviceScopeKind::Endpoint,
            enumeration_id: 0,
            start_bus: 0,
            path: vec![(dev, 0)],
        }
    }

    fn config() -> DmarConfig {
        DmarConfig {
            host_address_width: 46,
            intr_remap: true,
            x2apic_opt_out: false,
            units: vec![DrhdConfig {
                base: layout::IOMMU_START,
                size_pages_log2: 0,
                segment: 0,
                include_pci_all: true,
                scopes: vec![ioapic_scope()],
            }],
            satc: vec![SatcConfig {
                atc_required: true,
                segment: 0,
                scopes: vec![endpoint(3)],
            }],
        }
    }

    /// A remapping structure: its type and all its bytes (DRHD: flags at 4,
    /// size at 5, segment at 6, base at 8; SATC: flags at 4, segment at 6).
    struct Structure<'a> {
        kind: u16,
        bytes: &'a [u8],
    }

    /// Checks the SDT framing and splits the table into its structures.
    fn parse(table: &[u8]) -> Vec<Structure<'_>> {
        assert_eq!(&table[0..4], b"DMAR");
        assert_eq!(u32_at(table, 4) as usize, table.len());
        assert_eq!(table[8], 1, "revision");
        assert_eq!(
            table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "checksum"
        );
        assert_eq!(&table[10..16], &OEM_ID);
        assert_eq!(&table[16..24], b"VMMDMAR ");
        assert_eq!(u32_at(table, 24), OEM_REVISION);
        assert_eq!(&table[38..48], &[0; 10], "reserved");
        let mut out = Vec::new();
        let mut off = DMAR_HEADER_LEN;
        while off < table.len() {
            let kind = u16_at(table, off);
            let len = u16_at(table, off + 2) as usize;
            assert!(len >= 8 && off + len <= table.len());
            out.push(Structure {
                kind,
                bytes: &table[off..off + len],
            });
            off += len;
        }
        assert_eq!(off, table.len());
        out
    }

    /// Splits the device scopes that start at `off` of a structure.
    fn scopes(s: &[u8], mut off: usize) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while off < s.len() {
            let len = s[1 + off] as usize;
            assert!(len >= 8 && (len - 6).is_multiple_of(2));
            out.push(&s[off..off + len]);
            off += len;
        }
        assert_eq!(off, s.len());
        out
    }

    #[test]
    fn single_unit_with_ioapic_and_satc() {
        let table = dmar_table(&config());
        assert_eq!(table[36], 45, "HAW - 1");
        assert_eq!(table[37], 0b01, "INTR_REMAP only");
        let structures = parse(&table);
        assert_eq!(structures.len(), 2);

        let drhd = structures[0].bytes;
        assert_eq!(structures[0].kind, 0);
        assert_eq!(drhd.len(), 16 + 8);
        assert_eq!(drhd[4], 1, "INCLUDE_PCI_ALL");
        assert_eq!(drhd[5], 0, "one 4 KiB page");
        assert_eq!(u16_at(drhd, 6), 0, "segment");
        assert_eq!(u64_at(drhd, 8), layout::IOMMU_START);
        let s = scopes(drhd, 16);
        assert_eq!(s, vec![&[3u8, 8, 0, 0, 0, 0, 31, 0][..]]);

        let satc = structures[1].bytes;
        assert_eq!(structures[1].kind, 5);
        assert_eq!(satc.len(), 8 + 8);
        assert_eq!(satc[4], 1, "ATC_REQUIRED");
        assert_eq!(satc[5], 0);
        assert_eq!(u16_at(satc, 6), 0);
        assert_eq!(scopes(satc, 8), vec![&[1u8, 8, 0, 0, 0, 0, 3, 0][..]]);
    }

    #[test]
    fn multiple_units() {
        let mut cfg = config();
        cfg.intr_remap = false;
        cfg.x2apic_opt_out = true;
        cfg.host_address_width = 39;
        cfg.satc.clear();
        // The catch-all unit is listed first but must be emitted last.
        cfg.units.push(DrhdConfig {
            base: layout::IOMMU_START + 0x1000,
            size_pages_log2: 1,
            segment: 0,
            include_pci_all: false,
            scopes: vec![
                endpoint(4),
                DeviceScope {
                    kind: DeviceScopeKind::Bridge,
                    enumeration_id: 0,
                    start_bus: 0,
                    path: vec![(5, 0), (0, 1)],
                },
            ],
        });
        cfg.units.push(DrhdConfig {
            base: 0x1_0000_0000,
            size_pages_log2: 0,
            segment: 1,
            include_pci_all: true,
            scopes: vec![DeviceScope {
                kind: DeviceScopeKind::Hpet,
                enumeration_id: 2,
                start_bus: 0x80,
                path: vec![(31, 7)],
            }],
        });
        let table = dmar_table(&cfg);
        assert_eq!((table[36], table[37]), (38, 0b10));
        let structures = parse(&table);
        assert_eq!(structures.len(), 3);
        assert!(structures.iter().all(|s| s.kind == 0));

        let explicit = structures[0].bytes;
        assert_eq!((explicit[4], explicit[5]), (0, 1));
        assert_eq!(u64_at(explicit, 8), layout::IOMMU_START + 0x1000);
        assert_eq!(
            scopes(explicit, 16),
            vec![
                &[1u8, 8, 0, 0, 0, 0, 4, 0][..],
                &[2u8, 10, 0, 0, 0, 0, 5, 0, 0, 1][..],
            ]
        );
        assert_eq!(u64_at(structures[1].bytes, 8), layout::IOMMU_START);
        assert_eq!(structures[1].bytes[4], 1);
        let seg1 = structures[2].bytes;
        assert_eq!((seg1[4], u16_at(seg1, 6)), (1, 1));
        assert_eq!(u64_at(seg1, 8), 0x1_0000_0000);
        assert_eq!(scopes(seg1, 16), vec![&[4u8, 8, 0, 0, 2, 0x80, 31, 7][..]]);
    }

    #[test]
    fn accepted_by_create_acpi_tables() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), layout::HIGH_RAM_START as usize)])
                .unwrap();
        let table = dmar_table(&config());
        let cfg = AcpiConfig {
            num_cpus: 2,
            pci_mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            pci_mmio64: (0, 0),
            extra_tables: vec![table.clone()],
        };
        let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
        let xsdt_addr = mem.read_obj::<u64>(GuestAddress(rsdp.0 + 24)).unwrap();
        let xsdt_len = mem.read_obj::<u32>(GuestAddress(xsdt_addr + 4)).unwrap() as u64;
        let entries: Vec<u64> = (36..xsdt_len)
            .step_by(8)
            .map(|off| mem.read_obj(GuestAddress(xsdt_addr + off)).unwrap())
            .collect();
        let mut found = Vec::new();
        for addr in entries {
            let mut sig = [0u8; 4];
            mem.read_slice(&mut sig, GuestAddress(addr)).unwrap();
            if &sig == b"DMAR" {
                let mut bytes = vec![0u8; table.len()];
                mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                found.push(bytes);
            }
        }
        assert_eq!(found, vec![table]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let check = |f: &dyn Fn(&mut DmarConfig), want: fn(&DmarError) -> bool| {
            let mut cfg = config();
            f(&mut cfg);
            let err = try_dmar_table(&cfg).unwrap_err();
            assert!(want(&err), "{err:?}");
        };
        use DmarError::*;
        check(&|c| c.host_address_width = 11, |e| {
            matches!(e, InvalidHostAddressWidth(11))
        });
        check(&|c| c.host_address_width = 65, |e| {
            matches!(e, InvalidHostAddressWidth(65))
        });
        check(&|c| c.units.clear(), |e| matches!(e, NoUnits));
        check(&|c| c.units[0].base = 0, |e| {
            matches!(e, InvalidUnit { index: 0, .. })
        });
        check(&|c| c.units[0].base += 0x800, |e| {
            matches!(e, InvalidUnit { index: 0, .. })
        });
        check(&|c| c.units[0].size_pages_log2 = 16, |e| {
            matches!(e, InvalidUnit { index: 0, .. })
        });
        // The last page of the address space is fine; two pages are not.
        check(
            &|c| {
                c.units[0].base = !0xfff;
                c.units[0].size_pages_log2 = 1;
            },
            |e| matches!(e, InvalidUnit { index: 0, .. }),
        );
        check(&|c| c.units.push(c.units[0].clone()), |e| {
            matches!(e, DuplicateIncludeAll { segment: 0 })
        });
        check(&|c| c.units[0].scopes.push(endpoint(1)), |e| {
            matches!(
                e,
                InvalidScope {
                    structure: "DRHD",
                    scope: 1,
                    ..
                }
            )
        });
        check(&|c| c.units[0].scopes[0].path.clear(), |e| {
            matches!(
                e,
                InvalidScope {
                    structure: "DRHD",
                    scope: 0,
                    ..
                }
            )
        });
        check(&|c| c.units[0].scopes[0].path = vec![(32, 0)], |e| {
            matches!(e, InvalidScope { .. })
        });
        check(&|c| c.units[0].scopes[0].path = vec![(0, 8)], |e| {
            matches!(e, InvalidScope { .. })
        });
        check(&|c| c.units[0].scopes[0].path = vec![(0, 0); 125], |e| {
            matches!(
                e,
                InvalidScope {
                    reason: "path too long",
                    ..
                }
            )
        });
        check(&|c| c.satc[0].scopes.push(ioapic_scope()), |e| {
            matches!(
                e,
                InvalidScope {
                    structure: "SATC",
                    index: 0,
                    scope: 1,
                    ..
                }
            )
        });
        check(
            &|c| {
                c.units[0].include_pci_all = false;
                c.units[0].scopes = vec![endpoint(1); 8200];
            },
            |e| {
                matches!(
                    e,
                    StructureTooLong {
                        structure: "DRHD",
                        index: 0
                    }
                )
            },
        );

        // The edge cases that fit still work.
        let mut cfg = config();
        cfg.units[0].base = !0xfff;
        cfg.units[0].size_pages_log2 = 0;
        assert!(try_dmar_table(&cfg).is_ok());
        cfg.units[0].scopes[0].path = vec![(0, 0); 124];
        let table = try_dmar_table(&cfg).unwrap();
        assert_eq!(scopes(parse(&table)[0].bytes, 16)[0][1], 254);
    }

    #[test]
    #[should_panic(expected = "invalid DMAR configuration")]
    fn dmar_table_panics_on_invalid_config() {
        let mut cfg = config();
        cfg.units.clear();
        dmar_table(&cfg);
    }
}
