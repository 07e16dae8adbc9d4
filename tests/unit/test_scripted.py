"""ekd.scripted: a trained HIPNN member as a TorchScript module with the deployed-model interface.

The scripted module re-implements hippynn's math in its own modules, so every test here compares
it with hippynn itself (float64): the whole hippynn graph (``Member.predict``: hippynn's own pair
finder) on the GFN2-xTB fixture molecules, and hippynn's network + energy modules fed the same
periodic pair list. Weights are random (then perturbed, so that no two sensitivity layers share
their initial mu/sigma and no scale starts at a special value), except in the trained-member test.
"""

import dataclasses

import numpy as np
import pytest
import torch

from ekd import scripted
from ekd.config import ModelConfig, default_config
from ekd.ops.library import neighbor_list, pair_vectors
from ekd.training.models import build_model
from ekd.training.train import Member, MemberSpec, load_member, train_member

# small architectures; the hard cutoff (2.6 A) is shorter than the longest H...H distances of the
# fixture molecules, so the cutoff function and pair exclusion are exercised too
ARCH = dict(n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_min=0.8, cutoff_soft_max=2.2, cutoff_hard=2.6)
CASES = [(lm, ni) for lm in (0, 1, 2) for ni in (1, 2)]
OPS = scripted.available_ops()
ENVSUMS = [
    "torch",
    pytest.param("ekd", marks=pytest.mark.skipif("envsum" not in OPS, reason="no torch.ops.ekd.envsum")),
    pytest.param("ekd-tensor", marks=pytest.mark.skipif("tensor_envsum" not in OPS, reason="no tensor_envsum")),
]
# float64 agreement with hippynn: observed <= 1e-15 relative (different summation order only)
RTOL = 1e-10


def _perturbed_model(l_max: int, n_interactions: int, species, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(l_max=l_max, n_interactions=n_interactions, **ARCH), species)
    net = model.modules().to(torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p)).add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=CASES, ids=[f"l{lm}-n{ni}" for lm, ni in CASES])
def member(request, xtb_dataset, tmp_path_factory):
    l_max, n_int = request.param
    model = _perturbed_model(l_max, n_int, xtb_dataset.elements, seed=10 * l_max + n_int)
    return Member(model, tmp_path_factory.mktemp("member"), {"spec": {"role": "teacher"}})


@pytest.fixture(scope="module")
def module(member):
    """The member scripted with the default choices (float64, envsum "auto")."""
    return scripted.script_member(member)


def _flat_pairs(dataset, cutoff: float):
    """Real atoms of every configuration of ``dataset`` as one pair-list system (no cell)."""
    species = torch.as_tensor(dataset.species)
    real = species > 0
    mol = torch.arange(len(species)).unsqueeze(1).expand_as(species)[real]
    pos = torch.as_tensor(dataset.coordinates, dtype=torch.float64)[real]
    n_mol = len(species)
    first, second, _ = neighbor_list(
        pos, cutoff, torch.zeros(n_mol, 3, 3, dtype=torch.float64), torch.zeros(n_mol, 3, dtype=torch.bool), mol
    )
    return species[real], mol, pos, first, second


def _energy_forces(module, species, first, second, r_ij, mol, n_mol):
    """Per-molecule energies [n_mol] and atom forces [N, 3] from dE/dr_ij (F_i += g, F_j -= g)."""
    r_ij = r_ij.detach().clone().requires_grad_(True)
    e_atom = module(species, first, second, r_ij)
    energy = torch.zeros(n_mol, dtype=e_atom.dtype).index_add(0, mol, e_atom)
    (g,) = torch.autograd.grad(energy.sum(), r_ij)
    forces = torch.zeros(len(species), 3, dtype=g.dtype).index_add(0, first, g).index_add(0, second, -g)
    return energy.detach(), forces


def _assert_close(actual, expected, what: str, rtol: float = RTOL):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"{what}: max |error| {err:.3e} (relative {err / scale:.3e})"


# ---------------------------------------------------------------------------------------------
# equality with hippynn


@pytest.mark.parametrize("envsum", ENVSUMS)
def test_matches_hippynn_on_xtb_molecules(member, envsum, xtb_dataset):
    module = scripted.script_member(member, envsum=envsum)
    assert module.envsum_impl == envsum and isinstance(module, torch.jit.ScriptModule)
    e_ref, f_ref = member.predict(xtb_dataset, forces=True)

    species, mol, pos, first, second = _flat_pairs(xtb_dataset, member.model_config.cutoff_hard)
    e, f = _energy_forces(module, species, first, second, pos[second] - pos[first], mol, len(xtb_dataset))
    _assert_close(e, e_ref, "energies")
    _assert_close(f, f_ref[xtb_dataset.species > 0], "forces")
    assert float(f.abs().max()) > 0.1  # not trivially zero


def _periodic_system(dataset, box: float, n_mol: int, seed: int = 0):
    """``n_mol`` fixture molecules shifted at random into a cubic box and wrapped: bonds cross faces."""
    rng = np.random.default_rng(seed)
    zs, xyz = [], []
    for k in rng.choice(len(dataset), size=n_mol, replace=False):
        real = dataset.species[k] > 0
        zs.append(dataset.species[k][real])
        xyz.append(dataset.coordinates[k][real] + rng.uniform(0, box, size=3))
    cell = torch.eye(3, dtype=torch.float64) * box
    pos = torch.as_tensor(np.concatenate(xyz) % box, dtype=torch.float64)
    return torch.as_tensor(np.concatenate(zs)), pos, cell


def _hippynn_atom_energies(model, species, first, second, r_ij):
    """hippynn's network and energy head (the trained torch modules) on a given pair list."""
    idx = torch.as_tensor([model.species.index(int(z)) for z in species])
    onehot = torch.nn.functional.one_hot(idx, len(model.species)).to(torch.bool)
    dist = r_ij.norm(dim=1)
    net = model.network.torch_module
    args = (onehot, first, second, dist) + ((r_ij,) if model.config.l_max > 0 else ())
    features = net(*args)
    mol_index = torch.zeros(len(species), dtype=torch.long)
    _, atom_energies, *_ = model.henergy.torch_module(features, mol_index, 1)
    return atom_energies.reshape(-1)


@pytest.mark.parametrize(("box", "n_mol"), [(6.0, 4), (2.4, 1)], ids=["box6", "box2.4-self-images"])
def test_matches_hippynn_in_periodic_box(member, module, box, n_mol, xtb_dataset):
    """Same pair list (ekd's neighbor list with shifts) into hippynn's modules and the scripted
    module; the small box makes atoms pair with their own periodic images."""
    species, pos, cell = _periodic_system(xtb_dataset, box, n_mol)
    cutoff = member.model_config.cutoff_hard
    first, second, shifts = neighbor_list(pos, cutoff, cell)
    if box < cutoff:
        assert bool((first == second).any())
    pos = pos.clone().requires_grad_(True)
    r_ij = pair_vectors(pos, first, second, shifts, cell)

    e_ref = _hippynn_atom_energies(member.model, species, first, second, r_ij)
    (f_ref,) = torch.autograd.grad(-e_ref.sum(), pos)
    e_atoms = module(species, first, second, r_ij.detach())
    mol = torch.zeros(len(species), dtype=torch.long)
    e, f = _energy_forces(module, species, first, second, r_ij, mol, 1)
    _assert_close(e_atoms.detach(), e_ref.detach(), "per-atom energies")
    _assert_close(e, e_ref.sum().detach()[None], "energy")
    _assert_close(f, f_ref, "forces")


# ---------------------------------------------------------------------------------------------
# the interface


def test_save_load_round_trip_is_identical(member, module, xtb_dataset, tmp_path):
    path = tmp_path / "model.pt"
    with scripted._quiet_jit():
        torch.jit.save(module, str(path))
        loaded = torch.jit.load(str(path))
    assert loaded.envsum_impl == module.envsum_impl and loaded.cutoff == member.model_config.cutoff_hard
    species, mol, pos, first, second = _flat_pairs(xtb_dataset.subset(np.arange(0, 120, 6)), 2.6)
    r_ij = pos[second] - pos[first]
    # TorchScript's profiling executor optimises a method after its first calls (its own autodiff
    # then changes gradients by ~1e-17), and every HIPNN model shares one scripted class, so its
    # executor has seen the shapes of earlier tests' models: compare the results to ~1 ulp, and
    # the weights and hyper-parameters (data.pkl) bit for bit
    e2, f2 = _energy_forces(loaded, species, first, second, r_ij, mol, 20)
    e1, f1 = _energy_forces(module, species, first, second, r_ij, mol, 20)
    torch.testing.assert_close((e2, f2), (e1, f1), rtol=1e-14, atol=1e-15)
    for name in ("int_weights", "mu", "sigma", "selfint_w", "res_w", "atom_w", "readout_w", "feature_widths"):
        a, b = getattr(module, name), getattr(loaded, name)
        assert len(a) == len(b)
        assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b, strict=True))
    assert torch.equal(module.offsets, loaded.offsets) and loaded.l_max == module.l_max


def test_pairs_beyond_cutoff_contribute_nothing(member, module, xtb_dataset):
    species, mol, pos, first, second = _flat_pairs(xtb_dataset.subset(np.arange(0, 120, 5)), 100.0)
    r_ij = pos[second] - pos[first]
    inside = r_ij.norm(dim=1) < member.model_config.cutoff_hard
    assert not bool(inside.all())  # some pairs of the list lie beyond the cutoff
    e_all, f_all = _energy_forces(module, species, first, second, r_ij, mol, 24)
    e_in, f_in = _energy_forces(module, species, first[inside], second[inside], r_ij[inside], mol, 24)
    torch.testing.assert_close(e_all, e_in, rtol=1e-14, atol=0)
    torch.testing.assert_close(f_all, f_in, rtol=1e-14, atol=1e-14)


def test_float32_module_agrees_to_single_precision(member, xtb_dataset):
    module = scripted.script_member(member, dtype=torch.float32)
    assert module.offsets.dtype == torch.float32
    sub = xtb_dataset.subset(np.arange(0, 120, 5))
    species, mol, pos, first, second = _flat_pairs(sub, member.model_config.cutoff_hard)
    e, f = _energy_forces(module, species, first, second, (pos[second] - pos[first]).float(), mol, 24)
    e_ref, f_ref = member.predict(sub)
    assert e.dtype == torch.float32
    _assert_close(e, e_ref, "energies (float32)", rtol=1e-5)
    _assert_close(f, f_ref[sub.species > 0], "forces (float32)", rtol=1e-4)


def test_bad_inputs_give_clear_errors(member, module):
    first, second = torch.tensor([0, 1]), torch.tensor([1, 0])
    r_ij = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    assert module(torch.tensor([1, 8]), first, second, r_ij).shape == (2,)
    for species in ([1, 9], [1, 0], [1, 200], [-3, 1]):  # F: not a model element; 0/negative: no element
        with pytest.raises(Exception, match=r"not among this model's species \(1, 6, 7, 8\)"):
            module(torch.tensor(species), first, second, r_ij)
    with pytest.raises(Exception, match="r_ij: expected"):
        module(torch.tensor([1, 8]), first, second, r_ij[:, :2])
    with pytest.raises(Exception, match=r"atom indices must lie in \[0, 2\)"):
        module(torch.tensor([1, 8]), first, second + 1, r_ij)
    with pytest.raises(Exception, match="same length"):
        module(torch.tensor([1, 8]), first, second[:1], r_ij)


def test_no_pairs_gives_offsets_plus_self_terms(member, module):
    empty = torch.zeros(0, dtype=torch.long)
    e = module(torch.tensor([1, 6, 1]), empty, empty, torch.zeros(0, 3, dtype=torch.float64))
    assert e.shape == (3,) and bool(torch.isfinite(e).all())
    # two isolated H atoms: the same energy up to the GEMM kernel's row-dependent rounding
    assert abs(float(e[0] - e[2])) <= 1e-12 * abs(float(e[0])), (float(e[0]), float(e[2]))


# ---------------------------------------------------------------------------------------------
# pieces


@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "shuffled"])
def test_torch_envsum_matches_hippynn_and_the_op(shuffle):
    from hippynn.custom_kernels.env_pytorch import envsum

    g = torch.Generator().manual_seed(0)
    sense = torch.rand(60, 6, generator=g, dtype=torch.float64, requires_grad=True)
    feat = torch.rand(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # atom 8 has no pairs; duplicated pairs and self pairs (periodic images) are allowed
    first = torch.randint(0, 8, (60,), generator=g).sort().values
    second = torch.randint(0, 9, (60,), generator=g)
    if shuffle:
        perm = torch.randperm(60, generator=g)
        first, second = first[perm], second[perm]
    ref = envsum(sense, feat, first, second)
    impls = [scripted.EnvSumTorch()] + ([torch.ops.ekd.envsum] if "envsum" in OPS else [])
    weights = torch.rand(ref.shape, generator=g, dtype=torch.float64)
    grads_ref = torch.autograd.grad((ref * weights).sum(), (sense, feat))
    for impl in impls:
        out = impl(sense, feat, first, second)
        torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
        grads = torch.autograd.grad((out * weights).sum(), (sense, feat))
        torch.testing.assert_close(grads, grads_ref, rtol=1e-14, atol=1e-14)
    empty = torch.zeros(0, dtype=torch.long)
    assert torch.equal(scripted.EnvSumTorch()(sense[:0], feat, empty, empty), torch.zeros(9, 6, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda s, x: scripted.EnvSumTorch()(s, x, first[:12], second[:12]), (sense[:12], feat)
    )


@pytest.mark.skipif("tensor_envsum" not in OPS, reason="no torch.ops.ekd.tensor_envsum")
def test_weights_first_contraction_matches_hippynn_order():
    g = torch.Generator().manual_seed(1)
    n_pairs, n_atoms, c, n, f, o = 40, 7, 9, 5, 4, 3
    angular = torch.rand(n_pairs, c, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.rand(n_pairs, n, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.rand(n_atoms, f, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(n * f, o, generator=g, dtype=torch.float64)
    first, second = torch.randint(0, n_atoms, (2, n_pairs), generator=g)
    inputs = (angular, s, z)
    ref = scripted.EnvSumTorchContraction()(angular, s, z, w, first, second)
    out = scripted.TensorEnvSumOp()(angular, s, z, w, first, second)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    v = torch.rand(ref.shape, generator=g, dtype=torch.float64)
    grads_ref = torch.autograd.grad((ref * v).sum(), inputs)
    torch.testing.assert_close(torch.autograd.grad((out * v).sum(), inputs), grads_ref, rtol=1e-13, atol=1e-13)


def test_envsum_choice(member):
    assert scripted.choose_envsum(0, "torch") == "torch"
    auto = scripted.choose_envsum(member.model_config.l_max)
    assert auto in ("ekd", "ekd-tensor", "torch")
    if not OPS:
        assert auto == "torch"
        with pytest.raises(RuntimeError, match="not available"):
            scripted.script_member(member, envsum="ekd")
    with pytest.raises(ValueError, match="envsum: expected"):
        scripted.script_member(member, envsum="numba")


def test_metadata_fits_the_export_format(member, module, xtb_dataset, tmp_path):
    meta = scripted.metadata(member, module)
    assert meta["cutoff"] == member.model_config.cutoff_hard
    assert meta["n_interactions"] == member.model_config.n_interactions
    assert meta["species"] == ["H", "C", "N", "O"] and meta["role"] == "teacher"
    assert meta["dtype"] == "float64" and (meta["energy_unit"], meta["length_unit"]) == ("kcal/mol", "angstrom")
    assert module.envsum_impl == scripted.choose_envsum(member.model_config.l_max)
    assert meta["ops_library"] == (None if module.envsum_impl == "torch" else "libekd_ops.so")
    assert meta["description"].endswith(f"envsum={module.envsum_impl}")
    assert scripted.metadata(member, scripted.script_member(member, torch.float32, "torch"))["ops_library"] is None

    # the deployment developer's writer and reader accept it, and the loaded model computes the same
    from ekd.deploy.model_file import load_model, save_model

    save_model(module, tmp_path / "model.pt", meta)
    loaded, stored = load_model(tmp_path / "model.pt")
    assert stored.species == ("H", "C", "N", "O") and stored.cutoff == meta["cutoff"]
    species, mol, pos, first, second = _flat_pairs(xtb_dataset.subset(np.arange(0, 120, 6)), 2.6)
    r_ij = pos[second] - pos[first]
    torch.testing.assert_close(loaded(species, first, second, r_ij), module(species, first, second, r_ij))


def test_trained_member_from_its_directory(xtb_dataset, xtb_splits, tmp_path):
    """Two epochs of ekd's training routine, then script_member(directory) against Member.predict."""
    base = default_config()
    arch = ModelConfig(l_max=2, n_interactions=2, **ARCH)
    train = dataclasses.replace(base.train, max_epochs=2, batch_size=32, lr=5e-3, kernels="pytorch")
    cfg = dataclasses.replace(base, model=arch, train=train)
    train_member(MemberSpec("teacher", 0, 0, seed=1), cfg, xtb_dataset, xtb_splits, tmp_path / "t")

    module = scripted.script_member(tmp_path / "t")
    member = load_member(tmp_path / "t")
    e_ref, f_ref = member.predict(xtb_dataset)
    species, mol, pos, first, second = _flat_pairs(xtb_dataset, arch.cutoff_hard)
    e, f = _energy_forces(module, species, first, second, pos[second] - pos[first], mol, len(xtb_dataset))
    _assert_close(e, e_ref, "energies")
    _assert_close(f, f_ref[xtb_dataset.species > 0], "forces")
    assert scripted.metadata(tmp_path / "t", module)["role"] == "teacher"


def _all_pairs_cluster(numbers, g: torch.Generator):
    """Atoms of ``numbers`` at random in a 3 A cube with every pair (a FULL list): species, first,
    second, r_ij (float64)."""
    n = len(numbers)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * 3.0
    i, j = torch.triu_indices(n, n, 1)
    first, second = torch.cat([i, j]), torch.cat([j, i])
    return torch.tensor(numbers), first, second, pos[second] - pos[first]


def _stage_module(kind: str, n_interactions: int):
    """An unscripted model of ``kind`` (toy or an envsum of HIPNN) for the stage-method tests."""
    if kind == "toy":
        return scripted.ScriptedToy([1, 6], 3.0, n_interactions, 5, 4)
    return scripted.example_hipnn(kind, 2, n_interactions, 4)


@pytest.mark.parametrize("kind", ["toy", *ENVSUMS])
def test_interaction_n_out_gives_the_first_rows(kind):
    """interaction(k, ..., n_out=m) equals the first m rows of interaction(k, ..., -1) (what LAMMPS's
    halo mode asks for: the owned rows, pair sums reading every row); -1 is forward's path."""
    g = torch.Generator().manual_seed(1)
    species, first, second, r = _all_pairs_cluster([1, 6, 1, 1, 6, 1, 6, 1, 6], g)
    n = len(species)
    module = _stage_module(kind, n_interactions=2)
    if kind != "toy":
        assert type(module) is (scripted.ScriptedHipnnTorch if kind == "torch" else scripted.ScriptedHipnn)
    module = torch.jit.script(module)
    z, _ = module.embed(species)
    for k in range(module.n_interactions):
        # features that differ per row, so a wrong row would show
        z = z + 0.1 * torch.randn(z.shape, generator=g, dtype=z.dtype)
        z_all, e_all = module.interaction(k, z, first, second, r)
        assert z_all.shape == (n, module.feature_widths[k + 1]) and e_all.shape == (n,)
        for m in (0, 4, n):
            z_m, e_m = module.interaction(k, z, first, second, r, m)
            assert z_m.shape == (m, module.feature_widths[k + 1]) and e_m.shape == (m,)
            np.testing.assert_allclose(z_m, z_all[:m], rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(e_m, e_all[:m], rtol=1e-13, atol=1e-14)
        z = z_all
    for bad in (-2, n + 1):
        with pytest.raises(Exception, match="n_out must be -1"):
            module.interaction(0, module.embed(species)[0], first, second, r, bad)


def _layer_by_layer_with_shared_geometry(module, species, first, second, r):
    """What the LAMMPS plugin's mode halo does on one rank (no exchange): geometry(r) once, the
    blocks through interaction_geo on detached copies of it, one backward pass per block (in
    reverse, feature gradients handed down), then one backward pass through the geometry."""
    r = r.detach().requires_grad_(True)
    geo = module.geometry(r)
    leaves = [g.detach().requires_grad_(True) for g in geo]
    z, energy = module.embed(species)
    z_in, outs = [], []
    for k in range(module.n_interactions):
        z_in.append(z.detach().requires_grad_(k > 0))
        z, e = module.interaction_geo(k, z_in[-1], first, second, leaves)
        outs.append((z, e))
        energy = energy + e.detach()
    geo_grad = [torch.zeros_like(g) for g in leaves]
    g_next = None
    for k in reversed(range(module.n_interactions)):
        z, e = outs[k]
        outputs, grads = ([e.sum()], [torch.ones(())]) if e.requires_grad else ([], [])
        if g_next is not None:
            outputs.append(z)
            grads.append(g_next)
        inputs = leaves + ([z_in[k]] if k > 0 else [])
        gs = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
        for i, g in enumerate(gs[: len(leaves)]):
            if g is not None:
                geo_grad[i] += g
        g_next = gs[len(leaves)] if k > 0 else None
    (g_r,) = torch.autograd.grad(geo, [r], geo_grad)
    return energy, g_r


@pytest.mark.parametrize("kind", ["toy", *ENVSUMS])
def test_shared_geometry_stages_give_forward_and_its_gradient(kind):
    """geometry(r_ij) + interaction_geo per block (LAMMPS's mode halo: the pair geometry computed
    and differentiated once, not once per block) give forward's energies and dE/dr_ij;
    interaction_geo equals interaction; a geometry of other pairs is refused by name."""
    g = torch.Generator().manual_seed(2)
    species, first, second, r = _all_pairs_cluster([1, 6, 1, 1, 6, 1, 6, 1, 6, 6], g)
    module = torch.jit.script(_stage_module(kind, n_interactions=3))
    r_leaf = r.clone().requires_grad_(True)
    e_ref = module(species, first, second, r_leaf)
    (g_ref,) = torch.autograd.grad(e_ref.sum(), [r_leaf])
    energy, g_r = _layer_by_layer_with_shared_geometry(module, species, first, second, r)
    np.testing.assert_allclose(energy, e_ref.detach(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_r, g_ref, rtol=0, atol=1e-12 * float(g_ref.abs().max()))
    z, _ = module.embed(species)
    geo = module.geometry(r)
    for m in (-1, 4):
        a, b = module.interaction(0, z, first, second, r, m), module.interaction_geo(0, z, first, second, geo, m)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(Exception, match=r"geometry\[0\]: expected shape \[5\]"):
        module.interaction_geo(0, z, first[:5], second[:5], geo)
    with pytest.raises(Exception, match="expected the .* tensors of geometry"):
        module.interaction_geo(0, z, first, second, geo[:1])
    with pytest.raises(Exception, match=r"r_ij: expected pair vectors \[P, 3\]"):
        module.geometry(r[:, :2])


def test_files_of_the_previous_code_load_without_the_opt_in(tmp_path):
    """A file written by the ekd before geometry() existed (its code is kept as the accepted
    variant model_code/hipnn@before-geometry) loads without trust_code and has no geometry();
    the same file with one byte of its code changed is refused."""
    import zipfile
    from pathlib import Path

    from ekd.deploy.model_file import UntrustedModelError, load_model

    old = Path(__file__).parents[1] / "integration" / "data" / "before_geometry_hipnn.pt"
    module, meta = load_model(old)
    assert meta.kind == "hipnn" and not hasattr(module, "geometry") and hasattr(module, "interaction")
    edited = tmp_path / "edited.pt"
    with zipfile.ZipFile(old) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("code/__torch__/ekd/scripted.py"):
                data = data.replace(b"0.5", b"0.4", 1)
                assert data != src.read(info)
            dst.writestr(info, data)
    with pytest.raises(UntrustedModelError, match="differs from the hipnn model code"):
        load_model(edited)


def test_sensitivity_exp_clamp_is_the_dtypes_smallest_normal():
    """The deployed HIPNN clamps exp's argument (speed: torch's exp is slow where it underflows) at
    log(2 x smallest normal) of float32 / float64 (TorchScript has no finfo: literals), like
    ekd.ops.kernels.sensitivity; the clamped values stay within that number of the unclamped ones."""
    import inspect
    import math

    for method in (scripted.ScriptedHipnn._sensitivities_aten, scripted.ScriptedHipnnTorch._sensitivities):
        source = inspect.getsource(method)
        for dt in (torch.float32, torch.float64):
            assert repr(math.log(2 * torch.finfo(dt).tiny)) in source, dt
    module = scripted.example_hipnn("torch", 2, 1, 4, dtype=torch.float32)
    d = torch.linspace(0.85, 2.6, 400, dtype=torch.float32)
    s = module._sensitivities(0, d)
    unclamped = torch.exp(-0.5 * ((d.unsqueeze(1) ** -1 - module.mu[0] ** -1) ** 2 / (module.sigma[0] ** -2)))
    cutoff = module.layer_cutoff[0]
    unclamped = unclamped * (torch.cos(math.pi / 2 * d / cutoff) ** 2 * (d < cutoff)).unsqueeze(1)
    assert (s - unclamped).abs().max() <= 2 * torch.finfo(torch.float32).tiny


def _body(method) -> str:
    """A method's statements without its docstring (and its comments), as an AST dump."""
    import ast
    import inspect
    import textwrap

    (fn,) = ast.parse(textwrap.dedent(inspect.getsource(method))).body
    return ast.dump(ast.Module(body=fn.body[1:], type_ignores=[]))


def test_the_torch_kinds_sensitivity_formula_is_the_fallbacks_word_for_word():
    """ScriptedHipnnTorch keeps its own copy of the ATen formula (so that its canonical code did not
    change when ScriptedHipnn moved to the op); the copy must not drift from ScriptedHipnn's."""
    assert _body(scripted.ScriptedHipnnTorch._sensitivities) == _body(scripted.ScriptedHipnn._sensitivities_aten)


def _cutoff_distances(cutoff: float, dtype) -> torch.Tensor:
    """Distances across the sensitivities' range, with the cutoff itself, its neighbouring floats and
    distances beyond it."""
    c = torch.tensor(cutoff, dtype=dtype)
    near = [torch.nextafter(c, c - 1), c, torch.nextafter(c, c + 1), c + 0.25]
    return torch.cat([torch.linspace(0.7, cutoff, 300, dtype=dtype)[:-1], torch.stack(near)])


@pytest.mark.skipif(not OPS, reason="no op library")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deployed_sensitivities_call_the_op_and_equal_the_formula(dtype):
    """Model kind "hipnn" computes its sensitivities with ekd::radial_sensitivity on the CPU: equal
    to the ATen formula (the code before the op, still the "hipnn-torch" kind's and the non-CPU
    fallback) to rounding, values and d/dd, beyond the cutoff too (exactly 0). At d == cutoff the
    op keeps hippynn's d <= cutoff: cos^2(pi/2) times the Gaussian, below 4e-33 (float64) / 2e-15
    (float32), where the formula gives 0."""
    module = scripted.example_hipnn("ekd-tensor" if "tensor_envsum" in OPS else "ekd", 2, 1, 4, dtype=dtype)
    from ekd.deploy.model_file import canonical_code

    assert any(b"ops.ekd.radial_sensitivity(" in c for c in canonical_code("hipnn").values())
    assert not any(b"radial_sensitivity" in c for c in canonical_code("hipnn-torch").values())
    cutoff = module.layer_cutoff[0]
    d = _cutoff_distances(cutoff, dtype).requires_grad_(True)
    s = module._sensitivities(0, d)
    ref = module._sensitivities_aten(0, d)
    assert torch.equal(s, torch.ops.ekd.radial_sensitivity(d, module.mu[0], module.sigma[0], cutoff))
    weights = torch.rand(s.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad((s * weights).sum(), d)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), d)
    tiny, eps = torch.finfo(dtype).tiny, torch.finfo(dtype).eps
    rtol = 1e-12 if dtype == torch.float64 else 8 * eps
    at = d.detach() == cutoff
    beyond = d.detach() > cutoff
    assert at.sum() == 1 and beyond.sum() == 2
    ok = ~at
    # subnormal results may be flushed to 0 (the op) or kept (torch): within 2 x the smallest normal
    torch.testing.assert_close(s[ok], ref[ok], rtol=rtol, atol=2 * tiny)
    assert torch.equal(s[beyond], torch.zeros_like(s[beyond])) and torch.equal(ref[at], torch.zeros_like(ref[at]))
    assert float(s[at].detach().abs().max()) <= (4e-33 if dtype == torch.float64 else 2e-15)
    scale = float(g_ref.abs().max())
    torch.testing.assert_close(g[ok], g_ref[ok], rtol=rtol, atol=rtol * scale)
    assert float(g[at].abs().max()) <= 1e3 * eps * scale
    assert torch.equal(g[beyond], torch.zeros_like(g[beyond]))


def _small_member_module():
    """test_lammps_halo._small_hipnn's member (the weights of tests/integration/data/before_*_hipnn.pt)
    scripted with today's code."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        arch = ModelConfig(
            l_max=2, n_interactions=2, n_atom_layers=2, width=8, n_sensitivities=5, cutoff_soft_max=3.0, cutoff_hard=3.5
        )
        model = build_model(arch, [6, 1, 7, 8])
    return scripted.script_member(model, dtype=torch.float64)


@pytest.mark.skipif(not OPS, reason="no op library")
def test_files_before_the_radial_op_load_and_give_todays_numbers(tmp_path):
    """A file written before model kind "hipnn" called ekd::radial_sensitivity (its code is kept as
    the accepted variant model_code/hipnn@before-radial) loads without trust_code and gives the
    energies and dE/dr of today's code with the same weights to 1e-12, with pairs beyond the cutoff
    and one exactly at it; the same file with one byte of its code changed is refused."""
    import zipfile
    from pathlib import Path

    from ekd.deploy.model_file import UntrustedModelError, load_model

    old_file = Path(__file__).parents[1] / "integration" / "data" / "before_radial_hipnn.pt"
    old, meta = load_model(old_file)
    new = _small_member_module()
    assert meta.kind == "hipnn" and meta.cutoff == new.cutoff == 3.5
    species, first, second, r = _all_pairs_cluster([6, 1, 1, 8, 7, 1, 6, 8, 1], torch.Generator().manual_seed(4))
    at_cutoff = torch.tensor([[3.5, 0.0, 0.0], [-3.5, 0.0, 0.0]], dtype=torch.float64)
    first, second = torch.cat([first, torch.tensor([0, 1])]), torch.cat([second, torch.tensor([1, 0])])
    r = torch.cat([1.4 * r, at_cutoff])  # the cluster scaled to a 4.2 A cube: pairs beyond the cutoff
    assert (r.norm(dim=1) > 3.5).any()
    results = []
    for module in (old, new):
        rr = r.clone().requires_grad_(True)
        e = module(species, first, second, rr)
        (g,) = torch.autograd.grad(e.sum(), rr)
        results.append((e.detach(), g))
    (e_old, g_old), (e_new, g_new) = results
    torch.testing.assert_close(e_new, e_old, rtol=1e-12, atol=1e-12 * float(e_old.abs().max()))
    torch.testing.assert_close(g_new, g_old, rtol=1e-12, atol=1e-12 * float(g_old.abs().max()))
    edited = tmp_path / "edited.pt"
    with zipfile.ZipFile(old_file) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("code/__torch__/ekd/scripted_hipnn.py"):
                data = data.replace(b"0.5", b"0.4", 1)
                assert data != src.read(info)
            dst.writestr(info, data)
    with pytest.raises(UntrustedModelError, match="differs from the hipnn model code"):
        load_model(edited)
