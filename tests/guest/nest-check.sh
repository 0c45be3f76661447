#!/bin/sh
# Runs in a Linux guest whose IOMMU is the VMM's VT-d with nesting offered:
# binds the dma-test device to vfio-pci and takes it through iommufd to a
# nested page table (tests/guest/nest-probe.c), as a guest hypervisor does.
echo "GUEST-USERSPACE-REACHED"
dmesg | grep -iE "dmar|iommu" | sed 's/^/DMESG: /'
# dma-test (1234:5a5a) to vfio-pci.
bound=$(/bin/vfio-bind 0x1234 0x5a5a) || { echo "NEST-CHECK=no-dma-test-cdev"; exit 1; }
d=${bound% *} c=${bound#* }
echo "VFIO-CDEV=$c"
# nest.pasid=N on the command line: attach the nested table to PASID N.
pasid=""
for w in $(cat /proc/cmdline); do
    case $w in nest.pasid=*) pasid=${w#nest.pasid=} ;; esac
done
# shellcheck disable=SC2086  # no PASID: no argument
/bin/nest-probe "/dev/vfio/devices/$c" $pasid
echo "NEST-PROBE-STATUS=$?"
# The function resets the way vfio-pci resets it for the next user: FLR.
echo "RESET-METHOD=$(cat "$d/reset_method" 2>/dev/null)"
if echo 1 >"$d/reset"; then echo "RESET=ok"; else echo "RESET=failed"; fi
# The one fault nest-probe provokes (DMA3) is expected; anything else is not.
dmesg | grep -E "DMAR: \[DMA" | sed 's/^/FAULT-DMESG: /'
dmesg | grep -iE "DMAR.*fault|fault.*DMAR|iommu.*(error|fail)|pasid.*(error|fail)" |
    grep -vE "DMAR: \[DMA|fault addr|handling fault status" | sed 's/^/BAD-DMESG: /'
echo "GUEST-CHECKS-DONE"
