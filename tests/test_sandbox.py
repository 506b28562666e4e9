"""The structure workers (tools.sandbox): a crash, a memory blow-up or a hang costs one item.

The faults are real (a NULL dereference, unbounded allocation, an endless loop) and happen in
the worker process, injected through ``GENMS_SANDBOX_TEST_TASKS=1``; the caller and the CLI
batch go on, and the next call gets a fresh worker. The MCP server's side of it runs in
``tests/test_hostile.py``, on its servers.
"""

from __future__ import annotations

import pytest
from test_mcp import CIF_TRIAL, GENMS, server_env

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
    ("hang", 1, "took longer than 1 s"),
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
