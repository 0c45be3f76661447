#!/bin/bash
# Runs every test: formatting and lints, unit tests, the real-guest
# integration tests (nested L1 under QEMU TCG) and the guest benchmark.
# Installs what it needs on a fresh Debian machine; caches kernels and
# images under ~/.cache/vmm.
set -euo pipefail
cd "$(dirname "$0")/.."

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
