#!/bin/bash
# Boots many L2 guests inside one L1, alternately with this VMM and with
# QEMU/KVM, and counts for each how many hung, reset or lost data: it tells
# a defect of the VMM from one of the nested platform (QEMU TCG running L1,
# L1's KVM running L2), which both VMMs share.
#
# Usage: resources/stress-l2.sh [-n PAIRS] [-c CPUS] [-m MODE] [-q]
#
#   -n PAIRS  guest pairs (one per VMM) to boot (default 20)
#   -c CPUS   vCPUs of each L2 guest (default 2)
#   -m MODE   what the L2 guest's disk sits behind (default strict):
#             strict   emulated VT-d, iommu.strict=1 (an invalidation per unmap)
#             lazy     emulated VT-d, the default flush queue
#             none     no vIOMMU
#   -q        QEMU only; -v: this VMM only
#
# Every L2 guest runs tests/guest/iommu-check.sh: a 64 MiB O_DIRECT write
# and read-back through a virtio-blk disk. Its verdict is `ok` (checks done,
# read-back hash = written hash, clean exit), `hung` (no exit within
# L2_TIMEOUT, default 240 s), `reset` (the VMM exited as on a guest reset)
# `panic` (the guest kernel panicked) or `bad` (anything else). Output:
# one line per guest, `stress-l2: I VMM VERDICT SECONDS`, the consoles of
# the guests that were not ok under target/stress-l2/<start time>/, and a
# summary per VMM. L1 runs with L1_TIMEOUT large
# enough for all guests.
set -euo pipefail
cd "$(dirname "$0")/.."

pairs=20 cpus=2 mode=strict which=both
while [ $# -gt 0 ]; do
    case $1 in
        -n) pairs=$2; shift 2 ;;
        -c) cpus=$2; shift 2 ;;
        -m) mode=$2; shift 2 ;;
        -q) which=qemu; shift ;;
        -v) which=vmm; shift ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stress-l2: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $mode in
    strict) append="intel_iommu=on iommu.strict=1" ;;
    lazy) append="intel_iommu=on" ;;
    none) append="" ;;
    *) echo "stress-l2: unknown mode $mode" >&2; exit 2 ;;
esac

bash resources/host-setup.sh
kdir=$(bash resources/guest-kernel.sh | tail -n1)
cargo build --release -q --bin vmm
out=$(pwd)/target/stress-l2/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
bash resources/mkinitramfs.sh "$out/guest.cpio.gz" tests/guest/iommu-check.sh virtio_blk >/dev/null

# The loop that runs inside L1 (in the host's root, through run-l1.sh).
cat >"$out/loop.sh" <<EOF
#!/bin/bash
out=$out kernel=$kdir/vmlinuz cpus=$cpus mode=$mode pairs=$pairs which=$which
append="console=ttyS0 quiet panic=-1 $append"
vmm=$(pwd)/target/release/vmm
timeout=\${L2_TIMEOUT:-240}
EOF
cat >>"$out/loop.sh" <<'EOF'
run_vmm() {
    local args=(--kernel "$kernel" --initramfs "$out/guest.cpio.gz" --cmdline "$append"
                --memory 512M --cpus "$cpus")
    if [ "$mode" = none ]; then
        args+=(--disk "path=$1")
    else
        args+=(--disk "path=$1,iommu=on" --viommu intel)
    fi
    timeout "$timeout" "$vmm" "${args[@]}"
}
run_qemu() {
    local iommu=() dev=virtio-blk-pci,drive=d,disable-legacy=on
    if [ "$mode" != none ]; then
        iommu=(-device intel-iommu,intremap=on)
        dev+=,iommu_platform=on
    fi
    timeout "$timeout" qemu-system-x86_64 -accel kvm -cpu host -nodefaults -no-reboot \
        -machine q35,kernel-irqchip=split -smp "$cpus" -m 512M "${iommu[@]}" \
        -kernel "$kernel" -initrd "$out/guest.cpio.gz" -append "$append" \
        -drive "file=$1,if=none,id=d,format=raw,cache=none" -device "$dev" \
        -display none -serial stdio -monitor none
}
verdict() {   # status console
    local rc=$1 log=$2
    [ "$rc" -eq 124 ] && { echo hung; return; }
    local src read
    src=$(sed -n 's/.*SRC-SHA=\([0-9a-f]*\).*/\1/p' "$log" | head -1)
    read=$(sed -n 's/.*READ-SHA=\([0-9a-f]*\).*/\1/p' "$log" | head -1)
    if [ "$rc" -eq 0 ] && grep -q GUEST-CHECKS-DONE "$log" && [ -n "$src" ] && [ "$src" = "$read" ]; then
        echo ok
    elif grep -q "Kernel panic" "$log"; then
        echo panic
    elif [ "$rc" -eq 3 ] || grep -q "reboot: Restarting" "$log"; then
        echo reset
    else
        echo bad
    fi
}
declare -A n
for ((i = 1; i <= pairs; i++)); do
    for v in vmm qemu; do
        [ "$which" = both ] || [ "$which" = "$v" ] || continue
        disk=/tmp/l2-disk.img
        rm -f "$disk"; truncate -s 96M "$disk"
        log=$out/$i-$v.log
        start=$(date +%s)
        set +e; "run_$v" "$disk" >"$log" 2>&1; rc=$?; set -e
        verd=$(verdict "$rc" "$log")
        n[$v-$verd]=$(( ${n[$v-$verd]:-0} + 1 ))
        echo "stress-l2: $i $v $verd $(( $(date +%s) - start ))s rc=$rc"
        [ "$verd" = ok ] && rm -f "$log"
    done
done
for v in vmm qemu; do
    [ "$which" = both ] || [ "$which" = "$v" ] || continue
    echo "stress-l2: summary $v ok=${n[$v-ok]:-0} hung=${n[$v-hung]:-0} reset=${n[$v-reset]:-0}" \
         "panic=${n[$v-panic]:-0} bad=${n[$v-bad]:-0}"
done
EOF

per=$(( ${L2_TIMEOUT:-240} + 10 ))
guests=$pairs
[ "$which" != both ] || guests=$(( pairs * 2 ))
L1_TIMEOUT=$(( guests * per + 120 )) bash resources/run-l1.sh --env L2_TIMEOUT \
    --disk-scratch "$out" -- bash "$out/loop.sh" | tee "$out/l1.log" | grep --line-buffered "stress-l2:"
