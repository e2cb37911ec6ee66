#!/usr/bin/env bash
# Make sure nginx exists at /usr/sbin/nginx, for `make cluster` and the nginx end-to-end
# tests (tests/e2e/test_nginx_cluster.py). Those run their own private nginx (its own
# prefix, config and logs in a temporary folder), never the system service, so this
# script only installs the binary: it neither enables nor starts a service.
#
# Usage: scripts/ensure_nginx.sh   (as root, or with sudo available)
set -euo pipefail

NGINX=/usr/sbin/nginx

if [ -x "$NGINX" ]; then
    echo "nginx present: $("$NGINX" -v 2>&1 || echo "$NGINX")"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $NGINX is missing and apt-get is not available;" >&2
    echo "       install nginx so that $NGINX exists, then run make cluster or the tests." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "error: $NGINX is missing; installing it needs root (or sudo):" >&2
        echo "       apt-get update && apt-get install -y nginx" >&2
        exit 1
    fi
fi

echo "installing Debian's nginx with apt-get ..."
if ! $SUDO apt-get update; then
    echo "error: apt-get update failed; cannot install nginx (network or apt sources?)." >&2
    exit 1
fi
# policy-rc.d 101: the package must not start the system nginx service (we run our own).
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ -n "$CREATED_POLICY" ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends nginx; then
    echo "error: apt-get install nginx failed; install it by hand so that $NGINX exists." >&2
    exit 1
fi

if [ ! -x "$NGINX" ]; then
    echo "error: the nginx package was installed but $NGINX does not exist." >&2
    exit 1
fi
echo "nginx installed: $("$NGINX" -v 2>&1 || echo "$NGINX")"
