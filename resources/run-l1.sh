#!/bin/bash
# Runs a host command inside an L1 Linux guest that has a working /dev/kvm.
#
# Usage: run-l1.sh [--disk-scratch DIR] [--env NAME]... -- COMMAND [ARG...]
#
# The host's /dev/kvm cannot run ordinary guests, so this boots Debian's 6.12
# kernel (resources/guest-kernel.sh) as an L1 under QEMU TCG with `-cpu max`,
# which offers SVM with nested paging; the L1 loads kvm-amd. The host's root
# filesystem is shared read-only over virtio-9p and mounted in L1 at /host
# under a tmpfs overlay (so the command can write anywhere; those writes live
# in L1's RAM and are discarded). L1's /dev, /proc and /sys are bind-mounted
# over /host/dev, /host/proc, /host/sys, and COMMAND runs by `chroot /host`
# in the caller's working directory with stdin from /dev/null: host-built
# binaries run unchanged and use L1's /dev/kvm.
#
#   --disk-scratch DIR  share host DIR read-write; inside the chroot it is at
#                       the same absolute path (also in $VMM_SCRATCH). Use it
#                       for disk images and for results that must survive.
#   --nvme IMG          give L1 an emulated NVMe controller backed by the raw
#                       image IMG (on this host) behind QEMU's emulated VT-d
#                       (scalable mode, interrupt remapping; L1 boots with
#                       intel_iommu=on iommu=pt), bound to vfio-pci in L1
#                       before COMMAND runs. COMMAND sees its VFIO cdev in
#                       $VMM_VFIO_NVME and its sysfs path in
#                       $VMM_VFIO_NVME_SYSFS.
#   --nvme-native IMG   a second NVMe controller (needs --nvme), left on
#                       L1's nvme driver: $VMM_NATIVE_NVME_SYSFS.
#                       L1_VTD_OPTS replaces the VT-d options
#                       (default intremap=on,x-scalable-mode=on).
#   --env NAME          forward host variable NAME (repeatable). PATH, HOME,
#                       USER, LANG, CI, RUST_BACKTRACE and RUST_LOG are
#                       always forwarded if set; VMM_IN_L1=1 is set.
#
# All L1 console output (the command's stdout/stderr) goes to stdout. L1
# prints `L1-CMD-START` just before it runs COMMAND (a run without it never
# got that far: QEMU or L1 trouble, not COMMAND's). The exit status is
# COMMAND's, read from the `L1-EXIT-STATUS=<n>` line the L1 prints last; 125
# if that line never appeared (timeout, panic, boot failure).
#
# One L1 at a time on this machine: runs queue on a lock in VMM_CACHE (two
# TCG machines on 2 cores starve each other's timers); set L1_PARALLEL=1 to
# skip the queue.
#
# L1 has one vCPU unless L1_SMP says otherwise. With two, QEMU's
# multi-threaded TCG running L1's KVM corrupts memory under exit-heavy L2
# work: L2 guests of this VMM and of QEMU/KVM alike triple-fault (a timer
# interrupt or a page fault that cannot be delivered), L2 vCPUs stop taking
# timer interrupts, and L1's own kernel panics ("corrupted stack end" in a
# KVM vCPU thread, inside shutdown_interception). An L2 that reads PCI
# config space through ECAM in a loop (each read an MMIO exit) brings it
# about within a minute, loaded or idle, also with kvm.enable_mmio_caching=0,
# kvm_amd.npt=0 or kvm_amd.vgif=0; with one L1 vCPU it does not happen
# (tests/guest/ecam-stress.sh, resources/README.md).
#
# Env: L1_TIMEOUT (seconds, default 600), L1_MEM (MiB, default 6144),
#      L1_SMP (default 1, see below), L1_TCG_OPTS (more -accel tcg options,
#      e.g. thread=single), L1_QEMU_EXTRA (extra QEMU arguments, split on
#      spaces, e.g. "-device igb" to look at a device's config space), L1_APPEND (extra L1 kernel arguments, e.g.
#      loglevel=7 to see its boot), VMM_CACHE (default ~/.cache/vmm),
#      L1_KERNEL_DIR (another L1 kernel: a directory with `vmlinuz` and
#      optionally `modules/`, e.g. the output of resources/l1-kernel.sh; the
#      L1 loads only those of its modules that exist there as files, so a
#      kernel with everything built in needs no modules/).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: $0 [--disk-scratch DIR] [--nvme IMG [--nvme-native IMG]] [--env NAME]... -- COMMAND [ARG...]" >&2; exit 2; }

scratch="" nvme="" nvme_native="" l1_idle="" envs=(PATH HOME USER LANG CI RUST_BACKTRACE RUST_LOG)
while [ $# -gt 0 ]; do
    case $1 in
        --disk-scratch) [ $# -ge 2 ] || usage; scratch=$2; shift 2 ;;
        --nvme) [ $# -ge 2 ] || usage; nvme=$(realpath "$2"); shift 2 ;;
        --nvme-native) [ $# -ge 2 ] || usage; nvme_native=$(realpath "$2"); shift 2 ;;
        --env) [ $# -ge 2 ] || usage; envs+=("$2"); shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
[ $# -ge 1 ] || usage

command -v qemu-system-x86_64 >/dev/null ||
    { echo "run-l1: qemu-system-x86_64 missing (run resources/host-setup.sh)" >&2; exit 125; }
CACHE=${VMM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/vmm}
if [ -n "${L1_KERNEL_DIR:-}" ]; then
    [ -s "$L1_KERNEL_DIR/vmlinuz" ] ||
        { echo "run-l1: no vmlinuz in L1_KERNEL_DIR=$L1_KERNEL_DIR" >&2; exit 125; }
    kdir=$(realpath "$L1_KERNEL_DIR")
    kernel_id=$(sha256sum <"$kdir/vmlinuz")
    # This kernel idles with MWAIT, which TCG does not emulate as a wait on
    # the monitored line: a CPU woken only by a store (no IPI) never wakes,
    # and L1 stalls with "timer wakeup didn't happen". HLT idles are woken
    # by interrupts.
    l1_idle="idle=halt"
else
    kdir=$("$here/guest-kernel.sh" | tail -n1)
    kernel_id=$(cat "$kdir/package")
fi

# The L1's test script (run by mkinitramfs.sh's /init after module loading).
# It gets the host path of the per-run directory from the kernel command line.
# shellcheck disable=SC2016  # expanded by the L1's shell, not here
l1_init='#!/bin/sh
for w in $(cat /proc/cmdline); do
    case $w in vmm.run=*) run=${w#vmm.run=} ;; esac
done
p9="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p /lower /upper /host
if ! mount -t 9p -o "$p9,ro,cache=loose" host /lower; then
    echo "L1: cannot mount the host 9p share"; exit 1
fi
mount -t tmpfs -o mode=755 tmpfs /upper
mkdir -p /upper/data /upper/work
if ! mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /host; then
    echo "L1: overlay failed; host root is read-only, /tmp is an empty tmpfs"
    mount -o bind /lower /host
    mount -t tmpfs tmpfs /host/tmp
fi
mount -o rbind /dev /host/dev
mount -o bind /proc /host/proc
mount -o bind /sys /host/sys
if [ ! -f "/host$run/cmd.sh" ]; then     # hidden by the fallback tmpfs
    mkdir -p "/host$run" && cp "/lower$run/cmd.sh" "/host$run/"
fi
if [ -s "/host$run/scratch" ]; then
    scratch=$(cat "/host$run/scratch")
    mkdir -p "/host$scratch"
    mount -t 9p -o "$p9,cache=mmap" scratch "/host$scratch" ||
        echo "L1: cannot mount the scratch 9p share"
fi
# NVMe controllers for passthrough tests (run-l1.sh --nvme): the one at
# slot 0x10 goes to vfio-pci, the one at 0x11 stays on the nvme driver.
vfio_bind() {
    d=/sys/bus/pci/devices/$1
    [ -e "$d" ] || return 1
    echo vfio-pci >"$d/driver_override"
    [ -e "$d/driver" ] && echo "$1" >"$d/driver/unbind"
    c=""
    for i in $(seq 1 50); do
        # Probing may still be under way (or not yet started) at boot.
        [ -e "$d/driver" ] || echo "$1" >/sys/bus/pci/drivers_probe 2>/dev/null
        c=$(ls "$d/vfio-dev" 2>/dev/null) && [ -n "$c" ] && [ -e "/dev/vfio/devices/$c" ] && break
        c=""
        sleep 0.2
    done
    [ -n "$c" ] || { dmesg | grep -E "$1|vfio" | tail -5; return 1; }
    export VMM_VFIO_NVME=/dev/vfio/devices/$c VMM_VFIO_NVME_SYSFS=$d
}
case " $(cat /proc/cmdline) " in *" vmm.nvme=1 "*)
    vfio_bind 0000:00:10.0 || echo "L1: cannot bind the NVMe to vfio-pci"
    [ -e /sys/bus/pci/devices/0000:00:11.0 ] &&
        export VMM_NATIVE_NVME_SYSFS=/sys/bus/pci/devices/0000:00:11.0
    ;;
esac
# Evidence for a guest that triple-faults: the events of L1 KVM, stopped by a
# trigger at the first exit to userspace for a shutdown (KVM_EXIT_SHUTDOWN
# is 8), so the buffer ends with the last exits of the faulting vCPU and their
# guest RIPs (KVM on AMD resets the vCPU before the VMM can read them).
tr=/sys/kernel/tracing
mount -t tracefs nodev $tr 2>/dev/null
if [ -e $tr/events/kvm/kvm_userspace_exit/trigger ]; then
    echo 4096 >$tr/buffer_size_kb
    echo "traceoff if reason == 8" >$tr/events/kvm/kvm_userspace_exit/trigger
    echo 1 >$tr/events/kvm/enable
fi
# Evidence for a command that hangs: shortly before the time limit, the
# state of every vmm thread (scheduler state, wait channel, kernel stack),
# the counters of the VMM (SIGUSR1) and the stacks of blocked L1 tasks.
for w in $(cat /proc/cmdline); do
    case $w in vmm.watchdog=*) watchdog=${w#vmm.watchdog=} ;; esac
done
if [ -n "${watchdog:-}" ]; then
    (
        sleep "$watchdog"
        echo "L1-WATCHDOG: the command is still running after $watchdog s"
        for c in /proc/[0-9]*/comm; do
            [ "$(cat "$c" 2>/dev/null)" = vmm ] || continue
            p=${c#/proc/}; p=${p%/comm}
            kill -USR1 "$p" 2>/dev/null
            for t in /proc/$p/task/*; do
                echo "L1-WATCHDOG: vmm $p thread $(cat "$t/comm") state=$(cut -d" " -f3 "$t/stat") wchan=$(cat "$t/wchan")"
                sed "s/^/L1-WATCHDOG:   /" "$t/stack" 2>/dev/null
            done
        done
        grep -E "^ *(LOC|RES|CAL):" /proc/interrupts | sed "s/^/L1-WATCHDOG: /"
        # Armed hrtimers per L1 CPU (the LAPIC timer of a guest vCPU is
        # apic_timer_fn) and the next_event of each clock event device: a
        # timer whose expiry is long past the now-at line means that the
        # timer of L1 itself stopped.
        grep -vE "^ *$" /proc/timer_list | sed "s/^/L1-WATCHDOG-TIMERS: /"
        echo w >/proc/sysrq-trigger
        # The last KVM events of each vCPU thread: where each guest vCPU
        # was (RIP) when it last exited, and whether it still exits.
        if [ -e $tr/events/kvm/enable ]; then
            echo 0 >$tr/tracing_on
            for v in $(grep -oE "^ *vcpu[0-9]+-[0-9]+ " $tr/trace | sort -u); do
                grep -F " $v " $tr/trace | tail -n 30 | sed "s/^ */L1-WATCHDOG-KVM: /"
            done
        fi
    ) &
fi
printf "\nL1-CMD-START\n"
chroot /host /bin/bash "$run/cmd.sh" </dev/null
rc=$?
shutdown=""
# Other CPUs may add a few events before the trigger stops the trace.
[ -e $tr/events/kvm/enable ] && [ "$(cat $tr/tracing_on)" = 0 ] &&
    shutdown=$(grep -v "^#" $tr/trace | tail -n 100 | grep KVM_EXIT_SHUTDOWN | tail -n 1)
case $shutdown in *KVM_EXIT_SHUTDOWN*)
    # The vCPU thread that exited for the shutdown.
    task=$(echo "$shutdown" | awk "{print \$1}")
    grep -F " $task " $tr/trace | tail -n 40 | sed "s/^ */L1-KVM-SHUTDOWN: /"
    grep -v "^#" $tr/trace | tail -n 400 | sed "s/^/L1-KVM-TRACE: /"
    ;;
esac
printf "\nL1-CMD-STATUS=%d\n" "$rc"
sync
printf "\nL1-EXIT-STATUS=%d\n" "$rc"
'
# Modules the L1 needs (dependencies are added by mkinitramfs.sh). Only those
# present as module files are loaded: the others are built into the kernel
# (or missing from it, which the command will notice).
modules=()
declare -A have_ko=()
if [ -d "$kdir/modules" ]; then
    while read -r f; do
        f=${f%%.ko*}; have_ko[${f//-/_}]=1
    done < <(find "$kdir/modules" -name '*.ko*' -printf '%f\n')
fi
for m in kvm-amd 9p 9pnet_virtio overlay; do
    [ -z "${have_ko[${m//-/_}]:-}" ] || modules+=("$m")
done

if [ -z "${L1_PARALLEL:-}" ]; then
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.run-l1.lock"
    flock 8
fi

# Build (or reuse) the L1 initramfs, keyed by everything that goes into it.
key=$( { cat "$here/mkinitramfs.sh"; echo "$l1_init"; echo "${modules[*]}";
         echo "$kernel_id"; sha256sum "$(command -v busybox)"; } | sha256sum | cut -c1-16)
initrd="$CACHE/l1-initramfs-$key.cpio.gz"
if [ ! -s "$initrd" ]; then
    tmp=$(mktemp)
    echo "$l1_init" >"$tmp"
    # mkinitramfs.sh writes OUT atomically (temp file + rename in OUT's dir).
    GUEST_KERNEL_DIR=$kdir "$here/mkinitramfs.sh" "$initrd" "$tmp" ${modules[@]+"${modules[@]}"}
    rm -f "$tmp"
fi

# Per-run directory on the host, read by L1 over 9p (its path goes on the
# kernel command line, so it must not contain whitespace).
tmpdir=${TMPDIR:-/tmp}
[[ "$tmpdir" != *[[:space:]]* ]] || tmpdir=/tmp
run=$(mktemp -d "$tmpdir/run-l1.XXXXXX")
run=$(realpath "$run")
trap 'rm -rf "$run"' EXIT
chmod 755 "$run"

# The command script, run by the host's bash inside the chroot.
{
    echo "#!/bin/bash"
    echo "export VMM_IN_L1=1 TERM=dumb"
    for name in "${envs[@]}"; do
        [ -n "${!name+set}" ] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    echo "[ -n \"\${HOME:-}\" ] || export HOME=/root"
    printf 'cd -- %q || exit 126\n' "$PWD"
    printf '%q ' "$@"
    echo
} >"$run/cmd.sh"

virtfs=(-virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
if [ -n "$scratch" ]; then
    mkdir -p "$scratch"
    scratch=$(realpath "$scratch")
    [[ "$scratch" != *,* ]] || { echo "run-l1: scratch path must not contain a comma" >&2; exit 2; }
    echo "$scratch" >"$run/scratch"
    printf 'export VMM_SCRATCH=%q\n' "$scratch" | cat - "$run/cmd.sh" >"$run/cmd.tmp"
    mv "$run/cmd.tmp" "$run/cmd.sh"
    virtfs+=(-virtfs "local,path=$scratch,mount_tag=scratch,security_model=none,multidevs=remap")
fi

machine=q35 devices=() append=""
if [ -n "$nvme" ]; then
    # The IOMMU must come before the devices it translates for.
    machine=q35,kernel-irqchip=split
    devices+=(-device "intel-iommu,${L1_VTD_OPTS:-intremap=on,x-scalable-mode=on}"
              -drive "file=$nvme,if=none,id=nvme0,format=raw,cache=writeback"
              -device "nvme,serial=vmmvfio0,drive=nvme0,addr=0x10")
    if [ -n "$nvme_native" ]; then
        devices+=(-drive "file=$nvme_native,if=none,id=nvme1,format=raw,cache=writeback"
                  -device "nvme,serial=vmmnative1,drive=nvme1,addr=0x11")
    fi
    append="intel_iommu=on vmm.nvme=1"
fi

# The L1 watchdog fires 40 s before the time limit (see l1_init).
watchdog=$(( ${L1_TIMEOUT:-600} > 80 ? ${L1_TIMEOUT:-600} - 40 : 40 ))

# QEMU's monitor on a pair of FIFOs ($run/monitor.in, $run/monitor.out):
# shortly before the time limit, the registers of every L1 vCPU and the
# first one's local APIC (pending interrupts, timer) go to the console (`L1-QEMU-MONITOR:`
# lines), for an L1 that is frozen and so cannot print its own watchdog
# lines (is a vCPU in L2 guest mode, where; is an L1 interrupt waiting).
mkfifo "$run/monitor.in" "$run/monitor.out"
(
    sleep $(( ${L1_TIMEOUT:-600} > 20 ? ${L1_TIMEOUT:-600} - 8 : 12 ))
    timeout 5 cat "$run/monitor.out" | tr -d '\r' | grep -v "^(qemu)" |
        sed "s/^/L1-QEMU-MONITOR: /" >>"$run/monitor.log" &
    printf 'info cpus\ninfo registers -a\ninfo lapic\n' >"$run/monitor.in"
    wait
) </dev/null >/dev/null 2>&1 8>&- &
monitor=$!

set +e
# shellcheck disable=SC2086  # L1_QEMU_EXTRA is a list of arguments
timeout -k 10 "${L1_TIMEOUT:-600}" qemu-system-x86_64 \
    -accel "tcg${L1_TCG_OPTS:+,$L1_TCG_OPTS}" -machine "$machine" -cpu max -m "${L1_MEM:-6144}" -smp "${L1_SMP:-1}" \
    -display none -serial stdio -chardev "pipe,id=mon,path=$run/monitor" \
    -mon chardev=mon,mode=readline -no-reboot -nic none \
    -kernel "$kdir/vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 vmm.run=$run vmm.watchdog=$watchdog $append $l1_idle ${L1_APPEND:-}" \
    ${devices[@]+"${devices[@]}"} "${virtfs[@]}" ${L1_QEMU_EXTRA:-} </dev/null |
    {
        watch=""
        while IFS= read -r line; do
            printf '%s\n' "$line"
            printf '%s\n' "$line" >>"$run/console.log"
            # Once the command is done, L1 gets 30 s to sync and power
            # off; an L1 that hangs after it (seen with timer stalls in L1
            # under TCG after passthrough runs) is stopped, not waited for.
            case $line in
                L1-CMD-STATUS=*)
                    (sleep 30; pkill -f "vmm.run=$run " || true) </dev/null >/dev/null 2>&1 8>&- &
                    watch=$! ;;
            esac
        done
        # A last line without a newline (a hung or killed L1).
        if [ -n "$line" ]; then
            printf '%s\n' "$line"
            printf '%s\n' "$line" >>"$run/console.log"
        fi
        [ -z "$watch" ] || kill "$watch" 2>/dev/null || true
    }
qemu_rc=${PIPESTATUS[0]}
set -e
pkill -P "$monitor" 2>/dev/null || true
kill "$monitor" 2>/dev/null || true
if [ -s "$run/monitor.log" ]; then
    cat "$run/monitor.log"
    cat "$run/monitor.log" >>"$run/console.log"
fi

touch "$run/console.log"
status=$(tr -d '\r' <"$run/console.log" | grep -aE '^L1-EXIT-STATUS=[0-9]+$' | tail -n1 | cut -d= -f2 || true)
if [ -z "$status" ]; then
    status=$(tr -d '\r' <"$run/console.log" | grep -aE '^L1-CMD-STATUS=[0-9]+$' | tail -n1 | cut -d= -f2 || true)
    [ -z "$status" ] || echo "run-l1: WARNING: L1 hung after the command finished; stopped it" >&2
fi
if [ -z "$status" ]; then
    if [ "$qemu_rc" = 124 ]; then
        echo "run-l1: timed out after ${L1_TIMEOUT:-600} s" >&2
    else
        echo "run-l1: L1 ended without an exit status (qemu exit $qemu_rc)" >&2
    fi
    exit 125
fi
exit "$status"
