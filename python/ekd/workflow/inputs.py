"""A run's inputs: the reference data (generated or given, with its units decided in one place),
the training and out-of-sample pools, the splits, and what a member job loads from them."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import store
from ..config import Config
from ..data import DataFileError, Dataset, Units, load_dataset, random_split, resolve_units
from .common import log, run_digest

# ------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class DataPaths:
    train: Path
    test: Path | None
    torsion: Path | None = None  # the torsion scans (data.generate.torsion), when made


#: the keys of the generated torsion scans (GFN2-xTB only: ekd.data.generate.torsion)
TORSION_KEYS = {"energy": "gfn2_xtb.energy", "reference_forces": "gfn2_xtb.forces"}


def torsion_skipped(cfg: Config) -> str | None:
    """Why this run scores no torsion scans (None: it does). They are generated only with
    generated data, and scored only when the out-of-sample pool's energies are GFN2-xTB's, the
    scans' only level: a model of another level would be scored against the wrong reference."""
    d = cfg.data
    if not (d.train == "generate" or d.test == "generate"):
        return "no generated data"
    if not d.generate_options(cfg.seed).torsion.molecules:
        return "data.generate.torsion.molecules is 0"
    key = d.test_energy_key or d.energy_key
    if key != TORSION_KEYS["energy"]:
        return (
            f"the torsion scans are labelled with GFN2-xTB only ({TORSION_KEYS['energy']}), and this run's "
            f"out-of-sample energies are {key!r}"
        )
    return None


def prepare_data(cfg: Config, run_dir: Path, progress: bool = True) -> DataPaths:
    """Generate the reference data if configured (resumable), else check the given files."""
    d = cfg.data
    generated = d.train == "generate" or d.test == "generate"
    train = test = torsion = None
    if generated:
        from ..data.generate import TorsionOptions, generate

        opts = d.generate_options(cfg.seed)
        out = run_dir / "data"
        # what shapes the data, not how many processes made it
        shape = {k: v for k, v in opts.identity().items() if k not in ("workers", "chunk_size")}
        store.claim(
            out,
            run_digest(shape),
            "generated data",
            hint=f"; the new run can reuse the molecules computed here: copy {out / '.parts'} to "
            "<new run dir>/data/.parts first (the generator recomputes only what the new options change)",
        )
        if (out / "done.json").exists():
            train, test = out / "train.h5", out / "test.h5"
        else:
            levels = ", ".join(dict.fromkeys(opts.levels + opts.test_levels))
            log(f"generating reference data ({levels}) into {out}")
            train, test = generate(replace(opts, torsion=TorsionOptions()), out, progress=progress)
            store.atomic_json(out / "done.json", {"train": str(train), "test": str(test)})
        train, test = Path(train), Path(test)
        torsion = _torsion_scans(cfg, opts, out, shape, progress)
    if d.train != "generate":
        train = Path(d.train)
    if d.test != "generate":
        test = None if d.test is None else Path(d.test)
    for label, p in (("data.train", train), ("data.test", test)):
        if p is not None and not p.exists():
            raise FileNotFoundError(f"{label}: data file {p} does not exist")
    return DataPaths(train, test, torsion)


def _torsion_scans(cfg: Config, opts, out: Path, shape: dict, progress: bool) -> Path | None:
    """``out/torsion.h5`` made (resumably, as parts) when the run scores torsion scans, beside the
    train and test files, which it leaves untouched; its stamp ``torsion.json`` records the
    options it was made from (in no other digest: see DataConfig.identity)."""
    from ..data.generate import TORSION_NAME, generate_torsion

    why = torsion_skipped(cfg)
    if why is not None:
        if opts.torsion.molecules:
            log(f"torsion scans: not made ({why})")
        return None
    path, stamp = out / TORSION_NAME, out / "torsion.json"
    want = run_digest({"data": shape, "torsion": opts.to_dict()["torsion"]})
    if not (path.exists() and stamp.exists() and json.loads(stamp.read_text()).get("digest") == want):
        t = opts.torsion
        log(f"generating torsion scans ({t.molecules} molecules, {t.scan_label()}) into {path}")
        generate_torsion(opts, out, progress=progress)
        store.atomic_json(stamp, {"digest": want})
    return path


def data_units(cfg: Config, path: Path, which: str = "train") -> Units:
    """The units of data file ``path``: THE one place where they are decided, in the main process;
    member jobs receive the result (see :meth:`Run.member_inputs`).

    which: "train" (``data.train`` and the labels files made from it) or "test" (``data.test``).
    A given file is in the configured units (``data.energy_unit`` / ``data.length_unit``; for the
    test file ``data.test_energy_unit`` if set), which must agree with the file's own
    ``energy_unit`` / ``length_unit`` attributes if it has them; a generated file carries ekd's.
    """
    d = cfg.data
    if which == "train":
        declared = None if d.train == "generate" else Units(d.energy_unit, d.length_unit)
        names = ("data.energy_unit", "data.length_unit")
    elif which == "test":
        declared = None if d.test == "generate" else Units(d.test_energy_unit or d.energy_unit, d.length_unit)
        names = ("data.test_energy_unit" if d.test_energy_unit else "data.energy_unit", "data.length_unit")
    else:
        raise ValueError(f"data_units: which must be 'train' or 'test', got {which!r}")
    return resolve_units(path, declared, names)


def load_pool(
    path: Path, keys: dict[str, str], units: Units, check_plausible: bool = True, test: bool = False
) -> Dataset:
    """Every configuration of ``path`` with a known energy, in internal units: what the main
    process and every member job read, so that both see the same configurations. test: the
    out-of-sample pool (messages name its ``data.test_*`` keys)."""
    names = {k: f"data.test_{k}_key (or data.{k}_key)" if test else f"data.{k}_key" for k in keys}
    return load_dataset(path, keys, units, check_plausible=check_plausible, key_names=names).require("energy")


def train_keys(cfg: Config) -> dict[str, str]:
    keys = {"energy": cfg.data.energy_key}
    if cfg.data.reference_forces_key:
        keys["reference_forces"] = cfg.data.reference_forces_key
    return keys


def load_train(cfg: Config, paths: DataPaths) -> Dataset:
    """The training pool: every configuration with a known energy."""
    return load_pool(paths.train, train_keys(cfg), data_units(cfg, paths.train, "train"))


def load_test_pool(cfg: Config, paths: DataPaths) -> Dataset | None:
    """The out-of-sample pool, read with the test file's own key names and units."""
    if paths.test is None:
        return None
    d = cfg.data
    keys = {"energy": d.test_energy_key or d.energy_key}
    forces = d.test_reference_forces_key or d.reference_forces_key
    if forces:
        keys["reference_forces"] = forces
    return load_pool(paths.test, keys, data_units(cfg, paths.test, "test"), test=True)


def load_torsion(cfg: Config, paths: DataPaths) -> Dataset | None:
    """The torsion scans (one molecule group per scan), in internal units; None without them."""
    if paths.torsion is None:
        return None
    units = resolve_units(paths.torsion, None, ("data.energy_unit", "data.length_unit"))
    return load_pool(paths.torsion, dict(TORSION_KEYS), units, test=True)


def check_test_elements(train: Dataset, test: Dataset | None, test_path: Path | None = None) -> None:
    """Refuse an out-of-sample pool with elements the training pool does not have: no member
    could predict them, and it would only show after all training."""
    if test is None:
        return
    from ase.data import chemical_symbols

    missing = sorted(set(test.elements) - set(train.elements))
    if not missing:
        return
    parts = []
    for z in missing:
        names = sorted({test.molecule_names[m] for m in np.unique(test.molecule[(test.species == z).any(axis=1)])})
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"{chemical_symbols[z]} (in {shown})")
    raise DataFileError(
        f"data.test {test_path or test.source}: element(s) {'; '.join(parts)} occur only in the out-of-sample pool, "
        f"not in the training pool {train.source} (elements {[chemical_symbols[z] for z in train.elements]}); "
        "no model can predict them: remove those molecules from the test file or add the elements to the training data"
    )


# ------------------------------------------------------------------------------------------
# splits


#: configurations the splits need at the least: one test, one validation, one training
MIN_CONFIGURATIONS = 3


def make_splits(cfg: Config, n: int, source: str = "the training pool") -> dict[str, np.ndarray]:
    """The common test split and one (train, valid) split per member seed slot, as positions in
    the training pool (see :meth:`Run.member_inputs` for what jobs receive).

    Member m of any role uses split slot m: teacher m and student m see the same training
    configurations, while different members see different ones.
    """
    if n < MIN_CONFIGURATIONS:
        raise DataFileError(
            f"{source}: {n} configuration(s) with a known energy; the splits need at least {MIN_CONFIGURATIONS} "
            "(one for the test split, one for validation, one to train on), and many more to train a useful model"
        )
    all_idx = np.arange(n)
    pool, test = random_split(all_idx, cfg.data.test_fraction, seed=cfg.seed)
    out = {"test": test, "pool": pool}
    k = max(cfg.ensemble.n_teachers, cfg.ensemble.n_students, cfg.ensemble.study_members or 0)
    for m in range(k):
        train, valid = random_split(pool, cfg.data.valid_fraction, seed=cfg.seed * 7919 + 1000 + m)
        out[f"train_{m}"] = train
        out[f"valid_{m}"] = valid
    return out


def member_splits(splits: dict[str, np.ndarray], member: int) -> dict[str, np.ndarray]:
    return {"train": splits[f"train_{member}"], "valid": splits[f"valid_{member}"], "test": splits["test"]}


def load_member_data(inputs: dict) -> tuple[Dataset, dict[str, np.ndarray]]:
    """The dataset and splits (positions in it) that a member job trains on, from its inputs
    (:meth:`Run.member_inputs`): the data file read with the units the main process decided, and
    the splits mapped from configuration identities (never from positions, which a filter
    shifts). Configurations whose force target is unknown (NaN) leave the train/valid splits:
    what remains is the member's split minus those."""
    dataset = load_pool(Path(inputs["data"]), inputs["keys"], Units(*inputs["units"]), check_plausible=False)
    targets = [name for name in inputs["keys"] if name != "energy"]
    splits = {}
    for name, ids in inputs["splits"].items():
        pos = dataset.positions(ids, f"the {name} split of {inputs['what']}")
        if name != "test":
            for target in targets:
                pos = pos[dataset.mask(target)[pos]]
            if len(pos) == 0:
                raise DataFileError(
                    f"{dataset.source}: no configuration of the {name} split of {inputs['what']} has {targets} "
                    f"(all NaN); {inputs['what']} cannot be trained on this data"
                )
        splits[name] = pos
    return dataset, splits
