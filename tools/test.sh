#!/usr/bin/env bash
# Runs donode's whole test suite. Installs what the tests need first (nginx as the real HTTP
# origin, b3sum as the reference hasher, curl, iproute2 for the namespace LANs, a font for the
# simulator's plots), builds the donode binary the integration tests
# drive, then runs every crate's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v b3sum >/dev/null 2>&1 || need+=(b3sum)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || need+=(iproute2)
# The simulator's plots need a TrueType font.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a packaged nginx on install; the tests run their own private instances.
if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi

cargo build -p donode -p do-p2p-probe
cargo test --workspace "$@"
