#!/bin/sh
# Makes the dma-test device (no driver; bus mastering enabled through
# sysfs) DMA to IOVAs the guest never mapped, then reports the DMAR fault
# lines the guest's own intel-iommu driver printed from the unit's fault
# recording registers. Needs iomem=relaxed for devmem on the BAR.
echo "GUEST-USERSPACE-REACHED"
dev=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x5a5a ] && dev=$d
done
[ -n "$dev" ] || { echo "DMA-TEST-MISSING"; exit 0; }
echo "DMA-TEST=$(basename "$dev")"
bar=$(head -n1 "$dev/resource" | cut -d' ' -f1)
# Command register: memory space + bus master.
printf '\006' | dd of="$dev/config" bs=1 seek=4 conv=notrunc 2>/dev/null
echo "DMA-TEST-ID=$(devmem $((bar + 0x00)) 32)"
dma() { # op addr len
    devmem $((bar + 0x08)) 64 "$2"
    devmem $((bar + 0x10)) 32 "$3"
    devmem $((bar + 0x14)) 32 0x5a
    devmem $((bar + 0x1c)) 32 "$1"
    echo "DMA-STATUS op=$1 addr=$2 status=$(devmem $((bar + 0x20)) 32)"
}
dma 1 0xdead0000 64     # write to an unmapped IOVA
sleep 1
dma 2 0xbeef0000 64     # read from an unmapped IOVA
sleep 1
echo "FAULTS=$(devmem $((bar + 0x28)) 32)"
dmesg | grep -E "DMAR: \[DMA" | sed 's/^/FAULT-LINE: /'
grep -E "DMAR" /proc/interrupts | sed 's/^/IRQ: /'
echo "GUEST-CHECKS-DONE"
