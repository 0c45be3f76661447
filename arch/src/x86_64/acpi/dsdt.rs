//! The DSDT: the AML namespace describing what the guest cannot discover on
//! its own (the PCI host bridge and its windows, the ECAM reservation, the
//! legacy serial port and the S5 sleep type).

use acpi_tables::{aml, sdt::Sdt, Aml};

use super::{AcpiConfig, AcpiError, OEM_ID, OEM_REVISION};
use crate::x86_64::layout;

/// The `_OSC` UUID of PCI Express / PCI host bridges (PCI Firmware Spec 3.3, 4.5).
const PCI_HOST_BRIDGE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` status bit (in the first capabilities dword): unrecognised UUID.
const OSC_UNRECOGNIZED_UUID: u8 = 1 << 2;
/// The last I/O port below the PCI configuration ports, and the first above them.
const PCI_IO_LOW_END: u16 = layout::PCI_CONFIG_PORT - 1;
const PCI_IO_HIGH_START: u16 = 0xd00;
/// The ACPI sleep/reset registers are three consecutive ports.
const ACPI_PORTS_LEN: u8 = 3;

// The ECAM window is described with 32-bit descriptors and 8-bit bus numbers.
const _: () = assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= 1 << 32);
const _: () = assert!(layout::PCI_ECAM_BUSES >= 1 && layout::PCI_ECAM_BUSES <= 256);
const _: () = assert!(layout::ACPI_SLEEP_STATUS_PORT == layout::ACPI_SLEEP_CONTROL_PORT + 1);
const _: () = assert!(layout::ACPI_RESET_PORT == layout::ACPI_SLEEP_CONTROL_PORT + 2);
/// The last bus number decoded by the ECAM window.
pub(super) const ECAM_LAST_BUS: u8 = (layout::PCI_ECAM_BUSES - 1) as u8;

/// Already-encoded AML, so byte-building helpers can nest inside `aml` objects.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// Returns the inclusive end of a non-empty `(start, size)` window, or `None` if it is empty.
fn window_end(name: &'static str, (start, size): (u64, u64)) -> Result<Option<u64>, AcpiError> {
    if size == 0 {
        return Ok(None);
    }
    let end = start
        .checked_add(size - 1)
        .ok_or(AcpiError::InvalidWindow { name, start, size })?;
    let ecam_end = layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE - 1;
    // A BAR placed over the ECAM window would shadow the configuration space.
    if start <= ecam_end && end >= layout::PCI_ECAM_START {
        return Err(AcpiError::InvalidWindow { name, start, size });
    }
    Ok(Some(end))
}

/// Builds the complete DSDT (header included, checksummed).
pub fn dsdt(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let mut body = system_bus(cfg)?;
    // Linux's hardware-reduced poweroff writes (SLP_TYP << 2) | SLP_EN to the
    // FADT sleep control register, taking SLP_TYP from this package.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&layout::ACPI_S5_SLEEP_TYPE, &0u8]),
    )
    .to_aml_bytes(&mut body);

    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VMMDSDT ", OEM_REVISION);
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

/// `\_SB_` with the PCI host bridge, the motherboard resources and COM1.
fn system_bus(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let mut children = pci_host_bridge(cfg)?;
    children.extend(motherboard_resources());
    children.extend(com1());
    Ok(aml::Scope::raw("\\_SB_".into(), children))
}

/// `PCI0`, the PCIe host bridge (segment 0) with its bus, I/O and memory windows.
fn pci_host_bridge(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, ECAM_LAST_BUS.into());
    let cf8 = aml::IO::new(
        layout::PCI_CONFIG_PORT,
        layout::PCI_CONFIG_PORT,
        1,
        layout::PCI_CONFIG_PORT_SIZE as u8,
    );
    let io_low = aml::AddressSpace::<u16>::new_io(0, PCI_IO_LOW_END, None);
    let io_high = aml::AddressSpace::<u16>::new_io(PCI_IO_HIGH_START, u16::MAX, None);

    let mmio32 = match window_end("pci_mmio32", cfg.pci_mmio32)? {
        Some(end) => {
            let invalid = || AcpiError::InvalidWindow {
                name: "pci_mmio32",
                start: cfg.pci_mmio32.0,
                size: cfg.pci_mmio32.1,
            };
            let start = u32::try_from(cfg.pci_mmio32.0).map_err(|_| invalid())?;
            let end = u32::try_from(end).map_err(|_| invalid())?;
            Some(aml::AddressSpace::<u32>::new_memory(
                aml::AddressSpaceCacheable::NotCacheable,
                true,
                start,
                end,
                None,
            ))
        }
        None => None,
    };
    let mmio64 = window_end("pci_mmio64", cfg.pci_mmio64)?.map(|end| {
        aml::AddressSpace::<u64>::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            cfg.pci_mmio64.0,
            end,
            None,
        )
    });

    let mut resources: Vec<&dyn Aml> = vec![&bus, &cf8, &io_low, &io_high];
    if let Some(m) = &mmio32 {
        resources.push(m);
    }
    if let Some(m) = &mmio64 {
        resources.push(m);
    }
    let crs = aml::ResourceTemplate::new(resources);

    let mut bytes = Vec::new();
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &0u8),
            &aml::Name::new("_SEG".into(), &0u8),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_BBN".into(), &0u8),
            &aml::Name::new("_CRS".into(), &crs),
            &RawAml(osc_grant_all()),
        ],
    )
    .to_aml_bytes(&mut bytes);
    Ok(bytes)
}

/// `_OSC` of the host bridge: grants the OS every control it asks for.
///
/// Returning the capabilities buffer unchanged tells Linux the platform
/// yields native control of PCIe hotplug, PME, AER, the PCIe capability
/// structure, LTR and DPC; there is no firmware that could want to keep them.
/// Any other UUID is answered with "unrecognised UUID".
///
/// ```text
/// Method (_OSC, 4, Serialized) {
///     CreateDWordField (Arg3, 0, CDW1)
///     If (Arg0 == ToUUID ("33db4d5b-1ff7-401c-9657-7441c03dd766")) { Return (Arg3) }
///     CDW1 |= 4
///     Return (Arg3)
/// }
/// ```
fn osc_grant_all() -> Vec<u8> {
    let cdw1 = aml::Path::new("CDW1");
    let uuid = aml::Uuid::new(PCI_HOST_BRIDGE_OSC_UUID);
    let is_pci = aml::Equal::new(&aml::Arg(0), &uuid);
    let ret = aml::Return::new(&aml::Arg(3));
    let mut bytes = Vec::new();
    aml::Method::new(
        "_OSC".into(),
        4,
        true,
        vec![
            &aml::CreateDWordField::new(&cdw1, &aml::Arg(3), &0u8),
            &aml::If::new(&is_pci, vec![&ret]),
            &aml::Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_UUID),
            &ret,
        ],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// `MBRD`, motherboard resources (PNP0C02).
///
/// Linux only uses the MCFG's ECAM window if it is reserved here (else it logs
/// "MMCONFIG ... not reserved in ACPI motherboard resources" and falls back to
/// port 0xcf8, losing the extended configuration space). The ACPI register
/// ports are listed too so nothing else is ever placed on them.
fn motherboard_resources() -> Vec<u8> {
    let ecam = aml::Memory32Fixed::new(
        true,
        layout::PCI_ECAM_START as u32,
        layout::PCI_ECAM_SIZE as u32,
    );
    let acpi_ports = aml::IO::new(
        layout::ACPI_SLEEP_CONTROL_PORT,
        layout::ACPI_SLEEP_CONTROL_PORT,
        1,
        ACPI_PORTS_LEN,
    );
    let mut bytes = Vec::new();
    aml::Device::new(
        "MBRD".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&ecam, &acpi_ports]),
            ),
        ],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// `COM1`, the 16550 UART at 0x3f8 on IOAPIC pin 4 (edge, active high).
fn com1() -> Vec<u8> {
    let io = aml::IO::new(layout::SERIAL_COM1_PORT, layout::SERIAL_COM1_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, layout::SERIAL_COM1_IRQ);
    let mut bytes = Vec::new();
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io, &irq])),
        ],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}
