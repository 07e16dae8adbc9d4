"""Writes tests/integration/data/before_sigma_hipnn.pt and before_sigma_hipnn_torch.pt with the ekd
of commit a9f1be0 (the last whose deployed HIPNN classes had no uncertainty head; their canonical
code is python/ekd/deploy/model_code/<kind>@before-sigma). They stand for files users exported
before that change, which must keep loading without the trust opt-in and give the same numbers.
Kind "toy" kept its code.

    rm -rf /tmp/oldekd && mkdir /tmp/oldekd && git archive a9f1be0 python/ekd | tar -x -C /tmp/oldekd
    cp <site-packages>/ekd/{_C*.so,build_info.json,libekd_ops.so} /tmp/oldekd/python/ekd/
    .venv/bin/python tests/integration/data/make_before_sigma.py /tmp/oldekd/python
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
# test_scripted._small_member_module's member (same architecture and seed), with ekd's ops and without
arch = ModelConfig(
    l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
)
with torch.random.fork_rng():
    torch.manual_seed(0)
    model = build_model(arch, [6, 1, 7, 8])
for envsum, name in (("auto", "before_sigma_hipnn.pt"), ("torch", "before_sigma_hipnn_torch.pt")):
    module = scripted.script_member(model, dtype=torch.float64, envsum=envsum)
    save_model(module, out / name, scripted.metadata(model, module))
    print("wrote", name)
