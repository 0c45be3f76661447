#!/bin/sh
# Runs the hostile register program against the VT-d unit (no guest driver
# owns it: intel_iommu=off intremap=off), with the dma-test device doing DMA
# and the translated virtio disk busy in the background.
echo "GUEST-USERSPACE-REACHED"
dev=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x5a5a ] && dev=$d
done
bar=$(head -n1 "$dev/resource" | cut -d' ' -f1)
printf '\006' | dd of="$dev/config" bs=1 seek=4 conv=notrunc 2>/dev/null
slot=$(basename "$dev" | cut -d: -f3)
devfn=$(( (0x${slot%.*} << 3) | ${slot#*.} ))
(while true; do dd if=/dev/vda of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null; done) &
bg=$!
/bin/vtd-hostile "$bar" "$devfn" > /tmp/hostile.out 2>&1
rc=$?
kill $bg
# The verdict goes out through printk, which writes the console by polling
# the UART: the program's last phase blocks the guest's own
# compatibility-format interrupts, and a UART transmit interrupt lost then
# would stall the tty for good (the test's cmdline has printk.devkmsg=on,
# so these lines are not rate-limited, and each is at KERN_CRIT to pass
# `quiet`).
say() { echo "<2>$1" >/dev/kmsg; }
say "HOSTILE-EXIT=$rc"
while IFS= read -r line; do say "$line"; done </tmp/hostile.out
say "GUEST-CHECKS-DONE"
