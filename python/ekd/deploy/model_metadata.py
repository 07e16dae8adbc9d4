"""The metadata schema of an ekd model file: ``extra/metadata.json`` (:class:`ModelMetadata`) and
the facts both readers share, written ONCE in ``ekd/deploy/model_format.json``. Python reads that file
here; CMake compiles it into the LAMMPS plugin (``lammps_plugin/embed_model_format.cmake`` ->
``ekd_model_format.h``, used by ``ekd_metadata.cpp`` and ``ekd_trust.cpp``), so a change there
reaches both readers, and ``tests/integration/test_lammps_trust.py`` feeds both the same metadata
cases and requires the same verdicts.

Entries of ``model_format.json``:

* ``format``: the format this ekd writes (``ekd-model-2``); ``format_1``: the earlier format, still
  read (with the trust opt-in only; its code varies per model);
* ``fields``: the fields of metadata.json, every one required and no other allowed;
  ``fields_not_in_format_1``: those an ``ekd-model-1`` file lacks (and must lack);
* ``kinds``: model kinds whose code this ekd writes (:mod:`ekd.scripted`'s classes; the canonical
  code is in ``ekd/deploy/model_code/<kind>/``); ``custom_kind``: any other module (trust opt-in);
* ``dtypes``: of ``r_ij`` and of the energies; ``energy_unit`` / ``length_unit``: the only units
  a deployed model may use; ``ops_library``: the only op library a model may name;
* ``metadata_file``: the name under ``extra/``; ``plain_entries``: archive entries (below the top
  folder) a model file may hold besides ``data/<digits>``, ``extra/<metadata_file>`` and ``code/...``;
* ``archive_limits``: the most bytes an entry may declare (uncompressed) by its role, checked
  before anything is inflated (the strict archive rule, :mod:`ekd.deploy.archive`):
  ``metadata_bytes`` (metadata.json), ``pickle_bytes`` (``*.pkl``), ``compressed_bytes`` (a
  compressed code entry; no other entry may be compressed);
* ``ev_to_kcalmol``: 1 eV in kcal/mol (CODATA 2018, as ASE 3.23+; :data:`ekd.units.EV_TO_KCALMOL`,
  and the plugin's conversion for LAMMPS ``units metal``);
* ``elements``: element symbols by atomic number (index 0 unused).

The meaning of each metadata field: :class:`ModelMetadata`. Does not import torch at import time.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import __version__

#: the schema as read from ekd/deploy/model_format.json
SCHEMA: dict = json.loads((Path(__file__).parent / "model_format.json").read_text(encoding="utf-8"))

#: the format this ekd writes; it also reads FORMAT_1 files (only with trust_code=True)
FORMAT: str = SCHEMA["format"]
FORMAT_1: str = SCHEMA["format_1"]
#: the format of AOTInductor packages (:mod:`ekd.deploy.aoti`): the fields and checks of FORMAT
FORMAT_AOTI: str = SCHEMA["format_aoti"]
FORMATS = (FORMAT_1, FORMAT)
ENERGY_UNIT: str = SCHEMA["energy_unit"]
LENGTH_UNIT: str = SCHEMA["length_unit"]
DTYPES: tuple[str, ...] = tuple(SCHEMA["dtypes"])
#: name of the op library a model may call (torch.ops.ekd); the LAMMPS plugin loads the same file
OPS_LIBRARY: str = SCHEMA["ops_library"]
METADATA_FILE: str = SCHEMA["metadata_file"]
#: model kinds whose code ekd writes (ekd.scripted's classes); CUSTOM = any other module
KINDS: tuple[str, ...] = tuple(SCHEMA["kinds"])
CUSTOM: str = SCHEMA["custom_kind"]
#: archive entries (below the top folder) a model file may hold besides data/<digits>, extra/ and code/
PLAIN_ENTRIES: frozenset[str] = frozenset(SCHEMA["plain_entries"])
#: element symbols by atomic number (index 0 unused)
ELEMENTS: tuple[str, ...] = tuple(SCHEMA["elements"])
ATOMIC_NUMBERS = {s: z for z, s in enumerate(ELEMENTS) if z > 0}
_STRING_FIELDS = (
    "dtype",
    "role",
    "description",
    "kind",
    "format",
    "energy_unit",
    "length_unit",
    "ekd_version",
    "torch_version",
)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file, the problem and the fix."""


class UntrustedModelError(ModelFileError):
    """A model file whose code is not the code this ekd writes (refused without the opt-in)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a deployed model says about itself (``metadata.json`` inside the TorchScript file).

    cutoff: pair cutoff, Angstrom. n_interactions: message-passing depth (an atom's energy sees
    atoms up to n_interactions * cutoff away). species: element symbols in model order.
    dtype: "float32" or "float64" (of r_ij and of the energies). ops_library: file name of the op
    library the TorchScript code calls (``libekd_ops.so``) or None. kind: which of ekd's model
    classes the code is ("hipnn", "hipnn-torch", "toy") or "custom" (any other module: loads only
    with the trust opt-in); empty in ekd-model-1 files. role / description: free text ("student",
    "teacher", "toy", ...). Format, versions and units are filled in by :func:`save_model`.
    """

    cutoff: float
    n_interactions: int
    species: tuple[str, ...]
    dtype: str = "float64"
    ops_library: str | None = None
    role: str = ""
    description: str = ""
    kind: str = CUSTOM
    format: str = FORMAT
    energy_unit: str = ENERGY_UNIT
    length_unit: str = LENGTH_UNIT
    ekd_version: str = __version__
    torch_version: str = ""

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return tuple(ATOMIC_NUMBERS[s] for s in self.species)

    def to_json(self) -> str:
        d = asdict(self)
        d["species"] = list(self.species)
        if self.format == FORMAT_1:
            for name in SCHEMA["fields_not_in_format_1"]:
                del d[name]
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "metadata") -> ModelMetadata:
        """Parse and check (see :func:`check_metadata`); ``source`` names the file in messages."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ModelFileError(f"{source}: metadata.json is not valid JSON ({e}); re-export the model") from e
        if not isinstance(d, dict):
            raise ModelFileError(f"{source}: metadata.json must hold a JSON object; re-export the model")
        if d.get("format") not in FORMATS:
            raise ModelFileError(
                f"{source}: model format is {d.get('format')!r} but this ekd ({__version__}) reads {list(FORMATS)}; "
                "re-export the model with this ekd (ekd export)"
            )
        names = set(SCHEMA["fields"])
        if d["format"] == FORMAT_1:
            names -= set(SCHEMA["fields_not_in_format_1"])
        missing = sorted(names - set(d))
        if missing:
            raise ModelFileError(f"{source}: metadata.json lacks {missing}; re-export the model with this ekd")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelFileError(f"{source}: metadata.json has unknown fields {unknown}; re-export the model")
        species = d["species"]
        if not isinstance(species, list):
            raise ModelFileError(f"{source}: species must be a list of element symbols, got {species!r}")
        if d["format"] == FORMAT_1:
            d.update(dict.fromkeys(SCHEMA["fields_not_in_format_1"], ""))
        meta = cls(**{**d, "species": tuple(species)})
        check_metadata(meta, source)
        return meta


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_metadata(meta: ModelMetadata, source: str = "metadata") -> None:
    """Raise :class:`ModelFileError` unless every field is usable by this ekd and torch."""
    import torch

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{source}: {what}")

    for name in _STRING_FIELDS:
        if not isinstance(getattr(meta, name), str):
            raise bad(f"{name} must be a string, got {getattr(meta, name)!r}; re-export the model (ekd export)")
    if meta.ops_library is not None and not isinstance(meta.ops_library, str):
        raise bad(f"ops_library must be a file name or null, got {meta.ops_library!r}; re-export the model")
    if meta.format not in FORMATS:
        raise bad(f"model format is {meta.format!r} but this ekd reads {list(FORMATS)}; re-export the model")
    if meta.format == FORMAT and meta.kind not in (*KINDS, CUSTOM):
        raise bad(f"kind must be one of {[*KINDS, CUSTOM]}, got {meta.kind!r}; re-export the model (ekd export)")
    if meta.format == FORMAT_1 and meta.kind:
        raise bad(f"kind {meta.kind!r} in an {FORMAT_1} file (that format has no kind); re-export the model")
    if (
        isinstance(meta.cutoff, bool)
        or not isinstance(meta.cutoff, int | float)
        or not math.isfinite(meta.cutoff)
        or meta.cutoff <= 0
    ):
        raise bad(f"cutoff must be a positive number of Angstrom, got {meta.cutoff!r}")
    if not isinstance(meta.n_interactions, int) or isinstance(meta.n_interactions, bool) or meta.n_interactions < 0:
        raise bad(f"n_interactions must be a non-negative integer, got {meta.n_interactions!r}")
    if meta.format == FORMAT and meta.kind in KINDS and meta.n_interactions < 1:
        raise bad(f"n_interactions must be >= 1 for a {meta.kind} model, got {meta.n_interactions}")
    if not meta.species:
        raise bad("species is empty: name the model's elements in model order")
    unknown = [s for s in meta.species if s not in ATOMIC_NUMBERS]
    if unknown:
        raise bad(f"species {unknown} are not element symbols (expected e.g. ['C', 'H', 'N', 'O'])")
    if len(set(meta.species)) != len(meta.species):
        raise bad(f"species {list(meta.species)} lists an element twice")
    if meta.energy_unit != ENERGY_UNIT or meta.length_unit != LENGTH_UNIT:
        raise bad(
            f"units are {meta.energy_unit!r}/{meta.length_unit!r} but deployed models use "
            f"{ENERGY_UNIT!r}/{LENGTH_UNIT!r}; convert the model's output in the exporter and re-export"
        )
    if meta.dtype not in DTYPES:
        raise bad(f"dtype must be one of {DTYPES}, got {meta.dtype!r}")
    if _major_minor(meta.ekd_version) != _major_minor(__version__):
        raise bad(
            f"exported by ekd {meta.ekd_version} but this is ekd {__version__}; re-export the model with this ekd "
            f"or install ekd {'.'.join(_major_minor(meta.ekd_version))}.*"
        )
    if _major_minor(meta.torch_version) != _major_minor(torch.__version__):
        raise bad(
            f"exported with torch {meta.torch_version} but torch {torch.__version__} is installed; re-export the "
            "model with this torch (TorchScript and the op library are tied to a torch release)"
        )
    if meta.ops_library not in (None, OPS_LIBRARY):
        raise bad(f"needs op library {meta.ops_library!r}; this ekd provides only {OPS_LIBRARY!r}")


if tuple(f.name for f in fields(ModelMetadata)) != tuple(SCHEMA["fields"]):
    raise ImportError(
        f"ekd.deploy.model_metadata: ModelMetadata's fields {[f.name for f in fields(ModelMetadata)]} "
        "are not the fields of "
        f"ekd/deploy/model_format.json {SCHEMA['fields']}; change both together (the LAMMPS plugin reads the file)"
    )
