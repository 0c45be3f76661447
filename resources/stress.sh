#!/bin/bash
# Runs real-guest tests back to back to find rare failures: unexpected
# guest resets, hangs, data mismatches. Not part of test-all.sh (a hundred
# runs take about two hours on 2 cores).
#
# Usage: resources/stress.sh [-n RUNS] [FILE:TEST]...
#
# Each run is one test of tests/tests/FILE.rs (one guest boot in the nested
# L1), taken in turn from the list; the default list covers the boot, vIOMMU
# and passthrough tests (2-4 vCPUs, disk I/O behind the vIOMMU in strict and
# lazy mode, shadow passthrough). Reruns are not allowed (the harness fails a
# run whose guest hung or reset), so every irregularity counts.
#
# Output: one line per run (`run N/RUNS FILE:TEST ok|FAILED SECONDS`), the
# failing runs' consoles under target/stress/<N>-<test>/, and at the end
# `stress: N passed, M failed`. Exit status 0 only if every run passed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=100
while [ $# -gt 0 ]; do
    case $1 in
        -n) runs=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=(
        boot:boot_four_vcpus_disk_round_trip
        viommu:scalable_mode_first_stage_lazy
        viommu:scalable_mode_strict
        vfio:passthrough_shadow_strict
        boot:boot_one_vcpu_disk_round_trip
        viommu:legacy_mode_second_stage
        vfio:passthrough_shadow_lazy_becomes_strict
        viommu:caching_mode_makes_the_guest_strict
        vfio:passthrough_without_viommu_and_bad_input
        viommu:pass_through
    )
fi

bash resources/host-setup.sh
bash resources/guest-kernel.sh >/dev/null
bash resources/l1-kernel.sh >/dev/null
cargo build --release --workspace --bins
files=$(printf '%s\n' "${tests[@]}" | cut -d: -f1 | sort -u | sed 's/^/--test /')
# shellcheck disable=SC2086  # one word per argument
cargo test --release -p guest-tests $files --no-run

out=target/stress
rm -rf "$out"
mkdir -p "$out"
rm -f target/guest-tests/retries.log
passed=0 failed=0
for ((i = 1; i <= runs; i++)); do
    t=${tests[$(((i - 1) % ${#tests[@]}))]}
    file=${t%%:*} name=${t#*:}
    start=$(date +%s)
    log="$out/run.log"
    touch "$out/.started"
    if VMM_TEST_ALLOW_RETRY= cargo test --release -q -p guest-tests --test "$file" "$name" \
            -- --exact >"$log" 2>&1; then
        verdict=ok passed=$((passed + 1))
    else
        verdict=FAILED failed=$((failed + 1))
        keep="$out/$i-$name"
        mkdir -p "$keep"
        cp "$log" "$keep/"
        # This run's consoles only (every test has its own scratch
        # directory; the others' are from earlier runs).
        find target/guest-tests -name 'console*.log' -newer "$out/.started" \
            -exec cp --parents -t "$keep" {} + 2>/dev/null || true
    fi
    echo "run $i/$runs $t $verdict $(($(date +%s) - start))"
done
[ ! -s target/guest-tests/retries.log ] || { echo "stress: irregular runs:"; cat target/guest-tests/retries.log; }
echo "stress: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
