//! Register-level tests of the dma-test device.

use super::*;
use crate::pci::config::COMMAND;

fn dev() -> (DmaTest, GuestMemoryMmap) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let d = DmaTest::new(
        DmaSpace::identity(0x10),
        ram.clone(),
        DmaTestFeatures::default(),
    )
    .unwrap();
    (d, ram)
}

fn w32(d: &mut DmaTest, off: u64, v: u32) {
    d.write_bar(0, off, &v.to_le_bytes());
}

fn r32(d: &mut DmaTest, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.read_bar(0, off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn write_and_read_dma() {
    let (mut d, ram) = dev();
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    d.write_bar(0, REG_ADDR, &0x2000u64.to_le_bytes());
    w32(&mut d, REG_LEN, 16);
    w32(&mut d, REG_PATTERN, 0xab);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Done as u32);
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x200f)).unwrap(), 0xab);
    w32(&mut d, REG_COMMAND, Command::Read as u32);
    assert_eq!(r32(&mut d, REG_RESULT), 16 * 0xab);
    assert_eq!(r32(&mut d, REG_ID), ID);
}

#[test]
fn no_bus_master_or_bad_address_fails_cleanly() {
    let (mut d, _) = dev();
    w32(&mut d, REG_LEN, 16);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Fault as u32);
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    d.write_bar(0, REG_ADDR, &(u64::MAX - 4).to_le_bytes());
    w32(&mut d, REG_COMMAND, Command::Read as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Fault as u32);
    assert_eq!(r32(&mut d, REG_FAULTS), 1);
    w32(&mut d, REG_LEN, MAX_LEN + 1);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Fault as u32);
}

#[test]
fn pasid_ats_pri_capabilities() {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let f = DmaTestFeatures {
        pasid_bits: 20,
        ats_pri: true,
    };
    let mut d = DmaTest::new(DmaSpace::identity(0x10), ram, f).unwrap();
    let caps = d.config.extended_capabilities();
    let ids: Vec<u16> = caps.iter().map(|c| c.1).collect();
    assert_eq!(ids, vec![EXT_CAP_ATS, EXT_CAP_PRI, EXT_CAP_PASID]);
    let pri = d.pri_cap.unwrap();
    assert_ne!(
        d.config.read_u16(pri + 6) & (1 << 8),
        0,
        "stopped while disabled"
    );
    d.write_config(pri + 4, &1u16.to_le_bytes());
    assert!(d.pri_enabled());
    assert_eq!(d.config.read_u16(pri + 6) & (1 << 8), 0);
    let pasid = d.pasid_cap.unwrap();
    assert_eq!((d.config.read_u16(pasid + 4) >> 8) & 0x1f, 20);
    d.write_config(pasid + 6, &0xffffu16.to_le_bytes());
    assert_eq!(d.config.read_u16(pasid + 6), 1, "only Enable is writable");
    // A PASID-tagged DMA without PASID enabled fails.
    d.write_config(pasid + 6, &0u16.to_le_bytes());
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    w32(&mut d, REG_PASID, (1 << 31) | 5);
    w32(&mut d, REG_LEN, 4);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Fault as u32);
}

/// Translates every page to `GPA` and counts the ATS translation requests.
#[derive(Default)]
struct CountingTranslator {
    calls: std::sync::atomic::AtomicUsize,
}

const GPA: u64 = 0x8000;

impl viommu::Translate for CountingTranslator {
    fn translate(
        &self,
        _requester_id: u16,
        _pasid: Option<u32>,
        iova: u64,
        len: u64,
        _access: Access,
    ) -> Result<Vec<viommu::Translation>, viommu::DmaFault> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(vec![viommu::Translation {
            iova,
            gpa: GPA,
            len,
        }])
    }
}

/// A device with ATS enabled behind `CountingTranslator`.
fn ats_dev() -> (DmaTest, GuestMemoryMmap, Arc<CountingTranslator>) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let t = Arc::new(CountingTranslator::default());
    let f = DmaTestFeatures {
        pasid_bits: 0,
        ats_pri: true,
    };
    let space = DmaSpace::translated(0x10, t.clone());
    let mut d = DmaTest::new(space, ram.clone(), f).unwrap();
    let ats = d.ats_cap.unwrap();
    d.write_config(ats + 6, &(1u16 << 15).to_le_bytes());
    assert!(d.ats_enabled());
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    (d, ram, t)
}

/// Runs a WRITE of `len` bytes at `addr` with an empty ATC; returns STATUS
/// and the translation requests it made.
fn ats_write(addr: u64, len: u32) -> (u32, usize) {
    let (mut d, ram, t) = ats_dev();
    ram.write_slice(&[0u8; 0x2000], GuestAddress(GPA)).unwrap();
    d.write_bar(0, REG_ADDR, &addr.to_le_bytes());
    w32(&mut d, REG_LEN, len);
    w32(&mut d, REG_PATTERN, 0x5a);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    let calls = t.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(d.atc.len() <= calls);
    (r32(&mut d, REG_STATUS), calls)
}

#[test]
fn ats_walk_at_the_top_of_the_address_space_is_bounded() {
    let done = Status::Done as u32;
    let fault = Status::Fault as u32;
    let top_page = u64::MAX - (PAGE_SIZE - 1);
    // Ranges that end on or before the last byte: one translation per
    // page, however the translator answers.
    assert_eq!(ats_write(top_page, 4096), (done, 1));
    assert_eq!(ats_write(top_page, 4095), (done, 1));
    assert_eq!(ats_write(top_page + 1, 4095), (done, 1));
    assert_eq!(ats_write(u64::MAX, 1), (done, 1));
    assert_eq!(ats_write(top_page - PAGE_SIZE, 8192), (done, 2));
    assert_eq!(ats_write(top_page - 10, 4106), (done, 2));
    // Ranges that would wrap are the device's fault status, with no
    // translation requested at all.
    assert_eq!(ats_write(top_page, 4097), (fault, 0));
    assert_eq!(ats_write(u64::MAX, 2), (fault, 0));
    assert_eq!(ats_write(u64::MAX - 100, MAX_LEN), (fault, 0));
    // Zero length: nothing to translate.
    assert_eq!(ats_write(u64::MAX, 0), (done, 0));
}

#[test]
fn ats_write_at_the_top_lands_where_the_translation_points() {
    let (mut d, ram, _) = ats_dev();
    d.write_bar(0, REG_ADDR, &(u64::MAX - 15).to_le_bytes());
    w32(&mut d, REG_LEN, 16);
    w32(&mut d, REG_PATTERN, 0xc3);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Done as u32);
    let mut got = [0u8; 17];
    ram.read_slice(&mut got, GuestAddress(GPA + 0xfef)).unwrap();
    assert_eq!(got[0], 0);
    assert!(got[1..].iter().all(|&b| b == 0xc3));
}

#[test]
fn untranslated_wrapping_range_is_a_fault() {
    let (mut d, _) = dev();
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    d.write_bar(0, REG_ADDR, &(u64::MAX - 4095).to_le_bytes());
    w32(&mut d, REG_LEN, 4097);
    w32(&mut d, REG_COMMAND, Command::Read as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Fault as u32);
    assert_eq!(r32(&mut d, REG_FAULTS), 1);
}

#[test]
fn atc_stays_bounded_when_the_guest_sweeps_addresses() {
    let (mut d, _, t) = ats_dev();
    w32(&mut d, REG_LEN, MAX_LEN);
    let pages_per_command = (MAX_LEN as u64 / PAGE_SIZE) as usize;
    let commands = ATC_CAPACITY / pages_per_command + 3;
    for i in 0..commands as u64 {
        d.write_bar(0, REG_ADDR, &(i * MAX_LEN as u64).to_le_bytes());
        w32(&mut d, REG_COMMAND, Command::Read as u32);
        assert_eq!(r32(&mut d, REG_STATUS), Status::Done as u32);
    }
    assert_eq!(
        t.calls.load(std::sync::atomic::Ordering::Relaxed),
        commands * pages_per_command
    );
    assert_eq!(d.atc.len(), ATC_CAPACITY);
}

#[test]
fn page_pieces_cover_the_range_exactly() {
    let r = DmaRange::new(0x1ff0, 0x2020).unwrap();
    let p: Vec<_> = r.pages().collect();
    assert_eq!(
        p,
        vec![
            PagePiece {
                page: 0x1000,
                offset: 0xff0,
                len: 0x10
            },
            PagePiece {
                page: 0x2000,
                offset: 0,
                len: 0x1000
            },
            PagePiece {
                page: 0x3000,
                offset: 0,
                len: 0x1000
            },
            PagePiece {
                page: 0x4000,
                offset: 0,
                len: 0x10
            },
        ]
    );
    assert_eq!(DmaRange::new(5, 0).unwrap().pages().count(), 0);
    assert!(DmaRange::new(u64::MAX, 2).is_none());
    let top = DmaRange::new(u64::MAX, 1).unwrap();
    assert_eq!(
        top.pages().collect::<Vec<_>>(),
        vec![PagePiece {
            page: u64::MAX - (PAGE_SIZE - 1),
            offset: PAGE_SIZE - 1,
            len: 1
        }]
    );
}

fn flr(d: &mut DmaTest) {
    let pcie = d
        .config
        .capabilities()
        .into_iter()
        .find(|c| c.1 == crate::pci::caps::CAP_ID_PCIE)
        .unwrap()
        .0;
    let devcap = d.config.read_u32(pcie + crate::pci::caps::PCIE_DEVCAP);
    assert_ne!(devcap & crate::pci::caps::DEVCAP_FLR, 0, "FLR advertised");
    let devctl = pcie + crate::pci::caps::PCIE_DEVCTL;
    let mut v = [0u8; 2];
    d.read_config(devctl, &mut v);
    let v = u16::from_le_bytes(v) | crate::pci::caps::DEVCTL_BCR_FLR;
    d.write_config(devctl, &v.to_le_bytes());
    assert_eq!(
        d.config.read_u16(devctl) & crate::pci::caps::DEVCTL_BCR_FLR,
        0
    );
}

#[test]
fn flr_resets_registers_and_config_space() {
    use crate::pci::config::{BAR0, COMMAND_MEMORY_SPACE, INTERRUPT_LINE, STATUS};
    let (mut d, ram) = dev();
    let power_on: Vec<u32> = (0..0x40).step_by(4).map(|o| d.config.read_u32(o)).collect();
    d.set_bar_address(0, 0xc000_0000);
    let cmd = COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER;
    d.write_config(COMMAND, &cmd.to_le_bytes());
    d.write_config(INTERRUPT_LINE, &[10]);
    d.config.set_u16(STATUS, d.config.read_u16(STATUS) | 0x8000);
    d.write_bar(0, REG_ADDR, &0x3000u64.to_le_bytes());
    w32(&mut d, REG_LEN, 8);
    w32(&mut d, REG_PATTERN, 0x11);
    w32(&mut d, REG_PASID, 7);
    w32(&mut d, REG_COMMAND, Command::Read as u32);
    assert_eq!(r32(&mut d, REG_DONE), 1);
    assert_eq!(d.bar_containing(0xc000_0010), Some((0, 0x10)));

    flr(&mut d);

    let now: Vec<u32> = (0..0x40).step_by(4).map(|o| d.config.read_u32(o)).collect();
    assert_eq!(now, power_on, "header back to power-on");
    assert_eq!(d.config.command(), 0);
    assert_eq!(d.config.read_u32(BAR0), 0);
    assert_eq!(d.bar_containing(0xc000_0010), None);
    for reg in [REG_ADDR, REG_LEN, REG_PATTERN, REG_PASID, REG_RESULT] {
        assert_eq!(r32(&mut d, reg), 0, "register {reg:#x}");
    }
    assert_eq!(r32(&mut d, REG_STATUS), Status::Idle as u32);
    assert_eq!(r32(&mut d, REG_DONE), 0);
    assert_eq!(r32(&mut d, REG_FAULTS), 0);
    assert_eq!(r32(&mut d, REG_ID), ID);
    // DMA needs Bus Master Enable again.
    d.write_bar(0, REG_ADDR, &0x3000u64.to_le_bytes());
    w32(&mut d, REG_LEN, 8);
    w32(&mut d, REG_PATTERN, 0x22);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Fault as u32);
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0);
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Done as u32);
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0x22);
}

/// ATS translations fail; page requests are taken and never answered.
struct Unmapped;

impl viommu::Translate for Unmapped {
    fn translate(
        &self,
        _requester_id: u16,
        _pasid: Option<u32>,
        iova: u64,
        len: u64,
        _access: Access,
    ) -> Result<Vec<viommu::Translation>, viommu::DmaFault> {
        Err(viommu::DmaFault::Blocked {
            iova,
            len,
            reason: "unmapped".into(),
        })
    }

    fn page_request(&self, _req: &PageRequest) -> Result<(), viommu::DmaFault> {
        Ok(())
    }
}

#[test]
fn flr_clears_pasid_ats_pri_atc_and_the_pending_page_request() {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let f = DmaTestFeatures {
        pasid_bits: 20,
        ats_pri: true,
    };
    let space = DmaSpace::translated(0x10, Arc::new(Unmapped));
    let mut d = DmaTest::new(space, ram, f).unwrap();
    let (ats, pri, pasid) = (d.ats_cap.unwrap(), d.pri_cap.unwrap(), d.pasid_cap.unwrap());
    let pri_status = d.config.read_u16(pri + 6);
    d.write_config(ats + 6, &(1u16 << 15).to_le_bytes());
    d.write_config(pri + 4, &1u16.to_le_bytes());
    d.write_config(pri + 12, &8u32.to_le_bytes());
    d.write_config(pasid + 6, &1u16.to_le_bytes());
    d.write_config(COMMAND, &COMMAND_BUS_MASTER.to_le_bytes());
    d.atc.insert(
        (None, 0x5000),
        AtcEntry {
            gpa: 0x5000,
            write: true,
        },
    );
    w32(&mut d, REG_LEN, 4);
    w32(&mut d, REG_COMMAND, Command::Write as u32);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Waiting as u32);
    assert_eq!(r32(&mut d, REG_PAGE_REQUESTS), 1);

    flr(&mut d);

    assert!(!d.ats_enabled() && !d.pri_enabled() && !d.pasid_enabled());
    assert_eq!(d.config.read_u16(ats + 6), 0);
    assert_eq!(d.config.read_u32(pri + 12), 0, "PRI allocation");
    assert_eq!(d.config.read_u16(pri + 6), pri_status, "PRI Stopped again");
    assert!(d.atc.is_empty());
    assert_eq!(d.pending, None);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Idle as u32);
    assert_eq!(r32(&mut d, REG_PAGE_REQUESTS), 0);
    // A response to the request made before the reset resumes nothing.
    d.on_page_response(0);
    assert_eq!(r32(&mut d, REG_STATUS), Status::Idle as u32);
    assert_eq!(r32(&mut d, REG_DONE), 0);
}
