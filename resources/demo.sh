#!/bin/bash
# The demo: boots Debian's stock kernel under the VMM with a virtio-blk disk,
# inside the nested L1 (this machine's own /dev/kvm cannot run guests). The
# guest prints what it sees, does a 64 MiB O_DIRECT round trip on its disk
# and powers off; the VMM then exits with status 0.
set -euo pipefail
cd "$(dirname "$0")/.."

bash resources/host-setup.sh
kdir=$(bash resources/guest-kernel.sh | tail -n1)
cargo build --release -p vmm
scratch=$(mktemp -d /tmp/vmm-demo.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
bash resources/mkinitramfs.sh "$scratch/initramfs.cpio.gz" tests/guest/boot-check.sh virtio_blk
truncate -s 96M "$scratch/disk.img"
bash resources/run-l1.sh --disk-scratch "$scratch" -- \
    "$PWD/target/release/vmm" --kernel "$kdir/vmlinuz" \
    --initramfs "$scratch/initramfs.cpio.gz" \
    --cmdline "console=ttyS0 panic=-1" --memory 512M --cpus 2 \
    --disk "path=$scratch/disk.img"
