# bench/common.sh — what the benchmark scripts share, sourced after they define die():
#   bench_python MODULES   sets $python: $PYTHON, else the first of python3 and
#                          /usr/bin/python3 that imports MODULES (e.g. "torch")
#   bench_kiln BUILD KILN  sets $kiln: KILN when given, else kiln built in BUILD (Release)
bench_python() {
    python=""
    local p
    for p in "${PYTHON:-}" python3 /usr/bin/python3; do
        [ -n "$p" ] || continue
        if "$p" -c "import $1" 2>/dev/null; then python="$p"; return; fi
        [ -z "${PYTHON:-}" ] || die "\$PYTHON=$PYTHON cannot import $1"
    done
    die "no python3 with $1 (set \$PYTHON)"
}

bench_kiln() {
    mkdir -p "$1"
    kiln="$2"
    if [ -z "$kiln" ]; then
        cmake -S . -B "$1" -DCMAKE_BUILD_TYPE=Release -DKILN_SANITIZE=OFF >/dev/null
        cmake --build "$1" -j "$(nproc 2>/dev/null || echo 2)" --target kiln >/dev/null
        kiln="$1/kiln"
    fi
    [ -x "$kiln" ] || die "--kiln $kiln is not an executable"
}
