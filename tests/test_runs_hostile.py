"""Hostile content in genms's own folders: the runs folder, the vector store, cached checkpoints.

Whatever sits in ``$GENMS_HOME/runs`` was written by someone: a link there is never followed (a
run folder or a file in it that is a symbolic link is refused, by the store, the CLI and the MCP
server), and a run record that is not what genms writes is listed as damaged, never breaking the
list. A long-lived process sees what other processes wrote to the vector store, and a checkpoint
in the user's cache is never unpickled as code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner

from memory.runs import DamagedRun, RunNotFound, RunStore, new_run_id
from tools.limits import MAX_RUN_SUMMARY_BYTES

ROOT = Path(__file__).resolve().parents[1]
GENMS = shutil.which("genms") or str(Path(sys.executable).parent / "genms")
SECRET = "root:x:0:0:secret-outside-the-runs-folder"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Runs and the vector store in a folder of their own, and a secret file outside it."""
    monkeypatch.setenv("GENMS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMS_VECTOR_DIR", str(tmp_path / "home" / "chroma"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_text(SECRET + "\n")
    return tmp_path / "home"


def summary(request: str = "a spinel oxide containing Mn") -> dict:
    return {"request": request, "planner": "offline", "seconds": 1.0, "family": "spinel", "n_candidates": 1, "n_good": 1,
            "best": [{"formula": "MnGa2O4", "family": "spinel", "formation_energy_per_atom": -2.5, "e_above_hull": 0.02}]}


def save_run(store: RunStore, run_id: str | None = None, request: str = "a spinel oxide containing Mn") -> str:
    run_id = run_id or new_run_id()
    candidate = {"formula": "MnGa2O4", "family": "spinel", "prototype": "MgAl2O4", "checks": {"spacegroup_symbol": "Fd-3m"},
                 "formation_energy_per_atom": -2.5, "e_above_hull": 0.02, "known_in": [], "plausible": True,
                 "cif_path": "cifs/01_MnGa2O4.cif"}
    files = {"cifs/01_MnGa2O4.cif": "data_MnGa2O4\n", "report.md": f"# genms search: {request}\n",
             "results.json": json.dumps({"request": request, "planner": "offline", "seconds": 1.0, "candidates": [candidate]})}
    store.save(run_id, files, summary(request))
    return run_id


def cli(*args: str):
    from agent.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})  # no line wrapped
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# --- symbolic links ---------------------------------------------------------------------------------


def test_a_file_in_a_run_that_links_outside_is_not_served(home, tmp_path):
    from agent.mcp_server import _read_run_file
    from mcp.server.mcpserver.exceptions import ResourceNotFoundError

    store = RunStore()
    run_id = save_run(store)
    folder = store.path(run_id)
    os.symlink(tmp_path / "outside" / "passwd", folder / "cifs" / "02_Evil.cif")
    os.symlink(tmp_path / "outside" / "passwd", folder / "notes.md")
    for relative in ("cifs/02_Evil.cif", "notes.md"):
        with pytest.raises(FileNotFoundError, match="refused: a symbolic link"):
            store.file(run_id, relative)
        with pytest.raises(FileNotFoundError, match="refused: a symbolic link"):
            store.read_text(run_id, relative)
        with pytest.raises(ResourceNotFoundError, match="symbolic link"):
            _read_run_file(run_id, relative)
    assert store.files(run_id) == ["cifs/01_MnGa2O4.cif", "report.md", "results.json", "run.json"]  # links not listed
    assert store.read_text(run_id, "cifs/01_MnGa2O4.cif") == "data_MnGa2O4\n"
    assert _read_run_file(run_id, "report.md").startswith("# genms search")


def test_a_folder_inside_a_run_that_links_outside_is_not_followed(home, tmp_path):
    store = RunStore()
    run_id = save_run(store)
    folder = store.path(run_id)
    shutil.rmtree(folder / "cifs")
    (tmp_path / "outside" / "01_MnGa2O4.cif").write_text(SECRET)
    os.symlink(tmp_path / "outside", folder / "cifs")
    with pytest.raises(FileNotFoundError, match="cifs refused: a symbolic link"):
        store.read_text(run_id, "cifs/01_MnGa2O4.cif")
    with pytest.raises(FileNotFoundError, match="refused"):
        store.file(run_id, "cifs/passwd")
    assert store.files(run_id) == ["report.md", "results.json", "run.json"]
    assert store.load(run_id)["files"] == ["report.md", "results.json", "run.json"]


def test_a_run_folder_that_is_a_link_is_listed_refused_and_never_read(home, tmp_path):
    store = RunStore()
    kept = save_run(store, "20240101T000000-aaaaaa")
    elsewhere = RunStore(tmp_path / "outside" / "runs")
    save_run(elsewhere, "20240101T000000-bbbbbb", request="a run kept outside")
    os.symlink(elsewhere.path("20240101T000000-bbbbbb"), store.root / "20240102T000000-bbbbbb")
    os.symlink(tmp_path / "outside", store.root / "20240103T000000-cccccc")  # a link to any folder
    listed = {r["run_id"]: r for r in store.list()}
    assert listed[kept]["request"] == "a spinel oxide containing Mn"
    for linked in ("20240102T000000-bbbbbb", "20240103T000000-cccccc"):
        assert listed[linked] == {"run_id": linked, "damaged": True, "reason": "refused: a symbolic link where its folder should be"}
        with pytest.raises(RunNotFound, match="symbolic link"):
            store.load(linked)
        with pytest.raises(RunNotFound, match="symbolic link"):
            store.file(linked, "report.md")
        with pytest.raises(RunNotFound, match="symbolic link"):
            store.read_text(linked, "passwd")
    shown = cli("memory", "show", "20240102T000000-bbbbbb")
    assert shown.exit_code == 1 and "refused: a symbolic link where its folder should be" in shown.stderr
    assert "a run kept outside" not in shown.output
    listing = cli("memory", "list")
    assert listing.exit_code == 0 and "a spinel oxide containing Mn" in listing.stdout and "a run kept outside" not in listing.stdout


def test_a_fifo_in_a_run_folder_is_refused_without_blocking(home):
    store = RunStore()
    run_id = save_run(store)
    os.mkfifo(store.path(run_id) / "cifs" / "02_Fifo.cif")
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(store.read_text(run_id, "cifs/02_Fifo.cif"))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)  # a blocking open of a FIFO would never return
    assert not reader.is_alive(), "reading a FIFO in a run folder blocked"
    assert isinstance(outcome[0], FileNotFoundError) and "special file" in str(outcome[0])
    assert "cifs/02_Fifo.cif" not in store.files(run_id)


# --- damaged run records --------------------------------------------------------------------------------


DAMAGED_SUMMARIES = {
    "missing-fields": ('{"request": "x"}', "run.json has no 'planner'"),
    "not-json": ("{not json", "run.json is not valid JSON"),
    "a-list": ("[1, 2, 3]", "run.json holds a list, not an object"),
    "a-string": ('"run"', "run.json holds a string, not an object"),
    "request-a-number": (json.dumps({**summary(), "request": 5}), "run.json's 'request' is a number, not a string"),
    "count-a-boolean": (json.dumps({**summary(), "n_good": True}), "run.json's 'n_good' is a boolean, not a count"),
    "best-a-string": (json.dumps({**summary(), "best": "MnGa2O4"}), "run.json's 'best' is a string, not a list"),
    "best-entry-bad": (json.dumps({**summary(), "best": [{"formula": 3}]}), "a 'best' entry of run.json has a bad 'formula'"),
    "energy-a-string": (json.dumps({**summary(), "best": [{"formula": "X", "e_above_hull": "low"}]}), "energy that is not a number"),
    "nan": (json.dumps(summary()).replace('"seconds": 1.0', '"seconds": NaN'), "NaN is not a JSON number"),
    "overflow": (json.dumps(summary()).replace('"seconds": 1.0', '"seconds": 1e999'), "out of range"),
    "deeply-nested": ("[" * 100_000, "run.json is nested too deeply"),
    "not-utf8": (b'{"request": "\xff\xfe"}', "run.json is not UTF-8 text"),
    "empty": ("", "run.json is not valid JSON"),
    "too-large": (" " * (MAX_RUN_SUMMARY_BYTES + 1), "more than the 1,000,000 read back"),
}


@pytest.mark.parametrize("name", list(DAMAGED_SUMMARIES))
def test_a_damaged_run_json_is_listed_with_its_reason_and_refused_when_opened(home, name):
    from agent.mcp_server import get_run, list_runs
    from mcp.server.mcpserver.exceptions import ToolError

    content, reason = DAMAGED_SUMMARIES[name]
    store = RunStore()
    good = save_run(store, "20240101T000000-aaaaaa")
    damaged = "20240102T000000-dddddd"
    (store.root / damaged).mkdir()
    target = store.root / damaged / "run.json"
    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)

    runs = store.list()
    assert [r["run_id"] for r in runs] == [damaged, good]
    assert runs[0]["damaged"] is True and reason in runs[0]["reason"] and runs[1]["request"] == "a spinel oxide containing Mn"
    with pytest.raises(DamagedRun, match="is damaged"):
        store.load(damaged)

    listing = cli("memory", "list")
    assert listing.exit_code == 0 and "damaged" in listing.stdout and "a spinel oxide containing Mn" in listing.stdout
    as_json = cli("memory", "list", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["runs"][0]["reason"] == runs[0]["reason"]
    shown = cli("memory", "show", damaged)
    assert shown.exit_code == 1 and f"run '{damaged}' is damaged" in shown.stderr
    assert cli("memory", "show", good).exit_code == 0

    listed = list_runs(20).model_dump()["runs"]  # the MCP tool validates against its output schema
    assert listed[0]["run_id"] == damaged and listed[0]["damaged"] is True and listed[1]["run_id"] == good
    with pytest.raises(ToolError, match="is damaged"):
        get_run(damaged)


@pytest.mark.parametrize(("content", "reason"), [
    ("[]", "results.json holds a list, not an object"),
    ('{"candidates": {"a": 1}}', "results.json's 'candidates' is an object, not a list"),
    ('{"candidates": [1]}', "results.json's 'candidates' holds a number, not an object"),
    ('{"candidates": [{"checks": []}]}', "a candidate in results.json has no formula"),
    ('{"request": ["x"]}', "results.json's 'request' is a list, not a string"),
    ('{"seconds": Infinity}', "Infinity is not a JSON number"),
])
def test_a_damaged_results_json_is_refused_with_its_reason(home, content, reason):
    store = RunStore()
    run_id = save_run(store)
    (store.path(run_id) / "results.json").write_text(content)
    with pytest.raises(DamagedRun) as caught:
        store.load(run_id)
    assert reason in caught.value.reason
    assert store.list()[0]["request"] == "a spinel oxide containing Mn"  # the summary is still fine
    shown = cli("memory", "show", run_id)
    assert shown.exit_code == 1 and reason in " ".join(shown.stderr.split())


def test_results_json_cannot_overwrite_what_the_store_sets(home):
    from agent.mcp_server import get_run

    store = RunStore()
    run_id = save_run(store)
    results = store.path(run_id) / "results.json"
    record = json.loads(results.read_text())
    results.write_text(json.dumps({**record, "run_id": "../../etc", "files": ["/etc/passwd"], "resources": ["x"], "summary": 1}))
    loaded = store.load(run_id)
    assert loaded["run_id"] == run_id and "/etc/passwd" not in loaded["files"] and isinstance(loaded["summary"], dict)
    assert get_run(run_id).resources == [f"genms://runs/{run_id}/{name}" for name in loaded["files"]]


def test_run_id_in_run_json_is_the_folder_name(home):
    store = RunStore()
    run_id = save_run(store)
    path = store.path(run_id) / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "run_id": "../../etc"}))
    assert store.list()[0]["run_id"] == run_id


# --- the MCP server over stdio, on a hostile runs folder ---------------------------------------------


def test_the_mcp_server_refuses_links_and_lists_damaged_runs(home, tmp_path):
    store = RunStore()
    run_id = save_run(store, "20240101T000000-aaaaaa")
    os.symlink(tmp_path / "outside" / "passwd", store.path(run_id) / "cifs" / "02_Evil.cif")
    os.symlink(store.path(run_id), store.root / "20240102T000000-bbbbbb")
    (store.root / "20240103T000000-cccccc").mkdir()
    (store.root / "20240103T000000-cccccc" / "run.json").write_text('{"request": "half a record"}')
    env = {**os.environ, "GENMS_OFFLINE": "1", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ANTHROPIC_API_KEY", None)
    params = StdioServerParameters(command=GENMS, args=["mcp"], env=env, cwd=str(ROOT))
    with open(tmp_path / "server.log", "w") as errlog, anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(Client(stdio_client(params, errlog=errlog), mode="legacy")) as client:
        for uri in (f"genms://runs/{run_id}/cifs/02_Evil.cif", "genms://runs/20240102T000000-bbbbbb/report.md",
                    "genms://runs/20240102T000000-bbbbbb/cifs/01_MnGa2O4.cif"):
            with pytest.raises(MCPError) as refused:
                portal.call(client.read_resource, uri)
            assert SECRET not in str(refused.value)
        report = portal.call(client.read_resource, f"genms://runs/{run_id}/report.md")
        assert report.contents[0].text.startswith("# genms search")
        listed = portal.call(client.call_tool, "list_runs", {})
        assert not listed.is_error, listed.content
        runs = {r["run_id"]: r for r in listed.structured_content["runs"]}
        assert runs[run_id]["request"] == "a spinel oxide containing Mn"
        assert runs["20240102T000000-bbbbbb"]["damaged"] and "symbolic link" in runs["20240102T000000-bbbbbb"]["reason"]
        assert runs["20240103T000000-cccccc"]["reason"] == "run.json has no 'planner'"
        shown = portal.call(client.call_tool, "get_run", {"run_id": "20240103T000000-cccccc"})
        assert shown.is_error and "is damaged: run.json has no 'planner'" in shown.content[0].text
    assert SECRET not in (tmp_path / "server.log").read_text()


# --- the vector store seen by a long-lived process --------------------------------------------------------


WRITER = textwrap.dedent("""
    import sys
    from tools.knowledge import remember_candidates
    candidate = {"formula": "Bi2Hf2O7", "reduced_formula": "Bi2Hf2O7", "family": "pyrochlore", "prototype": "Y2Ti2O7",
                 "generator": "template", "checks": {"spacegroup_symbol": "Fd-3m"}, "formation_energy_per_atom": -3.1,
                 "e_above_hull": 0.01, "known_in": [], "plausible": True, "reason": None, "cif_path": "cifs/01_Bi2Hf2O7.cif",
                 "rationale": "hafnium pyrochlore"}
    remember_candidates(sys.argv[1], "a hafnium pyrochlore oxide", [candidate], [candidate], sys.argv[2])
""")


def test_a_long_lived_process_sees_what_another_process_wrote(home):
    from tools.knowledge import recall_candidates, remember_candidates

    mine = {"formula": "MnGa2O4", "reduced_formula": "MnGa2O4", "family": "spinel", "prototype": "MgAl2O4", "generator": "template",
            "checks": {"spacegroup_symbol": "Fd-3m"}, "formation_energy_per_atom": -2.5, "e_above_hull": 0.02, "known_in": [],
            "plausible": True, "reason": None, "cif_path": "cifs/01_MnGa2O4.cif", "rationale": "manganese spinel"}
    remember_candidates("20240101T000000-aaaaaa", "a manganese spinel oxide", [mine], [mine], home / "runs" / "a")
    before = recall_candidates("hafnium compounds", k=5)  # this process's client has loaded the index
    assert [c.formula for c in before] == ["MnGa2O4"]

    writer = subprocess.run([sys.executable, "-c", WRITER, "20240102T000000-bbbbbb", str(home / "runs" / "b")],
                            cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert writer.returncode == 0, writer.stderr[-3000:]

    after = recall_candidates("hafnium compounds", k=5)
    assert [c.formula for c in after][0] == "Bi2Hf2O7" and {c.formula for c in after} == {"Bi2Hf2O7", "MnGa2O4"}
    assert recall_candidates("hafnium pyrochlore", k=1, family="pyrochlore")[0].run_id == "20240102T000000-bbbbbb"


# --- checkpoints in the user's cache and given on the command line ---------------------------------------


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_are_never_unpickled_as_code(tmp_path, monkeypatch):
    import torch

    from generators.gfn import data
    from generators.gfn.gfn import GFNSampler
    from generators.gfn.proxy import Proxy

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"state_dict": {}, "hparams": {}, "meta": _Payload(marker)}, hostile)
    with pytest.raises(pickle.UnpicklingError):
        Proxy.load(path=hostile)
    with pytest.raises(pickle.UnpicklingError):
        GFNSampler.load(hostile)
    monkeypatch.setenv("GENMS_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copy(hostile, data.cache_path())
    with pytest.raises(pickle.UnpicklingError):
        data.load()
    assert not marker.exists()
    # the committed weights hold tensors and plain data only: they load with weights_only=True
    assert Proxy.load("band_gap").meta and GFNSampler.load().meta
