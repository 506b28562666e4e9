"""Evaluation suites: metrics on hand-made true and false cases, suite validation, the runner
(resume after a kill, worker processes, a local Ray instance), skipped parts, the LLM baseline
against a fake Anthropic server, and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from evals import metrics as m
from evals.suite import SuiteError, bundled_suites, expand, load_suite, parse_suite
from tools.structure import write_cif

ROOT = Path(__file__).resolve().parents[1]


def _cif(structure: Structure) -> str:
    return write_cif(structure)


# ---------------------------------------------------------------------------- metrics


def test_cif_and_structural_validity(srtio3, examples):
    good = _cif(srtio3)
    overlapping = (examples / "overlapping_atoms.cif").read_text()
    assert m.cif_valid(good) and m.structurally_valid(good)
    assert not m.cif_valid((examples / "not_a_cif.cif").read_text())
    assert not m.cif_valid(None) and not m.cif_valid("")
    assert m.cif_valid(overlapping) and not m.structurally_valid(overlapping)
    squeezed = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])  # 0.3 Å apart
    assert not m.structurally_valid(_cif(squeezed))
    assert not m.structurally_valid("garbage")


def test_composition_validity_and_formula_checks():
    assert m.composition_valid("SrTiO3") and m.composition_valid("Cu2MnAl")  # alloys count as valid (SMACT)
    assert not m.composition_valid("NaCl2") and not m.composition_valid("Xx2O") and not m.composition_valid(None)
    assert m.valid_formula("SrTiO3", "perovskite") and m.valid_formula("MgAl2O4", "spinel")
    assert not m.valid_formula("MgAl2O4", "perovskite")  # valid, but not the family asked for
    assert not m.valid_formula("NaCl2") and not m.valid_formula("Qq3")
    assert m.contains_element("LiMnO2", "Mn") and not m.contains_element("LiCoO2", "Mn") and not m.contains_element("Xx", "Mn")
    assert m.all_metals("Cu2MnAl") and not m.all_metals("LiMnO2") and not m.all_metals("Qq")


def test_uniqueness_against_mp_icsd_and_a_list():
    assert not m.formula_unique("SrTiO3") and not m.formula_unique("Sr2Ti2O6")  # reduced form is in MP
    assert m.formula_unique("KPdCl3")  # in neither MP nor ICSD
    assert not m.formula_unique("KPdCl3", exclude=["K2Pd2Cl6"])
    assert not m.formula_unique("not a formula")
    assert m.not_in_list("BaTiO3", ["Sr2Ti2O6", "CaTiO3"]) and not m.not_in_list("SrTiO3", ["Sr2Ti2O6"])
    assert m.not_in_list("SrTiO3", [])  # known in MP, but the list is what counts here


def test_match_rate_against_family_references(srtio3, rocksalt_nacl, perturb):
    assert m.family_match(_cif(srtio3), "perovskite")
    assert m.family_match(_cif(perturb(srtio3, displacement=0.05, strain=0.02)), "perovskite")
    assert not m.family_match(_cif(srtio3), "spinel")  # ABX3 meets no AB2X4 reference
    assert not m.family_match(_cif(rocksalt_nacl), "perovskite")
    assert not m.family_match(_cif(srtio3), None) and not m.family_match("garbage", "perovskite")


def test_csp_and_best_of_n_items():
    matched = {"rms": 0.05, "comp_valid": True, "struct_valid": True}
    assert m.csp_matched(matched) and m.csp_rms(matched) == 0.05
    for unmatched in ({"rms": None, "comp_valid": True, "struct_valid": True}, {"rms": 0.05, "comp_valid": False, "struct_valid": True},
                      {"rms": 0.05, "comp_valid": True, "struct_valid": False}):
        assert not m.csp_matched(unmatched) and m.csp_rms(unmatched) is None
    assert m.best_of_n_gain([-1.0, -1.5, None, -1.2]) == pytest.approx(0.5) and m.best_of_n_improved([-1.0, -1.5]) is True
    assert m.best_of_n_gain([-2.0, -1.5]) == 0 and m.best_of_n_improved([-2.0, -1.5]) is False
    assert m.best_of_n_gain([None, -1.0]) is None and m.best_of_n_improved([]) is None


def test_csp_pair_uses_the_benchmark_checks(rocksalt_nacl, srtio3, perturb):
    from evals.bench_csp_diffusion import evaluate_structure as _csp_pair

    same = _csp_pair(perturb(rocksalt_nacl, displacement=0.05, strain=0.01), _cif(rocksalt_nacl))
    assert m.csp_matched(same) and 0 < m.csp_rms(same) < 0.1 and same["project_valid"]
    other = _csp_pair(srtio3, _cif(rocksalt_nacl))
    assert not m.csp_matched(other) and other["rms"] is None
    missing = _csp_pair(None, _cif(rocksalt_nacl))
    assert not missing["constructed"] and not m.csp_matched(missing)


def test_csp_composition_gate_follows_the_diffcsp_metric():
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    from evals.bench_csp_diffusion import composition_valid

    assert composition_valid((("O", 3), ("Sr", 1), ("Ti", 1))) and composition_valid((("Al", 1), ("Cu", 2), ("Mn", 1)))
    assert not composition_valid((("Cl", 2), ("Na", 1)))
    # Pm has no Pauling electronegativity: SMACT >= 3 fails it, the SMACT 2 metric of DiffCSP passed it.
    assert not smact_validity(Composition("PmBr3"), oxidation_states_set="smact14")
    assert composition_valid((("Br", 3), ("Pm", 1))) and composition_valid((("Br", 6), ("Pm", 2)))
    assert not composition_valid((("Br", 5), ("Pm", 1)))  # still charge-balanced or nothing


def test_metric_catalogue_values_and_pooling(srtio3):
    case = {"family": "perovskite", "expect": {"element": "Mn", "metal": True, "unique_against": ["SrTiO3"]}}
    samples = [{"formula": "SrTiO3", "cif": _cif(srtio3), "formation_energy_per_atom": -3.0, "e_above_hull": 0.0},
               {"formula": "NaCl2", "cif": "garbage", "formation_energy_per_atom": None, "e_above_hull": None},
               {"formula": "KPdCl3", "cif": _cif(srtio3), "formation_energy_per_atom": -1.0, "e_above_hull": 0.2}]
    record = {"status": "ok", "samples": samples, "seconds": 12.0, "energies": [-1.0, -1.4],
              "proposals": [{"formula": "LiMnO2"}, {"formula": "SrTiO3"}, {"formula": "Cu2MnAl"}, {"formula": "Qq"}],
              "figures": {"median_e_form": -2.5}}

    def pooled(name):
        return m.pool(m.METRICS[name], m.values_of(m.METRICS[name], record, case))

    assert pooled("cif_validity") == pytest.approx(200 / 3)
    assert pooled("structural_validity") == pytest.approx(200 / 3)
    assert pooled("composition_validity") == pytest.approx(200 / 3)
    assert pooled("uniqueness") == pytest.approx(200 / 3)  # SrTiO3 is known; NaCl2 and KPdCl3 are in neither MP nor ICSD
    assert pooled("match_rate") == pytest.approx(200 / 3)
    assert pooled("formation_energy_mean") == pytest.approx(-2.0) and pooled("formation_energy_median") == pytest.approx(-2.0)
    assert pooled("e_above_hull_mean") == pytest.approx(0.1)
    assert pooled("seconds_per_request") == 12.0 and pooled("structures_per_request") == 3
    assert pooled("element_present") == 50.0  # LiMnO2, Cu2MnAl of four
    assert pooled("metal_rate") == 25.0  # Cu2MnAl
    assert pooled("unique_against_list") == 50.0  # SrTiO3 listed, Qq unparsable
    assert pooled("valid_formula_rate") == 25.0  # only SrTiO3 is a valid perovskite
    assert pooled("best_of_n_improved") == 100.0 and pooled("best_of_n_gain") == pytest.approx(0.4)
    assert pooled("gfn_median_e_form") == -2.5
    assert pooled("e_above_hull_median") == pytest.approx(0.1)
    assert pooled("proposal_uniqueness") == 0.0  # LiMnO2, SrTiO3, Cu2MnAl are in MP; Qq does not parse
    assert m.METRICS["proposal_uniqueness"].value({"formula": "KPdCl3"}, case) is True
    record["pairs"] = [{"rms": 0.1, "comp_valid": True, "struct_valid": True}, {"rms": 0.3, "comp_valid": True, "struct_valid": True},
                       {"rms": None, "comp_valid": True, "struct_valid": True}, {"rms": 0.2, "comp_valid": False, "struct_valid": True}]
    assert pooled("csp_match_rate") == 50.0 and pooled("csp_rmse") == pytest.approx(0.2) and pooled("csp_valid") == 75.0
    figures = {"median_e_form": -2.5, "frac_e_form_below_-2": 0.7, "wyckoff_compatible_pct": 99.0, "lattice_valid_pct": 98.0,
               "smact_valid_pct": 97.0, "charge_neutral_pct_no_pauling": 96.0, "distinct_space_groups": 40,
               "distinct_elements": 22, "sampling_seconds": 3.0}
    record["figures"] = figures
    gfn = {name: pooled(name) for name in m.TASK_METRICS["gfn"]}
    assert sorted(gfn.values()) == sorted(float(v) for v in figures.values())
    assert m.values_of(m.METRICS["gfn_lattice_valid"], {"figures": {}}, case) == [None]
    # an expectation the case does not set gives no value at all, not a false one
    assert m.values_of(m.METRICS["element_present"], record, {"expect": {"metal": True}}) == [None] * 4
    assert m.pool(m.METRICS["match_rate"], [None, None]) is None
    # annotate stores item values that values_of then reads back
    m.annotate(record, case, ["match_rate", "seconds_per_request"])
    assert [s["values"]["match_rate"] for s in samples] == [True, False, True]


def test_generated_variants_are_reproducible():
    """Resumed suites need generators that give the same structures for the same seed."""
    from tools.generation import generate_template

    first = [g.structure for g in generate_template("GaSb", n=4, seed=3)]
    again = [g.structure for g in generate_template("GaSb", n=4, seed=3)]
    assert any(g.variant for g in generate_template("GaSb", n=4, seed=3))  # rattled variants are among them
    assert all(a == b for a, b in zip(first, again))
    assert any(a != b for a, b in zip(first, [g.structure for g in generate_template("GaSb", n=4, seed=4)]))


def test_random_symmetric_structures_are_reproducible():
    from tools.generation import generate_random

    first = [g.structure for g in generate_random("KPdCl3", n=2, seed=0)]
    assert first == [g.structure for g in generate_random("KPdCl3", n=2, seed=0)]
    assert first != [g.structure for g in generate_random("KPdCl3", n=2, seed=1)]


# ---------------------------------------------------------------------------- suites


BASE = {"name": "t", "task": "search", "cases": [{"id": "p", "request": "a perovskite", "family": "perovskite"}],
        "systems": [{"name": "genms", "kind": "genms"}], "metrics": ["match_rate"]}


@pytest.mark.parametrize("change, message", [
    ({"metrics": ["match_rat"]}, "unknown metric 'match_rat'"),
    ({"metrics": ["csp_rmse"]}, "does not apply to task 'search'"),
    ({"cases": [{"id": "p"}]}, "case 'p': task 'search' needs a 'request'"),
    ({"cases": [{"id": "p", "request": "x", "family": "quasicrystal"}]}, "unknown crystal family 'quasicrystal'"),
    ({"systems": [{"name": "g", "kind": "generator"}]}, "needs 'generator'"),
    ({"systems": [{"name": "g", "kind": "gfn"}]}, "cannot run task 'search'"),
    ({"budjet": {"proposals": 3}}, "budjet: Extra inputs are not permitted"),
    ({"budget": {"proposals": 0}}, "budget.proposals: Input should be greater than or equal to 1"),
    ({"grid": {"proposal": [4]}}, "grid field 'proposal' is not a budget field"),
    ({"task": "dance"}, "task: Input should be"),
    ({"cases": [{"id": "p", "request": "x"}, {"id": "p", "request": "y"}]}, "duplicate case ids: p"),
    ({"cases": []}, "cases: List should have at least 1 item"),
])
def test_suite_validation_errors(change, message):
    with pytest.raises(SuiteError) as error:
        parse_suite({**BASE, **change}, "bad.yaml")
    assert message in str(error.value) and "bad.yaml is not a valid suite" in str(error.value)


def test_suite_files_load_and_expand(tmp_path):
    names = {p.stem for p in bundled_suites()}
    assert {"families", "search_effect", "language_control", "rag_effect", "best_of_n", "csp", "gfn"} <= names
    for path in bundled_suites():
        assert load_suite(path).name == path.stem
    families = load_suite("families")
    assert {"perovskite", "pyrochlore", "spinel"} <= {c.id for c in families.cases}
    assert len(expand(families)) == len(families.cases) * len(families.systems)
    grid = expand(load_suite("search_effect"))
    assert {u["variant"] for u in grid} == {"H=4 L=1", "H=4 L=4", "H=16 L=1", "H=16 L=4"}
    assert len({u["key"] for u in grid}) == len(grid)  # every unit has its own key
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(tmp_path / "broken.yaml")
    with pytest.raises(SuiteError, match="a suite is a YAML mapping"):
        parse_suite(["a", "list"])
    with pytest.raises(SuiteError, match="no suite file"):
        load_suite(tmp_path / "missing.yaml")


def test_unit_key_changes_with_budget_not_with_order():
    one = expand(parse_suite({**BASE, "budget": {"proposals": 4}}))[0]["key"]
    assert one == expand(parse_suite({**BASE, "budget": {"proposals": 4}}))[0]["key"]
    assert one != expand(parse_suite({**BASE, "budget": {"proposals": 5}}))[0]["key"]
    assert one != expand(parse_suite({**BASE, "budget": {"proposals": 4}, "seed": 1}))[0]["key"]


# ---------------------------------------------------------------------------- runner


# CHGNet scoring of prototype-substitution structures: the real scoring path, cheap.
BEST_OF_N = {
    "name": "tiny_best_of_n", "task": "best_of_n", "budget": {"samples": 3, "relax_steps": 0},
    "cases": [{"id": f, "formula": f} for f in ("GaTe", "InAs", "ZrN", "VN", "PbS", "GaSb")],
    "systems": [{"name": "prototype", "kind": "generator", "generator": "template"}],
    "metrics": ["best_of_n_improved", "best_of_n_gain", "formation_energy_mean", "formation_energy_median"],
}
# The offline proposer alone: no model to load, so worker start-up dominates.
PROPOSE = {
    "name": "tiny_propose", "task": "propose", "budget": {"proposals": 8},
    "cases": [{"id": "mn", "request": "a novel spinel oxide containing Mn", "expect": {"element": "Mn"}},
              {"id": "metal", "request": "a novel heusler compound", "expect": {"metal": True}}],
    "systems": [{"name": "proposer", "kind": "genms", "retrieval": False}],
    "metrics": ["element_present", "metal_rate", "proposal_uniqueness", "valid_formula_rate"],
}


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _write_suite(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_resume_after_kill_gives_the_same_metrics(tmp_path):
    from evals.runner import run_suite

    suite = parse_suite(BEST_OF_N)
    reference = run_suite(suite, tmp_path / "whole")
    rows = {r["case"]: r for r in reference["rows"]}
    assert all(r["status"] == "ok" for r in rows.values())
    assert all(-6 < r["metrics"]["formation_energy_mean"] < 0 for r in rows.values())
    assert rows["GaTe"]["metrics"]["best_of_n_gain"] >= 0

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from agent.cli import main; main()", "eval", "run", str(_write_suite(tmp_path, BEST_OF_N)),
               "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "cases").glob("*.json")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list((out / "cases").glob("*.json")))
    assert 1 <= finished < 6, f"the kill should land mid-run ({finished} of 6 finished)"
    assert not (out / "metrics.json").exists()

    resumed = run_suite(suite, out)
    info = json.loads((out / "run.json").read_text())
    assert info["resumed"] == finished and info["computed"] == 6 - finished
    assert resumed == reference
    assert (out / "metrics.json").read_text() == (tmp_path / "whole" / "metrics.json").read_text()
    # a third run computes nothing
    run_suite(suite, out)
    assert json.loads((out / "run.json").read_text())["computed"] == 0


def test_worker_processes_and_ray_give_the_same_metrics(tmp_path):
    from evals.backends import RayBackend
    from evals.runner import run_suite

    suite = parse_suite(PROPOSE)
    reference = run_suite(suite, tmp_path / "one")
    rows = {r["case"]: r["metrics"] for r in reference["rows"]}
    assert rows["mn"]["element_present"] == 100.0  # the offline proposer honours a required element
    assert rows["metal"]["metal_rate"] is not None and rows["mn"]["metal_rate"] is None
    assert run_suite(suite, tmp_path / "two", workers=2) == reference
    pytest.importorskip("ray")
    events = []
    assert run_suite(suite, tmp_path / "ray", ray_address="local", on_event=events.append) == reference
    assert events[0]["backend"] == "Ray (local)" and len(events) == 3  # a local instance with one CPU (workers=1)
    assert RayBackend("local").label == "Ray (local)"


def test_worker_failure_becomes_an_error_record():
    from evals.backends import _result

    unit = expand(parse_suite(BASE))[0]

    def crash():
        raise RuntimeError("worker killed")

    record = _result(unit, crash)
    assert record["status"] == "error" and "worker killed" in record["reason"] and record["key"] == unit["key"]
    assert _result(unit, lambda: {"status": "ok"}) == {"status": "ok"}


def test_aggregate_pools_repeats_and_reports_partial_rows():
    from evals.report import aggregate, markdown

    data = {**BASE, "cases": [{"id": "p", "request": "x", "family": "perovskite", "repeats": 2}],
            "metrics": ["formation_energy_mean", "structures_per_request"]}
    suite = parse_suite(data)
    first, second = expand(suite)
    records = {first["key"]: {"status": "ok", "samples": [{"formation_energy_per_atom": -1.0}, {"formation_energy_per_atom": -2.0}],
                              "dropped": [{"formula": "AbC", "reason": "no prototype fits AbC"}]},
               second["key"]: {"status": "ok", "samples": [{"formation_energy_per_atom": -3.0}]}}
    row = aggregate(suite, [first, second], records)["rows"][0]
    assert row["status"] == "ok" and row["units"] == 2
    assert row["metrics"] == {"formation_energy_mean": -2.0, "structures_per_request": 1.5}  # items pooled, not unit means
    assert row["dropped"] == {"count": 1, "examples": ["no prototype fits AbC"]}
    del records[second["key"]]
    result = aggregate(suite, [first, second], records)
    assert result["rows"][0]["status"] == "partial" and result["rows"][0]["metrics"]["formation_energy_mean"] == -1.5
    text = markdown(result, suite, None, [])
    assert "| p | genms | -1.500 | 2.0 |" in text and "**partial**: 1 of 2 units ok" in text and "no prototype fits AbC" in text


def test_grid_rows_and_plots(tmp_path):
    from evals.runner import run_suite

    data = {**PROPOSE, "name": "grid", "cases": PROPOSE["cases"][:1], "grid": {"proposals": [3, 6]}}
    result = run_suite(parse_suite(data), tmp_path)
    rows = {r["variant"]: r for r in result["overall"]}
    assert set(rows) == {"H=3", "H=6"} and all(r["status"] == "ok" for r in rows.values())
    records = [json.loads(p.read_text())["record"] for p in (tmp_path / "cases").glob("*.json")]
    assert sorted(len(r["proposals"]) for r in records) == [3, 6]  # each grid point ran with its own H
    report = (tmp_path / "report.md").read_text()
    assert "| mn | proposer | H=3 |" in report and "![grid_proposer](grid_proposer.png)" in report
    assert (tmp_path / "grid_proposer.png").stat().st_size > 1000


def test_skipped_parts_are_reported_not_faked(tmp_path, monkeypatch):
    from evals.runner import run_suite

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    data = {**BEST_OF_N, "name": "skips", "cases": BEST_OF_N["cases"][:1],
            "systems": BEST_OF_N["systems"] + [{"name": "diffusion", "kind": "generator", "generator": "no_such_generator"}]}
    result = run_suite(parse_suite(data), tmp_path)
    rows = {r["system"]: r for r in result["rows"]}
    assert rows["prototype"]["status"] == "ok"
    assert rows["diffusion"]["status"] == "skipped" and "'no_such_generator' is not registered" in rows["diffusion"]["reason"]
    assert all(v is None for v in rows["diffusion"]["metrics"].values())
    assert len(list((tmp_path / "cases").glob("*.json"))) == 1  # skipped units are not stored: tried again next time
    report = (tmp_path / "report.md").read_text()
    assert "skipped: generator 'no_such_generator' is not registered" in report and (tmp_path / "metrics.png").stat().st_size > 1000
    assert (tmp_path / "best_of_n.png").is_file()

    from evals.systems import generator_unavailable, run_unit

    # a registered generator whose weights are missing is skipped too (tools.<name>_generation.weights_available)
    monkeypatch.setattr("tools.diffusion_generation.weights_available", lambda *args: False)
    assert "'diffusion' has no trained weights yet" in generator_unavailable("diffusion")
    missing_weights = {**BEST_OF_N, "systems": [{"name": "diffusion", "kind": "generator", "generator": "diffusion"}]}
    record = run_unit(expand(parse_suite(missing_weights))[0])
    assert record["status"] == "skipped" and "no trained weights" in record["reason"]
    assert generator_unavailable("template") is None

    unit = expand(parse_suite({**BASE, "systems": [{"name": "llm", "kind": "llm_cif"}]}))[0]
    record = run_unit(unit)
    assert record["status"] == "skipped" and "ANTHROPIC_API_KEY is not set" in record["reason"]


@pytest.mark.parametrize("model", [None, "claude-haiku-5-5"])  # JSON-schema output; a forced tool call
def test_llm_cif_baseline_through_fake_server(anthropic_env, monkeypatch, srtio3, model):
    from fake_anthropic import answer, prompt_text

    from evals.systems import run_unit

    def respond(body):
        assert "<cif_example" in body["system"][0]["text"]  # the few-shot CIFs: the cached prefix
        assert "generate a novel stable perovskite" in prompt_text(body)
        structures = [{"formula": "SrTiO3", "cif": _cif(srtio3)}, {"formula": "BaZrO3", "cif": "data_x\nnot really a cif"}]
        return answer(body, {"structures": structures})

    server = anthropic_env(respond)
    if model:
        monkeypatch.setenv("GENMS_CLAUDE_MODEL", model)
    unit = expand(parse_suite(LLM_SUITE))[0]
    record = run_unit(unit)
    assert record["status"] == "ok" and len(server.requests) == 1
    assert server.requests[0]["body"]["model"] == (model or "claude-sonnet-5-5")
    assert server.requests[0]["body"]["max_tokens"] == 512 + 1500 * 2 + 4096  # two whole CIFs, plus thinking room
    assert record["planner"] == "claude" and record["claude"]["answered"] == 1 and record["claude"]["output_tokens"] > 0
    assert [s["formula"] for s in record["samples"]] == ["SrTiO3", "BaZrO3"]
    assert [s["values"]["cif_validity"] for s in record["samples"]] == [True, False]
    assert [s["values"]["match_rate"] for s in record["samples"]] == [True, False]
    assert [s["values"]["uniqueness"] for s in record["samples"]] == [False, False]  # both known in MP
    assert record["samples"][0]["formation_energy_per_atom"] < -2 and record["samples"][1]["formation_energy_per_atom"] is None
    from evals.report import aggregate, markdown

    suite = parse_suite(LLM_SUITE)
    result = aggregate(suite, [unit], {unit["key"]: record})
    overall = result["overall"][0]
    assert overall["planners"] == {"claude": 1} and overall["claude"]["calls"] == 1 and overall["claude"]["cost_usd"] > 0
    assert f"Claude {model or 'claude-sonnet-5-5'}: 1 calls (1 answered)" in markdown(result, suite, None, [])


def test_llm_cif_baseline_says_why_claude_failed(anthropic_env, monkeypatch):
    from evals.systems import run_unit

    server = anthropic_env(lambda body: {})
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", "claude-sonnet-4-5")  # retired: never called
    record = run_unit(expand(parse_suite(LLM_SUITE))[0])
    assert record["status"] == "error" and "Claude failed: fatal: Claude is off for this run: model claude-sonnet-4-5" in record["reason"]
    assert not server.requests and record["claude"]["calls"] == 0 and "deprecated" in record["claude"]["disabled"]


LLM_SUITE = {**BASE, "budget": {"samples": 2, "shots": 2, "relax_steps": 0},
             "cases": [{"id": "p", "request": "generate a novel stable perovskite", "family": "perovskite"}],
             "systems": [{"name": "llm", "kind": "llm_cif"}],
             "metrics": ["cif_validity", "structural_validity", "match_rate", "uniqueness", "formation_energy_mean"]}


def test_cli_list_and_bad_suite(tmp_path):
    from typer.testing import CliRunner

    from agent.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["eval", "list", "--json"])
    assert listed.exit_code == 0
    names = {item["name"]: item for item in json.loads(listed.stdout)}
    assert names["families"]["task"] == "search" and names["families"]["error"] is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "metrics": ["nope"]}))
    result = runner.invoke(app, ["eval", "run", str(bad)])
    assert result.exit_code == 2 and "unknown metric 'nope'" in result.output
