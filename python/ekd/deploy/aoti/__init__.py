"""Deployed models as AOTInductor packages (``ekd export --format aoti``, format ``ekd-aoti-1``).

TorchScript (:mod:`ekd.deploy.model_file`, format ``ekd-model-2``) stays ekd's default deployment
format; this is the second one, for the torch releases after TorchScript. A ``.pt2`` package
holds one compiled function, the energy *and its gradient*::

    run(species [N] int64, pair_first [P] int64, pair_second [P] int64, r_ij [P, 3] dtype,
        atom_weights [N] dtype) -> (energies [N] kcal/mol, g [P, 3] = d(sum_i w_i e_i)/d r_ij)

with the pair-list conventions of ``ekd-model-2`` (FULL list, ``r_ij = x_j - x_i`` with images,
Angstrom; pairs at or beyond the cutoff contribute nothing). The weights pick the atoms whose
energies count (1 for every atom in ASE, 1 for owned and 0 for ghost atoms in LAMMPS); forces and
virial follow from ``g`` as for TorchScript files. How it is made: the model (the same class as
the TorchScript export, :mod:`ekd.scripted`) is traced together with its autograd backward into
one ATen graph (``make_fx``, symbolic shapes; ekd's ops enter through their Meta kernels and C++
backward), ``torch.export``-ed with dynamic numbers of atoms and pairs (>= 2: callers pad with an
extra weight-0 atom and pairs beyond the cutoff), and compiled by AOTInductor for this machine's
CPU. The package's ``extra/metadata.json`` is the :class:`~ekd.deploy.model_file.ModelMetadata` (format
``ekd-aoti-1``); the same text is compiled into the shared library (AOTInductor metadata key
``ekd_metadata_json``) and a package whose two copies differ is refused.

Trust
-----
A package is a compiled shared library: loading it runs machine code, and no byte comparison
with ekd's own code is possible. ekd therefore runs a ``.pt2`` only when

* its entries are exactly what this exporter writes (checked on the zip before anything is
  loaded: the top folder's ``archive_format``, ``archive_version``, ``byteorder``, ``version``,
  ``.data/version``, ``.data/serialization_id``, ``extra/metadata.json`` and one compiled model
  under ``data/aotinductor/model/``: its library, C++ sources, metadata and the list of ekd ops
  it calls), and
* its SHA-256 is in the local registry of packages ekd compiled on this machine (appended by
  :func:`export_module`; ``$EKD_TRUSTED_PACKAGES`` or ``$XDG_DATA_HOME/ekd/trusted-packages``,
  default ``~/.local/share/ekd/trusted-packages``; one ``<sha256>  <path>`` line per package),
  or the user opts in for a file they trust (:data:`ekd.deploy.model_file.OPT_IN`).

A package copied from elsewhere is refused with both fixes named: re-export it here (which also
compiles it for this CPU: AOTInductor code is specific to the CPU's instruction set), or opt in.
The LAMMPS plugin applies the same rule (``lammps_plugin/ekd_model_aoti.cpp``).
"""

from .compile import _quiet_compile as _quiet_compile  # used by the tests
from .compile import export_member, export_module
from .package import (
    FORMAT_AOTI,
    MIN_ROWS,
    REGISTRY_ENV,
    SO_METADATA_KEY,
    SUFFIX,
    AOTIModel,
    check_package,
    is_package,
    is_registered,
    load_package,
    parse_metadata,
    read_metadata,
    register,
    registry_path,
    sha256,
)

__all__ = [
    "AOTIModel",
    "FORMAT_AOTI",
    "MIN_ROWS",
    "REGISTRY_ENV",
    "SO_METADATA_KEY",
    "SUFFIX",
    "check_package",
    "export_member",
    "export_module",
    "is_package",
    "is_registered",
    "load_package",
    "parse_metadata",
    "read_metadata",
    "register",
    "registry_path",
    "sha256",
]
