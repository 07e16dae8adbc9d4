"""Reading and trusting ekd-aoti-1 packages: entry check, trust registry, metadata, loading
(:class:`AOTIModel`). The format and the trust rule: :mod:`ekd.deploy.aoti`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from ...store import file_sha256, open_in_place
from ..archive import Archive, read_archive
from ..model_file import (
    FORMAT,
    KINDS,
    METADATA_FILE,
    OPT_IN,
    ModelFileError,
    ModelMetadata,
    UntrustedModelError,
)
from ..model_metadata import FORMAT_AOTI

SUFFIX = ".pt2"
#: AOTInductor metadata key holding the metadata text compiled into the library
SO_METADATA_KEY = "ekd_metadata_json"
#: environment variable naming the trust registry file
REGISTRY_ENV = "EKD_TRUSTED_PACKAGES"
#: smallest number of atoms and of pairs the compiled function takes (callers pad)
MIN_ROWS = 2

_PLAIN = {"archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id"}
_MODEL_ENTRY = re.compile(
    r"data/aotinductor/model/[a-z0-9]+\.(wrapper\.cpp|kernel\.cpp|wrapper\.json|wrapper_metadata\.json|kernel_metadata\.json"
    r"|wrapper\.so)"
)
_EXTRA = "extra/" + METADATA_FILE


# ---------------------------------------------------------------------------------------------
# the registry of packages compiled here


def registry_path() -> Path:
    """The trust registry file (see the module docstring)."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ekd" / "trusted-packages"


def sha256(path: str | Path) -> str:
    """The registry's key of a package: its full SHA-256."""
    return file_sha256(path)


def _open_registry() -> int:
    reg = registry_path()
    try:
        reg.parent.mkdir(parents=True, exist_ok=True)
        return open_in_place(reg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "trust registry")
    except OSError as e:
        named = f"${REGISTRY_ENV} names {reg}, which" if os.environ.get(REGISTRY_ENV) else f"the trust registry {reg}"
        raise ModelFileError(
            f"{named} cannot be written ({e.strerror or e}); every package ekd compiles is registered there, and "
            f"an unregistered package is refused when loaded: set ${REGISTRY_ENV} to a writable file and export again"
        ) from None


def check_registry() -> None:
    """Refuse to start a compile (minutes) whose package could not be registered."""
    os.close(_open_registry())


def register(path: str | Path) -> str:
    """Record ``path``'s SHA-256 in the registry (one appended line: concurrent exporters do not
    lose each other's lines). Returns the hash."""
    digest = sha256(path)
    line = f"{digest}  {Path(path).resolve()}\n".encode()
    fd = _open_registry()
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return digest


def is_registered(digest: str) -> bool:
    reg = registry_path()
    if not reg.is_file():
        return False
    with open(reg, encoding="utf-8", errors="replace") as f:
        return any(line.split()[:1] == [digest] for line in f)


# ---------------------------------------------------------------------------------------------
# reading packages


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a torch ``.pt2`` archive (by content: an ``archive_format`` entry
    reading ``pt2``), whatever its name. A file that breaks the archive rule is not (the TorchScript
    loader then refuses it with the reason); the loader chosen reads and checks the file again."""
    try:
        z = read_archive(path)
    except (ModelFileError, OSError):
        return False
    entry = z.find_below_top("archive_format")
    return entry is not None and z.read(entry.name).strip() == b"pt2"


def _entries(z: Archive, source: str) -> dict[str, str]:
    names = z.names()  # unique, even ignoring case (the archive rule)
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        raise UntrustedModelError(f"{source}: entries are not in one top folder; not a package written by ekd")
    return {n.split("/", 1)[1]: n for n in names}


def check_package(path: str | Path | Archive, trust_code: bool = False) -> str:
    """The trust check of a ``.pt2`` (module docstring): a path (read and checked against the
    strict archive rule here) or an :class:`~ekd.deploy.archive.Archive` already read; nothing of
    it is loaded. Returns the text of its metadata.json. Raises :class:`UntrustedModelError` /
    :class:`ModelFileError`."""
    z = path if isinstance(path, Archive) else read_archive(path)
    source = z.source
    entries = _entries(z, source)
    if _EXTRA not in entries:
        raise ModelFileError(
            f"{source}: an AOTInductor package without {_EXTRA}: not written by `ekd export --format aoti`; "
            "export the model with ekd"
        )
    odd = [
        entries[n]
        for n in sorted(entries)
        if n not in _PLAIN and n != _EXTRA and not _MODEL_ENTRY.fullmatch(n) and not n.endswith("/")
    ]
    libraries = [n for n in entries if n.endswith(".wrapper.so")]
    if not trust_code and (odd or len(libraries) != 1):
        what = f"unexpected entry {odd[0]!r}" if odd else f"{len(libraries)} compiled libraries (ekd writes 1)"
        raise UntrustedModelError(
            f"{source}: {what}; not a package as `ekd export --format aoti` writes it. "
            f"If you trust this file (loading it runs its compiled code), load it with {OPT_IN}"
        )
    text = z.read(entries[_EXTRA])
    if not trust_code:
        # the hash of the bytes read, which are the bytes load_package's private copy holds
        digest = hashlib.sha256(z.data).hexdigest()
        if not is_registered(digest):
            raise UntrustedModelError(
                f"{source}: this AOTInductor package (sha256 {digest[:16]}...) was not compiled by ekd on this "
                f"machine (it is not in {registry_path()}), and loading it runs its compiled code. Re-export it "
                f"here (`ekd export MEMBER --format aoti -o {Path(source).name}`), or, if you trust the file, "
                f"load it with {OPT_IN}"
            )
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{source}: metadata.json is not UTF-8 text ({e}); re-export the model") from e


def parse_metadata(text: str, source: str) -> ModelMetadata:
    """metadata.json of a package -> checked :class:`ModelMetadata` (format ekd-aoti-1)."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ModelFileError(f"{source}: metadata.json is not valid JSON ({e}); re-export the model") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT_AOTI:
        got = d.get("format") if isinstance(d, dict) else None
        raise ModelFileError(
            f"{source}: an AOTInductor package whose metadata format is {got!r}, not {FORMAT_AOTI!r}; "
            "re-export the model with this ekd (ekd export --format aoti)"
        )
    # the fields and checks are those of ekd-model-2
    meta = ModelMetadata.from_json(json.dumps({**d, "format": FORMAT}), source)
    if meta.kind not in KINDS:
        raise ModelFileError(f"{source}: kind {meta.kind!r} in an AOTInductor package (ekd exports {list(KINDS)})")
    return replace(meta, format=FORMAT_AOTI)


def read_metadata(path: str | Path) -> ModelMetadata:
    """The checked metadata of a package without loading it (nothing of it runs)."""
    return parse_metadata(check_package(path, trust_code=True), str(path))


class AOTIModel:
    """A loaded package: :meth:`energy_and_gradient`. Attributes ``metadata``, ``path``."""

    def __init__(self, runner, metadata: ModelMetadata, path: Path):
        import torch

        self._runner = runner
        self.metadata = metadata
        self.path = path
        self.dtype = getattr(torch, metadata.dtype)
        self._pad_species = metadata.atomic_numbers[0]
        self._far = 2.0 * metadata.cutoff + 1.0

    def energy_and_gradient(self, species, pair_first, pair_second, r_ij, atom_weights=None):
        """Per-atom energies [N] and g = d(sum_i w_i e_i)/d r_ij [P, 3] (model dtype; kcal/mol,
        Angstrom). ``atom_weights`` [N]: default all ones. Any N >= 1, P >= 0 (padded here)."""
        import torch

        n, p = int(species.shape[0]), int(pair_first.shape[0])
        if n < 1:
            raise ValueError(f"{self.path}: at least one atom is needed")
        r = r_ij.detach().to(self.dtype).contiguous()
        w = torch.ones(n, dtype=self.dtype) if atom_weights is None else atom_weights.to(self.dtype)
        species = species.to(torch.long)
        first, second = pair_first.to(torch.long), pair_second.to(torch.long)
        if n < MIN_ROWS:
            # an extra atom of a known element with weight 0 (and no pairs): its energy is dropped
            extra = MIN_ROWS - n
            species = torch.cat([species, torch.full((extra,), self._pad_species, dtype=torch.long)])
            w = torch.cat([w, torch.zeros(extra, dtype=self.dtype)])
        if p < MIN_ROWS:
            # pairs beyond the cutoff contribute nothing (the format's rule)
            extra = MIN_ROWS - p
            zeros = torch.zeros(extra, dtype=torch.long)
            far = torch.zeros(extra, 3, dtype=self.dtype)
            far[:, 0] = self._far
            first, second, r = torch.cat([first, zeros]), torch.cat([second, zeros]), torch.cat([r, far])
        e, g = self._runner(species, first, second, r, w.contiguous())
        return e[:n], g[:p]


def load_package(path: str | Path, trust_code: bool = False) -> tuple[AOTIModel, ModelMetadata]:
    """Load a ``.pt2`` written by :func:`export_module`: ``(AOTIModel, metadata)``. Runs nothing
    of the file before the trust check; refuses a package whose metadata.json differs from the
    copy compiled into it.

    The file is read once. torch loads packages from a path only, so the checked bytes (whose
    hash is the one checked against the registry) go to a private copy, in a fresh directory
    only this user can enter, which is loaded and then removed: a file replaced after the check
    is not what runs."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found; export one with `ekd export --format aoti`")
    checked = read_archive(path)
    text = check_package(checked, trust_code=trust_code)
    meta = parse_metadata(text, str(path))
    if meta.ops_library is not None:
        from ...ops import library as _ops  # noqa: F401  (the compiled code calls torch.ops.ekd through the dispatcher)
    with tempfile.TemporaryDirectory(prefix="ekd-package-") as private:  # mode 0700
        copy = Path(private) / "model.pt2"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(checked.data)
        try:
            # the loader unpacks the package into a directory of its own: the copy is not needed after
            runner = torch._inductor.aoti_load_package(str(copy))
        except Exception as e:  # torch raises RuntimeError / AssertionError / KeyError here
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ModelFileError(
                f"{path}: AOTInductor cannot load it ({reason}); the file is truncated, corrupt or compiled for "
                "another torch or CPU: re-export it here (ekd export --format aoti)"
            ) from e
    compiled = runner.loader.get_metadata().get(SO_METADATA_KEY)
    if compiled != text:
        raise ModelFileError(
            f"{path}: metadata.json was edited or does not belong to this compiled model (it differs from the "
            "copy compiled into it); re-export the model (ekd export --format aoti)"
        )
    return AOTIModel(runner, meta, path), meta
