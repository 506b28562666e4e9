"""The one-shot hierarchical search (offline planner), as the acceptance list states it."""

import json
from pathlib import Path

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


def good_of(request, out, at_least=3):
    """Run a search and return its plausible candidates, each checked by :func:`assert_good`."""
    code, result = search(request, out)
    assert code == 0
    good = [c for c in result["candidates"] if c["plausible"]]
    assert len(good) >= at_least
    return [(candidate, assert_good(candidate, out)) for candidate in good]


def test_novel_manganese_spinels(tmp_path):
    good = good_of("a novel spinel oxide containing Mn", tmp_path)
    for candidate, structure in good:
        amounts = parse_formula(candidate["reduced_formula"]).reduced_amounts
        assert sorted(amounts.values()) == [1, 2, 4] and amounts.get("O") == 4 and "Mn" in amounts
        assert not {"MP", "ICSD"} & set(check_formula(candidate["reduced_formula"])["known_in"])
        assert len(structure) == 14  # the spinel's primitive cell
        assert candidate["density"] == pytest.approx(structure.density, abs=1e-3)
    saved = json.loads((tmp_path / "results.json").read_text())
    steps = [d["step"] for d in saved["decisions"]]
    assert steps[0] == "understand" and "screen" in steps and "score" in steps and steps[-1] == "report"
    assert all(d["reason"] for d in saved["decisions"])
    assert saved["spec"]["family"] == "spinel" and saved["timings"]
    report = (tmp_path / "report.md").read_text()
    assert "## Decisions" in report and good[0][0]["formula"] in report


def test_pyrochlore_oxides(tmp_path):
    from memory.runs import RunStore
    from tools.knowledge import recall_candidates

    for candidate, _ in good_of("a pyrochlore oxide", tmp_path):
        assert candidate["family"] == "pyrochlore" and candidate["checks"]["spacegroup_number"] == 227
    saved = json.loads((tmp_path / "results.json").read_text())
    retrieved = next(d for d in saved["decisions"] if d["step"] == "retrieve")
    assert retrieved["decision"] == "ground" and "Pyrochlore A2B2X7 (genms catalogue)" in retrieved["reason"]
    assert saved["context"][0]["source"] == "genms://knowledge/families/pyrochlore"
    assert "## Background retrieved" in (tmp_path / "report.md").read_text()
    # the run is recorded in memory, its candidates searchable by meaning
    run = RunStore().list(limit=1)[0]
    assert run["request"] == "a pyrochlore oxide" and run["n_good"] >= 3
    remembered = recall_candidates("pyrochlores we found", k=50, good_only=True)
    assert {c.formula for c in remembered if c.run_id == run["run_id"]} == {c["formula"] for c in run["best"]}


def test_bismuth_perovskites_not_in_mp(tmp_path):
    for candidate, _ in good_of("a perovskite containing Bi that is not in the Materials Project", tmp_path):
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


def test_search_with_the_claude_planner(anthropic_env):
    from agent.planner import Planner, default_planner
    from agent.search import run_search
    from fake_anthropic import message, tool_use

    def respond(body):
        tool = body["tools"][0]["name"]
        if tool == "SearchSpec":  # the planner reads the request
            spec = {"family": "spinel", "anion_class": "oxide", "required_elements": ["Mn"], "novel_against": ["MP", "ICSD"]}
            return message([tool_use(tool, spec)], stop_reason="tool_use")
        proposals = [{"formula": f, "rationale": "fake Claude", "confidence": 0.8} for f in ("MnGa2O4", "MnAl2O4", "Qq2O4")]
        return message([tool_use(tool, {"proposals": proposals})], stop_reason="tool_use")

    server = anthropic_env(respond)
    assert default_planner().name == "claude"
    budget = {"proposals": 3, "formulas": 1, "structures_per_formula": 1, "relax_steps": 0, "rounds": 1}
    result = run_search("a novel spinel oxide containing Mn", {"budget": budget, "n_results": 1}, planner=Planner(use_claude=True))
    assert len(server.requests) == 2 and result.planner == "claude"
    assert result.spec["family"] == "spinel" and result.spec["required_elements"] == ["Mn"]
    screen_reason = next(d["reason"] for d in result.decisions if d["step"] == "screen")
    assert screen_reason.startswith("claude proposer: 3 formulae, 1 passed")
    assert [c["formula"] for c in result.good] == ["MnGa2O4"]
    proposer_prompt = server.requests[1]["body"]["messages"][0]["content"]
    assert "<retrieved_passages" in proposer_prompt and 'title="Spinel AB2X4 (genms catalogue)"' in proposer_prompt


def test_claude_planner_falls_back_to_the_rules(anthropic_env):
    from agent.planner import Planner

    anthropic_env(lambda body: {}, status=500)
    spec = Planner(use_claude=True).understand("a pyrochlore oxide not in the Materials Project")
    assert spec.family == "pyrochlore" and spec.novel_against == ["MP"]


def test_generate_step_switches_generator_for_formulae_without_a_prototype():
    import time

    from agent.graph import generate
    from tools.spec import parse_request

    survivors = [
        {"formula": f, "reduced_formula": f, "score": 0.5, "rationale": "", "oxidation_states": {}, "known_in": []}
        for f in ("Li2Mn4O5", "LiMn2O4")
    ]

    def generators_used(request: str) -> tuple[dict, str]:
        spec = parse_request(request, budget={"formulas": 2, "structures_per_formula": 1})
        update = generate({"spec": spec.model_dump(), "survivors": survivors, "round": 1, "started_at": time.time()})
        used = {batch["item"]["formula"]: batch["structures"][0]["generator"] for batch in update["pending"]}
        return used, update["decisions"][0]["reason"]

    used, reason = generators_used("five diverse low-energy Li-Mn-O crystals")  # default: GenMS's diffusion model
    assert used == {"Li2Mn4O5": "diffusion", "LiMn2O4": "diffusion"} and "(diffusion 2)" in reason
    used, reason = generators_used("five diverse low-energy Li-Mn-O crystals by prototype substitution")
    assert used == {"Li2Mn4O5": "random_symmetric", "LiMn2O4": "template"}
    assert "switched generator for 1: Li2Mn4O5: no prototype fits" in reason


def test_density_target_orders_good_candidates():
    from agent.graph import rank_key
    from tools.spec import SearchSpec

    base = {"plausible": True, "checks": {"cif_valid": True, "structurally_valid": True, "charge_balanced": True},
            "formation_energy_per_atom": -3.0}
    light = {**base, "density": 4.0, "e_above_hull": 0.0}
    heavy = {**base, "density": 6.4, "e_above_hull": 0.1}
    assert sorted([light, heavy], key=rank_key(SearchSpec(family="garnet", density=6.5)))[0] is heavy
    assert sorted([light, heavy], key=rank_key(SearchSpec(family="garnet")))[0] is light
    far = {**light, "e_above_hull": 1.5}  # beyond the hull limit: not good, ranked last
    assert sorted([far, heavy], key=rank_key(SearchSpec(family="garnet")))[-1] is far


def test_search_without_out_saves_a_run_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("GENMS_HOME", str(tmp_path))
    budget = ["-H", "6", "-W", "1", "-L", "1", "--relax-steps", "0", "-n", "1", "--rounds", "1"]
    result = runner.invoke(app, ["search", "a pyrochlore oxide", "--json", *budget])
    assert result.exit_code == 0
    files = json.loads(result.stdout)["files"]
    assert Path(files["results"]).parent.parent == tmp_path / "runs"
    assert json.loads(Path(files["results"]).read_text())["spec"]["family"] == "pyrochlore"


def test_stop_event_ends_the_search_inside_its_step():
    import threading

    from agent.graph import SearchStopped
    from agent.search import run_search

    stop, stages = threading.Event(), []

    def on_progress(event: dict) -> None:
        if "stage" in event:
            stages.append(event["stage"])
            if event["stage"] == "generate":
                stop.set()  # as Ctrl-C in the chat does

    with pytest.raises(SearchStopped, match="stopped by the caller"):
        run_search("a novel spinel oxide containing Mn", {"budget": {"proposals": 12, "formulas": 3, "structures_per_formula": 2,
                                                                    "rounds": 1, "relax_steps": 200}},
                   on_progress=on_progress, stop=stop)
    assert "generate" in stages and "relax" not in stages  # no structure was relaxed after the stop
