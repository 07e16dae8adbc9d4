"""Writing ekd-aoti-1 packages: trace the energy and its gradient, torch.export, compile with
AOTInductor, register (:func:`export_module`, :func:`export_member`). See :mod:`ekd.deploy.aoti`."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from dataclasses import replace
from pathlib import Path

from ...store import atomic_write, write_new
from ..model_file import FORMAT, ModelFileError, ModelMetadata, _kind_of, check_metadata
from .package import _EXTRA, FORMAT_AOTI, MIN_ROWS, SO_METADATA_KEY, SUFFIX, check_registry, register


def _export_view(module):
    """The energy-and-gradient function of an (unscripted) ekd.scripted module as an nn.Module
    that torch.export can trace: the module's own stage code, minus its data-dependent input
    checks (callers validate; an unknown element gives NaN energies here, never a silent number)."""
    import torch

    from ...scripted import ScriptedHipnn, ScriptedToy

    class EnergyAndGradient(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            if isinstance(m, ScriptedHipnn):
                # the ATen formula of the sensitivities, not ekd::radial_sensitivity: the op's backward
                # returns no tensor for the gradients not asked for (mu, sigma), and AOTInductor's
                # calls of an op must get a tensor for every Tensor its schema returns; inductor fuses
                # the formula into its own loops (a shallow copy: the caller's module is left alone)
                m = copy.copy(m)
                m._sensitivities = m._sensitivities_aten
            self.m = m

        def _embed(self, species):
            m = self.m
            table, offsets = (m.z_index, m.e0) if isinstance(m, ScriptedToy) else (m.species_index, m.offsets)
            inside = (species >= 0) & (species < table.shape[0])
            idx = table[species.clamp(0, table.shape[0] - 1)]
            known = inside & (idx >= 0)
            idx = idx.clamp(min=0)
            e0 = torch.where(known, offsets[idx], torch.full_like(offsets[idx], float("nan")))
            if isinstance(m, ScriptedToy):
                return m.embedding[idx], e0
            one_hot = idx.unsqueeze(1) == torch.arange(m.n_species, device=idx.device).unsqueeze(0)
            return one_hot.to(offsets.dtype), e0

        def energies(self, species, first, second, r):
            m = self.m
            z, energy = self._embed(species)
            if isinstance(m, ScriptedToy):
                d, fc, basis = m._basis(r)
                for k in range(m.n_interactions):
                    z, e = m._interaction(k, z, first, second, d, fc, basis, -1)
                    energy = energy + e
            else:
                d = torch.linalg.vector_norm(r, dim=1)
                angular = m._angular(r, d)
                for k in range(m.n_interactions):
                    z, e = m._interaction(k, z, first, second, d, angular, -1)
                    energy = energy + e
            return energy

        def forward(self, species, first, second, r, weights):
            # ties the symbolic sizes of the inputs together (make_fx gives each its own symbol)
            torch._check(weights.shape[0] == species.shape[0])
            torch._check(first.shape[0] == r.shape[0])
            torch._check(second.shape[0] == r.shape[0])
            with torch.enable_grad():
                r = r.detach().requires_grad_(True)
                e = self.energies(species, first, second, r)
                (g,) = torch.autograd.grad((e * weights).sum(), r)
            return e.detach(), g

    if not isinstance(module, ScriptedHipnn | ScriptedToy) or isinstance(module, torch.jit.ScriptModule):
        raise TypeError(
            f"AOTInductor export takes an unscripted ekd.scripted model (ScriptedHipnn, ScriptedHipnnTorch, "
            f"ScriptedToy), got {type(module).__name__}"
        )
    return EnergyAndGradient(module).eval()


def _example(module, dtype, n_atoms: int, n_pairs: int, seed: int):
    """Inputs of n_atoms atoms of the model's elements, n_pairs random pairs with lengths inside
    the cutoff (numbers chosen by the caller to differ from every weight dimension)."""
    import torch

    from ...scripted import ScriptedToy

    table = module.z_index if isinstance(module, ScriptedToy) else module.species_index
    numbers = torch.nonzero(table >= 0).flatten()
    g = torch.Generator().manual_seed(seed)
    species = numbers[torch.randint(0, len(numbers), (n_atoms,), generator=g)]
    first = torch.randint(0, n_atoms, (n_pairs,), generator=g)
    second = (first + torch.randint(1, n_atoms, (n_pairs,), generator=g)) % n_atoms
    u = torch.randn(n_pairs, 3, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    length = 0.8 + (float(module.cutoff) - 0.9) * torch.rand(n_pairs, 1, generator=g, dtype=torch.float64)
    return species, first, second, (u * length).to(dtype), torch.ones(n_atoms, dtype=dtype)


@contextlib.contextmanager
def _quiet_compile():
    """torch 2.13's export and inductor warn about their own internals (FutureWarning: pytree
    LeafSpec, torch._prims_common.check); nothing a user of ekd can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@contextlib.contextmanager
def _no_duck_shapes():
    # make_fx's symbolic tracing otherwise gives equal example sizes one symbol, and would fold
    # e.g. the number of atoms into a weight dimension of the same size
    import torch.fx.experimental._config as fx_config

    old = fx_config.use_duck_shape
    fx_config.use_duck_shape = False
    try:
        yield
    finally:
        fx_config.use_duck_shape = old


def export_module(module, path: str | Path, metadata: ModelMetadata | dict) -> ModelMetadata:
    """Write ``module`` (an unscripted :mod:`ekd.scripted` model: ScriptedHipnn,
    ScriptedHipnnTorch or ScriptedToy) as an AOTInductor package to ``path`` (format
    ``ekd-aoti-1``), check it against the module on inputs of another size, and register its
    SHA-256 as compiled here. Takes minutes (inductor compiles C++). Returns the metadata."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    path = Path(path)
    if isinstance(metadata, dict):
        metadata = ModelMetadata(**{**metadata, "species": tuple(metadata["species"])})
    view = _export_view(module)
    dtype = module.offsets.dtype if hasattr(module, "offsets") else module.e0.dtype
    meta = replace(
        metadata,
        format=FORMAT,
        kind=_kind_of(module),
        torch_version=torch.__version__,
        cutoff=float(metadata.cutoff),
        dtype=str(dtype).removeprefix("torch."),
    )
    from ... import __version__

    meta = replace(meta, ekd_version=__version__)
    check_metadata(meta, str(path))
    if int(module.n_interactions) != meta.n_interactions or float(module.cutoff) != meta.cutoff:
        raise ModelFileError(
            f"{path}: metadata says cutoff {meta.cutoff}, n_interactions {meta.n_interactions} but the module has "
            f"{float(module.cutoff)}, {int(module.n_interactions)}; fix the metadata"
        )
    meta = replace(meta, format=FORMAT_AOTI)
    check_registry()
    text = meta.to_json()
    if meta.ops_library is not None:
        from ...ops import library as _ops  # noqa: F401

    # sizes unlike any weight dimension and unlike each other (see _no_duck_shapes)
    example = _example(module, dtype, 37, 211, seed=0)
    with _quiet_compile():
        with _no_duck_shapes(), torch.no_grad():
            graph = make_fx(view, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
        atoms = torch.export.Dim("n_atoms", min=MIN_ROWS)
        pairs = torch.export.Dim("n_pairs", min=MIN_ROWS)
        program = torch.export.export(
            graph, example, dynamic_shapes=({0: atoms}, {0: pairs}, {0: pairs}, {0: pairs}, {0: atoms})
        )
        buf = io.BytesIO()
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=buf, inductor_configs={"aot_inductor.metadata": {SO_METADATA_KEY: text}}
            )
        except Exception as e:  # inductor raises its own error classes (compiler missing, codegen)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(
                f"{path}: AOTInductor could not compile the model ({type(e).__name__}: {first}); it needs a "
                "working C++ compiler (g++, or $CXX) and the torch headers; nothing was written. The TorchScript "
                "export (ekd export, the default format) needs neither"
            ) from e
    data = _with_metadata(buf.getvalue(), text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.check{SUFFIX}")
    try:
        write_new(tmp, data)
        _check_compiled(view, tmp, module, dtype, path)
        atomic_write(path, data)
    finally:
        tmp.unlink(missing_ok=True)
    register(path)
    return meta


def _with_metadata(package: bytes, text: str) -> bytes:
    """The package with ``extra/metadata.json`` added (written through torch's archive writer,
    which keeps the entries' alignment)."""
    import torch

    reader = torch._C.PyTorchFileReader(io.BytesIO(package))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    own = {"version", ".data/version", ".data/serialization_id"}
    for name in reader.get_all_records():
        if name in own:
            continue
        record = reader.get_record(name)
        writer.write_record(name, record, len(record))
    payload = text.encode()
    writer.write_record(_EXTRA, payload, len(payload))
    writer.write_end_of_file()
    del writer
    return out.getvalue()


def _check_compiled(view, package: Path, module, dtype, path: Path) -> None:
    """Refuse to write a package whose numbers differ from the module's on inputs of a size it
    was not traced with (a shape the tracer wrongly fixed would show here)."""
    import torch

    runner = torch._inductor.aoti_load_package(str(package))
    inputs = _example(module, dtype, 23, 97, seed=1)
    want = view(*inputs)
    have = runner(*inputs)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for name, a, b in zip(("energies", "gradient"), have, want, strict=True):
        scale = float(b.abs().max()) + 1.0
        if a.shape != b.shape or float((a - b).abs().max()) > tol * scale:
            raise ModelFileError(
                f"{path}: the compiled package's {name} differ from the model's on a test input "
                f"(shape {tuple(a.shape)} vs {tuple(b.shape)}); not written. Please report this (torch "
                f"{torch.__version__})"
            )


def export_member(member_dir: str | Path, path: str | Path, dtype: str = "float32", envsum: str = "auto"):
    """``ekd export --format aoti``: a trained member -> an AOTInductor package (the model of
    :func:`ekd.deploy.export.export_member`, same metadata apart from the format). Returns the metadata."""
    import torch

    from ...scripted import build_module, metadata

    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    module = build_module(Path(member_dir), dtype=dtypes[dtype], envsum=envsum)
    return export_module(module, path, metadata(Path(member_dir), module))
