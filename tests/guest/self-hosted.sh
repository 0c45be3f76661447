#!/bin/sh
# Runs in a guest of the VMM (the 7.2 kernel, its virtio-blk disk behind
# the VMM's VT-d): binds that disk to vfio-pci and runs the VMM again,
# inside, passing the disk to an L3 guest behind the inner VMM's own VT-d
# (tests/guest/l3-round-trip.sh runs there). From this guest's command
# line: `inner_viommu=` is the inner `--viommu` value (default intel),
# `l3_policies=` the L3 guest's invalidation policies, one inner run each
# (`strict`: iommu.strict=1, `default`: the kernel's default; default
# `strict`). Each inner run's output is printed afterwards with an
# `L3-<policy>: ` prefix.
echo "GUEST-USERSPACE-REACHED"
viommu=intel
policies=strict
for w in $(cat /proc/cmdline); do
    case "$w" in
    inner_viommu=*) viommu=${w#inner_viommu=} ;;
    l3_policies=*) policies=$(echo "${w#l3_policies=}" | tr , ' ') ;;
    esac
done
echo "INNER-VIOMMU=$viommu"
if [ -e /dev/kvm ]; then echo "L2-KVM=yes"; else echo "L2-KVM=no"; fi
# The virtio-blk disk (vendor 1af4, the only virtio function) to vfio-pci.
bound=$(/bin/vfio-bind 0x1af4) || { echo "SELF-HOSTED=no-virtio-disk-cdev"; exit 1; }
c=${bound#* }
echo "VFIO-CDEV=$c"
for p in $policies; do
    case $p in strict) l3="iommu.strict=1" ;; *) l3="" ;; esac
    /bin/vmm --kernel /l3/vmlinuz --initramfs /l3/initrd.cpio.gz \
        --cmdline "console=ttyS0 quiet panic=-1 intel_iommu=on $l3" \
        --memory 128M --cpus 1 --vfio "/dev/vfio/devices/$c,iommu=on" --viommu "$viommu" \
        --counters >/tmp/inner.log 2>&1
    echo "L3-$p: INNER-VMM-STATUS=$?"
    sed "s/^/L3-$p: /" /tmp/inner.log
done
echo "GUEST-CHECKS-DONE"
