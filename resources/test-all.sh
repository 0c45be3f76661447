#!/bin/bash
# Runs every test: formatting and lints, unit tests, the real-guest
# integration tests (nested L1 under QEMU TCG) and the guest benchmark.
# Installs what it needs on a fresh Debian machine; caches kernels and
# images under ~/.cache/vmm.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every rerun or L1 irregularity of the guest tests is recorded here
# (tests/src/lib.rs) and printed at the end, pass or fail: libtest hides a
# passing test's stderr. A guest that hung or reset unexpectedly fails its
# test unless VMM_TEST_ALLOW_RETRY=1 (README, "Tests").
retries=target/guest-tests/retries.log
rm -f "$retries"
report_retries() {
    if [ -s "$retries" ]; then
        echo "test-all: WARNING: guest runs that were rerun or irregular ($(wc -l <"$retries")):"
        sed 's/^/  /' "$retries"
        if grep -q '^rerun:\(hung\|unexpected-reset\)' "$retries"; then
            echo "test-all: WARNING: without VMM_TEST_ALLOW_RETRY=1 this run would have failed"
        fi
    else
        echo "test-all: no guest run was rerun"
    fi
}
trap report_retries EXIT

bash resources/host-setup.sh
bash resources/guest-kernel.sh >/dev/null
# The L1 kernel with iommufd, VFIO cdev and the iommufd mock (passthrough
# tests): cached by its config; a cold build (~20 min on 2 cores, at low
# priority) overlaps the Rust build below.
l1log=$(mktemp)
bash resources/l1-kernel.sh >"$l1log" 2>&1 &
l1pid=$!

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Dependency licenses, bans and sources (deny.toml). The advisory database
# lives on a host this machine kind cannot reach, so advisories are not
# checked here.
command -v cargo-deny >/dev/null || cargo install --locked -q cargo-deny
cargo deny --offline check licenses bans sources
cargo build --release --workspace --bins
if ! wait "$l1pid"; then
    tail -n 50 "$l1log"
    echo "test-all: building the L1 kernel failed" >&2
    exit 1
fi
tail -n 1 "$l1log"
rm -f "$l1log"
# Unit tests, CLI tests and the guest boot tests (which need the release vmm).
cargo test --release --workspace
# Figures only: the benchmarks print, they do not judge.
cargo bench -p viommu --bench translate
cargo bench -p guest-tests --bench guest
cargo bench -p guest-tests --bench passthrough
