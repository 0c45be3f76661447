//! Guest physical and port address map of the x86_64 machine.
//!
//! ```text
//! 0x0000_0000  low RAM (BIOS data area, boot structures, ACPI at 0xe0000)
//! 0x0010_0000  kernel, then RAM up to min(memory, 3 GiB)
//! 0xc000_0000  32-bit PCI MMIO window (512 MiB)
//! 0xe000_0000  PCIe ECAM (MMCONFIG), one bus
//! 0xfec0_0000  IOAPIC
//! 0xfed9_0000  IOMMU register units
//! 0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above 4 GiB, then the 64-bit PCI MMIO window
//! ```

/// Global descriptor table used for the 64-bit boot.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) used for the 64-bit boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// Boot page tables: PML4, PDPT and one page directory (identity map, 1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum command line length, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of the conventional low memory handed to the guest as RAM.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the legacy BIOS area where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// The real-mode reset vector (F000:FFF0), where a reboot through the
/// "BIOS" lands.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Start of high memory, where the protected-mode kernel is loaded.
pub const HIGH_RAM_START: u64 = 0x100000;

/// Start of the 32-bit hole below 4 GiB that holds MMIO and not RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// 32-bit PCI memory window for BARs.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCIe enhanced configuration access mechanism window (MMCONFIG).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Buses covered by the ECAM window.
pub const PCI_ECAM_BUSES: u64 = 1;
pub const PCI_ECAM_SIZE: u64 = PCI_ECAM_BUSES << 20;
/// IOAPIC register window.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Register units of emulated IOMMUs, one 4 KiB page each... and a spare.
pub const IOMMU_START: u64 = 0xfed9_0000;
pub const IOMMU_SIZE: u64 = 0x1_0000;
/// Local APIC window (handled by KVM).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's identity map and TSS pages, outside RAM and MMIO.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// First address above the 32-bit hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Size of the 64-bit PCI memory window placed above RAM.
pub const PCI_MMIO64_SIZE: u64 = 0x4_0000_0000;

/// Legacy port I/O.
pub const SERIAL_COM1_PORT: u16 = 0x3f8;
pub const SERIAL_COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORT_SIZE: u16 = 8;
/// ACPI hardware-reduced sleep control/status and reset registers (one byte each).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to ACPI_RESET_PORT to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The S5 (soft-off) sleep type advertised in the DSDT's `_S5_` package.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// Number of IOAPIC redirection entries (GSIs 0..23).
pub const IOAPIC_PINS: u32 = 24;

/// The 64-bit MMIO window start for a guest with `ram_size` bytes of RAM.
pub fn pci_mmio64_start(ram_size: u64) -> u64 {
    let ram_end = RAM_64BIT_START + ram_size.saturating_sub(MMIO_HOLE_START);
    // Align to the window size so large BARs can be naturally aligned.
    ram_end
        .max(RAM_64BIT_START)
        .next_multiple_of(PCI_MMIO64_SIZE)
}

/// The guest RAM regions (start, size) for `ram_size` bytes of RAM.
pub fn ram_regions(ram_size: u64) -> Vec<(u64, u64)> {
    if ram_size <= MMIO_HOLE_START {
        vec![(0, ram_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (RAM_64BIT_START, ram_size - MMIO_HOLE_START),
        ]
    }
}
