#!/bin/sh
# Runs in a guest of the VMM (the 7.2 kernel on a unit that offers
# nesting) for benches/nesting.rs: binds the virtio-blk disk to vfio-pci
# and runs the VMM inside three times, passing the disk to an L3 guest
# (tests/guest/l3-read-bench.sh) on each path in turn: bypass (no vIOMMU),
# shadow (nested=off), nested (nested=on) with the L3 guest's default
# invalidation policy and nested with the L3 guest strict.
# Every inner line is printed with a `<path>: ` prefix.
echo "GUEST-USERSPACE-REACHED"
bound=$(/bin/vfio-bind 0x1af4) || { echo "BENCH=no-virtio-disk-cdev"; exit 1; }
c=${bound#* }
for path in bypass shadow nested nested-strict; do
    case $path in
    bypass) extra=""; dev="/dev/vfio/devices/$c"; l3="" ;;
    # Caching mode without a first stage: the L3 guest is strict anyway.
    shadow) extra="--viommu intel,nested=off"; dev="/dev/vfio/devices/$c,iommu=on"
            l3="intel_iommu=on" ;;
    # First stage: the L3 guest's default (lazy: invalidations batched).
    nested) extra="--viommu intel,nested=on"; dev="/dev/vfio/devices/$c,iommu=on"
            l3="intel_iommu=on" ;;
    nested-strict) extra="--viommu intel,nested=on"; dev="/dev/vfio/devices/$c,iommu=on"
            l3="intel_iommu=on iommu.strict=1" ;;
    esac
    # shellcheck disable=SC2086
    /bin/vmm --kernel /l3/vmlinuz --initramfs /l3/initrd.cpio.gz \
        --cmdline "console=ttyS0 quiet panic=-1 $l3" \
        --memory 128M --cpus 1 --vfio "$dev" $extra --counters >/tmp/inner.log 2>&1
    echo "$path: INNER-VMM-STATUS=$?"
    sed "s/^/$path: /" /tmp/inner.log
done
echo "GUEST-CHECKS-DONE"
