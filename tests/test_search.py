"""The one-shot hierarchical search (offline planner), as the acceptance list states it."""

import json

import pytest
from typer.testing import CliRunner

from agent.cli import app
from tools.checks import check_formula
from tools.formula import parse_formula
from tools.structure import read_cif

runner = CliRunner()
SMALL_BUDGET = ["-H", "12", "-W", "3", "-L", "1", "--relax-steps", "15", "-n", "3", "--rounds", "3"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def search(request, out, *extra):
    result = runner.invoke(app, ["search", request, "--out", str(out), "--json", *SMALL_BUDGET, *extra])
    return result.exit_code, json.loads(result.stdout)


def assert_good(candidate, out):
    cif = (out / candidate["cif_path"]).read_text()
    structure = read_cif(cif)  # CIF-valid
    assert candidate["checks"]["structurally_valid"] and candidate["checks"]["min_distance"] > 0.5
    assert candidate["checks"]["charge_balanced"]
    assert candidate["formation_energy_per_atom"] is not None and candidate["e_above_hull"] is not None
    assert candidate["plausible"]
    assert structure.composition.reduced_formula == parse_formula(candidate["reduced_formula"]).reduced_formula
    return structure


def test_novel_manganese_spinels(tmp_path):
    code, result = search("a novel spinel oxide containing Mn", tmp_path)
    assert code == 0
    good = [c for c in result["candidates"] if c["plausible"]]
    assert len(good) >= 3
    for candidate in good:
        structure = assert_good(candidate, tmp_path)
        amounts = parse_formula(candidate["reduced_formula"]).reduced_amounts
        assert sorted(amounts.values()) == [1, 2, 4] and amounts.get("O") == 4 and "Mn" in amounts
        assert not {"MP", "ICSD"} & set(check_formula(candidate["reduced_formula"])["known_in"])
        assert len(structure) == 14  # the spinel's primitive cell
    saved = json.loads((tmp_path / "results.json").read_text())
    steps = [d["step"] for d in saved["decisions"]]
    assert steps[0] == "understand" and "screen" in steps and "score" in steps and steps[-1] == "report"
    assert all(d["reason"] for d in saved["decisions"])
    assert saved["spec"]["family"] == "spinel" and saved["timings"]
    report = (tmp_path / "report.md").read_text()
    assert "## Decisions" in report and good[0]["reduced_formula"] in report


def test_pyrochlore_oxides(tmp_path):
    code, result = search("a pyrochlore oxide", tmp_path)
    assert code == 0
    good = [c for c in result["candidates"] if c["plausible"]]
    assert len(good) >= 3
    for candidate in good:
        assert_good(candidate, tmp_path)
        assert candidate["family"] == "pyrochlore" and candidate["checks"]["spacegroup_number"] == 227


def test_bismuth_perovskites_not_in_mp(tmp_path):
    code, result = search("a perovskite containing Bi that is not in the Materials Project", tmp_path)
    assert code == 0
    good = [c for c in result["candidates"] if c["plausible"]]
    assert len(good) >= 3
    for candidate in good:
        assert_good(candidate, tmp_path)
        assert "Bi" in parse_formula(candidate["reduced_formula"]).reduced_amounts
        assert "MP" not in check_formula(candidate["reduced_formula"])["known_in"]


@pytest.mark.parametrize(
    ("request_text", "kind"),
    [("make me a sandwich", "RequestNotUnderstood"), ("a spinel without oxygen, sulphur, selenium or any anion", "SpecConflict")],
)
def test_requests_that_cannot_be_searched(tmp_path, request_text, kind):
    code, result = search(request_text, tmp_path)
    assert code == 1
    assert result["error_kind"] == kind and result["error"] and result["candidates"] == []
    assert "Not searched" in (tmp_path / "report.md").read_text()
    human = runner.invoke(app, ["search", request_text])
    assert human.exit_code == 1 and "not searched" in human.output
