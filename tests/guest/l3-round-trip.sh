#!/bin/sh
# Runs in the innermost guest of tests/tests/self_hosted.rs: an 8 MiB
# O_DIRECT round trip through the virtio-blk disk the inner VMM passed
# through (translated by this guest's intel-iommu).
echo "L3-USERSPACE-REACHED"
ls /sys/class/iommu/ 2>/dev/null | sed 's/^/L3-IOMMU-CLASS=/'
for g in /sys/kernel/iommu_groups/*/type; do [ -e "$g" ] && echo "L3-DOMAIN-TYPE=$(cat "$g")"; done
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
echo "L3-SRC-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)"
if dd if=/tmp/data of=/dev/vda bs=1M oflag=direct 2>/dev/null; then echo "L3-WRITE=ok"; else echo "L3-WRITE=failed"; fi
echo "L3-READ-SHA=$(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
