"""The prototype-substitution generator and the family match rate."""

import json

import pytest
from typer.testing import CliRunner

from agent.cli import app
from tools.generation import GenerationError, generate_template
from tools.matching import match_rate, matching_reference
from tools.proposer import propose_offline
from tools.screen import screen
from tools.spec import parse_request
from tools.structure import detect_spacegroup, read_cif, structural_validity, write_cif

runner = CliRunner()


def test_spinel_on_its_prototype():
    structures = generate_template("MgAl2O4", family="spinel", n=5, seed=1)
    assert len(structures) == 5
    first = structures[0]
    assert first.prototype and first.assignment == {"A": "Mg", "B": "Al", "X": "O"}
    assert detect_spacegroup(first.structure).number == 227
    assert first.structure.composition.reduced_formula == "MgAl2O4"
    assert all(structural_validity(s.structure).valid for s in structures)
    assert any(s.variant > 0 for s in structures)  # filled with variants beyond the distinct prototypes
    again = generate_template("MgAl2O4", family="spinel", n=5, seed=1)
    assert [s.structure.lattice.abc for s in again] == [s.structure.lattice.abc for s in structures]


def test_site_swaps_are_tried():
    structures = generate_template("BaLiF3", family="perovskite", n=10)
    assignments = {tuple(sorted(s.assignment.items())) for s in structures if s.variant == 0}
    assert (("A", "Ba"), ("B", "Li"), ("X", "F")) in assignments
    assert (("A", "Li"), ("B", "Ba"), ("X", "F")) in assignments


@pytest.mark.parametrize(
    ("formula", "family", "message"),
    [
        ("SrTiO3", "spinel", "does not fit the spinel templates"),
        ("Fe", None, "fits no family"),
    ],
)
def test_clear_errors(formula, family, message):
    with pytest.raises(GenerationError, match=message):
        generate_template(formula, family=family)
    with pytest.raises(GenerationError, match="n must lie"):
        generate_template("MgAl2O4", n=0)


REQUESTS = {
    "spinel": "a novel spinel oxide containing Mn",
    "pyrochlore": "a pyrochlore oxide not in the Materials Project",
    "double_perovskite": "a double perovskite with Ba and W",
    "perovskite": "a lead-free halide perovskite",
}


@pytest.mark.parametrize("family", sorted(REQUESTS))
def test_template_structures_of_passing_formulae_match_their_family(family):
    spec = parse_request(REQUESTS[family])
    passed = [s.formula for s in screen(propose_offline(spec, 12, seed=0), spec) if s.passed][:10]
    assert len(passed) >= 8
    structures = []
    for formula in passed:
        generated = generate_template(formula, family=family, n=1)[0].structure
        again = read_cif(write_cif(generated))  # CIF-valid
        assert structural_validity(again).valid
        structures.append(again)
    assert match_rate(structures, family) >= 0.9


def test_matching_reference_rejects_other_families(srtio3):
    assert matching_reference(srtio3, "perovskite") is not None
    assert matching_reference(srtio3, "spinel") is None


def test_generate_command(tmp_path):
    result = runner.invoke(app, ["generate", "template", "Y2Ti2O7", "--family", "pyrochlore", "-n", "3", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and rows[0]["spacegroup_number"] == 227
    for row in rows:
        assert read_cif(open(row["file"]).read()).composition.reduced_formula == "Y2Ti2O7"
    result = runner.invoke(app, ["generate", "template", "SrTiO3", "--family", "garnet", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "does not fit the garnet templates" in json.loads(result.stdout)["error"]
    result = runner.invoke(app, ["generate", "template", "Xx2O", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown element" in json.loads(result.stdout)["error"]


def test_random_symmetric_fallback_for_formulae_without_a_prototype():
    from tools.generation import generate_any, generate_random

    structures = generate_random("Li2MnO3", n=3, seed=2)
    assert 1 <= len(structures) <= 3
    for generated in structures:
        assert generated.generator == "random_symmetric"
        assert generated.structure.composition.reduced_formula == "Li2MnO3"
        assert structural_validity(generated.structure).valid
    chosen, note = generate_any("Li2Mn4O5", n=2)
    assert chosen[0].generator == "random_symmetric" and "no prototype fits" in note
    chosen, note = generate_any("MgAl2O4", n=1)
    assert chosen[0].generator == "template" and note is None
