#!/usr/bin/env bash
# bench/cuda/run.sh — the GPU session's one command. Runs ON THE DEVICE from the
# repository root as `bash bench/cuda/run.sh`, with .device/ carried beside the tree
# (built here by scripts/gpu-pack.sh: binaries, the CUDA module, the shared libraries the
# device lacks, the Fashion-MNIST files). It
#   0. unpacks the libraries into /tmp, finds cudart/cuBLAS (/usr/local/cuda* or torch's
#      pip packages), prints `nvidia-smi -L` and the engine's kn_cuda_status();
#   1. runs every test_cuda* executable (Criterion, --jobs 1): pass/fail/skip counts and
#      the names of failing tests;
#   2. times the 4096^3 fp32 matmul, Kiln (bench_cuda_matmul) against torch.matmul, TF32
#      off on both sides, then on on both; median of 30 after 3 warm-up products;
#   3. runs bench/fmnist/run.sh on cuda at batch 64 and 512, MLP and CNN, 1 epoch each,
#      Kiln against PyTorch eager (plus a "kiln+graph" row when this kiln knows the job
#      field "cuda_graph");
#   4. runs compute-sanitizer memcheck (--leak-check full) over test_cuda, last because
#      it is the slowest and the most likely to be refused (gVisor machines);
# then prints a compact summary LAST (the device tool returns only the output's tail).
# Every step runs under `timeout`, sized from what is left of a deadline ($KIT_SECONDS,
# default 480 s), so the whole run fits one 600 s device call with room to spare.
# Logs go to $OUT (default /tmp/kiln-kit-out): env.log, tests.log, bench.log,
# fmnist.jsonl, sanitizer.log, summary.txt. Without a GPU (e.g. on the build machine:
# `OUT=/tmp/kit-out bash bench/cuda/run.sh`) the tests skip and the GPU steps say
# "skipped: no CUDA device (reason)".
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
# the golden tests (test_cuda_golden_*) read tests/golden/data from this checkout, not
# from the build machine's path compiled into them
export KILN_SOURCE_DIR="$root"
kit="$root/.device"
out="${OUT:-/tmp/kiln-kit-out}"
deadline="${KIT_SECONDS:-480}"
start=$SECONDS
mkdir -p "$out"

die() { echo "bench/cuda: $*" >&2; exit 1; }
if [ ! -d "$kit/bin" ] || [ ! -f "$kit/libs.tar.xz" ]; then
    die "no .device/ here: run scripts/gpu-pack.sh on the build machine and carry .device"
fi

# ---- time -------------------------------------------------------------------------------
elapsed() { echo $((SECONDS - start)); }
# seconds a step may take: at most $1, leaving $2 for the steps after it (0 = no time)
budget() {
    local left=$((deadline - (SECONDS - start) - $2))
    if [ "$left" -lt "$1" ]; then echo $((left > 5 ? left : 0)); else echo "$1"; fi
}
say() { printf '[%4ds] %s\n' "$(elapsed)" "$*"; }
summary=()
note() { summary+=("$*"); } # a line for the final summary

# ---- 0. environment ---------------------------------------------------------------------
env_log="$out/env.log"
: >"$env_log"
work="$(mktemp -d /tmp/kiln-kit.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib" "$work/bin"
# tar -J needs the xz program, which bare images may lack; Python's tarfile reads xz too
if command -v xz >/dev/null; then
    tar -xJf "$kit/libs.tar.xz" -C "$work/lib"
else
    python3 -c 'import sys, tarfile
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' \
        "$kit/libs.tar.xz" "$work/lib"
fi
# the binaries run from a copy: the carried folder may lose modes or be read-only, and
# the engine finds libkiln_cuda.so next to the executable
cp "$kit"/bin/* "$work/bin/"
chmod +x "$work"/bin/*
bin="$work/bin"

# A library the system already has under the same soname is left to the system: it is
# at least as new as Debian 12's, and python/torch or compute-sanitizer must not be handed
# an older libstdc++. Only what the device lacks (OpenBLAS, cJSON, Criterion, ...) stays.
# KIT_KEEP_PACKED_LIBS=1 keeps them all (to try the packed copies on the build machine).
ldconfig_bin="$(command -v ldconfig || echo /sbin/ldconfig)"
if [ "${KIT_KEEP_PACKED_LIBS:-0}" = 0 ] && system_libs="$("$ldconfig_bin" -p 2>/dev/null)"; then
    tab=$'\t' # ldconfig -p: "<TAB>libz.so.1 (libc6,x86-64) => /lib/.../libz.so.1"
    for f in "$work/lib"/*; do
        name="$(basename "$f")"
        if grep -qF "$tab$name (libc6,x86-64" <<<"$system_libs"; then rm -f "$f"; fi
    done
fi
echo "packed libraries used: $(find "$work/lib" -type f -printf '%f\n' | sort | tr '\n' ' ')" >>"$env_log"

# the Python with torch: $PYTHON, else the first python3 that imports it
python=""
for p in "${PYTHON:-}" python3 /usr/bin/python3; do
    if [ -n "$p" ] && "$p" -c 'import torch' 2>/dev/null; then python="$p"; break; fi
done
json_python="${python:-$(command -v python3 || echo /usr/bin/python3)}"

# cudart and cuBLAS: already known to the loader, else /usr/local/cuda*, else pip's nvidia/*
lib_path="$work/lib:$bin"
candidates=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/*/lib
    /usr/local/cuda-*/lib64 /usr/local/cuda-*/lib /usr/local/cuda-*/targets/*/lib)
if [ -n "$python" ]; then
    while read -r site; do
        candidates+=("$site"/nvidia/*/lib)
    done < <("$python" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null)
fi
missing="$(LD_LIBRARY_PATH="$lib_path" ldd "$bin/libkiln_cuda.so" | awk '/not found/ {print $1}')"
for name in $missing; do
    for dir in "${candidates[@]}"; do
        if [ -e "$dir/$name" ]; then
            case ":$lib_path:" in *":$dir:"*) ;; *) lib_path="$lib_path:$dir" ;; esac
            echo "$name from $dir" >>"$env_log"
            break
        fi
    done
done
lib_path="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for f in "$bin"/*; do
    LD_LIBRARY_PATH="$lib_path" ldd "$f" | grep "not found" | sed "s|^|$(basename "$f"): |" |
        tee -a "$env_log" || true
done

# Kiln's binaries get the libraries through their own environment only: nothing else
# (python, nvidia-smi, compute-sanitizer) sees LD_LIBRARY_PATH.
kenv() { LD_LIBRARY_PATH="$lib_path" "$@"; }
cat >"$work/kiln" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$lib_path" exec "$bin/kiln" "\$@"
EOF
chmod +x "$work/kiln"

{
    echo "host: $(uname -srm); $(ldd --version 2>&1 | head -1)"
    echo "kit: $(head -2 "$kit/MANIFEST.txt" 2>/dev/null | tr '\n' ';')"
    echo "LD_LIBRARY_PATH for Kiln: $lib_path"
    if [ -n "$python" ]; then
        echo "python: $python, torch $("$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
    else
        echo "python: none imports torch"
    fi
} >>"$env_log"
gpu_list="nvidia-smi not found"
gpu_info=""
if command -v nvidia-smi >/dev/null; then
    gpu_list="$(nvidia-smi -L 2>&1 || true)"
    gpu_info="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1 || true)"
fi
status="$(kenv "$bin/bench_cuda_matmul" --status 2>&1)" && has_gpu=1 || has_gpu=0
echo "nvidia-smi -L: $gpu_list" | tee -a "$env_log"
echo "kn_cuda_status: $status" | tee -a "$env_log"
no_gpu_reason="${status#*: }"
no_gpu_reason="${no_gpu_reason#no CUDA device: }"

# Which job fields this kiln accepts: a "cuda_graph" row only when it knows the field.
kiln_accepts() {
    "$json_python" -c 'import json, sys; j = json.load(open("examples/fmnist-mlp.json")); j[sys.argv[1]] = True; json.dump(j, open(sys.argv[2], "w"))' \
        "$1" "$work/probe.json" && "$work/kiln" validate "$work/probe.json" >/dev/null 2>&1
}
graph_flag=()
if kiln_accepts cuda_graph; then graph_flag=(--cuda-graph); fi
echo "kiln job fields: cuda_graph $(kiln_accepts cuda_graph && echo yes || echo no), allow_tf32 $(kiln_accepts allow_tf32 && echo yes || echo no)" |
    tee -a "$env_log"

# ---- 1. the CUDA tests --------------------------------------------------------------------
tests_log="$out/tests.log"
: >"$tests_log"
failing=()
test_rows=()
# The golden twins last: 242 cases, each a forked process that creates its own CUDA
# context, so they take the longest; the engine's own device tests must not starve.
for exe in $(ls "$bin"/test_cuda* | grep -v '/test_cuda_golden_') "$bin"/test_cuda_golden_*; do
    name="$(basename "$exe")"
    t="$(budget 75 300)"
    log="$work/$name.log"
    # the golden cases are independent checks of values: 8 at a time (each its own
    # process and CUDA context); the engine's tests one at a time, since some measure
    # device memory
    jobs=1
    case "$name" in test_cuda_golden_*) jobs=8 ;; esac
    total="$(kenv "$exe" --list 2>/dev/null | awk '/^[^ ]+: [0-9]+ tests?$/ {n += $2} END {print n + 0}')"
    rc=0
    if [ "$t" -gt 0 ]; then
        timeout -k 5 "$t" env LD_LIBRARY_PATH="$lib_path" "$exe" --jobs "$jobs" --verbose --color=never \
            >"$log" 2>&1 || rc=$?
    else
        echo "not run: out of time" >"$log"
        rc=124
    fi
    { echo "==== $name (rc $rc, timeout ${t}s)"; cat "$log"; } >>"$tests_log"
    pass="$(grep -c '^\[PASS\]' "$log" || true)"
    fail="$(grep -c '^\[FAIL\]' "$log" || true)"
    skip="$(grep -c '^\[SKIP\]' "$log" || true)"
    lost=$((total - pass - fail - skip))
    [ "$lost" -ge 0 ] || lost=0
    while read -r t_name; do failing+=("$name: $t_name"); done < <(sed -n 's/^\[FAIL\] \([^:]*::[^:]*\):.*/\1/p' "$log")
    verdict=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then verdict="timed out (${t}s)"
    elif [ "$fail" -gt 0 ] || [ "$lost" -gt 0 ] || [ "$rc" != 0 ]; then verdict="FAILED (rc $rc)"
    # with a device, a skip is either a multi-GPU test or something wrong: look at each
    elif [ "$has_gpu" = 1 ] && [ "$skip" -gt 0 ]; then verdict="ok, but $skip skipped: see tests.log"; fi
    row="$(printf '%-30s %5d %5d %5d %5d  %s' "$name" "$pass" "$fail" "$skip" "$lost" "$verdict")"
    test_rows+=("$row")
    say "tests: $row"
done
if [ "$has_gpu" = 0 ]; then
    first_skip="$(grep -h -m1 '^\[SKIP\]' "$tests_log" | sed 's/^\[SKIP\] [^:]*::[^:]*: //' || true)"
    [ -z "$first_skip" ] || test_rows+=("(skips say: $first_skip)")
fi

# ---- 2. the 4096^3 matmul ---------------------------------------------------------------
bench_log="$out/bench.log"
: >"$bench_log"
matmul_rows=()
ms_of() { sed -n 's/.* ms=\([0-9.]*\).*/\1/p' <<<"$1"; }
if [ "$has_gpu" = 0 ]; then
    matmul_rows+=("skipped: no CUDA device ($no_gpu_reason)")
else
    for mode in fp32 tf32; do
        flag=()
        [ "$mode" = fp32 ] || flag=(--tf32)
        t="$(budget 45 220)"
        k_line="$(timeout -k 5 "$t" env LD_LIBRARY_PATH="$lib_path" "$bin/bench_cuda_matmul" \
            --n 4096 --iters 30 "${flag[@]}" 2>&1 | tail -1 || true)"
        t="$(budget 60 200)"
        if [ -n "$python" ]; then
            p_line="$(timeout -k 5 "$t" "$python" bench/bench_cuda_matmul_torch.py --n 4096 \
                --iters 30 "${flag[@]}" 2>&1 | tail -1 || true)"
        else
            p_line="skipped: no python3 with torch"
        fi
        printf '%s\n%s\n' "$k_line" "$p_line" >>"$bench_log"
        k_ms="$(ms_of "$k_line")"
        p_ms="$(ms_of "$p_line")"
        if [ -n "$k_ms" ] && [ -n "$p_ms" ]; then
            row="$(awk -v m="$mode" -v k="$k_ms" -v p="$p_ms" 'BEGIN {
                printf "%-5s kiln %8.3f ms  torch %8.3f ms  kiln/torch time %.3f (target <= 1.05)", m, k, p, k / p }')"
        else
            row="$mode  kiln: ${k_line:-no output}  |  torch: ${p_line:-no output}"
        fi
        matmul_rows+=("$row")
        say "matmul: $row"
    done
fi

# ---- 3. Fashion-MNIST on cuda ---------------------------------------------------------------
fmnist_jsonl="$out/fmnist.jsonl"
: >"$fmnist_jsonl"
fmnist_rows=()
if [ "$has_gpu" = 0 ]; then
    fmnist_rows+=("skipped: no CUDA device ($no_gpu_reason)")
elif [ -z "$python" ]; then
    fmnist_rows+=("skipped: no python3 with torch")
else
    for batch in 64 512; do
        for m in mlp cnn; do
            t="$(budget 100 90)"
            rc=0
            if [ "$t" -gt 0 ]; then
                echo "==== fmnist $m batch $batch (timeout ${t}s)" >>"$bench_log"
                PYTHON="$python" timeout -k 5 "$t" bash bench/fmnist/run.sh --device cuda \
                    --batch "$batch" --only "$m" --kiln "$work/kiln" --data "$kit/data" \
                    --out "$work/fmnist-$batch" --summary "$fmnist_jsonl" "${graph_flag[@]}" \
                    >>"$bench_log" 2>&1 || rc=$?
            else
                rc=124
            fi
            [ "$rc" = 0 ] || fmnist_rows+=("$m batch $batch: $([ "$rc" = 124 ] && echo "timed out (${t}s)" || echo "failed (rc $rc, see bench.log)")")
            say "fmnist: $m batch $batch done (rc $rc)"
        done
    done
fi

# ---- 4. compute-sanitizer -------------------------------------------------------------------
sanitizer_log="$out/sanitizer.log"
: >"$sanitizer_log"
sanitizer="$(command -v compute-sanitizer || true)"
for s in /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer; do
    if [ -z "$sanitizer" ] && [ -x "$s" ]; then sanitizer="$s"; fi
done
if [ -z "$sanitizer" ]; then
    sanitizer_row="skipped: compute-sanitizer not found"
elif [ "$has_gpu" = 0 ]; then
    sanitizer_row="skipped: no CUDA device ($no_gpu_reason)"
else
    t="$(budget 150 8)"
    rc=0
    if [ "$t" -gt 0 ]; then
        timeout -k 5 "$t" env LD_LIBRARY_PATH="$lib_path" "$sanitizer" --tool memcheck \
            --leak-check full --target-processes all --error-exitcode 3 \
            "$bin/test_cuda" --jobs 1 --verbose --color=never >"$sanitizer_log" 2>&1 || rc=$?
        errors="$(awk '/ERROR SUMMARY: [0-9]+ error/ {n += $(NF - 1); k++} END {if (k) print n " errors in " k " processes"}' "$sanitizer_log")"
        # a refused device shows as skipped tests, so the counts go with the errors
        counts="tests $(grep -c '^\[PASS\]' "$sanitizer_log" || true) pass, $(grep -c '^\[FAIL\]' "$sanitizer_log" || true) fail, $(grep -c '^\[SKIP\]' "$sanitizer_log" || true) skip"
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            sanitizer_row="memcheck test_cuda: timed out after ${t}s; so far ${errors:-no summary}; $counts"
        elif [ -n "$errors" ]; then
            sanitizer_row="memcheck test_cuda: $errors (rc $rc, ${t}s allowed); $counts"
        else # no summary at all: the sanitizer refused the device or the target
            sanitizer_row="memcheck test_cuda: no error summary (rc $rc; refused?): $(grep -v '^\[' "$sanitizer_log" | tail -2 | tr '\n' ' ')"
        fi
    else
        sanitizer_row="skipped: out of time"
    fi
fi
say "sanitizer: $sanitizer_row"

# ---- summary, printed last -----------------------------------------------------------------
note "== Kiln GPU kit ($(elapsed) s of $deadline s; logs in $out)"
note "device: ${gpu_info:-none}"
note "kit: $(head -1 "$kit/MANIFEST.txt" 2>/dev/null || echo 'no MANIFEST.txt')"
note "kn_cuda_status: $status"
note ""
note "tests                           pass  fail  skip  lost  result"
for r in "${test_rows[@]}"; do note "$r"; done
for f in "${failing[@]:0:20}"; do note "  failing: $f"; done
[ "${#failing[@]}" -le 20 ] || note "  ... and $((${#failing[@]} - 20)) more failing (tests.log)"
note ""
note "sanitizer: $sanitizer_row"
note ""
note "matmul 4096^3, median of 30:"
for r in "${matmul_rows[@]}"; do note "  $r"; done
note ""
note "Fashion-MNIST on cuda, 1 epoch (targets: kiln/pytorch >= 1.5x at batch 64, >= 1.0x at 512; accuracy within 0.005):"
if [ -s "$fmnist_jsonl" ]; then
    while IFS= read -r line; do note "$line"; done < <("$json_python" - "$fmnist_jsonl" <<'PY'
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"  {'batch':>5} {'model':5} {'impl':10} {'samples/s':>10} {'ratio':>7} {'target':>6} "
      f"{'test acc':>8} {'acc diff':>8} {'train s':>7}")
torch = {(r["batch"], r["model"]): r for r in rows if r["impl"] == "pytorch"}
for r in rows:
    t = torch.get((r["batch"], r["model"]))
    diff = ""
    if r["impl"] != "pytorch" and t and r["test_accuracy"] is not None and t["test_accuracy"] is not None:
        d = r["test_accuracy"] - t["test_accuracy"]
        diff = f"{d:+.4f}" + ("" if abs(d) <= 0.005 else "!")
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
    target = f"{r['target']:.1f}x" if r.get("target") else ""
    met = "" if not (r["ratio"] and r.get("target")) else (" ok" if r["ratio"] >= r["target"] else " MISS")
    acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
    print(f"  {r['batch']:>5} {r['model']:5} {r['impl']:10} {r['samples_per_second']:10.0f} "
          f"{ratio:>7} {target:>6} {acc:>8} {diff:>8} {r['train_seconds']:7.2f}{met}")
PY
    )
fi
for r in "${fmnist_rows[@]}"; do note "  $r"; done

printf '%s\n' "${summary[@]}" >"$out/summary.txt"
# the device tool brings back files of at most 16 MiB: long logs keep their head and tail
for f in "$out"/*; do
    if [ "$(stat -c %s "$f")" -gt $((12 << 20)) ]; then
        { head -c $((2 << 20)) "$f"; printf '\n[... cut by bench/cuda/run.sh ...]\n'; tail -c $((8 << 20)) "$f"; } >"$f.cut"
        mv "$f.cut" "$f"
    fi
done
echo
cat "$out/summary.txt"
