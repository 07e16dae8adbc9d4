"""EKD outside HIPNN: a MACE student trained by MACE's own trainer on ekd's gen-1 labels, against a
MACE control trained on the energies alone (issue 27, item 4).

    ekd train --config configs/md_stability.yaml --run-dir runs/md_stability --role teacher
    ekd distill --config configs/md_stability.yaml --run-dir runs/md_stability --generation 1
    python bench/mace_student.py --run-dir runs/md_stability [--members 2] [--epochs 20] [--jobs 2]

What it does, with the run's own data, splits and seeds:

- reads the run's gen-1 labels as ekd wrote them for other trainers (``labels/gen1.xyz``: info
  ``ekd_energy`` in eV, arrays ``ekd_forces`` in eV/Angstrom: the teachers' ensemble-mean forces);
- for member m, writes the configurations of the run's train and valid splits of slot m (the splits
  ekd's own student m and control m use; the common test split is left out) as ``train_m.xyz`` /
  ``valid_m.xyz``;
- trains, with ``mace_run_train`` (one thread), a MACE student (``--forces_key ekd_forces
  --forces_weight F``) and a MACE control (``--forces_weight 0``: energies only), identical in every
  other option: the same files, architecture, seed, epochs and learning rate;
- scores both groups with ``ekd score --calculator mace.calculators:MACECalculator:<model>`` on the
  run's out-of-sample pool (``data/test.h5``, the reference forces hidden from every model during
  training), and the run's HIPNN teachers with ``ekd score --run-dir`` for reference;
- prints (and writes to ``<out>/mace_student.md`` / ``.json``) E, ΔE and F RMSE per group, members'
  mean ± std, with the wall time of each training.

The MACE models are deliberately tiny (``--channels 16``, L = 0, 2 interactions, r_max 4 A) so that
the whole comparison takes minutes on one core; they say whether ensemble forces help a MACE student
of this size on this data, not how good MACE can be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).parent


def split_files(run_dir: Path, out: Path, members: int) -> tuple[list[tuple[Path, Path]], Path, dict]:
    """[(train_m.xyz, valid_m.xyz)], the out-of-sample file and its keys, from the run's labels and splits."""
    from ekd import config
    from ekd.data import Units, load_dataset
    from ekd.data.ase_files import write_extxyz
    from ekd.training.distill import XYZ_KEYS, XYZ_UNITS
    from ekd.workflow import Run
    from ekd.workflow.inputs import member_splits

    cfg = config.load(run_dir / "config.yaml")
    run = Run(cfg, run_dir, progress=False)
    labels = run.labels_path(run.group("student_gen1")).with_suffix(".xyz")
    if not labels.exists():
        raise SystemExit(f"{labels} does not exist: run `ekd distill --run-dir {run_dir} --generation 1` first")
    keys = {"energy": XYZ_KEYS["energy"], "ensemble_forces": XYZ_KEYS["ensemble_forces"]}
    data = load_dataset(labels, keys, None)
    pool = run.train_data
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for m in range(members):
        pair = []
        for part, idx in member_splits(run.splits, m).items():
            if part == "test":
                continue
            # by identity (molecule, conformer): the labels file's order is not the pool's
            pos = data.positions(pool.subset(idx).ids(), f"the {part} split of member {m}")
            groups = data.subset(pos).to_groups(
                {"energy": "ekd_energy", "ensemble_forces": "ekd_forces"}, Units("ev", "angstrom")
            )
            pair.append(write_extxyz(out / f"{part}_{m}.xyz", groups, XYZ_UNITS))
        files.append(tuple(pair))
    test_keys = {
        "energy": cfg.data.test_energy_key or cfg.data.energy_key,
        "forces": cfg.data.test_reference_forces_key or cfg.data.reference_forces_key,
    }
    return files, run.paths.test, test_keys


def train(role: str, m: int, train_xyz: Path, valid_xyz: Path, out: Path, args) -> tuple[Path, float]:
    """One ``mace_run_train``; (model file, wall seconds). The student and the control differ
    only in ``--forces_weight``."""
    work = out / f"{role}_{m}"
    model = work / f"{role}_{m}.model"
    if model.exists():
        return model, float(json.loads((work / "wall.json").read_text())["seconds"])
    cmd = [
        str(BIN / "mace_run_train"),
        f"--name={role}_{m}",
        f"--work_dir={work}",
        f"--train_file={train_xyz}",
        f"--valid_file={valid_xyz}",
        "--energy_key=ekd_energy",
        "--forces_key=ekd_forces",
        "--energy_weight=1.0",
        f"--forces_weight={args.forces_weight if role == 'student' else 0.0}",
        "--E0s=average",
        "--model=MACE",
        f"--num_channels={args.channels}",
        "--max_L=0",
        "--correlation=2",
        "--num_interactions=2",
        f"--r_max={args.r_max}",
        f"--batch_size={args.batch_size}",
        f"--max_num_epochs={args.epochs}",
        f"--lr={args.lr}",
        f"--patience={args.epochs}",
        "--eval_interval=1",
        f"--seed={args.seed + m}",
        "--device=cpu",
        "--default_dtype=float64",
        "--error_table=TotalRMSE",
        "--save_cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(work / "mace.log", "w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not model.exists():
        raise SystemExit(f"mace_run_train failed for {role} {m} (exit {done.returncode}); see {work / 'mace.log'}")
    (work / "wall.json").write_text(json.dumps({"seconds": seconds, "command": cmd}))
    return model, seconds


def ekd_score(args_list: list[str], out_json: Path) -> dict:
    cmd = [str(BIN / "ekd"), "score", *args_list, "--json", str(out_json), "--quiet"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(out_json.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True, help="a run whose teachers are trained and gen-1 labelled")
    p.add_argument("--out", type=Path, help="work folder (default: <run-dir>/mace)")
    p.add_argument("--members", type=int, default=2, help="MACE students and controls (split slots 0..n-1)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--r-max", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--forces-weight", type=float, default=10.0, help="the students' (the controls': 0)")
    p.add_argument("--seed", type=int, default=1, help="member m uses seed + m, student and control alike")
    p.add_argument("--jobs", type=int, default=1, help="trainings run side by side (one thread each)")
    args = p.parse_args(argv)
    out = args.out or args.run_dir / "mace"
    files, test, keys = split_files(args.run_dir, out, args.members)
    walls: dict[str, list[float]] = {"student": [], "control": []}
    models: dict[str, list[Path]] = {"student": [], "control": []}
    tasks = [(role, m, *pair) for m, pair in enumerate(files) for role in ("student", "control")]
    # --jobs trainings side by side, one thread each (they share nothing but the input files)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(lambda t: train(*t, out, args), tasks))
    for (role, m, *_), (model, seconds) in zip(tasks, done, strict=True):
        models[role].append(model)
        walls[role].append(seconds)
        print(f"{role} {m}: {model} ({seconds:.0f} s)", flush=True)
    test_args = ["--test", str(test), "--energy-key", keys["energy"]]
    if keys["forces"]:
        test_args += ["--forces-key", keys["forces"]]
    rows = {}
    for role in ("student", "control"):
        calcs = [x for model in models[role] for x in ("--calculator", f"mace.calculators:MACECalculator:{model}")]
        scored = ekd_score([*test_args, *calcs], out / f"score_{role}.json")
        rows[f"MACE {role}"] = scored["groups"]["calculators"]
    teachers = ekd_score([*test_args, "--run-dir", str(args.run_dir), "--groups", "teacher"], out / "score_hipnn.json")
    rows["HIPNN teachers (the labels' source)"] = teachers["groups"]["teacher"]
    t = scored["test"]
    lines = [
        f"Out of sample: {test} ({t['n_configurations']} configurations of {t['n_molecules']} molecules); "
        "RMSE in kcal/mol and kcal/mol/Å, members' mean ± std",
        "",
        "| model | k | E | ΔE | F | training (s, each) |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in rows.items():
        s = g["summary"]
        cells = [f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in ("energy_rmse", "delta_e_rmse", "force_rmse")]
        role = name.split()[1] if name.startswith("MACE") else None
        wall = ", ".join(f"{w:.0f}" for w in walls[role]) if role else "-"
        lines.append(f"| {name} | {g['n_members']} | {' | '.join(cells)} | {wall} |")
    text = "\n".join(lines)
    print(text)
    (out / "mace_student.md").write_text(text + "\n")
    (out / "mace_student.json").write_text(json.dumps({"args": vars(args) | {"run_dir": str(args.run_dir),
                                                       "out": str(out)}, "walls": walls, "groups": rows},
                                                      indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
