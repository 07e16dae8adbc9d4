"""Digests of existing run directories stay valid across ekd versions.

A run directory reuses its data, members and labels only while their digests match (ekd.workflow,
ekd.data.generate.parts). Changing a config dataclass (a new field, a renamed one), the group plan
or the generator's options would silently invalidate every run users have, or -- worse -- make
two different configurations share a digest. The values below were computed with ekd at commit
727c774 (2026-12-02, the last release before the renovation of issue 17) by exactly the code of
:func:`_digests` below, for the embedded default and every shipped config; a new field must be
left out of digests at its default (see ``TrainConfig.identity`` and
``GenerateOptions.identity``) so that these stay equal.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from ekd import config
from ekd.workflow import plan

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# name, config digest, generator options hash ("-": the config generates no data), digest of every
# group's member-digest inputs
_TABLE = """
default                 906db19ae49f4e4b  a59d49a35108ac41  4893cdc64abc2e89
ani1ccx.yaml            752db6679223b8ee  -                 3f078d73bde2b23f
capacity.yaml           4020130a990d8391  a59d49a35108ac41  ce57652fee190499
ccsd_t.yaml             8ee35f3cfde49364  58e5c98c5d6c66e2  f568db02c751de21
ccsd_t_cbs.yaml         abbe2851911c5e8e  58e5c98c5d6c66e2  4ee3cb2818e52cc1
cross_teacher.yaml      8f99449efbb760a0  a59d49a35108ac41  9e71121b98397d42
ensemble8.yaml          441b145bbbb79874  a59d49a35108ac41  73f7431aec0830b3
forces_dft.yaml         32f70e414e5c1d0a  6332d0d616e94197  d7d959491e927486
forces_dft_medium.yaml  7e1235ba6c01160b  183975891fcfe1cd  d1717b2162e17a31
forces_dft_small.yaml   73b322144a10cb7d  62a002d6d4f716f5  140fae467df81967
md_stability.yaml       f0e9b59a46ac47aa  b7c75c9a4024d880  c82005c7d8f7c92b
md_stability_long.yaml  d9cd2dfe23198e0c  b7c75c9a4024d880  c82005c7d8f7c92b
paper.yaml              a7dd86af45432d58  a59d49a35108ac41  b734956a3424004c
single_teacher.yaml     dd776d424eb9a34a  a59d49a35108ac41  7dbc040911896357
studies_demo.yaml       71890e2b12ce5e98  a59d49a35108ac41  4a7f5305c2ac917c
"""
RECORDED = {
    name: (cfg, None if gen == "-" else gen, members)
    for name, cfg, gen, members in (line.split() for line in _TABLE.strip().splitlines())
}


def _digests(cfg) -> tuple:
    gen = cfg.data.generate_options(cfg.seed).content_hash() if cfg.data.train == "generate" else None
    study = ("study", "variant", "teacher_members")
    groups = []
    for g in plan(cfg):
        model = cfg.model if g.role == "teacher" else cfg.variant_model(g.variant)
        groups.append(
            {
                # Run.member_digest's: asdict(cfg.data) without data.generate.torsion (issue 30), which
                # for every config without that key is asdict(cfg.data) itself
                "data_cfg": cfg.data.identity(),
                "model": asdict(model),
                "train": cfg.train.identity(),
                "group": {k: v for k, v in asdict(g).items() if not (k in study and v is None)},
                "seed": cfg.seed,
            }
        )
    members = hashlib.sha256(json.dumps(groups, sort_keys=True).encode()).hexdigest()[:16]
    return (cfg.digest(), gen, members)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_digests_of_existing_runs_are_unchanged(name):
    cfg = config.default_config() if name == "default" else config.load(CONFIGS / name)
    assert _digests(cfg) == RECORDED[name]


# RunSpec digests of MD results (ekd.md.stability), computed with ekd at commit 7639a2c (before
# the md/workflow split of issue 17) for a model file of the bytes below
MD_RUNS = [
    ({}, "9872289403a97a8d"),
    ({"energy_every_fs": 2.5}, "a90f8c271a5d1442"),  # a field added later, set: it enters
    ({"engine": "lammps", "seed": 3}, "07beb6a9bffbe279"),
]


@pytest.mark.parametrize("changes, recorded", MD_RUNS)
def test_digests_of_existing_md_results_are_unchanged(tmp_path, changes, recorded):
    from ekd.md.stability import RunSpec

    model = tmp_path / "model.pt"
    model.write_bytes(b"not really a model" * 1000)
    spec = RunSpec(model_paths=(str(model),), dt_fs=0.5, t_max_ps=0.1, **changes)
    assert spec.digest() == recorded
