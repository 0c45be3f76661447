#!/bin/sh
# Shared virtual addressing on the dma-test device: loads dmatest_sva.ko
# (binds to 1234:5a5a, enables IOPF and SVA), runs /bin/sva_user (device
# DMA to process virtual addresses, one of them a page the CPU never
# touched, resolved through PRI and the guest's IOPF handler), then
# reports interrupts and the relevant dmesg lines.
echo "GUEST-USERSPACE-REACHED"
insmod /lib/dmatest_sva.ko
echo "INSMOD-STATUS=$?"
if [ -e /dev/dmatest_sva ]; then
    /bin/sva_user
    echo "SVA-USER-EXIT=$?"
else
    echo "SVA-DEVICE-NODE-MISSING"
fi
grep -E "dmar|prq" /proc/interrupts | sed 's/^/IRQ: /'
dmesg | grep -E "dmatest_sva|DMAR|iommu" | sed 's/^/DMESG: /'
echo "GUEST-CHECKS-DONE"
