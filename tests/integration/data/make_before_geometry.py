"""Writes the model files of tests/integration/data/before_geometry_*.pt with the ekd of commit
7639a2c (the last whose stage methods had no geometry()/interaction_geo(); its canonical code is
python/ekd/deploy/model_code/<kind>@before-geometry). They stand for files users exported before that
change, which must keep loading without the trust opt-in and keep running in LAMMPS's mode halo.

    rm -rf /tmp/oldekd && mkdir /tmp/oldekd && git archive 7639a2c python/ekd | tar -x -C /tmp/oldekd
    cp <site-packages>/ekd/{_C*.so,build_info.json,libekd_ops.so} /tmp/oldekd/python/ekd/
    .venv/bin/python tests/integration/data/make_before_geometry.py /tmp/oldekd/python
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
from ekd.deploy.export import toy_model  # noqa: E402
from ekd.deploy.model_file import save_model  # noqa: E402
from ekd.training.models import build_model  # noqa: E402

assert Path(ekd.__file__).is_relative_to(old), ekd.__file__
SPECIES = ("C", "H", "N", "O")
# the toy model of test_lammps_halo's models["L2"] (same arguments and seed)
module, meta = toy_model(SPECIES, cutoff=3.5, n_interactions=2, seed=2)
save_model(module, out / "before_geometry_toy.pt", meta)
# a small HIPNN member (test_lammps_halo._small_hipnn's architecture) with ekd's ops, and the same
# without them
arch = ModelConfig(
    l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
)
with torch.random.fork_rng():
    torch.manual_seed(0)
    model = build_model(arch, [6, 1, 7, 8])
for name, envsum in (("hipnn", "auto"), ("hipnn_torch", "torch")):
    module = scripted.script_member(model, dtype=torch.float64, envsum=envsum)
    save_model(module, out / f"before_geometry_{name}.pt", scripted.metadata(model, module))
print("wrote", sorted(p.name for p in out.glob("before_geometry_*.pt")))
