//! The VM's assembly, top to bottom: KVM, memory, interrupt controller,
//! devices, firmware tables, kernel, vCPUs.

use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arch::x86_64::acpi::{
    create_acpi_tables, try_dmar_table, AcpiConfig, DeviceScope, DeviceScopeKind, DmarConfig,
    DrhdConfig,
};
use arch::x86_64::layout::*;
use devices::dma_test::{DmaTest, DmaTestFeatures};
use devices::interrupt::{IoEventRegistry, MsiRouter};
use devices::ioapic::Ioapic;
use devices::legacy::acpi_pm::AcpiPm;
use devices::legacy::i8042::I8042;
use devices::legacy::serial::{IoapicPin, SerialPort};
use devices::legacy::{PowerEvent, PowerHandler};
use devices::pci::root::{PciConfigIo, PciMmio, SharedPciDevice};
use devices::pci::{BarKind, Bdf, PciDevice, PciRoot};
use devices::virtio::block::{Block, BlockCounters, Disk};
use devices::virtio::pci::VirtioPciDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use viommu::{DmaSpace, GuestMemoryMmap};
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::load_linux;
use crate::config::Cli;
use crate::exit::{ExitHandle, ExitReason};
use crate::interrupts::{KvmIoEvents, KvmMsiRouter, RouterSink};
use crate::vcpu::Vcpu;
use crate::VmmError;
use viommu::intel::IntelIommu;

/// Requester ID the I/O APIC's messages carry (bus 0, device 31, function 0).
pub const IOAPIC_REQUESTER_ID: u16 = 0x00f8;

/// A running VM.
pub struct Vm {
    pub exit: Arc<ExitHandle>,
    pub block_counters: Vec<Arc<BlockCounters>>,
    pub iommu: Option<Arc<IntelIommu>>,
    pub vfio_devices: Vec<crate::passthrough::PassthroughDevice>,
    /// The iommufd objects the passthrough devices hang on.
    _passthrough: Option<crate::passthrough::Passthrough>,
    /// Guest RAM: KVM's memory slots point into it, so it lives as long
    /// as the VM.
    _memory: GuestMemoryMmap,
    _vcpus: Vec<JoinHandle<()>>,
    _event_loop: JoinHandle<()>,
}

/// What `--counters` prints, shareable with the thread that prints it on
/// SIGUSR1.
pub struct CounterView {
    pub block_counters: Vec<Arc<BlockCounters>>,
    pub iommu: Option<Arc<IntelIommu>>,
    pub vfio_devices: Vec<crate::passthrough::PassthroughDevice>,
}

impl Vm {
    pub fn counter_view(&self) -> CounterView {
        CounterView {
            block_counters: self.block_counters.clone(),
            iommu: self.iommu.clone(),
            vfio_devices: self.vfio_devices.clone(),
        }
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

fn kvm_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> VmmError + '_ {
    move |e| VmmError::Kvm(format!("{what}: {e}"))
}

fn create_memory(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap, VmmError> {
    let ranges: Vec<_> = ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| VmmError::Setup(format!("cannot allocate guest memory: {e}")))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Setup(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region stays mapped for the lifetime of `mem`, which
        // the returned `Vm` owns until the process exits.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

/// Hands out BAR addresses like firmware: each BAR naturally aligned in
/// the window of its kind.
struct BarAllocator {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
}

impl BarAllocator {
    fn new(ram_size: u64) -> Result<Self, VmmError> {
        let err = |e: vm_allocator::Error| VmmError::Setup(format!("PCI window: {e}"));
        Ok(BarAllocator {
            mmio32: AddressAllocator::new(PCI_MMIO32_START, PCI_MMIO32_SIZE).map_err(err)?,
            mmio64: AddressAllocator::new(pci_mmio64_start(ram_size), PCI_MMIO64_SIZE)
                .map_err(err)?,
        })
    }

    fn assign(&mut self, dev: &mut dyn PciDevice) -> Result<(), VmmError> {
        for (index, bar) in dev.bars() {
            let alloc = match bar.kind {
                BarKind::Mem32 => &mut self.mmio32,
                BarKind::Mem64 => &mut self.mmio64,
            };
            let range = alloc
                .allocate(bar.size, bar.size.max(4096), AllocPolicy::FirstMatch)
                .map_err(|e| VmmError::Setup(format!("no room for a {:#x} BAR: {e}", bar.size)))?;
            dev.set_bar_address(index, range.start());
        }
        Ok(())
    }
}

pub fn build(cli: &Cli) -> Result<Vm, VmmError> {
    // Inputs first, so a typo fails before any KVM work.
    if let Err(e) = std::fs::File::open(&cli.kernel) {
        return Err(VmmError::Input(format!(
            "cannot open kernel {}: {e}",
            cli.kernel.display()
        )));
    }
    let mut disks = Vec::new();
    for d in &cli.disk {
        let file = OpenOptions::new()
            .read(true)
            .write(!d.readonly)
            .open(&d.path)
            .map_err(|e| VmmError::Input(format!("cannot open disk {}: {e}", d.path.display())))?;
        let disk = Disk::from_file(file, d.readonly)
            .map_err(|e| VmmError::Input(format!("cannot size disk {}: {e}", d.path.display())))?;
        disks.push((disk, d.iommu));
    }

    let kvm = Kvm::new().map_err(|e| VmmError::Kvm(format!("cannot open /dev/kvm: {e}")))?;
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
    if !vm.check_extension(Cap::SplitIrqchip) {
        return Err(VmmError::Kvm(
            "KVM lacks the split irqchip capability".into(),
        ));
    }
    let max_vcpus = kvm.get_max_vcpus();
    if cli.cpus as usize > max_vcpus {
        return Err(VmmError::Input(format!(
            "--cpus {} exceeds this host's KVM limit of {max_vcpus}",
            cli.cpus
        )));
    }
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = IOAPIC_PINS as u64;
    vm.enable_cap(&cap)
        .map_err(kvm_err("KVM_CAP_SPLIT_IRQCHIP"))?;

    let mem = create_memory(&vm, cli.memory)?;
    let exit = Arc::new(ExitHandle::new().map_err(|e| VmmError::Setup(e.to_string()))?);
    let kvm_router = Arc::new(KvmMsiRouter::new(vm.clone()));
    let router: Arc<dyn MsiRouter> = kvm_router.clone();
    let ioevents: Arc<dyn IoEventRegistry> = Arc::new(KvmIoEvents { vm: vm.clone() });
    let ioapic = Arc::new(Ioapic::new(IOAPIC_REQUESTER_ID, router.clone()));

    let mut io = IoManager::new();
    let bus_err = |what: &'static str| move |e| VmmError::Setup(format!("{what}: {e:?}"));

    // Legacy devices.
    let power: PowerHandler = {
        let exit = exit.clone();
        Arc::new(move |ev| {
            log::info!("guest requested {ev:?}");
            exit.request(match ev {
                PowerEvent::Poweroff => ExitReason::Poweroff,
                PowerEvent::Reset => ExitReason::Reset,
            })
        })
    };
    let serial = Arc::new(SerialPort::new(
        IoapicPin {
            ioapic: ioapic.clone(),
            pin: SERIAL_COM1_IRQ as usize,
        },
        Box::new(std::io::stdout()),
    ));
    let pio = |base: u16, len: u16| PioRange::new(PioAddress(base), len);
    io.register_pio(
        pio(SERIAL_COM1_PORT, 8).map_err(bus_err("serial"))?,
        serial.clone(),
    )
    .map_err(bus_err("serial"))?;
    io.register_pio(
        pio(I8042_PORT, 5).map_err(bus_err("i8042"))?,
        Arc::new(I8042::new(power.clone())),
    )
    .map_err(bus_err("i8042"))?;
    io.register_pio(
        pio(ACPI_SLEEP_CONTROL_PORT, 3).map_err(bus_err("acpi"))?,
        Arc::new(AcpiPm::new(ACPI_S5_SLEEP_TYPE, ACPI_RESET_VALUE, power)),
    )
    .map_err(bus_err("acpi"))?;
    let mmio = |base: u64, len: u64| MmioRange::new(MmioAddress(base), len);
    io.register_mmio(
        mmio(IOAPIC_START, IOAPIC_SIZE).map_err(bus_err("ioapic"))?,
        ioapic.clone(),
    )
    .map_err(bus_err("ioapic"))?;

    // Passthrough devices are opened first: what the host IOMMU can do
    // shapes the vIOMMU.
    let passthrough = crate::passthrough::open_all(&cli.vfio, &mem)?;
    let choice = match cli.viommu {
        Some(cfg) => Some(crate::passthrough::viommu_config(
            cfg,
            passthrough.as_ref(),
        )?),
        None => None,
    };
    let vtd = choice.map(|c| c.vtd);
    let nested_path = choice.is_some_and(|c| c.nested);

    // The emulated IOMMU, translating for the devices that opt in.
    let iommu = match vtd {
        Some(cfg) => {
            let unit = IntelIommu::new(cfg, mem.clone(), Arc::new(RouterSink(kvm_router.clone())))
                .map_err(|e| VmmError::Input(format!("--viommu: {e}")))?;
            let unit = Arc::new(unit);
            io.register_mmio(
                mmio(IOMMU_START, 0x1000).map_err(bus_err("iommu"))?,
                unit.clone(),
            )
            .map_err(bus_err("iommu"))?;
            Some(unit)
        }
        None => None,
    };
    let mut iommu_scope = std::collections::BTreeSet::new();
    iommu_scope.insert(IOAPIC_REQUESTER_ID);

    // PCI devices.
    let mut root = PciRoot::new(PCI_ECAM_START);
    let mut bars = BarAllocator::new(cli.memory)?;
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut block_counters = Vec::new();
    for (disk, behind_iommu) in disks {
        let bdf = root
            .next_bdf()
            .filter(|b| b.0 != IOAPIC_REQUESTER_ID)
            .ok_or_else(|| VmmError::Input("too many PCI devices".into()))?;
        let block = Block::new(disk).map_err(|e| VmmError::Setup(e.to_string()))?;
        block_counters.push(block.counters.clone());
        let block = Arc::new(Mutex::new(block));
        // iommu=on puts the device behind the IOMMU (and in its DMAR
        // scope); without a --viommu it still offers ACCESS_PLATFORM so the
        // driver uses the DMA API, with untranslated addresses.
        let dma = match (&iommu, behind_iommu) {
            (Some(unit), true) => {
                iommu_scope.insert(bdf.0);
                DmaSpace::translated(bdf.0, unit.clone())
            }
            _ => DmaSpace::identity(bdf.0),
        };
        let mut dev = VirtioPciDevice::new(
            block.clone(),
            dma,
            behind_iommu,
            mem.clone(),
            router.clone(),
            ioevents.clone(),
        )
        .map_err(|e| VmmError::Setup(format!("virtio-blk at {bdf}: {e}")))?;
        bars.assign(&mut dev)?;
        let dev: SharedPciDevice = Arc::new(Mutex::new(dev));
        root.add_device(bdf, dev);
        subscribers.push(block);
    }
    for dev in &cli.device {
        let crate::config::DeviceConfig::DmaTest {
            iommu: behind_iommu,
        } = dev;
        let bdf = root
            .next_bdf()
            .filter(|b| b.0 != IOAPIC_REQUESTER_ID)
            .ok_or_else(|| VmmError::Input("too many PCI devices".into()))?;
        let dma = match (&iommu, *behind_iommu) {
            (Some(unit), true) => {
                iommu_scope.insert(bdf.0);
                DmaSpace::translated(bdf.0, unit.clone())
            }
            _ => DmaSpace::identity(bdf.0),
        };
        // Behind an IOMMU with PASIDs the device is SVA-capable:
        // PASID (as wide as the IOMMU's), ATS and PRI.
        let pasid_bits = match (vtd, *behind_iommu) {
            (Some(v), true) => v.pasid_bits,
            _ => 0,
        };
        let features = DmaTestFeatures {
            pasid_bits,
            ats_pri: pasid_bits > 0,
        };
        let mut dev = DmaTest::new(dma, mem.clone(), features)
            .map_err(|e| VmmError::Setup(format!("dma-test at {bdf}: {e}")))?;
        bars.assign(&mut dev)?;
        let dev = Arc::new(Mutex::new(dev));
        DmaTest::attach(&dev);
        root.add_device(bdf, dev);
    }
    let mut vfio_devices = Vec::new();
    if let Some(pt) = &passthrough {
        let slots: Arc<dyn devices::memory_slots::GuestMemorySlots> = Arc::new(
            crate::memory_slots::KvmSlots::new(vm.clone(), kvm.get_nr_memslots() as u32),
        );
        for (i, opened) in pt.devices.iter().enumerate() {
            let bdf = root
                .next_bdf()
                .filter(|b| b.0 != IOAPIC_REQUESTER_ID)
                .ok_or_else(|| VmmError::Input("too many PCI devices".into()))?;
            let behind = match (&iommu, opened.config.iommu) {
                (Some(unit), true) => Some(unit.clone()),
                _ => None,
            };
            let pasid = match (vtd, &behind) {
                (Some(v), Some(_)) if v.pasid_bits > 0 => Some((
                    viommu::pasid_cap::PasidHostInfo {
                        max_pasid_log2: opened.pasid_width(),
                        exec: opened.hw_info.pasid_exec(),
                        privileged: opened.hw_info.pasid_priv(),
                    },
                    v.pasid_bits,
                )),
                _ => None,
            };
            opened.device.reset();
            let mut dev = devices::vfio::VfioPciDevice::new(
                opened.device.clone(),
                bdf.0,
                router.clone(),
                slots.clone(),
                pasid,
            )
            .map_err(|e| VmmError::Setup(format!("vfio{i} at {bdf}: {e}")))?;
            bars.assign(&mut dev)?;
            // Page requests reach the guest only on the nested path, from
            // a host unit that hands them over (ECAP.PRS) to a unit that
            // takes them; elsewhere the guest must not see PRI.
            let host_prs = opened
                .hw_info
                .vtd
                .is_some_and(|v| v.ecap_reg & viommu::intel::regs::ECAP_PRS != 0);
            let page_requests = behind.is_some()
                && nested_path
                && host_prs
                && vtd.is_some_and(|v| v.pasid_bits > 0);
            if dev.has_pri() && !page_requests {
                log::info!("vfio{i} at {bdf}: PRI hidden (its page requests would reach nobody)");
                dev.hide_pri();
            }
            let has_pri = dev.has_pri();
            root.add_device(bdf, Arc::new(Mutex::new(dev)));
            let counters = match behind {
                Some(unit) => {
                    iommu_scope.insert(bdf.0);
                    let dev_id = opened
                        .device
                        .iommufd_dev_id()
                        .ok_or_else(|| VmmError::Setup(format!("vfio{i}: not bound to iommufd")))?;
                    let mut caps = opened.capabilities();
                    if !nested_path {
                        // nested=off, or a device behind the unit that
                        // cannot nest: every device there is shadowed.
                        caps.nesting = false;
                    }
                    caps.page_requests = has_pri;
                    let ep = viommu::host_iommufd::IommufdEndpoint::new(
                        bdf.0,
                        &pt.guest_ram,
                        Arc::new(crate::passthrough::VfioAttach(opened.device.clone())),
                        dev_id,
                        mem.clone(),
                        caps,
                    )
                    .map_err(|e| VmmError::Setup(format!("vfio{i}: host address spaces: {e}")))?;
                    let counters = ep.counters.clone();
                    if let Some(queue) = ep.fault_queue() {
                        subscribers.push(page_request_watch(bdf.0, queue, &unit));
                    }
                    unit.add_host_endpoint(Arc::new(ep));
                    Some(counters)
                }
                None => {
                    log::info!("vfio{i} at {bdf}: bypass path (not behind the vIOMMU)");
                    None
                }
            };
            vfio_devices.push(crate::passthrough::PassthroughDevice {
                requester_id: bdf.0,
                device: opened.device.clone(),
                counters,
            });
        }
    }
    let root = Arc::new(root);
    let pci_mmio = Arc::new(PciMmio(root.clone()));
    io.register_pio(
        pio(PCI_CONFIG_PORT, PCI_CONFIG_PORT_SIZE).map_err(bus_err("pci"))?,
        Arc::new(PciConfigIo(root.clone())),
    )
    .map_err(bus_err("pci"))?;
    io.register_mmio(
        mmio(PCI_ECAM_START, PCI_ECAM_SIZE).map_err(bus_err("ecam"))?,
        pci_mmio.clone(),
    )
    .map_err(bus_err("ecam"))?;
    io.register_mmio(
        mmio(PCI_MMIO32_START, PCI_MMIO32_SIZE).map_err(bus_err("pci32"))?,
        pci_mmio.clone(),
    )
    .map_err(bus_err("pci32"))?;
    io.register_mmio(
        mmio(pci_mmio64_start(cli.memory), PCI_MMIO64_SIZE).map_err(bus_err("pci64"))?,
        pci_mmio,
    )
    .map_err(bus_err("pci64"))?;
    let mut extra_tables = Vec::new();
    if let Some(unit) = &iommu {
        kvm_router.set_remapper(unit.clone(), iommu_scope.clone());
        extra_tables.push(dmar(cli, &iommu_scope)?);
    }

    // Firmware tables and the kernel.
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: cli.cpus,
            pci_mmio32: (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            pci_mmio64: (pci_mmio64_start(cli.memory), PCI_MMIO64_SIZE),
            extra_tables,
        },
    )
    .map_err(|e| VmmError::Setup(format!("ACPI tables: {e}")))?;
    arch::x86_64::regs::setup_reset_vector(&mem)
        .map_err(|e| VmmError::Setup(format!("reset vector: {e}")))?;
    let kernel = load_linux(
        &mem,
        cli.memory,
        &cli.kernel,
        cli.initramfs.as_deref(),
        &cli.cmdline,
        rsdp,
    )?;

    // Device I/O runs on its own thread.
    let mut em: EventManager<Subscriber> =
        EventManager::new().map_err(|e| VmmError::Setup(format!("event loop: {e:?}")))?;
    for s in subscribers {
        em.add_subscriber(s);
    }
    let event_loop = std::thread::Builder::new()
        .name("devices".into())
        .spawn(move || loop {
            if let Err(e) = em.run() {
                log::error!("device event loop: {e:?}");
                return;
            }
        })
        .map_err(|e| VmmError::Setup(e.to_string()))?;

    if nix_isatty_stdin() {
        spawn_stdin(serial)?;
    }

    let io = Arc::new(io);
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let host_tsc_khz = crate::tsc::measure_host_khz(std::time::Duration::from_millis(20));
    let mut vcpus = Vec::new();
    for id in 0..cli.cpus {
        let fd = vm
            .create_vcpu(id as u64)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let vcpu = Vcpu::new(
            fd,
            id,
            cli.cpus,
            &base_cpuid,
            host_tsc_khz,
            &mem,
            kernel.entry,
            io.clone(),
            ioapic.clone(),
            exit.clone(),
        )?;
        vcpus.push(vcpu);
    }
    let mut handles = Vec::new();
    for v in vcpus {
        handles.push(v.spawn().map_err(|e| VmmError::Setup(e.to_string()))?);
    }
    Ok(Vm {
        exit,
        block_counters,
        iommu,
        vfio_devices,
        _passthrough: passthrough,
        _memory: mem,
        _vcpus: handles,
        _event_loop: event_loop,
    })
}

/// The DMAR table: one remapping unit whose scope is the I/O APIC and the
/// devices that opted in with iommu=on (others are not translated).
fn dmar(cli: &Cli, scope: &std::collections::BTreeSet<u16>) -> Result<Vec<u8>, VmmError> {
    let intremap = cli.viommu.is_some_and(|c| c.vtd.intremap);
    let scopes = scope
        .iter()
        .map(|&rid| {
            let bdf = Bdf(rid);
            DeviceScope {
                kind: if rid == IOAPIC_REQUESTER_ID {
                    DeviceScopeKind::IoApic
                } else {
                    DeviceScopeKind::Endpoint
                },
                enumeration_id: 0,
                start_bus: bdf.bus(),
                path: vec![(bdf.dev(), bdf.func())],
            }
        })
        .collect();
    try_dmar_table(&DmarConfig {
        host_address_width: viommu::intel::HOST_ADDRESS_WIDTH,
        intr_remap: intremap,
        x2apic_opt_out: false,
        units: vec![DrhdConfig {
            base: IOMMU_START,
            size_pages_log2: 0,
            segment: 0,
            include_pci_all: false,
            scopes,
        }],
        satc: Vec::new(),
    })
    .map_err(|e| VmmError::Setup(format!("DMAR table: {e}")))
}

fn nix_isatty_stdin() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

fn spawn_stdin(serial: Arc<SerialPort>) -> Result<(), VmmError> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                serial.enqueue_input(&buf[..n]);
            }
        })
        .map(|_| ())
        .map_err(|e| VmmError::Setup(e.to_string()))
}

/// Forwards the page requests the host queues for passthrough device
/// `requester_id` into `unit`'s page request queue, and the guest's
/// responses back (the bridge is the device's endpoint at the unit).
fn page_request_watch(
    requester_id: u16,
    queue: Arc<viommu::iommufd::FaultQueue>,
    unit: &Arc<IntelIommu>,
) -> Subscriber {
    use viommu::passthrough::page_requests::PageRequestBridge;
    use viommu::Translate;
    let bridge = Arc::new(PageRequestBridge::new(
        requester_id,
        queue.clone(),
        unit.clone(),
    ));
    let endpoint: Arc<dyn viommu::AtsEndpoint> = bridge.clone();
    unit.register_endpoint(requester_id, Arc::downgrade(&endpoint));
    log::info!("passthrough {requester_id:04x}: page requests go to the guest");
    Arc::new(Mutex::new(crate::page_requests::PageRequestWatch {
        queue,
        bridge,
    }))
}
