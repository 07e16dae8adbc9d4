"""Writes tests/integration/data/before_radial_hipnn.pt with the ekd of commit 37f51c4 (the last
whose deployed HIPNN computed its sensitivities with ATen ops instead of the op
ekd::radial_sensitivity; its canonical code is python/ekd/deploy/model_code/hipnn@before-radial). It
stands for the files users exported before that change, which must keep loading without the trust
opt-in, in Python and in LAMMPS. Only kind "hipnn" changed: "hipnn-torch" and "toy" kept their code.

    rm -rf /tmp/oldekd && mkdir /tmp/oldekd && git archive 37f51c4 python/ekd | tar -x -C /tmp/oldekd
    cp <site-packages>/ekd/{_C*.so,build_info.json,libekd_ops.so} /tmp/oldekd/python/ekd/
    .venv/bin/python tests/integration/data/make_before_radial.py /tmp/oldekd/python
"""

import sys
from pathlib import Path

old, out = Path(sys.argv[1]), Path(__file__).parent
sys.path.insert(0, str(old))
# the editable install's finder would hand out today's ekd; hippynn's optional `import lammps` would
# load today's plugin entry point
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
sys.modules["lammps"] = None

import torch  # noqa: E402

import ekd  # noqa: E402
from ekd import scripted  # noqa: E402
from ekd.config import ModelConfig  # noqa: E402
from ekd.deploy.model_file import save_model  # noqa: E402
from ekd.training.models import build_model  # noqa: E402

assert Path(ekd.__file__).is_relative_to(old), ekd.__file__
# test_lammps_halo._small_hipnn's member (same architecture and seed), with ekd's ops
arch = ModelConfig(
    l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
)
with torch.random.fork_rng():
    torch.manual_seed(0)
    model = build_model(arch, [6, 1, 7, 8])
module = scripted.script_member(model, dtype=torch.float64, envsum="auto")
save_model(module, out / "before_radial_hipnn.pt", scripted.metadata(model, module))
print("wrote before_radial_hipnn.pt")
