//! `dma-test`: a PCI Express endpoint whose only job is to do DMA on
//! command, so tests can make a device read or write any IOVA and watch
//! what the IOMMU does with it.
//!
//! BAR 0 (4 KiB, 32-bit) registers, little-endian:
//!
//! ```text
//! 0x00 ID (RO)       0x444d_4154 ("TAMD")
//! 0x08 ADDR          DMA address (IOVA), 64-bit
//! 0x10 LEN           bytes to transfer (max 1 MiB)
//! 0x14 PATTERN       byte written by a WRITE command
//! 0x18 PASID         bit 31: tag the DMA with PASID bits 19:0
//! 0x1c COMMAND       1 = WRITE pattern to ADDR, 2 = READ from ADDR
//! 0x20 STATUS (RO)   0 idle, 1 done, 2 DMA fault
//! 0x24 RESULT (RO)   sum of the bytes a READ fetched (wrapping u32)
//! 0x28 FAULTS (RO)   DMA faults so far
//! 0x2c DONE (RO)     commands completed so far
//! 0x30 PAGE_REQUESTS (RO)  PRI page requests sent
//! 0x34 PAGE_RESPONSES (RO) page group responses received
//! ```
//!
//! Commands run synchronously on the write to COMMAND. DMA needs Bus
//! Master Enable, as on real hardware.
//!
//! Behind an IOMMU with PASIDs the device also has the PASID, ATS and PRI
//! extended capabilities. With ATS enabled it translates through ATS
//! Translation Requests and keeps the results in its own translation cache
//! (flushed by device-TLB invalidations); with PRI enabled a failed
//! translation becomes a page request, STATUS reads 3 (waiting) until the
//! page group response arrives, and the command is retried.
//!
//! Function Level Reset (Device Control bit 15, PCIe 6.0 §6.6.2) returns
//! the registers above to 0 (STATUS idle), empties the ATC, forgets a
//! command waiting for a page response, and puts config space back to
//! power-on: Bus Master Enable off, BAR unassigned, PASID/ATS/PRI control
//! cleared (PRI Stopped). A command runs entirely within its register
//! write, under the device's lock, so no DMA is in flight during a reset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use vm_memory::{Bytes, GuestAddress};

use crate::pci::caps::{add_pcie_rciep, Flr};
use crate::pci::config::{Bar, BarKind, ConfigError, ConfigSpace, COMMAND_BUS_MASTER};
use crate::pci::PciDevice;
use viommu::{Access, AtsEndpoint, DmaSpace, GuestMemoryMmap, PageRequest};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x5a5a;
const ID: u32 = 0x444d_4154;
const BAR_SIZE: u64 = 0x1000;
const MAX_LEN: u32 = 1 << 20;

const REG_ID: u64 = 0x00;
const REG_ADDR: u64 = 0x08;
const REG_LEN: u64 = 0x10;
const REG_PATTERN: u64 = 0x14;
const REG_PASID: u64 = 0x18;
const REG_COMMAND: u64 = 0x1c;
const REG_STATUS: u64 = 0x20;
const REG_RESULT: u64 = 0x24;
const REG_FAULTS: u64 = 0x28;
const REG_DONE: u64 = 0x2c;
const REG_PAGE_REQUESTS: u64 = 0x30;
const REG_PAGE_RESPONSES: u64 = 0x34;

/// Extended capability IDs (PCIe 5.0 §7.8.6, §10.5.1, §10.5.2).
const EXT_CAP_ATS: u16 = 0x0f;
const EXT_CAP_PRI: u16 = 0x13;
const EXT_CAP_PASID: u16 = 0x1b;
/// Outstanding page requests the device may have (PRI capacity).
const PRI_CAPACITY: u32 = 32;
/// The unit the device translates in through ATS (an STU of 4 KiB).
const PAGE_SIZE: u64 = 4096;
/// Translations the ATC holds. A real ATC is a fixed-size cache; without
/// a bound, a guest sweeping addresses would grow it without limit. It is
/// larger than the pages of one command (`MAX_LEN / PAGE_SIZE + 1`).
const ATC_CAPACITY: usize = 1024;

/// What a write of COMMAND asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    /// Write PATTERN to ADDR..ADDR+LEN.
    Write = 1,
    /// Read ADDR..ADDR+LEN and sum the bytes into RESULT.
    Read = 2,
}

impl Command {
    /// Other values are ignored, as the register documentation says.
    fn from_register(value: u32) -> Option<Self> {
        match value {
            1 => Some(Command::Write),
            2 => Some(Command::Read),
            _ => None,
        }
    }

    fn access(self) -> Access {
        match self {
            Command::Write => Access::Write,
            Command::Read => Access::Read,
        }
    }
}

/// The STATUS register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Idle = 0,
    Done = 1,
    /// The command was refused or its DMA faulted.
    Fault = 2,
    /// Waiting for a page group response (PRI).
    Waiting = 3,
}

/// The bytes one command covers: `len` bytes from `addr`. A range that
/// would wrap past the top of the 64-bit address space cannot be built,
/// so every walk over it is bounded by its length, whatever the IOMMU
/// answers for each page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DmaRange {
    addr: u64,
    len: u64,
}

/// The part of a [`DmaRange`] inside one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PagePiece {
    page: u64,
    offset: u64,
    len: u64,
}

impl DmaRange {
    /// None when the last byte would lie beyond `u64::MAX`. A range ending
    /// exactly at the top of the address space does not wrap.
    fn new(addr: u64, len: u32) -> Option<Self> {
        let len = u64::from(len);
        if len > 0 {
            addr.checked_add(len - 1)?;
        }
        Some(DmaRange { addr, len })
    }

    /// The pages the range touches, in order, each with the bytes of the
    /// range it holds. Their number is computed from the length up front.
    fn pages(self) -> impl Iterator<Item = PagePiece> {
        let mask = PAGE_SIZE - 1;
        let first = self.addr & !mask;
        // `new` checked this cannot overflow; len == 0 touches no page.
        let last_byte = self.addr.saturating_add(self.len.saturating_sub(1));
        let count = if self.len == 0 {
            0
        } else {
            ((last_byte & !mask) - first) / PAGE_SIZE + 1
        };
        (0..count).map(move |i| {
            // page <= last_byte, and page + mask stays within the last page.
            let page = first + i * PAGE_SIZE;
            let start = self.addr.max(page);
            let end = last_byte.min(page + mask);
            PagePiece {
                page,
                offset: start - page,
                len: end - start + 1,
            }
        })
    }
}

/// What the device offers beyond plain DMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaTestFeatures {
    /// PASID width in bits (0: no PASID capability).
    pub pasid_bits: u8,
    /// ATS and PRI capabilities.
    pub ats_pri: bool,
}

/// A cached ATS translation of one 4 KiB page.
#[derive(Clone, Copy)]
struct AtcEntry {
    gpa: u64,
    write: bool,
}

pub struct DmaTest {
    config: ConfigSpace,
    flr: Flr,
    space: DmaSpace,
    ram: GuestMemoryMmap,
    pasid_cap: Option<usize>,
    ats_cap: Option<usize>,
    pri_cap: Option<usize>,
    atc: HashMap<(Option<u32>, u64), AtcEntry>,
    /// The command waiting for a page group response.
    pending: Option<Command>,
    prg_index: u16,
    page_requests: u32,
    page_responses: u32,
    endpoint: Option<Arc<Endpoint>>,
    addr: u64,
    len: u32,
    pattern: u32,
    pasid: u32,
    status: Status,
    result: u32,
    faults: u32,
    done: u32,
}

/// Delivers the IOMMU's page responses and ATC invalidations to the device.
pub struct Endpoint(Weak<Mutex<DmaTest>>);

impl AtsEndpoint for Endpoint {
    fn page_response(&self, _pasid: Option<u32>, _prg_index: u16, code: u8) {
        if let Some(dev) = self.0.upgrade() {
            if let Ok(mut d) = dev.lock() {
                d.on_page_response(code);
            }
        }
    }

    fn invalidate_atc(&self, pasid: Option<u32>) {
        if let Some(dev) = self.0.upgrade() {
            if let Ok(mut d) = dev.lock() {
                match pasid {
                    Some(p) => d.atc.retain(|(q, _), _| *q != Some(p)),
                    None => d.atc.clear(),
                }
            }
        }
    }
}

impl DmaTest {
    pub fn new(
        space: DmaSpace,
        ram: GuestMemoryMmap,
        features: DmaTestFeatures,
    ) -> Result<Self, ConfigError> {
        let mut config = ConfigSpace::new(VENDOR_ID, DEVICE_ID, 0xff_00_00, 1);
        config.add_bar(
            0,
            Bar {
                kind: BarKind::Mem32,
                size: BAR_SIZE,
                prefetchable: false,
            },
        )?;
        let pcie_cap = add_pcie_rciep(&mut config)?;
        let mut pasid_cap = None;
        let (mut ats_cap, mut pri_cap) = (None, None);
        if features.ats_pri {
            // ATS: queue depth 0 (= 32), page-aligned requests; control
            // Enable (15) and STU (4:0) are writable.
            ats_cap = Some(config.add_extended_capability(
                EXT_CAP_ATS,
                1,
                &[0x20, 0x00, 0x00, 0x00],
                &[0x00, 0x00, 0x1f, 0x80],
            )?);
            // PRI: control (enable, reset), status (stopped, PRG response
            // needs PASID), capacity, allocation.
            let mut body = [0u8; 12];
            body[2..4].copy_from_slice(&((1u16 << 8) | (1 << 15)).to_le_bytes());
            body[4..8].copy_from_slice(&PRI_CAPACITY.to_le_bytes());
            let mut mask = [0u8; 12];
            mask[0] = 0x03;
            mask[8..12].fill(0xff);
            pri_cap = Some(config.add_extended_capability(EXT_CAP_PRI, 1, &body, &mask)?);
        }
        if features.pasid_bits > 0 {
            // PASID: no execute or privileged mode; width in bits 12:8;
            // control Enable (bit 0) writable.
            let cap = (features.pasid_bits.min(20) as u16) << 8;
            let mut body = [0u8; 4];
            body[0..2].copy_from_slice(&cap.to_le_bytes());
            pasid_cap = Some(config.add_extended_capability(
                EXT_CAP_PASID,
                1,
                &body,
                &[0x00, 0x00, 0x01, 0x00],
            )?);
        }
        Ok(DmaTest {
            flr: Flr::new(&config, pcie_cap),
            config,
            space,
            ram,
            pasid_cap,
            ats_cap,
            pri_cap,
            atc: HashMap::new(),
            pending: None,
            prg_index: 0,
            page_requests: 0,
            page_responses: 0,
            endpoint: None,
            addr: 0,
            len: 0,
            pattern: 0,
            pasid: 0,
            status: Status::Idle,
            result: 0,
            faults: 0,
            done: 0,
        })
    }

    /// Registers the device with its IOMMU for page responses and
    /// device-TLB invalidations.
    pub fn attach(dev: &Arc<Mutex<DmaTest>>) {
        let ep = Arc::new(Endpoint(Arc::downgrade(dev)));
        let Ok(mut d) = dev.lock() else { return };
        if let Some(t) = d.space.translator() {
            let weak: Weak<dyn AtsEndpoint> = Arc::downgrade(&(ep.clone() as Arc<dyn AtsEndpoint>));
            t.register_endpoint(d.space.requester_id(), weak);
        }
        d.endpoint = Some(ep);
    }

    fn ext_control(&self, cap: Option<usize>, offset: usize, bit: u16) -> bool {
        cap.is_some_and(|c| self.config.read_u16(c + offset) & bit != 0)
    }

    fn pasid_enabled(&self) -> bool {
        self.ext_control(self.pasid_cap, 6, 1)
    }

    fn ats_enabled(&self) -> bool {
        self.ext_control(self.ats_cap, 6, 1 << 15)
    }

    fn pri_enabled(&self) -> bool {
        self.ext_control(self.pri_cap, 4, 1)
    }

    fn finish(&mut self, ok: bool) {
        if ok {
            self.status = Status::Done;
        } else {
            self.status = Status::Fault;
            self.faults = self.faults.wrapping_add(1);
        }
        self.done = self.done.wrapping_add(1);
    }

    fn run(&mut self, cmd: Command) {
        self.pending = None;
        if self.config.command() & COMMAND_BUS_MASTER == 0 || self.len > MAX_LEN {
            self.status = Status::Fault;
            return;
        }
        let Some(range) = DmaRange::new(self.addr, self.len) else {
            self.finish(false);
            return;
        };
        let pasid = (self.pasid & (1 << 31) != 0).then_some(self.pasid & 0xf_ffff);
        if pasid.is_some() && !self.pasid_enabled() {
            self.finish(false);
            return;
        }
        let _in_flight = self.space.begin_dma();
        if self.ats_enabled() {
            self.run_translated(cmd, pasid, range);
            return;
        }
        // Untranslated requests: the IOMMU translates (and records faults).
        let mem = self.space.with_pasid(pasid).into_memory(self.ram.clone());
        // len <= MAX_LEN, checked above.
        let len = range.len as usize;
        let ok = match cmd {
            Command::Write => {
                let buf = vec![self.pattern as u8; len];
                mem.write_slice(&buf, GuestAddress(range.addr)).is_ok()
            }
            Command::Read => {
                let mut buf = vec![0u8; len];
                let r = mem.read_slice(&mut buf, GuestAddress(range.addr));
                self.result = buf.iter().fold(0u32, |a, &b| a.wrapping_add(b as u32));
                r.is_ok()
            }
        };
        self.finish(ok);
    }

    /// The ATC entry for `page`, if it allows `cmd`.
    fn atc_lookup(&self, pasid: Option<u32>, page: u64, cmd: Command) -> Option<AtcEntry> {
        self.atc
            .get(&(pasid, page))
            .copied()
            .filter(|e| e.write || cmd == Command::Read)
    }

    /// Caches a translation, evicting another one when the ATC is full
    /// (dropping a cached translation is always allowed).
    fn atc_insert(&mut self, pasid: Option<u32>, page: u64, entry: AtcEntry) {
        if self.atc.len() >= ATC_CAPACITY && !self.atc.contains_key(&(pasid, page)) {
            if let Some(victim) = self.atc.keys().next().copied() {
                self.atc.remove(&victim);
            }
        }
        self.atc.insert((pasid, page), entry);
    }

    /// The ATS path: translate each page of `range` (ATC first), then
    /// access guest memory with the translated addresses. A translation
    /// failure with PRI enabled becomes a page request; the response
    /// resumes the command.
    fn run_translated(&mut self, cmd: Command, pasid: Option<u32>, range: DmaRange) {
        let write = cmd == Command::Write;
        let mut pieces = Vec::new();
        for piece in range.pages() {
            let page = piece.page;
            let entry = match self.atc_lookup(pasid, page, cmd) {
                Some(e) => e,
                None => {
                    let t = self.space.translator().map(|t| {
                        t.translate_ats(
                            self.space.requester_id(),
                            pasid,
                            page,
                            PAGE_SIZE,
                            cmd.access(),
                        )
                    });
                    match t {
                        Some(Ok(v)) if v.len() == 1 => {
                            let e = AtcEntry {
                                gpa: v[0].gpa,
                                write,
                            };
                            self.atc_insert(pasid, page, e);
                            e
                        }
                        None => AtcEntry {
                            gpa: page,
                            write: true,
                        },
                        _ => {
                            self.page_fault(cmd, pasid, page);
                            return;
                        }
                    }
                }
            };
            // A translation at the top of the address space cannot hold
            // the rest of the page: that is a fault, not a wrap.
            let Some(gpa) = entry.gpa.checked_add(piece.offset) else {
                self.finish(false);
                return;
            };
            // piece.len <= PAGE_SIZE.
            pieces.push((gpa, piece.len as usize));
        }
        let mut ok = true;
        let mut sum = 0u32;
        for (gpa, n) in pieces {
            match cmd {
                Command::Write => {
                    ok &= self
                        .ram
                        .write_slice(&vec![self.pattern as u8; n], GuestAddress(gpa))
                        .is_ok();
                }
                Command::Read => {
                    let mut buf = vec![0u8; n];
                    ok &= self.ram.read_slice(&mut buf, GuestAddress(gpa)).is_ok();
                    sum = buf.iter().fold(sum, |a, &b| a.wrapping_add(b as u32));
                }
            }
        }
        if !write {
            self.result = sum;
        }
        self.finish(ok);
    }

    fn page_fault(&mut self, cmd: Command, pasid: Option<u32>, page: u64) {
        let write = cmd == Command::Write;
        let Some(t) = self.space.translator().cloned() else {
            self.finish(false);
            return;
        };
        if !self.pri_enabled() {
            self.finish(false);
            return;
        }
        self.prg_index = (self.prg_index + 1) & 0x1ff;
        let req = PageRequest {
            requester_id: self.space.requester_id(),
            pasid,
            address: page,
            read: !write,
            write,
            exec: false,
            privileged: false,
            prg_index: self.prg_index,
            last: true,
        };
        match t.page_request(&req) {
            Ok(()) => {
                self.page_requests = self.page_requests.wrapping_add(1);
                self.pending = Some(cmd);
                self.status = Status::Waiting;
            }
            Err(_) => self.finish(false),
        }
    }

    fn on_page_response(&mut self, code: u8) {
        self.page_responses = self.page_responses.wrapping_add(1);
        let Some(cmd) = self.pending.take() else {
            return;
        };
        if code == 0 {
            self.run(cmd);
        } else {
            self.finish(false);
        }
    }

    /// PRI status follows control: Stopped while disabled (§10.5.2.3).
    fn update_pri_status(&mut self) {
        let Some(c) = self.pri_cap else { return };
        let control = self.config.read_u16(c + 4);
        let mut status = self.config.read_u16(c + 6) & !(1 << 8);
        if control & 1 == 0 {
            status |= 1 << 8;
            self.pending = None;
        }
        self.config.set_u16(c + 6, status);
    }

    fn reg(&self, off: u64) -> u64 {
        match off {
            REG_ID => ID as u64,
            REG_ADDR => self.addr,
            REG_LEN => self.len as u64,
            REG_PATTERN => self.pattern as u64,
            REG_PASID => self.pasid as u64,
            REG_STATUS => self.status as u64,
            REG_RESULT => self.result as u64,
            REG_FAULTS => self.faults as u64,
            REG_DONE => self.done as u64,
            REG_PAGE_REQUESTS => self.page_requests as u64,
            REG_PAGE_RESPONSES => self.page_responses as u64,
            _ => 0,
        }
    }
}

impl PciDevice for DmaTest {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if self.flr.initiated_by(offset, data) {
            self.function_level_reset();
            return;
        }
        self.update_pri_status();
        if !self.ats_enabled() {
            self.atc.clear();
        }
    }

    fn function_level_reset(&mut self) {
        self.flr.reset_config(&mut self.config);
        // The PRI status power-on value already says Stopped.
        self.update_pri_status();
        self.atc.clear();
        self.pending = None;
        self.prg_index = 0;
        self.page_requests = 0;
        self.page_responses = 0;
        self.addr = 0;
        self.len = 0;
        self.pattern = 0;
        self.pasid = 0;
        self.status = Status::Idle;
        self.result = 0;
        self.faults = 0;
        self.done = 0;
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.config.bar(0).map(|b| (0, b)).into_iter().collect()
    }

    fn set_bar_address(&mut self, index: usize, addr: u64) {
        self.config.set_bar_address(index, addr)
    }

    fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
        self.config.bar_containing(addr)
    }

    fn read_bar(&mut self, _index: usize, offset: u64, data: &mut [u8]) {
        // Registers are read as aligned 32-bit words (ADDR also as 64).
        let base = offset & !3;
        let v = if base == REG_ADDR + 4 {
            self.addr >> 32
        } else {
            self.reg(base)
        };
        let bytes = v.to_le_bytes();
        let start = (offset & 3) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    fn write_bar(&mut self, _index: usize, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        match (offset, n) {
            (REG_ADDR, 8) => self.addr = v,
            (REG_ADDR, 4) => self.addr = (self.addr & !0xffff_ffff) | (v & 0xffff_ffff),
            (o, 4) if o == REG_ADDR + 4 => self.addr = (self.addr & 0xffff_ffff) | (v << 32),
            (REG_LEN, 4) => self.len = v as u32,
            (REG_PATTERN, 4) => self.pattern = v as u32,
            (REG_PASID, 4) => self.pasid = v as u32,
            (REG_COMMAND, 4) => {
                if let Some(cmd) = Command::from_register(v as u32) {
                    self.run(cmd);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
