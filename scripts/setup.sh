#!/usr/bin/env bash
# Set up callbox on a fresh Debian machine: system packages (only those missing), a virtual
# environment in .venv, and the package. Sourced by demo.sh and test.sh; safe to run again.
# Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(espeak-ng sip-tester baresip-core sox libsox-fmt-all ffmpeg)
# python3-venv is only needed when this python cannot make a venv with pip by itself.
python3 -c 'import ensurepip, venv' 2>/dev/null || APT_PACKAGES+=(python3-venv)
# Kamailio plays the carrier (registrar + authenticating proxy) in the trunk tests.
# Chromium drives the console's browser tests (Playwright uses it; never `playwright install`).
# nats-server is the bus of the RELAY-across-nodes tests; PostgreSQL 15 the shared metadata
# database of the cluster tests (a throwaway cluster); HAProxy the load balancer in front of
# the RELAY nodes.
[ "${1:-}" = "--test" ] && APT_PACKAGES+=(kamailio chromium nats-server postgresql haproxy)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
echo "==> installing callbox${extra} into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"

# Tests run the official SignalWire SDK as a peer (RELAY client, agents JSON oracle). It lives in
# its own virtual environment and is never imported by callbox itself.
if [ "${1:-}" = "--test" ]; then
  [ -x .venv-sw/bin/python ] || python3 -m venv .venv-sw
  if ! .venv-sw/bin/python -c 'import signalwire' 2>/dev/null; then
    echo "==> installing the official signalwire-sdk into .venv-sw (test peer)"
    .venv-sw/bin/pip install -q --disable-pip-version-check "signalwire-sdk==3.7.5"
  fi
fi
