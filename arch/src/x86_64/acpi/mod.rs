//! ACPI tables for a hardware-reduced x86_64 PC with one PCIe host bridge.
//!
//! The machine has no PM1/GPE blocks, PIT, HPET or legacy PIC, so the FADT
//! declares HW_REDUCED_ACPI: poweroff and reset go through three one-byte I/O
//! registers (see [`layout::ACPI_SLEEP_CONTROL_PORT`] and friends) that the VMM
//! must emulate. Interrupts are routed by the MADT's IOAPIC, PCI config space
//! is reached through the MCFG's ECAM window, and the DSDT describes the host
//! bridge, the ECAM reservation and COM1.
//!
//! Everything is placed in `[ACPI_START, ACPI_END)`: the RSDP first, because
//! Linux also finds it by scanning that BIOS area on 16-byte boundaries, then
//! each table 16-byte aligned, the XSDT last as it needs every other address.

pub mod dmar;
mod dsdt;

pub use dmar::{
    dmar_table, try_dmar_table, DeviceScope, DeviceScopeKind, DmarConfig, DmarError, DrhdConfig,
    SatcConfig,
};
pub use dsdt::dsdt;

use acpi_tables::{
    fadt::{FADTBuilder, Flags},
    gas::{AccessSize, AddressSpace, GAS},
    madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT},
    mcfg::MCFG,
    rsdp::Rsdp,
    xsdt::XSDT,
    Aml,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::x86_64::layout;

/// OEM ID of every table.
pub const OEM_ID: [u8; 6] = *b"VMMRS ";
/// OEM revision of every table.
pub const OEM_REVISION: u32 = 1;

/// Length of the standard SDT header.
const SDT_HEADER_LEN: usize = 36;
/// Alignment of each table in guest memory (the RSDP needs 16 bytes).
const TABLE_ALIGN: u64 = 16;

/// IA-PC boot architecture flags (FADT offset 109): no VGA to probe and no
/// CMOS RTC, so Linux neither pokes the VGA ports nor registers rtc_cmos. The
/// 8042 bit stays clear; the ASPM bit stays clear as it would stop Linux from
/// requesting native PCIe control in `_OSC`.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT Local APIC NMI structure: all processors (UID 0xff), flags 0
/// (bus-conformant polarity and trigger), LINT1 — the PC's NMI wiring.
const MADT_LOCAL_APIC_NMI: [u8; 6] = [4, 6, 0xff, 0, 0, 1];

// The MADT and the ECAM descriptors hold 32-bit addresses.
const _: () = assert!(layout::APIC_START <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_START <= u32::MAX as u64);

/// What the ACPI tables describe about the machine.
#[derive(Clone, Debug, Default)]
pub struct AcpiConfig {
    /// Number of vCPUs; their APIC ids (and ACPI processor UIDs) are `0..num_cpus`.
    pub num_cpus: u8,
    /// `(start, size)` of the 32-bit PCI MMIO window; size 0 omits it.
    pub pci_mmio32: (u64, u64),
    /// `(start, size)` of the 64-bit PCI MMIO window; size 0 omits it.
    pub pci_mmio64: (u64, u64),
    /// Complete, checksummed SDTs (e.g. a DMAR) appended to the XSDT.
    pub extra_tables: Vec<Vec<u8>>,
}

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("at least one vCPU is required")]
    NoCpus,
    #[error("invalid PCI window {name}: start {start:#x}, size {size:#x}")]
    InvalidWindow {
        name: &'static str,
        start: u64,
        size: u64,
    },
    #[error("extra ACPI table #{index} is malformed: {reason}")]
    InvalidTable { index: usize, reason: &'static str },
    #[error("ACPI tables end at {end:#x}, beyond the ACPI area end {limit:#x}")]
    TooLarge { end: u64, limit: u64 },
    #[error("failed to write ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Appends `data` to a serialised SDT, fixing its length and checksum.
fn append_to_sdt(table: &mut Vec<u8>, data: &[u8]) {
    table.extend_from_slice(data);
    let len = table.len() as u32;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    table[9] = 0u8.wrapping_sub(byte_sum(table));
}

/// The 8-bit sum of `bytes`; a valid ACPI table sums to 0.
fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// A one-byte System I/O register, the shape Linux requires of the reset
/// register (8 bits wide at offset 0) and uses for the sleep registers.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Builds the FADT pointing at the DSDT at `dsdt_addr`.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    // PWR_BUTTON/SLP_BUTTON set mean "no fixed-feature buttons", which is all
    // a hardware-reduced platform can say.
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VMMFACP ", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_register(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(layout::ACPI_SLEEP_STATUS_PORT);
    to_bytes(&fadt.finalize())
}

/// Builds the MADT: one enabled local APIC per vCPU, IOAPIC 0 with GSI base 0
/// and the LINT1 NMI. Flags are 0: there is no dual 8259 to mask.
pub fn madt(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mut madt = MADT::new(
        OEM_ID,
        *b"VMMAPIC ",
        OEM_REVISION,
        LocalInterruptController::Address(layout::APIC_START as u32),
    );
    for id in 0..cfg.num_cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, layout::IOAPIC_START as u32, 0));
    // acpi_tables has no type for the Local APIC NMI structure.
    let mut bytes = to_bytes(&madt);
    append_to_sdt(&mut bytes, &MADT_LOCAL_APIC_NMI);
    Ok(bytes)
}

/// Builds the MCFG with the single ECAM window of segment 0.
pub fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"VMMMCFG ", OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, dsdt::ECAM_LAST_BUS);
    to_bytes(&mcfg)
}

/// Checks that an extra table is a complete SDT with a valid checksum.
fn check_table(index: usize, table: &[u8]) -> Result<(), AcpiError> {
    let reason = if table.len() < SDT_HEADER_LEN {
        "shorter than an SDT header"
    } else if u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize != table.len() {
        "header length does not match its size"
    } else if byte_sum(table) != 0 {
        "bad checksum"
    } else {
        return Ok(());
    };
    Err(AcpiError::InvalidTable { index, reason })
}

/// Returns the address for a `len`-byte table and advances `next` past it.
fn place(next: &mut u64, len: usize) -> u64 {
    let at = *next;
    *next = (at + len as u64).next_multiple_of(TABLE_ALIGN);
    at
}

/// Writes RSDP (at `layout::ACPI_START`), XSDT, FADT, DSDT, MADT, MCFG and the
/// extra tables into guest memory inside `[ACPI_START, ACPI_END)` and returns
/// the RSDP address (for `boot_params.acpi_rsdp_addr`).
///
/// Nothing is written unless every table fits.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    for (index, table) in cfg.extra_tables.iter().enumerate() {
        check_table(index, table)?;
    }

    let rsdp_addr = layout::ACPI_START;
    let mut next = rsdp_addr;
    place(&mut next, Rsdp::len());

    let dsdt = dsdt(cfg)?;
    let dsdt_addr = place(&mut next, dsdt.len());
    let fadt = fadt(dsdt_addr);
    let madt = madt(cfg)?;
    let mcfg = mcfg();

    // The DSDT is reached through the FADT, not listed in the XSDT.
    let mut tables: Vec<(u64, &[u8])> = vec![(dsdt_addr, dsdt.as_slice())];
    let mut xsdt = XSDT::new(OEM_ID, *b"VMMXSDT ", OEM_REVISION);
    let listed = [&fadt, &madt, &mcfg].into_iter().chain(&cfg.extra_tables);
    for table in listed {
        let addr = place(&mut next, table.len());
        xsdt.add_entry(addr);
        tables.push((addr, table.as_slice()));
    }
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = place(&mut next, xsdt.len());
    tables.push((xsdt_addr, xsdt.as_slice()));

    let end = xsdt_addr + xsdt.len() as u64;
    if end > layout::RESET_VECTOR {
        return Err(AcpiError::TooLarge {
            end,
            limit: layout::RESET_VECTOR,
        });
    }

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))?;
    for (addr, table) in tables {
        mem.write_slice(table, GuestAddress(addr))?;
    }
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_tables::sdt::Sdt;
    use vm_memory::GuestMemoryMmap;

    const MMIO64: (u64, u64) = (0x4_0000_0000, layout::PCI_MMIO64_SIZE);

    fn config(num_cpus: u8) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            pci_mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            pci_mmio64: MMIO64,
            extra_tables: Vec::new(),
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), layout::HIGH_RAM_START as usize)]).unwrap()
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Reads a whole SDT from guest memory and checks its placement and checksum.
    fn read_table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let mut header = [0u8; SDT_HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        assert_eq!(&header[0..4], signature);
        let len = u32_at(&header, 4) as u64;
        assert!(addr >= layout::ACPI_START && addr + len <= layout::ACPI_END);
        let mut table = vec![0u8; len as usize];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(byte_sum(&table), 0, "checksum of {:?}", signature);
        assert_eq!(&table[10..16], &OEM_ID);
        table
    }

    /// Checks the RSDP and returns the XSDT entries.
    fn read_xsdt(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Vec<u64> {
        assert_eq!(rsdp_addr, GuestAddress(layout::ACPI_START));
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(byte_sum(&rsdp[..20]), 0);
        assert_eq!(byte_sum(&rsdp), 0);
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        assert_eq!(u32_at(&rsdp, 20), 36);
        let xsdt = read_table(mem, u64_at(&rsdp, 24), b"XSDT");
        (SDT_HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|off| u64_at(&xsdt, off))
            .collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn tables_in_guest_memory() {
        let mem = memory();
        let rsdp = create_acpi_tables(&mem, &config(4)).unwrap();
        let entries = read_xsdt(&mem, rsdp);
        assert_eq!(entries.len(), 3);
        let fadt = read_table(&mem, entries[0], b"FACP");
        let madt = read_table(&mem, entries[1], b"APIC");
        let mcfg = read_table(&mem, entries[2], b"MCFG");

        // FADT: 6.5, hardware reduced, X_DSDT, the I/O registers.
        assert_eq!(fadt.len(), 276);
        assert_eq!((fadt[8], fadt[131]), (6, 5));
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = read_table(&mem, u64_at(&fadt, 140), b"DSDT");
        assert_eq!(dsdt, super::dsdt(&config(4)).unwrap());
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_eq!(
            u16_at(&fadt, 109),
            0x24,
            "no VGA, no CMOS RTC, 8042 bit clear"
        );
        let io_gas = |port: u16| {
            let mut gas = vec![1u8, 8, 0, 1];
            gas.extend_from_slice(&u64::from(port).to_le_bytes());
            gas
        };
        assert_eq!(fadt[116..128], io_gas(layout::ACPI_RESET_PORT));
        assert_eq!(fadt[128], layout::ACPI_RESET_VALUE);
        assert_eq!(fadt[244..256], io_gas(layout::ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(fadt[256..268], io_gas(layout::ACPI_SLEEP_STATUS_PORT));

        // MADT: LAPIC address, no PC-AT flag, 4 enabled LAPICs, 1 IOAPIC, 1 NMI.
        assert_eq!(u32_at(&madt, 36) as u64, layout::APIC_START);
        assert_eq!(u32_at(&madt, 40), 0);
        let (mut lapics, mut ioapics, mut nmis) = (Vec::new(), 0, 0);
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(u32_at(&madt, off + 4), 1, "enabled");
                    lapics.push(madt[off + 3]);
                }
                1 => {
                    assert_eq!(madt[off + 2], 0, "IOAPIC id");
                    assert_eq!(u32_at(&madt, off + 4) as u64, layout::IOAPIC_START);
                    assert_eq!(u32_at(&madt, off + 8), 0, "GSI base");
                    ioapics += 1;
                }
                4 => {
                    assert_eq!(madt[off..off + len], MADT_LOCAL_APIC_NMI);
                    nmis += 1;
                }
                _ => panic!("unexpected MADT structure {kind}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(lapics, vec![0, 1, 2, 3]);
        assert_eq!((ioapics, nmis), (1, 1));

        // MCFG: one ECAM entry.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(&mcfg, 44), layout::PCI_ECAM_START);
        assert_eq!(u16_at(&mcfg, 52), 0);
        assert_eq!((mcfg[54], mcfg[55] as u64), (0, layout::PCI_ECAM_BUSES - 1));
    }

    #[test]
    fn dsdt_contents() {
        let dsdt = dsdt(&config(1)).unwrap();
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(u32_at(&dsdt, 4) as usize, dsdt.len());
        assert_eq!(byte_sum(&dsdt), 0);
        assert!(dsdt[8] >= 2, "revision 2+ for 64-bit AML integers");
        for name in [
            &b"_SB_"[..],
            b"PCI0",
            b"MBRD",
            b"COM1",
            b"_S5_",
            b"_OSC",
            b"_CRS",
            b"CDW1",
        ] {
            assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
        }
        // \_S5_: Name, Package of two elements { 5, 0 }.
        assert!(contains(
            &dsdt,
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, 5, 0x00]
        ));
        // The ECAM window as a Memory32Fixed in MBRD.
        let mut ecam = vec![0x86, 9, 0, 1];
        ecam.extend_from_slice(&(layout::PCI_ECAM_START as u32).to_le_bytes());
        ecam.extend_from_slice(&(layout::PCI_ECAM_SIZE as u32).to_le_bytes());
        assert!(contains(&dsdt, &ecam));
        // COM1's IO port descriptor and its extended interrupt 4 (edge, high, consumer).
        assert!(contains(&dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]));
        assert!(contains(&dsdt, &[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]));
        // Both memory windows: min and max of the 64-bit one.
        let mut qword = MMIO64.0.to_le_bytes().to_vec();
        qword.extend_from_slice(&(MMIO64.0 + MMIO64.1 - 1).to_le_bytes());
        assert!(contains(&dsdt, &qword));
        let mut dword = (layout::PCI_MMIO32_START as u32).to_le_bytes().to_vec();
        let end32 = layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1;
        dword.extend_from_slice(&(end32 as u32).to_le_bytes());
        assert!(contains(&dsdt, &dword));
    }

    #[test]
    fn empty_64bit_window_is_omitted() {
        let mut cfg = config(1);
        cfg.pci_mmio64 = (0, 0);
        let dsdt = dsdt(&cfg).unwrap();
        assert!(!contains(&dsdt, &[0x8a, 0x2b, 0]), "no QWord descriptor");
        assert_eq!(byte_sum(&dsdt), 0);
    }

    #[test]
    fn extra_tables_are_appended() {
        let mem = memory();
        let mut extra = Sdt::new(*b"DMAR", 48, 1, OEM_ID, *b"VMMDMAR ", 1);
        extra.write_u32(40, 0xdead_beef);
        let mut cfg = config(255);
        cfg.extra_tables = vec![extra.as_slice().to_vec()];
        let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
        let entries = read_xsdt(&mem, rsdp);
        assert_eq!(entries.len(), 4);
        let dmar = read_table(&mem, entries[3], b"DMAR");
        assert_eq!(dmar, extra.as_slice());
        let madt = read_table(&mem, entries[1], b"APIC");
        assert_eq!(madt.len(), 44 + 255 * 8 + 12 + 6);
    }

    #[test]
    fn bad_extra_tables_are_rejected() {
        let mem = memory();
        let mut cfg = config(1);
        let mut table = Sdt::new(*b"TEST", 40, 1, OEM_ID, *b"TESTTEST", 1)
            .as_slice()
            .to_vec();
        table[39] ^= 1;
        for bad in [vec![0u8; 10], table] {
            cfg.extra_tables = vec![bad];
            assert!(matches!(
                create_acpi_tables(&mem, &cfg),
                Err(AcpiError::InvalidTable { index: 0, .. })
            ));
        }
    }

    #[test]
    fn oversized_tables_are_rejected_without_writing() {
        let mem = memory();
        let mut cfg = config(1);
        let size = (layout::ACPI_END - layout::ACPI_START) as u32;
        cfg.extra_tables = vec![Sdt::new(*b"HUGE", size, 1, OEM_ID, *b"HUGEHUGE", 1)
            .as_slice()
            .to_vec()];
        assert!(matches!(
            create_acpi_tables(&mem, &cfg),
            Err(AcpiError::TooLarge { .. })
        ));
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(layout::ACPI_START))
            .unwrap();
        assert_eq!(sig, [0; 8]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mem = memory();
        assert!(matches!(
            create_acpi_tables(&mem, &config(0)),
            Err(AcpiError::NoCpus)
        ));
        let mut cfg = config(1);
        cfg.pci_mmio32 = (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE + 1);
        assert!(matches!(
            dsdt(&cfg),
            Err(AcpiError::InvalidWindow {
                name: "pci_mmio32",
                ..
            })
        ));
        cfg.pci_mmio32 = (0xffff_f000, 0x2000);
        assert!(dsdt(&cfg).is_err());
        cfg = config(1);
        cfg.pci_mmio64 = (u64::MAX, 2);
        assert!(dsdt(&cfg).is_err());
    }
}
