#!/bin/sh
# Asks for a reboot instead of the usual poweroff.
echo "GUEST-USERSPACE-REACHED"
echo "GUEST-REBOOTING"
reboot -f
sleep 10
echo "REBOOT-DID-NOT-HAPPEN"
