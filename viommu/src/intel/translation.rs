//! The translation of one request, from the root table to a page
//! (VT-d spec §3.4 legacy, §3.5 scalable mode), with the fault reason the
//! spec prescribes at each step.

use super::context::{self, ContextError, TranslationType};
use super::fault::{Fault, Reason};
use super::first_stage::{self, FlError, FlTable};
use super::iotlb::{CachedContext, Caches, NO_PASID};
use super::pasid::{self, PasidCaps, PasidError, Pgtt};
use super::root_table::{self, EntryError};
use super::second_stage::{self, Leaf, SlError, SlTable};
use crate::host::Stage1Table;
use crate::GuestMemoryMmap;

/// One DMA request as the unit sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub sid: u16,
    pub pasid: Option<u32>,
    pub iova: u64,
    pub write: bool,
    pub privileged: bool,
    /// An ATS Translation Request (the device caches the result); a
    /// failure goes back to the device instead of being recorded.
    pub translation_request: bool,
}

/// What a request resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Untranslated: translation disabled or pass-through.
    Identity,
    /// Through the tables of domain `did` (what the IOTLB entry is
    /// tagged with, so what an invalidation names); `hit` when served by
    /// the IOTLB.
    Page { leaf: Leaf, hit: bool, did: u16 },
}

/// The unit's configuration as it matters to a walk.
#[derive(Clone, Copy, Debug)]
pub struct WalkConfig {
    pub enabled: bool,
    pub rtaddr: u64,
    pub scalable_tables: bool,
    /// RTADDR.TTM is a reserved value.
    pub ttm_invalid: bool,
    pub haw: u8,
    pub mgaw: u8,
    pub sagaw: u64,
    pub pass_through: bool,
    pub device_tlb: bool,
    pub first_stage: bool,
    pub five_level_fs: bool,
    pub nested: bool,
    pub fl_1g: bool,
    pub rid_pasid_supported: bool,
}

struct Ctx<'a> {
    req: &'a Request,
    record: bool,
}

impl Ctx<'_> {
    fn fault(&self, reason: Reason) -> Fault {
        Fault {
            reason,
            source_id: self.req.sid,
            address: self.req.iova,
            write: self.req.write,
            pasid: self.req.pasid,
            privileged: self.req.privileged,
            record: self.record,
        }
    }
}

fn legacy_context(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    ctx: &mut Ctx,
) -> Result<CachedContext, Fault> {
    let sid = ctx.req.sid;
    if let Some(cached) = caches.context(sid) {
        return Ok(cached);
    }
    let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
    let ctp = root_table::context_table(mem, c.rtaddr, false, bus, devfn, c.haw).map_err(|e| {
        ctx.fault(match e {
            EntryError::Access => Reason::ROOT_TABLE_ACCESS,
            EntryError::NotPresent => Reason::ROOT_NOT_PRESENT,
            EntryError::Reserved => Reason::ROOT_RESERVED,
        })
    })?;
    let entry = context::legacy(
        mem,
        ctp,
        devfn,
        c.haw,
        c.sagaw,
        c.pass_through,
        c.device_tlb,
    )
    .map_err(|e| {
        ctx.fault(match e {
            ContextError::Entry(EntryError::Access) => Reason::CONTEXT_ACCESS,
            ContextError::Entry(EntryError::NotPresent) => Reason::CONTEXT_NOT_PRESENT,
            ContextError::Entry(EntryError::Reserved) => Reason::CONTEXT_RESERVED,
            ContextError::Invalid => Reason::CONTEXT_INVALID,
        })
    })?;
    let cached = CachedContext::Legacy(entry);
    caches.insert_context(sid, cached);
    Ok(cached)
}

fn scalable_context(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    ctx: &mut Ctx,
) -> Result<CachedContext, Fault> {
    let sid = ctx.req.sid;
    if let Some(cached) = caches.context(sid) {
        return Ok(cached);
    }
    let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
    let ctp = root_table::context_table(mem, c.rtaddr, true, bus, devfn, c.haw).map_err(|e| {
        ctx.fault(match e {
            EntryError::Access => Reason::SM_ROOT_ACCESS,
            EntryError::NotPresent => Reason::SM_ROOT_NOT_PRESENT,
            EntryError::Reserved => Reason::SM_ROOT_RESERVED,
        })
    })?;
    let entry = context::scalable(mem, ctp, devfn, c.haw).map_err(|e| {
        ctx.fault(match e {
            EntryError::Access => Reason::SM_CONTEXT_ACCESS,
            EntryError::NotPresent => Reason::SM_CONTEXT_NOT_PRESENT,
            EntryError::Reserved => Reason::SM_CONTEXT_RESERVED,
        })
    })?;
    let cached = CachedContext::Scalable(entry);
    caches.insert_context(sid, cached);
    Ok(cached)
}

fn sl_table(c: &WalkConfig, root: u64, levels: u8) -> SlTable {
    SlTable {
        root,
        levels,
        haw: c.haw,
        mgaw: c.mgaw,
        pages_2m: true,
        pages_1g: true,
    }
}

fn sl_reason_legacy(e: SlError, write: bool) -> Reason {
    match e {
        SlError::Access => Reason::SL_ENTRY_ACCESS,
        SlError::NotPresent if write => Reason::NO_WRITE,
        SlError::NotPresent => Reason::NO_READ,
        SlError::Reserved => Reason::SL_ENTRY_RESERVED,
        SlError::BeyondWidth => Reason::BEYOND_MGAW,
    }
}

fn sl_reason_scalable(e: SlError) -> Reason {
    match e {
        SlError::Access => Reason::SM_SL_ACCESS,
        SlError::NotPresent => Reason::SM_SL_PERMISSION,
        SlError::Reserved => Reason::SM_SL_RESERVED,
        SlError::BeyondWidth => Reason::SM_BEYOND_MAX,
    }
}

/// Resolves `req` to a page, walking and caching as needed.
pub fn resolve(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    req: &Request,
) -> Result<Resolved, Fault> {
    if !c.enabled {
        return Ok(Resolved::Identity);
    }
    let mut ctx = Ctx { req, record: true };
    if c.ttm_invalid {
        return Err(ctx.fault(Reason::SM_RTADDR_INVALID));
    }
    if !c.scalable_tables {
        if req.pasid.is_some() {
            return Err(ctx.fault(Reason::SM_TTM0_PASID));
        }
        let CachedContext::Legacy(lc) = legacy_context(mem, c, caches, &mut ctx)? else {
            return Err(ctx.fault(Reason::CONTEXT_INVALID));
        };
        ctx.record = !lc.fpd;
        if req.translation_request && !lc.device_tlb {
            return Err(ctx.fault(Reason::TT_BLOCKED));
        }
        let (levels, root) = match lc.tt {
            TranslationType::PassThrough => return Ok(Resolved::Identity),
            TranslationType::Translated { levels, slptptr } => (levels, slptptr),
        };
        let (leaf, hit) = match caches.lookup(lc.did, NO_PASID, req.iova) {
            Some(l) => (l, true),
            None => {
                let l = second_stage::walk(mem, &sl_table(c, root, levels), req.iova)
                    .map_err(|e| ctx.fault(sl_reason_legacy(e, req.write)))?;
                caches.insert(lc.did, NO_PASID, req.iova, l);
                (l, false)
            }
        };
        if req.write && !leaf.write {
            return Err(ctx.fault(Reason::NO_WRITE));
        }
        if !req.write && !leaf.read {
            return Err(ctx.fault(Reason::NO_READ));
        }
        return Ok(Resolved::Page {
            leaf,
            hit,
            did: lc.did,
        });
    }

    let CachedContext::Scalable(sc) = scalable_context(mem, c, caches, &mut ctx)? else {
        return Err(ctx.fault(Reason::SM_CONTEXT_INVALID));
    };
    ctx.record = !sc.fpd;
    if req.translation_request && !sc.dte {
        return Err(ctx.fault(Reason::SM_DTE_CLEAR));
    }
    let pasid = match req.pasid {
        Some(p) => {
            if !sc.pasid_enable {
                return Err(ctx.fault(Reason::SM_PASIDE_CLEAR));
            }
            p
        }
        None => {
            if sc.rid_pasid != 0 && !c.rid_pasid_supported {
                return Err(ctx.fault(Reason::SM_RID_PASID_ERROR));
            }
            sc.rid_pasid
        }
    };
    if pasid as u64 >= sc.pasid_dir_entries as u64 * 64 {
        return Err(ctx.fault(Reason::SM_PASID_TOO_LARGE));
    }
    let pe = pasid_entry(mem, c, caches, req.sid, sc.pasid_dir, pasid).map_err(|(e, fpd)| {
        if fpd {
            ctx.record = false;
        }
        ctx.fault(match e {
            PasidError::DirAccess => Reason::SM_PASID_DIR_ACCESS,
            PasidError::DirNotPresent => Reason::SM_PASID_DIR_NOT_PRESENT,
            PasidError::DirReserved => Reason::SM_PASID_DIR_RESERVED,
            PasidError::EntryAccess => Reason::SM_PASID_ENTRY_ACCESS,
            PasidError::EntryNotPresent => Reason::SM_PASID_ENTRY_NOT_PRESENT,
            PasidError::EntryReserved => Reason::SM_PASID_ENTRY_RESERVED,
            PasidError::Invalid => Reason::SM_PASID_ENTRY_INVALID,
        })
    })?;
    if pe.fpd {
        ctx.record = false;
    }
    if req.privileged && !pe.sre {
        return Err(ctx.fault(Reason::SM_SRE_CLEAR));
    }
    if pe.pgtt == Pgtt::PassThrough {
        return Ok(Resolved::Identity);
    }
    if let Some(leaf) = caches.lookup(pe.did, pasid, req.iova) {
        if !req.write || leaf.dirty {
            check_scalable_perms(&ctx, req, &pe, &leaf)?;
            return Ok(Resolved::Page {
                leaf,
                hit: true,
                did: pe.did,
            });
        }
    }
    let leaf = match pe.pgtt {
        Pgtt::SecondStage { levels, slptptr } => {
            second_stage::walk(mem, &sl_table(c, slptptr, levels), req.iova)
                .map_err(|e| ctx.fault(sl_reason_scalable(e)))?
        }
        Pgtt::FirstStage { levels, flptptr } => {
            let t = FlTable {
                root: flptptr,
                levels,
                haw: c.haw,
                pages_1g: c.fl_1g,
            };
            let ignore_rw = req.privileged && !pe.wpe;
            first_stage::walk_with(mem, &t, req.iova, req.write, ignore_rw, &mut |a| Ok(a))
                .map_err(|e| ctx.fault(fl_reason(e)))?
        }
        Pgtt::Nested {
            fl_levels,
            flptptr,
            sl_levels,
            slptptr,
        } => {
            let sl = sl_table(c, slptptr, sl_levels);
            let mut to_phys = |a: u64| second_stage::walk(mem, &sl, a).map(|l| l.translate(a));
            let t = FlTable {
                root: flptptr,
                levels: fl_levels,
                haw: c.haw,
                pages_1g: c.fl_1g,
            };
            let ignore_rw = req.privileged && !pe.wpe;
            let fl = first_stage::walk_with(mem, &t, req.iova, req.write, ignore_rw, &mut to_phys)
                .map_err(|e| ctx.fault(fl_reason(e)))?;
            let mid = fl.translate(req.iova);
            let sl_leaf =
                second_stage::walk(mem, &sl, mid).map_err(|e| ctx.fault(sl_reason_scalable(e)))?;
            // The combined page is the smaller of the two.
            let size_shift = fl.size_shift.min(sl_leaf.size_shift);
            let page_mask = !((1u64 << size_shift) - 1);
            Leaf {
                output: sl_leaf.translate(mid) & page_mask,
                size_shift,
                read: fl.read && sl_leaf.read,
                write: fl.write && sl_leaf.write,
                user: fl.user,
                dirty: fl.dirty,
            }
        }
        Pgtt::PassThrough => return Ok(Resolved::Identity),
    };
    caches.insert(pe.did, pasid, req.iova, leaf);
    check_scalable_perms(&ctx, req, &pe, &leaf)?;
    Ok(Resolved::Page {
        leaf,
        hit: false,
        did: pe.did,
    })
}

/// The PASID-table entry of (`sid`, `pasid`), from the PASID cache or the
/// guest's tables (then cached). Errors carry the entry's FPD, if read.
fn pasid_entry(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    sid: u16,
    pasid_dir: u64,
    pasid: u32,
) -> Result<pasid::PasidEntry, (PasidError, bool)> {
    if let Some(e) = caches.pasid(sid, pasid) {
        return Ok(e);
    }
    let caps = PasidCaps {
        haw: c.haw,
        sagaw: c.sagaw,
        first_stage: c.first_stage,
        five_level_first_stage: c.five_level_fs,
        nested: c.nested,
        pass_through: c.pass_through,
    };
    let e = pasid::lookup(mem, pasid_dir, pasid, &caps)?;
    caches.insert_pasid(sid, pasid, e);
    Ok(e)
}

fn fl_reason(e: FlError) -> Reason {
    match e {
        FlError::NonCanonical => Reason::SM_NON_CANONICAL,
        FlError::Access { .. } => Reason::SM_FL_ACCESS,
        // An entry that kept changing under the walk is one seen in
        // transition (see `FlError::Unstable`).
        FlError::NotPresent | FlError::Unstable => Reason::SM_FL_NOT_PRESENT,
        FlError::Reserved => Reason::SM_FL_RESERVED,
        FlError::Nested(SlError::BeyondWidth) => Reason::SM_NESTED_FL_BEYOND,
        FlError::Nested(e) => sl_reason_scalable(e),
    }
}

/// Final access checks in scalable mode (§3.6.1, §3.7.1).
fn check_scalable_perms(
    ctx: &Ctx,
    req: &Request,
    pe: &pasid::PasidEntry,
    leaf: &Leaf,
) -> Result<(), Fault> {
    let first_stage = matches!(pe.pgtt, Pgtt::FirstStage { .. } | Pgtt::Nested { .. });
    if first_stage && !req.privileged && !leaf.user {
        return Err(ctx.fault(Reason::SM_USER_PRIVILEGE));
    }
    // Supervisor writes ignore R/W unless write protection is enabled.
    let write_checked = !first_stage || !req.privileged || pe.wpe;
    if req.write && write_checked && !leaf.write {
        return Err(ctx.fault(Reason::SM_NO_WRITE));
    }
    if !req.write && !leaf.read {
        return Err(ctx.fault(Reason::SM_NO_READ));
    }
    Ok(())
}

/// What requests without PASID from one device go through, as far as a
/// host IOMMU that must reproduce it cares (passthrough devices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceDomain {
    /// Untranslated: translation disabled, or pass-through for the device.
    Identity,
    /// The guest's second-stage table, which a host without nesting can
    /// shadow (domain `did`).
    SecondStage { did: u16, table: SlTable },
    /// First-stage tables for RID_PASID: a host with nesting installs them
    /// as a nested table; a host without cannot follow them (no
    /// invalidation announces a first-stage map).
    FirstStage { did: u16, table: Stage1Table },
    /// Nested tables for RID_PASID (the guest is a hypervisor itself): no
    /// host here nests a third stage.
    Nested { did: u16 },
    /// No valid root, context or PASID entry: every request faults.
    Blocked,
}

/// Resolves the domain of requester `sid` without recording faults (the
/// device's own requests will fault, and be recorded, when they happen).
pub fn device_domain(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    sid: u16,
) -> DeviceDomain {
    domain_of(mem, c, caches, sid, None)
}

/// [`device_domain`] for requests of `sid` with PASID `pasid`: the PASID
/// entry's tables, or blocked where the requests would fault (legacy
/// mode, PASIDs disabled in the context entry, no such entry).
pub fn pasid_domain(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    sid: u16,
    pasid: u32,
) -> DeviceDomain {
    domain_of(mem, c, caches, sid, Some(pasid))
}

fn domain_of(
    mem: &GuestMemoryMmap,
    c: &WalkConfig,
    caches: &mut Caches,
    sid: u16,
    with_pasid: Option<u32>,
) -> DeviceDomain {
    if !c.enabled {
        return DeviceDomain::Identity;
    }
    if c.ttm_invalid {
        return DeviceDomain::Blocked;
    }
    let req = Request {
        sid,
        pasid: with_pasid,
        iova: 0,
        write: false,
        privileged: false,
        translation_request: false,
    };
    let mut ctx = Ctx {
        req: &req,
        record: false,
    };
    if !c.scalable_tables {
        if with_pasid.is_some() {
            return DeviceDomain::Blocked;
        }
        return match legacy_context(mem, c, caches, &mut ctx) {
            Ok(CachedContext::Legacy(lc)) => match lc.tt {
                TranslationType::PassThrough => DeviceDomain::Identity,
                TranslationType::Translated { levels, slptptr } => DeviceDomain::SecondStage {
                    did: lc.did,
                    table: sl_table(c, slptptr, levels),
                },
            },
            _ => DeviceDomain::Blocked,
        };
    }
    let Ok(CachedContext::Scalable(sc)) = scalable_context(mem, c, caches, &mut ctx) else {
        return DeviceDomain::Blocked;
    };
    let pasid = match with_pasid {
        Some(p) if sc.pasid_enable => p,
        Some(_) => return DeviceDomain::Blocked,
        None if sc.rid_pasid != 0 && !c.rid_pasid_supported => return DeviceDomain::Blocked,
        None => sc.rid_pasid,
    };
    if pasid as u64 >= sc.pasid_dir_entries as u64 * 64 {
        return DeviceDomain::Blocked;
    }
    let Ok(pe) = pasid_entry(mem, c, caches, sid, sc.pasid_dir, pasid) else {
        return DeviceDomain::Blocked;
    };
    match pe.pgtt {
        Pgtt::PassThrough => DeviceDomain::Identity,
        Pgtt::SecondStage { levels, slptptr } => DeviceDomain::SecondStage {
            did: pe.did,
            table: sl_table(c, slptptr, levels),
        },
        Pgtt::FirstStage { levels, flptptr } => DeviceDomain::FirstStage {
            did: pe.did,
            table: Stage1Table::VtdFirstStage {
                pgtbl_addr: flptptr,
                addr_width: if levels == 5 { 57 } else { 48 },
                sre: pe.sre,
                wpe: pe.wpe,
            },
        },
        Pgtt::Nested { .. } => DeviceDomain::Nested { did: pe.did },
    }
}
