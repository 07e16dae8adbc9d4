"""Models that ekd does not train, as teachers and for ``ekd score``: TorchANI's ANI models (the
paper's SI 2) and any ASE calculator.

``load_external_teacher("torchani:ANI1ccx", data_dir)`` (or a list of ``"MODULE:FACTORY[:ARG]"``
calculator specs, one member each: :func:`load_calculator`) returns the members of the ensemble as
objects with ``predict(dataset, forces)`` -- the interface of :class:`ekd.training.train.Member` that
:func:`ekd.training.distill.ensemble_predict` uses -- so that an external ensemble labels a training set
exactly as trained teachers do.

What torchani 2.0 (PyPI, 2020) provides and how it is used here, measured on these machines:

* The weights ship inside the wheel: ``torchani/resources/ani-1ccx_8x.info`` names the AEV
  constants file, the self-atomic-energy file, the ensemble folder prefix and the member count
  (8); the networks are NeuroChem files under ``ani-1ccx_8x/train0..7``. torchani's own
  ``torchani.models.ANI1ccx()`` reads them from the installed package only, so ekd builds the
  same ensemble with torchani's loaders (``torchani.neurochem.Constants``, ``load_sae``,
  ``load_model``) from ``data_dir`` -- by default that resources folder, or any folder with the
  same layout. Nothing is downloaded: missing files raise :class:`ExternalModelUnavailable`.
* It imports ``pkg_resources`` (setuptools < 81) and ``lark`` (the ``lark-parser`` package) and
  declares a dependency on any torch; ekd installs it with ``--no-deps`` so that torch stays
  2.13 (``scripts/setup.sh``). It works with torch 2.13 on the CPU.
* Units: Hartree and Angstrom; elements H, C, N, O. Energies include the self atomic energies.
  ANI-1ccx predicts CCSD(T)*/CBS energies: on ekd's GFN2-xTB data its forces are those of
  another level of theory, which is the point of a cross-architecture *and* cross-level teacher
  experiment; on ANI-1ccx data (``configs/ani1ccx.yaml``) the levels agree, as in the paper.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..config.calculators import parse_calculator_spec
from ..store import bytes_digest
from ..units import EV_TO_KCALMOL, HARTREE_TO_KCALMOL

#: external teachers ekd knows: name -> (torchani info file)
TORCHANI_MODELS = {"ANI1ccx": "ani-1ccx_8x.info", "ANI1x": "ani-1x_8x.info", "ANI2x": "ani-2x_8x.info"}


class ExternalModelUnavailable(RuntimeError):
    """An external teacher's package or weight files are not on this machine."""


class ExternalModelError(RuntimeError):
    """An outside model failed or returned nonsense (non-finite, wrong shape) for a configuration."""


def _import_torchani():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources' deprecation notice on import
            import torchani
            import torchani.neurochem  # noqa: F401
    except ImportError as e:
        raise ExternalModelUnavailable(
            f"torchani is not importable ({e}); install it without touching torch: "
            "pip install --no-deps torchani==2.0 lark-parser 'setuptools<81'"
        ) from e
    return torchani


def torchani_resources() -> Path:
    """torchani's own resources folder (where the wheel ships its weights)."""
    torchani = _import_torchani()
    return Path(torchani.__file__).parent / "resources"


class TorchANIMember:
    """Member ``index`` of a TorchANI ensemble: AEVs, that member's network, self energies.

    ``predict(dataset, forces)`` -> energies (n,) kcal/mol and forces (n, A, 3) kcal/mol/A
    (0 in padding), float64, in batches of ``batch_size`` configurations."""

    def __init__(self, ensemble: TorchANIEnsemble, index: int):
        self.ensemble, self.index = ensemble, index

    def predict(self, dataset, forces: bool = True, batch_size: int = 256):
        return self.ensemble.predict_member(self.index, dataset, forces, batch_size)


class TorchANIEnsemble:
    """A TorchANI ensemble read from ``data_dir`` (see the module docstring)."""

    def __init__(self, name: str = "ANI1ccx", data_dir: str | Path | None = None):
        if name not in TORCHANI_MODELS:
            raise ValueError(f"external teacher: unknown TorchANI model {name!r}; known: {sorted(TORCHANI_MODELS)}")
        torchani = _import_torchani()
        import torch

        root = Path(data_dir) if data_dir else torchani_resources()
        info = root / TORCHANI_MODELS[name]
        if not info.exists():
            raise ExternalModelUnavailable(
                f"TorchANI {name}: {info} does not exist; point ensemble.external_teacher_dir at a folder holding "
                f"{TORCHANI_MODELS[name]} and its files (torchani 2.0's wheel ships them in torchani/resources)"
            )
        const, sae, prefix, count = [x.strip() for x in info.read_text().splitlines()[:4]]
        files = [root / const, root / sae] + [root / f"{prefix}{i}" for i in range(int(count))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ExternalModelUnavailable(f"TorchANI {name}: files named by {info} are missing: {missing}")
        consts = torchani.neurochem.Constants(str(root / const))
        self.name, self.directory = name, root
        self.elements = tuple(consts.species)  # e.g. ('H', 'C', 'N', 'O')
        self.aev = torchani.AEVComputer(**consts).double()
        self.shifter = torchani.neurochem.load_sae(str(root / sae)).double()
        self.networks = [
            torchani.neurochem.load_model(consts.species, str(root / f"{prefix}{i}" / "networks")).double()
            for i in range(int(count))
        ]
        from ase.data import atomic_numbers

        self._index = torch.full((119,), -2, dtype=torch.long)  # -2: an element the model lacks
        self._index[0] = -1  # padding
        for k, symbol in enumerate(self.elements):
            self._index[atomic_numbers[symbol]] = k
        # identity for digests: the bytes of every file the ensemble is made of
        chunks = [
            p.name.encode() + p.read_bytes()
            for f in [info, *files]
            for p in (sorted(f.rglob("*")) if f.is_dir() else [f])
            if p.is_file()
        ]
        self.identity = {"kind": "torchani", "model": name, "files": bytes_digest(*chunks), "members": int(count)}

    def __len__(self) -> int:
        return len(self.networks)

    def members(self) -> list[TorchANIMember]:
        return [TorchANIMember(self, i) for i in range(len(self))]

    def _species(self, species: np.ndarray):
        import torch

        z = torch.as_tensor(species, dtype=torch.long)
        idx = self._index[z]
        if (idx == -2).any():
            from ase.data import chemical_symbols

            bad = sorted({chemical_symbols[int(v)] for v in z[idx == -2]})
            raise ValueError(f"TorchANI {self.name} knows {list(self.elements)} only; the dataset has {bad}")
        return idx

    def predict_member(self, index: int, dataset, forces: bool = True, batch_size: int = 256):
        import torch

        n, n_atoms = dataset.species.shape
        energies = np.zeros(n)
        out_forces = np.zeros((n, n_atoms, 3)) if forces else None
        net = self.networks[index]
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            species = self._species(dataset.species[sl])
            xyz = torch.tensor(dataset.coordinates[sl], dtype=torch.float64, requires_grad=forces)
            with torch.set_grad_enabled(forces):
                aev = self.aev((species, xyz)).aevs
                e = net((species, aev)).energies + self.shifter.sae(species)
            if forces:
                (grad,) = torch.autograd.grad(e.sum(), xyz)
                f = -grad.numpy() * HARTREE_TO_KCALMOL
                f[dataset.species[sl] == 0] = 0.0
                out_forces[sl] = f
            energies[sl] = e.detach().numpy() * HARTREE_TO_KCALMOL
        return energies, out_forces


# ------------------------------------------------------------------------------------------
# any ASE calculator


class CalculatorMember:
    """One ASE calculator as a member (``predict(dataset, forces)``, as :class:`ekd.training.member.Member`).

    Every configuration is handed to the calculator as an isolated ``ase.Atoms`` (no cell, pbc
    False); the calculator's energy (eV) and forces (eV/Angstrom), ASE's units, are converted to
    kcal/mol and kcal/mol/Angstrom with :data:`ekd.units.EV_TO_KCALMOL`. One configuration per call:
    ASE calculators take one structure at a time."""

    def __init__(self, spec: str, calc, identity: dict):
        self.spec, self.calc, self.identity = spec, calc, identity

    def predict(self, dataset, forces: bool = True, advance=None):
        from ase import Atoms

        n, n_atoms = dataset.species.shape
        energies = np.empty(n)
        out = np.zeros((n, n_atoms, 3)) if forces else None
        for i in range(n):
            real = dataset.species[i] > 0
            atoms = Atoms(numbers=dataset.species[i][real], positions=dataset.coordinates[i][real], pbc=False)
            atoms.calc = self.calc
            where = (
                f"calculator {self.spec!r} on configuration {i} (molecule "
                f"{dataset.molecule_names[dataset.molecule[i]]!r}, conformer {int(dataset.conformer[i])}) of "
                f"{dataset.source or 'the dataset'}"
            )
            try:
                e = np.asarray(atoms.get_potential_energy(), dtype=np.float64)
                f = np.asarray(atoms.get_forces(), dtype=np.float64) if forces else None
            except Exception as err:  # whatever the calculator raises, name the configuration
                raise ExternalModelError(f"{where}: {type(err).__name__}: {err}") from err
            if e.size != 1 or not np.isfinite(e).all():
                raise ExternalModelError(f"{where}: the energy is {e!r}, expected one finite number (eV)")
            energies[i] = float(e.reshape(())) * EV_TO_KCALMOL
            if forces:
                if f.shape != (int(real.sum()), 3) or not np.isfinite(f).all():
                    raise ExternalModelError(
                        f"{where}: the forces have shape {f.shape} or non-finite values; expected finite "
                        f"({int(real.sum())}, 3) (eV/Angstrom)"
                    )
                out[i, real] = f * EV_TO_KCALMOL
            if advance is not None:
                advance(1)
        return energies, out


def load_calculator(spec: str) -> CalculatorMember:
    """The ASE calculator that ``spec`` (:func:`parse_calculator_spec`) makes, as a member.

    Importing MODULE runs its code: name only modules you trust (as for any Python import). The
    identity (for digests) is the spec, the module's ``__version__`` and, when ARG is a file, its bytes."""
    import importlib

    from ..store import file_digest

    module_name, factory_name, arg = parse_calculator_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ExternalModelUnavailable(f"calculator {spec!r}: cannot import module {module_name!r} ({e})") from e
    factory = module
    for part in factory_name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ExternalModelUnavailable(f"calculator {spec!r}: module {module_name!r} has no {factory_name!r}")
    if not callable(factory):
        raise ValueError(f"calculator {spec!r}: {module_name}.{factory_name} is not callable")
    try:
        calc = factory() if arg is None else factory(arg)
    except Exception as e:  # the calculator's own error (missing file, bad argument): name the spec
        called = f"{module_name}.{factory_name}({'' if arg is None else repr(arg)})"
        raise ExternalModelError(f"calculator {spec!r}: {called} failed: {type(e).__name__}: {e}") from e
    if not callable(getattr(calc, "get_potential_energy", None)) and not callable(getattr(calc, "calculate", None)):
        raise ValueError(
            f"calculator {spec!r}: {factory_name}(...) returned {type(calc).__name__}, not an ASE calculator"
        )
    top = importlib.import_module(module_name.split(".")[0])
    identity = {
        "kind": "ase",
        "spec": spec,
        "version": str(getattr(top, "__version__", "")),
        "arg_file": file_digest(arg) if arg is not None and Path(arg).is_file() else None,
    }
    return CalculatorMember(spec, calc, identity)


def load_external_teacher(spec, data_dir: str | None = None) -> tuple[list, dict]:
    """``spec`` -> (members with ``predict``, identity dict for digests).

    spec: "torchani:<model>" (a TorchANI ensemble, weights from ``data_dir``), or ASE calculators,
    one member each: one "MODULE:FACTORY[:ARG]" string or a list of them (:func:`load_calculator`)."""
    if isinstance(spec, str) and spec.startswith("torchani:"):
        ensemble = TorchANIEnsemble(spec.partition(":")[2], data_dir)
        return ensemble.members(), ensemble.identity
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("external_teacher: an empty list of calculators")
    members = [load_calculator(s) for s in specs]
    return members, {"kind": "ase", "members": [m.identity for m in members]}


__all__ = [
    "CalculatorMember",
    "ExternalModelError",
    "ExternalModelUnavailable",
    "TorchANIEnsemble",
    "load_calculator",
    "load_external_teacher",
    "parse_calculator_spec",
    "torchani_resources",
]
