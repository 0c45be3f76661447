#!/bin/sh
# Guest helper (installed as /bin/vfio-bind): binds the first PCI function
# with VENDOR (and DEVICE, if given) to vfio-pci and prints its sysfs
# directory and VFIO cdev name, "SYSFS CDEV"; exits 1 when there is no
# such function or no cdev appeared within 5 s.
#
#   vfio-bind VENDOR [DEVICE]      e.g. vfio-bind 0x1234 0x5a5a
d=""
for p in /sys/bus/pci/devices/*; do
    [ "$(cat "$p/vendor")" = "$1" ] || continue
    [ -z "$2" ] || [ "$(cat "$p/device")" = "$2" ] || continue
    d=$p
    break
done
[ -n "$d" ] || exit 1
bdf=${d##*/}
echo vfio-pci >"$d/driver_override"
[ -e "$d/driver" ] && echo "$bdf" >"$d/driver/unbind"
echo "$bdf" >/sys/bus/pci/drivers_probe
for i in 1 2 3 4 5 6 7 8 9 10; do
    c=$(ls "$d/vfio-dev" 2>/dev/null) && [ -n "$c" ] && [ -e "/dev/vfio/devices/$c" ] &&
        { echo "$d $c"; exit 0; }
    sleep 0.5
done
exit 1
