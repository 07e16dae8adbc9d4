"""One training routine for every role: teacher, student, control, baseline.

Roles differ by configuration only (:class:`MemberSpec`): the architecture (``cfg.model`` for
teachers, ``cfg.student_model`` otherwise) and whether a force target is trained on (students:
the previous generation's ensemble forces; baselines: the dataset's reference forces).

Loss per batch (energies in kcal/mol, forces in kcal/mol/Angstrom, over real atoms only)::

    w_E (RMSE + MAE)(E) + w_F(epoch) (RMSE + MAE)(F) + w_L2 L2(weights) + w_R mean(hierarchicality)
    [+ the uncertainty head's loss (logged apart, sigma_loss): see ekd.training.models.SigmaHead]

Early stopping, the learning-rate schedule and "best" all use the validation ENERGY RMSE: the
total loss jumps whenever the force-weight schedule steps, so it cannot tell a better model from
a lighter weight.

Output directory of a member::

    checkpoint.pt     after every epoch (atomic); a killed run continues from it; removed when done
    train_log.jsonl   one JSON line per epoch (force weight in force, lr, train/valid RMSEs, time)
    model.pt          the best-on-validation model: architecture, species, state dict, offsets
    done.json         summary, written last (atomically): its presence means "finished"

The training loop is ekd's own (hippynn builds the graph, ekd runs it): hippynn's
``train_model`` swallows KeyboardInterrupt, writes files into the working directory and checkpoints
the best epoch only, none of which suits resumable jobs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ModelConfig
from ..data import Dataset
from ..data.database import database_arrays
from ..groups import ROLES
from ..ops.devices import resolve_device, to_cpu
from ..ops.threads import check_wait_policy
from ..store import append_line, atomic_text, atomic_write, bytes_digest, canonical_json, load_torch
from .member import MODEL_FORMAT, Member, load_member, member_payload
from .models import SIGMA_FLOOR, add_sigma_head, atom_sigma, build_model, check_padding, param_groups, use_kernels


@dataclass(frozen=True)
class MemberSpec:
    """Who is trained: role, generation, member index, seed and targets.

    energy: dataset property used as energy target (kcal/mol).
    forces: dataset property used as force target (kcal/mol/Angstrom), e.g. "ensemble_forces"
        (students) or "reference_forces" (baseline); None trains on energies only.
    """

    role: str
    generation: int
    member: int
    seed: int
    energy: str = "energy"
    forces: str | None = None
    variant: str | None = None  # student architecture: an ensemble.student_variants entry (None: student_model)
    # dataset property of the teachers' per-component force spread (n, A, 3), e.g.
    # "ensemble_forces_std": the member gets a SigmaHead trained on it (None: no head)
    uncertainty: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"MemberSpec.role: must be one of {list(ROLES)}, got {self.role!r}")
        if self.generation < 0 or self.member < 0:
            raise ValueError(f"MemberSpec: generation and member must be >= 0, got {self.generation}, {self.member}")


# ------------------------------------------------------------------------------------------
# training


def train_member(
    spec: MemberSpec,
    cfg: Config,
    dataset: Dataset,
    splits: Mapping[str, np.ndarray],
    out_dir: Path,
    progress: bool = False,
    *,
    epoch_callbacks: Sequence[Callable[[int, dict], None]] = (),
) -> dict:
    """Train one ensemble member (or continue its interrupted run); returns the done.json summary.

    dataset: every configuration the member may see; ``splits["train"]`` / ``splits["valid"]``
        index into it (a "test" split, if given, is checked for overlap and otherwise ignored).
        The energy target (and the force target, if any) must be known for every configuration
        of both splits.
    out_dir: the member's directory (see the module docstring). If ``done.json`` exists, its
        content is returned without training.
    progress: print one line per epoch and let hippynn talk; otherwise silent.
    epoch_callbacks: called as ``cb(epoch, log_entry)`` after each epoch has been checkpointed
        (e.g. to interrupt a run in tests).
    """
    out_dir = Path(out_dir)
    done_path = out_dir / "done.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        return _train(spec, cfg, dataset, splits, out_dir, progress, tuple(epoch_callbacks))


def _train(spec, cfg: Config, dataset: Dataset, splits, out_dir: Path, progress: bool, callbacks) -> dict:
    started = time.perf_counter()
    tc = cfg.train
    arch = cfg.model if spec.role == "teacher" else cfg.variant_model(spec.variant)
    dtype = getattr(torch, tc.dtype)
    torch.set_num_threads(tc.threads)
    check_wait_policy(tc.threads, "train")
    device = resolve_device(tc.device, "train.device")
    kernels = use_kernels(tc.kernels)
    train_idx, valid_idx = _check_splits(splits, len(dataset))
    check_padding(dataset.species, f"{dataset.source or 'dataset'}: species")
    targets = [spec.energy] + ([spec.forces] if spec.forces else []) + ([spec.uncertainty] if spec.uncertainty else [])
    train = _Batches(database_arrays(dataset.subset(train_idx), targets, dtype), spec, device)
    valid = _Batches(database_arrays(dataset.subset(valid_idx), targets, dtype), spec, device)

    _seed_everything(spec.seed)
    model = build_model(arch, dataset.elements, dataset, train_idx, energy=spec.energy)
    head = spec.uncertainty is not None
    if head:  # after the network: its weights come from their own generator (see SigmaHead)
        add_sigma_head(model, spec.seed, float(train.log_sigma[train.species > 0].mean()))
    # built on the CPU (the same initial weights on every device), then moved
    net = model.modules().to(dtype).to(device)
    # the graph's own modules (species encoder, pair indexer) hold buffers too: on the device as well
    step_module = model.graph_module(forces=spec.forces is not None, training=True, features=head).to(device)
    energy_module = model.graph_module(forces=False, features=head).to(device)
    optimizer = torch.optim.Adam(param_groups(model, tc.lr), lr=tc.lr)

    fingerprint = _fingerprint(spec, arch, tc, train_idx, valid_idx, dataset)
    policy = StoppingPolicy.of(tc, forces=spec.forces is not None)
    state = {**policy.start(), "elapsed": 0.0}
    best_state = copy.deepcopy(net.state_dict())
    ckpt_path = out_dir / "checkpoint.pt"
    log_path = out_dir / "train_log.jsonl"
    if ckpt_path.exists():
        ckpt = load_torch(
            ckpt_path,
            f"checkpoint of {spec.role} member {spec.member} (generation {spec.generation})",
            "delete it to restart that member from scratch (its epochs so far are lost, nothing else)",
        )
        if ckpt["fingerprint"] != fingerprint:
            raise RuntimeError(
                f"{ckpt_path} was written by a run with different inputs (spec, config, splits or data); "
                f"delete {out_dir} to train this member from scratch"
            )
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        best_state = ckpt["best_model"]
        state = ckpt["state"]
        _truncate_log(log_path, state["epoch"])
    elif log_path.exists():
        log_path.unlink()  # a log without a checkpoint belongs to a run that never finished an epoch

    while policy.running(state):
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        w_f = tc.force_weight(epoch) if spec.forces else None
        lr = optimizer.param_groups[0]["lr"]
        loss, sigma_loss = _train_epoch(
            step_module, optimizer, train, tc, w_f, _epoch_generator(spec.seed, epoch), model.uncertainty
        )
        train_metrics = _evaluate(energy_module, train, forces=False)
        extra = {"head": model.uncertainty} if head else {}
        valid_metrics = _evaluate(energy_module, valid, forces=spec.forces is not None, **extra)
        if not np.isfinite(loss) or not np.isfinite(valid_metrics["energy_rmse"]):
            raise FloatingPointError(
                f"{spec.role} member {spec.member} (generation {spec.generation}): non-finite loss at epoch "
                f"{epoch} (loss {loss}, valid energy RMSE {valid_metrics['energy_rmse']}); lower train.lr?"
            )

        rmse = valid_metrics["energy_rmse"]
        better, lr_scale = policy.observe(state, epoch, rmse)
        if better:
            best_state = copy.deepcopy(net.state_dict())
        if lr_scale != 1.0:
            for group in optimizer.param_groups:
                group["lr"] *= lr_scale
        seconds = time.perf_counter() - t0
        state["elapsed"] += seconds
        entry = {
            "epoch": epoch,
            "force_weight": w_f,
            "lr": lr,
            "loss": loss,
            "train_energy_rmse": train_metrics["energy_rmse"],
            "valid_energy_rmse": rmse,
            "valid_energy_mae": valid_metrics["energy_mae"],
            **({"valid_force_rmse": valid_metrics["force_rmse"]} if spec.forces else {}),
            **({"sigma_loss": sigma_loss, "valid_log_sigma_rmse": valid_metrics["log_sigma_rmse"]} if head else {}),
            "best": better,
            "seconds": round(seconds, 3),
        }
        # log first, checkpoint second: a run killed in between repeats the epoch, and the log
        # is truncated to the checkpoint's epoch on resume
        append_line(log_path, json.dumps(entry), "training log")
        # CPU tensors: a checkpoint resumes on any device
        _atomic_save(
            to_cpu(
                {
                    "fingerprint": fingerprint,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_model": best_state,
                    "state": state,
                }
            ),
            ckpt_path,
        )
        if progress:
            print(_format_entry(spec, entry), file=sys.stderr, flush=True)
        for cb in callbacks:
            cb(epoch, entry)

    net.load_state_dict(best_state)
    _atomic_save(to_cpu(member_payload(model, arch, spec, tc)), out_dir / "model.pt")
    summary = {
        "role": spec.role,
        "generation": spec.generation,
        "member": spec.member,
        "seed": spec.seed,
        "energy": spec.energy,
        "forces": spec.forces,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_valid_energy_rmse": state["best_rmse"],
        "stopped": policy.stopped_by(state),
        "n_train": len(train_idx),
        "n_valid": len(valid_idx),
        "kernels": kernels,
        "device": str(device),
        "training_seconds": round(state["elapsed"], 2),
        "wall_time": round(time.perf_counter() - started, 2),
    }
    _atomic_write_text(out_dir / "done.json", json.dumps(summary, indent=1))
    ckpt_path.unlink(missing_ok=True)
    return summary


@dataclass(frozen=True)
class StoppingPolicy:
    """Early stopping, the learning-rate plateau decay and "best", decided from the validation
    energy RMSE of each epoch, and nothing else (a unit, testable with made-up RMSE sequences).

    The state is a plain dict (it goes into the checkpoint): epoch (last finished), best_epoch,
    best_rmse, since_best (epochs without a new best that count), lr_bad (the same, since the
    last lr decay).

    Epochs before ``hold_until`` do not count: while the force weight still decays, the energy
    error may rise as the forces improve (measured: a student whose energy RMSE stayed at epoch
    1's for 16 epochs of falling force error was stopped at epoch 17), and ``min_epochs`` holds
    off small energy-only sets that sit at the per-element offsets for a while.
    """

    lr_factor: float
    lr_patience: int
    termination_patience: int
    max_epochs: int
    min_epochs: int = 0
    hold_until: int = 0  # first epoch that counts towards patience and the lr plateau

    @classmethod
    def of(cls, tc, forces: bool) -> StoppingPolicy:
        """The policy of ``tc`` (a :class:`~ekd.config.TrainConfig`) for a member with or without a
        force target (with one, the force-weight schedule's last step holds counting off)."""
        ramp_end = tc.force_schedule[-1][0] if forces else 0
        return cls(
            tc.lr_factor, tc.lr_patience, tc.termination_patience, tc.max_epochs, tc.min_epochs,
            max(ramp_end, tc.min_epochs),
        )  # fmt: skip

    def start(self) -> dict:
        return {"epoch": 0, "best_epoch": 0, "best_rmse": float("inf"), "since_best": 0, "lr_bad": 0}

    def running(self, state: Mapping) -> bool:
        """Whether another epoch is trained."""
        return state["epoch"] < self.max_epochs and (
            state["since_best"] < self.termination_patience or state["epoch"] < self.min_epochs
        )

    def observe(self, state: dict, epoch: int, rmse: float) -> tuple[bool, float]:
        """Record epoch ``epoch``'s validation energy RMSE (updates ``state``); returns (a new
        best, the factor to multiply the learning rate by for the next epoch: 1 or lr_factor)."""
        scale = 1.0
        better = rmse < state["best_rmse"]
        if better:
            state.update(best_rmse=rmse, best_epoch=epoch, since_best=0, lr_bad=0)
        elif epoch >= self.hold_until:
            state["since_best"] += 1
            state["lr_bad"] += 1
            if state["lr_bad"] >= self.lr_patience:
                scale = self.lr_factor
                state["lr_bad"] = 0
        state["epoch"] = epoch
        return better, scale

    def stopped_by(self, state: Mapping) -> str:
        return "patience" if state["since_best"] >= self.termination_patience else "max_epochs"


class _Batches:
    """Training arrays of one split as tensors: species (n, A), coordinates (n, A, 3), energy (n, 1),
    forces (n, A, 3) if trained on."""

    def __init__(self, arrays: dict[str, torch.Tensor], spec: MemberSpec, device: torch.device):
        # on the training device once, not batch by batch
        self.species = arrays["species"].to(device)
        self.coordinates = arrays["coordinates"].to(device)
        self.energy = arrays[spec.energy].to(device)
        self.forces = arrays[spec.forces].to(device) if spec.forces else None
        # the teachers' per-atom spread as its log (floored: SIGMA_FLOOR), (n, A); 0 in padding
        self.log_sigma = None
        if spec.uncertainty:
            sigma = atom_sigma(arrays[spec.uncertainty].to(torch.float64)).clamp(min=SIGMA_FLOOR)
            self.log_sigma = (torch.log(sigma) * (self.species.cpu() > 0)).to(arrays["coordinates"].dtype).to(device)

    def __len__(self) -> int:
        return int(self.species.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        n = len(self)
        # the order is drawn on the CPU (the same batches on every device), then moved
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.species.device)
        for start in range(0, n, batch_size):
            i = order[start : start + batch_size]
            yield (
                self.species[i],
                self.coordinates[i],
                self.energy[i],
                None if self.forces is None else self.forces[i],
                None if self.log_sigma is None else self.log_sigma[i],
            )


def _train_epoch(step_module, optimizer, data: _Batches, tc, w_f: float | None, generator, head=None):
    """One pass over the training batches; returns (the mean energy/force loss, the mean
    uncertainty-head loss or None without a head)."""
    step_module.train()
    total, sigma_total, count = 0.0, 0.0, 0
    for species, coords, e_true, f_true, s_true in data.batches(tc.batch_size, generator):
        outputs = step_module(species, coords.clone())
        e_pred = outputs[0]
        loss = tc.w_energy * _rmse_mae(e_pred - e_true)
        real = species > 0
        if f_true is not None:
            loss = loss + w_f * _rmse_mae((outputs[1] - f_true)[real])
        hier, l2 = outputs[-3:-1] if head is not None else outputs[-2:]
        loss = loss + tc.w_l2 * l2 + tc.w_hierarchicality * hier.mean()
        optimizer.zero_grad(set_to_none=True)
        if head is not None:
            # detached: no gradient of this term reaches the network (see SigmaHead)
            sigma_loss = torch.mean((head(outputs[-1].detach()) - s_true[real]) ** 2)
            (loss + sigma_loss).backward()
            sigma_total += float(sigma_loss.detach()) * len(species)
        else:
            loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(species)
        count += len(species)
    return total / count, (sigma_total / count if head is not None else None)


def _rmse_mae(err: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean(err * err)) + torch.mean(torch.abs(err))


def _evaluate(energy_module, data: _Batches, forces: bool, batch_size: int = 256, head=None) -> dict[str, float]:
    """Energy RMSE/MAE (kcal/mol), if ``forces`` the force RMSE over real atoms (kcal/mol/Angstrom)
    and, with a ``head``, the RMSE of its log sigma over real atoms."""
    energy_module.eval()
    e_err, f_sq, f_n, s_sq, s_n = [], 0.0, 0, 0.0, 0
    for species, coords, e_true, f_true, s_true in data.batches(batch_size):
        real = species > 0
        if forces:
            coords = coords.clone().requires_grad_(True)
            outputs = energy_module(species, coords)
            e_pred = outputs[0]
            f_pred = -torch.autograd.grad(e_pred.sum(), coords)[0]
            d = (f_pred - f_true)[real].detach().double()
            f_sq += float((d * d).sum())
            f_n += d.numel()
        else:
            with torch.no_grad():
                outputs = energy_module(species, coords)
                e_pred = outputs[0]
        if head is not None:
            with torch.no_grad():
                ds = (head(outputs[-1].detach()) - s_true[real]).double()
            s_sq += float((ds * ds).sum())
            s_n += ds.numel()
        e_err.append((e_pred.detach() - e_true).double().reshape(-1))
    e = torch.cat(e_err)
    out = {"energy_rmse": float(torch.sqrt(torch.mean(e * e))), "energy_mae": float(torch.mean(e.abs()))}
    if forces:
        out["force_rmse"] = (f_sq / max(f_n, 1)) ** 0.5
    if head is not None:
        out["log_sigma_rmse"] = (s_sq / max(s_n, 1)) ** 0.5
    return out


def _check_splits(splits: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name in ("train", "valid"):
        if name not in splits or len(splits[name]) == 0:
            raise ValueError(f"splits[{name!r}]: must be given and non-empty")
        idx = np.asarray(splits[name], dtype=np.int64)
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"splits[{name!r}]: indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
        out.append(np.sort(idx))
    train, valid = out
    test = np.asarray(splits.get("test", []), dtype=np.int64)
    for a, b, what in (
        (train, valid, "train and valid"),
        (train, test, "train and test"),
        (valid, test, "valid and test"),
    ):
        common = np.intersect1d(a, b)
        if len(common):
            raise ValueError(f"splits: {what} share {len(common)} configuration(s), e.g. index {common[0]}")
    return train, valid


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the legacy global RNG is what libraries draw from)
    torch.manual_seed(seed)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # batch order depends on (seed, epoch) only: a resumed run sees the batches it would have seen
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def _fingerprint(spec, arch: ModelConfig, tc, train_idx, valid_idx, dataset: Dataset) -> str:
    arrays = (train_idx, valid_idx, dataset.species, dataset.coordinates)
    # without a head, the spec as it was before heads existed (checkpoints of earlier runs resume)
    spec_fields = {k: v for k, v in asdict(spec).items() if k != "uncertainty" or v is not None}
    return bytes_digest(
        canonical_json([spec_fields, asdict(arch), tc.identity()]),
        *(np.ascontiguousarray(arr).tobytes() for arr in arrays),
    )


def _truncate_log(path: Path, last_epoch: int) -> None:
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if json.loads(ln)["epoch"] <= last_epoch:
                keep.append(ln)
        except (json.JSONDecodeError, KeyError):
            break  # a line cut short by a kill: everything after it is stale too
    _atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _format_entry(spec: MemberSpec, e: dict) -> str:
    s = (
        f"{spec.role} g{spec.generation} m{spec.member} epoch {e['epoch']:4d}  lr {e['lr']:.2e}  "
        f"E rmse train {e['train_energy_rmse']:.3f} valid {e['valid_energy_rmse']:.3f}"
    )
    if "valid_force_rmse" in e:
        s += f"  F rmse valid {e['valid_force_rmse']:.3f}  w_F {e['force_weight']:g}"
    return s + ("  *" if e["best"] else "")


def _atomic_save(obj, path: Path) -> None:
    # torch.save looked up at call time: tests replace it to simulate a full disk
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_text(path, text)


# Member, load_member and MODEL_FORMAT live in ekd.training.member; importing them from here keeps working
__all__ = ["MODEL_FORMAT", "ROLES", "Member", "MemberSpec", "StoppingPolicy", "load_member", "train_member"]
