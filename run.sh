#!/usr/bin/env bash
# run.sh — installs what is missing, builds kilnd and kiln (Release) into build/, and starts kilnd
# on 127.0.0.1:8080 with its database and files under ./data. Extra arguments go to
# kilnd (build/kilnd --help lists them; each flag also reads a KILND_* variable):
#   ./run.sh                         listen on 127.0.0.1:8080, data in ./data
#   ./run.sh --port 9000 --workers 2
#   KILND_LOG_LEVEL=debug ./run.sh
set -euo pipefail
cd "$(dirname "$0")"

./scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
# only what this script serves: the daemon (with the CUDA module it loads, when nvcc was
# found) and the command line; ./test.sh builds the tests, fuzz targets and benchmarks
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target kilnd kiln
mkdir -p data
# exec: kilnd takes this process's place, so Ctrl-C and SIGTERM reach it directly (it
# checkpoints running jobs and exits within 10 seconds).
exec build/kilnd --listen "${KILND_LISTEN:-127.0.0.1}" --port "${KILND_PORT:-8080}" \
    --data-dir "${KILND_DATA_DIR:-./data}" "$@"
