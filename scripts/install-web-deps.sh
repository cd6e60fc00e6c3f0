#!/usr/bin/env bash
# install-web-deps.sh — what the dashboard's build and browser tests need, installed
# only when missing: Debian's chromium (+ chromium-driver) through apt, and the npm
# packages pinned by web/package-lock.json (uPlot), tests/browser/package-lock.json
# (playwright-core) and tests/openapi/package-lock.json (swagger-parser, the API
# document's linter) through `npm ci`. Never fails the caller: what cannot be installed
# is reported, the build then leaves the charts out and the browser test skips.
set -uo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-web-deps: installing chromium (apt)"
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
        >/dev/null 2>&1 || echo "install-web-deps: chromium could not be installed: the browser test will skip" >&2
fi
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "install-web-deps: installing nodejs and npm (apt)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null 2>&1 ||
        echo "install-web-deps: npm could not be installed: no charts, no browser test, no API lint" >&2
fi
if command -v npm >/dev/null 2>&1; then
    for dir in web tests/browser tests/openapi; do
        if [ ! -d "$dir/node_modules" ]; then
            echo "install-web-deps: npm ci in $dir"
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) ||
                echo "install-web-deps: npm ci failed in $dir" >&2
        fi
    done
fi
exit 0
