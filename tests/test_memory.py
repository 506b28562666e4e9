"""Memory: run records (atomic, concurrent, traversal-proof) and the candidates collection."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memory.candidates import CandidateMemory
from memory.runs import InvalidRunId, RunNotFound, RunStore, new_run_id
from tools.knowledge import recall_candidates, remember_candidates
from tools.screen import screen
from tools.spec import parse_request

ROOT = Path(__file__).resolve().parents[1]


def fake_candidate(formula: str, family: str, e_hull: float, known: list[str] | None = None) -> dict:
    return {
        "formula": formula, "reduced_formula": formula, "family": family, "prototype": "MgAl2O4" if family == "spinel" else "Y2Ti2O7",
        "generator": "template", "checks": {"spacegroup_symbol": "Fd-3m"}, "formation_energy_per_atom": -2.5,
        "e_above_hull": e_hull, "known_in": known or [], "plausible": True, "reason": None, "cif_path": f"cifs/01_{formula}.cif",
    }


def save_fake_run(store: RunStore, request: str, candidates: list[dict]) -> str:
    run_id = new_run_id()
    files = {c["cif_path"]: f"data_{c['formula']}\n" for c in candidates}
    files["results.json"] = json.dumps({"request": request, "candidates": candidates})
    files["report.md"] = f"# genms search: {request}\n"
    summary = {"request": request, "planner": "offline", "seconds": 1.0, "family": None,
               "n_candidates": len(candidates), "n_good": len(candidates), "best": []}
    folder = store.save(run_id, files, summary)
    remember_candidates(run_id, request, candidates, candidates, folder)
    return run_id


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Runs and the vector store in a folder of their own."""
    monkeypatch.setenv("GENMS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMS_VECTOR_DIR", str(tmp_path / "home" / "chroma"))
    return tmp_path / "home"


def test_run_store_round_trip_and_listing(home):
    store = RunStore()
    first = save_fake_run(store, "a spinel oxide containing Mn", [fake_candidate("MnGa2O4", "spinel", 0.02)])
    time.sleep(1.1)  # run ids sort by their UTC second
    second = save_fake_run(store, "a pyrochlore oxide", [fake_candidate("Bi2Hf2O7", "pyrochlore", 0.05)])
    assert store.ids() == [second, first]
    assert [r["request"] for r in store.list()] == ["a pyrochlore oxide", "a spinel oxide containing Mn"]
    loaded = store.load(first)
    assert loaded["run_id"] == first and loaded["candidates"][0]["formula"] == "MnGa2O4"
    assert loaded["files"] == ["cifs/01_MnGa2O4.cif", "report.md", "results.json", "run.json"]
    assert store.file(first, "cifs/01_MnGa2O4.cif").read_text() == "data_MnGa2O4\n"
    assert store.list(limit=1)[0]["run_id"] == second


@pytest.mark.parametrize("bad", ["../../etc", "..", "a/b", "", "x" * 200, "run id", ".tmp-x"])
def test_run_ids_that_could_leave_the_store_are_refused(home, bad):
    store = RunStore()
    with pytest.raises(InvalidRunId):
        store.load(bad)
    with pytest.raises(InvalidRunId):
        store.path(bad)


def test_file_names_that_could_leave_a_run_are_refused(home):
    store = RunStore()
    run_id = save_fake_run(store, "a spinel", [fake_candidate("MnGa2O4", "spinel", 0.0)])
    for bad in ["../run.json", "/etc/passwd", "cifs/../../x", "a/b/c.cif", "..", "cifs/.hidden"]:
        with pytest.raises(InvalidRunId):
            store.file(run_id, bad)
    with pytest.raises(FileNotFoundError):
        store.file(run_id, "cifs/02_nothing.cif")
    with pytest.raises(RunNotFound):
        store.load("20990101T000000-abcdef")


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import memory.runs as runs
    original = runs._write_text
    def slow_write(path, text):
        original(path, text[: len(text) // 2])  # half a file, then the process dies
        print("writing", flush=True)
        time.sleep(60)
    runs._write_text = slow_write
    runs.RunStore().save(runs.new_run_id(), {"results.json": "{" * 1000, "report.md": "x"}, {"request": "doomed"})
""")


def test_a_run_killed_mid_write_leaves_earlier_records_readable(home):
    store = RunStore()
    kept = save_fake_run(store, "a spinel oxide", [fake_candidate("MnGa2O4", "spinel", 0.0)])
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert [p.name.startswith(".tmp-") for p in store.root.iterdir()].count(True) == 1  # the half-written run, hidden
    assert store.ids() == [kept] and store.list()[0]["request"] == "a spinel oxide"
    assert store.load(kept)["candidates"][0]["formula"] == "MnGa2O4"


def _concurrent_writer(tag: str, runs: int) -> None:
    store = RunStore()
    for index in range(runs):
        save_fake_run(store, f"{tag} request {index}", [fake_candidate(f"Mn{tag}{index}", "spinel", 0.01),
                                                         fake_candidate(f"Bi{tag}{index}", "pyrochlore", 0.02)])


def test_two_processes_writing_at_once_lose_nothing(home):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_concurrent_writer, args=(tag, 6)) for tag in ("A", "B")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    store = RunStore()
    requests = sorted(r["request"] for r in store.list())
    assert requests == sorted(f"{tag} request {i}" for tag in "AB" for i in range(6))
    memory = CandidateMemory()
    assert memory.count() == 24
    assert len(memory.reduced_formulas()) == 24


def test_show_me_the_spinels_we_found(home):
    store = RunStore()
    save_fake_run(store, "a spinel oxide containing Mn", [fake_candidate("MnGa2O4", "spinel", 0.02),
                                                          fake_candidate("MnIn2O4", "spinel", 0.4)])
    save_fake_run(store, "a pyrochlore oxide", [fake_candidate("Bi2Hf2O7", "pyrochlore", 0.05)])
    found = recall_candidates("show me the spinels we found", k=10)
    assert sorted(c.formula for c in found) == ["MnGa2O4", "MnIn2O4"]
    assert all(c.family == "spinel" and c.cif_path.endswith(".cif") and Path(c.cif_path).is_file() for c in found)
    assert recall_candidates("hafnium pyrochlore", k=1)[0].formula == "Bi2Hf2O7"
    with pytest.raises(KeyError, match="unknown crystal family"):
        recall_candidates("anything", family="quasicrystal")


def test_novelty_against_earlier_runs(home):
    save_fake_run(RunStore(), "a novel spinel oxide containing Mn", [fake_candidate("MnGa2O4", "spinel", 0.02)])
    spec = parse_request("a novel spinel oxide containing Mn that we have not found before")
    assert spec.novel_against == ["MP", "ICSD", "genms"]
    verdicts = {s.formula: s for s in screen(["MnGa2O4", "MnSc2O4"], spec)}
    assert verdicts["MnGa2O4"].rejected_by == "uniqueness" and "genms" in verdicts["MnGa2O4"].reason
    assert verdicts["MnSc2O4"].passed
    plain = parse_request("a novel spinel oxide containing Mn")
    assert "genms" not in plain.novel_against and screen(["MnGa2O4"], plain)[0].passed


def test_memory_commands(home):
    from agent.cli import app

    run_id = save_fake_run(RunStore(), "a spinel oxide containing Mn", [fake_candidate("MnGa2O4", "spinel", 0.02)])
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["memory", "list", "--json"]).stdout)
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    shown = runner.invoke(app, ["memory", "show", run_id, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["candidates"][0]["formula"] == "MnGa2O4"
    assert runner.invoke(app, ["memory", "show", "../../etc", "--json"]).exit_code == 2
    assert runner.invoke(app, ["memory", "show", "20990101T000000-abcdef"]).exit_code == 1
    found = json.loads(runner.invoke(app, ["memory", "candidates", "spinels we found", "--json"]).stdout)
    assert [c["formula"] for c in found] == ["MnGa2O4"]
