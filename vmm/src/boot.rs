//! Loading Linux: bzImage, initramfs, command line and the zero page
//! (Documentation/x86/boot.rst).

use std::fs::File;
use std::path::Path;

use arch::x86_64::e820::e820_map;
use arch::x86_64::layout::*;
use linux_loader::bootparam::boot_params;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::VmmError;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point from the protected-mode kernel start.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Linux's loadflags: CAN_USE_HEAP.
const CAN_USE_HEAP: u8 = 0x80;

pub struct LoadedKernel {
    pub entry: u64,
}

fn open(path: &Path, what: &str) -> Result<File, VmmError> {
    File::open(path)
        .map_err(|e| VmmError::Input(format!("cannot open {what} {}: {e}", path.display())))
}

/// Loads the kernel and initramfs and writes the zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<LoadedKernel, VmmError> {
    let mut kfile = open(kernel, "kernel")?;
    let loaded =
        BzImage::load(mem, None, &mut kfile, Some(GuestAddress(HIGH_RAM_START))).map_err(|e| {
            VmmError::Input(format!(
                "{} is not a bootable bzImage: {e}",
                kernel.display()
            ))
        })?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| VmmError::Input(format!("{} has no setup header", kernel.display())))?;

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| VmmError::Setup(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| VmmError::Input(format!("bad kernel command line: {e}")))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| VmmError::Setup(format!("cannot load the command line: {e}")))?;

    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline.len() as u32 + 1;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;

    if let Some(path) = initramfs {
        let data = std::fs::read(path).map_err(|e| {
            VmmError::Input(format!("cannot read initramfs {}: {e}", path.display()))
        })?;
        // Highest page-aligned address below the kernel's limit and the end of low RAM.
        let low_end = ram_size.min(MMIO_HOLE_START);
        let max = (hdr.initrd_addr_max as u64 + 1).min(low_end);
        let kernel_end = loaded.kernel_load.raw_value() + loaded.kernel_end;
        let size = data.len() as u64;
        let addr = max
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel_end)
            .ok_or_else(|| {
                VmmError::Input(format!(
                    "initramfs {} ({} bytes) does not fit in guest memory",
                    path.display(),
                    size
                ))
            })?;
        mem.write_slice(&data, GuestAddress(addr))
            .map_err(|e| VmmError::Setup(format!("cannot load the initramfs: {e}")))?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }

    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp.raw_value(),
        ..Default::default()
    };
    let map = e820_map(ram_size);
    if map.len() > params.e820_table.len() {
        return Err(VmmError::Setup("e820 map too long".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| VmmError::Setup(format!("cannot write boot parameters: {e}")))?;

    Ok(LoadedKernel {
        entry: loaded.kernel_load.raw_value() + ENTRY_64_OFFSET,
    })
}
