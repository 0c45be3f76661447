#!/bin/sh
# Runs in a guest of the VMM (the 7.2 kernel, its virtio-blk disk behind
# the VMM's VT-d): binds that disk to vfio-pci and runs the VMM again,
# inside, passing the disk to an L3 guest behind the inner VMM's own VT-d
# (tests/guest/l3-round-trip.sh runs there). The inner VMM's output is
# printed afterwards with an `L3: ` prefix.
echo "GUEST-USERSPACE-REACHED"
if [ -e /dev/kvm ]; then echo "L2-KVM=yes"; else echo "L2-KVM=no"; fi
d=""
for p in /sys/bus/pci/devices/*; do
    [ "$(cat "$p/vendor")" = 0x1af4 ] && d=$p
done
[ -n "$d" ] || { echo "SELF-HOSTED=no-virtio-disk"; exit 1; }
bdf=${d##*/}
echo vfio-pci >"$d/driver_override"
[ -e "$d/driver" ] && echo "$bdf" >"$d/driver/unbind"
echo "$bdf" >/sys/bus/pci/drivers_probe
c=""
for i in 1 2 3 4 5 6 7 8 9 10; do
    c=$(ls "$d/vfio-dev" 2>/dev/null) && [ -n "$c" ] && [ -e "/dev/vfio/devices/$c" ] && break
    c=""
    sleep 0.5
done
echo "VFIO-CDEV=$c"
/bin/vmm --kernel /l3/vmlinuz --initramfs /l3/initrd.cpio.gz \
    --cmdline "console=ttyS0 quiet panic=-1 intel_iommu=on iommu.strict=1" \
    --memory 128M --cpus 1 --vfio "/dev/vfio/devices/$c,iommu=on" --viommu intel \
    --counters >/tmp/inner.log 2>&1
echo "INNER-VMM-STATUS=$?"
sed 's/^/L3: /' /tmp/inner.log
echo "GUEST-CHECKS-DONE"
