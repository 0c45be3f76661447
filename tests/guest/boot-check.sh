#!/bin/sh
# Runs in the guest: reports what the guest sees and does a 64 MiB O_DIRECT
# round trip through /dev/vda. The host side (tests/tests/boot.rs) asserts.
echo "GUEST-USERSPACE-REACHED"
echo "CPUS=$(grep -c ^processor /proc/cpuinfo)"
echo "MEMTOTAL_KB=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
for d in /sys/bus/pci/devices/*; do
    echo "PCI-DEVICE $(basename "$d") vendor=$(cat "$d/vendor") device=$(cat "$d/device") class=$(cat "$d/class")"
done
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1af4 ] || continue
    cfg=$d/config
    echo "VIRTIO-CONFIG-SIZE=$(wc -c < "$cfg")"
    # First extended capability header, at 0x100 (only readable through ECAM).
    echo "VIRTIO-EXTCAP=$(dd if="$cfg" bs=4 skip=64 count=1 2>/dev/null | od -An -tx4 | tr -d ' ')"
    break
done
echo "VDA-RO=$(cat /sys/block/vda/ro 2>/dev/null)"
echo "VDA-SECTORS=$(cat /sys/block/vda/size 2>/dev/null)"
grep -q . /proc/interrupts && echo "VIRTIO-IRQS=$(grep -c virtio /proc/interrupts)"

dd if=/dev/urandom of=/tmp/data bs=1M count=64 2>/dev/null
echo "SRC-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)"
if dd if=/tmp/data of=/dev/vda bs=1M oflag=direct 2>/tmp/dd.err; then
    echo "WRITE=ok"
else
    echo "WRITE=failed"
fi
echo "READ-SHA=$(dd if=/dev/vda bs=1M count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "GUEST-CHECKS-DONE"
