//! The remapping hardware unit's register file (VT-d spec §11.4).
//!
//! Registers live in one 4 KiB page of bytes with a per-byte write mask
//! and write-1-to-clear mask, so any access size at any offset does what
//! the spec says for each bit: read-only bits never change, RW1C bits clear
//! on 1, undefined offsets read as zero and ignore writes. Side effects
//! (commands, invalidations) are applied by the unit after the bytes land.

pub const REG_SIZE: usize = 0x1000;

pub const VER: usize = 0x00;
pub const CAP: usize = 0x08;
pub const ECAP: usize = 0x10;
pub const GCMD: usize = 0x18;
pub const GSTS: usize = 0x1c;
pub const RTADDR: usize = 0x20;
pub const CCMD: usize = 0x28;
pub const FSTS: usize = 0x34;
pub const FECTL: usize = 0x38;
pub const FEDATA: usize = 0x3c;
pub const FEADDR: usize = 0x40;
pub const FEUADDR: usize = 0x44;
pub const IQH: usize = 0x80;
pub const IQT: usize = 0x88;
pub const IQA: usize = 0x90;
pub const ICS: usize = 0x9c;
pub const IECTL: usize = 0xa0;
pub const IEDATA: usize = 0xa4;
pub const IEADDR: usize = 0xa8;
pub const IEUADDR: usize = 0xac;
pub const IQERCD: usize = 0xb0;
pub const IRTA: usize = 0xb8;
pub const PQH: usize = 0xc0;
pub const PQT: usize = 0xc8;
pub const PQA: usize = 0xd0;
pub const PRS: usize = 0xdc;
pub const PECTL: usize = 0xe0;
pub const PEDATA: usize = 0xe4;
pub const PEADDR: usize = 0xe8;
pub const PEUADDR: usize = 0xec;
/// IOTLB registers: Invalidate Address then IOTLB Invalidate (ECAP.IRO).
pub const IVA: usize = 0x200;
pub const IOTLB: usize = 0x208;
/// Fault recording registers (CAP.FRO), 16 bytes each.
pub const FRCD: usize = 0x220;
pub const NUM_FAULT_RECORDS: usize = 8;

// Global command/status bits (§11.4.4, §11.4.5).
pub const GCMD_TE: u32 = 1 << 31;
pub const GCMD_SRTP: u32 = 1 << 30;
pub const GCMD_SFL: u32 = 1 << 29;
pub const GCMD_EAFL: u32 = 1 << 28;
pub const GCMD_WBF: u32 = 1 << 27;
pub const GCMD_QIE: u32 = 1 << 26;
pub const GCMD_IRE: u32 = 1 << 25;
pub const GCMD_SIRTP: u32 = 1 << 24;
pub const GCMD_CFI: u32 = 1 << 23;
pub const GSTS_TES: u32 = 1 << 31;
pub const GSTS_RTPS: u32 = 1 << 30;
pub const GSTS_WBFS: u32 = 1 << 27;
pub const GSTS_QIES: u32 = 1 << 26;
pub const GSTS_IRES: u32 = 1 << 25;
pub const GSTS_IRTPS: u32 = 1 << 24;
pub const GSTS_CFIS: u32 = 1 << 23;

// Fault status bits (§11.4.6.1).
pub const FSTS_PFO: u32 = 1 << 0;
pub const FSTS_PPF: u32 = 1 << 1;
pub const FSTS_IQE: u32 = 1 << 4;
pub const FSTS_ICE: u32 = 1 << 5;
pub const FSTS_ITE: u32 = 1 << 6;
pub const FSTS_PRO: u32 = 1 << 7;

/// Interrupt mask / pending bits of FECTL, IECTL and PECTL.
pub const CTL_IM: u32 = 1 << 31;
pub const CTL_IP: u32 = 1 << 30;

pub const RTADDR_TTM_SHIFT: u64 = 10;
pub const CCMD_ICC: u64 = 1 << 63;
/// CAP.FL1GP: first-stage 1 GiB pages (§11.4.2).
pub const CAP_FL1GP: u64 = 1 << 56;
/// CAP.FL5LP: 5-level first-stage tables.
pub const CAP_FL5LP: u64 = 1 << 60;
/// ECAP.PRS: page requests (§11.4.3).
pub const ECAP_PRS: u64 = 1 << 29;
/// ECAP.PASID: requests with PASID are supported.
pub const ECAP_PASID: u64 = 1 << 40;
/// ECAP.PSS: PASID size supported, minus one (bits 39:35).
pub const ECAP_PSS_SHIFT: u32 = 35;
pub const ECAP_PSS_MASK: u64 = 0x1f;

/// The PASID width a unit's ECAP supports (0: no PASIDs).
pub fn ecap_pasid_bits(ecap: u64) -> u8 {
    if ecap & ECAP_PASID == 0 {
        0
    } else {
        ((ecap >> ECAP_PSS_SHIFT) & ECAP_PSS_MASK) as u8 + 1
    }
}
pub const IOTLB_IVT: u64 = 1 << 63;
pub const ICS_IWC: u32 = 1;
pub const PRS_PPR: u32 = 1;
pub const PRS_PRO: u32 = 1 << 1;

/// What the unit advertises; built from the command-line options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub aw_bits: u8,
    pub scalable: bool,
    pub first_stage: bool,
    pub caching_mode: bool,
    pub intremap: bool,
    pub pasid_bits: u8,
    pub device_tlb: bool,
    pub page_requests: bool,
    /// Nested translation offered (`offer-nesting=on`).
    pub nesting: bool,
    /// First-stage 1 GiB pages and 5-level tables (only with the first
    /// stage).
    pub fl1gp: bool,
    pub fl5lp: bool,
}

impl Features {
    /// SAGAW: which second-stage page-table depths are supported.
    pub fn sagaw(&self) -> u64 {
        match self.aw_bits {
            39 => 0b0010,
            48 => 0b0110,
            _ => 0b1110,
        }
    }

    /// The Capability Register (§11.4.2).
    pub fn cap(&self) -> u64 {
        let mut cap = 6u64; // ND: 16-bit domain IDs
        if self.caching_mode {
            cap |= 1 << 7;
        }
        cap |= self.sagaw() << 8;
        cap |= ((self.aw_bits as u64) - 1) << 16; // MGAW
        cap |= ((FRCD / 16) as u64) << 24; // FRO
        cap |= 0b11 << 34; // SLLPS: 2 MiB and 1 GiB second-stage pages
        cap |= 1 << 39; // PSI
        cap |= ((NUM_FAULT_RECORDS as u64) - 1) << 40; // NFR
        cap |= 18u64 << 48; // MAMV
        cap |= 1 << 54 | 1 << 55; // DWD, DRD
                                  // First-stage 1 GiB pages and 5-level tables: the first stage
                                  // uses the CPU's paging formats, and SVA needs them whenever the
                                  // guest CPU has them (Linux disables SVM otherwise).
        if self.scalable && self.fl1gp {
            cap |= CAP_FL1GP;
        }
        if self.scalable && self.fl5lp {
            cap |= CAP_FL5LP;
        }
        cap
    }

    /// The Extended Capability Register (§11.4.3).
    pub fn ecap(&self) -> u64 {
        let mut e = 1u64; // C: page walks are coherent
        e |= 1 << 1; // QI
        if self.device_tlb {
            e |= 1 << 2; // DT
        }
        if self.intremap {
            e |= 1 << 3 | 1 << 4; // IR, EIM
        }
        e |= 1 << 6; // PT
        e |= ((IVA / 16) as u64) << 8; // IRO: IVA, then IOTLB at +8
        e |= 0xf << 20; // MHMV
        if self.scalable {
            e |= 1 << 43; // SMTS
            e |= 1 << 46; // SLTS
            e |= 1 << 48; // SMPWC
            if self.first_stage {
                e |= 1 << 47; // FLTS
            }
            if self.nesting {
                // NEST: first stage through second stage. SRS: the walk
                // honours SRE/WPE, which a guest hypervisor's nested
                // entries may carry (Linux refuses SRE without SRS). EAFS
                // (the extended accessed flag) is not offered.
                e |= 1 << 26;
                e |= 1 << 31;
            }
            if self.pasid_bits > 0 {
                e |= ECAP_PASID;
                e |= ((self.pasid_bits as u64) - 1) << ECAP_PSS_SHIFT;
            }
            if self.page_requests {
                e |= ECAP_PRS | 1 << 42; // PRS, PDS
            }
        }
        e
    }
}

/// The register page: bytes plus per-byte write and write-1-to-clear masks.
pub struct RegFile {
    data: Box<[u8; REG_SIZE]>,
    wmask: Box<[u8; REG_SIZE]>,
    w1c: Box<[u8; REG_SIZE]>,
}

impl RegFile {
    pub fn new(f: &Features) -> Self {
        let mut r = RegFile {
            data: Box::new([0; REG_SIZE]),
            wmask: Box::new([0; REG_SIZE]),
            w1c: Box::new([0; REG_SIZE]),
        };
        r.set32(VER, 0x30);
        r.set64(CAP, f.cap());
        r.set64(ECAP, f.ecap());
        r.mask32(GCMD, 0xff80_0000);
        let ttm = if f.scalable { 0xc00 } else { 0 };
        r.mask64(RTADDR, !0xfffu64 | ttm);
        // CCMD: ICC, CIRG, FM, SID, DID (CAIG 60:59 is read-only).
        r.mask64(CCMD, 0xe000_0003_ffff_ffff);
        r.w1c32(FSTS, FSTS_PFO | FSTS_IQE | FSTS_ICE | FSTS_ITE | FSTS_PRO);
        r.mask32(FECTL, CTL_IM);
        r.set32(FECTL, CTL_IM);
        r.mask32(FEDATA, 0xffff_ffff);
        r.mask32(FEADDR, 0xffff_fffc);
        r.mask32(FEUADDR, 0xffff_ffff);
        r.mask64(IQT, 0x7fff0);
        let dw = if f.scalable { 1 << 11 } else { 0 };
        r.mask64(IQA, !0xfffu64 | dw | 0x7);
        r.w1c32(ICS, ICS_IWC);
        r.mask32(IECTL, CTL_IM);
        r.set32(IECTL, CTL_IM);
        r.mask32(IEDATA, 0xffff_ffff);
        r.mask32(IEADDR, 0xffff_fffc);
        r.mask32(IEUADDR, 0xffff_ffff);
        if f.intremap {
            r.mask64(IRTA, !0xfffu64 | (1 << 11) | 0xf);
        }
        if f.page_requests {
            r.mask64(PQH, 0x7ffe0);
            r.mask64(PQA, !0xfffu64 | 0x7);
            r.w1c32(PRS, PRS_PPR | PRS_PRO);
            r.mask32(PECTL, CTL_IM);
            r.set32(PECTL, CTL_IM);
            r.mask32(PEDATA, 0xffff_ffff);
            r.mask32(PEADDR, 0xffff_fffc);
            r.mask32(PEUADDR, 0xffff_ffff);
        }
        r.mask64(IVA, !0xfffu64 | 0x7f);
        // IOTLB: IVT, IIRG, DR, DW, DID (IAIG 58:57 read-only).
        r.mask64(IOTLB, 0xb003_ffff_0000_0000);
        for i in 0..NUM_FAULT_RECORDS {
            r.w1c[FRCD + i * 16 + 15] = 0x80;
        }
        r
    }

    fn mask32(&mut self, off: usize, m: u32) {
        self.wmask[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }
    fn mask64(&mut self, off: usize, m: u64) {
        self.wmask[off..off + 8].copy_from_slice(&m.to_le_bytes());
    }
    fn w1c32(&mut self, off: usize, m: u32) {
        self.w1c[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }

    pub fn get32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.data[off..off + 4]);
        u32::from_le_bytes(b)
    }
    pub fn get64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.data[off..off + 8]);
        u64::from_le_bytes(b)
    }
    /// Hardware-side store, ignoring the guest masks.
    pub fn set32(&mut self, off: usize, v: u32) {
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set64(&mut self, off: usize, v: u64) {
        self.data[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Guest read of any size at any offset; outside the page reads zero.
    pub fn read(&self, off: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = (off as usize)
                .checked_add(i)
                .and_then(|o| self.data.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Guest write: writable bits take the new value, RW1C bits clear on 1.
    pub fn write(&mut self, off: u64, bytes: &[u8]) {
        for (i, &v) in bytes.iter().enumerate() {
            let Some(o) = (off as usize).checked_add(i).filter(|&o| o < REG_SIZE) else {
                return;
            };
            let (wm, cm) = (self.wmask[o], self.w1c[o]);
            self.data[o] = (self.data[o] & !wm) | (v & wm);
            self.data[o] &= !(v & cm);
        }
    }
}

/// Whether a write of `len` bytes at `off` touches bytes `[reg, reg+size)`.
pub fn touches(off: u64, len: usize, reg: usize, size: usize) -> bool {
    let (s, e) = (off as u128, off as u128 + len as u128);
    s < (reg + size) as u128 && (reg as u128) < e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Features {
        Features {
            aw_bits: 48,
            scalable: true,
            first_stage: true,
            caching_mode: false,
            intremap: true,
            pasid_bits: 0,
            device_tlb: false,
            page_requests: false,
            nesting: false,
            fl1gp: true,
            fl5lp: true,
        }
    }

    #[test]
    fn capability_fields() {
        let f = features();
        let cap = f.cap();
        assert_eq!((cap >> 16) & 0x3f, 47, "MGAW");
        assert_eq!((cap >> 8) & 0x1f, 0b0110, "SAGAW 3/4-level");
        assert_eq!(((cap >> 24) & 0x3ff) * 16, FRCD as u64);
        assert_eq!(((cap >> 40) & 0xff) + 1, NUM_FAULT_RECORDS as u64);
        let ecap = f.ecap();
        assert_eq!(((ecap >> 8) & 0x3ff) * 16, IVA as u64);
        assert_ne!(ecap & (1 << 43), 0, "SMTS");
        assert_ne!(ecap & (1 << 47), 0, "FLTS");
        assert_eq!(ecap & (1 << 40), 0, "no PASID with pasid-bits 0");
        let cm = Features {
            caching_mode: true,
            ..f
        };
        assert_ne!(cm.cap() & (1 << 7), 0);
    }

    #[test]
    fn nesting_is_offered_only_on_request() {
        let f = features();
        assert_eq!(f.ecap() & (1 << 26 | 1 << 31), 0, "no NEST, no SRS");
        let n = Features { nesting: true, ..f };
        assert_ne!(n.ecap() & (1 << 26), 0, "NEST");
        assert_ne!(n.ecap() & (1 << 31), 0, "SRS");
        assert_eq!(n.ecap() & (1 << 34), 0, "no EAFS: not modelled");
        // Linux's nested_supported(): scalable mode and NEST; its
        // second-stage parent needs SLTS, its nested domains FLTS.
        for bit in [43, 46, 47] {
            assert_ne!(n.ecap() & (1 << bit), 0, "ECAP bit {bit}");
        }
    }

    #[test]
    fn read_only_and_rw1c_semantics() {
        let mut r = RegFile::new(&features());
        let cap = r.get64(CAP);
        r.write(CAP as u64, &[0xff; 8]);
        assert_eq!(r.get64(CAP), cap);
        r.set32(FSTS, FSTS_IQE | FSTS_PPF);
        r.write(FSTS as u64, &(FSTS_IQE | FSTS_PPF).to_le_bytes());
        assert_eq!(r.get32(FSTS), FSTS_PPF, "PPF is read-only, IQE is RW1C");
        r.write(FEADDR as u64, &0xfee0_1003u32.to_le_bytes());
        assert_eq!(r.get32(FEADDR), 0xfee0_1000);
        // Unaligned and oversized accesses stay inside the page.
        r.write(0xffe, &[1, 2, 3, 4]);
        let mut out = [0u8; 4];
        r.read(0xffe, &mut out);
        assert_eq!(out, [0; 4]);
        r.read(u64::MAX, &mut out);
    }
}
