#!/usr/bin/env bash
# scripts/vendor_deps.sh - copy the third-party headers (and GoogleTest's source) that the build needs
# into a git-ignored prefix, by default .deps/, so that a machine without the Debian -dev packages
# (the GPU machines: no apt, no network) configures and builds mmca from the tree alone.
#
#   bash scripts/vendor_deps.sh [DEST]        # DEST defaults to <repo>/.deps
#
# Layout (a CMake prefix; CMakeLists.txt prepends MMCA_THIRD_PARTY_DIR, default .deps, to
# CMAKE_PREFIX_PATH, and tests/CMakeLists.txt builds .deps/googletest when GTest is not installed):
#   DEST/include/eigen3/...                        Eigen 3.4 headers
#   DEST/share/eigen3/cmake/Eigen3Config.cmake     find_package(Eigen3)
#   DEST/include/{xtensor,xtl,nlohmann,stb}/...    xtensor, xtl, nlohmann-json, stb headers
#   DEST/lib/<triplet>/cmake/xtensor/              find_package(xtensor)
#   DEST/share/cmake/{xtl,nlohmann_json}/          find_package(xtl), find_package(nlohmann_json)
#   DEST/share/pkgconfig/*.pc                      pkg-config files, relocated with ${pcfiledir}
#   DEST/googletest/                               GoogleTest + GoogleMock sources (add_subdirectory)
# The packages' own CMake files locate their headers relative to themselves, so the copies work
# wherever DEST lands. Run it on a machine that has the packages (scripts/setup.sh installs them);
# running it again replaces the copies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${ROOT}/.deps}"
TRIPLET="$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"

log() { printf '[vendor_deps] %s\n' "$*"; }
need() {
  if [[ ! -e "$1" ]]; then
    log "missing $1 (install the Debian package $2, e.g. with scripts/setup.sh)"
    exit 1
  fi
}

need /usr/include/eigen3/Eigen/Core libeigen3-dev
need /usr/share/eigen3/cmake/Eigen3Config.cmake libeigen3-dev
need /usr/include/xtensor/xtensor.hpp libxtensor-dev
need /usr/include/xtl/xtl_config.hpp xtl-dev
need /usr/src/googletest/CMakeLists.txt googletest

XTENSOR_CMAKE=""
for dir in "/usr/lib/${TRIPLET}/cmake/xtensor" /usr/lib/*/cmake/xtensor /usr/share/cmake/xtensor /usr/lib/cmake/xtensor; do
  if [[ -f "${dir}/xtensorConfig.cmake" ]]; then XTENSOR_CMAKE="${dir}"; break; fi
done
XTL_CMAKE=""
for dir in /usr/share/cmake/xtl "/usr/lib/${TRIPLET}/cmake/xtl" /usr/lib/cmake/xtl; do
  if [[ -f "${dir}/xtlConfig.cmake" ]]; then XTL_CMAKE="${dir}"; break; fi
done
[[ -n "${XTENSOR_CMAKE}" ]] || { log "xtensorConfig.cmake not found (libxtensor-dev)"; exit 1; }
[[ -n "${XTL_CMAKE}" ]] || { log "xtlConfig.cmake not found (xtl-dev)"; exit 1; }

mkdir -p "${DEST}"
DEST="$(cd "${DEST}" && pwd)"
log "copying into ${DEST}"
rm -rf "${DEST}/include" "${DEST}/share" "${DEST}/lib" "${DEST}/googletest"
mkdir -p "${DEST}/include" "${DEST}/share/eigen3" "${DEST}/share/cmake" "${DEST}/share/pkgconfig" \
         "${DEST}/lib/${TRIPLET}/cmake"

# Eigen
cp -a /usr/include/eigen3 "${DEST}/include/eigen3"
cp -a /usr/share/eigen3/cmake "${DEST}/share/eigen3/cmake"
# xtensor + xtl
cp -a /usr/include/xtensor "${DEST}/include/xtensor"
cp -a /usr/include/xtl "${DEST}/include/xtl"
cp -a "${XTENSOR_CMAKE}" "${DEST}/lib/${TRIPLET}/cmake/xtensor"
cp -a "${XTL_CMAKE}" "${DEST}/share/cmake/xtl"
# nlohmann-json and stb (optional: copied when installed)
if [[ -d /usr/include/nlohmann ]]; then
  cp -a /usr/include/nlohmann "${DEST}/include/nlohmann"
  for dir in /usr/share/cmake/nlohmann_json "/usr/lib/${TRIPLET}/cmake/nlohmann_json"; do
    if [[ -f "${dir}/nlohmann_jsonConfig.cmake" ]]; then cp -a "${dir}" "${DEST}/share/cmake/nlohmann_json"; break; fi
  done
else
  log "nlohmann-json not installed: skipped"
fi
if [[ -d /usr/include/stb ]]; then cp -a /usr/include/stb "${DEST}/include/stb"; fi
# GoogleTest (sources; built by the project when no installed GTest is found)
cp -a /usr/src/googletest "${DEST}/googletest"

# pkg-config files, relocated: the prefix becomes the folder two levels above the .pc file.
for name in eigen3 xtensor xtl nlohmann_json stb; do
  pc=""
  for dir in /usr/share/pkgconfig "/usr/lib/${TRIPLET}/pkgconfig" /usr/lib/pkgconfig; do
    if [[ -f "${dir}/${name}.pc" ]]; then pc="${dir}/${name}.pc"; break; fi
  done
  [[ -n "${pc}" ]] || continue
  sed -e 's#^prefix=/usr$#prefix=${pcfiledir}/../..#' \
      -e 's#-I/usr/include#-I${pcfiledir}/../../include#g' \
      "${pc}" > "${DEST}/share/pkgconfig/${name}.pc"
done

log "done: $(du -sh "${DEST}" | cut -f1) in ${DEST}"
log "configure with -DMMCA_THIRD_PARTY_DIR=${DEST} (the default when DEST is <repo>/.deps)"
