#!/bin/sh
# Runs in the innermost guest of benches/nesting.rs: a sequential 64 MiB
# O_DIRECT read from the passed-through virtio-blk disk, after a warm-up
# pass, timed with /proc/uptime (busybox dd prints no timing). The mode of
# the guest's IOMMU DMA domain (DMA: strict, DMA-FQ: lazy) is printed.
echo "L3-USERSPACE-REACHED"
ls /sys/class/iommu/ 2>/dev/null | sed 's/^/L3-IOMMU-CLASS=/'
for g in /sys/kernel/iommu_groups/*/type; do [ -e "$g" ] && echo "L3-DOMAIN-TYPE=$(cat "$g")"; done
dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
for i in 1; do
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "BENCH-READ bytes=67108864 seconds=$(awk "BEGIN {print $t1 - $t0}")"
done
