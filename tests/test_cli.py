"""The ``genms`` command line, driven as a user would: arguments in, JSON or tables out."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app

runner = CliRunner()


def run_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


def by_input(reports):
    return {report["input"]: report for report in reports}


def test_acceptance_formulas():
    code, reports = run_json("formula", "check", "SrTiO3", "MgAl2O4", "Sr4Ti4O12")
    assert code == 0
    reports = by_input(reports)
    srtio3 = reports["SrTiO3"]
    assert srtio3["valid"] and srtio3["error"] is None
    assert {"MP", "ICSD"} <= set(srtio3["known_in"])
    assert srtio3["charge_balanced"] and srtio3["electronegativity_ok"]
    assert srtio3["oxidation_states"] == {"Sr": [2], "Ti": [4], "O": [-2]}
    assert srtio3["elements"] == ["Sr", "Ti", "O"]
    assert "perovskite" in srtio3["families"]
    assert "spinel" in reports["MgAl2O4"]["families"] and reports["MgAl2O4"]["known_in"]
    assert reports["Sr4Ti4O12"]["reduced_formula"] == "SrTiO3"
    assert not reports["Sr4Ti4O12"]["unique"]


def test_bad_formulas_give_per_item_errors():
    bad = ["Xx2O", "H2O)(", "", "Fe-1", "Na" * 5000]
    code, reports = run_json("formula", "check", *bad)
    assert code == 1  # every input invalid
    assert [r["input"] for r in reports] == bad
    assert all(not r["valid"] and r["error"] for r in reports)
    messages = [r["error"] for r in reports]
    assert "unknown element 'Xx'" in messages[0]
    assert "unbalanced parentheses" in messages[1]
    assert messages[2] == "empty formula"
    assert "unexpected character '-'" in messages[3]
    assert "too long" in messages[4]


def test_one_good_formula_keeps_exit_zero():
    code, reports = run_json("formula", "check", "Xx2O", "NaCl")
    assert code == 0
    assert [r["valid"] for r in reports] == [False, True]


def test_formulas_from_file_and_exclusions(tmp_path):
    listing = tmp_path / "formulas.txt"
    listing.write_text("Zn2Ti2O7\n\nCdIn2S4\n")
    exclusions = tmp_path / "exclude.txt"
    exclusions.write_text("Zn4Ti4O14\n")
    code, reports = run_json("formula", "check", "--from-file", str(listing), "--exclude-file", str(exclusions))
    assert code == 0
    reports = by_input(reports)
    assert reports["Zn2Ti2O7"]["in_exclusion_list"] and not reports["Zn2Ti2O7"]["unique"]
    assert not reports["CdIn2S4"]["in_exclusion_list"]


def test_no_formulas_is_an_error():
    result = runner.invoke(app, ["formula", "check"])
    assert result.exit_code == 2
    assert "no formulas given" in result.output


def test_table_output_shows_errors():
    result = runner.invoke(app, ["formula", "check", "SrTiO3", "Xx2O"])
    assert result.exit_code == 0
    assert "SrTiO3" in result.stdout and "perovskite" in result.stdout
    assert "unknown element 'Xx'" in result.stdout


def test_structure_check_examples(examples):
    files = sorted(str(p) for p in examples.glob("*.cif"))
    code, reports = run_json("structure", "check", *files)
    assert code == 0
    reports = {Path(r["file"]).name: r for r in reports}
    good = reports["SrTiO3_perovskite.cif"]
    assert good["cif_valid"] and good["structurally_valid"] and good["composition_valid"]
    assert good["spacegroup_number"] == 221 and good["n_sites"] == 5
    assert good["reduced_formula"] == "SrTiO3" and "MP" in good["known_in"]
    assert good["min_distance"] == pytest.approx(1.9525, abs=1e-3)
    assert good["error"] is None
    overlapping = reports["overlapping_atoms.cif"]
    assert overlapping["cif_valid"] and not overlapping["structurally_valid"]
    assert "atoms overlap" in overlapping["error"]
    garbage = reports["not_a_cif.cif"]
    assert not garbage["cif_valid"] and "not a readable CIF" in garbage["error"]


def test_structure_check_all_bad_exits_nonzero(tmp_path, examples):
    missing = tmp_path / "missing.cif"
    code, reports = run_json("structure", "check", str(examples / "not_a_cif.cif"), str(missing))
    assert code == 1
    assert "cannot read file" in reports[1]["error"]


def test_oversized_cif_file(tmp_path):
    big = tmp_path / "big.cif"
    big.write_text("data_big\n" + "#" * 5_000_000)
    code, reports = run_json("structure", "check", str(big))
    assert code == 1
    assert "file too large" in reports[0]["error"]


def test_family_commands():
    code, families = run_json("family", "list")
    assert code == 0 and len(families) >= 17
    assert {"ratio": "1:1:3", "name": "ABX3"} in families[[f["name"] for f in families].index("perovskite")]["templates"]
    code, refs = run_json("family", "references", "pyrochlore", "--limit", "5")
    assert code == 0 and refs["family"] == "pyrochlore"
    assert refs["total"] >= 50 and len(refs["entries"]) == 5
    result = runner.invoke(app, ["family", "references", "quasicrystal"])
    assert result.exit_code == 2 and "unknown crystal family" in result.output


def test_doctor_json():
    code, report = run_json("doctor")
    assert code == 0 and report["ok"]
    assert report["packages"]["torch"].startswith("2.13.0")
    assert any(w.endswith(".pth.tar") for w in report["chgnet_weights"])
    assert all(report["data"]["files"].values())
    assert report["formula_index"]["formulas"] > 390_000
    assert report["planner"] in {"offline", "claude"}
    offline = {f["feature"]: f["offline"] for f in report["features"]}
    assert offline["formula checks (parse, SMACT, families)"] and offline["offline formula proposer + R_hi screen"]
    assert not offline["Claude planner, proposer, symmetry predictor (fall back offline)"]


def test_doctor_makes_one_tiny_claude_call(anthropic_env, monkeypatch):
    from agent.doctor import claude_check
    from fake_anthropic import message, text

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    offline = claude_check()
    assert not offline["called"] and "ANTHROPIC_API_KEY is not set" in offline["error"]
    server = anthropic_env(lambda body: message([text("OK")]))
    report = claude_check()
    assert report["answered"] and report["model"] == "claude-sonnet-5-5" and report["output"] == "JSON schema"
    assert len(server.requests) == 1 and server.requests[0]["body"]["max_tokens"] == 1024
    shown = runner.invoke(app, ["doctor"])
    assert "claude-sonnet-5-5 answered in" in shown.output and len(server.requests) == 2
    monkeypatch.setenv("ANTHROPIC_API_KEY", "revoked")
    failed = claude_check()
    assert failed["called"] and not failed["answered"] and failed["error"].startswith("fatal: 401 authentication_error")
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", "claude-sonnet-4-5")
    retired = claude_check()
    assert not retired["called"] and "deprecated (end of life November 30th, 2026)" in retired["error"]
    assert len(server.requests) == 3


def test_console_script_is_installed():
    genms = shutil.which("genms") or str(Path(sys.executable).parent / "genms")
    result = subprocess.run([genms, "formula", "check", "SrTiO3", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["reduced_formula"] == "SrTiO3"


def test_score_examples(examples):
    files = [str(examples / name) for name in ("SrTiO3_perovskite.cif", "overlapping_atoms.cif", "not_a_cif.cif")]
    code, reports = run_json("score", *files)
    assert code == 0
    good, overlapping, garbage = reports
    assert good["file"].endswith("SrTiO3_perovskite.cif")
    assert good["plausible"] and good["reason"] is None
    assert good["energy_per_atom"] == pytest.approx(-8.42, abs=0.1)
    assert good["formation_energy_per_atom"] == pytest.approx(-3.55, abs=0.15)  # MP: -3.55 eV/atom
    assert good["e_above_hull"] == pytest.approx(0.0, abs=0.1)
    assert good["max_force"] < 1e-3
    assert not overlapping["plausible"] and "atoms overlap" in overlapping["reason"]
    assert not garbage["plausible"] and "not a readable CIF" in garbage["reason"]


def test_score_relax(tmp_path, srtio3, perturb):
    from tools.structure import write_cif

    path = tmp_path / "shaken.cif"
    path.write_text(write_cif(perturb(srtio3, seed=5)))
    code, reports = run_json("score", str(path), "--relax", "--max-steps", "300")
    assert code == 0
    report = reports[0]
    assert report["relax_converged"] and report["energy_drop_per_atom"] > 0.05
    assert 0 < report["rmsd"] < 0.6
    assert report["plausible"] and "_cell_length_a" in report["relaxed_cif"]


def test_score_rejects_out_of_range_options(examples):
    result = runner.invoke(app, ["score", str(examples / "NaCl_rocksalt.cif"), "--fmax", "5"])
    assert result.exit_code == 2
    code, reports = run_json("score", str(examples / "not_a_cif.cif"))
    assert code == 1 and not reports[0]["plausible"]


def test_a_claude_failure_is_one_line_on_stderr_and_the_traceback_goes_to_the_log(anthropic_env, tmp_path):
    """The console script logs warnings as one line (no traceback on the terminal) and keeps the
    details in $GENMS_HOME/genms.log; the command still answers, offline."""
    import os

    from fake_anthropic import answer

    anthropic_env(lambda body: answer(body, {"proposals": []}))
    genms = shutil.which("genms") or str(Path(sys.executable).parent / "genms")
    env = {**os.environ, "ANTHROPIC_API_KEY": "revoked", "GENMS_HOME": str(tmp_path)}
    done = subprocess.run([genms, "formula", "propose", "a novel spinel oxide containing Mn", "-n", "3", "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 3
    warnings = [line for line in done.stderr.splitlines() if line.startswith("genms: warning:")]
    assert any("Claude is off for the rest of this run: 401 authentication_error" in line for line in warnings)
    assert "Traceback" not in done.stderr
    assert "Claude proposer failed, using the offline proposer" in (tmp_path / "genms.log").read_text()
