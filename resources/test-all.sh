#!/bin/bash
# Runs every test: formatting and lints, unit tests, the real-guest
# integration tests (nested L1 under QEMU TCG) and the guest benchmark.
# Installs what it needs on a fresh Debian machine; caches kernels and
# images under ~/.cache/vmm.
set -euo pipefail
cd "$(dirname "$0")/.."

bash resources/host-setup.sh
bash resources/guest-kernel.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --workspace --bins
# Unit tests, CLI tests and the guest boot tests (which need the release vmm).
cargo test --release --workspace
# Figures only: the benchmarks print, they do not judge.
cargo bench -p viommu --bench translate
cargo bench -p guest-tests --bench guest
