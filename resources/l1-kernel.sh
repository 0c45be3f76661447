#!/bin/bash
# Builds (once) the L1 kernel for tests that need iommufd and the VFIO device
# cdev, which Debian's stock kernels never enable. Prints, as the last line on
# stdout, the cache directory, which holds:
#   vmlinuz   the bzImage (everything built in: no modules/ directory)
#   config    the kernel's .config
#   version   the Debian linux-source version it was built from, e.g. 7.2.13-1
#   package   the Debian package and version (pkg=version)
#   release   the kernel release (uname -r)
# Use it with run-l1.sh as L1_KERNEL_DIR=$(resources/l1-kernel.sh).
#
# Source: Debian's linux-source-7.* package, the newest that the suite in
# L1_KERNEL_SUITE (default unstable) offers. The machine's apt configuration
# is left alone: a private apt state (sources list built from the archive
# URIs already in the machine's sources, its own lists, cache and an empty
# dpkg status) lives in a temporary directory. The source tarball is cached in
# $VMM_CACHE/linux-source-<version>/ (only the newest is kept).
#
# Config: x86_64_defconfig + kvm_guest.config + resources/l1-kernel.config,
# then `make olddefconfig`; every option the fragment sets is checked in the
# resulting .config (olddefconfig silently drops what it cannot satisfy) and
# the build fails listing those that were dropped. Then `make bzImage` under
# `nice -n 19` (about 15-20 minutes on 2 cores).
#
# Cache: $VMM_CACHE/l1-kernel-<source version>-<key>/, where <key> hashes the
# fragment and this script's build recipe. A complete build for the current
# key is reused without any network access (the newest version, if several);
# L1_KERNEL_REFRESH=1 asks the archive for a newer linux-source-7.* first (and
# builds it if there is one). Offline with no cached build, the newest cached
# source tarball is built.
#
# Build needs: make, gcc, bc, flex, bison, libelf-dev, libssl-dev, xz-utils
# (resources/host-setup.sh installs them).
#
# Env: VMM_CACHE (default ~/.cache/vmm), L1_KERNEL_SUITE, L1_KERNEL_REFRESH.
set -euo pipefail
shopt -s inherit_errexit   # functions run in $(...) stop at their first error

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${VMM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/vmm}
SUITE=${L1_KERNEL_SUITE:-unstable}
FRAGMENT=$here/l1-kernel.config
log() { echo "l1-kernel: $*" >&2; }

[ -f "$FRAGMENT" ] || { log "missing $FRAGMENT"; exit 1; }
mkdir -p "$CACHE"
# Serialise concurrent callers: one build at a time, and nobody reads a
# half-written cache entry (entries also appear by rename only).
exec 9>"$CACHE/.l1-kernel.lock"
flock 9
# Temporary directories (removed on exit, and by the next run if this one
# was killed; the lock makes them ours alone).
rm -rf "$CACHE"/.l1-kernel-tmp.*
trap 'rm -rf "$CACHE"/.l1-kernel-tmp.*' EXIT
newtmp() { mktemp -d "$CACHE/.l1-kernel-tmp.XXXXXX"; }

# ---------------------------------------------------------------------------
# The build recipe. The text of these functions (as bash prints them, without
# comments and `log` lines) and the fragment make up the cache key: edit them
# and the kernel is rebuilt.

# Checks that every option the fragment ($1) sets has that value in the
# .config ($2) of the source tree ($3). "# l1-kernel: if-present" before an
# option makes it optional when no Kconfig file of this version defines it.
check_config() {
    local frag=$1 config=$2 src=$3 line sym want got optional=0 n=0 bad=()
    while IFS= read -r line; do
        case $line in
            "# l1-kernel: if-present") optional=1; continue ;;
            CONFIG_*=*) sym=${line%%=*}; want=${line#*=} ;;
            "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}; want=n ;;
            *) continue ;;
        esac
        if [ "$optional" = 1 ] && ! grep -rqsE "^(menu)?config ${sym#CONFIG_}\$" --include='Kconfig*' "$src"; then
            log "$sym does not exist in this kernel version (optional, skipped)"
            optional=0; continue
        fi
        optional=0 n=$((n + 1))
        got=$(sed -n "s/^$sym=//p" "$config")
        [ -n "$got" ] || got=n
        [ "$got" = "$want" ] || bad+=("$sym: wanted $want, got $got")
    done <"$frag"
    if [ ${#bad[@]} -gt 0 ]; then
        log "olddefconfig dropped or changed ${#bad[@]} of the $n options the fragment sets:"
        printf 'l1-kernel:   %s\n' "${bad[@]}" >&2
        return 1
    fi
    log "config check: all $n options of the fragment are set as requested"
}

# Builds the bzImage from a linux-source tarball ($1) in the empty work
# directory $2 and stores vmlinuz, config and release in $3. Make's output
# goes to $2/build.log.
build_kernel() {
    local tarball=$1 work=$2 out=$3 src=$2/src
    mkdir -p "$src" "$out"
    log "unpacking $(basename "$tarball")"
    nice -n 19 tar -xJf "$tarball" -C "$src" --strip-components=1
    # Don't embed this machine's user and host names in the image.
    export KBUILD_BUILD_USER=vmm KBUILD_BUILD_HOST=vmm-l1
    {
        nice -n 19 make -C "$src" x86_64_defconfig kvm_guest.config &&
            nice -n 19 "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$FRAGMENT" &&
            nice -n 19 make -C "$src" olddefconfig
    } >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; log "configuration failed"; return 1; }
    if ! check_config "$FRAGMENT" "$src/.config" "$src"; then
        cp "$src/.config" "$CACHE/l1-kernel-rejected.config"
        log "the rejected .config is in $CACHE/l1-kernel-rejected.config"
        return 1
    fi
    log "building bzImage with $(nproc) jobs under nice -n 19 (about 15-20 minutes on 2 cores)"
    nice -n 19 make -C "$src" -j"$(nproc)" bzImage >>"$work/build.log" 2>&1 ||
        { tail -n 40 "$work/build.log" >&2; log "build failed"; return 1; }
    cp "$src/arch/x86/boot/bzImage" "$out/vmlinuz"
    cp "$src/.config" "$out/config"
    make -s -C "$src" kernelrelease >"$out/release"
}
# ---------------------------------------------------------------------------

key=$( { cat "$FRAGMENT"; declare -f check_config build_kernel | grep -v '^ *log '; } |
      sha256sum | cut -c1-12)

complete() { [ -s "$1/vmlinuz" ] && [ -s "$1/config" ] && [ -s "$1/version" ]; }

# Prints the newest complete cached build for the current key, if any.
newest_build() {
    local d v best="" bestv=""
    for d in "$CACHE"/l1-kernel-*-"$key"/; do
        d=${d%/}
        complete "$d" || continue
        v=$(cat "$d/version")
        if [ -z "$bestv" ] || dpkg --compare-versions "$v" gt "$bestv"; then
            best=$d; bestv=$v
        fi
    done
    [ -z "$best" ] || echo "$best"
}

# Prints the newest cached source tarball's directory, if any.
newest_source() {
    local d v best="" bestv=""
    for d in "$CACHE"/linux-source-*/; do
        d=${d%/}
        { [ -s "$d/package" ] && [ -s "$d/linux-source.tar.xz" ]; } || continue
        v=$(cut -d= -f2 "$d/package")
        if [ -z "$bestv" ] || dpkg --compare-versions "$v" gt "$bestv"; then
            best=$d; bestv=$v
        fi
    done
    [ -z "$best" ] || echo "$best"
}

# Prints "URI KEYRING" of the machine's Debian archive (not the security
# archive), from its deb822 sources or, failing that, its one-line sources.
archive_source() {
    local uri="" keyring=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        read -r uri keyring < <(awk -v RS= '
            { uri = ""; key = ""
              n = split($0, l, "\n")
              for (i = 1; i <= n; i++) {
                  if (l[i] ~ /^URIs:/) { split(l[i], f, /[ \t]+/); uri = f[2] }
                  if (l[i] ~ /^Signed-By:/) { split(l[i], f, /[ \t]+/); key = f[2] }
              }
              if (uri != "" && uri !~ /security/) { print uri, key; exit } }' \
            /etc/apt/sources.list.d/debian.sources) || true
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(sed -nE '/security/d; s/^deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+).*/\2/p' /etc/apt/sources.list | head -n1)
    fi
    [ -n "$uri" ] || return 1
    # Signed-By may also be an inline key block; use the archive keyring then.
    [ -f "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "$uri $keyring"
}

# Sets up a private apt state in a new temporary directory, updates it from
# $SUITE and sets $apt_opts for apt-get/apt-cache. Fails when offline.
private_apt() {
    local dir uri keyring
    read -r uri keyring < <(archive_source) ||
        { log "cannot derive a Debian archive address from /etc/apt"; return 1; }
    # Runs as an `if` condition, where `set -e` is inert: check each step.
    dir=$(newtmp) && [ -n "$dir" ] || return 1
    mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/sources" "$dir/prefs" &&
        : >"$dir/status" || return 1
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: $SUITE"
        echo "Components: main"
        echo "Targets: Packages"     # no Contents, translations or DEP-11
        echo "Signed-By: $keyring"
    } >"$dir/sources/l1-kernel.sources"
    apt_opts=(
        -o "Dir::State=$dir" -o "Dir::State::lists=$dir/lists"
        -o "Dir::State::status=$dir/status"
        -o "Dir::Cache=$dir" -o "Dir::Cache::archives=$dir/archives"
        -o "Dir::Etc::sourcelist=$dir/sources/none.list"
        -o "Dir::Etc::sourceparts=$dir/sources"
        -o "Dir::Etc::preferences=$dir/prefs/none"
        -o "Dir::Etc::preferencesparts=$dir/prefs"
        -o "Acquire::Languages=none" -q
    )
    # As root, apt would drop to _apt, which cannot write under ~root.
    [ "$(id -u)" != 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
    log "updating a private apt list for $SUITE"
    apt-get "${apt_opts[@]}" update >&2
}

# Prints "package=version" of the newest linux-source-7.* the private apt
# state offers.
newest_offered() {
    local pkg ver src best="" bestv=""
    local names
    mapfile -t names < <(apt-cache "${apt_opts[@]}" pkgnames linux-source-7. | grep -E '^linux-source-7\.[0-9]+$')
    [ ${#names[@]} -gt 0 ] || return 0
    # madison lines: "pkg | version | <archive> <suite>/<component> <arch> Packages"
    while IFS='|' read -r pkg ver src; do
        pkg=${pkg// /}; ver=${ver// /}
        if [ -z "$bestv" ] || dpkg --compare-versions "$ver" gt "$bestv"; then
            best=$pkg; bestv=$ver
        fi
    done < <(apt-cache "${apt_opts[@]}" madison "${names[@]}")
    [ -z "$best" ] || echo "$best=$bestv"
}

# Downloads package=version ($1) with the private apt state and caches its
# source tarball; prints the cache directory. Older tarballs are removed.
fetch_source() {
    local pkgver=$1 pkg=${1%%=*} ver=${1#*=} dir tmp old
    dir="$CACHE/linux-source-$ver"
    if [ -s "$dir/linux-source.tar.xz" ] && [ -s "$dir/package" ]; then echo "$dir"; return 0; fi
    tmp=$(newtmp)
    log "downloading $pkgver"
    (cd "$tmp" && apt-get "${apt_opts[@]}" download "$pkgver" >&2)
    mkdir -p "$tmp/out"
    dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -xO "./usr/src/$pkg.tar.xz" >"$tmp/out/linux-source.tar.xz"
    [ -s "$tmp/out/linux-source.tar.xz" ] || { log "$pkgver has no /usr/src/$pkg.tar.xz"; return 1; }
    echo "$pkgver" >"$tmp/out/package"
    rm -rf "$dir"
    mv "$tmp/out" "$dir"
    for old in "$CACHE"/linux-source-*/; do
        old=${old%/}
        [ "$old" = "$dir" ] || rm -rf "$old"
    done
    echo "$dir"
}

# Builds from the cached source in $1 unless the build is cached; prints the
# build's directory.
build_from() {
    local srcdir=$1 pkgver ver dir work start
    pkgver=$(cat "$srcdir/package")
    ver=${pkgver#*=}
    dir="$CACHE/l1-kernel-$ver-$key"
    if complete "$dir"; then echo "$dir"; return 0; fi
    work=$(newtmp)
    start=$(date +%s)
    log "building the L1 kernel from $pkgver (config key $key)"
    build_kernel "$srcdir/linux-source.tar.xz" "$work" "$work/out"
    echo "$ver" >"$work/out/version"
    echo "$pkgver" >"$work/out/package"
    rm -rf "$dir"
    mv "$work/out" "$dir"
    log "built $(cat "$dir/release") from $pkgver in $(( $(date +%s) - start )) s: $dir"
    echo "$dir"
}

if [ -z "${L1_KERNEL_REFRESH:-}" ]; then
    dir=$(newest_build)
    if [ -n "$dir" ]; then echo "$dir"; exit 0; fi
fi

offered=""
if private_apt; then
    offered=$(newest_offered)
    [ -n "$offered" ] || log "no linux-source-7.* in the $SUITE list (offline?)"
else
    log "cannot update the private apt list (offline?)"
fi
if [ -n "$offered" ]; then
    if complete "$CACHE/l1-kernel-${offered#*=}-$key"; then
        echo "$CACHE/l1-kernel-${offered#*=}-$key"; exit 0
    fi
    srcdir=$(fetch_source "$offered")
    build_from "$srcdir"
    exit 0
fi
# Nothing from the archive: fall back to what is cached.
dir=$(newest_build)
if [ -n "$dir" ]; then
    log "using the cached build of $(cat "$dir/package")"
    echo "$dir"; exit 0
fi
srcdir=$(newest_source)
if [ -n "$srcdir" ]; then
    log "building from the cached $(cat "$srcdir/package")"
    build_from "$srcdir"
    exit 0
fi
log "no linux-source-7.* available from $SUITE and none cached"
exit 1
