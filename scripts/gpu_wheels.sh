#!/usr/bin/env bash
# Fetch, on a machine with internet, the Python wheels that scripts/gpu_check.sh installs on a GPU
# machine without it: hippynn, ase and tqdm (pure Python), PyYAML (for CPython 3.11 - 3.13). The
# GPU machines ekd targets have torch, numpy, h5py, pytest, scikit-build-core, pybind11, CMake and
# nvcc, but not these. Into .gpu-wheels/ (git-ignored: carry it with the checkout); < 30 MB.
#   bash scripts/gpu_wheels.sh        # versions: those this checkout's .venv runs (tested here)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${EKD_GPU_WHEELS:-.gpu-wheels}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
# the version installed here (so the GPU run uses what the tests here used), else a known good one
version() { "$py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || echo "$2"; }
pure=("hippynn==$(version hippynn 0.1.3)" "ase==$(version ase 3.29.0)" "tqdm==$(version tqdm 4.67.1)")
yaml="PyYAML==$(version PyYAML 6.0.2)"
mkdir -p "$dest"
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$dest" "${pure[@]}"
for v in 3.11 3.12 3.13; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$v" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dest" "$yaml"
done
ls -1 "$dest"
size=$(du -sm "$dest" | cut -f1)
echo "gpu_wheels: $(ls "$dest" | wc -l) wheels, ${size} MB in $dest"
if [ "$size" -ge 30 ]; then
  echo "gpu_wheels: $dest holds ${size} MB, over the 30 MB budget" >&2
  exit 1
fi
