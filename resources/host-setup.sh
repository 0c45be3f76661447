#!/bin/bash
# Installs the host packages the test harness needs: QEMU 10 from
# bookworm-backports (the L1 hypervisor), busybox-static and cpio for the
# initramfs images, gcc and glibc's static library for guest test programs,
# the tools to build the iommufd L1 kernel. The backports archive address is
# derived from the machine's own apt sources so no mirror is written into the
# repository.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v zstd >/dev/null || need+=(zstd)
command -v gcc >/dev/null || need+=(gcc)
# Static guest test programs link against glibc's static archive.
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
# Guest kernel modules (resources/guest-headers.sh): kbuild runs make, and
# its prebuilt objtool links libelf.
command -v make >/dev/null || need+=(make)
[ -e /usr/lib/x86_64-linux-gnu/libelf.so.1 ] || need+=(libelf1)
# The L1 kernel built from source (resources/l1-kernel.sh): kconfig needs
# flex and bison, objtool libelf's headers, the trusted-keyring tool
# (certs/extract-cert) OpenSSL's, the build bc, the source tarball xz.
command -v flex >/dev/null || need+=(flex)
command -v bison >/dev/null || need+=(bison)
command -v bc >/dev/null || need+=(bc)
command -v xz >/dev/null || need+=(xz-utils)
[ -f /usr/include/libelf.h ] || need+=(libelf-dev)
[ -f /usr/include/openssl/opensslv.h ] || need+=(libssl-dev)
[ ${#need[@]} -eq 0 ] && exit 0

list=/etc/apt/sources.list.d/vmm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    src=/etc/apt/sources.list.d/debian.sources
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$src")
    key=$(awk '/^Signed-By:/ {print $2; exit}' "$src")
    if [ -z "$uri" ]; then
        uri=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || { echo "host-setup: cannot derive a Debian archive address" >&2; exit 1; }
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: bookworm-backports"
        echo "Components: main"
        [ -n "$key" ] && echo "Signed-By: $key"
    } | $SUDO tee "$list" >/dev/null
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -t bookworm-backports "${need[@]}"
