#!/usr/bin/env bash
# bench/server/run.sh — kilnd under wrk on loopback, three targets side by side in one run:
#   live     GET /v2/health/live                         (the ceiling: routing + a tiny body)
#   metrics  GET /v1/jobs/{id}/metrics?names=loss        (a finished job with 10,000 points,
#            asked with Accept-Encoding: gzip as a browser does; metrics-plain without it)
#   infer    POST /v2/models/bench-mlp/infer             (one sample through a small MLP)
# Prints requests/s, p50/p99 latency, errors and kilnd's RSS before and after each run.
# Then the reference: nginx on the same machine serving the same bytes (the same live
# answer, and kilnd's two metrics answers as static files with gzip_static and an open
# file cache), under the same wrk: how much of its own ceiling a mature server keeps when
# each answer is 80 KB instead of 13 bytes.
#   bench/server/run.sh                 60 s per target, 2 wrk threads, 16 connections
#   DURATION=10 CONNECTIONS=64 bench/server/run.sh
#   NGINX=0 bench/server/run.sh         without the nginx reference
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-60}
NGINX=${NGINX:-1}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-16}
FMNIST=/usr/share/datasets/fashion-mnist

./scripts/install-deps.sh
# install_tool COMMAND PACKAGE: apt-get install PACKAGE when COMMAND is missing
install_tool() {
    command -v "$1" >/dev/null && return 0
    echo "bench/server: installing $2"
    local sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q "$2" ||
        { "${sudo_cmd[@]}" apt-get update -q && "${sudo_cmd[@]}" apt-get install -y -q "$2"; }
}
install_tool wrk wrk
if [ "$NGINX" = 1 ]; then
    PATH=$PATH:/usr/sbin install_tool nginx nginx-light || NGINX=0
    export PATH=$PATH:/usr/sbin
fi

build=build-bench
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target kilnd kiln >/dev/null

work=$(mktemp -d /tmp/kiln-bench-server-XXXXXX)
pid=
nginx_started=
reference=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    [ -n "$nginx_started" ] && nginx -c "$work/nginx/nginx.conf" -s stop 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Port 0: kilnd picks a free one and logs "listening on http://ADDR:PORT".
"$build/kilnd" --listen 127.0.0.1 --port 0 --data-dir "$work/data" --log-level info \
    >"$work/kilnd.log" 2>&1 &
pid=$!
url=
for _ in $(seq 100); do
    url=$(grep -o 'listening on http://[0-9.]*:[0-9]*' "$work/kilnd.log" | head -1 |
          sed 's/listening on //') || true
    [ -n "$url" ] && curl -fs "$url/v2/health/live" >/dev/null 2>&1 && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$work/kilnd.log"; echo "kilnd did not start" >&2; exit 1; }
echo "kilnd at $url (log: per-request lines go to $work/kilnd.log)"

# A small MLP trained for 10,000 steps of batch 1: a 10,000-point loss series.
"$build/kiln" upload bench --url "$url" \
    --train-images "$FMNIST/train-images-idx3-ubyte.gz" \
    --train-labels "$FMNIST/train-labels-idx1-ubyte.gz" >/dev/null
curl -fs -X POST "$url/v1/models" -H 'Content-Type: application/json' --data-binary \
    '{"name": "bench-mlp", "input_shape": [1, 28, 28], "layers": [{"type": "flatten"},
      {"type": "linear", "out_features": 32}, {"type": "relu"},
      {"type": "linear", "out_features": 10}]}' >/dev/null
cat >"$work/job.json" <<'JSON'
{"model": "bench-mlp", "data": {"dataset": "bench", "scale": 0.00392156862745098},
 "optimizer": {"type": "sgd", "lr": 0.01}, "batch_size": 1, "max_steps": 10000, "seed": 0}
JSON
echo "training bench-mlp for 10,000 steps (batch 1) to fill a metrics series..."
"$build/kiln" submit "$work/job.json" --url "$url" --follow 2>/dev/null | tail -1
job=$("$build/kiln" jobs --url "$url" --state succeeded --json | head -1 |
      grep -o '"id":"[^"]*"' | cut -d'"' -f4)
points=$(curl -fs "$url/v1/jobs/$job/metrics?names=loss" | grep -o '\],\[' | wc -l)
echo "job $job: $((points + 1)) loss points"

# One sample, shape [1, 784] (the model takes [1, 28, 28]; the element counts agree).
awk 'BEGIN { printf "{\"inputs\": [{\"name\": \"input\", \"shape\": [1, 784], "
             printf "\"datatype\": \"FP32\", \"data\": ["
             for (i = 0; i < 784; i++) printf "%s%.3f", (i ? "," : ""), (i % 97) / 97
             printf "]}]}" }' >"$work/infer.json"
cat >"$work/infer.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/infer.json")
wrk.body = f:read("*a")
f:close()
LUA
curl -fs -X POST "$url/v2/models/bench-mlp/infer" -H 'Content-Type: application/json' \
    --data-binary "@$work/infer.json" >/dev/null || { echo "inference failed" >&2; exit 1; }

# resident KiB of the server under test: rss_pid and its children (nginx's workers)
rss_pid=$pid
rss_kib() {
    local total=0 p
    for p in $rss_pid $(pgrep -P "$rss_pid" || true); do
        total=$((total + $(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# run NAME URL [wrk args...]: one wrk run; appends a row to $work/results.
run() {
    local name=$1 target=$2
    shift 2
    local before after out
    # kilnd logs a line per request: the previous target left hundreds of MB of log in
    # the page cache, and its writeback would run during this target's measurement
    sync
    before=$(rss_kib)
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$target")
    after=$(rss_kib)
    echo "$out" >"$work/wrk-$name.txt"
    local rps p50 p99 non2xx socket
    rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
    p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
    p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
    non2xx=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ { print $NF }')
    socket=$(echo "$out" | awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }')
    printf "%-14s %12s %10s %10s %8s %12s %12s\n" "$name" "$rps" "$p50" "$p99" \
        "$(( ${non2xx:-0} + ${socket:-0} ))" "$((before / 1024)) MiB" "$((after / 1024)) MiB" \
        >>"$work/results"
    echo "  $name: $rps req/s"
}

echo "wrk: $THREADS threads, $CONNECTIONS connections, ${DURATION} s per target"
: >"$work/results"
run live "$url/v2/health/live"
# a dashboard (a browser) sends Accept-Encoding: gzip; the plain variant is shown too
run metrics "$url/v1/jobs/$job/metrics?names=loss" -H "Accept-Encoding: gzip"
run metrics-plain "$url/v1/jobs/$job/metrics?names=loss"
run infer "$url/v2/models/bench-mlp/infer" -s "$work/infer.lua"

# The reference: nginx with kilnd's own answers as files (metrics.json and, for gzip_static,
# metrics.json.gz: the very bytes kilnd sends), the live answer as a fixed string.
if [ "$NGINX" = 1 ]; then
    mkdir -p "$work/nginx/www" "$work/nginx/tmp"
    curl -fs "$url/v1/jobs/$job/metrics?names=loss" -o "$work/nginx/www/metrics.json"
    curl -fs -H "Accept-Encoding: gzip" "$url/v1/jobs/$job/metrics?names=loss" \
        -o "$work/nginx/www/metrics.json.gz"
    # nginx's workers run as another user: let them read the files (mktemp made $work 0700)
    chmod o+x "$work" "$work/nginx"
    chmod -R o+rX "$work/nginx/www"
    nginx_port=$(( ${url##*:} + 1 ))
    cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes $(nproc 2>/dev/null || echo 2);
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/tmp;
    proxy_temp_path $work/nginx/tmp;
    fastcgi_temp_path $work/nginx/tmp;
    uwsgi_temp_path $work/nginx/tmp;
    scgi_temp_path $work/nginx/tmp;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    gzip_static on;
    default_type application/json;
    server {
        listen 127.0.0.1:$nginx_port;
        root $work/nginx/www;
        location = /v2/health/live { return 200 '{"live":true}'; }
    }
}
NGINX
    nginx_url=http://127.0.0.1:$nginx_port
    if nginx -c "$work/nginx/nginx.conf" 2>"$work/nginx/start.log"; then
        nginx_started=1
        sleep 0.2
    fi
    # the reference counts only if it answers with the very bytes kilnd sends
    if [ -n "$nginx_started" ] &&
        curl -fs -H "Accept-Encoding: gzip" "$nginx_url/metrics.json" |
            cmp -s - "$work/nginx/www/metrics.json.gz" &&
        curl -fs "$nginx_url/metrics.json" | cmp -s - "$work/nginx/www/metrics.json"; then
        nginx_version=$(nginx -v 2>&1 | sed 's/.*: //')
        reference=1
        echo "reference: $nginx_version at $nginx_url, the same answers"
        rss_pid=$(cat "$work/nginx/nginx.pid")
        run nginx-live "$nginx_url/v2/health/live"
        run nginx-metrics "$nginx_url/metrics.json" -H "Accept-Encoding: gzip"
        run nginx-m-plain "$nginx_url/metrics.json"
    else
        echo "nginx did not start or answer (the reference is skipped):" \
            "$(cat "$work/nginx/start.log" "$work/nginx/error.log" 2>/dev/null | tail -3)"

    fi
fi

echo
printf "%-14s %12s %10s %10s %8s %12s %12s\n" target "requests/s" p50 p99 errors "RSS start" "RSS end"
cat "$work/results"
rate() { awk -v n="$1" '$1 == n { print $2 }' "$work/results"; }
share() { awk -v m="$1" -v l="$2" 'BEGIN { printf "%.1f%%", 100 * m / l }'; }
echo
echo "kilnd: metrics at $(share "$(rate metrics)" "$(rate live)") of its ceiling" \
    "(target >= 50%); without gzip $(share "$(rate metrics-plain)" "$(rate live)")"
if [ -n "$reference" ]; then
    echo "nginx, the same bytes as static files: $(share "$(rate nginx-metrics)" \
        "$(rate nginx-live)") of its ceiling; without gzip $(share "$(rate nginx-m-plain)" \
        "$(rate nginx-live)")"
    awk -v a="$(rate live)" -v b="$(rate nginx-live)" -v c="$(rate metrics)" \
        -v d="$(rate nginx-metrics)" -v e="$(rate metrics-plain)" -v f="$(rate nginx-m-plain)" \
        'BEGIN { printf "kilnd / nginx: live %.2fx, metrics %.2fx, metrics-plain %.2fx\n",
                 a / b, c / d, e / f }'
fi
