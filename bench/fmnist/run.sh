#!/usr/bin/env bash
# bench/fmnist/run.sh — Fashion-MNIST, same recipe, same machine: `kiln train` on
# examples/fmnist-{mlp,cnn}.json and the same recipes in plain PyTorch
# (bench/fmnist/torch_fmnist.py), each in its own process under /usr/bin/time -v.
# Prints training samples/s for each, the ratio, test accuracy and peak RSS. Raw output
# is kept in build-bench/fmnist-*.
#   usage: bench/fmnist/run.sh [--threads N] [--only mlp|cnn] [--epochs N]
set -euo pipefail
cd "$(dirname "$0")/../.."

threads=2
models="mlp cnn"
epochs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads="$2"; shift 2 ;;
        --only) models="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        *) echo "usage: $0 [--threads N] [--only mlp|cnn] [--epochs N]" >&2; exit 2 ;;
    esac
done

build=build-bench
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKILN_SANITIZE=OFF >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target kiln >/dev/null

peak_rss_kb() { sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$1"; }

for m in $models; do
    job="examples/fmnist-$m.json"
    if [ "$epochs" != 1 ]; then
        # the same job with another epoch count
        job="$build/fmnist-$m-e$epochs.json"
        /usr/bin/python3 -c "import json,sys; j=json.load(open(sys.argv[1])); j['epochs']=int(sys.argv[2]); json.dump(j, open(sys.argv[3],'w'))" \
            "examples/fmnist-$m.json" "$epochs" "$job"
    fi
    echo "bench/fmnist: $m in Kiln ..." >&2
    /usr/bin/time -v -o "$build/fmnist-$m-kiln.time" \
        "$build/kiln" train "$job" --json --quiet --threads "$threads" \
        >"$build/fmnist-$m-kiln.jsonl"
    echo "bench/fmnist: $m in PyTorch ..." >&2
    /usr/bin/time -v -o "$build/fmnist-$m-torch.time" \
        /usr/bin/python3 bench/fmnist/torch_fmnist.py "$m" --threads "$threads" --epochs "$epochs" \
        >"$build/fmnist-$m-torch.jsonl"
    echo "$m $(peak_rss_kb "$build/fmnist-$m-kiln.time") $(peak_rss_kb "$build/fmnist-$m-torch.time")" \
        >"$build/fmnist-$m.rss"
done

/usr/bin/python3 - "$build" "$threads" "$epochs" $models <<'PY'
import json, sys

build, threads, epochs, models = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
targets = {"mlp": 2.0, "cnn": 1.5}
print(f"Fashion-MNIST, {epochs} epoch(s), Adam lr 1e-3, batch 64, {threads} threads")
print(f"{'model':6} {'impl':8} {'samples/s':>10} {'ratio':>7} {'target':>7} "
      f"{'test acc':>9} {'test loss':>10} {'train s':>8} {'peak RSS':>10}")
for m in models:
    kiln = [json.loads(l) for l in open(f"{build}/fmnist-{m}-kiln.jsonl") if l.strip()]
    kiln = [r for r in kiln if "samples_per_second" in r][-1]
    torch = json.loads(open(f"{build}/fmnist-{m}-torch.jsonl").read().strip().splitlines()[-1])
    _, rss_kiln, rss_torch = open(f"{build}/fmnist-{m}.rss").read().split()
    ratio = kiln["samples_per_second"] / torch["samples_per_second"]
    for name, r, rss, show in (("kiln", kiln, rss_kiln, True), ("pytorch", torch, rss_torch, False)):
        acc = r.get("test_accuracy")
        loss = r.get("test_loss")
        print(f"{m:6} {name:8} {r['samples_per_second']:10.0f} "
              f"{(f'{ratio:.2f}x' if show else ''):>7} "
              f"{(f'{targets[m]:.1f}x' if show else ''):>7} "
              f"{(f'{acc:.4f}' if acc is not None else '-'):>9} "
              f"{(f'{loss:.4f}' if loss is not None else '-'):>10} "
              f"{r['train_seconds']:8.1f} {int(rss) / 1024:8.0f} MB")
PY
