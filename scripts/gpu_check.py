"""The Python steps of scripts/gpu_check.sh (issue 25's GPU acceptance run); each exits 0 when it passes.

    python scripts/gpu_check.py env      --device cuda [--dry-run]
    python scripts/gpu_check.py train    --device cuda --work DIR [--dry-run]
    python scripts/gpu_check.py score    --device cuda --work DIR
    python scripts/gpu_check.py timing   --device cuda [--dry-run]

``--dry-run`` (with ``--device cpu``): the same code on the CPU at tiny sizes, so that CI runs every
step and the script cannot rot; "the GPU" below is then the CPU again.

Data: rattled G2 molecules labelled with ASE's EMT potential (H, C, N, O; numpy only, so it runs on a
GPU machine without tblite). The numbers mean nothing chemically; they are the same inputs for the
GPU and the CPU, which is all these checks need.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOLECULES = ("H2O", "CH4", "NH3", "CH3OH", "H2CO")
KEYS = {"energy": "emt.energy", "reference_forces": "emt.forces"}
ANI1CCX_CONFORMERS = 489_571  # ANI-1ccx's CCSD(T)*/CBS energies (Smith et al. 2019)
PAPER_BATCH = 64


def say(*parts) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------------------------------------
# env


def env(args) -> int:
    import torch

    ok = True
    say(f"python {sys.version.split()[0]} ({sys.executable})")
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs visible: {torch.cuda.device_count()}")
    for i in range(torch.cuda.device_count()):
        say(f"  cuda:{i}: {torch.cuda.get_device_name(i)}")
    release = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if not (2, 11) <= release < (2, 14):
        say(f"torch {torch.__version__} is outside ekd's range 2.11 - 2.13")
        ok = False
    for tool in ("nvcc", "cmake"):
        path = shutil.which(tool) or (shutil.which(tool, path="/usr/local/cuda/bin") if tool == "nvcc" else None)
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip() if path else ""
        lines = version.splitlines() or [""]
        say(f"{tool}: {path or 'not found'} {lines[-1] if tool == 'nvcc' else lines[0]}")
        if path is None and not args.dry_run:
            ok = False
    if not args.dry_run and not torch.cuda.is_available():
        say("no CUDA device: torch.cuda.is_available() is False")
        ok = False
    import importlib.util

    for module in ("numpy", "h5py", "pytest", "pybind11", "scikit_build_core"):
        if importlib.util.find_spec(module) is None:  # the wheels step brings hippynn, ase, tqdm, yaml
            say(f"missing Python package: {module} (expected on the GPU machine; not among .gpu-wheels/)")
            ok = False
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------
# data and training


def emt_groups(molecules=MOLECULES, n_conf: int = 24, rattle: float = 0.06, seed: int = 0):
    """MoleculeGroups (eV, Angstrom) of rattled G2 molecules with EMT energies and forces."""
    import numpy as np
    from ase.build import molecule
    from ase.calculators.emt import EMT

    from ekd.data import MoleculeGroup

    rng = np.random.default_rng(seed)
    groups = []
    for name in molecules:
        atoms = molecule(name)
        z = atoms.numbers.astype(np.int64)
        xyz = atoms.positions[None] + rattle * rng.normal(size=(n_conf, len(z), 3))
        energy, forces = np.empty(n_conf), np.empty((n_conf, len(z), 3))
        for i in range(n_conf):
            atoms.positions = xyz[i]
            atoms.calc = EMT()
            energy[i], forces[i] = atoms.get_potential_energy(), atoms.get_forces()
        groups.append(MoleculeGroup(name, z, xyz, {KEYS["energy"]: energy, KEYS["reference_forces"]: forces}))
    return groups


def member_config(device: str, epochs: int):
    from ekd import config

    return config.loads(
        f"""
model: {{l_max: 2, n_interactions: 2, n_atom_layers: 1, width: 16, n_sensitivities: 6}}
train: {{max_epochs: {epochs}, min_epochs: {epochs}, batch_size: 16, dtype: float64, device: '{device}',
        force_schedule: [[1, 5.0], [3, 1.0]]}}
"""
    )


def relative(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def train(args) -> int:
    """One member, 3 epochs in float64 on the device and on the CPU from the same seed (a force
    target: double backward); the losses agree to 1e-8 relative. Then labels (ensemble forces of
    the member pair) on the device against the CPU's, and the member files written on the device
    loaded on the CPU."""
    import numpy as np

    from ekd.data import Units, from_groups, random_split, write_ani
    from ekd.training.distill import label_dataset
    from ekd.training.member import load_member
    from ekd.training.train import MemberSpec, train_member

    work = Path(args.work)
    n_conf = 4 if args.dry_run else 24
    groups = emt_groups(MOLECULES[:3] if args.dry_run else MOLECULES, n_conf=n_conf)
    write_ani(work / "emt.h5", groups, {"energy_unit": "eV", "length_unit": "angstrom"})
    data = from_groups(groups, KEYS, Units("ev", "angstrom"), source="emt")
    rest, test = random_split(np.arange(len(data)), 0.2, seed=0)
    tr, va = random_split(rest, 0.2, seed=1)
    splits = {"train": tr, "valid": va, "test": test}
    epochs = 2 if args.dry_run else 3
    logs, summaries = {}, {}
    # the dry run trains once (its device is the CPU) and compares that member with itself
    for device in dict.fromkeys((args.device, "cpu")):
        out = work / f"member_{device.replace(':', '')}"
        spec = MemberSpec("baseline", 0, 0, seed=11, forces="reference_forces")
        t0 = time.perf_counter()
        summaries[device] = train_member(spec, member_config(device, epochs), data, splits, out)
        logs[device] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        say(f"trained on {summaries[device]['device']}: {epochs} epochs in {time.perf_counter() - t0:.1f} s")
    ok = True
    for key in ("loss", "valid_energy_rmse", "valid_force_rmse"):
        a, b = [e[key] for e in logs[args.device]], [e[key] for e in logs["cpu"]]
        rel = relative(a, b)
        good = rel <= 1e-8
        ok &= good
        say(f"{key} per epoch, {args.device} vs cpu: max relative difference {rel:.2e} (<= 1e-8: {good})")
        say(f"  {args.device}: {a}\n  cpu:  {b}")
    # labels: both members on the device, then on the CPU (files written on the device, loaded anywhere)
    dirs = [work / f"member_{d.replace(':', '')}" for d in (args.device, "cpu")] * (2 if args.dry_run else 1)
    test_data = data.subset(splits["test"])
    on_device = label_dataset([load_member(d, args.device) for d in dirs], test_data)
    on_cpu = label_dataset([load_member(d, "cpu") for d in dirs], test_data)
    for key in ("ensemble_forces", "ensemble_forces_std"):
        rel = relative(on_device.properties[key], on_cpu.properties[key])
        good = rel <= 1e-10
        ok &= good
        say(f"labels {key}, {args.device} vs cpu: max relative difference {rel:.2e} (<= 1e-10: {good})")
    return 0 if ok else 1


def score(args) -> int:
    """The member trained on the device, exported and scored with `ekd score --device` on the
    device and on the CPU: the same scores."""
    work = Path(args.work)
    member = work / f"member_{args.device.replace(':', '')}"
    model = work / "member.pt"
    from ekd.deploy.export import export_member

    py = [sys.executable, "-m", "ekd.cli"]
    say(export_member(member, model, dtype="float64").description)
    scores = {}
    for device in dict.fromkeys((args.device, "cpu")):  # the dry run: once
        out = work / f"score_{device.replace(':', '')}.json"
        cmd = [*py, "score", str(model), "--test", str(work / "emt.h5"), "--device", device, "--json", str(out)]
        subprocess.run([*cmd, "--quiet"], check=True)
        scores[device] = json.loads(out.read_text())
    numbers = {d: list(_numbers(s)) for d, s in scores.items()}
    assert numbers["cpu"] and len(numbers[args.device]) == len(numbers["cpu"])
    rel = relative(numbers[args.device], numbers["cpu"])
    say(f"ekd score {args.device} vs cpu: {len(numbers['cpu'])} numbers, max relative difference {rel:.2e}")
    return 0 if rel <= 1e-9 else 1


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        if math.isfinite(obj):
            yield float(obj)
    elif isinstance(obj, dict):
        for k in sorted(obj):
            if k not in ("seconds", "wall_time", "created", "ekd_version", "torch_version"):
                yield from _numbers(obj[k])
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


# ------------------------------------------------------------------------------------------------
# timing


def _bench():
    """bench/kernels.py's inputs (the 64-molecule batch and the 3,136-atom box), imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ekd_bench_kernels", ROOT / "bench" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(width: int, n_sens: int):
    import torch
    from hippynn.networks.hipnn import HipnnQuad

    torch.manual_seed(0)
    net = HipnnQuad(
        n_features=width, n_sensitivities=n_sens, dist_soft_min=0.75, dist_soft_max=5.5, dist_hard_max=6.5,
        n_atom_layers=4, n_interaction_layers=2, possible_species=[0, 1, 6, 7, 8],
    )  # fmt: skip
    heads = torch.nn.ModuleList([torch.nn.Linear(n, 1) for n in (4, width, width)])
    return net, heads


def _case(bench, case: str, device, dry_run: bool):
    import torch

    pos, onehot, mol, n_mol, cell = bench.structures(case)
    if dry_run:  # a few whole molecules: tiny sizes, the same code
        keep = mol < 4 if case == "molecules" else torch.arange(pos.shape[0]) < 4 * 7
        pos, onehot, mol = pos[keep], onehot[keep], mol[keep]
        n_mol = int(mol.max()) + 1
    pf, ps, offsets = bench.pairs(pos, cell)
    tensors = [t.to(device) for t in (pos, onehot, mol, pf, ps, offsets)]
    return (*tensors, n_mol)


def _time_calls(fn, device, repeats: int) -> float:
    import torch

    for _ in range(min(repeats, 2)):  # warm-up: triton / numba compile their kernels on first use
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_case(bench, case: str, task: str, device, width: int, n_sens: int, repeats: int, peers, dry_run: bool):
    """Median seconds per call of ``task`` (train: energy + force loss, double backward, Adam step;
    infer: energy + forces) on ``case`` for ekd's kernels and each of hippynn's ``peers``."""
    import hippynn.custom_kernels as ck
    import torch

    from ekd.ops.kernels import use_kernels

    pos, onehot, mol, pf, ps, offsets, n_mol = _case(bench, case, device, dry_run)
    net, heads = _model(width, n_sens)
    net, heads = net.to(device), heads.to(device)
    opt = torch.optim.Adam(list(net.parameters()) + list(heads.parameters()), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    target_e = torch.randn(n_mol, generator=gen).to(device)
    target_f = torch.randn(pos.shape, generator=gen).to(device)

    def call():
        x = pos.clone().requires_grad_(True)
        coord = x[ps] - x[pf] + offsets
        feats = net(onehot, pf, ps, coord.norm(dim=1), coord)
        atom_e = sum(h(f) for h, f in zip(heads, feats, strict=True)).squeeze(1)
        energy = torch.zeros(n_mol, device=x.device).index_add(0, mol, atom_e)
        (g,) = torch.autograd.grad(energy.sum(), x, create_graph=task == "train")
        if task == "train":
            loss = ((energy - target_e) ** 2).mean() + ((-g - target_f) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    times = {}
    for name in ["ekd", *peers]:
        if name in ("ekd", "pytorch"):
            use_kernels(name)
        else:
            ck.set_custom_kernels(name)
        times[name] = _time_calls(call, device, repeats)
    use_kernels("ekd")
    return times, f"{pos.shape[0]} atoms, {pf.shape[0]} pairs"


def timing(args) -> int:
    """The paper's model (HipnnQuad, width 128, 20 sensitivities), float32: a training step on the
    64-molecule batch and energy+forces of the 3,136-atom box, ekd's kernels against hippynn's own
    GPU kernels (triton, cupy, numba: whichever are installed) in this process."""
    import hippynn.custom_kernels as ck

    from ekd.ops.devices import resolve_device
    from ekd.ops.kernels import use_kernels

    device = resolve_device(args.device, "--device")
    bench = _bench()
    width, n_sens = (16, 6) if args.dry_run else (128, 20)
    repeats = 1 if args.dry_run else 5
    use_kernels("ekd")
    gpu_kernels = [k for k in ("triton", "cupy", "numba") if k in ck.CUSTOM_KERNELS_AVAILABLE]
    # on the CPU (the dry run) hippynn's uncompiled pure-torch kernels (ekd's name for them); never on
    # the GPU's paper-size box, where they would materialise pairs x sensitivities x features (~25 GB)
    peers = gpu_kernels if device.type == "cuda" else ["pytorch"]
    if not peers:
        say("no hippynn GPU kernels here (triton, cupy, numba): ekd's times only")
    rows = {}
    for case, task in (("molecules", "train"), ("box", "infer")):
        times, what = _time_case(bench, case, task, device, width, n_sens, repeats, peers, args.dry_run)
        rows[(case, task)] = times
        line = f"{case} {task} ({what}) on {device}: ekd {times['ekd'] * 1e3:.1f} ms"
        if peers:
            best = min(peers, key=lambda k: times[k])
            line += "; " + ", ".join(
                f"hippynn-{k} {times[k] * 1e3:.1f} ms ({times[k] / times['ekd']:.2f}x)" for k in peers
            )
            line += f"; ekd vs the fastest hippynn kernel: {times[best] / times['ekd']:.2f}x (target >= 3x)"
        say(line)
    step = rows[("molecules", "train")]["ekd"]
    hours = ANI1CCX_CONFORMERS / PAPER_BATCH * step / 3600
    say(
        f"estimate: one ANI-1ccx epoch ({ANI1CCX_CONFORMERS} conformers, batches of {PAPER_BATCH}) "
        f"at {step * 1e3:.1f} ms per step: {hours:.2f} h per member and epoch on {device}"
        + (" (dry run: tiny model, not an estimate)" if args.dry_run else "")
    )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("env", "train", "score", "timing"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    return {"env": env, "train": train, "score": score, "timing": timing}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
