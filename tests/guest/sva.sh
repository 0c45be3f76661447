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
# Case-insensitive: the SVA capability check prints "dmar0 SVM disabled, ...".
dmesg | grep -iE "dmatest_sva|dmar|iommu|svm" | sed 's/^/DMESG: /'
# SVA needs the IOMMU's first stage to walk the CPU's page tables: with
# 5-level paging (la57) the unit must offer FL5LP (else the guest prints
# "dmar0 SVM disabled, incompatible paging mode"; boot with no5lvl), with
# 1 GiB pages FL1GP.
echo "CPU-LA57=$(grep -qw la57 /proc/cpuinfo && echo 1 || echo 0)"
echo "CPU-PDPE1GB=$(grep -qw pdpe1gb /proc/cpuinfo && echo 1 || echo 0)"
echo "GUEST-CHECKS-DONE"
