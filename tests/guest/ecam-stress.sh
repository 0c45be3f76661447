#!/bin/sh
# Reproducer of the nested platform's memory corruption (resources/run-l1.sh,
# L1_SMP): two loops read the virtio function's whole config space through
# sysfs, ~960 ECAM reads (MMIO exits) per pass, 400 passes each. Prints
# ECAM-DONE and powers off; on a broken platform the guest triple-faults or
# L1 panics within a minute or two.
echo "GUEST-USERSPACE-REACHED"
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1af4 ] && cfg=$d/config
done
echo "CFG=$cfg"
loop() {
    i=0
    while [ $i -lt 400 ]; do
        cat "$cfg" >/dev/null
        i=$((i + 1))
        [ $((i % 100)) = 0 ] && echo "ECAM-$1=$i uptime=$(cut -d' ' -f1 /proc/uptime)"
    done
}
loop a &
loop b &
wait
echo "ECAM-DONE"
poweroff -f
