#!/usr/bin/env bash
# test.sh — installs what is missing, builds and runs every test through ctest.
#   ./test.sh           Release build in build/, the default suite
#   ./test.sh --asan    AddressSanitizer + UBSan (leaks included) build in build-asan/
#   ./test.sh --full    also the long end-to-end runs (ctest label "full")
set -euo pipefail
cd "$(dirname "$0")"

mode=release
full=0
for arg in "$@"; do
    case "$arg" in
    --asan) mode=asan ;;
    --full) full=1 ;;
    -h | --help)
        sed -n '2,5p' "$0"
        exit 0
        ;;
    *)
        echo "test.sh: unknown option '$arg' (expected --asan or --full)" >&2
        exit 2
        ;;
    esac
done

# --full adds PyTorch and scikit-learn for the comparisons; without them those skip
if [ "$full" = 1 ]; then
    ./scripts/install-deps.sh --full ||
        echo "test.sh: python3-torch/python3-sklearn unavailable; the PyTorch comparisons will skip" >&2
fi
./scripts/install-deps.sh
# chromium and the pinned npm packages for the dashboard and its browser tests; a
# failure here (no network) leaves those tests to skip, saying why
./scripts/install-web-deps.sh || echo "test.sh: web dependencies unavailable; browser tests will skip" >&2

jobs=$(nproc 2>/dev/null || echo 2)
if [ "$mode" = asan ]; then
    build=build-asan
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON >/dev/null
    # allocator_may_return_null: huge sizes must come back as errors, as without ASan
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:allocator_may_return_null=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    # Open MPI keeps its own allocations until exit (the ranks of the distributed tests):
    # those are suppressed by module, every other leak still fails the run
    export LSAN_OPTIONS="suppressions=$PWD/tests/lsan-mpi.supp"
    # OpenBLAS's own threads are not what we test here; one keeps ASan fast.
    export OPENBLAS_NUM_THREADS=1
else
    build=build
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j "$jobs"

label_args=(-LE full)
[ "$full" = 1 ] && label_args=()
cd "$build"
if [ "$mode" != asan ]; then
    ctest --output-on-failure "${label_args[@]}"
    exit
fi
# Criterion runs each test in a child process and may count it as passed even when
# the sanitizer reports at the child's exit, so the sanitizer reports themselves are
# what fails this mode: the full log is kept and searched.
log=ctest-asan.log
status=0
ctest -V "${label_args[@]}" >"$log" 2>&1 || status=$?
grep -E "^[0-9]+/[0-9]+ Test|tests passed|tests failed|Total Test time" "$log" || true
if grep -nE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$log"; then
    echo "test.sh --asan: sanitizer reports above (full log: $build/$log)" >&2
    exit 1
fi
[ "$status" -eq 0 ] || grep -E -B4 "\[FAIL\]" "$log" || true
[ "$status" -eq 0 ] || echo "test.sh --asan: ctest failed (full log: $build/$log)" >&2
exit "$status"
