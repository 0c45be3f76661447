#!/bin/sh
# Runs in a guest with a passthrough NVMe controller: reports what the
# guest's drivers made of it (IOMMU group type, capabilities in config
# space), then does a 64 MiB O_DIRECT round trip through it with the
# guest's own nvme driver.
echo "GUEST-USERSPACE-REACHED"
echo "CMDLINE=$(cat /proc/cmdline | tr ' ' '+')"

# The controller (class 01:08:02).
dev=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] && dev=$d
done
[ -n "$dev" ] || { echo "NVME-PCI=missing"; echo "GUEST-CHECKS-DONE"; exit 0; }
echo "NVME-PCI=${dev##*/} vendor=$(cat "$dev/vendor") device=$(cat "$dev/device")"
[ -e "$dev/iommu_group" ] && echo "NVME-GROUP-TYPE=$(cat "$dev/iommu_group/type")"
ls /sys/class/iommu/ 2>/dev/null | sed 's/^/IOMMU-CLASS: /'
dmesg | grep -iE "dmar|iommu|nvme|remapping" | sed 's/^/DMESG: /'

# Extended capabilities, walked through the device's config file (4096
# bytes only when the guest reaches it through ECAM).
size=$(wc -c <"$dev/config")
echo "CONFIG-SIZE=$size"
dword() { od -An -tx4 -j"$1" -N4 "$dev/config" | tr -d ' '; }
if [ "$size" -ge 4096 ]; then
    off=256 n=0
    while [ "$off" -ge 256 ] && [ "$n" -lt 64 ]; do
        h=$(dword "$off")
        [ "$h" = 00000000 ] || [ "$h" = ffffffff ] && break
        id=$((0x$h & 0xffff))
        printf 'EXTCAP id=0x%04x at=0x%03x\n' "$id" "$off"
        if [ "$id" = 27 ]; then
            printf 'PASID-CAP at=0x%03x regs=%s\n' "$off" "$(dword $((off + 4)))"
        fi
        off=$(((0x$h >> 20) & 0xffc)) n=$((n + 1))
    done
fi

i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/nvme0n1 ] || { echo "NVME-DISK=missing"; echo "GUEST-CHECKS-DONE"; exit 0; }
echo "NVME-DISK=present"
grep -E "nvme|DMAR|IR-" /proc/interrupts | sed 's/^/IRQ: /'

if grep -q "vmm.bench" /proc/cmdline; then
    # Benchmark: sequential O_DIRECT reads, after a warm-up pass, timed
    # with /proc/uptime (busybox dd prints no timing).
    dd if=/dev/nvme0n1 of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null
    echo "BENCH-READ-START"
    for i in 1 2 3; do
        t0=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/nvme0n1 of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "BENCH-READ bytes=67108864 seconds=$(awk "BEGIN {print $t1 - $t0}")"
    done
    echo "BENCH-READ-END"
else
    dd if=/dev/urandom of=/tmp/data bs=1M count=64 2>/dev/null
    echo "SRC-SHA=$(sha256sum /tmp/data | cut -d' ' -f1)"
    if dd if=/tmp/data of=/dev/nvme0n1 bs=1M oflag=direct 2>/dev/null; then
        echo "WRITE=ok"
    else
        echo "WRITE=failed"
    fi
    echo "READ-SHA=$(dd if=/dev/nvme0n1 bs=1M count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
    # A pause with the device idle and translation still on, for a test
    # that takes the VMM's counters at this point.
    sleep 2
fi
dmesg | grep -iE "DMAR.*fault|fault.*DMAR|iommu.*(error|fail)|nvme.*(error|fail|timeout|abort)" |
    sed 's/^/BAD-DMESG: /'
echo "GUEST-CHECKS-DONE"
