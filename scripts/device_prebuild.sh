#!/usr/bin/env bash
# scripts/device_prebuild.sh - pack the CUDA test executable and the CUDA libraries, built here, for
# scripts/device_check.sh on a GPU machine (PREBUILT=ARCHIVE), so that the GPU's time goes to the
# tests and the benchmark rather than to nvcc.
#
#   bash scripts/device_prebuild.sh BUILD_DIR [ARCHIVE]     # ARCHIVE defaults to .device/prebuilt.tar.xz
#
# BUILD_DIR is a configured build with MMCA_ENABLE_CUDA=ON and the architecture of the GPU machine
# (CMAKE_CUDA_ARCHITECTURES=90 for an H100/H200); the targets mmca_cuda_tests and mmca_cuda are
# brought up to date in it. The benchmark's ctypes shim (benchmarks/cuda/mmca_cuda_capi.cu) is
# compiled next to them unless BUILD_DIR already holds a libmmca_cuda_capi.so newer than its sources.
# The archive also carries the third-party headers that python/src/bind_cuda.cpp needs (Eigen, xtensor, xtl,
# nlohmann-json), which the GPU machines lack. The nvcc here must be the one on the GPU machine (or
# older than its driver), and the host code must not use instructions its processor lacks: a build
# with -march=native on one processor may not run on another.
#
# PYTHON_CORE=path/to/_core.cpython-3XY-....so adds the CPU module mmca._core, built here for the
# GPU machine's Python (e.g. a build with -DPython_EXECUTABLE=python3.12 and pip's pybind11), and
# the SentencePiece library it links, so that the tests comparing mmca.cuda with the CPU module
# run there too (the GPU machines have no SentencePiece to build it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(cd "${1:?usage: device_prebuild.sh BUILD_DIR [ARCHIVE]}" && pwd)"
ARCHIVE="${2:-${ROOT}/.device/prebuilt.tar.xz}"
ARCH="$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "${BUILD}/CMakeCache.txt")"
if [[ -z "${ARCH}" ]]; then
  echo "device_prebuild: ${BUILD} is not a CUDA build (no CMAKE_CUDA_ARCHITECTURES in its CMakeCache.txt)" >&2
  exit 1
fi
cmake --build "${BUILD}" --target mmca_cuda_tests mmca_cuda

STAGE="$(mktemp -d)"
trap 'rm -rf "${STAGE}"' EXIT
SHIM="${BUILD}/libmmca_cuda_capi.so"
if [[ ! -f "${SHIM}" || -n "$(find "${ROOT}/include" "${ROOT}/benchmarks/cuda" -newer "${SHIM}" -print -quit)" ]]; then
  echo "device_prebuild: compiling the benchmark shim for sm_${ARCH%%-*}"
  nvcc -std=c++17 -O3 -arch="sm_${ARCH%%-*}" -shared -Xcompiler -fPIC -DEIGEN_NO_CUDA -I"${ROOT}/include" \
       -isystem /usr/include/eigen3 "${ROOT}/benchmarks/cuda/mmca_cuda_capi.cu" -o "${SHIM}"
fi
cp "${BUILD}/tests/cuda/mmca_cuda_tests" "${BUILD}/libmmca_cuda.so" "${SHIM}" "${STAGE}/"
if [[ -n "${PYTHON_CORE:-}" ]]; then
  mkdir -p "${STAGE}/python"
  cp "${PYTHON_CORE}" "${STAGE}/python/"
  # The SentencePiece library mmca._core links (the only non-system one).
  ldd "${PYTHON_CORE}" | awk '/libsentencepiece/ {print $3}' | xargs -r -I{} cp -L {} "${STAGE}/python/"
fi
mkdir -p "${STAGE}/include"
cp -r /usr/include/eigen3 /usr/include/nlohmann /usr/include/xtensor /usr/include/xtl "${STAGE}/include/"
mkdir -p "$(dirname "${ARCHIVE}")"
tar -C "${STAGE}" -cf - . | xz -T0 -6 > "${ARCHIVE}.tmp"
mv "${ARCHIVE}.tmp" "${ARCHIVE}"
echo "device_prebuild: ${ARCHIVE} ($(du -h "${ARCHIVE}" | cut -f1)), sm_${ARCH}"
