//! The transport with a block device behind it: what a vCPU waits for,
//! and what guest register writes make the VMM log.

use std::sync::mpsc;
use std::time::Duration;

use log::Level;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::interrupt::test_utils::{RecordingIoEvents, RecordingRouter};
use crate::test_log::capture;
use crate::virtio::block::{Block, Disk};

const DISK_SECTORS: u64 = 64;

fn transport() -> (VirtioPciDevice, Arc<Mutex<Block>>, TempFile) {
    let (pci, block, f, _, _) = recording_transport();
    (pci, block, f)
}

/// The transport with the fakes that record its KVM routes and ioeventfds.
fn recording_transport() -> (
    VirtioPciDevice,
    Arc<Mutex<Block>>,
    TempFile,
    Arc<RecordingRouter>,
    Arc<RecordingIoEvents>,
) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let f = TempFile::new().unwrap();
    f.as_file().set_len(DISK_SECTORS * 512).unwrap();
    let disk = Disk::new(f.as_file().try_clone().unwrap(), false, DISK_SECTORS * 512);
    let block = Arc::new(Mutex::new(Block::new(disk).unwrap()));
    let dev: Arc<Mutex<dyn VirtioDevice>> = block.clone();
    let router = Arc::new(RecordingRouter::default());
    let ioevents = Arc::new(RecordingIoEvents::default());
    let pci = VirtioPciDevice::new(
        dev,
        DmaSpace::identity(8),
        false,
        ram,
        router.clone(),
        ioevents.clone(),
    )
    .unwrap();
    (pci, block, f, router, ioevents)
}

#[test]
fn config_accesses_do_not_wait_for_the_device_lock() {
    let (mut pci, block, _file) = transport();
    let (locked_tx, locked_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // Holds the device's lock the way the event loop does around a pass
    // over the queue (host I/O included).
    let holder = std::thread::spawn(move || {
        let _busy = block.lock().unwrap();
        locked_tx.send(()).unwrap();
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok()
    });
    locked_rx.recv().unwrap();
    let mut capacity = [0u8; 8];
    pci.read_bar(0, DEVICE_OFFSET, &mut capacity);
    pci.write_bar(0, DEVICE_OFFSET, &[1, 2, 3, 4]);
    let _ = done_tx.send(());
    assert!(
        holder.join().unwrap(),
        "the config access waited for the device lock"
    );
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
}

#[test]
fn invalid_queue_registers_are_refused_with_little_logging() {
    let (mut pci, _block, _file) = transport();
    let lines = capture(|| {
        for _ in 0..100 {
            // Queue size 3 (not a power of two), then a descriptor table
            // address that breaks its 16-byte alignment.
            pci.write_bar(0, COMMON_OFFSET + 0x18, &3u16.to_le_bytes());
            pci.write_bar(0, COMMON_OFFSET + 0x20, &0x1008u32.to_le_bytes());
        }
    });
    assert!(lines.len() <= 2, "{} lines: {lines:?}", lines.len());
    for (level, line) in &lines {
        assert_eq!(*level, Level::Warn, "{line}");
        assert!(line.starts_with("guest: "), "{line}");
    }
    let mut b = [0u8; 2];
    pci.read_bar(0, COMMON_OFFSET + 0x18, &mut b);
    assert_eq!(u16::from_le_bytes(b), 256, "the size stays valid");
    let mut a = [0u8; 4];
    pci.read_bar(0, COMMON_OFFSET + 0x20, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0, "the address stays aligned");
    // Valid values still go through, one half at a time.
    pci.write_bar(0, COMMON_OFFSET + 0x20, &0x2000u32.to_le_bytes());
    pci.write_bar(0, COMMON_OFFSET + 0x24, &1u32.to_le_bytes());
    assert_eq!(pci.queues[0].desc_table(), 0x1_0000_2000);
}

const BAR: u64 = 0x1_0000_0000;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const HDR: u64 = 0x2_0000;
const DATA: u64 = 0x2_1000;
const REQ_STATUS: u64 = 0x2_2000;
/// Requests a test queues at once (three descriptors each).
const REQUESTS: u16 = 64;

fn common_read(pci: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    pci.read_bar(0, COMMON_OFFSET + offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn common_write(pci: &mut VirtioPciDevice, offset: u64, v: u64, len: usize) {
    pci.write_bar(0, COMMON_OFFSET + offset, &v.to_le_bytes()[..len]);
}

fn pcie_cap(pci: &VirtioPciDevice) -> usize {
    let caps = pci.config.capabilities();
    caps.iter()
        .find(|c| c.1 == crate::pci::caps::CAP_ID_PCIE)
        .unwrap()
        .0
}

fn flr(pci: &mut VirtioPciDevice) {
    let devctl = pcie_cap(pci) + crate::pci::caps::PCIE_DEVCTL;
    let v = pci.config.read_u16(devctl) | crate::pci::caps::DEVCTL_BCR_FLR;
    pci.write_config(devctl, &v.to_le_bytes());
}

/// What firmware and the driver do up to DRIVER_OK: BAR, decode and bus
/// mastering, MSI-X with vector 0 unmasked, VERSION_1, queue 0 at
/// DESC/AVAIL/USED (zeroed), then `REQUESTS` reads of sector 0 made
/// available.
fn bring_up(pci: &mut VirtioPciDevice) {
    use crate::pci::config::{COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};
    pci.set_bar_address(0, BAR);
    let cmd = COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER;
    pci.write_config(COMMAND, &cmd.to_le_bytes());
    let msix_control = pci.msix_cap + 2;
    pci.write_config(msix_control, &crate::pci::msix::MSIX_ENABLE.to_le_bytes());
    pci.write_bar(0, MSIX_TABLE_OFFSET, &0xfee0_0000u32.to_le_bytes());
    pci.write_bar(0, MSIX_TABLE_OFFSET + 8, &0x30u32.to_le_bytes());
    pci.write_bar(0, MSIX_TABLE_OFFSET + 12, &0u32.to_le_bytes());

    let ram = pci.ram.clone();
    ram.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&0u32.to_le_bytes()); // VIRTIO_BLK_T_IN, sector 0
    ram.write_slice(&header, GuestAddress(HDR)).unwrap();
    for i in 0..REQUESTS {
        let d = DESC + u64::from(i) * 48;
        // (addr, len, flags, next): NEXT = 1, WRITE = 2.
        let descs = [
            (HDR, 16u32, 1u16, 3 * i + 1),
            (DATA, 512, 3, 3 * i + 2),
            (REQ_STATUS, 1, 2, 0),
        ];
        for (k, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let at = d + k as u64 * 16;
            ram.write_obj(addr, GuestAddress(at)).unwrap();
            ram.write_obj(len, GuestAddress(at + 8)).unwrap();
            ram.write_obj(flags, GuestAddress(at + 12)).unwrap();
            ram.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        ram.write_obj(3 * i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    ram.write_obj(REQUESTS, GuestAddress(AVAIL + 2)).unwrap();

    common_write(
        pci,
        0x14,
        u64::from(status::ACKNOWLEDGE | status::DRIVER),
        1,
    );
    common_write(pci, 0x08, 1, 4);
    common_write(pci, 0x0c, features::VERSION_1 >> 32, 4);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    common_write(pci, 0x14, u64::from(s), 1);
    common_write(pci, 0x16, 0, 2);
    common_write(pci, 0x1a, 0, 2);
    for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
        common_write(pci, off, addr & 0xffff_ffff, 4);
        common_write(pci, off + 4, addr >> 32, 4);
    }
    common_write(pci, 0x1c, 1, 2);
    common_write(pci, 0x14, u64::from(s | status::DRIVER_OK), 1);
    assert_eq!(common_read(pci, 0x14, 1) as u8, s | status::DRIVER_OK);
}

fn used_idx(pci: &VirtioPciDevice) -> u16 {
    pci.ram.read_obj(GuestAddress(USED + 2)).unwrap()
}

#[test]
fn flr_returns_config_space_and_transport_to_power_on() {
    use crate::pci::config::{BAR0, COMMAND};
    let (mut pci, _block, _file, router, ioevents) = recording_transport();
    let power_on: Vec<u32> = (0..0x40)
        .step_by(4)
        .map(|o| pci.config.read_u32(o))
        .collect();
    let devcap = pcie_cap(&pci) + crate::pci::caps::PCIE_DEVCAP;
    assert_ne!(
        pci.config.read_u32(devcap) & crate::pci::caps::DEVCAP_FLR,
        0
    );
    bring_up(&mut pci);
    pci.write_config(crate::pci::config::INTERRUPT_LINE, &[11]);
    common_write(&mut pci, 0x10, 0, 2);
    assert_eq!(
        *ioevents.registered.lock().unwrap(),
        vec![BAR + NOTIFY_OFFSET]
    );

    flr(&mut pci);

    // Config space: the header as it powered on (BAR unassigned, Command
    // and Interrupt Line 0), MSI-X disabled, Initiate FLR reads 0.
    let now: Vec<u32> = (0..0x40)
        .step_by(4)
        .map(|o| pci.config.read_u32(o))
        .collect();
    assert_eq!(now, power_on);
    assert_eq!(pci.config.read_u16(COMMAND), 0);
    assert_eq!(pci.config.read_u32(BAR0), 0b100, "64-bit BAR, no address");
    assert_eq!(pci.config.bar_address(0), Some(0));
    let mut control = [0u8; 2];
    pci.read_config(pci.msix_cap + 2, &mut control);
    assert_eq!(
        u16::from_le_bytes(control) & crate::pci::msix::MSIX_ENABLE,
        0
    );
    let devctl = pcie_cap(&pci) + crate::pci::caps::PCIE_DEVCTL;
    assert_eq!(
        pci.config.read_u16(devctl) & crate::pci::caps::DEVCTL_BCR_FLR,
        0
    );
    // The transport: status 0, queue 0 back to its defaults, no vectors.
    assert_eq!(common_read(&mut pci, 0x14, 1), 0);
    assert_eq!(common_read(&mut pci, 0x15, 1), 0);
    assert_eq!(common_read(&mut pci, 0x10, 2), u64::from(NO_VECTOR));
    assert_eq!(common_read(&mut pci, 0x18, 2), 256);
    assert_eq!(common_read(&mut pci, 0x1a, 2), u64::from(NO_VECTOR));
    assert_eq!(common_read(&mut pci, 0x1c, 2), 0);
    assert_eq!(common_read(&mut pci, 0x20, 4), 0);
    pci.write_bar(0, COMMON_OFFSET + 0x08, &1u32.to_le_bytes());
    assert_eq!(common_read(&mut pci, 0x0c, 4), 0, "driver features cleared");
    // KVM state: the notification ioeventfd is gone, every vector masked
    // (its route withdrawn) and the MSI-X table entry back to masked.
    assert!(ioevents.registered.lock().unwrap().is_empty());
    let routes = router.routes.lock().unwrap();
    assert_eq!(routes.last().map(|r| r.2), Some(None));
    drop(routes);
    let mut entry_control = [0u8; 4];
    pci.read_bar(0, MSIX_TABLE_OFFSET + 12, &mut entry_control);
    assert_eq!(u32::from_le_bytes(entry_control), 1);
    // The driver can bring it up again.
    bring_up(&mut pci);
    assert_eq!(
        *ioevents.registered.lock().unwrap(),
        vec![BAR + NOTIFY_OFFSET]
    );
}

#[test]
fn flr_while_the_event_loop_serves_the_queue() {
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::atomic::AtomicBool;
    let (mut pci, block, _file) = transport();
    let stop = Arc::new(AtomicBool::new(false));
    let event_loop = {
        let (block, stop) = (block.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
            em.add_subscriber(block);
            while !stop.load(Ordering::SeqCst) {
                em.run_with_timeout(10).unwrap();
            }
        })
    };
    for round in 0..20u64 {
        bring_up(&mut pci);
        // A kick through the trapped notification path (the ioeventfd
        // of a real VM signals the same eventfd).
        pci.write_bar(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
        std::thread::sleep(Duration::from_micros(round * 50));
        flr(&mut pci);
        assert_eq!(common_read(&mut pci, 0x14, 1), 0);
        assert_eq!(common_read(&mut pci, 0x1c, 2), 0);
    }
    // The device still works.
    pci.ram.write_obj(0xffu8, GuestAddress(REQ_STATUS)).unwrap();
    bring_up(&mut pci);
    pci.write_bar(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while used_idx(&pci) != REQUESTS && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(used_idx(&pci), REQUESTS);
    let req_status: u8 = pci.ram.read_obj(GuestAddress(REQ_STATUS)).unwrap();
    assert_eq!(req_status, 0, "VIRTIO_BLK_S_OK");
    stop.store(true, Ordering::SeqCst);
    event_loop.join().unwrap();
}
