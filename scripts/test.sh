#!/usr/bin/env bash
# scripts/test.sh - set up the machine, build everything and run every test (what CI runs).
#
#   bash scripts/test.sh
#
# Runs scripts/setup.sh, configures a Release build in build/, builds it and runs ctest: the C++
# unit tests, the public-header check (a build step), the consumer tests (find_package,
# add_subdirectory, pkg-config) and the Python tests. Exits non-zero when anything fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ROOT}/build"
cd "${ROOT}"

bash scripts/setup.sh
bash scripts/configure.sh "${BUILD_DIR}"
cmake --build "${BUILD_DIR}" -j "$(nproc)"

cd "${BUILD_DIR}"
# --no-tests=error: a build that registered no test at all is a failure, not a pass.
ctest --output-on-failure -j2 --no-tests=error
