"""ekd: ensemble knowledge distillation of machine-learning interatomic potentials.

Internal unit system, everywhere in ekd: energies in kcal/mol, lengths in Angstrom, forces in
kcal/mol/Angstrom (the units of the paper's tables and of LAMMPS `units real`). Data files keep
their own units (Hartree for the ANI layout) and are converted on read and write.

The names users type (``from ekd import EKDCalculator, load_model, Run, ...``) are listed in
:data:`PUBLIC`; each is imported on first use, so ``import ekd`` stays light (no torch).
"""

__version__ = "0.1.0"

# Before anything imports torch: OpenMP threads that sleep instead of spin (see ekd/ops/threads.py).
from ekd.ops.threads import prefer_passive_waits as _prefer_passive_waits

_prefer_passive_waits()

#: the public face: name -> the module that defines it
PUBLIC = {
    "Config": "ekd.config",
    "load_config": "ekd.config",
    "default_config": "ekd.config",
    "Run": "ekd.workflow",
    "run": "ekd.workflow",
    "load_dataset": "ekd.data",
    "Dataset": "ekd.data",
    "load_member": "ekd.training.member",
    "export_member": "ekd.deploy.export",
    "load_model": "ekd.deploy.model_file",
    "save_model": "ekd.deploy.model_file",
    "read_metadata": "ekd.deploy.model_file",
    "EKDCalculator": "ekd.deploy.calculator",
    "score_models": "ekd.evaluation.score",
    "md_stability": "ekd.md",
}
_RENAMED = {"load_config": "load"}

__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str):
    module = PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ekd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *PUBLIC])
