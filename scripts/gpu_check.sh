#!/usr/bin/env bash
# ekd's GPU acceptance run (issue 25), one command, <= 8 minutes on one H100:
#   bash scripts/gpu_check.sh            # on a GPU machine (CUDA, nvcc, CMake, a CUDA torch 2.11 - 2.13)
#   bash scripts/gpu_check.sh --dry-run  # every step that can run on the CPU, at tiny sizes (CI)
# Steps: the environment; the wheels of .gpu-wheels/ (bash scripts/gpu_wheels.sh, run beforehand
# where there is internet) for what is missing; ekd built against the torch found here, with its
# CUDA kernels (no LAMMPS); the CUDA tests (tests/unit/test_cuda_ops.py, none may skip); one member
# trained 3 epochs in float64 on the GPU and on the CPU from one seed (losses equal to 1e-8), labels
# and `ekd score` on the GPU against the CPU; the paper-size training step and energy+forces timed
# against hippynn's own GPU kernels, with an estimate of hours per ANI-1ccx epoch.
# The build and the wheels go into the Python environment of $PYTHON (default python3): it is
# meant for a disposable GPU machine or the environment ekd is wanted in. The dry run builds and
# installs nothing (it uses the ekd installed in .venv, or $PYTHON's).
# Ends with one line: gpu_check: N passed, M failed (exit status 0 only when M is 0).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
  esac
done
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ $dry = 1 ] && [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi
# absolute: some steps run in the work directory
case "$py" in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; *) py=$(command -v "$py") ;; esac
device=cuda
dryflag=()
if [ $dry = 1 ]; then device=cpu; dryflag=(--dry-run); fi
work=$(mktemp -d "${TMPDIR:-/tmp}/ekd-gpu-check.XXXXXX")
log=$work/log
mkdir -p "$log"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1 HIPPYNN_PROGRESS=none
passed=0
failed=0
names=()
started=$(date +%s)

step() { # step NAME COMMAND...: runs it, counts it, shows its output
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  echo "== $name"
  "$@" 2>&1 | tee "$log/$name.txt"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    echo "-- $name: passed ($(($(date +%s) - t0)) s)"
  else
    failed=$((failed + 1))
    names+=("$name")
    echo "-- $name: FAILED (exit $rc, $(($(date +%s) - t0)) s; output in $log/$name.txt)"
  fi
}

wheels() { # install from .gpu-wheels what does not import; the dry run only checks
  local missing
  # found, not imported (fast): module -> the wheel that brings it
  read -r -a missing < <("$py" -c 'import importlib.util as u
print(" ".join(p for m, p in [("hippynn", "hippynn"), ("ase", "ase"), ("tqdm", "tqdm"), ("yaml", "PyYAML")] if u.find_spec(m) is None))')
  if [ ${#missing[@]} = 0 ]; then echo "all present: hippynn ase tqdm yaml"; return 0; fi
  if [ $dry = 1 ]; then echo "missing: ${missing[*]} (a GPU run installs them from .gpu-wheels/)"; return 1; fi
  [ -d .gpu-wheels ] || { echo "missing ${missing[*]} and no .gpu-wheels/: run bash scripts/gpu_wheels.sh where there is internet"; return 1; }
  "$py" -m pip install -q --no-index --no-deps --find-links .gpu-wheels "${missing[@]}"
}

build() { # ekd against the torch found here, with the CUDA kernels, without LAMMPS
  if [ $dry = 1 ]; then
    echo "dry run: no build; the installed ekd is checked against torch"
  else
    CMAKE_ARGS="-DEKD_LAMMPS_PLUGIN=OFF -DCMAKE_CUDA_ARCHITECTURES=native ${CMAKE_ARGS:-}" \
      "$py" -m pip install --no-build-isolation --no-deps --no-index -v . >"$log/build-pip.txt" 2>&1 ||
      { tail -40 "$log/build-pip.txt"; return 1; }
    grep -E "ekd: torch|CUDA kernels" "$log/build-pip.txt" | sed 's/^ *//' | head -3
  fi
  (cd "$work" && "$py" - "$dry" <<'PY'
import sys, torch
from ekd.ops.library import BUILD_INFO, LIBRARY_PATH
print(f"op library {LIBRARY_PATH}: {BUILD_INFO}")
assert BUILD_INFO["torch_version"] == torch.__version__, "built against another torch"
assert sys.argv[1] == "1" or BUILD_INFO["with_cuda"], "built without the CUDA kernels (was nvcc found?)"
PY
  )
}

cuda_tests() { # the device tests; on a GPU none of them may be skipped
  local out=$log/pytest.txt
  "$py" -m pytest -q -p no:cacheprovider -rs tests/unit/test_cuda_ops.py >"$out" 2>&1
  local rc=$?
  tail -15 "$out"
  [ $rc = 0 ] || return $rc
  if [ $dry = 0 ] && grep -q "skipped" "$out"; then echo "CUDA tests were skipped on a GPU machine"; return 1; fi
}

step environment "$py" scripts/gpu_check.py env --device $device "${dryflag[@]}"
step wheels wheels
step build build
step cuda-tests cuda_tests
step train "$py" scripts/gpu_check.py train --device $device --work "$work" "${dryflag[@]}"
step score "$py" scripts/gpu_check.py score --device $device --work "$work" "${dryflag[@]}"
step timing "$py" scripts/gpu_check.py timing --device $device "${dryflag[@]}"

echo "gpu_check: $((passed + failed)) steps in $(($(date +%s) - started)) s on $device$([ $dry = 1 ] && echo ' (dry run)')${names:+; failed: ${names[*]}}"
echo "gpu_check: $passed passed, $failed failed"
[ "$failed" = 0 ]
