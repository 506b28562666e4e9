"""Hostile input through every door: the CLI, and a real MCP client over stdio and HTTP.

Every input of issue 39's table (an attacker's or a careless user's small inputs that once
crashed, froze or exhausted genms) is sent through the command line and through the MCP
server. After every call the server answers the next one; each answer arrives within 30 s;
no output carries a traceback; the server's peak memory stays under 2 GB (read from the
kernel's high-water mark of the server process, VmHWM). The structure workers run beside the
server under their own memory limit (``tools.sandbox``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import anyio
import anyio.from_thread
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_mcp import CIF_TRIAL, GENMS, ROOT, Session, free_port, server_env, stop, wait_for_port

from tools.sandbox import FAULT_PREFIX as FAULT

ANSWER_SECONDS = 30.0
PEAK_MEMORY_BYTES = 2 * 1024**3


def cif(a="3.9", sg="P 1", ops=("x, y, z",), atoms=(("Sr", 0, 0, 0),)) -> str:
    """A P1-style CIF with the given cell edge (cubic), symmetry operations and atom rows."""
    lines = ["data_hostile", f"_symmetry_space_group_name_H-M '{sg}'"]
    lines += [f"_cell_length_{axis} {a}" for axis in "abc"]
    lines += [f"_cell_angle_{angle} 90" for angle in ("alpha", "beta", "gamma")]
    lines += ["loop_", "_symmetry_equiv_pos_site_id", "_symmetry_equiv_pos_as_xyz"]
    lines += [f"{i + 1} '{op}'" for i, op in enumerate(ops)]
    lines += ["loop_", "_atom_site_type_symbol", "_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y",
              "_atom_site_fract_z", "_atom_site_occupancy"]
    lines += [f"{el} {el}{i} {x} {y} {z} 1" for i, (el, x, y, z) in enumerate(atoms)]
    return "\n".join(lines) + "\n"


def symmetry_bomb() -> str:
    """48 symmetry operations (Pm-3m) x 1,400 asymmetric-unit atoms: 67,200 positions to expand."""
    from pymatgen.symmetry.groups import SpaceGroup

    rng = random.Random(0)
    ops = [op.as_xyz_str() for op in SpaceGroup("Pm-3m").symmetry_ops]
    atoms = [("Na", *(round(rng.random(), 4) for _ in range(3))) for _ in range(1400)]
    return cif(a="40", sg="P m -3 m", ops=ops, atoms=atoms)


# name -> (CIF text, words the refusal must contain)
HOSTILE_CIFS = {
    "infinite_cell": (cif(a="inf"), "finite"),
    "tiny_cell": (cif(a="0.04"), "degenerate cell"),
    "symmetry_bomb": (symmetry_bomb(), "symmetry expansion too large"),
    "huge_cell": (cif(a="1e9"), "outside 0-1000"),
}
OGANESSON = cif(atoms=(("Og", 0, 0, 0),))
REDOS_REQUEST = "a spinel without Cu, " + "and " * 40 + "1 Fe"  # 185 characters
BAD_FORMULAS = ["H0.0001", "((((H0.1)0.1)0.1)0.1)0.1", "H0.0001O"]
MARKUP = ["[/red]", "[bold]x"]


def assert_clean(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text[-3000:]


# --- the runs folder an attacker prepared ---------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_home(tmp_path_factory) -> Path:
    """A GENMS_HOME with a good run, a run whose request is rich markup, a damaged run.json, a run
    folder that is a symlink to a folder outside, and a run whose CIF is a symlink to a secret."""
    from memory.runs import RunStore

    home = tmp_path_factory.mktemp("hostile-home")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("TOP SECRET")
    (outside / "run.json").write_text(json.dumps({"request": "outside", "planner": "offline", "seconds": 1,
                                                  "n_candidates": 0, "n_good": 0}))
    store = RunStore(home / "runs")
    summary = {"planner": "offline", "seconds": 1.0, "n_candidates": 1, "n_good": 0, "family": None, "best": []}
    results = json.dumps({"request": "x", "candidates": [], "decisions": []})
    store.save("20260101T000000-aaaaaa", {"report.md": "# ok\n", "results.json": results}, {**summary, "request": "fine"})
    store.save("20260101T000001-bbbbbb", {"report.md": "# m\n", "results.json": results},
               {**summary, "request": "[/red] a [bold]x spinel"})
    damaged = store.root / "20260101T000002-cccccc"
    damaged.mkdir()
    (damaged / "run.json").write_text(json.dumps({"request": "no other field"}))
    (store.root / "20260101T000003-dddddd").symlink_to(outside, target_is_directory=True)
    leaky = store.save("20260101T000004-eeeeee", {"report.md": "# l\n", "results.json": results},
                       {**summary, "request": "leaky"})
    (leaky / "cifs").mkdir()
    (leaky / "cifs" / "01_X.cif").symlink_to(outside / "secret.txt")
    return home


# --- the command line -------------------------------------------------------------------------------


def genms(*args: str, home: Path, timeout: float = 300) -> tuple[int, str, float]:
    """Run the CLI; exit code, stdout + stderr (whitespace collapsed), seconds. ``genms.stdout``: the last stdout."""
    start = time.monotonic()
    done = subprocess.run([GENMS, *args], env=server_env(GENMS_HOME=str(home)), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    assert_clean(output)
    genms.stdout = done.stdout
    return done.returncode, " ".join(output.split()), time.monotonic() - start


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-files")
    for name, (text, _) in HOSTILE_CIFS.items():
        (folder / f"{name}.cif").write_text(text)
    (folder / "oganesson.cif").write_text(OGANESSON)
    (folder / "[bold]good[red].cif").write_text(CIF_TRIAL)
    os.mkfifo(folder / "fifo.cif")
    return folder


def test_cli_structure_check_survives_every_hostile_file(hostile_files, hostile_home):
    files = [str(hostile_files / f"{name}.cif") for name in HOSTILE_CIFS]
    files += [str(hostile_files / "oganesson.cif"), str(hostile_files / "[bold]good[red].cif"), "/dev/zero",
              str(hostile_files / "fifo.cif")]
    code, output, seconds = genms("structure", "check", *files, home=hostile_home)
    assert seconds < 60, seconds  # 9 files, one process start, one worker start
    for name, (_, reason) in HOSTILE_CIFS.items():
        assert f"{name}.cif: " in output and reason in output
    assert "[bold]good[red].cif" in output and "SrTiO3" in output  # the markup file name shown literally
    assert output.count("not a regular file") == 2  # /dev/zero and the FIFO: neither read nor waited on
    assert code == 0  # every file got its report


def test_cli_score_keeps_the_batch_around_bad_files(hostile_files, hostile_home):
    files = [hostile_files / "huge_cell.cif", hostile_files / "oganesson.cif", hostile_files / "[bold]good[red].cif",
             hostile_files / "infinite_cell.cif", hostile_files / "tiny_cell.cif", hostile_files / "symmetry_bomb.cif"]
    genms("score", *map(str, files), "--json", home=hostile_home)
    reports = json.loads(genms.stdout)
    assert [r["plausible"] for r in reports] == [False, False, True, False, False, False]
    assert "Og" in reports[1]["reason"] and reports[2]["energy_per_atom"] < -5
    assert "symmetry expansion too large" in reports[5]["reason"]
    assert "outside 0-1000" in reports[0]["reason"] and "degenerate" in reports[4]["reason"]


def test_cli_formulas_and_markup(hostile_home):
    code, output, _ = genms("formula", "check", *BAD_FORMULAS, *MARKUP, "SrTiO3", home=hostile_home)
    assert "[/red]" in output and "[bold]x" in output  # shown literally, not swallowed as markup
    assert output.count("below") >= 3 or output.count("too small") >= 3, output
    assert "SrTiO3" in output
    code, output, _ = genms("formula", "check", "SrTiO3", "--exclude", "H0.0001", home=hostile_home)
    assert code != 0 and "H0.0001" in output
    code, output, seconds = genms("formula", "propose", REDOS_REQUEST, "-n", "5", "--offline", home=hostile_home)
    assert code in (0, 1) and seconds < 60
    code, output, _ = genms("search", "[/red]", home=hostile_home)
    assert code == 1 and "[/red]" in output
    # The backtracking clause reaches the search's reader too; this request is then refused as unsatisfiable.
    code, output, seconds = genms("search", REDOS_REQUEST.replace("spinel", "spinel oxide").replace("Cu", "O"),
                                  home=hostile_home)
    assert code == 1 and "cannot be satisfied" in output and seconds < 60


def test_cli_runs_folder(hostile_home):
    code, output, _ = genms("memory", "list", "-n", "20", home=hostile_home)
    assert code == 0 and "[/red] a [bold]x spinel" in output and "damaged" in output and "fine" in output
    assert "symbolic link" in output and "request: outside" not in output  # listed as refused, not read
    code, output, _ = genms("memory", "show", "20260101T000003-dddddd", home=hostile_home)
    assert code != 0 and "outside" not in output.replace("20260101T000003-dddddd", "")
    code, output, _ = genms("memory", "show", "20260101T000002-cccccc", home=hostile_home)
    assert code != 0 and "damaged" in output


def test_chat_tools_refuse_hostile_cifs_and_formulas():
    """The chat's tools (LangChain) take the same paths: sandboxed checks, per-item reports."""
    from tools.langchain_tools import check_formulas_tool, check_structure_tool, score_structures_tool

    for name, (text, reason) in HOSTILE_CIFS.items():
        report = check_structure_tool.invoke({"cif": text})
        assert report["cif_valid"] is False and reason in report["error"], name
    scored = score_structures_tool.invoke({"cifs": [HOSTILE_CIFS["infinite_cell"][0], OGANESSON]})
    assert [r["plausible"] for r in scored] == [False, False] and "Og" in scored[1]["reason"]
    checked = check_formulas_tool.invoke({"formulas": [*BAD_FORMULAS, "SrTiO3"]})
    assert [c["valid"] for c in checked] == [False, False, False, True]


# --- the MCP server -----------------------------------------------------------------------------------


def server_process(transport: str) -> psutil.Process:
    """The genms MCP server process this test started (a child of the test process)."""
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "genms" in command and " mcp" in command and ("--transport" in command) == (transport == "http"):
            return child
    raise AssertionError("no genms mcp process found")


def peak_memory(process: psutil.Process) -> int:
    """The kernel's high-water mark of the process's resident memory, bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module", params=["stdio", "http"])
def server(request, hostile_home, tmp_path_factory):
    log = tmp_path_factory.mktemp(f"hostile-{request.param}") / "server.log"
    env = server_env(GENMS_HOME=str(hostile_home), GENMS_SANDBOX_TEST_TASKS="1")  # faults injectable (tools.sandbox)
    with anyio.from_thread.start_blocking_portal() as portal:
        if request.param == "stdio":
            with open(log, "w") as errlog:
                params = StdioServerParameters(command=GENMS, args=["mcp"], env=env, cwd=str(ROOT))
                with portal.wrap_async_context_manager(Client(stdio_client(params, errlog=errlog), mode="legacy")) as client:
                    session = Session(portal, client, log, "stdio")
                    session.process = server_process("stdio")
                    yield session
        else:
            port = free_port()
            with open(log, "w") as errlog:
                process = subprocess.Popen([GENMS, "mcp", "--transport", "http", "--port", str(port)], env=env,
                                           cwd=ROOT, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
            try:
                wait_for_port(port, process, log)
                with portal.wrap_async_context_manager(Client(f"http://127.0.0.1:{port}/mcp")) as client:
                    session = Session(portal, client, log, "http")
                    session.process, session.port = psutil.Process(process.pid), port
                    yield session
            finally:
                stop(process)


def timed_call(server, name: str, arguments: dict):
    """One tool call, its answer within ANSWER_SECONDS, free of tracebacks; then the server answers a probe."""
    start = time.monotonic()
    result = server.call(name, arguments)
    seconds = time.monotonic() - start
    text = json.dumps(result.structured_content) if result.structured_content else str(result.content)
    assert_clean(text)
    assert seconds < ANSWER_SECONDS, (name, seconds)
    assert server.process.is_running() and server.process.status() != psutil.STATUS_ZOMBIE
    probe = server.call("check_formulas", {"formulas": ["SrTiO3"]})
    assert not probe.is_error and probe.structured_content["results"][0]["valid"]
    return result, text


@pytest.fixture(scope="module")
def warm(server):
    """Load CHGNet and start the structure workers once, so the timed calls measure the inputs."""
    result = server.call("score_structures", {"cifs": [CIF_TRIAL]})
    assert not result.is_error, result.content
    return server


@pytest.mark.parametrize("name", list(HOSTILE_CIFS))
def test_mcp_check_structure_refuses_hostile_cifs(warm, name):
    text, reason = HOSTILE_CIFS[name]
    result, _ = timed_call(warm, "check_structure", {"cif": text})
    report = result.structured_content
    assert not result.is_error and report["cif_valid"] is False and reason in report["error"]


@pytest.mark.parametrize(("how", "message"), [("segfault", "crashed (SIGSEGV)"), ("memory", "out of memory")])
def test_mcp_server_survives_a_crashing_check(warm, how, message):
    """Native code that crashes or exhausts memory on an input (injected in the worker) costs that call only."""
    result, _ = timed_call(warm, "check_structure", {"cif": f"{FAULT}{how}\n{CIF_TRIAL}"})
    assert not result.is_error and message in result.structured_content["error"]
    after = warm.call("check_structure", {"cif": CIF_TRIAL}).structured_content
    assert after["cif_valid"] and after["reduced_formula"] == "SrTiO3"


def test_mcp_score_structures_keeps_the_batch(warm):
    cifs = [HOSTILE_CIFS["huge_cell"][0], OGANESSON, CIF_TRIAL, HOSTILE_CIFS["infinite_cell"][0],
            HOSTILE_CIFS["tiny_cell"][0], HOSTILE_CIFS["symmetry_bomb"][0], f"{FAULT}segfault\n{CIF_TRIAL}"]
    result, _ = timed_call(warm, "score_structures", {"cifs": cifs})
    reports = result.structured_content["results"]
    assert [r["plausible"] for r in reports] == [False, False, True, False, False, False, False]
    assert "Og" in reports[1]["reason"] and "symmetry expansion" in reports[5]["reason"]
    assert "crashed (SIGSEGV)" in reports[6]["reason"]


def test_mcp_formulas_requests_and_markup(warm):
    result, _ = timed_call(warm, "check_formulas", {"formulas": [*BAD_FORMULAS, *MARKUP, "SrTiO3"]})
    checked = result.structured_content["results"]
    assert [c["valid"] for c in checked] == [False] * 5 + [True]
    assert all(c["error"] for c in checked[:5])
    result, text = timed_call(warm, "check_formulas", {"formulas": ["SrTiO3"], "exclude": ["H0.0001"]})
    assert result.is_error and "H0.0001" in text
    result, _ = timed_call(warm, "propose_formulas", {"request": REDOS_REQUEST, "n": 5})
    result, _ = timed_call(warm, "propose_formulas", {"request": "[/red] " + REDOS_REQUEST[:150], "n": 5})


def test_mcp_runs_folder(warm):
    result, _ = timed_call(warm, "list_runs", {"limit": 50})
    runs = {r["run_id"]: r for r in result.structured_content["runs"]}
    assert "20260101T000000-aaaaaa" in runs and "20260101T000002-cccccc" in runs
    linked = runs["20260101T000003-dddddd"]  # listed as refused, nothing read through the link
    assert linked["damaged"] and "symbolic link" in linked["reason"] and "outside" not in json.dumps(linked)
    assert "damaged" in json.dumps(runs["20260101T000002-cccccc"])
    for uri in ("genms://runs/20260101T000004-eeeeee/cifs/01_X.cif", "genms://runs/20260101T000003-dddddd/report.md"):
        with pytest.raises(Exception) as refused:
            warm.read(uri)
        assert "TOP SECRET" not in str(refused.value)
    result, text = timed_call(warm, "get_run", {"run_id": "20260101T000002-cccccc"})
    assert result.is_error and "damaged" in text


def test_mcp_http_refuses_a_foreign_host(warm):
    if warm.transport != "http":
        pytest.skip("the Host check is the HTTP transport's")
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    url = f"http://127.0.0.1:{warm.port}/mcp"
    answer = httpx2.post(url, json=body, headers={**headers, "host": "evil.example"}, timeout=ANSWER_SECONDS)
    assert answer.status_code == 421
    answer = httpx2.post(url, json=body, headers={**headers, "origin": "http://evil.example"}, timeout=ANSWER_SECONDS)
    assert answer.status_code == 403


def test_mcp_server_memory_stays_bounded(warm):
    """Runs last in the module (pytest keeps file order): the peak over every hostile call above."""
    peak = peak_memory(warm.process)
    print(f"genms mcp ({warm.transport}) peak resident memory: {peak / 1024**2:.0f} MiB")
    assert peak < PEAK_MEMORY_BYTES
