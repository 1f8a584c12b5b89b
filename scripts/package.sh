#!/usr/bin/env bash
# Builds the Debian package of sluiced and sluice (cargo-deb; what goes in
# it is [package.metadata.deb] in daemon/Cargo.toml):
#
#   scripts/package.sh [--profile dist|dev] [--no-build] [--fast] [--output DIR]
#
# --profile dist (the default): stripped, optimised binaries; dev: the
# debug build (cargo-deb warns that it is not for releases). --no-build
# packages the binaries already in the profile's folder (tests/package.rs
# packages the binaries its test build made, so CI compiles nothing
# twice). --fast: quicker compression, a larger file. The .deb goes to DIR
# (default: <target dir>/debian); its path is the last line printed.
# Needs cargo-deb (`cargo install cargo-deb --locked`; scripts/setup.sh
# installs it) and gzip.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dist
build=true
fast=false
output=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs dist or dev}"; shift 2 ;;
        --no-build) build=false; shift ;;
        --fast) fast=true; shift ;;
        --output) output="${2:?--output needs a folder}"; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$profile" in
    dist) dir=dist ;;
    dev) dir=debug ;;
    *) echo "package.sh: --profile is dist or dev, not $profile" >&2; exit 2 ;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: cargo-deb is not installed: cargo install cargo-deb --locked" >&2
    exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
bin="$target/$dir"
if $build; then
    cargo build --locked --profile "$profile" -p sluice-daemon --bins
fi
for b in sluiced sluice; do
    if [ ! -x "$bin/$b" ]; then
        echo "package.sh: no $bin/$b (build it, or drop --no-build)" >&2
        exit 1
    fi
done

# Manual pages and completions from the sluice being packaged: they come
# from the definitions that parse its arguments, so they match it. Where
# daemon/Cargo.toml's assets expect them (target/release/ there stands for
# the profile's folder).
assets="$bin/package"
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin/sluice" man --dir "$assets/man" >/dev/null
"$bin/sluice" man sluiced --dir "$assets/man" >/dev/null
# -n: no name or time stamp in the gzip header, so the same pages make the
# same bytes.
gzip -9n "$assets"/man/*.1
"$bin/sluice" completions bash >"$assets/completions/sluice"
"$bin/sluice" completions zsh >"$assets/completions/_sluice"
"$bin/sluice" completions fish >"$assets/completions/sluice.fish"

args=(deb -p sluice-daemon --no-build --profile "$profile")
# The dist profile strips its binaries itself; a dev package keeps its
# line tables (backtraces).
args+=(--no-strip)
if $fast; then
    args+=(--fast)
fi
if [ -n "$output" ]; then
    mkdir -p "$output"
    args+=(--output "$output")
fi
cargo "${args[@]}"
