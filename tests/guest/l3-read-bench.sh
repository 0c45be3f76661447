#!/bin/sh
# Runs in the innermost guest of benches/nesting.rs: sequential 64 MiB
# O_DIRECT reads from the passed-through virtio-blk disk, after a warm-up
# pass, timed with /proc/uptime (busybox dd prints no timing).
echo "L3-USERSPACE-REACHED"
ls /sys/class/iommu/ 2>/dev/null | sed 's/^/L3-IOMMU-CLASS=/'
dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
for i in 1 2; do
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "BENCH-READ bytes=67108864 seconds=$(awk "BEGIN {print $t1 - $t0}")"
done
