#!/bin/bash
# Fetches the Debian kernel headers that match the guest kernel cached by
# guest-kernel.sh (same package version, hence the same release and
# vermagic) and caches them unpacked, so tests can build out-of-tree guest
# modules. Prints, as the last line on stdout, the kbuild directory:
#   <cache>/headers-<debian version>/usr/src/linux-headers-<release>
# usable as `make -C <dir> M=<module dir> CONFIG_DEBUG_INFO_BTF_MODULES= modules`
# (test modules need no BTF, and leaving it out spares the host pahole,
# which Debian's kbuild would otherwise run on every module).
#
# The tree holds linux-headers-<release>, linux-headers-<base>-common and
# linux-kbuild-<base> (whatever the headers package Depends on), unpacked
# with dpkg-deb -x. Absolute symlinks (and the absolute include in the
# flavour's Makefile) are rewritten to point inside the tree. A complete
# cache is reused without network access; if the download fails (stale
# lists) the apt lists are refreshed once (as root). The first use also
# builds a trivial module to check the host toolchain.
#
# Env: VMM_CACHE (default ~/.cache/vmm), GUEST_KERNEL_DIR (else
# guest-kernel.sh is run).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${VMM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/vmm}
log() { echo "guest-headers: $*" >&2; }

kdir=${GUEST_KERNEL_DIR:-$("$here/guest-kernel.sh" | tail -n1)}
rel=$(cat "$kdir/release")
pkgver=$(cat "$kdir/package")     # linux-image-<rel>=<version>
ver=${pkgver#*=}
if [ -z "$rel" ] || [ -z "$ver" ] || [ "$ver" = "$pkgver" ]; then
    log "cannot read release/package from $kdir"; exit 1
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.headers.lock"
flock 9
rm -rf "$CACHE"/.headers-tmp.*   # left by an interrupted download

dir="$CACHE/headers-$ver"
build="$dir/usr/src/linux-headers-$rel"
complete() {
    [ -s "$1/usr/src/linux-headers-$rel/Makefile" ] &&
        [ -s "$1/usr/src/linux-headers-$rel/Module.symvers" ] &&
        [ -x "$1/usr/src/linux-headers-$rel/scripts/mod/modpost" ] &&
        [ -s "$1/usr/src/linux-headers-$rel/include/config/kernel.release" ]
}

# The linux-headers-*/linux-kbuild-* packages linux-headers-<rel> depends
# on, as name=version (the same source version as the image).
packages() {
    local deps d name
    echo "linux-headers-$rel=$ver"
    deps=$(apt-cache show "linux-headers-$rel=$ver" 2>/dev/null |
        sed -n 's/^Depends: //p' | head -n1)
    [ -n "$deps" ] || return 1
    while read -r d; do
        name=${d%%|*}; name=${name%%(*}; name=${name// /}
        case $name in linux-headers-*|linux-kbuild-*) echo "$name=$ver" ;; esac
    done < <(tr ',' '\n' <<<"$deps")
}

# Downloads and unpacks everything into a temp dir, renamed into place.
fetch() {
    local tmp pkgs l t sandbox=()
    tmp=$(mktemp -d "$CACHE/.headers-tmp.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
    mapfile -t pkgs < <(packages) || true
    [ ${#pkgs[@]} -ge 3 ] || { log "apt does not offer linux-headers-$rel=$ver and its dependencies"; return 1; }
    log "downloading ${pkgs[*]}"
    (cd "$tmp" && apt-get download -q "${sandbox[@]}" "${pkgs[@]}" >&2) || return 1
    for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/x" || return 1; done
    rm -rf "$tmp/x/usr/share/doc" "$tmp/x/usr/share/lintian"
    # Absolute symlinks (lib/modules/<rel>/{build,source}) → inside the tree.
    while IFS= read -r l; do
        t=$(readlink "$l")
        ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$tmp/x$t")" "$l"
    done < <(find "$tmp/x" -type l -lname '/*')
    # The flavour's Makefile includes the common Makefile by absolute path.
    # shellcheck disable=SC2016  # a make expression, not a shell one
    sed -i 's|^include /usr/src/\(.*\)$|include $(dir $(lastword $(MAKEFILE_LIST)))../\1|' \
        "$tmp/x/usr/src/linux-headers-$rel/Makefile"
    grep -q '^include /' "$tmp/x/usr/src/linux-headers-$rel/Makefile" &&
        { log "unexpected Makefile in linux-headers-$rel"; return 1; }
    complete "$tmp/x" || { log "unpacked headers are incomplete"; return 1; }
    rm -rf "$dir" && mv "$tmp/x" "$dir" || return 1
    log "cached headers for $rel in $dir"
}

# Builds a trivial module once, so a broken host toolchain shows here.
probe() {
    local tmp out
    [ -f "$dir/.probe-ok" ] && return 0
    tmp=$(mktemp -d "$CACHE/.headers-tmp.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    cat >"$tmp/probe.c" <<'EOF'
#include <linux/module.h>
static int __init probe_init(void) { return 0; }
static void __exit probe_exit(void) { }
module_init(probe_init);
module_exit(probe_exit);
MODULE_LICENSE("GPL");
EOF
    echo 'obj-m := probe.o' >"$tmp/Kbuild"
    if ! out=$(make -C "$build" M="$tmp" CONFIG_DEBUG_INFO_BTF_MODULES= modules 2>&1) || [ ! -s "$tmp/probe.ko" ]; then
        echo "$out" >&2
        log "building a trivial module against $build failed (run resources/host-setup.sh?)"
        return 1
    fi
    touch "$dir/.probe-ok"
}

if ! complete "$dir" && ! fetch; then
    ok=""
    if [ "$(id -u)" = 0 ]; then
        log "refreshing apt lists"
        apt-get update -q >&2 && fetch && ok=1
    fi
    [ -n "$ok" ] || { log "cannot fetch the headers for $rel ($ver)"; exit 1; }
fi
probe
echo "$build"
