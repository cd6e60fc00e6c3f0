#!/usr/bin/env bash
# fresh_clone.sh — ctest's embed_web_fresh_clone: the dashboard embedded as a clone without
# web/node_modules builds it (issue 11: the npm-at-build-time branch of
# cmake/embed_web.cmake entered build/web-npm before anything had made it, and the
# README's first command failed there). A small project with a copy of web/ (no
# node_modules) and cmake/embed_web.cmake is configured and built in a temporary folder.
# npm runs offline (its cache or nothing): a failed download must not fail the build
# either. Exits 77 (ctest's skip) without npm: that branch is not taken then.
set -uo pipefail
source_dir="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v npm >/dev/null 2>&1; then
    echo "embed_web_fresh_clone: skipped: npm is not installed (the build does without it)"
    exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/cmake" "$work/src/web"
cp "$source_dir/cmake/embed_web.cmake" "$work/src/cmake/"
find "$source_dir/web" -maxdepth 1 -type f -exec cp {} "$work/src/web/" \;
cat >"$work/src/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(embed_web_fresh_clone C)
include(cmake/embed_web.cmake)
file(WRITE ${CMAKE_BINARY_DIR}/user.c "int embed_web_fresh_clone;\n")
add_library(assets STATIC ${CMAKE_BINARY_DIR}/user.c)
kiln_web_embed(assets)
CMAKE
export npm_config_offline=true npm_config_fetch_retries=0
if ! cmake -S "$work/src" -B "$work/build" >"$work/configure.log" 2>&1; then
    cat "$work/configure.log"
    exit 1
fi
grep -q "uPlot by npm ci at build time" "$work/configure.log" || {
    echo "embed_web_fresh_clone: the npm-at-build-time branch was not taken:"
    cat "$work/configure.log"
    exit 1
}
if ! cmake --build "$work/build" >"$work/build.log" 2>&1; then
    echo "embed_web_fresh_clone: the build of a clone without web/node_modules failed:"
    cat "$work/build.log"
    exit 1
fi
test -s "$work/build/kiln_web_assets.c" || {
    echo "embed_web_fresh_clone: no kiln_web_assets.c"
    exit 1
}
uplot="left out: not in npm's cache"
test -s "$work/build/web-npm/node_modules/uplot/dist/uPlot.iife.min.js" && uplot=included
echo "embed_web_fresh_clone: a clone without web/node_modules built the dashboard (uPlot $uplot)"
