#!/usr/bin/env bash
# Installs what sluice's tests need beyond a Rust toolchain. Idempotent: it only
# installs what is missing, and only when it can (as root with apt-get).
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing ${need[*]}; not root or no apt-get, so the tests that need them will skip" >&2
    exit 0
fi
echo "setup: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A failed install is not fatal here: the tests that need a tool check for it
# and say what is missing when they run.
if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
    echo "setup: could not install ${need[*]}; tests that need them will report it" >&2
fi
