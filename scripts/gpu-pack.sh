#!/usr/bin/env bash
# scripts/gpu-pack.sh — run HERE (the build machine, no GPU needed): builds what a GPU
# session runs and packs it into the ignored folder .device/, which the device tool
# carries to the lent machine beside the working tree (carry [".device"]); there
# `bash bench/cuda/run.sh` uses it. The device has nvcc, the driver, cuBLAS and torch,
# but none of Kiln's own dependencies (OpenBLAS, cJSON, Criterion, ...), so they travel
# too. Layout:
#   .device/bin/        kiln, every test_cuda* executable, bench_cuda_matmul, and
#                       libkiln_cuda.so beside them (the engine looks next to the executable)
#   .device/libs.tar.xz every shared library they need that is neither glibc's, the
#                       driver's (libcuda) nor the CUDA toolkit's (cudart, cuBLAS)
#   .device/data/       the four Fashion-MNIST IDX files (gzip, as they are)
#   .device/MANIFEST.txt what was built from which commit, and the sizes
# Fails when .device plus the files the tool copies would pass 60 MiB (its limit is 64).
#   usage: scripts/gpu-pack.sh [--archs LIST] [--build DIR] [--jobs N]
set -euo pipefail
cd "$(dirname "$0")/.."

archs=90
build="build-gpu"
jobs="$(nproc 2>/dev/null || echo 2)"
data_src=/usr/share/datasets/fashion-mnist
limit_mib=60
while [ $# -gt 0 ]; do
    case "$1" in
        --archs) archs="$2"; shift 2 ;;
        --build) build="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        *) echo "usage: $0 [--archs LIST] [--build DIR] [--jobs N]" >&2; exit 2 ;;
    esac
done

pack=.device
die() { echo "gpu-pack: $*" >&2; exit 1; }

# ---- build --------------------------------------------------------------------------
cuda_tests=()
for source in tests/test_cuda*.c; do
    name="$(basename "$source" .c)"
    cuda_tests+=("$name")
done
# the golden fixtures' CUDA twins (CMakeLists.txt builds one per tests/test_golden_*.c)
for source in tests/test_golden_*.c; do
    name="$(basename "$source" .c)"
    cuda_tests+=("${name/test_golden_/test_cuda_golden_}")
done
[ ${#cuda_tests[@]} -gt 0 ] || die "no tests/test_cuda*.c"
targets=(kiln kiln_cuda bench_cuda_matmul "${cuda_tests[@]}")

mkdir -p "$build"
log="$build/gpu-pack"
echo "gpu-pack: configuring $build (Release, CUDA archs $archs)" >&2
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKILN_SANITIZE=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$archs" >"$log.configure.log" 2>&1 ||
    { tail -20 "$log.configure.log" >&2; die "configure failed ($log.configure.log)"; }
grep -q "CUDA module: libkiln_cuda.so" "$log.configure.log" ||
    die "cmake found no nvcc/cuBLAS: no CUDA module would be built"
echo "gpu-pack: building ${targets[*]} (-j$jobs)" >&2
cmake --build "$build" -j "$jobs" --target "${targets[@]}" >"$log.build.log" 2>&1 ||
    { tail -30 "$log.build.log" >&2; die "build failed ($log.build.log)"; }

# ---- binaries -----------------------------------------------------------------------
rm -rf "$pack"
mkdir -p "$pack/bin" "$pack/data"
binaries=(kiln bench_cuda_matmul "${cuda_tests[@]}")
for b in "${binaries[@]}"; do
    [ -x "$build/$b" ] || die "$build/$b was not built"
    cp "$build/$b" "$pack/bin/"
done
cp "$build/libkiln_cuda.so" "$pack/bin/"

# ---- the shared libraries they need ---------------------------------------------------
# Left out: glibc's own (the device's newer glibc serves binaries built against 2.36), the
# driver's libcuda, and the toolkit's cudart/cuBLAS, which the device has in
# /usr/local/cuda or in torch's pip packages.
is_left_out() {
    case "$1" in
        linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libpthread.so* | libdl.so* | \
            librt.so* | libresolv.so* | libcuda.so* | libcudart.so* | libcublas.so* | \
            libcublasLt.so*) return 0 ;;
    esac
    return 1
}

staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
missing=0
for f in "$pack/bin"/*; do
    while read -r name arrow path _; do
        is_left_out "$name" && continue
        if [ "$arrow" != "=>" ]; then continue; fi
        if [ "$path" = "not" ]; then
            echo "gpu-pack: $(basename "$f") needs $name, which is not found here" >&2
            missing=1
            continue
        fi
        [ -e "$staging/$name" ] || cp -L "$path" "$staging/$name"
    done < <(ldd "$f")
done
[ "$missing" = 0 ] || die "unresolved libraries (see above)"
tar -C "$staging" -cJf "$pack/libs.tar.xz" .
libs="$(find "$staging" -type f -printf '%f\n' | sort | tr '\n' ' ')"

# ---- data ---------------------------------------------------------------------------
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
    t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -f "$data_src/$f" ] || die "$data_src/$f is missing (package dataset-fashion-mnist)"
    cp "$data_src/$f" "$pack/data/"
done

# ---- manifest and the size check ----------------------------------------------------
{
    echo "built $(date -u +%Y-%m-%dT%H:%MZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes')"
    nvcc_version="$(sed -n 's/^set(CMAKE_CUDA_COMPILER_VERSION "\(.*\)")/\1/p' \
        "$build"/CMakeFiles/*/CMakeCUDACompiler.cmake | head -1)"
    echo "Release, CUDA archs $archs, nvcc $nvcc_version"
    echo "libs.tar.xz: $libs"
    (cd "$pack" && find . -type f ! -name MANIFEST.txt -printf '%10s  %p\n' | sort -k2)
} >"$pack/MANIFEST.txt"

pack_bytes="$(du -sb "$pack" | cut -f1)"
tree_bytes="$(git ls-files -z --cached --others --exclude-standard |
    xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')"
total=$((pack_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu-pack: .device $(mib "$pack_bytes") + working tree $(mib "$tree_bytes") = $(mib "$total") (limit ${limit_mib} MiB)"
[ "$total" -le $((limit_mib * 1048576)) ] || die "over ${limit_mib} MiB: the device tool would refuse it"
cat "$pack/MANIFEST.txt"
echo "gpu-pack: ready. On the device: command 'bash bench/cuda/run.sh', carry [\".device\"]"
