"""The CHGNet scorer: energies, formation energies, hull, relaxation, plausibility guard."""

import math

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from generators.datasets import iter_mp20
from tools.energy import EnergyPrediction, predict
from tools.formation_energy import elemental_references, fit_references
from tools.hull import energy_above_hull, known_elements
from tools.relaxation import displacement_rmsd, relax
from tools.scoring import ScoringLimits, guard_prediction, score_structures, score_texts
from tools.structure import detect_spacegroup, write_cif


def test_batched_energies_forces_stress(srtio3, rocksalt_nacl):
    first, second = predict([srtio3, rocksalt_nacl])
    assert first.energy_per_atom == pytest.approx(-8.42, abs=0.1)  # CHGNet 0.3.0, MP-compatible scale
    assert first.forces.shape == (5, 3) and second.forces.shape == (8, 3)
    assert first.stress.shape == (3, 3)
    assert first.max_force < 1e-3  # every atom of the ideal cubic cell sits on an inversion centre


def test_formation_energies_match_dft_for_known_crystals():
    references = elemental_references()
    wanted = {"SrTiO3", "NaCl", "MgO", "LiF", "ZnO", "Fe2O3", "GaAs", "TiO2"}
    records = [r for r in iter_mp20("test") if r.formula in wanted and r.formation_energy_per_atom is not None]
    assert len(records) >= 5
    predictions = predict([r.structure for r in records])
    errors = [
        references.formation_energy_per_atom(r.structure.composition, p.energy_per_atom) - r.formation_energy_per_atom
        for r, p in zip(records, predictions)
    ]
    assert np.mean(np.abs(errors)) < 0.1, dict(zip([r.formula for r in records], errors))


def test_committed_references_record_their_fit():
    references = elemental_references()
    assert len(references.energies) >= 85
    assert references.metadata["test_mae_eV_per_atom"] <= 0.08
    assert references.metadata["command"] == "python -m tools.formation_energy fit"
    assert references.missing(Composition("SrTiO3")) == []
    assert references.formation_energy_per_atom(Composition("Sr"), references.energies["Sr"]) == pytest.approx(0.0)


def test_least_squares_recovers_references():
    rng = np.random.default_rng(1)
    truth = {"Li": -1.9, "O": -4.9, "Mn": -9.0, "Fe": -8.3}
    compositions, energies, formation = [], [], []
    for _ in range(60):
        amounts = {el: int(n) for el, n in zip(truth, rng.integers(0, 4, size=4)) if n > 0}
        if not amounts:
            continue
        comp = Composition(amounts)
        ef = rng.normal(-1.0, 0.5)
        fractions = comp.fractional_composition
        compositions.append(comp)
        formation.append(ef)
        energies.append(ef + sum(fractions[el] * mu for el, mu in truth.items() if el in amounts))
    mu, stats = fit_references(compositions, np.array(energies), np.array(formation))
    for el, value in truth.items():
        assert mu[el] == pytest.approx(value, abs=1e-6)
    assert stats["train_mae_eV_per_atom"] < 1e-6


def test_energy_above_hull_of_a_stable_compound():
    record = next(r for r in iter_mp20("train") if r.formula == "MgO" and r.e_above_hull is not None and r.e_above_hull < 1e-3)
    composition = record.structure.composition
    on_hull = energy_above_hull(composition, record.formation_energy_per_atom)
    assert on_hull.e_above_hull == pytest.approx(0.0, abs=0.02)
    lifted = energy_above_hull(composition, record.formation_energy_per_atom + 0.3)
    assert lifted.e_above_hull == pytest.approx(0.3, abs=0.03)
    assert lifted.reference_entries > 10
    assert lifted.decomposition  # the stable phases it would fall apart into


def test_hull_decomposition_of_an_off_stoichiometry_compound():
    result = energy_above_hull(Composition("Sr2Ti2O7"), -3.0)
    assert result.e_above_hull is not None and result.e_above_hull > 0
    assert math.isclose(sum(result.decomposition.values()), 1.0, abs_tol=1e-3)


def test_hull_with_an_element_missing_from_the_reference():
    absent = sorted({"Po", "At", "Rn", "Fr", "Ra", "Pm"} - known_elements())
    assert absent, "expected some radioactive elements to be absent from MP data"
    result = energy_above_hull(Composition(f"{absent[0]}O2"), -1.0)
    assert result.e_above_hull is None and result.unknown_elements == [absent[0]]


def test_relaxation_restores_cubic_perovskite(srtio3, perturb):
    start = perturb(srtio3)
    assert detect_spacegroup(start).number != 221
    result = relax(start, fmax=0.05, max_steps=300)
    assert result.final_energy_per_atom < result.initial_energy_per_atom
    assert result.energy_drop_per_atom > 0.05
    assert result.converged and result.max_force < 0.05
    assert StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).fit(result.structure, srtio3)
    # Pseudo-cubic: CHGNet, like PBE at its larger lattice constant, leaves a tiny polar
    # distortion (Amm2) a few meV/atom below the ideal cube, so compare metrics, not the group.
    abc = np.array(result.structure.lattice.abc)
    assert np.all(np.abs(abc / abc.mean() - 1) < 0.02)
    assert np.all(np.abs(np.array(result.structure.lattice.angles) - 90) < 1.0)
    ideal = predict([srtio3])[0].energy_per_atom
    assert result.final_energy_per_atom <= ideal + 1e-3
    assert 0.1 < result.rmsd < 0.5  # the 0.2 Å displacements undone (plus the strain)


def test_relaxation_arguments_are_bounded(srtio3):
    with pytest.raises(ValueError, match="fmax"):
        relax(srtio3, fmax=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        relax(srtio3, max_steps=100_000)


def test_displacement_rmsd_wraps_periodic_images(srtio3):
    moved = srtio3.copy()
    moved.translate_sites([0], [0.99, 0, 0])  # 0.01 across the boundary, not 0.99
    assert displacement_rmsd(srtio3, moved) == pytest.approx(0.01 * 3.905 * math.sqrt(4 / 25), abs=1e-6)
    assert displacement_rmsd(srtio3, srtio3) == 0.0


def test_score_reports(srtio3, rocksalt_nacl):
    reports = score_structures([srtio3, rocksalt_nacl], labels=["sto", "nacl"])
    for report in reports:
        assert report["plausible"] and report["reason"] is None
        assert report["formation_energy_per_atom"] < -1.5
        assert report["e_above_hull"] == pytest.approx(0.0, abs=0.1)
    assert reports[0]["label"] == "sto" and reports[0]["reduced_formula"] == "SrTiO3"


def test_guard_rejects_bad_structures(rocksalt_nacl):
    close_pair = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])
    # 216 sites, over the default cap of 200. Rocksalt: CHGNet scores it in ~1 s (a perovskite
    # supercell of that size, with its many more neighbours and angles, takes 10-20 s).
    big = rocksalt_nacl * (3, 3, 3)
    uncovered = Structure(Lattice.cubic(4.0), ["Am", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    molecule_in_box = Structure(Lattice.cubic(30.0), ["C", "O"], [[0, 0, 0], [0.0376, 0, 0]])
    reports = score_structures([close_pair, big, uncovered, molecule_in_box])
    assert not any(r["plausible"] for r in reports)
    reasons = [r["reason"] for r in reports]
    assert "atoms overlap" in reasons[0] and "0.300" in reasons[0]
    assert "too many sites (216; the scoring cap is 200)" in reasons[1]
    assert "CHGNet does not cover Am" in reasons[2]
    assert "volume per atom" in reasons[3]
    assert score_structures([big], limits=ScoringLimits(max_sites=300))[0]["plausible"]


def test_guard_rejects_implausible_predictions():
    limits = ScoringLimits()
    calm = EnergyPrediction(-5.0, np.zeros((2, 3)), np.zeros((3, 3)))
    assert guard_prediction(calm, -1.0, limits) is None
    assert "outside the plausible range" in guard_prediction(calm, -7.5, limits)
    assert "outside the plausible range" in guard_prediction(calm, 3.0, limits)
    nan = EnergyPrediction(float("nan"), np.zeros((2, 3)), np.zeros((3, 3)))
    assert guard_prediction(nan, None, limits) == "non-finite CHGNet output"
    exploding = EnergyPrediction(-5.0, np.array([[0, 0, 120.0], [0, 0, -120.0]]), np.zeros((3, 3)))
    assert "exploding forces" in guard_prediction(exploding, -1.0, limits)


def test_unreadable_inputs_keep_their_place(srtio3):
    items = [("a.cif", write_cif(srtio3)), ("b.xyz", "2\nCO\nC 0 0 0\nO 0 0 1.13\n"), ("c.cif", "garbage")]
    reports = score_texts(items)
    assert [r["label"] for r in reports] == ["a.cif", "b.xyz", "c.cif"]
    assert reports[0]["plausible"]
    assert "non-periodic molecule" in reports[1]["reason"]
    assert "not a readable CIF" in reports[2]["reason"]


def test_relaxed_scoring_returns_relaxed_cif(srtio3, perturb):
    report = score_structures([perturb(srtio3, seed=3)], relax=True, max_steps=300)[0]
    assert report["plausible"] and report["relax_converged"]
    assert report["energy_drop_per_atom"] > 0
    assert "_cell_length_a" in report["relaxed_cif"]
    assert report["rmsd"] > 0.05


def test_a_relaxation_that_fails_costs_its_own_structure(srtio3, rocksalt_nacl, monkeypatch):
    """Bad arguments refuse the call up front; a structure that breaks the (batched) relaxation gets
    the reason when the structures are relaxed one at a time after the batch failed."""
    import tools.batch_relax
    import tools.relaxation

    with pytest.raises(ValueError, match="fmax must lie"):
        score_structures([srtio3], relax=True, fmax=99.0)
    real = tools.relaxation.relax

    def breaks_on_strontium(structure, **options):
        if "Sr" in structure.composition:
            raise ValueError("FIRE diverged")  # an error the structure caused, whatever its type
        return real(structure, **options)

    def batch_breaks_on_strontium(structures, **options):
        if any("Sr" in s.composition for s in structures):
            raise ValueError("FIRE diverged")
        return real_many(structures, **options)

    real_many = tools.batch_relax.relax_many
    monkeypatch.setattr(tools.relaxation, "relax", breaks_on_strontium)
    monkeypatch.setattr(tools.batch_relax, "relax_many", batch_breaks_on_strontium)
    broken, fine = score_structures([srtio3, rocksalt_nacl], relax=True, max_steps=5)
    assert broken["reason"] == "relaxation failed: ValueError: FIRE diverged" and not broken["plausible"]
    assert fine["plausible"] and fine["relaxed_cif"] and fine["relax_steps"] >= 1
