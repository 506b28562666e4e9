"""The structure workers (tools.sandbox): a crash, a memory blow-up or a hang costs one item.

The faults are real (a NULL dereference, unbounded allocation, an endless loop) and happen in
the worker process, injected through ``GENMS_SANDBOX_TEST_TASKS=1``; the caller, the CLI
batch and the MCP server go on, and the next call gets a fresh worker.
"""

from __future__ import annotations

import anyio.from_thread
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_mcp import CIF_TRIAL, GENMS, ROOT, Session, server_env

from tools import sandbox

FAULT = sandbox.FAULT_PREFIX


@pytest.fixture
def pool(monkeypatch):
    """A private pool of one worker that knows the fault-injection tasks."""
    monkeypatch.setenv("GENMS_SANDBOX_TEST_TASKS", "1")
    workers = sandbox._Pool(1)
    yield workers
    workers.close()


@pytest.mark.parametrize(("how", "timeout", "message"), [
    ("segfault", 120, "crashed (SIGSEGV)"),
    ("memory", 120, "ran out of memory"),
    ("hang", 3, "took longer than 3 s"),
])
def test_a_failing_task_costs_one_call(pool, how, timeout, message):
    with pytest.raises(sandbox.SandboxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pool.run("crash", {"how": how}, timeout)
    report = pool.run("check_structure", {"text": CIF_TRIAL, "label": "SrTiO3.cif"}, 120)
    assert report["cif_valid"] and report["reduced_formula"] == "SrTiO3" and report["spacegroup_number"] == 221


def test_the_worker_is_reused_between_calls(pool):
    first = pool.run("check_structure", {"text": CIF_TRIAL, "label": "a.cif"}, 120)
    worker = pool.idle.queue[-1]
    second = pool.run("read_structure", {"text": CIF_TRIAL, "label": "b.cif"}, 120)
    assert pool.idle.queue[-1] is worker and worker.process.poll() is None
    assert first["n_sites"] == 5 and len(second["structure"]["sites"]) == 5


def test_unreadable_text_is_an_answer_not_a_failure(pool):
    assert "not a readable CIF" in pool.run("read_structure", {"text": "nonsense", "label": "x.cif"}, 120)["error"]


def test_the_cli_batch_survives_a_crashing_file(tmp_path):
    import subprocess

    (tmp_path / "crash.cif").write_text(f"{FAULT}segfault\n{CIF_TRIAL}")
    (tmp_path / "good.cif").write_text(CIF_TRIAL)
    done = subprocess.run([GENMS, "structure", "check", "crash.cif", "good.cif", "--json"], cwd=tmp_path, text=True,
                          capture_output=True, env=server_env(GENMS_SANDBOX_TEST_TASKS="1"), timeout=300)
    import json

    crashed, good = json.loads(done.stdout)
    assert "crashed (SIGSEGV)" in crashed["error"] and crashed["cif_valid"] is False
    assert good["reduced_formula"] == "SrTiO3" and good["cif_valid"]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("sandbox-mcp") / "server.log"
    env = server_env(GENMS_SANDBOX_TEST_TASKS="1", GENMS_SANDBOX_TIMEOUT="5")
    with anyio.from_thread.start_blocking_portal() as portal, open(log, "w") as errlog:
        params = StdioServerParameters(command=GENMS, args=["mcp"], env=env, cwd=str(ROOT))
        with portal.wrap_async_context_manager(Client(stdio_client(params, errlog=errlog), mode="legacy")) as client:
            yield Session(portal, client, log, "stdio")


@pytest.mark.parametrize(("how", "message"), [("segfault", "crashed (SIGSEGV)"), ("memory", "out of memory"),
                                              ("hang", "took longer than 5 s")])
def test_the_mcp_server_survives_a_crashing_check(faulty_server, how, message):
    result = faulty_server.call("check_structure", {"cif": f"{FAULT}{how}\n{CIF_TRIAL}"})
    assert not result.is_error and message in result.structured_content["error"]
    after = faulty_server.call("check_structure", {"cif": CIF_TRIAL}).structured_content
    assert after["cif_valid"] and after["reduced_formula"] == "SrTiO3"


def test_the_mcp_score_batch_survives_a_crashing_item(faulty_server):
    cifs = [CIF_TRIAL, f"{FAULT}segfault\n{CIF_TRIAL}", CIF_TRIAL]
    reports = faulty_server.call("score_structures", {"cifs": cifs}).structured_content["results"]
    assert [r["plausible"] for r in reports] == [True, False, True]
    assert "crashed (SIGSEGV)" in reports[1]["reason"]
