#!/bin/bash
# Fetches Debian's stock linux-image-6.12.*-amd64 kernel (the L1 kernel and the
# L2 guest kernel of the test harness) and caches it unpacked. Prints, as the
# last line on stdout, the cache directory, which holds:
#   vmlinuz   the bzImage
#   modules/  the unpacked /lib/modules/<release> tree (.ko.xz files)
#   config    the kernel's .config
#   release   the kernel release (uname -r), e.g. 6.12.95+deb12-amd64
#   package   the Debian package and version it came from (pkg=version)
#
# The newest version that apt offers now (from the suite in
# GUEST_KERNEL_SUITE, default bookworm-backports) is selected; no Debian
# revision is hard-coded. A complete cache for that version is reused without
# network access. If apt offers nothing (no lists), the newest complete cached
# kernel is used; if the download fails (stale lists), the apt lists are
# refreshed once (as root) before falling back to the newest cached kernel.
#
# Env: VMM_CACHE (default ~/.cache/vmm), GUEST_KERNEL_SUITE.
set -euo pipefail

CACHE=${VMM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/vmm}
SUITE=${GUEST_KERNEL_SUITE-bookworm-backports}
log() { echo "guest-kernel: $*" >&2; }

mkdir -p "$CACHE"
# Serialise concurrent callers (parallel tests) on the cache.
exec 9>"$CACHE/.kernel.lock"
flock 9
rm -rf "$CACHE"/.kernel-tmp.*   # left by an interrupted download

complete() { [ -s "$1/vmlinuz" ] && [ -s "$1/release" ] && [ -d "$1/modules/kernel" ]; }

# Prints "package=version" of the newest non-cloud, non-rt 6.12 amd64 kernel
# image that apt offers from $SUITE (any suite if $SUITE offers none).
newest_offered() {
    local names best="" bestv="" suite pkg ver src
    mapfile -t names < <(apt-cache pkgnames linux-image-6.12. 2>/dev/null |
        grep -E '^linux-image-6\.12\.[0-9]+\+deb[0-9.]+-amd64$')
    [ ${#names[@]} -gt 0 ] || return 0
    for suite in "$SUITE" ""; do
        # madison lines: "pkg | version | <archive> <suite>/<component> <arch> Packages"
        while IFS='|' read -r pkg ver src; do
            pkg=${pkg// /}; ver=${ver// /}
            [ -z "$suite" ] || [[ "$src" == *" $suite/"* ]] || continue
            if [ -z "$bestv" ] || dpkg --compare-versions "$ver" gt "$bestv"; then
                best=$pkg; bestv=$ver
            fi
        done < <(apt-cache madison "${names[@]}" 2>/dev/null)
        [ -z "$best" ] || break
        [ -z "$suite" ] || log "no 6.12 kernel offered by $suite, trying any suite"
    done
    [ -z "$best" ] || echo "$best=$bestv"
}

# Prints the newest complete cached kernel directory, if any.
newest_cached() {
    local d v best="" bestv=""
    for d in "$CACHE"/kernel-*/; do
        d=${d%/}
        complete "$d" || continue
        v=${d##*/kernel-}
        if [ -z "$bestv" ] || dpkg --compare-versions "$v" gt "$bestv"; then
            best=$d; bestv=$v
        fi
    done
    [ -z "$best" ] || echo "$best"
}

# Downloads and unpacks package=version into the cache; prints the directory.
fetch() {
    local pkgver=$1 ver=${1#*=} dir tmp rel
    dir="$CACHE/kernel-$ver"
    if complete "$dir"; then echo "$dir"; return 0; fi
    tmp=$(mktemp -d "$CACHE/.kernel-tmp.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    # As root, apt would drop to _apt, which cannot write under ~root.
    local sandbox=()
    [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
    # Runs in an `if` context where `set -e` is inert: chain every step.
    log "downloading $pkgver"
    (cd "$tmp" && apt-get download -q "${sandbox[@]}" "$pkgver" >&2) &&
        dpkg-deb -x "$tmp"/*.deb "$tmp/x" &&
        rel=$(find "$tmp/x/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' -quit) &&
        mkdir -p "$tmp/out" &&
        mv "$tmp/x/boot/vmlinuz-$rel" "$tmp/out/vmlinuz" &&
        mv "$tmp/x/boot/config-$rel" "$tmp/out/config" &&
        mv "$tmp/x/lib/modules/$rel" "$tmp/out/modules" &&
        echo "$rel" >"$tmp/out/release" &&
        echo "$pkgver" >"$tmp/out/package" &&
        complete "$tmp/out" || { log "download or unpack of $pkgver failed"; return 1; }
    rm -rf "$dir" && mv "$tmp/out" "$dir" || return 1
    log "cached $rel in $dir"
    echo "$dir"
}

# apt-cache takes ~1 s; remember its answer until the apt lists change.
offered_cached() {
    local key memo="$CACHE/.kernel-offered"
    key=$( { echo "$SUITE"; stat -c '%n %s %Y' /var/lib/apt/lists/* 2>/dev/null; } | sha256sum | cut -c1-32)
    if [ -f "$memo" ] && [ "$(head -n1 "$memo")" = "$key" ]; then
        sed -n 2p "$memo"
        return 0
    fi
    offered=$(newest_offered)
    [ -z "$offered" ] || printf '%s\n%s\n' "$key" "$offered" >"$memo"
    echo "$offered"
}

offered=$(offered_cached)
if [ -n "$offered" ]; then
    if complete "$CACHE/kernel-${offered#*=}"; then
        echo "$CACHE/kernel-${offered#*=}"; exit 0
    fi
    if dir=$(fetch "$offered"); then echo "$dir"; exit 0; fi
else
    # No apt metadata: prefer a cached kernel over touching the network.
    dir=$(newest_cached)
    if [ -n "$dir" ]; then
        log "apt offers no 6.12 kernel; using cached $(cat "$dir/release")"
        echo "$dir"; exit 0
    fi
fi
# Stale or missing apt lists (superseded versions vanish from the archive):
# refresh once (needs root) and retry.
if [ "$(id -u)" = 0 ]; then
    log "refreshing apt lists"
    if apt-get update -q >&2; then
        rm -f "$CACHE/.kernel-offered"
        offered=$(offered_cached)
        if [ -n "$offered" ] && dir=$(fetch "$offered"); then
            echo "$dir"; exit 0
        fi
    fi
fi
dir=$(newest_cached)
if [ -n "$dir" ]; then
    log "cannot download a kernel; using cached $(cat "$dir/release")"
    echo "$dir"; exit 0
fi
log "no linux-image-6.12.*-amd64 available from apt and none cached (run resources/host-setup.sh first)"
exit 1
