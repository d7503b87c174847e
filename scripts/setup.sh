#!/usr/bin/env bash
# scripts/setup.sh - install what mmca needs on Debian 12, then make the Python environment.
#
#   bash scripts/setup.sh
#
# 1. Debian packages: installs only the missing ones (apt-get update runs only then), as root or
#    through sudo.
# 2. .venv: a virtual environment of the Debian interpreter /usr/bin/python3 with
#    --system-site-packages (so Debian's numpy, torch, pytest, pybind11 stay visible), into which
#    pip installs requirements-dev.txt. pip runs only when a listed requirement is not satisfied.
# Safe to run again: a second run changes nothing and takes a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv"
REQUIREMENTS="${ROOT}/requirements-dev.txt"
SYSTEM_PYTHON=/usr/bin/python3

log() { printf '[setup] %s\n' "$*"; }

# ---------------------------------------------------------------------------------------------
# 1. Debian packages (every name checked against Debian 12 "bookworm").
# ---------------------------------------------------------------------------------------------
PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libeigen3-dev libxtensor-dev xtl-dev
  libgtest-dev googletest libbenchmark-dev
  pybind11-dev python3-dev python3-pybind11 python3-numpy python3-pytest python3-torch
  python3-matplotlib python3-pil python3-venv python3-pip
  nlohmann-json3-dev libstb-dev libsentencepiece-dev sentencepiece
  libopenblas0-pthread  # an optimised BLAS for Debian's torch (benchmarks/torch_attention.py)
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  log "this is not a Debian system (no dpkg/apt-get): install the equivalents of ${PACKAGES[*]} by hand"
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)"
  if [[ "${status}" != "install ok installed" ]]; then
    missing+=("${pkg}")
  fi
done

if ((${#missing[@]} == 0)); then
  log "Debian packages: all ${#PACKAGES[@]} present"
else
  if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    log "missing Debian packages: ${missing[*]}"
    log "run this script as root (or install sudo) so that they can be installed"
    exit 1
  fi
  log "Debian packages missing: ${missing[*]}"
  log "running apt-get update"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  log "running apt-get install -y ${missing[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  log "Debian packages: installed ${#missing[@]}"
fi

# ---------------------------------------------------------------------------------------------
# 2. The virtual environment.
# ---------------------------------------------------------------------------------------------
venv_ok() {
  [[ -x "${VENV}/bin/python" && -f "${VENV}/pyvenv.cfg" ]] || return 1
  # It must be the Debian interpreter's venv with the system site packages visible.
  grep -Eq '^home *= */usr/bin$' "${VENV}/pyvenv.cfg" || return 1
  grep -Eq '^include-system-site-packages *= *true$' "${VENV}/pyvenv.cfg" || return 1
  "${VENV}/bin/python" -c 'import numpy, pip' >/dev/null 2>&1
}

if venv_ok; then
  log "venv: ${VENV} present"
else
  if [[ -e "${VENV}" ]]; then
    log "venv: ${VENV} is not a --system-site-packages venv of ${SYSTEM_PYTHON}; recreating it"
    rm -rf "${VENV}"
  fi
  log "venv: creating ${VENV} from ${SYSTEM_PYTHON} with --system-site-packages"
  "${SYSTEM_PYTHON}" -m venv --system-site-packages "${VENV}"
fi

if [[ ! -f "${REQUIREMENTS}" ]]; then
  log "pip: no ${REQUIREMENTS#"${ROOT}"/}; nothing to install"
  exit 0
fi

# Prints the requirements of the file that the venv does not satisfy (all of them when a line
# cannot be judged, e.g. pip options), one per line; nothing when pip has nothing to do.
unsatisfied="$("${VENV}/bin/python" - "${REQUIREMENTS}" <<'PY'
import sys
from importlib import metadata

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

lines = []
with open(sys.argv[1], encoding="utf-8") as f:
    for raw in f:
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)

missing = []
for line in lines:
    try:
        req = Requirement(line)
    except InvalidRequirement:
        missing.append(line)  # an option or URL: leave the judgement to pip
        continue
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(line)
        continue
    if req.specifier and not req.specifier.contains(installed, prereleases=True):
        missing.append(f"{line} (have {installed})")
print("\n".join(missing))
PY
)"

if [[ -z "${unsatisfied}" ]]; then
  log "pip: every requirement of ${REQUIREMENTS#"${ROOT}"/} already satisfied"
else
  log "pip: to install: $(echo "${unsatisfied}" | paste -sd ',' - | sed 's/,/, /g')"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "${VENV}/bin/python" -m pip install --no-input -q -r "${REQUIREMENTS}"
  log "pip: installed from ${REQUIREMENTS#"${ROOT}"/}"
fi
log "done (python for the build and tests: ${VENV}/bin/python)"
