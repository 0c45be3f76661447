//! Interrupt remapping: turning an interrupt request into the interrupt to
//! deliver, through the guest's interrupt-remapping table (IRT).
//!
//! This is a pure model of VT-d §5.1 (with the IRTE layout of §9.10): it reads
//! one entry from guest memory and either returns the interrupt to deliver or
//! the fault the hardware would raise. Caching (the interrupt entry cache),
//! fault recording and delivery belong to the caller, which calls [`remap`]
//! only while GSTS.IRES is set.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// IRTA_REG bit 11: Extended Interrupt Mode Enable (x2APIC destinations).
const IRTA_EIME: u64 = 1 << 11;
/// IRTA_REG bits 63:12: table base, 4 KiB aligned.
const IRTA_BASE_MASK: u64 = !0xfff;

/// MSI address bit 4: Interrupt Format, 1 = remappable (§5.1.2.2).
const ADDR_IF: u64 = 1 << 4;
/// MSI address bit 3: SubHandle Valid.
const ADDR_SHV: u64 = 1 << 3;
/// MSI address bit 2: bit 15 of the handle.
const ADDR_HANDLE15: u64 = 1 << 2;

/// Base of a compatibility-format MSI address as KVM reads it.
const MSI_ADDR_BASE: u64 = 0xfee0_0000;

/// IRTE low qword: bits 14:12, bit 15 (IM: posted format, which this model
/// does not implement, so a posted IRTE is rejected like a reserved bit, as
/// on hardware without ECAP.PI) and bits 31:24 (§9.10). Bits 11:8 are AVAIL,
/// free for software, so not checked.
const LO_RESERVED: u64 = 0xff00_f000;
/// In xAPIC mode (EIME = 0) only destination bits 47:40 exist; bits 39:32
/// and 63:48 of the entry are reserved (§9.10, Destination ID field).
const LO_RESERVED_XAPIC: u64 = 0xffff_00ff_0000_0000;
/// IRTE high qword: everything above SVT (bits 63:20) is reserved.
const HI_RESERVED: u64 = !0xf_ffff;

/// IRTA_REG contents: table base (bits 63:12), EIME (bit 11: x2APIC mode),
/// S (bits 3:0: 2^(S+1) entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrtConfig {
    pub base: u64,
    pub entries: u32,
    pub eim: bool,
}

impl IrtConfig {
    /// Decodes IRTA_REG as latched by GCMD.SIRTP (§10.4.29).
    pub fn from_irta(irta: u64) -> Self {
        IrtConfig {
            base: irta & IRTA_BASE_MASK,
            entries: 2u32 << (irta & 0xf),
            eim: irta & IRTA_EIME != 0,
        }
    }
}

/// An interrupt request as the device or IOAPIC wrote it: a DWORD write of
/// `data` to `address`, tagged with the requester's bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRequest {
    pub address: u64,
    pub data: u32,
    pub source_id: u16,
}

/// The interrupt to deliver after remapping, as a compatibility-format MSI
/// in the form KVM's MSI routing understands. The x2APIC destination bits
/// 31:8 go to address bits 63:40 (KVM's extended destination ID form, which
/// needs `KVM_X2APIC_API_USE_32BIT_IDS`); bits 7:0 to address bits 19:12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappedMsi {
    pub address: u64,
    pub data: u32,
}

/// What became of an interrupt request that did not fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrOutcome {
    /// Delivered through an IRTE.
    Remapped(RemappedMsi),
    /// Compatibility format while GSTS.CFIS allows it: deliver the request
    /// unchanged.
    Compatibility,
}

/// An interrupt-remapping fault (§7.1.3, reasons 20h–26h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupt remapping fault {reason:#04x} (index {index:#x}, source {source_id:#06x})")]
pub struct IrFault {
    pub reason: u8,
    /// The interrupt index, for the fault record's FI field (bits 63:48, so
    /// an index grown past 16 bits by a subhandle keeps its low 16 bits).
    pub index: u16,
    pub source_id: u16,
    /// False when the IRTE's FPD bit asks for the fault to be neither
    /// recorded nor reported; the interrupt is still blocked.
    pub record: bool,
}

impl IrFault {
    /// Reserved field set in the decoded interrupt request.
    pub const REQUEST_RESERVED: u8 = 0x20;
    /// Interrupt index beyond the table size in IRTA_REG.S.
    pub const INDEX_OUT_OF_RANGE: u8 = 0x21;
    /// The IRTE's Present bit is clear.
    pub const NOT_PRESENT: u8 = 0x22;
    /// The IRTE could not be read (outside guest memory).
    pub const TABLE_UNREADABLE: u8 = 0x23;
    /// Reserved field set in a present IRTE.
    pub const IRTE_RESERVED: u8 = 0x24;
    /// Compatibility-format request while GSTS.CFIS is clear.
    pub const COMPAT_BLOCKED: u8 = 0x25;
    /// Source-ID verification failed.
    pub const SOURCE_ID: u8 = 0x26;
}

/// Remaps one interrupt request through the table described by `cfg`.
/// `cfis` is GSTS.CFIS (compatibility-format interrupts allowed).
pub fn remap<M: GuestMemory>(
    mem: &M,
    cfg: &IrtConfig,
    cfis: bool,
    req: &MsiRequest,
) -> Result<IrOutcome, IrFault> {
    // The fault record's FI field is 16 bits wide; truncation is intended.
    let fault = |reason, index: u32, record| IrFault {
        reason,
        index: index as u16,
        source_id: req.source_id,
        record,
    };

    // Only DWORD writes to 0xFEEx_xxxx are interrupt requests (§5.1.1); a
    // caller that hands us anything else (including a 64-bit address with
    // upper bits set) gets the "reserved field in the request" fault.
    if req.address >> 20 != 0xfee {
        return Err(fault(IrFault::REQUEST_RESERVED, 0, true));
    }
    if req.address & ADDR_IF == 0 {
        // §5.1.2.1: compatibility format bypasses the table while CFIS is
        // set, and is blocked (and faulted) otherwise.
        return if cfis {
            Ok(IrOutcome::Compatibility)
        } else {
            Err(fault(IrFault::COMPAT_BLOCKED, 0, true))
        };
    }

    // §5.1.2.2: handle[14:0] is address bits 19:5, handle[15] is bit 2.
    // Address bits 1:0 are "don't care" in this format, so not checked.
    let handle =
        ((req.address >> 5) & 0x7fff) as u32 | u32::from(req.address & ADDR_HANDLE15 != 0) << 15;
    let index = if req.address & ADDR_SHV != 0 {
        // §5.1.3: with SHV the data register carries a subhandle in bits
        // 15:0 and bits 31:16 are reserved. Without SHV the data register is
        // not interpreted (an IOAPIC puts its vector and trigger there,
        // §5.1.5.1), so it is not checked.
        if req.data >> 16 != 0 {
            return Err(fault(IrFault::REQUEST_RESERVED, handle, true));
        }
        handle + (req.data & 0xffff)
    } else {
        handle
    };
    if index >= cfg.entries {
        return Err(fault(IrFault::INDEX_OUT_OF_RANGE, index, true));
    }

    let irte = cfg
        .base
        .checked_add(u64::from(index) * 16)
        .and_then(|addr| mem.read_obj::<u128>(GuestAddress(addr)).ok())
        .map(u128::from_le)
        .ok_or_else(|| fault(IrFault::TABLE_UNREADABLE, index, true))?;
    let (lo, hi) = (irte as u64, (irte >> 64) as u64);

    // From here the entry has been fetched, so its FPD bit governs whether
    // a fault is recorded. §9.10 has FPD evaluated even when P is clear.
    let record = lo & 0b10 == 0;
    if lo & 1 == 0 {
        return Err(fault(IrFault::NOT_PRESENT, index, record));
    }
    let lo_reserved = if cfg.eim {
        LO_RESERVED
    } else {
        LO_RESERVED | LO_RESERVED_XAPIC
    };
    let svt = (hi >> 18) & 0b11;
    // SVT = 11b is a reserved encoding: treated as a reserved-field fault.
    if lo & lo_reserved != 0 || hi & HI_RESERVED != 0 || svt == 0b11 {
        return Err(fault(IrFault::IRTE_RESERVED, index, record));
    }
    if !source_id_ok(hi, req.source_id) {
        return Err(fault(IrFault::SOURCE_ID, index, record));
    }

    let dest = (lo >> 32) as u32;
    let dest = if cfg.eim { dest } else { (dest >> 8) & 0xff };
    let dm = (lo >> 2) & 1;
    let rh = (lo >> 3) & 1;
    let level = (lo >> 4) & 1 != 0;
    let dlm = ((lo >> 5) & 0b111) as u32;
    let vector = ((lo >> 16) & 0xff) as u32;

    let address = MSI_ADDR_BASE
        | u64::from(dest & 0xff) << 12
        | rh << 3
        | dm << 2
        | u64::from(dest & 0xffff_ff00) << 32;
    // Level-triggered MSIs are always assertions: set Level (bit 14) along
    // with Trigger Mode (bit 15).
    let data = vector | dlm << 8 | if level { 0b11 << 14 } else { 0 };
    Ok(IrOutcome::Remapped(RemappedMsi { address, data }))
}

/// Source validation (§9.10, SVT/SQ/SID fields of the IRTE).
fn source_id_ok(hi: u64, requester: u16) -> bool {
    let sid = hi as u16;
    match (hi >> 18) & 0b11 {
        0b00 => true,
        0b01 => {
            // SQ names the function-number bits that are not compared:
            // 01b ignores bit 2, 10b bits 2:1, 11b bits 2:0 (for devices
            // that send with several function numbers, e.g. HPET).
            let ignored: u16 = match (hi >> 16) & 0b11 {
                0b00 => 0,
                0b01 => 0b100,
                0b10 => 0b110,
                _ => 0b111,
            };
            (sid ^ requester) & !ignored == 0
        }
        // SVT 10b: the requester's bus must lie within [SID[15:8],
        // SID[7:0]] (start bus, end bus), e.g. behind a PCIe-to-PCI bridge.
        _ => {
            let bus = requester >> 8;
            (sid >> 8..=sid & 0xff).contains(&bus)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Mem = vm_memory::GuestMemoryMmap<()>;

    const IRT: u64 = 0x1000;
    const SID: u16 = 0x0308; // 03:01.0

    /// 256 entries at IRT, xAPIC mode.
    fn cfg() -> IrtConfig {
        IrtConfig::from_irta(IRT | 7)
    }

    fn mem() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// A present entry with vector 0x31, xAPIC destination 5, exact SID
    /// verification for `SID`.
    fn entry() -> (u64, u64) {
        (1 | 0x31 << 16 | 5 << 40, 1 << 18 | u64::from(SID))
    }

    fn put(mem: &Mem, cfg: &IrtConfig, index: u32, (lo, hi): (u64, u64)) {
        let irte = u128::from(lo) | u128::from(hi) << 64;
        mem.write_obj(irte.to_le(), GuestAddress(cfg.base + u64::from(index) * 16))
            .unwrap();
    }

    /// A remappable-format request for `handle` from `sid`, no subhandle.
    fn req_from(handle: u32, source_id: u16) -> MsiRequest {
        let h = u64::from(handle);
        let address = 0xfee0_0010 | (h & 0x7fff) << 5 | (h >> 15 & 1) << 2;
        MsiRequest {
            address,
            data: 0,
            source_id,
        }
    }

    fn req(handle: u32) -> MsiRequest {
        req_from(handle, SID)
    }

    fn run(mem: &Mem, cfg: &IrtConfig, req: &MsiRequest) -> Result<IrOutcome, IrFault> {
        remap(mem, cfg, false, req)
    }

    /// The fault as (reason, index, record).
    fn fault(r: Result<IrOutcome, IrFault>) -> (u8, u16, bool) {
        let f = r.unwrap_err();
        (f.reason, f.index, f.record)
    }

    fn remapped(r: Result<IrOutcome, IrFault>) -> RemappedMsi {
        match r.unwrap() {
            IrOutcome::Remapped(m) => m,
            o => panic!("unexpected {o:?}"),
        }
    }

    #[test]
    fn irta_decode() {
        let c = IrtConfig::from_irta(0x1234_5000 | 1 << 11 | 0xf);
        assert_eq!((c.base, c.entries, c.eim), (0x1234_5000, 65536, true));
        assert_eq!(IrtConfig::from_irta(0x7000).entries, 2);
    }

    #[test]
    fn xapic_delivery() {
        let (m, c) = (mem(), cfg());
        // Logical (DM), redirection hint, lowest priority (DLM 001), edge;
        // AVAIL bits 11:8 are software's and must not fault.
        let (lo, hi) = entry();
        put(&m, &c, 9, (lo | 1 << 2 | 1 << 3 | 1 << 5 | 0xf00, hi));
        let msi = remapped(run(&m, &c, &req(9)));
        assert_eq!((msi.address, msi.data), (0xfee0_500c, 0x0131));
    }

    #[test]
    fn x2apic_delivery() {
        let (m, c) = (mem(), IrtConfig { eim: true, ..cfg() });
        // Physical, fixed, level, 32-bit destination.
        put(&m, &c, 1, (1 | 1 << 4 | 0x40 << 16 | 0x0001_2345 << 32, 0));
        let msi = remapped(run(&m, &c, &req(1)));
        assert_eq!(msi.address, 0x0001_2300_0000_0000 | 0xfee4_5000);
        assert_eq!(msi.data, 0x40 | 1 << 14 | 1 << 15);
    }

    #[test]
    fn subhandle_and_handle_bit_15() {
        let (m, c) = (mem(), cfg());
        put(&m, &c, 0x13, entry());
        let mut r = req(0x10);
        r.data = 3; // ignored without SHV
        assert_eq!(fault(run(&m, &c, &r)).0, IrFault::NOT_PRESENT);
        r.address |= ADDR_SHV;
        assert_eq!(remapped(run(&m, &c, &r)).data, 0x31);
        // Data bits 31:16 are reserved when SHV is set.
        r.data |= 1 << 16;
        assert_eq!(
            fault(run(&m, &c, &r)),
            (IrFault::REQUEST_RESERVED, 0x10, true)
        );
        // Handle bit 15 comes from address bit 2.
        let big = IrtConfig::from_irta(IRT | 15);
        put(&m, &big, 0x8001, entry());
        assert!(run(&m, &big, &req(0x8001)).is_ok());
        assert_eq!(fault(run(&m, &big, &req(0x0001))).0, IrFault::NOT_PRESENT);
    }

    #[test]
    fn request_format() {
        let (m, c) = (mem(), cfg());
        put(&m, &c, 0, entry());
        for address in [0xfed0_0010, 0x1_fee0_0010] {
            let r = MsiRequest { address, ..req(0) };
            assert_eq!(fault(run(&m, &c, &r)).0, IrFault::REQUEST_RESERVED);
        }
        // Bits 1:0 are don't-care in remappable format.
        assert!(run(
            &m,
            &c,
            &MsiRequest {
                address: 0xfee0_0013,
                ..req(0)
            }
        )
        .is_ok());
        // Compatibility format passes only while CFIS is set.
        let r = MsiRequest {
            address: 0xfee0_1000,
            data: 0x30,
            source_id: SID,
        };
        assert_eq!(remap(&m, &c, true, &r), Ok(IrOutcome::Compatibility));
        assert_eq!(
            fault(remap(&m, &c, false, &r)),
            (IrFault::COMPAT_BLOCKED, 0, true)
        );
    }

    #[test]
    fn index_at_table_size() {
        let (m, c) = (mem(), cfg());
        put(&m, &c, 255, entry());
        assert!(run(&m, &c, &req(255)).is_ok());
        assert_eq!(
            fault(run(&m, &c, &req(256))),
            (IrFault::INDEX_OUT_OF_RANGE, 256, true)
        );
        // A subhandle can push the index past the table, too.
        let r = MsiRequest {
            address: req(250).address | ADDR_SHV,
            data: 6,
            source_id: SID,
        };
        assert_eq!(fault(run(&m, &c, &r)).0, IrFault::INDEX_OUT_OF_RANGE);
    }

    #[test]
    fn table_read_faults() {
        let (m, c) = (mem(), cfg());
        assert_eq!(fault(run(&m, &c, &req(4))), (IrFault::NOT_PRESENT, 4, true));
        // FPD is honoured even in a non-present entry.
        put(&m, &c, 4, (0b10, 0));
        assert_eq!(
            fault(run(&m, &c, &req(4))),
            (IrFault::NOT_PRESENT, 4, false)
        );
        let far = IrtConfig::from_irta(0x4000_0000 | 7);
        assert_eq!(
            fault(run(&m, &far, &req(3))),
            (IrFault::TABLE_UNREADABLE, 3, true)
        );
        // A table running off the end of RAM: the entries past it fault.
        let edge = IrtConfig::from_irta(0x1f_f000 | 15);
        assert_eq!(fault(run(&m, &edge, &req(255))).0, IrFault::NOT_PRESENT);
        assert_eq!(
            fault(run(&m, &edge, &req(256))).0,
            IrFault::TABLE_UNREADABLE
        );
    }

    #[test]
    fn reserved_bits_in_irte() {
        let (m, c) = (mem(), cfg());
        let (lo, hi) = entry();
        let bad = [
            (1 << 12, 0),
            (1 << 15, 0),
            (1 << 24, 0),
            (1 << 32, 0),
            (1 << 48, 0),
        ];
        for (l, h) in bad.into_iter().chain([(0, 1 << 20), (0, 3 << 18)]) {
            put(&m, &c, 2, (lo | l, hi | h));
            assert_eq!(
                fault(run(&m, &c, &req(2))),
                (IrFault::IRTE_RESERVED, 2, true)
            );
        }
        put(&m, &c, 2, (lo | 1 << 12 | 0b10, hi));
        assert_eq!(
            fault(run(&m, &c, &req(2))),
            (IrFault::IRTE_RESERVED, 2, false)
        );
        // Destination bits 39:32 and 63:48 exist in x2APIC mode.
        let x2 = IrtConfig { eim: true, ..c };
        put(&m, &x2, 2, (lo | 1 << 32 | 1 << 48, hi));
        assert!(run(&m, &x2, &req(2)).is_ok());
    }

    #[test]
    fn source_id_qualifier() {
        let (m, c) = (mem(), cfg());
        let (lo, hi) = entry();
        let check = |sq: u64, requester: u16| {
            put(&m, &c, 6, (lo, hi | sq << 16));
            run(&m, &c, &req_from(6, requester)).map_err(|f| f.reason)
        };
        assert!(check(0, SID).is_ok());
        assert_eq!(check(0, SID ^ 0b100), Err(IrFault::SOURCE_ID));
        assert!(check(1, SID ^ 0b100).is_ok());
        assert_eq!(check(1, SID ^ 0b010), Err(IrFault::SOURCE_ID));
        assert!(check(2, SID ^ 0b110).is_ok());
        assert_eq!(check(2, SID ^ 0b001), Err(IrFault::SOURCE_ID));
        assert!(check(3, SID ^ 0b111).is_ok());
        assert_eq!(check(3, SID ^ 0b1000), Err(IrFault::SOURCE_ID));
        // SVT 00b checks nothing.
        put(&m, &c, 6, (lo, 0));
        assert!(run(&m, &c, &req_from(6, 0xffff)).is_ok());
    }

    #[test]
    fn source_bus_range_and_fpd() {
        let (m, c) = (mem(), cfg());
        let (lo, _) = entry();
        // Buses 2..=4; the device/function part of the requester is free.
        put(&m, &c, 7, (lo, 2 << 18 | 0x0204));
        for (bus, ok) in [(1u16, false), (2, true), (3, true), (4, true), (5, false)] {
            assert_eq!(
                run(&m, &c, &req_from(7, bus << 8 | 0x3f)).is_ok(),
                ok,
                "bus {bus}"
            );
        }
        put(&m, &c, 7, (lo | 0b10, 2 << 18 | 0x0204));
        assert_eq!(
            fault(run(&m, &c, &req_from(7, 0x0100))),
            (IrFault::SOURCE_ID, 7, false)
        );
    }
}
