#!/usr/bin/env bash
# lint.sh — ctest's openapi_lint: docs/openapi.yaml through swagger-parser (lint.mjs).
# Exits 77 (ctest's skip) with a message where node or the pinned package is absent
# (scripts/install-web-deps.sh runs `npm ci` here).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
spec="${1:-$here/../../docs/openapi.yaml}"
if ! command -v node >/dev/null 2>&1; then
    echo "openapi_lint: skipped: node is not installed (scripts/install-web-deps.sh installs it)"
    exit 77
fi
if [ ! -d "$here/node_modules/@apidevtools/swagger-parser" ]; then
    echo "openapi_lint: skipped: swagger-parser is not installed (run scripts/install-web-deps.sh," \
        "or npm ci in tests/openapi)"
    exit 77
fi
exec node "$here/lint.mjs" "$spec"
