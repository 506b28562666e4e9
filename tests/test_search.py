"""The one-shot hierarchical search (offline planner), as the acceptance list states it."""

import json
from pathlib import Path

import pytest
from fake_anthropic import prompt_text
from typer.testing import CliRunner

from agent.cli import app
from tools.checks import check_formula
from tools.formula import parse_formula
from tools.lookup import neighbours
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
    # each candidate says how it relates to known compounds (tools.lookup.neighbours)
    for candidate in saved["candidates"]:
        assert candidate["neighbours"] == neighbours(candidate["reduced_formula"], spacegroup=candidate["checks"]["spacegroup_number"])
        assert 1 <= len(candidate["neighbours"]) <= 3 and candidate["neighbours_note"]
        assert "Mn" in candidate["neighbours"][0]["formula"] or candidate["neighbours"][0]["match"] == "stoichiometry"
    section = report.split("## Known neighbours\n\n", 1)[1].splitlines()
    assert [line.split("**")[1] for line in section] == [c["formula"] for c, _ in good]


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


def _claude_planner_replies(reading: dict, formulas: list[str]):
    """The fake's answers: ``reading`` for the planner's RequestReading, then ``formulas`` as proposals."""
    from fake_anthropic import answer, prompt_text

    def respond(body):
        if "read materials-science requests" in prompt_text(body):
            return answer(body, reading)
        return answer(body, {"proposals": [{"formula": f, "rationale": "fake Claude", "confidence": 0.8} for f in formulas]})

    return respond


# What the rules could never read from "a novel spinel oxide containing Mn": Co excluded, MnAl2O4 ruled
# out, and a stoichiometry no formula can have (dropped alone, with a note, not the whole reading).
CLAUDE_READING = {"family": "spinel", "anion_class": "oxide", "required_elements": ["Mn"], "novel_against": ["MP", "ICSD"],
                  "excluded_elements": ["Co"], "exclude_formulas": ["MnAl2O4"], "stoichiometry": "1:0"}
QUICK = {"budget": {"proposals": 3, "formulas": 1, "structures_per_formula": 1, "relax_steps": 0, "rounds": 1}, "n_results": 1}


@pytest.mark.parametrize("model", [None, "claude-haiku-5-5"])
def test_search_with_the_claude_planner(anthropic_env, monkeypatch, tmp_path, model):
    from agent.planner import Planner, default_planner
    from agent.search import run_search, write_results

    server = anthropic_env(_claude_planner_replies(CLAUDE_READING, ["MnGa2O4", "MnCo2O4", "Qq2O4"]))
    if model:
        monkeypatch.setenv("GENMS_CLAUDE_MODEL", model)
    assert default_planner().name == "claude"
    result = run_search("a novel spinel oxide containing Mn", QUICK, planner=Planner(use_claude=True))
    assert len(server.requests) == 2 and {r["body"]["model"] for r in server.requests} == {model or "claude-sonnet-5-5"}
    # the result carries Claude's reading, which the offline rules would never produce
    assert result.spec["excluded_elements"] == ["Co"] and result.spec["exclude_formulas"] == ["MnAl2O4"]
    assert result.spec["stoichiometry"] is None and result.spec["budget"]["proposals"] == 3  # the caller's budget stays
    assert result.planner == "claude" and result.steps["propose"] == ["claude"]
    assert result.steps["understand"].startswith("claude (stoichiometry=1:0 ignored")
    understood = next(d["reason"] for d in result.decisions if d["step"] == "understand")
    assert "read by: claude" in understood
    screen_reason = next(d["reason"] for d in result.decisions if d["step"] == "screen")
    assert screen_reason.startswith("claude proposer: 3 formulae, 1 passed")  # MnCo2O4: Co is excluded
    assert [c["formula"] for c in result.good] == ["MnGa2O4"]
    proposer_prompt = prompt_text(server.requests[1]["body"])
    assert "<retrieved_passages" in proposer_prompt and 'title="Spinel AB2X4 (genms catalogue)"' in proposer_prompt
    assert result.claude["calls"] == result.claude["answered"] == 2 and result.claude["cost_usd"] > 0
    write_results(result, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["planner"] == "claude" and saved["claude"]["model"] == (model or "claude-sonnet-5-5")
    report = (tmp_path / "report.md").read_text()
    assert saved["claude"]["output_tokens"] > 0 and "Claude claude-" in report and "Proposer each round: claude." in report


def test_a_second_round_shows_claude_the_tried_formulae(anthropic_env):
    from agent.planner import Planner
    from agent.search import run_search

    server = anthropic_env(_claude_planner_replies(CLAUDE_READING, ["MnAl2O4", "Qq2O4"]))
    budget = {**QUICK["budget"], "rounds": 2}
    result = run_search("a novel spinel oxide containing Mn", {**QUICK, "budget": budget}, planner=Planner(use_claude=True))
    assert len(server.requests) == 3 and result.steps["propose"] == ["claude", "claude"]
    second = prompt_text(server.requests[2]["body"])
    assert "- MnAl2O4: rejected by" in second and "- Qq2O4: rejected by regex" in second


def test_a_fatal_claude_error_ends_claude_use_for_the_run(anthropic_env, monkeypatch):
    from agent.planner import Planner
    from agent.search import run_search

    server = anthropic_env(_claude_planner_replies(CLAUDE_READING, ["MnGa2O4"]))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "revoked-key")  # 401 authentication_error
    result = run_search("a novel spinel oxide containing Mn", QUICK, planner=Planner(use_claude=True))
    assert len(server.requests) == 1  # not again for the proposer
    assert result.planner.startswith("offline (Claude failed: fatal: 401 authentication_error")
    assert result.steps["understand"].startswith("rules (Claude failed: fatal: 401")
    assert result.steps["propose"][0].startswith("offline (Claude failed: fatal: Claude is off for this run")
    assert result.spec["excluded_elements"] == [] and result.good  # the offline path went on
    assert result.claude["disabled"].startswith("401 authentication_error")


def test_a_retired_model_is_not_called(anthropic_env, monkeypatch):
    from agent.planner import Planner

    server = anthropic_env(_claude_planner_replies(CLAUDE_READING, ["MnGa2O4"]))
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", "claude-sonnet-4-5")
    planner = Planner(use_claude=True)
    spec = planner.understand("a novel spinel oxide containing Mn")
    assert spec.family == "spinel" and not server.requests
    assert "deprecated (end of life November 30th, 2026)" in planner.steps["understand"]


def test_claude_planner_falls_back_to_the_rules(anthropic_env):
    from agent.planner import Planner

    anthropic_env(lambda body: {}, status=500)
    planner = Planner(use_claude=True)
    spec = planner.understand("a pyrochlore oxide not in the Materials Project")
    assert spec.family == "pyrochlore" and spec.novel_against == ["MP"]
    assert planner.steps["understand"].startswith("rules (Claude failed: transient: 500 api_error")


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


def test_claude_reading_is_kept_field_by_field():
    """One invalid field of Claude's reading is dropped with a note, not the whole reading; a band gap
    of 0 eV is a value; the caller's own fields win."""
    from agent.planner import RequestReading, spec_from_reading

    reading = RequestReading(family="perovskite", band_gap=0.0, electronic="metal", required_elements=["Qq"],
                             spacegroup=999, excluded_elements=["Pb"])
    spec, notes = spec_from_reading("a metallic perovskite", reading, {"n_results": 3})
    assert spec.family == "perovskite" and spec.band_gap == 0.0 and spec.electronic == "metal"
    assert spec.excluded_elements == ["Pb"] and spec.required_elements == [] and spec.spacegroup is None
    assert [n.split(" ignored")[0] for n in notes] == ["required_elements=['Qq']", "spacegroup=999"]
    kept, _ = spec_from_reading("a cubic perovskite", RequestReading(family="perovskite", spacegroup=221), {"spacegroup": 225})
    assert kept.spacegroup == 225 and kept.request == "a cubic perovskite"
