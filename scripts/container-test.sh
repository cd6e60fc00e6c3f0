#!/usr/bin/env bash
# container-test.sh — builds docker/Dockerfile.cpu with Podman and proves the image works,
# as a user would run it: kilnd in the container with a token (a 0600 secret file) and a
# volume, published on a loopback port only. It waits for health (and the image's own
# HEALTHCHECK), checks the token is required, uploads a small dataset, trains a short job
# to success, fetches its metrics and weights, runs inference, lints /metrics with
# promtool, opens the dashboard in headless chromium and checks from a screenshot that the
# loss chart is drawn, then stops the container in the middle of a job (SIGTERM to kilnd,
# PID 1) and starts it again: the job resumes from its checkpoint and succeeds; a new
# container on the same volume still has everything. Before building it lints both
# Dockerfiles (dockerfilelint and dockerfile-utils, pinned by docker/lint/package-lock.json),
# checks that Dockerfile.cuda keeps Dockerfile.cpu's layout, and validates
# docker/compose.yaml (docker-compose) and docker/prometheus.yml (promtool); that scrape
# config then runs, in Debian's Prometheus, against the container.
#
#   scripts/container-test.sh           (as root, or through sudo; Debian 12)
#
# Installs what it needs (podman, runc, debootstrap, docker-compose, prometheus, jq, and
# scripts/install-web-deps.sh's chromium and npm packages). No image registry is needed:
# the base image debian:bookworm-slim is made with debootstrap from the Debian archive apt
# uses and kept in Podman's image store, so later runs reuse it (and the build's cached
# layers). Podman gets its own CONTAINERS_CONF (runc, cgroupfs) and leaves
# /etc/containers alone. Times itself; screenshots and logs go to build-container/.
set -euo pipefail
# root: Podman's store, the token file's owner (uid 10001), apt
[ "$(id -u)" -eq 0 ] || exec sudo -n "$0" "$@"
cd "$(dirname "$0")/.."
t0=$SECONDS
say() { printf 'container-test [%4ds] %s\n' $((SECONDS - t0)) "$*"; }
fail() {
    say "FAIL: $*" >&2
    exit 1
}

IMAGE=${KILN_IMAGE:-localhost/kiln:cpu}
BASE=localhost/debian:bookworm-slim
out=build-container
rm -rf "$out" && mkdir -p "$out"
out=$(cd "$out" && pwd)

# ---- tools -------------------------------------------------------------------------------
packages=(podman runc debootstrap docker-compose prometheus jq curl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >"$out/apt.log"
fi
./scripts/install-web-deps.sh
[ -d tests/browser/node_modules/playwright-core ] || fail "tests/browser: npm ci failed"
if [ ! -x docker/lint/node_modules/.bin/dockerfilelint ]; then
    (cd docker/lint && npm ci --no-audit --no-fund --loglevel=error)
fi

# Podman's settings for this machine (cgroup v1; crun refuses its layout and rlimits).
export CONTAINERS_CONF="$out/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF

# ---- the static checks -------------------------------------------------------------------
for f in docker/Dockerfile.cpu docker/Dockerfile.cuda; do
    docker/lint/node_modules/.bin/dockerfilelint "$f" >"$out/lint.log" ||
        { cat "$out/lint.log"; fail "dockerfilelint $f"; }
    docker/lint/node_modules/.bin/dockerfile-utils lint "$f" || fail "dockerfile-utils lint $f"
done
say "Dockerfiles lint clean (dockerfilelint, dockerfile-utils)"
# The CUDA image cannot be built here (NVIDIA's base images cannot be pulled): it must
# at least keep the CPU image's build options and runtime layout.
layout() {
    grep -v '^ *#' "$1" |
        grep -E '^(WORKDIR|USER|VOLUME|EXPOSE|HEALTHCHECK|STOPSIGNAL|ENTRYPOINT|COPY)|KILN_BUILD_TESTS|KILND_|KILN_URL' |
        sed -e 's/ -DKILN_CUDA=[A-Z]*//' -e 's/ *&& *\\$//' -e 's/ *\\$//' -e 's/^ *//' \
            -e 's| /src/build/libkiln_cuda.so||'
}
diff <(layout docker/Dockerfile.cpu) <(layout docker/Dockerfile.cuda) >"$out/layout.diff" ||
    { cat "$out/layout.diff"; fail "Dockerfile.cuda's build options or runtime layout differ from Dockerfile.cpu's"; }
# Debian's docker-compose validates against the compose schema (podman-compose 1.0.3 has
# no `config`); promtool checks the scrape config (the token file is checked below, once
# it exists, in the copy that runs against the container).
docker-compose -f docker/compose.yaml config -q || fail "docker-compose config docker/compose.yaml"
promtool check config --syntax-only docker/prometheus.yml >/dev/null ||
    fail "promtool check config docker/prometheus.yml"
say "Dockerfile.cuda keeps Dockerfile.cpu's layout; compose.yaml and prometheus.yml validate"

# ---- the base image: debootstrap once, then Podman's image store keeps it ------------------
if ! podman image exists "$BASE"; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    say "making $BASE with debootstrap from $mirror (once; cached in Podman's store)"
    rootfs=$(mktemp -d /var/tmp/kiln-rootfs.XXXXXX)
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$out/debootstrap.log" ||
        { tail -20 "$out/debootstrap.log"; fail "debootstrap"; }
    # what the official slim image does: no docs, man pages or locales, now or later
    tee "$rootfs/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    tee "$rootfs/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
    tar -C "$rootfs" -c . | podman import -q - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi

# ---- the image ---------------------------------------------------------------------------
# --format docker: OCI images have no HEALTHCHECK. --network=host: the build's apt and npm
# reach the archives. Machines whose TLS is inspected by a proxy pass its CA bundle as the
# optional build secret the Dockerfile reads for npm (docker/README.md).
build_args=(--format docker --network=host -f docker/Dockerfile.cpu -t "$IMAGE")
[ -f /etc/ssl/certs/ca-certificates.crt ] &&
    build_args+=(--secret "id=ca_certificates,src=/etc/ssl/certs/ca-certificates.crt")
say "podman build docker/Dockerfile.cpu"
build_start=$SECONDS
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build "${build_args[@]}" . >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; fail "podman build"; }
# the image this build replaced goes (its cached build layers stay for the next run)
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in $((SECONDS - build_start)) s: $((size / 1000000)) MB (base $(( $(podman image inspect --format '{{.Size}}' "$BASE") / 1000000 )) MB)"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = 10001:10001 ] || fail "the image does not run as uid 10001"
podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" | grep -q '"kiln","health"' ||
    fail "the image has no HEALTHCHECK running kiln health (podman build --format docker keeps it)"

# ---- run it: a token (secret file), a volume, a loopback port ----------------------------
tag=kiln-ctest-$$
volume=$tag-data
token_file=$out/token
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$token_file"
TOKEN=$(cat "$token_file")
chmod 600 "$token_file"
chown 10001:10001 "$token_file"
cleanup() {
    podman rm -f -t 0 "$tag" "$tag-2" >/dev/null 2>&1 || true
    podman volume rm -f "$volume" >/dev/null 2>&1 || true
    if [ -n "${prom_pid:-}" ]; then kill "$prom_pid" 2>/dev/null || true; fi
    rm -f "$token_file"
}
trap cleanup EXIT
podman volume create "$volume" >/dev/null
run_container() { # name: kilnd on a free loopback port, the port printed
    # (without systemd Podman cannot schedule the HEALTHCHECK and says so: that noise goes
    # to podman.log; the check is run by hand below)
    podman run -d --name "$1" -p 127.0.0.1::8080 -v "$volume:/data" \
        -v "$token_file:/run/secrets/kiln_token:ro" "$IMAGE" --workers 1 >/dev/null 2>>"$out/podman.log" ||
        { cat "$out/podman.log"; fail "podman run"; }
    podman port "$1" 8080 | head -1 | sed 's/.*://'
}
port=$(run_container "$tag")
URL=http://127.0.0.1:$port
say "started $tag on $URL (volume $volume)"

api() { # method path [curl args...]: the body on stdout, fails on an HTTP error
    local method=$1 path=$2
    shift 2
    curl -sS --fail-with-body -X "$method" -H "Authorization: Bearer $TOKEN" "$@" "$URL$path"
}
wait_ready() { # container
    for _ in $(seq 1 120); do
        curl -sf "$URL/v2/health/ready" >/dev/null 2>&1 && return 0
        [ "$(podman inspect --format '{{.State.Running}}' "$1")" = true ] ||
            { podman logs "$1" | tail -20; fail "$1 exited"; }
        sleep 0.5
    done
    podman logs "$1" | tail -20
    fail "$1 not ready after 60 s"
}
wait_job() { # id state timeout_s: waits for a job to reach state (a failure ends at once)
    local state=""
    for _ in $(seq 1 $((2 * $3))); do
        state=$(api GET "/v1/jobs/$1" | jq -r .state)
        [ "$state" = "$2" ] && return 0
        case "$state" in failed | canceled) api GET "/v1/jobs/$1" | jq -c .error; fail "job $1 $state" ;; esac
        sleep 0.5
    done
    fail "job $1 is $state after $3 s, not $2"
}
wait_ready "$tag"
podman healthcheck run "$tag" >/dev/null || fail "the image's HEALTHCHECK reports unhealthy"
say "ready; the image's HEALTHCHECK passes"
[ "$(podman exec "$tag" id -u)" = 10001 ] || fail "kilnd does not run as uid 10001"
[ "$(podman exec "$tag" cat /proc/1/comm)" = kilnd ] || fail "PID 1 is not kilnd"
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/jobs")
[ "$code" = 401 ] || fail "GET /v1/jobs without the token answered $code, not 401"
say "kilnd is PID 1 as uid 10001; the API refuses requests without the token (401)"
uplot_version=$(jq -r '.packages["node_modules/uplot"].version' web/package-lock.json)
curl -sf "$URL/ui/uPlot.iife.min.js" -o "$out/uPlot.iife.min.js" || fail "GET /ui/uPlot.iife.min.js"
head -c 200 "$out/uPlot.iife.min.js" | grep -qF "uPlot (v$uplot_version)" ||
    fail "the image's dashboard has no uPlot $uplot_version (pinned by web/package-lock.json)"
say "the dashboard serves uPlot $uplot_version, the version web/package-lock.json pins"

# ---- a dataset, a model, a short job -----------------------------------------------------
# quads: which quadrant of an 8x8 image is bright (4 classes), as in tests/browser
quads() { # n seed
    jq -nc --argjson n "$1" --argjson seed "$2" '
      def lcg: (. * 75 + 74) % 65537;
      reduce range($n) as $i ({s: $seed, inputs: [], labels: []};
        ($i % 4) as $class
        | .labels += [$class]
        | reduce range(64) as $p (.row = [];
            (.s |= lcg)
            | (($p / 8 | floor) as $y | ($p % 8) as $x
               | (if ((if $y >= 4 then 2 else 0 end) + (if $x >= 4 then 1 else 0 end)) == $class
                  then 160 else 0 end)) as $base
            | .row += [$base + (.s % 32)])
        | .inputs += [[[range(8) as $y | .row[$y * 8:$y * 8 + 8]]]])
      | {inputs, labels}'
}
quads 512 7 >"$out/train.json"
quads 128 8 >"$out/test.json"
api POST /v1/datasets -H 'Content-Type: application/json' -d '{"name":"quads"}' >/dev/null
api POST '/v1/datasets/quads/files/train?format=json' --data-binary "@$out/train.json" >/dev/null
api POST '/v1/datasets/quads/files/test?format=json' --data-binary "@$out/test.json" >/dev/null
api POST /v1/models -H 'Content-Type: application/json' -d '{"name":"quads","input_shape":[1,8,8],
  "layers":[{"type":"flatten"},{"type":"linear","out_features":64},{"type":"relu"},
            {"type":"linear","out_features":4}]}' >/dev/null
spec() { # model batch_size max_steps checkpoint_every_steps
    printf '{"model":"%s","data":{"dataset":"quads","scale":0.00392156862745098,"validation_split":0.25},
      "optimizer":{"type":"adam","lr":0.003},"batch_size":%d,"max_steps":%d,
      "validation":{"every_steps":50},"checkpoint_every_steps":%d}' "$@"
}
job=$(api POST /v1/jobs -H 'Content-Type: application/json' -d "$(spec quads 16 300 100)" | jq -r .id)
say "dataset quads uploaded; job $job submitted"
wait_job "$job" succeeded 300
loss_points=$(api GET "/v1/jobs/$job/metrics" | jq ".series.loss | length")
[ "${loss_points:-0}" -gt 0 ] || fail "job $job has no loss points"
api GET "/v1/jobs/$job/weights" -o "$out/weights.safetensors"
weights_bytes=$(stat -c %s "$out/weights.safetensors")
header=$(od -An -t u8 -N 8 "$out/weights.safetensors" | tr -d ' ')
if [ "$weights_bytes" -le 1000 ] || [ "$header" -le 0 ] || [ "$header" -ge "$weights_bytes" ]; then
    fail "the weights are not a safetensors file ($weights_bytes bytes)"
fi
# inference on the 128 test images, sent raw as a user has them (kilnd applies the job's
# preprocessing, its scale here): most must come out right
input=$(api GET /v2/models/quads | jq -r '.inputs[0].name')
jq -c --arg name "$input" '{id: "ctest", inputs: [{name: $name, shape: [(.inputs | length), 1, 8, 8],
    datatype: "FP32", data: [.inputs[][][][]]}]}' "$out/test.json" >"$out/infer.json"
api POST /v2/models/quads/infer -H 'Content-Type: application/json' --data-binary "@$out/infer.json" \
    >"$out/infer-out.json"
accuracy=$(jq -r --slurpfile t "$out/test.json" '.outputs[0].data as $d | $t[0].labels as $l
    | [range($l | length) as $i | $d[$i * 4:$i * 4 + 4] | index(max) == $l[$i]] | map(select(.)) | length / ($l | length)' \
    "$out/infer-out.json")
jq -e -n --argjson a "$accuracy" '$a >= 0.9' >/dev/null || fail "inference accuracy $accuracy"
say "job $job succeeded: $loss_points loss points, $weights_bytes bytes of weights, inference accuracy $accuracy"

# ---- /metrics: Prometheus's format, and docker/prometheus.yml scraping it with the token ----
api GET /metrics >"$out/metrics.txt"
promtool check metrics <"$out/metrics.txt" >"$out/promtool-metrics.log" 2>&1 ||
    { cat "$out/promtool-metrics.log"; fail "promtool check metrics"; }
grep -q '^kilnd_jobs' "$out/metrics.txt" || fail "/metrics has no kilnd_jobs series"
# the compose file's scrape job (its path, its bearer token from a file) run by Debian's
# Prometheus against this container: the target, the token file's path and a 1 s interval
# are what differ
prom_port=""
for p in $(shuf -i 20000-29999 -n 50); do
    ss -Hltn "sport = :$p" | grep -q . || { prom_port=$p && break; }
done
sed -e "s|kilnd:8080|127.0.0.1:$port|" -e "s|/run/secrets/prometheus_kiln_token|$token_file|" \
    -e "s|scrape_interval: 15s|scrape_interval: 1s|" docker/prometheus.yml >"$out/prometheus.yml"
promtool check config "$out/prometheus.yml" >/dev/null || fail "promtool check config (with the token file)"
prometheus --config.file="$out/prometheus.yml" --storage.tsdb.path="$out/prometheus" \
    --web.listen-address="127.0.0.1:$prom_port" >"$out/prometheus.log" 2>&1 &
prom_pid=$!
target=""
for _ in $(seq 1 60); do
    target=$(curl -s "http://127.0.0.1:$prom_port/api/v1/targets" 2>/dev/null |
        jq -r '.data.activeTargets[]? | select(.labels.job == "kilnd") | .health' 2>/dev/null || true)
    [ "$target" = up ] && break
    sleep 0.5
done
kill "$prom_pid" 2>/dev/null || true
wait "$prom_pid" 2>/dev/null || true
prom_pid=""
[ "$target" = up ] || { tail -5 "$out/prometheus.log"; fail "Prometheus could not scrape kilnd (target: ${target:-none})"; }
say "/metrics passes promtool check metrics; docker/prometheus.yml's job scrapes it (target up)"

# ---- the dashboard in chromium -----------------------------------------------------------
(cd tests/browser && KILN_DASHBOARD_TOKEN=$TOKEN timeout 120 node chart-screenshot.mjs "$URL" "$job" "$out") ||
    fail "the dashboard's chart (screenshots in $out)"
say "dashboard: loss chart drawn ($out/job.png, $out/loss-chart.png)"

# ---- stop mid-training, start again: the job resumes from its checkpoint -----------------
# a wider model and bigger batches than above, so that the job is still running when the
# container gets its SIGTERM however fast the machine (about 25 s of training here)
api POST /v1/models -H 'Content-Type: application/json' -d '{"name":"quads_wide","input_shape":[1,8,8],
  "layers":[{"type":"flatten"},{"type":"linear","out_features":512},{"type":"relu"},
            {"type":"linear","out_features":512},{"type":"relu"},{"type":"linear","out_features":4}]}' >/dev/null
long_steps=4000
long=$(api POST /v1/jobs -H 'Content-Type: application/json' -d "$(spec quads_wide 64 $long_steps 500)" | jq -r .id)
for _ in $(seq 1 600); do
    step=$(api GET "/v1/jobs/$long" | jq -r '.step // .progress.step // 0')
    [ "$step" -ge 600 ] && break
    sleep 0.2
done
[ "$step" -ge 600 ] || fail "job $long did not reach step 600"
podman stop -t 30 "$tag" >/dev/null 2>>"$out/podman.log"
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$tag")
[ "$exit_code" = 0 ] || { podman logs "$tag" | tail; fail "kilnd exited with $exit_code on podman stop"; }
# the job's own log (GET /v1/jobs/{id}/logs, kept on the volume) says where it stopped
# and where it went on from; read once kilnd is back
job_log_step() { # pattern: the step in the job log's last line matching "pattern N"
    api GET "/v1/jobs/$long/logs?format=text" | grep -o "$1 [0-9]*" | tail -1 | grep -o '[0-9]*$' || true
}
podman logs "$tag" >"$out/kilnd-1.log" 2>&1
grep -q "job $long: stopped at step" "$out/kilnd-1.log" ||
    { podman logs "$tag" | tail; fail "kilnd did not stop job $long on SIGTERM (had it finished?)"; }
podman start "$tag" >/dev/null 2>>"$out/podman.log" || { cat "$out/podman.log"; fail "podman start"; }
port=$(podman port "$tag" 8080 | head -1 | sed 's/.*://')
URL=http://127.0.0.1:$port
wait_ready "$tag"
stopped=$(job_log_step "stopped at step")
[ -n "$stopped" ] || fail "job $long's log has no 'stopped at step' line"
say "podman stop at step >= $step: kilnd (PID 1) got SIGTERM, stopped $long at step $stopped, exit 0"
resumed=""
for _ in $(seq 1 60); do
    resumed=$(job_log_step "resuming from the checkpoint at step")
    [ -n "$resumed" ] && break
    sleep 0.5
done
[ -n "$resumed" ] || fail "job $long did not resume after the restart"
if [ "$resumed" -lt "$stopped" ] || [ "$resumed" -le 0 ]; then fail "job $long resumed from step $resumed"; fi
wait_job "$long" succeeded 600
final=$(api GET "/v1/jobs/$long" | jq -r '.step // .progress.step')
[ "$final" = "$long_steps" ] || fail "job $long ended at step $final, not $long_steps"
say "restarted: job $long resumed from step $resumed and succeeded at step $final"

# a new container on the same volume: datasets, jobs and weights are all there
podman stop -t 30 "$tag" >/dev/null 2>>"$out/podman.log"
podman rm "$tag" >/dev/null 2>>"$out/podman.log"
port=$(run_container "$tag-2")
URL=http://127.0.0.1:$port
wait_ready "$tag-2"
[ "$(api GET /v1/datasets/quads | jq -r .name)" = quads ] || fail "the dataset is gone"
[ "$(api GET "/v1/jobs/$job" | jq -r .state)" = succeeded ] || fail "job $job is gone"
api GET "/v1/jobs/$long/weights" -o "$out/weights2.safetensors"
say "a new container on $volume serves the same datasets, jobs and weights"
podman stop -t 30 "$tag-2" >/dev/null 2>>"$out/podman.log"

say "PASS in $((SECONDS - t0)) s (image $((size / 1000000)) MB)"
