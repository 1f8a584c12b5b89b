#!/usr/bin/env bash
# Runs sluice's whole test suite: the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# Lints first: they are cheap next to the tests and fail fast.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

cargo test --workspace --locked
