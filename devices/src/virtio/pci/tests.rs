//! The transport with a block device behind it: what a vCPU waits for,
//! and what guest register writes make the VMM log.

use std::sync::mpsc;
use std::time::Duration;

use log::Level;
use vm_memory::GuestAddress;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::interrupt::test_utils::{RecordingIoEvents, RecordingRouter};
use crate::test_log::capture;
use crate::virtio::block::{Block, Disk};

const DISK_SECTORS: u64 = 64;

fn transport() -> (VirtioPciDevice, Arc<Mutex<Block>>, TempFile) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let f = TempFile::new().unwrap();
    f.as_file().set_len(DISK_SECTORS * 512).unwrap();
    let disk = Disk::new(f.as_file().try_clone().unwrap(), false, DISK_SECTORS * 512);
    let block = Arc::new(Mutex::new(Block::new(disk).unwrap()));
    let dev: Arc<Mutex<dyn VirtioDevice>> = block.clone();
    let pci = VirtioPciDevice::new(
        dev,
        DmaSpace::identity(8),
        false,
        ram,
        Arc::new(RecordingRouter::default()),
        Arc::new(RecordingIoEvents::default()),
    )
    .unwrap();
    (pci, block, f)
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
