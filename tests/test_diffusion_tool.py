"""The diffusion model as the search's structure generator: tool, command and graph branch."""

import json

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from agent.cli import app
from agent.graph import _generate_for
from tools.diffusion_generation import generate_diffusion, rejection_reason
from tools.formula import FormulaError
from tools.generation import GENERATORS, GenerationError, generate_with
from tools.spec import SearchSpec, parse_request
from tools.structure import read_cif, structural_validity

runner = CliRunner()


def test_registered_and_gives_valid_structures_of_the_formula():
    assert "diffusion" in GENERATORS
    structures = generate_with("diffusion", "SrTiO3", n=3, seed=0)
    assert len(structures) == 3
    for item in structures:
        assert item.generator == "diffusion" and item.formula == "SrTiO3"
        assert item.structure.composition.reduced_formula == "SrTiO3"
        assert rejection_reason(item.structure) is None
        assert structural_validity(item.structure).valid
    again = generate_with("diffusion", "SrTiO3", n=3, seed=0)
    assert [s.structure.lattice.abc for s in again] == [s.structure.lattice.abc for s in structures]


def test_formula_as_written_and_fixed_formula_units():
    (cell,) = generate_diffusion("Sr2Ti2O6", n=1, formula_units=2, seed=3)
    assert len(cell.structure) == 20  # two units of the 10-atom formula as written
    assert "2 formula unit(s)" in cell.notes[0]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: generate_diffusion("Y2Ti2O7", formula_units=2), GenerationError, "at most 20 atoms"),
        (lambda: generate_diffusion("SrTiO3", n=0), GenerationError, "n must lie in 1-100"),
        (lambda: generate_diffusion("SrTiO3", method="euler"), GenerationError, "method must be one of"),
        (lambda: generate_diffusion("Xx2O"), FormulaError, "unknown element"),
    ],
)
def test_bad_requests_get_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_collapsed_and_overlapping_samples_are_rejected():
    thin = Structure(Lattice.from_parameters(0.6, 6, 6, 90, 90, 90), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert "cell axis 0.60" in rejection_reason(thin)
    crowded = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    assert "overlap" in rejection_reason(crowded)
    fine = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert rejection_reason(fine) is None


def test_command_writes_ranked_cifs(tmp_path):
    result = runner.invoke(app, ["generate", "diffusion", "NaCl", "-n", "2", "-z", "2", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2
    energies = [row["formation_energy_per_atom"] for row in rows]
    assert all(e is not None for e in energies) and energies == sorted(energies)
    for row in rows:
        structure = read_cif(open(row["file"]).read())
        assert structure.composition.reduced_formula == "NaCl" and row["n_sites"] == 4


def test_command_refuses_oversized_cells(tmp_path):
    result = runner.invoke(app, ["generate", "diffusion", "Y2Ti2O7", "-z", "2", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert "at most 20 atoms" in json.loads(result.stdout)["error"]
    assert not list(tmp_path.iterdir())


def test_planner_reads_the_generator_choice():
    assert parse_request("a novel spinel oxide containing Mn").generator == "auto"
    assert parse_request("spinel oxides with Mn by prototype substitution").generator == "template"
    assert parse_request("perovskite oxides from the diffusion model").generator == "diffusion"


def _item(formula: str) -> dict:
    return {"formula": formula, "source": "proposer"}


def test_search_default_is_diffusion_joined_by_family_prototypes():
    budget = {"structures_per_formula": 2}
    auto = SearchSpec(family="spinel", budget=budget)
    structures, note = _generate_for(_item("MgAl2O4"), auto)
    assert note is None
    assert [s.generator for s in structures] == ["diffusion", "diffusion", "template", "template"]
    only_template, _ = _generate_for(_item("MgAl2O4"), SearchSpec(family="spinel", generator="template", budget=budget))
    assert {s.generator for s in only_template} == {"template"}
    no_family, _ = _generate_for(_item("MgAl2O4"), SearchSpec(budget=budget))
    assert {s.generator for s in no_family} == {"diffusion"}


def test_search_falls_back_when_the_cell_is_too_big_for_diffusion():
    # A 22-atom formula unit as written (two pyrochlore units) is over the model's 20 atoms: prototypes take over.
    structures, note = _generate_for(_item("Y4Ti4O14"), SearchSpec(family="pyrochlore", budget={"structures_per_formula": 1}))
    assert note.startswith("diffusion could not sample it") and "at most 20 atoms" in note
    assert structures and all(s.generator != "diffusion" for s in structures)


def test_requested_family_wins_over_lower_energy_outsiders(monkeypatch):
    import agent.graph as graph
    from tools.generation import generate_template

    spinel = generate_template("MgAl2O4", family="spinel", n=1)[0].structure
    layered = Structure(Lattice.hexagonal(2.9, 14.0), ["Mg", "Al", "Al", "O", "O", "O", "O"],
                        [[0, 0, 0], [1 / 3, 2 / 3, 0.15], [2 / 3, 1 / 3, 0.3], [0, 0, 0.45],
                         [1 / 3, 2 / 3, 0.6], [2 / 3, 1 / 3, 0.75], [0, 0, 0.9]])
    assert graph._family_reference(spinel, "spinel").startswith("mp-") and graph._family_reference(layered, "spinel") is None
    assert graph._family_reference(spinel, None) is None

    def option(name, structure, energy):
        return ({"formula": "MgAl2O4"}, {"name": name}, {"formation_energy_per_atom": energy}, structure)

    checked = []
    real = graph._family_reference
    monkeypatch.setattr(graph, "_family_reference", lambda s, family: checked.append(s) or real(s, family))
    options = [option("member", spinel, -2.0), option("outsider", layered, -3.0), option("worse member", spinel, -1.0)]
    best = graph._best_of(options, "spinel")
    assert best[1]["name"] == "member" and best[1]["family_reference"].startswith("mp-")
    assert checked == [layered, spinel]  # energy order, stopping at the first member: the -1.0 one is never matched
    lowest = graph._best_of(options, None)
    assert lowest[1]["name"] == "outsider" and lowest[1]["family_reference"] is None
    only_outsiders = graph._best_of([option("b", layered, -1.0), option("a", layered, -1.5)], "spinel")
    assert only_outsiders[1]["name"] == "a" and only_outsiders[1]["family_reference"] is None
