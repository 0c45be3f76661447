//! Fault reasons (VT-d spec §7.1.3, Table "Unsuccessful Translated/
//! Untranslated Requests") and primary fault recording (§7.2.1, §11.4.14).
//!
//! The log of fault records is plain data; the `impl IntelIommu` block at
//! the end is the unit's side: reporting a fault, mirroring the log into
//! the fault recording registers and FSTS, and the fault status rules
//! that decide when a fault event fires.

use std::sync::atomic::Ordering::Relaxed;

use super::regs::{
    FRCD, FSTS, FSTS_ICE, FSTS_IQE, FSTS_ITE, FSTS_PFO, FSTS_PPF, NUM_FAULT_RECORDS,
};
use super::unit::{IntelIommu, State};

/// A fault reason code as written to a fault recording register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason(pub u8);

impl Reason {
    // Legacy mode.
    pub const ROOT_NOT_PRESENT: Reason = Reason(0x1);
    pub const CONTEXT_NOT_PRESENT: Reason = Reason(0x2);
    pub const CONTEXT_INVALID: Reason = Reason(0x3);
    pub const BEYOND_MGAW: Reason = Reason(0x4);
    pub const NO_WRITE: Reason = Reason(0x5);
    pub const NO_READ: Reason = Reason(0x6);
    pub const SL_ENTRY_ACCESS: Reason = Reason(0x7);
    pub const ROOT_TABLE_ACCESS: Reason = Reason(0x8);
    pub const CONTEXT_ACCESS: Reason = Reason(0x9);
    pub const ROOT_RESERVED: Reason = Reason(0xa);
    pub const CONTEXT_RESERVED: Reason = Reason(0xb);
    pub const SL_ENTRY_RESERVED: Reason = Reason(0xc);
    pub const TT_BLOCKED: Reason = Reason(0xd);
    // Interrupt remapping.
    pub const IR_REQ_RESERVED: Reason = Reason(0x20);
    pub const IR_INDEX_OVER: Reason = Reason(0x21);
    pub const IR_NOT_PRESENT: Reason = Reason(0x22);
    pub const IR_TABLE_ACCESS: Reason = Reason(0x23);
    pub const IR_ENTRY_RESERVED: Reason = Reason(0x24);
    pub const IR_COMPAT_BLOCKED: Reason = Reason(0x25);
    pub const IR_SID_MISMATCH: Reason = Reason(0x26);
    // Scalable mode.
    pub const SM_RTADDR_INVALID: Reason = Reason(0x30);
    pub const SM_TTM0_PASID: Reason = Reason(0x31);
    pub const SM_ROOT_ACCESS: Reason = Reason(0x38);
    pub const SM_ROOT_NOT_PRESENT: Reason = Reason(0x39);
    pub const SM_ROOT_RESERVED: Reason = Reason(0x3a);
    pub const SM_CONTEXT_ACCESS: Reason = Reason(0x40);
    pub const SM_CONTEXT_NOT_PRESENT: Reason = Reason(0x41);
    pub const SM_CONTEXT_RESERVED: Reason = Reason(0x42);
    pub const SM_CONTEXT_INVALID: Reason = Reason(0x43);
    pub const SM_DTE_CLEAR: Reason = Reason(0x44);
    pub const SM_PASIDE_CLEAR: Reason = Reason(0x45);
    pub const SM_PASID_TOO_LARGE: Reason = Reason(0x46);
    pub const SM_PRE_CLEAR: Reason = Reason(0x47);
    pub const SM_RID_PASID_ERROR: Reason = Reason(0x48);
    pub const SM_PASID_DIR_ACCESS: Reason = Reason(0x50);
    pub const SM_PASID_DIR_NOT_PRESENT: Reason = Reason(0x51);
    pub const SM_PASID_DIR_RESERVED: Reason = Reason(0x52);
    pub const SM_PASID_ENTRY_ACCESS: Reason = Reason(0x58);
    pub const SM_PASID_ENTRY_NOT_PRESENT: Reason = Reason(0x59);
    pub const SM_PASID_ENTRY_RESERVED: Reason = Reason(0x5a);
    pub const SM_PASID_ENTRY_INVALID: Reason = Reason(0x5b);
    pub const SM_SRE_CLEAR: Reason = Reason(0x5d);
    pub const SM_FL_ACCESS: Reason = Reason(0x70);
    pub const SM_FL_NOT_PRESENT: Reason = Reason(0x71);
    pub const SM_FL_RESERVED: Reason = Reason(0x72);
    pub const SM_NESTED_FL_PML4_ACCESS: Reason = Reason(0x73);
    pub const SM_NESTED_FL_BEYOND: Reason = Reason(0x74);
    pub const SM_SL_ACCESS: Reason = Reason(0x78);
    pub const SM_SL_PERMISSION: Reason = Reason(0x79);
    pub const SM_SL_RESERVED: Reason = Reason(0x7a);
    pub const SM_SL_PTR_INVALID: Reason = Reason(0x7b);
    pub const SM_NON_CANONICAL: Reason = Reason(0x80);
    pub const SM_USER_PRIVILEGE: Reason = Reason(0x81);
    pub const SM_NO_EXECUTE: Reason = Reason(0x82);
    pub const SM_BEYOND_MAX: Reason = Reason(0x83);
    pub const SM_SL_OUTPUT_BEYOND: Reason = Reason(0x84);
    pub const SM_NO_WRITE: Reason = Reason(0x85);
    pub const SM_NO_READ: Reason = Reason(0x86);
    pub const SM_INTERRUPT_ADDRESS: Reason = Reason(0x87);
}

/// A translation fault, before recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub reason: Reason,
    pub source_id: u16,
    /// Faulting address (page-aligned on record) or, for interrupt
    /// remapping faults, the interrupt index in bits 63:48.
    pub address: u64,
    pub write: bool,
    pub pasid: Option<u32>,
    pub privileged: bool,
    /// False when a Fault Processing Disable bit on the path says not to
    /// record it (§7.1.2).
    pub record: bool,
}

/// One 128-bit fault recording register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRecord {
    pub lo: u64,
    pub hi: u64,
}

const FRCD_F: u64 = 1 << 63;

impl FaultRecord {
    /// Encodes a fault (§11.4.14): FI in 63:12, SID in 79:64, PP bit 95,
    /// PRIV 93, FR in 103:96, PV in 123:104, T 126 (1 = read), F 127.
    pub fn encode(f: &Fault) -> Self {
        let lo = f.address & !0xfff;
        let mut hi = f.source_id as u64;
        if let Some(p) = f.pasid {
            hi |= 1 << 31;
            hi |= ((p as u64) & 0xf_ffff) << 40;
        }
        hi |= (f.reason.0 as u64) << 32;
        if f.privileged {
            hi |= 1 << 29; // PRIV, bit 93
        }
        if !f.write {
            hi |= 1 << 62;
        }
        hi |= FRCD_F;
        FaultRecord { lo, hi }
    }

    pub fn pending(&self) -> bool {
        self.hi & FRCD_F != 0
    }
}

/// The ring of primary fault recording registers and its overflow rule:
/// a fault is recorded at the next index if that record is free;
/// otherwise Primary Fault Overflow is set and the fault is dropped.
#[derive(Debug)]
pub struct FaultLog {
    pub records: [FaultRecord; super::regs::NUM_FAULT_RECORDS],
    next: usize,
}

impl Default for FaultLog {
    fn default() -> Self {
        FaultLog {
            records: [FaultRecord::default(); super::regs::NUM_FAULT_RECORDS],
            next: 0,
        }
    }
}

/// What recording did to the fault status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored at this index.
    At(usize),
    /// No free record: overflow.
    Overflow,
}

impl FaultLog {
    pub fn record(&mut self, f: &Fault) -> Recorded {
        let i = self.next;
        if self.records[i].pending() {
            return Recorded::Overflow;
        }
        self.records[i] = FaultRecord::encode(f);
        self.next = (i + 1) % self.records.len();
        Recorded::At(i)
    }

    /// Index of the first pending record at or after the oldest, if any.
    pub fn first_pending(&self) -> Option<usize> {
        let n = self.records.len();
        (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.records[i].pending())
    }

    pub fn clear(&mut self) {
        *self = FaultLog::default();
    }
}

// --- fault status and recording registers (§7.2, §11.4.7) ---

impl IntelIommu {
    /// Status bits whose presence means a new one is not a new interrupt
    /// condition (§11.4.7.1).
    pub(super) const FSTS_PENDING: u32 = FSTS_PFO | FSTS_PPF | FSTS_IQE | FSTS_ICE | FSTS_ITE;

    /// Sets a fault status bit; the fault event fires only when no status
    /// was already pending.
    pub(super) fn fault_status(st: &mut State, bit: u32) {
        let fsts = st.regs.get32(FSTS);
        st.regs.set32(FSTS, fsts | bit);
        if fsts & Self::FSTS_PENDING == 0 {
            Self::fault_event(st);
        }
    }

    /// Mirrors the fault log into the registers and FSTS.PPF/FRI.
    fn publish_faults(st: &mut State) {
        for i in 0..NUM_FAULT_RECORDS {
            let r = st.faults.records[i];
            st.regs.set64(FRCD + i * 16, r.lo);
            st.regs.set64(FRCD + i * 16 + 8, r.hi);
        }
        let mut fsts = st.regs.get32(FSTS) & !(FSTS_PPF | 0xff00);
        if let Some(i) = st.faults.first_pending() {
            fsts |= FSTS_PPF | ((i as u32) << 8);
        }
        st.regs.set32(FSTS, fsts);
    }

    /// Software cleared F bits: take the registers as the truth.
    pub(super) fn sync_fault_records_from_regs(&self, st: &mut State) {
        for i in 0..NUM_FAULT_RECORDS {
            if st.regs.get64(FRCD + i * 16 + 8) & (1 << 63) == 0 {
                st.faults.records[i].hi &= !(1 << 63);
            }
        }
        Self::publish_faults(st);
    }

    /// Counts a fault and records it (§7.2.1) unless recording is
    /// disabled for it or the log overflowed (PFO stays until software
    /// clears it).
    pub(super) fn report(&self, st: &mut State, f: &Fault) {
        self.counters.bump_fault(f.reason);
        if !f.record {
            return;
        }
        let fsts = st.regs.get32(FSTS);
        if fsts & FSTS_PFO != 0 {
            return;
        }
        match st.faults.record(f) {
            Recorded::At(_) => {
                self.counters.faults_recorded.fetch_add(1, Relaxed);
                Self::publish_faults(st);
                if fsts & Self::FSTS_PENDING == 0 {
                    Self::fault_event(st);
                }
            }
            // Overflow is not an interrupt condition of its own.
            Recorded::Overflow => st.regs.set32(FSTS, fsts | FSTS_PFO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(reason: u8) -> Fault {
        Fault {
            reason: Reason(reason),
            source_id: 0x0008,
            address: 0x1234_5678,
            write: true,
            pasid: None,
            privileged: false,
            record: true,
        }
    }

    #[test]
    fn record_layout_matches_linux_decoding() {
        let r = FaultRecord::encode(&Fault {
            pasid: Some(0x12345),
            write: false,
            ..fault(0x59)
        });
        let dw2 = (r.hi & 0xffff_ffff) as u32;
        let dw3 = (r.hi >> 32) as u32;
        assert_eq!(r.lo, 0x1234_5000);
        assert_eq!(dw2 & 0xffff, 0x0008);
        assert_eq!(dw2 >> 31, 1, "PASID present");
        assert_eq!(dw3 & 0xff, 0x59);
        assert_eq!((dw3 >> 8) & 0xfffff, 0x12345);
        assert_eq!((dw3 >> 30) & 1, 1, "read");
        assert_eq!(dw3 >> 31, 1, "F");
    }

    #[test]
    fn overflow_when_ring_is_full() {
        let mut log = FaultLog::default();
        for i in 0..super::super::regs::NUM_FAULT_RECORDS {
            assert_eq!(log.record(&fault(5)), Recorded::At(i));
        }
        assert_eq!(log.record(&fault(6)), Recorded::Overflow);
        assert_eq!(log.first_pending(), Some(0));
        log.records[0].hi = 0;
        assert_eq!(log.first_pending(), Some(1));
        assert_eq!(log.record(&fault(6)), Recorded::At(0));
    }
}
