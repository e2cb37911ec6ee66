#!/usr/bin/env bash
# Make sure a Chromium the browser tests can drive exists at /usr/bin/chromium.
#
# The browser tests (tests/browser/) use Playwright's Python package only as a driver:
# browser downloads (`playwright install`) do not work here, so they launch Debian's
# `chromium` package through executable_path="/usr/bin/chromium".
#
# Usage: scripts/ensure_chromium.sh   (as root, or with sudo available)
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $CHROMIUM is missing and apt-get is not available;" >&2
    echo "       install Chromium so that $CHROMIUM exists, then run the browser tests." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: $CHROMIUM is missing; installing it needs root (or sudo):" >&2
        echo "       apt-get update && apt-get install -y chromium" >&2
        exit 1
    fi
fi

echo "installing Debian's chromium with apt-get ..."
if ! $SUDO apt-get update; then
    echo "error: apt-get update failed; cannot install chromium (network or apt sources?)." >&2
    exit 1
fi
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium; then
    echo "error: apt-get install chromium failed; install it by hand so that $CHROMIUM exists." >&2
    exit 1
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "error: the chromium package was installed but $CHROMIUM does not exist." >&2
    exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
