#!/bin/bash
# Builds a busybox-static initramfs (gzip'ed newc cpio) for a test guest.
#
# Usage: mkinitramfs.sh [--file SRC=DST]... OUT.cpio.gz INIT_SCRIPT [MODULE...]
#
# The image's /init mounts proc, sysfs, devtmpfs (and tmpfs on /tmp, /run),
# loads the named kernel modules in order (each preceded by the modules it
# depends on, taken from its modinfo "depends="), runs INIT_SCRIPT (copied to
# /init-test, made executable; give it a #!/bin/sh line) and powers off.
# Modules are looked up by name ("kvm-amd" or "kvm_amd") in the modules tree
# of the kernel that guest-kernel.sh caches (or $GUEST_KERNEL_DIR) and stored
# decompressed, since busybox insmod does not read .ko.xz/.ko.zst.
# --file copies an extra host file (e.g. a static test binary) to DST.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: $0 [--file SRC=DST]... OUT.cpio.gz INIT_SCRIPT [MODULE...]" >&2; exit 2; }

extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --file) [ $# -ge 2 ] || usage; extra+=("$2"); shift 2 ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
out=$1 init_test=$2
shift 2
[ -f "$init_test" ] || { echo "mkinitramfs: no such file: $init_test" >&2; exit 1; }
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "mkinitramfs: busybox not found (run resources/host-setup.sh)" >&2; exit 1; }
# busybox must be static: the initramfs has no libc.
if ldd "$busybox" >/dev/null 2>&1; then
    echo "mkinitramfs: $busybox is dynamically linked; install busybox-static" >&2; exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,lib/modules,root}
cp "$busybox" "$root/bin/busybox"
# Equivalent of `busybox --install -s` for a tree we are not chrooted into.
busybox --list-full | while read -r applet; do
    case $applet in linuxrc|bin/busybox) continue ;; esac
    ln -sf /bin/busybox "$root/$applet"
done
# An initial console for the kernel to open before /init runs (needs root;
# /init also re-opens it from devtmpfs).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true

# Kernel modules, dependencies first.
: >"$root/etc/modules"
if [ $# -gt 0 ]; then
    kdir=${GUEST_KERNEL_DIR:-$("$here/guest-kernel.sh" | tail -n1)}
    declare -A loaded=()
    add_module() {
        local name=${1//-/_} file dep deps
        [ -z "${loaded[$name]:-}" ] || return 0
        file=$(find "$kdir/modules" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) -print -quit)
        if [ -z "$file" ]; then
            if grep -Eq "/($name|${name//_/-})\.ko\$" "$kdir/modules/modules.builtin" 2>/dev/null; then
                loaded[$name]=1; return 0     # built into this kernel
            fi
            echo "mkinitramfs: module $1 not found in $kdir/modules" >&2; exit 1
        fi
        case $file in
            *.xz) if command -v xz >/dev/null; then xz -dc "$file"; else busybox xzcat "$file"; fi ;;
            *.zst) zstd -qdc "$file" ;;
            *.gz) gzip -dc "$file" ;;
            *) cat "$file" ;;
        esac >"$root/lib/modules/$name.ko"
        loaded[$name]=1
        deps=$(tr '\0' '\n' <"$root/lib/modules/$name.ko" | sed -n 's/^depends=//p')
        for dep in ${deps//,/ }; do add_module "$dep"; done
        echo "$name" >>"$root/etc/modules"
    }
    for m in "$@"; do add_module "$m"; done
fi

for spec in ${extra[@]+"${extra[@]}"}; do
    src=${spec%%=*} dst=${spec#*=}
    [ "$src" != "$spec" ] && [ -n "$dst" ] || usage
    mkdir -p "$root/$(dirname "$dst")"
    cp -L "$src" "$root/$dst"
done

install -m 755 "$init_test" "$root/init-test"
cat >"$root/init" <<'EOF'
#!/bin/sh
# PID 1: basic mounts, modules, the test script, power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "init: insmod $m failed"
done </etc/modules
/init-test
rc=$?
[ $rc -eq 0 ] || echo "init: /init-test exited with status $rc"
# Per-CPU timer evidence for post-mortems of runs that stall on the way
# down: local timer interrupts, timer softirqs, the clock devices.
{
    grep -E '^ *LOC:' /proc/interrupts
    grep -E '^ *(TIMER|HRTIMER|RCU):' /proc/softirqs
    echo "clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)" \
        "clockevent=$(cat /sys/devices/system/clockevents/clockevent0/current_device 2>/dev/null)"
} | tr -s ' ' | sed 's/^/INIT-TIMERS: /'
sync
poweroff -f
echo o >/proc/sysrq-trigger
sleep 10
EOF
chmod 755 "$root/init"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$out.tmp.$$"
mv "$out.tmp.$$" "$out"
