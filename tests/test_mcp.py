"""genms mcp: the server as a subprocess, driven by the real MCP client over stdio and streamable HTTP.

stdio speaks the initialize handshake (as IDE assistants do today, cancellation by
notifications/cancelled); HTTP lets the client negotiate (the 2026 per-request protocol,
cancellation by closing the response stream). One server per transport serves every test;
searches use tiny budgets and are shared between assertions.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import anyio
import anyio.from_thread
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

GENMS = shutil.which("genms") or str(Path(sys.executable).parent / "genms")
ROOT = Path(__file__).resolve().parents[1]
REQUEST = "a spinel oxide containing Mn"
TINY = {"proposals": 6, "formulas": 1, "structures": 1, "rounds": 1, "relax_steps": 5, "results": 1}
CANCELLED_REQUEST = "a novel pyrochlore oxide"
BIG = {"proposals": 40, "formulas": 10, "structures": 4, "rounds": 5, "relax_steps": 200, "results": 30}
STOPPED = "search cancelled by the client; stopped"
TOOLS = {"search_materials", "propose_formulas", "check_formulas", "check_structure", "generate_structures",
         "score_structures", "retrieve_knowledge", "recall_candidates", "list_runs", "get_run", "lookup_material"}
CIF_TRIAL = """data_SrTiO3
_cell_length_a 3.905
_cell_length_b 3.905
_cell_length_c 3.905
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Sr1 Sr 0 0 0
Ti1 Ti 0.5 0.5 0.5
O1 O 0.5 0.5 0
O2 O 0.5 0 0.5
O3 O 0 0.5 0.5
"""


def server_env(**extra: str) -> dict[str, str]:
    """The test session's environment (GENMS_HOME, GENMS_CACHE_DIR from conftest), offline, no Claude.

    One torch thread per computation: on a busy 2-core machine, torch's default intra-op threads
    make a CHGNet relaxation 10-30 times slower, and the server runs calls side by side anyway.
    """
    env = {key: value for key, value in os.environ.items() if key not in {"ANTHROPIC_API_KEY", "GENMS_MCP_TOKEN"}}
    return {**env, "GENMS_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "300", "OMP_NUM_THREADS": "1", **extra}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"genms mcp exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"genms mcp did not listen on {port}: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Session:
    """A connected MCP client on a loop in a background thread, callable from sync tests."""

    def __init__(self, portal, client: Client, log: Path, transport: str):
        self.portal, self.client, self.log, self.transport = portal, client, log, transport

    def call(self, name: str, arguments: dict, **options):
        return self.portal.call(partial(self.client.call_tool, name, arguments, **options))

    def run(self, async_fn, *args):
        return self.portal.call(async_fn, *args)

    def read(self, uri: str):
        return self.portal.call(self.client.read_resource, uri)

    def wait_for_log(self, text: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            content = re.sub(r"\s+", " ", self.log.read_text(errors="replace"))
            if text in content:
                return content
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not in the server log: {self.log.read_text()[-3000:]}")


@pytest.fixture(scope="module", params=["stdio", "http"])
def mcp(request, tmp_path_factory):
    log = tmp_path_factory.mktemp(f"mcp-{request.param}") / "server.log"
    with anyio.from_thread.start_blocking_portal() as portal:
        if request.param == "stdio":
            with open(log, "w") as errlog:
                params = StdioServerParameters(command=GENMS, args=["mcp"], env=server_env(), cwd=str(ROOT))
                with portal.wrap_async_context_manager(Client(stdio_client(params, errlog=errlog), mode="legacy")) as client:
                    yield Session(portal, client, log, "stdio")
        else:
            port = free_port()
            with open(log, "w") as errlog:
                process = subprocess.Popen([GENMS, "mcp", "--transport", "http", "--port", str(port)], env=server_env(),
                                           cwd=ROOT, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
            try:
                wait_for_port(port, process, log)
                with portal.wrap_async_context_manager(Client(f"http://127.0.0.1:{port}/mcp")) as client:
                    yield Session(portal, client, log, "http")
            finally:
                stop(process)


@pytest.fixture(scope="module")
def searched(mcp):
    """One tiny search per transport, with the progress notifications it streamed."""
    events: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, message))

    result = mcp.call("search_materials", {"request": REQUEST, **TINY}, progress_callback=on_progress)
    assert not result.is_error, result.content
    return result.structured_content, events


def test_lists_tools_with_bounded_schemas(mcp):
    tools = {tool.name: tool for tool in mcp.run(mcp.client.list_tools).tools}
    assert set(tools) == TOOLS
    search = tools["search_materials"].input_schema["properties"]
    assert search["proposals"]["maximum"] == 500 and search["relax_steps"]["maximum"] == 2000
    assert tools["check_structure"].input_schema["properties"]["cif"]["maxLength"] == 1_000_000
    generator = tools["generate_structures"].input_schema["$defs"]["GeneratorName"]
    assert {"template", "random_symmetric"} <= set(generator["enum"])
    assert all(tool.output_schema for tool in tools.values())
    recall = tools["recall_candidates"].input_schema["properties"]
    assert recall["query"]["maxLength"] == 2000 and recall["k"]["maximum"] == 500 and "good_only" in recall
    assert tools["retrieve_knowledge"].input_schema["properties"]["k"]["maximum"] == 50
    lookup = tools["lookup_material"]
    assert lookup.input_schema["properties"]["formula"]["maxLength"] == 200 and lookup.input_schema["properties"]["limit"]["maximum"] == 100
    assert lookup.annotations.read_only_hint and not lookup.annotations.open_world_hint
    templates = {t.uri_template for t in mcp.run(mcp.client.list_resource_templates).resource_templates}
    assert templates == {"genms://runs/{run_id}/report.md", "genms://runs/{run_id}/results.json",
                         "genms://runs/{run_id}/cifs/{name}"}


def test_search_streams_progress_and_records_a_run(mcp, searched):
    result, events = searched
    assert result["request"] == REQUEST and result["spec"]["family"] == "spinel"
    assert result["n_candidates"] >= 1 and result["candidates"][0]["rank"] == 1
    assert [p for p, _ in events] == sorted(p for p, _ in events) and len(events) >= 5
    messages = " | ".join(m for _, m in events)
    assert "understand: search" in messages and "generate" in messages and "score" in messages

    report = mcp.read(result["resources"]["report"]).contents[0]
    assert report.text.startswith(f"# genms search: {REQUEST}") and report.mime_type == "text/markdown"
    cif = mcp.read(result["candidates"][0]["cif_uri"]).contents[0]
    assert "_cell_length_a" in cif.text
    assert f'"request": "{REQUEST}"' in mcp.read(result["resources"]["results"]).contents[0].text

    runs = mcp.call("list_runs", {"limit": 50}).structured_content["runs"]
    assert result["run_id"] in {r["run_id"] for r in runs}
    record = mcp.call("get_run", {"run_id": result["run_id"]}).structured_content
    assert record["summary"]["request"] == REQUEST and record["candidates"][0]["cif_uri"] == result["candidates"][0]["cif_uri"]
    assert f"genms://runs/{result['run_id']}/report.md" in record["resources"]


def test_chemistry_tools(mcp):
    checked = mcp.call("check_formulas", {"formulas": ["LiMn2O4", "Xx2"]}).structured_content["results"]
    assert checked[0]["known_in"] == ["MP", "ICSD", "OQMD"] and checked[1]["valid"] is False

    structure = mcp.call("check_structure", {"cif": CIF_TRIAL}).structured_content
    assert structure["cif_valid"] and structure["spacegroup_number"] == 221 and structure["reduced_formula"] == "SrTiO3"

    proposed = mcp.call("propose_formulas", {"request": REQUEST, "n": 4}).structured_content
    assert proposed["spec"].startswith("spinel") and len(proposed["proposals"]) == 4

    generated = mcp.call("generate_structures", {"formula": "MgAl2O4", "generator": "template", "n": 1}).structured_content
    assert generated["structures"][0]["prototype"] and "_cell_length_a" in generated["structures"][0]["cif"]
    randomised = mcp.call("generate_structures", {"formula": "Li2MnO3", "generator": "random_symmetric", "n": 1, "seed": 1})
    assert not randomised.is_error and randomised.structured_content["structures"][0]["generator"] == "random_symmetric"

    looked = mcp.call("lookup_material", {"formula": "anatase TiO2", "limit": 3})
    assert not looked.is_error, looked.content
    anatase = looked.structured_content["polymorphs"][0]
    assert anatase["material_id"] == "mp-390" and anatase["spacegroup_number"] == 141 and anatase["match"]
    assert anatase["band_gap"] == pytest.approx(2.0625, abs=1e-4) and "MP" in looked.structured_content["known_in"]

    scored = mcp.call("score_structures", {"cifs": [CIF_TRIAL, "not a cif"], "relax": True, "max_steps": 2})
    first, second = scored.structured_content["results"]
    assert first["plausible"] and first["formation_energy_per_atom"] < -2 and first["relax_steps"] is not None
    assert second["plausible"] is False and "CIF" in second["reason"]



def test_retrieve_knowledge_offline(mcp):
    passages = mcp.call("retrieve_knowledge", {"query": "spinel AB2O4 cation sites", "k": 3})
    assert not passages.is_error, passages.content
    found = passages.structured_content["passages"]
    assert len(found) == 3 and all(p["text"] and p["source"] and p["score"] is not None for p in found)

    answer = mcp.call("retrieve_knowledge", {"query": "pyrochlore A2B2O7", "k": 2})
    assert not answer.is_error, answer.content
    retrieved = answer.structured_content
    assert retrieved["query"] == "pyrochlore A2B2O7" and "GENMS_OFFLINE" in retrieved["wikipedia"]  # the server inherited it
    first = retrieved["passages"][0]
    assert first["source"] == "genms://knowledge/families/pyrochlore" and first["kind"] == "seed"
    assert "pyrochlore" in first["text"].lower() and first["chunk"] is not None


def test_recall_candidates_finds_the_recorded_search(mcp, searched):
    result = searched[0]
    answer = mcp.call("recall_candidates", {"query": "the spinels we found", "k": 50})
    assert not answer.is_error, answer.content
    recalled = answer.structured_content["candidates"]
    mine = [c for c in recalled if c["run_id"] == result["run_id"]]
    assert len(mine) == result["n_candidates"] and all(c["family"] == "spinel" for c in recalled)
    best = min(mine, key=lambda c: c["rank"])
    assert best["formula"] == result["candidates"][0]["formula"] and best["request"] == REQUEST
    assert "cif_path" not in best and best["cif_uri"] == result["candidates"][0]["cif_uri"]
    assert "_cell_length_a" in mcp.read(best["cif_uri"]).contents[0].text

    good = mcp.call("recall_candidates", {"query": "Mn oxide", "family": "spinel", "good_only": True, "k": 50})
    assert not good.is_error and all(c["good"] for c in good.structured_content["candidates"])
    assert {c["run_id"] for c in good.structured_content["candidates"] if c["run_id"] == result["run_id"]} == (
        {result["run_id"]} if result["n_good"] else set())


@pytest.mark.parametrize(("tool", "arguments", "says"), [
    ("check_formulas", {"formulas": "LiMn2O4"}, "valid list"),
    ("check_formulas", {"formulas": []}, "at least 1"),
    ("search_materials", {"request": REQUEST, "proposals": 0}, "greater than or equal to 1"),
    ("search_materials", {"request": REQUEST, "relax_steps": 10_000}, "less than or equal to 2000"),
    ("generate_structures", {"formula": "MgAl2O4", "n": 1000}, "less than or equal to 50"),
    ("generate_structures", {"formula": "MgAl2O4", "generator": "nonsense"}, "template"),
    ("generate_structures", {"formula": "Xx2O3"}, "unknown element 'Xx' in 'Xx2O3'"),
    ("generate_structures", {"formula": "SrTiO3", "family": "nonsense"}, "unknown crystal family 'nonsense'"),
    ("check_structure", {"cif": "x" * 5_000_000}, "at most 1000000 characters"),
    ("get_run", {"run_id": "../../etc"}, "invalid run id"),
    ("get_run", {"run_id": "20000101T000000-abcdef"}, "no run"),
    ("propose_formulas", {"request": "make me a sandwich"}, "could not find a crystal family"),
    ("search_materials", {"request": "make me a sandwich", **TINY}, "not searched"),
    ("retrieve_knowledge", {"query": "   "}, "empty query"),
    ("retrieve_knowledge", {"query": "spinel", "k": 100}, "less than or equal to 50"),
    ("retrieve_knowledge", {"query": "x" * 2001}, "at most 2000 characters"),
    ("recall_candidates", {"query": ""}, "at least 1 character"),
    ("recall_candidates", {"query": "spinels", "k": 501}, "less than or equal to 500"),
    ("recall_candidates", {"query": "x", "family": "quasicrystal"}, "unknown crystal family 'quasicrystal'"),
    ("lookup_material", {"formula": "Xx2O3"}, "unknown element 'Xx' in 'Xx2O3'"),
    ("lookup_material", {"formula": "TiO2", "limit": 101}, "less than or equal to 100"),
])
def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(mcp, tool, arguments, says):
    result = mcp.call(tool, arguments)
    assert result.is_error and says in result.content[0].text, result.content
    assert not mcp.call("check_formulas", {"formulas": ["SrTiO3"]}).is_error


def test_resources_refuse_names_outside_the_run(mcp, searched):
    run_id = searched[0]["run_id"]
    for uri in (f"genms://runs/{run_id}/cifs/..%2F..%2F..%2Fetc%2Fpasswd", "genms://runs/..%2F..%2Fetc/report.md",
                f"genms://runs/{run_id}/cifs/run.json", "genms://runs/nope/report.md"):
        with pytest.raises(MCPError):
            mcp.read(uri)
    assert mcp.read(searched[0]["resources"]["report"]).contents[0].text


def test_cancelling_a_search_stops_it(mcp, searched):
    started = anyio.Event()
    messages: list[str] = []

    async def on_progress(progress, total, message):
        messages.append(message)
        if message.startswith("generate"):
            started.set()

    async def search_then_cancel():
        async with anyio.create_task_group() as group:
            async def call():
                await mcp.client.call_tool("search_materials", {"request": CANCELLED_REQUEST, **BIG},
                                           progress_callback=on_progress)
                raise AssertionError("the search was not cancelled")

            group.start_soon(call)
            with anyio.fail_after(120):
                await started.wait()
            group.cancel_scope.cancel()

    mcp.run(search_then_cancel)
    # The search stops at its next progress event, once the formula in hand has its structures
    # (diffusion samples and prototypes): tens of seconds on a busy 2-core machine.
    mcp.wait_for_log(STOPPED, timeout=240)
    runs = mcp.call("list_runs", {"limit": 200}).structured_content["runs"]
    assert CANCELLED_REQUEST not in {r["request"] for r in runs}


def test_concurrent_searches_complete_and_do_not_block_other_calls(mcp, searched):
    if mcp.transport != "http":
        pytest.skip("exercised once, over HTTP")
    done: dict[str, float] = {}

    async def both():
        async with anyio.create_task_group() as group:
            async def search(seed: int):
                result = await mcp.client.call_tool("search_materials", {"request": REQUEST, **TINY, "seed": seed})
                assert not result.is_error, result.content
                done[f"search {seed}"] = time.perf_counter()

            async def quick():
                await anyio.sleep(0.5)
                result = await mcp.client.call_tool("check_formulas", {"formulas": ["MgAl2O4"]})
                assert not result.is_error
                done["quick"] = time.perf_counter()

            group.start_soon(search, 1)
            group.start_soon(search, 2)
            group.start_soon(quick)

    mcp.run(both)
    assert set(done) == {"search 1", "search 2", "quick"}
    assert done["quick"] < min(done["search 1"], done["search 2"])


def test_remote_binding_needs_allow_remote_and_a_token():
    from agent.mcp_server import ServeConfigError, check_transport

    done = subprocess.run([GENMS, "mcp", "--transport", "http", "--host", "0.0.0.0"], env=server_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--allow-remote" in " ".join(done.stderr.split())
    for host, allow_remote, token, says in [
        ("0.0.0.0", False, "x" * 32, "--allow-remote"), ("192.168.1.5", True, None, "without a bearer token"),
        ("::", True, "short", "too short"), ("example.org", False, None, "--allow-remote"),
    ]:
        with pytest.raises(ServeConfigError, match=says):
            check_transport("http", host, allow_remote, token)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_transport("http", host, False, None)
    check_transport("stdio", "0.0.0.0", False, None)


def test_remote_http_checks_the_bearer_token_on_every_request(tmp_path):
    token = "t0ken-for-tests-" + "x" * 16
    port = free_port("0.0.0.0")
    log = tmp_path / "server.log"
    with open(log, "w") as errlog:
        process = subprocess.Popen([GENMS, "mcp", "--transport", "http", "--host", "0.0.0.0", "--allow-remote", "--allowed-host", "genms.test", "--port", str(port)],
                                   env=server_env(GENMS_MCP_TOKEN=token), cwd=ROOT, stdin=subprocess.DEVNULL,
                                   stdout=errlog, stderr=errlog)
    try:
        wait_for_port(port, process, log)
        url = f"http://127.0.0.1:{port}/mcp"
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            answer = httpx2.post(url, json=body, headers={"Accept": "application/json, text/event-stream", **headers})
            assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")

        async def list_tools():
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300)) as http:
                async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                    return {tool.name for tool in (await client.list_tools()).tools}

        assert anyio.run(list_tools) == TOOLS
    finally:
        stop(process)
