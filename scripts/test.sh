#!/usr/bin/env bash
# Runs sluice's whole test suite: the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# A CI run builds once from a fresh clone: incremental caches would only cost
# it disk (gigabytes over the test binaries) and time.
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi

# Lints first: they are cheap next to the tests and fail fast.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The fuzz targets live outside the workspace (cargo-fuzz layout; they are
# run by hand, see transport/fuzz/Cargo.toml): they must keep compiling.
# Not --locked: a dependency added to the workspace's crates is added to
# their lock files (what is pinned there stays); commit what changes.
for fuzz in transport/fuzz xdp/fuzz daemon/fuzz; do
    rustfmt --check --edition 2021 "$fuzz"/fuzz_targets/*.rs
    CARGO_TARGET_DIR=target/fuzz cargo clippy --manifest-path "$fuzz/Cargo.toml" -- -D warnings
done

cargo test --workspace --locked
