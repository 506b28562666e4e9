"""Prototype templates: training crystals of the requested Wyckoff prototype, elements substituted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from generators.diffusion.tensor_files import unpack_samples
from generators.unimdm.data import pack_infos
from generators.unimdm.lattice import parameters_from_k
from generators.unimdm.sample_tensors import pack
from generators.unimdm.symmetry import LETTERS, encode_operations, expand, normaliser_cosets, symmetry_info, wyckoff_operations
from generators.unimdm.tensor_files import collate_all, take_rows
from generators.unimdm.templates import PrototypeIndex, expand_rows, main, redescribe, split_crystals, template_samples

MATCHER = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)  # the benchmark's tolerances


def rock_salt(a: str, b: str, length: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(length), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rutile(metal: str, a: float, c: float, x: float) -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(a, c), [metal, "O"], [[0, 0, 0], [x, x, 0]])


def packed(structures: dict[str, Structure]) -> dict:
    names = list(structures)
    return pack_infos([symmetry_info(structures[n]) for n in names], names, names, [1.0] * len(names), [-1.0] * len(names))


TRAINING = {"NaCl": rock_salt("Na", "Cl", 5.64), "MgO": rock_salt("Mg", "O", 4.21),
            "TiO2": rutile("Ti", 4.594, 2.959, 0.305), "SnO2": rutile("Sn", 4.737, 3.186, 0.307)}
REQUESTS = {"KCl": rock_salt("K", "Cl", 6.29), "GeO2": rutile("Ge", 4.395, 2.859, 0.306),
            "ZnO": Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                             [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])}


@pytest.fixture(scope="module")
def symmetry_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("symmetry")
    torch.save(packed(TRAINING), folder / "train.pt")
    torch.save(packed(REQUESTS), folder / "test.pt")
    return folder


def structure(coords: torch.Tensor, numbers: torch.Tensor, lattice: torch.Tensor) -> Structure:
    return Structure(Lattice.from_parameters(*lattice.double().tolist()), numbers.tolist(), coords.double().numpy())


def test_templates_rank_alike_elements_and_keep_the_arrangement(symmetry_dir):
    index = PrototypeIndex.from_dir(symmetry_dir)
    requests = {c.material_id: c for c in split_crystals(torch.load(symmetry_dir / "test.pt"))}

    kcl = index.templates(requests["KCl"], k=5)
    assert [t.source for t in kcl] == ["NaCl", "MgO"]  # only the two rock salts; Na for K beats Mg/O for K/Cl
    assert kcl[0].elements == {19: 11, 17: 17} and kcl[0].dissimilarity < kcl[1].dissimilarity
    assert kcl[0].lattice[0] > 5.64  # NaCl's cell grown for the larger potassium
    np.testing.assert_allclose(kcl[0].lattice[3:], 90.0)
    germania = index.templates(requests["GeO2"], k=5)
    assert {t.source for t in germania} == {"TiO2", "SnO2"}
    assert germania[0].dissimilarity <= germania[1].dissimilarity
    assert index.templates(requests["ZnO"], k=5) == []  # wurtzite: no training crystal of its prototype
    training_rock_salt = split_crystals(torch.load(symmetry_dir / "train.pt"))[0]
    assert [t.source for t in index.templates(training_rock_salt, k=5)] == ["MgO"]  # never itself

    samples = template_samples(torch.load(symmetry_dir / "test.pt"), index, candidates=2)
    assert samples["material_ids"] == ["KCl", "KCl", "GeO2", "GeO2"]
    assert samples["candidate"].tolist() == [0, 1, 0, 1] and samples["info"]["from_templates"] == 4
    for (coords, numbers, lattice), material_id in zip(unpack_samples(samples)[0], samples["material_ids"]):
        built = structure(coords, numbers, lattice)
        assert built.composition.reduced_formula == REQUESTS[material_id].composition.reduced_formula
        assert MATCHER.fit(built, REQUESTS[material_id]), material_id


def test_a_fallback_fills_the_crystals_without_a_template(symmetry_dir, tmp_path):
    test = torch.load(symmetry_dir / "test.pt")
    atoms = [torch.rand(int(n), 3, generator=torch.Generator().manual_seed(i)) for i, n in enumerate(test["n_atoms"].tolist())]
    fallback = pack(test, [atoms], test["lattice"].float()[None], {"weights": "dit"})
    torch.save(fallback, tmp_path / "dit.pt")

    main(["--data", str(symmetry_dir), "--inputs", "test", "--fallback", str(tmp_path / "dit.pt"), "--out", str(tmp_path / "t.pt"),
          "--symmetry-out", str(tmp_path / "starts" / "test_templates.pt")])
    starts = torch.load(tmp_path / "starts" / "test_templates.pt", weights_only=True)  # the DiT's starts: templated crystals only
    assert starts["material_ids"] == ["KCl", "GeO2"] and starts["template_sources"][0] == "NaCl"
    np.testing.assert_allclose(parameters_from_k(starts["k"].double()).numpy(), starts["lattice"].numpy(), atol=1e-3)
    assert starts["lattice"][0, 0] > 5.64  # NaCl's cell, not KCl's own
    from generators.unimdm.sample_tensors import main as sample_main
    with pytest.raises(SystemExit, match="holds the crystals' own structures"):  # never start from the answers
        sample_main(["--weights", "generators/weights/unimdm/model.pt", "--data", str(symmetry_dir), "--inputs", "test", "--start-level", "400",
                     "--out", str(tmp_path / "never.pt"), "--device", "cpu"])
    samples = torch.load(tmp_path / "t.pt", weights_only=True)
    assert samples["material_ids"] == ["KCl", "GeO2", "ZnO"] and samples["candidate"].tolist() == [0, 0, 0]
    assert samples["info"]["from_templates"] == 2 and samples["info"]["fallback"] == [{"weights": "dit"}]
    rows = unpack_samples(samples)[0]
    assert MATCHER.fit(structure(*rows[0]), REQUESTS["KCl"]) and MATCHER.fit(structure(*rows[1]), REQUESTS["GeO2"])
    assert torch.equal(rows[2][0], atoms[2]) and torch.equal(rows[2][2], test["lattice"][2].float())  # ZnO: the DiT's sample as it was

    truth = collate_all(test)  # refined samples of the templated crystals (here their true cells) replace the templates
    true_atoms = truth.expand(truth.orbit_coords)
    refined = pack(take_rows(test, [0, 1]), [[true_atoms[0, :8], true_atoms[1, :6]]], test["lattice"].float()[None, :2], {"start_level": 400})
    torch.save(refined, tmp_path / "refined.pt")
    main(["--data", str(symmetry_dir), "--fallback", str(tmp_path / "dit.pt"), "--refined", str(tmp_path / "refined.pt"), "--out", str(tmp_path / "r.pt")])
    rows = unpack_samples(torch.load(tmp_path / "r.pt", weights_only=True))[0]
    assert torch.equal(rows[0][0], true_atoms[0, :8]) and torch.equal(rows[1][2], test["lattice"][1].float())
    assert torch.equal(rows[2][0], atoms[2])  # ZnO still the fallback's

    without_zno = pack(take_rows(test, [0, 1]), [atoms[:2]], test["lattice"].float()[None, :2], {})
    with pytest.raises(ValueError, match="lack 1 of the split's rows"):
        template_samples(test, PrototypeIndex.from_dir(symmetry_dir), without_zno)
    with pytest.raises(ValueError, match="one sample per crystal"):
        template_samples(test, PrototypeIndex.from_dir(symmetry_dir), fallback, candidates=2)
    with pytest.raises(ValueError, match="the refined samples lack 1"):
        template_samples(test, PrototypeIndex.from_dir(symmetry_dir), fallback, refined=pack(take_rows(test, [0]), [[true_atoms[0, :8]]],
                                                                                         test["lattice"].float()[None, :1], {}))
    with pytest.raises(SystemExit):
        main(["--data", str(symmetry_dir), "--fallback", str(tmp_path / "dit.pt"), "--candidates", "3", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ValueError, match="no train.pt"):
        PrototypeIndex.from_dir(tmp_path)


def test_predicted_candidates_keep_their_ranks_and_their_own_fallback_samples(symmetry_dir):
    """With predicted symmetry a crystal has a row per candidate: KCl as rock salt (rank 0, a template
    exists) and as CsCl type (rank 1, none): rank 1 takes the fallback's rank-1 sample, not rank 0's."""
    caesium_chloride_type = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.8), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    predicted = pack_infos([symmetry_info(REQUESTS["KCl"]), symmetry_info(caesium_chloride_type)], ["KCl", "KCl"], ["KCl", "KCl"],
                           [1.0, 1.0], [-1.0, -1.0])
    predicted["candidate"] = torch.tensor([0, 1], dtype=torch.int16)
    atoms = [torch.full((int(n), 3), 0.1 * (i + 1)) for i, n in enumerate(predicted["n_atoms"].tolist())]
    fallback = pack(predicted, [atoms], predicted["lattice"].float()[None], {})

    samples = template_samples(predicted, PrototypeIndex.from_dir(symmetry_dir), fallback)
    assert samples["material_ids"] == ["KCl", "KCl"] and samples["candidate"].tolist() == [0, 1]
    rows = unpack_samples(samples)[0]
    assert MATCHER.fit(structure(*rows[0]), REQUESTS["KCl"])  # rank 0: NaCl's arrangement
    assert torch.equal(rows[1][0], atoms[1])  # rank 1: its own fallback sample


def test_the_sampler_starts_from_the_most_alike_templates_then_from_noise(symmetry_dir):
    """UniMDMSampler with the training symmetry files: KCl in Fm-3m starts from NaCl, its second draw
    from MgO, a third (no template left) from noise; all three are rock salts of KCl with the exact group."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from generators.unimdm.sampler import UniMDMSampler

    sampler = UniMDMSampler(device="cpu", threads=1, templates_dir=symmetry_dir)
    candidate = {"space_group": 225, "letters": {19: ["a"], 17: ["b"]}, "log_prob": 0.0}
    crystals = sampler._generate({19: 1, 17: 1}, [candidate] * 3, None, None, "fast", 100, 0.0, seed=0)
    assert [c.template for c in crystals] == ["NaCl", "MgO", None]
    assert [c.substitutions for c in crystals] == [{"K": "Na"}, {"K": "Mg", "Cl": "O"}, {}]
    for crystal in crystals:
        assert crystal.structure.composition.reduced_formula == "KCl"
        assert SpacegroupAnalyzer(crystal.structure, symprec=0.1).get_space_group_number() == 225
    from_template = crystals[0].structure
    assert MATCHER.fit(from_template, REQUESTS["KCl"])
    assert 5.9 < from_template.lattice.a < 6.7  # NaCl's cell grown for potassium, then denoised (KCl: 6.29 Å)

    plain = UniMDMSampler(device="cpu", threads=1)
    assert plain.template_starts({}, [candidate]) == [None]  # without the training files: always from noise
    with pytest.raises(ValueError, match="start_level"):
        UniMDMSampler(templates_dir=symmetry_dir, start_level=0)


def test_the_tool_finds_the_training_symmetry_files_or_says_what_is_missing(symmetry_dir, tmp_path, monkeypatch):
    import tools.unimdm_generation as generation
    from tools.generation import GenerationError

    monkeypatch.setattr(generation, "DEFAULT_TEMPLATES_DIR", tmp_path / "not-built")
    monkeypatch.delenv(generation.TEMPLATES_ENV, raising=False)
    assert generation.templates_dir() is None  # nothing built: every sample from noise
    monkeypatch.setattr(generation, "DEFAULT_TEMPLATES_DIR", symmetry_dir)
    assert generation.templates_dir() == symmetry_dir  # built in the repository: used
    monkeypatch.setenv(generation.TEMPLATES_ENV, "off")
    assert generation.templates_dir() is None
    monkeypatch.setenv(generation.TEMPLATES_ENV, str(tmp_path))
    with pytest.raises(GenerationError, match="has no train.pt"):
        generation.templates_dir()

    monkeypatch.setenv(generation.TEMPLATES_ENV, str(symmetry_dir))
    generation.load_sampler.cache_clear()
    try:
        made = generation.generate_unimdm(formula="KCl", space_group=225, n=1, steps=40)
    finally:
        generation.load_sampler.cache_clear()  # later tests get the sampler of their own settings
    assert made[0].formula == "KCl" and "training crystal NaCl's arrangement (K for Na)" in made[0].notes[0]


def crystal_structure(crystal) -> Structure:
    numbers, coords = [], []
    for orbit in crystal.orbits:
        atoms = expand(*wyckoff_operations(crystal.space_group, LETTERS[orbit.letter]), orbit.position)
        numbers += [orbit.z] * len(atoms)
        coords.append(atoms)
    return Structure(Lattice.from_parameters(*crystal.lattice), numbers, np.concatenate(coords))


def test_a_prototype_seen_only_in_another_setting_takes_the_redescribed_training_crystals(symmetry_dir):
    """Rutile with the origin moved by (1/2, 1/2, 0): the metal on 2b instead of 2a. No training
    crystal has that letter set, but TiO2 and SnO2 do in the other description."""
    index = PrototypeIndex.from_dir(symmetry_dir)
    germania = {c.material_id: c for c in split_crystals(torch.load(symmetry_dir / "test.pt"))}["GeO2"]
    shift = next(c for c in normaliser_cosets(136) if c[0]["a"] == "b" and c[0]["f"] == "f")
    moved = redescribe(germania, shift)
    assert {LETTERS[o.letter] for o in moved.orbits} == {"b", "f"} and moved.prototype not in index.by_prototype
    assert MATCHER.get_rms_dist(crystal_structure(moved), REQUESTS["GeO2"])[0] < 1e-6  # the same crystal

    templates = index.templates(moved, k=5)
    assert {t.source for t in templates} == {"TiO2", "SnO2"}
    request = pack_infos([symmetry_info(REQUESTS["GeO2"])], ["GeO2"], ["GeO2"], [1.0], [-1.0])
    request["orbit_letter"] = torch.tensor([o.letter for o in moved.orbits], dtype=torch.int8)
    request["orbit_coords"] = torch.tensor(np.array([o.position for o in moved.orbits]), dtype=torch.float32)
    request["atom_ops"] = torch.cat([torch.from_numpy(encode_operations(*wyckoff_operations(136, LETTERS[o.letter]))) for o in moved.orbits])
    built = expand_rows(request, torch.tensor(templates[0].orbit_coords, dtype=torch.float32))[0]
    assert MATCHER.fit(structure(built, torch.tensor([32, 32, 8, 8, 8, 8]), torch.tensor(templates[0].lattice)), REQUESTS["GeO2"])
    assert index.templates(germania, k=5)[0].source in {"TiO2", "SnO2"}  # the original setting is found as before


def test_samples_from_noise_are_autoguided_by_the_committed_guide_and_templates_are_not(symmetry_dir, tmp_path):
    """The default sampler guides the DiT's `fast` samples from noise by guide.pt at weight 1 (a different
    structure than unguided for one seed), while template starts and `ddpm` use the DiT alone; weight 0, or other
    weights without a named guide, sample unguided; bad weights and a missing guide are refused."""
    from generators.unimdm.checkpoint import AutoGuidedDenoiser
    from generators.unimdm.sampler import AUTOGUIDANCE, DEFAULT_GUIDE, DEFAULT_WEIGHTS, UniMDMSampler

    guided = UniMDMSampler(device="cpu", threads=1, templates_dir=symmetry_dir)
    assert isinstance(guided.noise_model.network, AutoGuidedDenoiser) and guided.noise_model.network.weight == AUTOGUIDANCE
    assert guided.noise_model.training["autoguidance"] == AUTOGUIDANCE
    assert DEFAULT_GUIDE.stat().st_size < 0.6 * DEFAULT_WEIGHTS.stat().st_size  # int8
    candidate = {"space_group": 225, "letters": {19: ["a"], 17: ["b"]}, "log_prob": 0.0}
    unguided = UniMDMSampler(device="cpu", threads=1, templates_dir=symmetry_dir, autoguidance=0.0)
    assert unguided.noise_model is unguided.model
    a = guided._generate({19: 1, 17: 1}, [candidate] * 3, None, None, "fast", 20, 0.0, seed=0)
    b = unguided._generate({19: 1, 17: 1}, [candidate] * 3, None, None, "fast", 20, 0.0, seed=0)
    assert [c.template for c in a] == ["NaCl", "MgO", None]
    for x, y in zip(a[:2], b[:2]):  # from templates: the same network, the same structure
        assert np.allclose(x.structure.lattice.abc, y.structure.lattice.abc, atol=1e-6)
    assert not np.allclose(a[2].structure.lattice.abc, b[2].structure.lattice.abc, atol=1e-3)  # from noise: guided
    c = guided._generate({19: 1, 17: 1}, [candidate] * 3, None, None, "ddpm", 5, 0.0, seed=0)
    d = unguided._generate({19: 1, 17: 1}, [candidate] * 3, None, None, "ddpm", 5, 0.0, seed=0)
    assert np.allclose(c[2].structure.lattice.abc, d[2].structure.lattice.abc, atol=1e-6)  # ddpm: never guided
    assert [c.autoguidance for c in a] == [0.0, 0.0, AUTOGUIDANCE] and [c.autoguidance for c in b] == [0.0] * 3
    assert [crystal.autoguidance for crystal in c] == [0.0] * 3
    from tools.unimdm_generation import template_note

    assert template_note(None, {}, a[2].autoguidance) == "from noise, autoguided (weight 1)"
    assert template_note(None, {}, b[2].autoguidance) == "from noise"
    assert UniMDMSampler(weights=DEFAULT_WEIGHTS).guide_weights == DEFAULT_GUIDE  # the default, named or not
    assert UniMDMSampler(weights=tmp_path / "other.pt").guide_weights is None  # another DiT gets no guide unless named
    for weight in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="autoguidance"):
            UniMDMSampler(autoguidance=weight)
    missing = UniMDMSampler(device="cpu", guide_weights=tmp_path / "none.pt")
    for _ in range(2):  # asked again, it still refuses
        with pytest.raises(FileNotFoundError, match="guide missing"):
            _ = missing.noise_model
