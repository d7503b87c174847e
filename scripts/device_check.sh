#!/usr/bin/env bash
# scripts/device_check.sh - the one prepared check of the CUDA backend on a GPU machine.
#
#   bash scripts/device_check.sh            # logs under $OUT (default /tmp/mmca-device-check)
#
# Needs: nvcc, CMake >= 3.21, ninja, python3 with PyTorch (CUDA); the third-party headers and
# GoogleTest's source in .deps/ (scripts/vendor_deps.sh; the GPU machines have no -dev packages).
#
#   PREBUILT=.device/prebuilt.tar.xz bash scripts/device_check.sh
#
# takes the CUDA test executable and both CUDA libraries from an archive that
# scripts/device_prebuild.sh made on another machine with the same nvcc, instead of building them
# (the CUDA test sources take about 25 CPU-minutes to compile); mmca._cuda is then compiled on the
# spot from python/src/bind_cuda.cpp against that libmmca_cuda.so (one C++ file, no nvcc). When
# the archive also holds the CPU module mmca._core (device_prebuild.sh's PYTHON_CORE), the Python
# tests run on the whole package, including those that compare mmca.cuda with the CPU module.
# Steps, each with its own time limit, each logging to $OUT/<step>.log:
#   1. device facts (nvidia-smi, nvcc, torch)                     -> device.txt
#   2. configure (Ninja, Release, CUDA on, sm_${CUDA_ARCH:-90}, no CPU benchmarks / examples; of
#      Python only mmca._cuda, with pip's pybind11) and build mmca_cuda_tests, _cuda and the
#      benchmark's ctypes shim, in parallel                       -> build.log
#   3. compute-sanitizer memcheck and racecheck on a subset of the tests, in the background
#                                                                 -> memcheck.log, racecheck.log
#   4. the CUDA tests (GoogleTest), then tests/test_cuda.py on mmca._cuda -> tests.log, pytest.log
#   5. the benchmark (fused MMCA forward and backward vs SDPA flash vs the two-softmax method),
#      alone on the GPU; BENCH_ARGS adds arguments               -> bench.log, bench.md
# A summary (one line per step: exit code, seconds) goes to $OUT/summary.txt and, with the test
# totals and the benchmark table, to stdout at the end. The exit code is that of the test step.
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
  # The Python side: only mmca._cuda (no SentencePiece here), with pip's pybind11 when present.
  local python_flags=(-DMMCA_BUILD_PYTHON=OFF)
  local pybind_dir
  if pybind_dir="$(python3 -m pybind11 --cmakedir 2>/dev/null)"; then
    python_flags=(-DMMCA_BUILD_PYTHON=ON -DMMCA_PYTHON_CUDA_ONLY=ON -Dpybind11_DIR="${pybind_dir}"
                  -DPython_EXECUTABLE="$(command -v python3)")
  fi
  cmake -S "${ROOT}" -B "${BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DMMCA_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${ARCH}" "${python_flags[@]}" \
        -DMMCA_BUILD_BENCHMARKS=OFF -DMMCA_BUILD_EXAMPLES=OFF -DMMCA_BUILD_TESTS=ON \
        -DMMCA_THIRD_PARTY_DIR="${DEPS}" || return 1
  "${NVCC}" -std=c++17 -O3 -arch="sm_${ARCH}" -shared -Xcompiler -fPIC -DEIGEN_NO_CUDA \
            -I"${ROOT}/include" -isystem "${EIGEN_INC}" -isystem "${TP_INC}" \
            "${ROOT}/benchmarks/cuda/mmca_cuda_capi.cu" -o "${BUILD}/libmmca_cuda_capi.so" &
  local shim=$!
  local targets=(mmca_cuda_tests)
  if [[ "${python_flags[0]}" == "-DMMCA_BUILD_PYTHON=ON" ]]; then targets+=(_cuda); fi
  cmake --build "${BUILD}" --target "${targets[@]}" -j "${JOBS}"
  local rc=$?
  wait "${shim}" || rc=1
  return "${rc}"
}
export ROOT BUILD ARCH JOBS DEPS NVCC EIGEN_INC TP_INC
export -f build

# The prebuilt alternative: unpack; the Python module is compiled with the host compiler meanwhile
# (step pymodule, in the background beside the tests).
unpack() {
  mkdir -p "${BUILD}/tests/cuda" "${BUILD}/python/mmca" "${BUILD}/prebuilt" || return 1
  tar -xJf "${PREBUILT}" -C "${BUILD}/prebuilt" || return 1
  mv "${BUILD}/prebuilt/mmca_cuda_tests" "${BUILD}/tests/cuda/" &&
    mv "${BUILD}/prebuilt/libmmca_cuda.so" "${BUILD}/prebuilt/libmmca_cuda_capi.so" "${BUILD}/"
}
pymodule() {
  local pybind_inc suffix eigen_inc="${EIGEN_INC}" tp_inc="${TP_INC}"
  if [[ -d "${BUILD}/prebuilt/include/eigen3" ]]; then
    eigen_inc="${BUILD}/prebuilt/include/eigen3"
    tp_inc="${BUILD}/prebuilt/include"
  fi
  pybind_inc="$(python3 -m pybind11 --includes)" || return 1
  suffix="$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" || return 1
  # shellcheck disable=SC2086
  c++ -std=c++17 -O2 -DNDEBUG -shared -fPIC -fvisibility=hidden -fopenmp ${pybind_inc} -I"${ROOT}/include" \
      -isystem "${eigen_inc}" -isystem "${tp_inc}" "${ROOT}/python/src/bind_cuda.cpp" \
      -L"${BUILD}" -lmmca_cuda -Wl,-rpath,"${BUILD}" -o "${BUILD}/python/mmca/_cuda${suffix}"
}
PY_PID=""
if [[ -n "${PREBUILT:-}" ]]; then
  export PREBUILT
  export -f unpack pymodule
  export LD_LIBRARY_PATH="${BUILD}:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
  if ! step build 120 bash -c unpack; then
    tail -40 "${OUT}/build.log"
    exit 1
  fi
  step pymodule 240 bash -c pymodule &
  PY_PID=$!
elif ! step build 220 bash -c build; then
  tail -40 "${OUT}/build.log"
  exit 1
fi
TESTS="${BUILD}/tests/cuda/mmca_cuda_tests"

# 3. compute-sanitizer, in the background beside the tests, on a subset: the tiled tensor-core and
#    float32 paths, the rows kernel with and without splits, the fill and combine kernels, the
#    KV-cache append, the backward kernels (FFMA and tensor cores), the model ops, the dense
#    attention, the vision encoders, the decoder model, both CTA orders and the automatic backward
#    choice. memcheck: every variant on several cases in float32, float16 and bfloat16 plus
#    decoding; racecheck (slower): a few cases.
MEM='Cases/CudaAttention.MatchesCpuReference/L37_D80*_bf16:Cases/CudaAttention.MatchesCpuReference/L37_D80*_f32'
MEM+=':Cases/CudaAttention.MatchesCpuReference/Lk300_Lq45*_bf16:Cases/CudaAttention.MatchesCpuReference/Lk300_Lq45*_f32'
MEM+=':Cases/CudaAttention.MatchesCpuReference/L257_D64*_f16:Cases/CudaAttention.MatchesCpuReference/L40_D256*_bf16'
MEM+=':Cases/CudaAttention.MatchesCpuReference/decode_Lk700*_bf16:Cases/CudaAttention.MatchesCpuReference/B3_mixed*_f32'
MEM+=':Cases/CudaDecode.ChunkedPrefill/mmca_reference_bf16:CudaAttentionSplits.*'
MEM+=':Cases/CudaBackward.MatchesCpuReference/L37_D80*_bf16:Cases/CudaBackward.MatchesCpuReference/Lk300_Lq45*_f32'
MEM+=':Cases/CudaBackward.MatchesCpuReference/L40_D256*_f16:Cases/CudaBackward.MatchesCpuReference/B3_mixed*_f32'
MEM+=':Cases/CudaBackward.MatchesCpuReference/Lk300_Lq45*_bf16:Cases/CudaBackward.MatchesCpuReference/L257_D64*_f16'
MEM+=':CudaOps*:CudaDenseAttention.*:CudaQwenVit.Float32MatchesCpu:CudaClipVit.Float32MatchesCpu'
MEM+=':Variants/CudaLlamaModel.Float32MatchesCpu/mmca:CudaAttentionOrder.*:CudaBackwardAutomatic.*'
RACE='Cases/CudaAttention.MatchesCpuReference/L37_D80_gqa21_interleaved_mmca*_bf16'
RACE+=':Cases/CudaAttention.MatchesCpuReference/Lk300_Lq45_suffix_queries_causal_cross_latest_f32'
RACE+=':Cases/CudaAttention.MatchesCpuReference/L257_D64_padding_mmca_f16'
RACE+=':Cases/CudaAttention.MatchesCpuReference/L130_D104_leading_image_causal_bf16'
RACE+=':Cases/CudaBackward.MatchesCpuReference/L37_D80_gqa21_interleaved_mmca_reference_bf16'
RACE+=':Cases/CudaBackward.MatchesCpuReference/Lk300_Lq45_suffix_queries_causal_cross_latest_f32'
RACE+=':Cases/CudaBackward.MatchesCpuReference/L257_D64_padding_mmca_f16'
step memcheck 150 "${SANITIZER}" --tool memcheck --error-exitcode 3 "${TESTS}" --gtest_filter="${MEM}" --gtest_color=no &
MEM_PID=$!
step racecheck 150 "${SANITIZER}" --tool racecheck --racecheck-report all --error-exitcode 3 "${TESTS}" \
     --gtest_filter="${RACE}" --gtest_color=no &
RACE_PID=$!

# 4. The CUDA tests, and mmca.cuda from Python (a package folder holding only cuda.py and _cuda:
#    the CPU module is not built here).
step tests 200 "${TESTS}" --gtest_brief=1 --gtest_color=no --gtest_output="xml:${OUT}/tests.xml"
TEST_RC=$?
[[ -z "${PY_PID}" ]] || wait "${PY_PID}"
if ls "${BUILD}"/python/mmca/_cuda*.so > /dev/null 2>&1; then
  SHIM="${BUILD}/pyshim"
  rm -rf "${SHIM}" && mkdir -p "${SHIM}/mmca" "${SHIM}/tests"
  if ls "${BUILD}"/prebuilt/python/_core*.so > /dev/null 2>&1; then
    cp "${ROOT}"/python/mmca/*.py "${BUILD}"/prebuilt/python/_core*.so "${SHIM}/mmca/"
    cp "${ROOT}"/python/tests/*.py "${SHIM}/tests/"  # the helpers test_cuda.py imports
    export LD_LIBRARY_PATH="${BUILD}/prebuilt/python${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
  else
    : > "${SHIM}/mmca/__init__.py"
  fi
  cp "${BUILD}"/python/mmca/_cuda*.so "${ROOT}/python/mmca/cuda.py" "${SHIM}/mmca/"
  cp "${ROOT}/python/tests/test_cuda.py" "${SHIM}/tests/"
  if ! step pytest 120 env PYTHONPATH="${SHIM}" python3 -X faulthandler -m pytest -q -rs -p no:cacheprovider \
       "${SHIM}/tests/test_cuda.py" && command -v cuda-gdb > /dev/null; then
    # A crash in native code: its backtrace.
    PYTHONPATH="${SHIM}" timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 -m pytest -q -x \
      -p no:cacheprovider "${SHIM}/tests/test_cuda.py" > "${OUT}/pytest_gdb.log" 2>&1
  fi
fi
wait "${MEM_PID}" "${RACE_PID}"

# 5. The benchmark (alone on the GPU; SKIP_BENCH=1 skips it).
[[ -n "${SKIP_BENCH:-}" ]] || step bench 240 env PYTHONUNBUFFERED=1 python3 "${ROOT}/benchmarks/cuda/bench_attention_cuda.py" \
     --lib "${BUILD}/libmmca_cuda_capi.so" --out "${OUT}/bench.md" ${BENCH_ARGS:-}

echo "==== summary"
cat "${SUMMARY}"
echo "==== tests"
grep -E '^\[  (PASSED|FAILED|SKIPPED) +\]|tests? ran|^\[  FAILED  \]' "${OUT}/tests.log" | head -40
grep -B2 -A12 -m 6 'Failure' "${OUT}/tests.log" | head -80
echo "==== sanitizers"
grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|Device not supported|PASSED|FAILED' "${OUT}/memcheck.log" "${OUT}/racecheck.log" | head -20
echo "==== python"
tail -15 "${OUT}/pytest.log" 2>/dev/null
grep -A25 -m1 '^#0' "${OUT}/pytest_gdb.log" 2>/dev/null
echo "==== benchmark"
grep -E '^check' "${OUT}/bench.log"
cat "${OUT}/bench.md" 2>/dev/null || tail -20 "${OUT}/bench.log"
exit "${TEST_RC}"
