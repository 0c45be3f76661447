#!/bin/sh
# Runs in the guest behind the emulated VT-d: reports what the guest's
# intel-iommu driver made of the unit, then does a 64 MiB O_DIRECT round
# trip through the translated virtio-blk disk.
echo "GUEST-USERSPACE-REACHED"
echo "CMDLINE=$(cat /proc/cmdline | tr ' ' '+')"
dmesg | grep -iE "dmar|iommu|remapping|x2apic|virtio" | sed 's/^/DMESG: /'
ls /sys/class/iommu/ 2>/dev/null | sed 's/^/IOMMU-CLASS: /'
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1af4 ] || continue
    g=$(readlink "$d/iommu_group" 2>/dev/null)
    [ -n "$g" ] && echo "VDA-GROUP-TYPE=$(cat "$d/iommu_group/type")"
done
grep -E "virtio|DMAR|IR-" /proc/interrupts | sed 's/^/IRQ: /'
dd if=/dev/urandom of=/tmp/data bs=1M count=64 2>/dev/null
echo "SRC-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)"
if dd if=/tmp/data of=/dev/vda bs=1M oflag=direct 2>/dev/null; then echo "WRITE=ok"; else echo "WRITE=failed"; fi
echo "READ-SHA=$(dd if=/dev/vda bs=1M count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
dmesg | grep -iE "DMAR.*fault|fault.*DMAR|iommu.*(error|fail)|virtio.*(error|fail)" | sed 's/^/BAD-DMESG: /'
echo "GUEST-CHECKS-DONE"
