//! The virtio-blk device-specific config space and feature bits
//! (virtio 1.2 §5.2.3, §5.2.4).
//!
//! The config space is kept as the little-endian byte image of
//! `struct virtio_blk_config`, so transport reads of any width and alignment
//! are a plain copy. Field offsets come from the kernel-derived bindings
//! (`offset_of!`) rather than hand-written numbers. Only fields whose feature
//! bit is offered carry values; the rest stay zero, which is what a driver
//! that ignores them expects anyway.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};

use super::SECTOR_SIZE;
use crate::virtio::device::SharedConfig;

/// Size of the device-specific config space (all of `virtio_blk_config`).
pub const CONFIG_SPACE_SIZE: usize = size_of::<virtio_blk_config>();

/// The device feature bits of the block layer. VIRTIO_F_VERSION_1,
/// VIRTIO_F_ACCESS_PLATFORM and the ring features belong to the transport,
/// which ORs them in.
///
/// - `SEG_MAX`: the driver must respect `seg_max`, which bounds the chain
///   length and therefore per-request work.
/// - `BLK_SIZE`: advertises 512-byte logical blocks.
/// - `FLUSH`: the device has a volatile write cache (the host page cache),
///   so the driver must send FLUSH for durability; without it Linux would
///   assume writes are durable when they complete.
/// - `RO`: only for read-only disks; the driver then refuses writes itself.
pub fn device_features(read_only: bool) -> u64 {
    let mut features = (1u64 << VIRTIO_BLK_F_SEG_MAX)
        | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
        | (1u64 << VIRTIO_BLK_F_FLUSH);
    if read_only {
        features |= 1u64 << VIRTIO_BLK_F_RO;
    }
    features
}

/// The byte image of the config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
}

impl BlockConfig {
    /// `capacity` in 512-byte sectors; `seg_max` is the largest number of
    /// data segments per request the driver may use (the request layer
    /// accepts up to `MAX_DESCRIPTORS - 2`; `queue size - 2` is the usual
    /// choice so a request always fits in the ring).
    pub fn new(capacity: u64, seg_max: u32) -> Self {
        let mut config = BlockConfig {
            bytes: [0; CONFIG_SPACE_SIZE],
        };
        config.set_capacity(capacity);
        config.put(
            offset_of!(virtio_blk_config, seg_max),
            &seg_max.to_le_bytes(),
        );
        // SECTOR_SIZE is 512, which fits in u32.
        config.put(
            offset_of!(virtio_blk_config, blk_size),
            &(SECTOR_SIZE as u32).to_le_bytes(),
        );
        config
    }

    /// Updates the capacity (e.g. after a resize; the transport must then
    /// raise a config change interrupt).
    pub fn set_capacity(&mut self, capacity: u64) {
        self.put(
            offset_of!(virtio_blk_config, capacity),
            &capacity.to_le_bytes(),
        );
    }

    pub fn capacity(&self) -> u64 {
        let mut buf = [0u8; 8];
        self.read(offset_of!(virtio_blk_config, capacity) as u64, &mut buf);
        u64::from_le_bytes(buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Copies config space bytes starting at `offset` into `data`. Bytes
    /// beyond the end of the config space read as zero, so any offset and
    /// length from the guest is safe.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(src) = self.bytes.get(start..) else {
            return;
        };
        let n = src.len().min(data.len());
        if let (Some(dst), Some(src)) = (data.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
    }

    /// Writes are ignored: without VIRTIO_BLK_F_CONFIG_WCE every field is
    /// read-only for the driver (§5.2.5).
    pub fn write(&self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-blk: ignoring config write at {offset:#x} ({} bytes)",
            data.len()
        );
    }

    fn put(&mut self, offset: usize, value: &[u8]) {
        if let Some(dst) = self
            .bytes
            .get_mut(offset..)
            .and_then(|tail| tail.get_mut(..value.len()))
        {
            dst.copy_from_slice(value);
        }
    }
}

/// The config space never changes while the device runs (there is no
/// resize), so the transport can read it with no lock at all.
impl SharedConfig for BlockConfig {
    fn read(&self, offset: u64, data: &mut [u8]) {
        BlockConfig::read(self, offset, data)
    }

    fn write(&self, offset: u64, data: &[u8]) {
        BlockConfig::write(self, offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec() {
        // Offsets from virtio 1.2 §5.2.4.
        assert_eq!(offset_of!(virtio_blk_config, capacity), 0);
        assert_eq!(offset_of!(virtio_blk_config, seg_max), 12);
        assert_eq!(offset_of!(virtio_blk_config, blk_size), 20);
        let c = BlockConfig::new(0x1_0000_0001, 126);
        let b = c.as_bytes();
        assert_eq!(b[0..8], 0x1_0000_0001u64.to_le_bytes());
        assert_eq!(b[8..12], [0; 4]); // size_max: feature not offered
        assert_eq!(b[12..16], 126u32.to_le_bytes());
        assert_eq!(b[20..24], 512u32.to_le_bytes());
        assert_eq!(c.capacity(), 0x1_0000_0001);
    }

    #[test]
    fn reads_are_bounds_safe() {
        let c = BlockConfig::new(8, 1);
        let mut buf = [0xffu8; 4];
        c.read(u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
        let mut buf = [0xffu8; 4];
        c.read(CONFIG_SPACE_SIZE as u64 - 2, &mut buf);
        assert_eq!(buf, [0; 4]);
        let mut big = vec![0xffu8; CONFIG_SPACE_SIZE + 100];
        c.read(0, &mut big);
        assert_eq!(&big[..CONFIG_SPACE_SIZE], c.as_bytes());
        assert!(big[CONFIG_SPACE_SIZE..].iter().all(|&b| b == 0));
        let mut one = [0u8; 1];
        c.read(0, &mut one);
        assert_eq!(one, [8]);
        c.read(0, &mut []);
    }

    #[test]
    fn feature_bits() {
        let rw = device_features(false);
        assert_eq!(rw, (1 << 2) | (1 << 6) | (1 << 9));
        assert_eq!(device_features(true), rw | (1 << 5));
    }
}
