#!/usr/bin/env bash
# scripts/device_check.sh - the one prepared check of the CUDA backend on a GPU machine.
#
#   bash scripts/device_check.sh            # logs under $OUT (default /tmp/mmca-device-check)
#
# Needs: nvcc, CMake >= 3.21, ninja, python3 with PyTorch (CUDA); the third-party headers and
# GoogleTest's source in .deps/ (scripts/vendor_deps.sh; the GPU machines have no -dev packages).
# Steps, each with its own time limit, each logging to $OUT/<step>.log:
#   1. device facts (nvidia-smi, nvcc, torch)                     -> device.txt
#   2. configure (Ninja, Release, CUDA on, sm_${CUDA_ARCH:-90}, no Python / CPU benchmarks /
#      examples) and build mmca_cuda_tests + the benchmark's ctypes shim, in parallel -> build.log
#   3. the CUDA tests (GoogleTest)                                -> tests.log
#   4. the benchmark (fused MMCA vs SDPA flash vs the two-softmax method) -> bench.log, bench.md
#   5. compute-sanitizer memcheck and racecheck on a small subset of the attention tests
#                                                                 -> memcheck.log, racecheck.log
# A summary (one line per step: exit code, seconds) goes to $OUT/summary.txt and, with the test
# totals and the benchmark table, to stdout at the end. On an H200 machine with 16 cores it took
# about 60 s (build 33 s). The exit code is that of the test step.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
OUT="${OUT:-/tmp/mmca-device-check}"
BUILD="${BUILD_DIR:-/tmp/mmca-build-cuda}"
ARCH="${CUDA_ARCH:-90}"
JOBS="$(nproc 2>/dev/null || echo 8)"
DEPS="${ROOT}/.deps"
mkdir -p "${OUT}" "${BUILD}"
SUMMARY="${OUT}/summary.txt"
: > "${SUMMARY}"

export PATH="${PATH}:/usr/local/cuda/bin"
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
SANITIZER="$(command -v compute-sanitizer || true)"
for candidate in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
                 /opt/nvidia/*/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
  if [[ -z "${SANITIZER}" && -x "${candidate}" ]]; then SANITIZER="${candidate}"; fi
done
SANITIZER="${SANITIZER:-compute-sanitizer}"

# step NAME LIMIT_SECONDS COMMAND...: runs the command with a time limit, output to NAME.log.
step() {
  local name="$1" limit="$2"
  shift 2
  local start rc
  start="$(date +%s)"
  timeout --kill-after=10 "${limit}" "$@" > "${OUT}/${name}.log" 2>&1
  rc=$?
  printf '%-10s rc=%-3s %4ss\n' "${name}" "${rc}" "$(( $(date +%s) - start ))" | tee -a "${SUMMARY}"
  return "${rc}"
}

# 1. Device facts.
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "${NVCC}" --version 2>&1 | tail -2
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' 2>&1
  echo "cores: ${JOBS}"
  cmake --version | head -1
} > "${OUT}/device.txt" 2>&1
cat "${OUT}/device.txt"

# 2. Configure and build: the tests through CMake, the ctypes shim with nvcc directly.
EIGEN_INC=/usr/include/eigen3
TP_INC=/usr/include
if [[ -d "${DEPS}/include/eigen3" ]]; then EIGEN_INC="${DEPS}/include/eigen3"; TP_INC="${DEPS}/include"; fi
build() {
  cmake -S "${ROOT}" -B "${BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DMMCA_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${ARCH}" -DMMCA_BUILD_PYTHON=OFF \
        -DMMCA_BUILD_BENCHMARKS=OFF -DMMCA_BUILD_EXAMPLES=OFF -DMMCA_BUILD_TESTS=ON \
        -DMMCA_THIRD_PARTY_DIR="${DEPS}" || return 1
  "${NVCC}" -std=c++17 -O3 -arch="sm_${ARCH}" -shared -Xcompiler -fPIC -DEIGEN_NO_CUDA \
            -I"${ROOT}/include" -isystem "${EIGEN_INC}" -isystem "${TP_INC}" \
            "${ROOT}/benchmarks/cuda/mmca_cuda_capi.cu" -o "${BUILD}/libmmca_cuda_capi.so" &
  local shim=$!
  cmake --build "${BUILD}" --target mmca_cuda_tests -j "${JOBS}"
  local rc=$?
  wait "${shim}" || rc=1
  return "${rc}"
}
export ROOT BUILD ARCH JOBS DEPS NVCC EIGEN_INC TP_INC
export -f build
if ! step build 220 bash -c build; then
  tail -40 "${OUT}/build.log"
  exit 1
fi
TESTS="${BUILD}/tests/cuda/mmca_cuda_tests"

# 3. The CUDA tests.
step tests 100 "${TESTS}" --gtest_brief=1 --gtest_color=no
TEST_RC=$?

# 4. The benchmark.
step bench 110 env PYTHONUNBUFFERED=1 python3 "${ROOT}/benchmarks/cuda/bench_attention_cuda.py" \
     --lib "${BUILD}/libmmca_cuda_capi.so" --out "${OUT}/bench.md"

# 5. compute-sanitizer on a subset (tiled tensor-core and float32 paths, rows kernel with and
#    without splits, the fill and combine kernels, the KV-cache append). memcheck: every variant on
#    six cases in float32 and bfloat16 plus decoding; racecheck (slower): three variants on three cases.
MEM='Cases/CudaAttention.MatchesCpuReference/L37_D80*_bf16:Cases/CudaAttention.MatchesCpuReference/L37_D80*_f32'
MEM+=':Cases/CudaAttention.MatchesCpuReference/Lk300_Lq45*_bf16:Cases/CudaAttention.MatchesCpuReference/Lk300_Lq45*_f32'
MEM+=':Cases/CudaAttention.MatchesCpuReference/L257_D64*_f16:Cases/CudaAttention.MatchesCpuReference/L40_D256*_bf16'
MEM+=':Cases/CudaAttention.MatchesCpuReference/decode_Lk700*_bf16:Cases/CudaAttention.MatchesCpuReference/B3_mixed*_f32'
MEM+=':Cases/CudaDecode.ChunkedPrefill/mmca_reference_bf16:CudaAttentionSplits.*'
RACE='Cases/CudaAttention.MatchesCpuReference/L37_D80_gqa21_interleaved_mmca*_bf16'
RACE+=':Cases/CudaAttention.MatchesCpuReference/Lk300_Lq45_suffix_queries_causal_cross_latest_f32'
RACE+=':Cases/CudaAttention.MatchesCpuReference/L257_D64_padding_mmca_f16'
RACE+=':Cases/CudaAttention.MatchesCpuReference/L130_D104_leading_image_causal_bf16'
step memcheck 75 "${SANITIZER}" --tool memcheck --error-exitcode 3 "${TESTS}" --gtest_filter="${MEM}" --gtest_color=no
step racecheck 75 "${SANITIZER}" --tool racecheck --racecheck-report all --error-exitcode 3 "${TESTS}" \
     --gtest_filter="${RACE}" --gtest_color=no

echo "==== summary"
cat "${SUMMARY}"
echo "==== tests"
grep -E '^\[  (PASSED|FAILED|SKIPPED) +\]|tests? ran|^\[  FAILED  \]' "${OUT}/tests.log" | head -40
grep -B2 -A12 -m 6 'Failure' "${OUT}/tests.log" | head -80
echo "==== sanitizers"
grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|Device not supported|PASSED|FAILED' "${OUT}/memcheck.log" "${OUT}/racecheck.log" | head -20
echo "==== benchmark"
grep -E '^check' "${OUT}/bench.log"
cat "${OUT}/bench.md" 2>/dev/null || tail -20 "${OUT}/bench.log"
exit "${TEST_RC}"
