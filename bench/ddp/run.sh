#!/usr/bin/env bash
# bench/ddp/run.sh — data-parallel scaling on one machine: the Fashion-MNIST CNN
# (examples/fmnist-cnn.json) trained by `kiln train` with 1 process and with
# `--processes 2` (MPI), one thread per process, and by PyTorch's DistributedDataParallel
# (bench/ddp/torch_ddp.py: torch.distributed, gloo) with 1 and 2 processes on the same
# recipe: global batch 64, Adam lr 1e-3, the same batches in the same order. Prints a
# table: samples/s, scaling efficiency (2-process samples/s / 2x the 1-process's),
# Kiln / PyTorch at the same process count, test accuracy, Kiln's communication wait,
# and the machine's load average around each run (a busy machine skews the figures:
# rerun on a quiet one). Raw output is kept in build-bench/ddp-*.
#   usage: bench/ddp/run.sh [--epochs N] [--max-steps N] [--processes N] [--threads N]
#            [--device cpu|cuda] [--batch N] [--data DIR] [--kiln PATH] [--out DIR]
#            [--summary FILE]
# --device cuda runs one GPU per process (NCCL on both sides); --summary appends one JSON
# line per row to FILE. PyTorch comes from $PYTHON, else the first of python3,
# /usr/bin/python3 that imports torch.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage="usage: $0 [--epochs N] [--max-steps N] [--processes N] [--threads N] [--device cpu|cuda]
       [--batch N] [--data DIR] [--kiln PATH] [--out DIR] [--summary FILE]"
epochs=1
max_steps=0
processes=2
threads=1
device=cpu
batch=64
data=/usr/share/datasets/fashion-mnist
kiln=""
build="build-bench"
summary=""
while [ $# -gt 0 ]; do
    case "$1" in
        --epochs) epochs="$2"; shift 2 ;;
        --max-steps) max_steps="$2"; shift 2 ;;
        --processes) processes="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --kiln) kiln="$2"; shift 2 ;;
        --out) build="$2"; shift 2 ;;
        --summary) summary="$2"; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
die() { echo "bench/ddp: $*" >&2; exit 1; }
case "$device" in cpu | cuda) ;; *) die "--device must be cpu or cuda" ;; esac
[ $((batch % processes)) = 0 ] || die "--batch $batch does not divide by --processes $processes"
data="$(cd "$data" && pwd)" || die "--data $data: no such folder"
command -v "${KILN_MPIRUN:-mpirun}" >/dev/null || die "mpirun is not installed (apt install openmpi-bin)"

# the Python that has torch.distributed, and kiln (bench/common.sh)
. bench/common.sh
bench_python torch.distributed
bench_kiln "$build" "$kiln"
# mpirun refuses root without these (a container's root is root too)
[ "$(id -u)" != 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# the example job with this run's data, batch, length and device
job="$build/ddp-cnn.json"
"$python" bench/fmnist/write_job.py examples/fmnist-cnn.json "$data" "$batch" "$device" \
    "$epochs" "$max_steps" 0 '{}' "$job"
"$kiln" validate "$job" >/dev/null || die "$kiln does not accept $job"

load() { cut -d' ' -f1 /proc/loadavg; }
run() { # tag, command...
    local tag="$1"
    shift
    echo "bench/ddp: $tag ..." >&2
    local before after
    before=$(load)
    "$@" >"$build/ddp-$tag.jsonl" 2>"$build/ddp-$tag.log" || {
        tail -20 "$build/ddp-$tag.log" >&2
        die "$tag failed"
    }
    after=$(load)
    echo "{\"load_before\": $before, \"load_after\": $after}" >>"$build/ddp-$tag.jsonl"
}

# the all-reduce alone, for the cost model: latency (4 bytes), the CNN's gradients, and
# large buckets (bandwidth)
mpicc=$(command -v mpicc || true)
if [ -n "$mpicc" ] && [ "$device" = cpu ]; then
    "$mpicc" -O2 bench/ddp/allreduce.c -o "$build/ddp-allreduce"
    run allreduce "${KILN_MPIRUN:-mpirun}" -np "$processes" --bind-to none \
        "$build/ddp-allreduce" 4 827688 16777216 67108864
else
    echo "bench/ddp: no mpicc (or --device cuda): the all-reduce is not measured alone" >&2
    : >"$build/ddp-allreduce.jsonl"
fi

torch_flags=(--threads "$threads" --epochs "$epochs" --batch "$batch" --device "$device" --data "$data")
[ "$max_steps" = 0 ] || torch_flags+=(--max-steps "$max_steps")
run kiln-1 "$kiln" train "$job" --json --quiet --threads "$threads"
run kiln-"$processes" "$kiln" train "$job" --processes "$processes" --json --quiet --threads "$threads"
run pytorch-1 "$python" bench/ddp/torch_ddp.py --processes 1 "${torch_flags[@]}"
run pytorch-"$processes" "$python" bench/ddp/torch_ddp.py --processes "$processes" "${torch_flags[@]}"

"$python" - "$build" "$processes" "$threads" "$epochs" "$max_steps" "$device" "$batch" \
    "$summary" <<'PY'
import json, os, sys

build, n, threads, epochs, max_steps, device, batch, summary = sys.argv[1:]
n = int(n)


def result(tag):
    rows = [json.loads(l) for l in open(f"{build}/ddp-{tag}.jsonl") if l.strip().startswith("{")]
    r = [x for x in rows if "samples_per_second" in x][-1]
    r.update([x for x in rows if "load_before" in x][-1])
    return r


k1, kn, t1, tn = (result(t) for t in ("kiln-1", f"kiln-{n}", "pytorch-1", f"pytorch-{n}"))
eff_k = kn["samples_per_second"] / (n * k1["samples_per_second"])
eff_t = tn["samples_per_second"] / (n * t1["samples_per_second"])
length = f"{max_steps} steps" if int(max_steps) > 0 else f"{epochs} epoch(s)"
link = "NCCL" if device == "cuda" else "MPI / gloo"
print(f"Fashion-MNIST CNN, {length}, Adam lr 1e-3, global batch {batch}, "
      f"{threads} thread(s) per process, {device} ({link}), {os.cpu_count()} cores")
print(f"{'impl':12} {'procs':>5} {'samples/s':>10} {'efficiency':>10} {'vs pytorch':>10} "
      f"{'test acc':>9} {'comm wait':>10} {'load 1m':>12}")
rows = [("kiln", 1, k1, None, k1["samples_per_second"] / t1["samples_per_second"]),
        ("kiln", n, kn, eff_k, kn["samples_per_second"] / tn["samples_per_second"]),
        ("pytorch-ddp", 1, t1, None, None), ("pytorch-ddp", n, tn, eff_t, None)]
for name, procs, r, eff, ratio in rows:
    comm = r.get("communication_seconds")
    print(f"{name:12} {procs:5d} {r['samples_per_second']:10.0f} "
          f"{(f'{eff:.2f}' if eff is not None else ''):>10} "
          f"{(f'{ratio:.2f}x' if ratio is not None else ''):>10} "
          f"{r['test_accuracy']:9.4f} {(f'{comm:.2f} s' if comm is not None else ''):>10} "
          f"{r['load_before']:5.2f}->{r['load_after']:<5.2f}")
acc = kn["test_accuracy"] - k1["test_accuracy"]
ratio = kn["samples_per_second"] / tn["samples_per_second"]
print(f"targets: efficiency >= 0.85: {eff_k:.2f} ({'met' if eff_k >= 0.85 else 'NOT met'}); "
      f"kiln {n} / pytorch {n} >= 3x: {ratio:.2f}x ({'met' if ratio >= 3 else 'NOT met'}); "
      f"accuracy {n} vs 1 process within 0.5 points: {100 * acc:+.2f} "
      f"({'met' if abs(acc) <= 0.005 else 'NOT met'})")

# ---- the cost model (docs/scaling.md) fitted to these figures --------------------------
# step(N) = compute / N + exposed communication; a ring all-reduce of S bytes takes
# 2(N-1) * alpha + 2(N-1)/N * S / beta. alpha and beta come from the all-reduce alone,
# compute from the 1-process step; the 2-process run says how much of the all-reduce
# the step did not hide.
ar = [json.loads(l) for l in open(f"{build}/ddp-allreduce.jsonl") if l.strip().startswith('{"bytes"')]
if ar:
    lat = min(ar, key=lambda r: r["bytes"])
    # beta from the largest message a bucket can be (~25 MB): a larger one can leave the
    # caches and change the transport's protocol (64 MB ran 17x slower than 16 MB here)
    fits = [r for r in ar if r["bytes"] <= 32 << 20] or ar
    big = max(fits, key=lambda r: r["bytes"])
    alpha = lat["seconds"] / (2 * (n - 1))
    grad = next((r for r in ar if r["bytes"] == 827688), None)
    t1 = int(batch) / k1["samples_per_second"]
    tn = int(batch) / kn["samples_per_second"]
    exposed = max(0.0, tn - t1 / n)
    print(f"all-reduce on {n} ranks here: {lat['seconds'] * 1e6:.1f} us for 4 bytes "
          f"(alpha {alpha * 1e6:.1f} us a ring step), "
          + (f"{grad['seconds'] * 1e3:.2f} ms for the CNN's 828 KB of gradients, " if grad else "")
          + f"{big['bus_gb_per_s']:.2f} GB/s bus bandwidth at {big['bytes'] >> 20} MB (beta)"
          + "".join(f", {r['bus_gb_per_s']:.2f} GB/s at {r['bytes'] >> 20} MB"
                    for r in ar if r["bytes"] > big["bytes"]))
    print(f"CNN step: {t1 * 1e3:.2f} ms on 1 process, {tn * 1e3:.2f} ms on {n}: "
          f"{exposed * 1e3:.2f} ms of it not compute / {n} (Kiln waited "
          f"{1e3 * (kn.get('communication_seconds') or 0) / max(kn.get('steps', 1), 1):.2f} ms a step)")

    def predict(compute, size, ranks, link, latency):
        comm = 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * size / link
        per = compute / ranks
        hidden = min(comm, per * 2 / 3)  # the backward pass (2/3 of a step) hides buckets
        return per, comm, per / (per + comm), per / (per + comm - hidden)

    # GPT-2 124M as llm.c trains it: 524,288 tokens a step, 6 x 124M flops a token, on
    # processors of 100 TFLOP/s each (a GPU in bf16 at ~40% of its peak); fp32 gradients
    gpt_params = 124_439_808
    gpt_compute = 6 * gpt_params * 524_288 / 100e12
    print(f"predicted (ring all-reduce, alpha 5 us a step on the network; efficiency without "
          f"overlap / with the backward hiding buckets):")
    print(f"{'model':10} {'ranks':>5} {'link':>9} {'compute/rank':>13} {'all-reduce':>11} "
          f"{'efficiency':>17}")
    for name, compute, size in (("cnn", t1, 827688), ("gpt-124m", gpt_compute, 4 * gpt_params)):
        for ranks in (8, 64):
            for link in (25e9, 200e9):
                per, comm, eff0, eff1 = predict(compute, size, ranks, link, 5e-6)
                print(f"{name:10} {ranks:5d} {link / 1e9:6.0f} GB/s {per * 1e3:10.3f} ms "
                      f"{comm * 1e3:8.3f} ms {eff0:8.2f} / {eff1:.2f}")
if summary:
    with open(summary, "a") as f:
        for name, procs, r, eff, ratio in rows:
            f.write(json.dumps({"impl": name, "processes": procs, "device": device,
                                "batch": int(batch), "threads": int(threads),
                                "samples_per_second": r["samples_per_second"],
                                "efficiency": eff, "ratio_vs_pytorch": ratio,
                                "test_accuracy": r["test_accuracy"],
                                "communication_seconds": r.get("communication_seconds"),
                                "load_before": r["load_before"],
                                "load_after": r["load_after"]}) + "\n")
PY
