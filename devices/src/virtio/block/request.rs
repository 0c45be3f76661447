//! Parsing a virtio-blk descriptor chain into a [`Request`].
//!
//! A request is (virtio 1.2 §5.2.6) a 16-byte header `{ type: le32, reserved:
//! le32, sector: le64 }` in device-readable memory, then the data (readable
//! for writes, writable for reads and GET_ID), then one device-writable status
//! byte. Since virtio 1.0 the device must not depend on how the driver splits
//! that byte stream into descriptors (§2.7.4), so the parser treats the chain
//! as "readable bytes, then writable bytes": the header is the first 16
//! readable bytes (even if split over descriptors), the status is the last
//! writable byte, and everything in between is data. Linux uses the obvious
//! layout (header | data... | status), which is the fast path anyway.
//!
//! Everything here comes from the guest, so every length and address is
//! handled with checked arithmetic and every failure is a typed
//! [`RequestError`]. When the chain is bad but a status byte can still be
//! located, [`ParseError::status_addr`] says where, so the device can report
//! `VIRTIO_BLK_S_IOERR` instead of giving up on the whole device.

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{SECTOR_SHIFT, SECTOR_SIZE};

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: usize = 16;

/// The longest chain accepted. Linux never sends more than `seg_max + 2`
/// descriptors; the bound keeps the per-request work (and the iovec array
/// handed to the kernel) small whatever a malicious driver builds.
pub const MAX_DESCRIPTORS: usize = 1024;

/// The request types this device understands (virtio 1.2 §5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read from the disk into device-writable buffers.
    In,
    /// Write device-readable buffers to the disk.
    Out,
    /// Make previous writes durable.
    Flush,
    /// Return the 20-byte device identifier.
    GetId,
    /// Anything else (discard, write zeroes, ...): answered with UNSUPP.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// Why a chain is not a valid virtio-blk request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain has {0} descriptor(s), a request needs at least 2")]
    ChainTooShort(usize),
    #[error("descriptor chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("first descriptor is device-writable, expected the request header")]
    HeaderWriteOnly,
    #[error("request header needs {HEADER_LEN} device-readable bytes, chain has {0}")]
    HeaderTooShort(u64),
    #[error("last descriptor is not device-writable, it cannot hold the status")]
    StatusNotWritable,
    #[error("status descriptor has length 0")]
    StatusTooShort,
    #[error("descriptor {index} has the wrong direction for a {kind:?} request")]
    WrongDirection { index: usize, kind: RequestType },
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedLength(u64),
    #[error("sector {0} does not fit in a 64-bit byte offset")]
    SectorOverflow(u64),
    #[error("sectors {sector}..+{sectors} are beyond the end of the disk ({capacity} sectors)")]
    BeyondEndOfDisk {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("guest memory {addr:#x} (+{len}) cannot be accessed: {reason}")]
    DmaFault { addr: u64, len: u64, reason: String },
}

/// A malformed chain, and where its status byte is if one could be found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed virtio-blk request: {error}")]
pub struct ParseError {
    pub error: RequestError,
    /// The address of the status byte, if the chain ends in a usable
    /// device-writable descriptor. `None` means nothing can be reported to
    /// the driver for this chain.
    pub status_addr: Option<GuestAddress>,
}

/// One parsed request. Data segments are `(guest address, length)` in chain
/// order and never empty; with an IOMMU the addresses are IOVAs. They are
/// not checked for accessibility here: the executor translates them exactly
/// once, when it does the I/O, and reports a fault as `IOERR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    /// First sector (512 bytes) for IN/OUT; meaningless for other types.
    pub sector: u64,
    /// Device-writable segments for IN/GET_ID, device-readable for OUT,
    /// empty for FLUSH and unsupported types.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the one-byte status goes.
    pub status_addr: GuestAddress,
}

impl Request {
    /// Parses the chain the queue handed out, using the chain's own memory
    /// object for the header read. The chain is consumed as an iterator but
    /// left usable for `head_index()` and `memory()`.
    ///
    /// `capacity` is the disk size in 512-byte sectors, used to reject I/O
    /// beyond the end of the disk.
    pub fn parse<M>(chain: &mut DescriptorChain<M>, capacity: u64) -> Result<Self, ParseError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        // Walk the whole chain (virtio-queue bounds its length) so that the
        // real last descriptor - the status - is known even when the chain is
        // too long to accept; keep at most MAX_DESCRIPTORS + 1 of them.
        let mut descs = Vec::new();
        let mut count = 0usize;
        let mut last = None;
        for desc in chain.by_ref() {
            count = count.saturating_add(1);
            if descs.len() <= MAX_DESCRIPTORS {
                descs.push(desc);
            }
            last = Some(desc);
        }
        parse_descriptors(chain.memory(), &descs, count, last, capacity)
    }

    /// Parses an already collected list of descriptors (in chain order).
    pub fn from_descriptors<M: GuestMemory + ?Sized>(
        mem: &M,
        descs: &[Descriptor],
        capacity: u64,
    ) -> Result<Self, ParseError> {
        parse_descriptors(mem, descs, descs.len(), descs.last().copied(), capacity)
    }

    /// Total data length in bytes.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// For IN/OUT: checks that the data is whole sectors and lies inside a
    /// disk of `capacity` sectors, and returns the byte offset of the
    /// transfer. The executor calls this again, so a hand-built `Request`
    /// cannot bypass it.
    pub fn disk_offset(&self, capacity: u64) -> Result<u64, RequestError> {
        let len = self.data_len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::UnalignedLength(len));
        }
        let sectors = len >> SECTOR_SHIFT;
        let offset = self
            .sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(RequestError::SectorOverflow(self.sector))?;
        let end = self
            .sector
            .checked_add(sectors)
            .ok_or(RequestError::SectorOverflow(self.sector))?;
        if end > capacity {
            return Err(RequestError::BeyondEndOfDisk {
                sector: self.sector,
                sectors,
                capacity,
            });
        }
        Ok(offset)
    }
}

/// A segment of the chain's byte stream, remembering which descriptor it came
/// from so errors can point at it.
#[derive(Clone, Copy)]
struct Segment {
    index: usize,
    addr: GuestAddress,
    len: u32,
}

fn fault(addr: GuestAddress, len: u64, reason: impl ToString) -> RequestError {
    RequestError::DmaFault {
        addr: addr.0,
        len,
        reason: reason.to_string(),
    }
}

/// Finds the status byte: the last byte of the last descriptor, which must
/// be device-writable.
fn locate_status(last: Option<Descriptor>) -> Result<GuestAddress, RequestError> {
    let last = last.ok_or(RequestError::ChainTooShort(0))?;
    if !last.is_write_only() {
        return Err(RequestError::StatusNotWritable);
    }
    let offset = last
        .len()
        .checked_sub(1)
        .ok_or(RequestError::StatusTooShort)?;
    last.addr()
        .0
        .checked_add(u64::from(offset))
        .map(GuestAddress)
        .ok_or_else(|| fault(last.addr(), u64::from(last.len()), "address overflow"))
}

fn parse_descriptors<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    count: usize,
    last: Option<Descriptor>,
    capacity: u64,
) -> Result<Request, ParseError> {
    let status_addr = locate_status(last).map_err(|error| ParseError {
        error,
        status_addr: None,
    })?;
    parse_body(mem, descs, count, status_addr, capacity).map_err(|error| ParseError {
        error,
        status_addr: Some(status_addr),
    })
}

/// Everything after the status byte has been found; errors from here on can
/// be reported to the driver through it.
fn parse_body<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    count: usize,
    status_addr: GuestAddress,
    capacity: u64,
) -> Result<Request, RequestError> {
    if count > MAX_DESCRIPTORS || descs.len() > MAX_DESCRIPTORS {
        return Err(RequestError::TooManyDescriptors);
    }
    if count < 2 || descs.len() < 2 {
        return Err(RequestError::ChainTooShort(count));
    }
    if descs.first().is_some_and(|d| d.is_write_only()) {
        return Err(RequestError::HeaderWriteOnly);
    }

    // Readable descriptors first, then writable ones (§2.7.4.2).
    let split = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);

    let (header, readable_data) = read_header(mem, readable)?;
    let kind = RequestType::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);

    if let Some(pos) = writable.iter().position(|d| !d.is_write_only()) {
        return Err(RequestError::WrongDirection {
            index: split.saturating_add(pos),
            kind,
        });
    }

    // Writable data: every writable descriptor, minus the status byte at the
    // very end (the last descriptor is writable and non-empty, checked by
    // locate_status, so this never underflows).
    let mut writable_data = Vec::with_capacity(writable.len());
    let last_index = writable.len().saturating_sub(1);
    for (i, d) in writable.iter().enumerate() {
        let len = if i == last_index {
            d.len().saturating_sub(1)
        } else {
            d.len()
        };
        if len > 0 {
            writable_data.push(Segment {
                index: split.saturating_add(i),
                addr: d.addr(),
                len,
            });
        }
    }

    let wrong = |seg: Option<&Segment>| -> Result<(), RequestError> {
        match seg {
            Some(s) => Err(RequestError::WrongDirection {
                index: s.index,
                kind,
            }),
            None => Ok(()),
        }
    };
    let data = match kind {
        RequestType::In | RequestType::GetId => {
            wrong(readable_data.first())?;
            writable_data
        }
        RequestType::Out => {
            wrong(writable_data.first())?;
            readable_data
        }
        // FLUSH carries no data and an unknown type's layout is unknown:
        // ignore whatever is there, only the status byte matters.
        RequestType::Flush | RequestType::Unsupported(_) => Vec::new(),
    };

    let request = Request {
        kind,
        sector,
        data: data.into_iter().map(|s| (s.addr, s.len)).collect(),
        status_addr,
    };
    if matches!(kind, RequestType::In | RequestType::Out) {
        request.disk_offset(capacity)?;
    }
    Ok(request)
}

/// Reads the header from the first `HEADER_LEN` readable bytes and returns it
/// with the readable bytes that follow it (OUT data).
fn read_header<M: GuestMemory + ?Sized>(
    mem: &M,
    readable: &[Descriptor],
) -> Result<([u8; HEADER_LEN], Vec<Segment>), RequestError> {
    let total: u64 = readable.iter().map(|d| u64::from(d.len())).sum();
    if total < HEADER_LEN as u64 {
        return Err(RequestError::HeaderTooShort(total));
    }

    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0usize;
    let mut rest = Vec::with_capacity(readable.len());
    for (index, d) in readable.iter().enumerate() {
        let len = d.len() as usize;
        let take = len.min(HEADER_LEN.saturating_sub(filled));
        if take > 0 {
            let dst = header
                .get_mut(filled..filled.saturating_add(take))
                .ok_or(RequestError::HeaderTooShort(total))?;
            mem.read_slice(dst, d.addr())
                .map_err(|e| fault(d.addr(), take as u64, e))?;
            filled = filled.saturating_add(take);
        }
        if take < len {
            // `take` < len <= u32::MAX, so the conversions cannot fail; the
            // address addition can, for a descriptor at the top of the space.
            let skip = take as u64;
            let addr = d
                .addr()
                .0
                .checked_add(skip)
                .map(GuestAddress)
                .ok_or_else(|| fault(d.addr(), u64::from(d.len()), "address overflow"))?;
            let len = d.len().saturating_sub(take as u32);
            rest.push(Segment { index, addr, len });
        }
    }
    Ok((header, rest))
}
