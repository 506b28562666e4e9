"""The Uni-MDM benchmark's breakdown of match rates (pure bookkeeping on evaluated pairs)."""

from evals.bench_csp_unimdm import breakdown


def result(comp_valid: bool, struct_valid: bool, rms: float | None) -> dict:
    return {"comp_valid": comp_valid, "struct_valid": struct_valid, "rms": rms}


def test_breakdown_by_lattice_family_and_cell_size():
    results = [result(True, True, 0.01),    # cubic rocksalt, 2 atoms: matched
               result(False, True, 0.02),   # cubic, 8 atoms: matches but SMACT rejects the composition
               result(True, True, None),    # orthorhombic, 12 atoms: valid, no match
               result(True, False, 0.10),   # triclinic, 24 atoms: atoms too close
               result(True, True, 0.03)]    # trigonal (hexagonal family), 3 atoms: matched
    parts = breakdown(results, [225, 221, 62, 1, 166], [2, 8, 12, 24, 3])

    families = parts["by_lattice_family"]
    assert list(families)[0] == "cubic"  # the largest bucket first
    assert families["cubic"] == {"crystals": 2, "match_rate": 0.5, "valid": 0.5, "match_rate_of_valid": 1.0}
    assert families["orthorhombic"] == {"crystals": 1, "match_rate": 0.0, "valid": 1.0, "match_rate_of_valid": 0.0}
    assert families["triclinic"] == {"crystals": 1, "match_rate": 0.0, "valid": 0.0, "match_rate_of_valid": 0.0}
    assert families["hexagonal"]["match_rate"] == 1.0 and "trigonal" not in families

    atoms = parts["by_atoms"]
    assert list(atoms) == ["1-4", "5-8", "9-12", ">=21"]  # in size order, empty bins left out
    assert atoms["1-4"] == {"crystals": 2, "match_rate": 1.0, "valid": 1.0, "match_rate_of_valid": 1.0}
    assert atoms["5-8"]["match_rate"] == 0.0 and atoms[">=21"]["valid"] == 0.0
    assert sum(b["crystals"] for b in atoms.values()) == len(results)

    origin = parts["by_origin"]  # P1 (1) has polar axes; Fm-3m, Pm-3m, Pnma, R-3m fix the origin
    assert origin["polar axes"] == {"crystals": 1, "match_rate": 0.0, "valid": 0.0, "match_rate_of_valid": 0.0}
    assert origin["fixed origin"] == {"crystals": 4, "match_rate": 0.5, "valid": 0.75, "match_rate_of_valid": 0.6667}


def test_swap_diagnosis_tells_lattice_misses_from_coordinate_misses(tmp_path, monkeypatch):
    """Samples equal to the truth but one with a stretched lattice and one with moved atoms: the lattice
    miss matches once the true lattice is swapped in, the coordinate miss once the true coordinates are;
    the misses' lattice errors are the ones made."""
    import numpy as np
    import torch
    from pymatgen.core import Lattice, Structure

    import evals.bench_csp_unimdm as bench
    from generators.unimdm.data import pack_infos
    from generators.unimdm.sample_tensors import pack
    from generators.unimdm.symmetry import symmetry_info
    from generators.unimdm.tensor_files import collate_all

    structures = {
        "TiO2": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]),
        "ZrO2": Structure.from_spacegroup("P2_1/c", Lattice.monoclinic(5.15, 5.21, 5.31, 99.2), ["Zr", "O", "O"],
                                          [[0.276, 0.04, 0.208], [0.07, 0.332, 0.345], [0.449, 0.758, 0.479]]),
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }
    names = list(structures)
    split = pack_infos([symmetry_info(structures[n]) for n in names], names, names, [1.0] * 3, [-1.0] * 3)
    torch.save(split, tmp_path / "test.pt")
    batch = collate_all(split)
    coords = batch.expand(batch.orbit_coords)
    per_crystal = [coords[i, : int(batch.n_atoms[i])].clone() for i in range(3)]
    lattices = split["lattice"].clone().float()
    lattices[0, :2] *= 2.5  # TiO2: a and b stretched 2.5 times (tetragonal: both)
    per_crystal[1] = torch.rand(per_crystal[1].shape, generator=torch.Generator().manual_seed(0))  # ZrO2: atoms anywhere
    samples = pack(split, [per_crystal], lattices[None], {})
    monkeypatch.setattr(bench, "truth_cifs", lambda ids, split: [structures[m].to(fmt="cif") for m in ids])

    figures = bench.swap_diagnosis(samples, tmp_path / "test.pt", workers=1)
    everything = figures["all"]
    assert everything["crystals"] == 3
    assert everything["sampled"] == round(1 / 3, 4)  # only NaCl matches as sampled
    assert figures["tetragonal"]["sampled coordinates, true lattice"] == 1.0
    assert figures["tetragonal"]["true coordinates, sampled lattice"] == 0.0
    assert figures["monoclinic"]["sampled coordinates, true lattice"] == 0.0
    assert figures["monoclinic"]["true coordinates, sampled lattice"] == 1.0
    assert figures["cubic"] == {"crystals": 1, "sampled": 1.0, "sampled coordinates, true lattice": 1.0,
                                "true coordinates, sampled lattice": 1.0, "misses: median length error": None,
                                "misses: median angle error": None, "misses: median volume error": None}
    np.testing.assert_allclose(figures["tetragonal"]["misses: median length error"], 1.5, atol=1e-4)
    np.testing.assert_allclose(figures["tetragonal"]["misses: median volume error"], 5.25, atol=1e-3)
    assert figures["monoclinic"]["misses: median length error"] < 1e-4

    two_per_crystal = pack(split, [per_crystal, per_crystal], torch.stack([lattices, lattices]), {})
    two_per_crystal["candidate"] = torch.tensor([0, 1, 0], dtype=torch.int16)
    try:
        bench.swap_diagnosis(two_per_crystal, tmp_path / "test.pt", workers=1)
    except ValueError as error:
        assert "one true-symmetry sample per crystal" in str(error)
    else:
        raise AssertionError("predicted-symmetry candidates were diagnosed")


def test_agreement_of_sample_sets_counts_gains_losses_and_their_noise(tmp_path, monkeypatch):
    """Three one-sample sets of two crystals (the rates over four: two crystals never sampled): TiO2's
    cell stretched, the truth, TiO2's atoms drawn together; the agreement counts the crystals matched by every,
    some and no set, and the gains and losses against the first."""
    import pytest
    import torch
    from pymatgen.core import Lattice, Structure

    import evals.bench_csp_unimdm as bench
    from generators.unimdm.data import pack_infos
    from generators.unimdm.sample_tensors import pack
    from generators.unimdm.symmetry import symmetry_info
    from generators.unimdm.tensor_files import collate_all, take_rows

    structures = {
        "TiO2": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]),
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    }
    names = list(structures)
    split = pack_infos([symmetry_info(structures[n]) for n in names], names, names, [1.0] * 2, [-1.0] * 2)
    batch = collate_all(split)
    coords = batch.expand(batch.orbit_coords)
    truth = [coords[i, : int(batch.n_atoms[i])].clone() for i in range(2)]
    moved = [truth[0] * 0.3, truth[1]]  # TiO2's atoms drawn together (random ones can match at stol 0.5)
    stretched = split["lattice"].clone().float()
    stretched[0, :2] *= 2.5
    paths = []
    for name, per_crystal, lattices in (("stretched", truth, stretched), ("truth", truth, split["lattice"].float()),
                                        ("moved", moved, split["lattice"].float())):
        paths.append(tmp_path / f"{name}.pt")
        torch.save(pack(split, [per_crystal], lattices[None], {}), paths[-1])
    monkeypatch.setattr(bench, "truth_cifs", lambda ids, split: [structures[m].to(fmt="cif") for m in ids])

    figures = bench.agreement_figures(paths, workers=1, total=4)
    assert [figures[f"match rate: {p}"] for p in paths] == [0.25, 0.5, 0.25]
    assert figures["matched by every set"] == 0.25 and figures["matched by at least one set"] == 0.5  # NaCl; and TiO2
    assert figures["matched by no set"] == 0.5  # the unsampled crystals and none else
    assert figures[f"against the first: {paths[1]}"] == {"gained": 1, "lost": 0, "paired standard error": 0.25}
    assert figures[f"against the first: {paths[2]}"] == {"gained": 0, "lost": 0, "paired standard error": 0.0}

    two_per_crystal = pack(split, [truth, truth], torch.stack([split["lattice"].float()] * 2), {})
    two_per_crystal["candidate"] = torch.tensor([0, 1], dtype=torch.int16)
    torch.save(two_per_crystal, tmp_path / "candidates.pt")
    with pytest.raises(ValueError, match="one true-symmetry sample per crystal"):
        bench.agreement_figures([paths[0], tmp_path / "candidates.pt"], workers=1, total=4)
    with pytest.raises(SystemExit, match="two or more"):
        bench.main(["--agreement", str(paths[0])])

    # a set of the first crystal only (as the first 3,000 of the split against all 9,046): refused,
    # then compared over the first crystal of each with limit 1 (the truth there gains TiO2)
    first = pack(take_rows(split, [0]), [truth[:1]], split["lattice"][:1].float()[None], {})
    torch.save(first, tmp_path / "first.pt")
    with pytest.raises(ValueError, match="sample different crystals: compare their first N with --limit N"):
        bench.agreement_figures([tmp_path / "first.pt", paths[0]], workers=1, total=1)
    limited = bench.agreement_figures([paths[0], tmp_path / "first.pt"], workers=1, total=1, limit=1)
    assert limited[f"match rate: {paths[0]}"] == 0.0 and limited[f"match rate: {tmp_path / 'first.pt'}"] == 1.0
    assert limited[f"against the first: {tmp_path / 'first.pt'}"] == {"gained": 1, "lost": 0, "paired standard error": 1.0}


def test_prototypes_seen_in_training_split_the_breakdown(tmp_path):
    """A crystal's Wyckoff prototype is its space group and anonymous per-element letters: KCl is
    rock salt like a trained NaCl (seen), rutile is new until val_rest holds it; a P-1 pair at 1a
    and 1b is the same arrangement as a trained pair at 1d and 1f (origin moved by a/2: seen in
    another setting); the breakdown splits the match rates so, and a symmetry folder without
    train.pt or without a sampled crystal is refused."""
    import pytest
    import torch
    from pymatgen.core import Lattice, Structure

    import evals.bench_csp_unimdm as bench
    from generators.unimdm.data import pack_infos
    from generators.unimdm.symmetry import LETTERS, symmetry_info

    def packed(structures: dict) -> dict:
        names = list(structures)
        return pack_infos([symmetry_info(structures[n]) for n in names], names, names, [1.0] * len(names), [-1.0] * len(names))

    def triclinic_pair(name: str, letters: str) -> dict:
        """Only what the prototype reads: a P-1 crystal of two elements on two letters."""
        return {"material_ids": [name], "space_group": torch.tensor([2]), "n_orbits": torch.tensor([2]),
                "orbit_z": torch.tensor([11, 17]), "orbit_letter": torch.tensor([LETTERS.index(c) for c in letters])}

    def joined(*splits: dict) -> dict:
        return {key: sum((list(x[key]) for x in splits), []) if key == "material_ids" else torch.cat([x[key] for x in splits])
                for key in ("material_ids", "space_group", "n_orbits", "orbit_z", "orbit_letter")}

    rock_salt = lambda a, b, length: Structure.from_spacegroup("Fm-3m", Lattice.cubic(length), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])  # noqa: E731
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    test = joined(packed({"KCl": rock_salt("K", "Cl", 6.29), "TiO2": rutile}), triclinic_pair("P-1 ab", "ab"),
                  triclinic_pair("P-1 ah", "ah"))
    prototypes = bench.wyckoff_prototypes(test)
    assert prototypes["KCl"] == (225, ((0,), (1,)))  # 4a and 4b (letters as indexes: a = 0)
    assert prototypes["TiO2"] == (136, ((0,), (5,)))  # Ti 2a, O 4f
    assert bench.canonical_prototype((2, ((3,), (5,)))) == bench.canonical_prototype((2, ((0,), (1,))))  # 1d 1f ~ 1a 1b
    assert bench.canonical_prototype((2, ((0,), (7,)))) != bench.canonical_prototype((2, ((0,), (1,))))  # 1a 1h: other

    ids = ["KCl", "TiO2", "P-1 ab", "P-1 ah"]
    torch.save(test, tmp_path / "test.pt")
    with pytest.raises(ValueError, match="no train.pt"):
        bench.classify_prototypes(ids, tmp_path, "test")
    train = joined(packed({"NaCl": rock_salt("Na", "Cl", 5.64), "MgO": rock_salt("Mg", "O", 4.21)}), triclinic_pair("P-1 df", "df"))
    torch.save(train, tmp_path / "train.pt")
    assert bench.classify_prototypes(ids, tmp_path, "test") == {
        "KCl": "seen in training", "TiO2": "new", "P-1 ab": "seen in another setting", "P-1 ah": "new"}
    torch.save(packed({"TiO2x": rutile}), tmp_path / "val_rest.pt")  # the standard training set's rest counts too
    assert bench.classify_prototypes(ids, tmp_path, "test")["TiO2"] == "seen in training"
    with pytest.raises(ValueError, match="lacks 1 of the samples' crystals"):
        bench.classify_prototypes(["KCl", "ZnS"], tmp_path, "test")

    parts = breakdown([result(True, True, 0.01), result(True, True, None), result(False, True, 0.02), result(True, True, 0.05)],
                      [225, 136, 225, 2], [2, 6, 2, 2], ["seen in training", "new", "seen in training", "seen in another setting"])
    assert parts["by_prototype"] == {
        "seen in training": {"crystals": 2, "match_rate": 0.5, "valid": 0.5, "match_rate_of_valid": 1.0},
        "seen in another setting": {"crystals": 1, "match_rate": 1.0, "valid": 1.0, "match_rate_of_valid": 1.0},
        "new": {"crystals": 1, "match_rate": 0.0, "valid": 1.0, "match_rate_of_valid": 0.0}}
    assert "by_prototype" not in breakdown([result(True, True, 0.01)], [225], [2])
    with pytest.raises(SystemExit):
        bench.parse_args(["--prototypes", str(tmp_path)])
