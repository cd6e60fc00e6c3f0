#!/usr/bin/env bash
# install-deps.sh — installs the Debian packages Kiln builds and tests with, and only
# those that are missing (so a machine that has them is never touched).
set -euo pipefail

# dataset-fashion-mnist: the data the examples, tests and benchmarks train on
# (/usr/share/datasets/fashion-mnist/). libcurl4-openssl-dev: the kiln client's HTTP
# (https, proxies, keep-alive). openmpi-bin and libopenmpi-dev: distributed training
# (mpirun starts the processes; MPI carries their collectives). With --full
# (./test.sh --full), also what the long runs
# compare against: PyTorch and scikit-learn's bundled data sets (tests/full/).
packages=(build-essential cmake pkg-config libopenblas-dev libcriterion-dev
          libmicrohttpd-dev libcjson-dev libsqlite3-dev zlib1g-dev libcurl4-openssl-dev
          dataset-fashion-mnist openmpi-bin libopenmpi-dev)
[ "${1:-}" = --full ] && packages+=(python3-torch python3-sklearn)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
