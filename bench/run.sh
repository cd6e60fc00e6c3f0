#!/usr/bin/env bash
# bench/run.sh — builds Kiln (Release) in build-bench/, runs bench_ops (Kiln and OpenBLAS
# direct) and bench_torch.py (PyTorch), and prints them side by side. Raw JSON lines are
# kept in build-bench/bench-*.jsonl. Options go to both: --threads N (default 2), --quick.
set -euo pipefail
cd "$(dirname "$0")/.."

build=build-bench
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKILN_SANITIZE=OFF >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target bench_ops >/dev/null

echo "bench: Kiln + OpenBLAS ..." >&2
"$build/bench_ops" "$@" >"$build/bench-kiln.jsonl"
echo "bench: PyTorch ..." >&2
/usr/bin/python3 bench/bench_torch.py "$@" >"$build/bench-torch.jsonl"

/usr/bin/python3 - "$build/bench-kiln.jsonl" "$build/bench-torch.jsonl" <<'PY'
import json, sys

rows, order = {}, []
for path in sys.argv[1:]:
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["op"], r["size"])
        if key not in rows:
            rows[key] = {}
            order.append(key)
        rows[key]["unit"] = r.get("unit") or rows[key].get("unit", "")
        rows[key][r["impl"]] = r.get("value", "error: " + r.get("error", "?"))

def cell(v):
    return f"{v:10.2f}" if isinstance(v, (int, float)) else f"{'-':>10}"

def ratio(a, b):
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0
    return f"{a / b:10.2f}" if ok else f"{'-':>10}"

print(f"{'op':8} {'size':16} {'unit':8} {'Kiln':>10} {'OpenBLAS':>10} {'PyTorch':>10}"
      f" {'Kiln/PyT':>10} {'Kiln/BLAS':>10}")
for key in order:
    r = rows[key]
    k, o, t = r.get("kiln"), r.get("openblas"), r.get("torch")
    print(f"{key[0]:8} {key[1]:16} {r['unit']:8} {cell(k)} {cell(o)} {cell(t)}"
          f" {ratio(k, t)} {ratio(k, o)}")
    if isinstance(k, str):
        print(f"{'':8} {'':16} kiln {k}")
print("\nThroughput (higher is better); ratios above 1 mean Kiln is faster.")
PY
