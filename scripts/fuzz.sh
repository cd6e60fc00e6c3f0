#!/usr/bin/env bash
# fuzz.sh — libFuzzer runs of the fuzz targets in tests/fuzz: builds them with clang,
# ASan and UBSan in build-fuzz/ (-DKILN_FUZZ=ON) and runs each for SECONDS seconds
# (default 60) from its corpus, stopping at the first crash, leak, timeout or UB report
# and printing the reproducer's path.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: safetensors idx npy csv model_spec
#                                             job_spec weights checkpoint (default: all)
#   FUZZ_JOBS=2 scripts/fuzz.sh 300           two targets at a time (at most 2)
# New inputs libFuzzer finds go to build-fuzz/corpus/TARGET (tests/fuzz/corpus is only
# read), crashes to build-fuzz/artifacts/, each run's log to build-fuzz/logs/TARGET.log.
# A reproducer replays with build-fuzz/tests/fuzz/fuzz_TARGET FILE, or in the ordinary
# build with build/tests/fuzz/fuzz_TARGET -n 0 FILE; copy it to
# tests/fuzz/corpus/TARGET/regress-WHAT once fixed, so the ctest replay keeps covering it.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(safetensors idx npy csv model_spec job_spec weights checkpoint)
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
jobs=${FUZZ_JOBS:-1}
case "$seconds" in '' | *[!0-9]*)
    echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2
    exit 2
    ;;
esac
[ "$jobs" = 1 ] || [ "$jobs" = 2 ] || {
    echo "fuzz.sh: FUZZ_JOBS is 1 or 2" >&2
    exit 2
}
for t in "${targets[@]}"; do
    [ -d "tests/fuzz/corpus/$t" ] || {
        echo "fuzz.sh: unknown target '$t' (expected: ${all_targets[*]})" >&2
        exit 2
    }
done

build=build-fuzz
CC=${CC:-clang} cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS=-O1 \
    -DKILN_FUZZ=ON -DKILN_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target "${targets[@]/#/fuzz_}" >/dev/null
mkdir -p "$build/artifacts" "$build/logs"

# Sizes that are refused with an error must not be allocated first: a malloc above
# -malloc_limit_mb (= -rss_limit_mb) is reported as a crash.
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OPENBLAS_NUM_THREADS=1

run_target() {
    local t=$1 dict=()
    mkdir -p "$build/corpus/$t"
    [ -f "tests/fuzz/dict/$t.dict" ] && dict=(-dict="tests/fuzz/dict/$t.dict")
    # exec: the background job is the fuzzer itself, so stopping it stops the fuzzer
    exec "$build/tests/fuzz/fuzz_$t" "$build/corpus/$t" "tests/fuzz/corpus/$t" "${dict[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$build/artifacts/$t-" -print_final_stats=1 \
        >"$build/logs/$t.log" 2>&1
}

report() {
    local t=$1 status=$2 log=$build/logs/$1.log
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$status" = 0 ]; then
        printf 'fuzz.sh: %-12s %4ss  %10s runs  %7s exec/s  ok\n' "$t" "$seconds" \
            "${execs:-?}" "${rate:-?}"
        return 0
    fi
    printf 'fuzz.sh: %-12s FAILED (exit %s); the end of %s:\n' "$t" "$status" "$log" >&2
    grep -v '^#[0-9]' "$log" | tail -40 >&2
    local crash
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    [ -n "$crash" ] && echo "fuzz.sh: reproducer: $crash  (replay: $build/tests/fuzz/fuzz_$t $crash)" >&2
    return 1
}

declare -A running=()
failed=0
wait_one() {
    local pid status=0
    wait -n -p pid "${!running[@]}" || status=$?
    local t=${running[$pid]}
    unset "running[$pid]"
    report "$t" "$status" || failed=1
}
for t in "${targets[@]}"; do
    while [ ${#running[@]} -ge "$jobs" ]; do wait_one; done
    [ "$failed" = 0 ] || break
    run_target "$t" &
    running[$!]=$t
done
while [ ${#running[@]} -gt 0 ] && [ "$failed" = 0 ]; do wait_one; done
# the first crash ends the session: the other run we started is stopped, not reported
for pid in "${!running[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "fuzz.sh: ${running[$pid]} stopped" >&2
done
exit "$failed"
