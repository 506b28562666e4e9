"""Outside text in terminal output and reports: printed as written, never read as markup.

Formulas, requests, file names, run records and LLM text can hold ``[/red]`` or ``[bold]``:
the CLI prints them literally (no MarkupError, nothing swallowed), shows control characters as
``\\xNN`` instead of sending them to the terminal, and a request cannot add Markdown structure to
a report. ``--out`` is checked before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from memory.runs import RunStore, new_run_id

ROOT = Path(__file__).resolve().parents[1]
GENMS = str(Path(sys.executable).parent / "genms")
MARKUP = "[/red] [bold]x"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMS_VECTOR_DIR", str(tmp_path / "home" / "chroma"))
    return tmp_path / "home"


def cli(*args: str, stdin: str | None = None):
    result = CliRunner().invoke(app, list(args), input=stdin, env={"COLUMNS": "250"})  # wide: no cell wrapped
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# --- rich markup and control characters -------------------------------------------------------------


def test_markup_in_formulas_prints_as_written():
    result = cli("formula", "check", "[/red]", "[bold]x", "SrTiO3")
    assert result.exit_code == 0
    assert "│ [/red] " in result.stdout and "│ [bold]x " in result.stdout  # the table's input column
    assert "[/red]: unexpected character" in result.stdout and "[bold]x: unexpected character" in result.stdout
    only_bad = cli("formula", "check", "[/red]")
    assert only_bad.exit_code == 1 and "[/red]" in only_bad.stdout


def test_control_characters_are_shown_not_sent_to_the_terminal():
    result = cli("formula", "check", "\x1b[2J\x1b[31mMn\rO", "\u202eOnM")
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\r" not in result.output and "\u202e" not in result.output
    assert "\\x1b[2J\\x1b[31mMn\\x0dO" in result.stdout and "\\u202eOnM" in result.stdout


def test_markup_in_file_names_and_their_errors(tmp_path):
    bad = tmp_path / "[bold]x.cif"
    bad.write_text("data_[/red]\nnot a cif\n")
    missing = tmp_path / "[red]y[i].cif"  # ('/' cannot be in a file name)
    result = cli("structure", "check", str(bad), str(missing))
    assert result.exit_code == 1
    assert "│ [bold]x.cif " in result.stdout and "│ [red]y[i].cif " in result.stdout
    assert "[bold]x.cif: " in result.stdout and "[red]y[i].cif: cannot read file" in result.stdout


def test_markup_in_an_unsearchable_request(tmp_path):
    result = cli("search", MARKUP, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert f"not searched: could not find a crystal family, composition or property in '{MARKUP}'" in " ".join(result.stderr.split())


def test_markup_in_a_saved_request_does_not_break_memory_list(home):
    store = RunStore()
    run_id = new_run_id()
    request = f"a spinel {MARKUP} [link](x) :fire:"
    candidate = {"formula": "Mn[/red]Ga2O4", "family": "[bold]spinel", "prototype": "MgAl2O4", "checks": {"spacegroup_symbol": "[i]"},
                 "formation_energy_per_atom": -2.5, "e_above_hull": 0.02, "known_in": ["[/]"], "plausible": True}
    files = {"results.json": json.dumps({"request": request, "planner": "[red]offline", "seconds": 1.0, "candidates": [candidate]})}
    store.save(run_id, files, {"request": request, "planner": "[red]offline", "seconds": 1.0, "family": None, "n_candidates": 1,
                               "n_good": 1, "best": [{"formula": "Mn[/red]Ga2O4", "e_above_hull": 0.02}]})
    listing = cli("memory", "list")
    assert listing.exit_code == 0
    assert request in listing.stdout and "[red]offline" in listing.stdout and "Mn[/red]Ga2O4 (0.020)" in listing.stdout
    shown = cli("memory", "show", run_id)
    assert shown.exit_code == 0
    assert f"for: {request}" in shown.stdout and "planner [red]offline" in shown.stdout
    assert "Mn[/red]Ga2O4" in shown.stdout and "[bold]spinel / MgAl2O4" in shown.stdout and "│ [i] " in shown.stdout


def test_markup_in_a_knowledge_file_and_its_title(home, tmp_path):
    notes = tmp_path / "[red]notes.md"
    notes.write_text("# [/red] Spinel [bold]notes\n\nSpinels are AB2O4 oxides; [/red] stays as written.\n")
    added = cli("knowledge", "add", str(notes))
    assert added.exit_code == 0 and "added [/red] Spinel [bold]notes (user, 1 chunks)" in added.stdout
    found = cli("knowledge", "search", f"spinel notes {MARKUP}", "--no-wikipedia", "-k", "1")
    assert found.exit_code == 0 and f"for: spinel notes {MARKUP}" in found.stdout and "[/red] Spinel [bold]notes" in found.stdout


def test_an_error_message_quoting_input_is_escaped():
    result = cli("family", "references", MARKUP)
    assert result.exit_code == 2 and f"error: unknown crystal family {MARKUP!r}" in result.stderr


def test_the_chat_prints_user_text_and_thread_names_as_written(tmp_path):
    env = {**os.environ, "GENMS_HOME": str(tmp_path / "home"), "GENMS_OFFLINE": "1", "COLUMNS": "250"}
    env.pop("ANTHROPIC_API_KEY", None)
    typed = f"hello {MARKUP}\n/{MARKUP}\n/history\n/save {tmp_path}\n/quit\n"
    chat = subprocess.run([GENMS, "chat", "--thread", "[bold]lab[/bold]"], input=typed, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr[-3000:]
    assert "thread [bold]lab[/bold];" in chat.stdout
    assert f"unknown command /{MARKUP.split()[0]};" in chat.stdout
    assert f"you: hello {MARKUP}" in chat.stdout


# --- Markdown reports -------------------------------------------------------------------------------------


def unescaped(markdown: str, *characters: str) -> list[str]:
    """Lines where one of ``characters`` appears without the backslash that makes it literal."""
    return [line for line in markdown.splitlines()
            if any(ch in characters and (i == 0 or line[i - 1] != "\\") for i, ch in enumerate(line))
            and not line.startswith("|---")]


INJECTION = "please\n# Injected heading\n<script>alert(1)</script> [click](http://evil.example) | cell | `code`"


def test_a_request_cannot_add_structure_to_report_md(tmp_path):
    out = tmp_path / "out"
    result = cli("search", INJECTION, "--out", str(out))
    assert result.exit_code == 1  # not understood: the report is still written, with the request
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    assert [line for line in lines if line.startswith("#")] == [lines[0]] and lines[0].startswith("# genms search: please # Injected")
    assert not unescaped(report, "<", "[", "]", "`") and "| cell |" not in report
    assert r"\<script\>alert(1)\</script\> \[click\](http://evil.example) \| cell \| \`code\`" in lines[0]


def test_candidates_cannot_add_structure_to_report_md():
    from agent.search import SearchResult, markdown_report

    candidate = {"formula": "Mn|Ga2O4", "family": "spinel", "prototype": "<b>x</b>", "formation_energy_per_atom": -2.5,
                 "e_above_hull": 0.02, "checks": {"spacegroup_symbol": "Fd-3m", "cif_valid": True, "structurally_valid": True,
                                                  "charge_balanced": True},
                 "known_in": [], "plausible": True, "reason": None, "rationale": "![img](http://evil/x.png)\n## Owned"}
    decision = {"round": 1, "elapsed_s": 0.1, "step": "generate", "decision": "continue", "reason": "[x](javascript:alert(1))"}
    result = SearchResult(request="a spinel", spec={}, candidates=[candidate], decisions=[decision],
                          dropped=[{"formula": "*X*", "reason": "<img src=x onerror=alert(1)>"}],
                          context=[{"source": "http://e", "title": "[T](http://evil)", "kind": "wikipedia", "score": 0.5}])
    report = markdown_report(result)
    row = next(line for line in report.splitlines() if line.startswith("| 1 |"))
    assert row.count(" | ") == 7 and r"Mn\|Ga2O4" in row  # eight cells, the formula's bar escaped
    assert not unescaped(report, "<", "[", "]") and r"- \*X\*: " in report  # genms's own ** stay bold
    assert "\n## Owned" not in report and [line for line in report.splitlines() if line.startswith("#")] == [
        "# genms search: a spinel", "## Decisions", "## Dropped formulae", "## Background retrieved", "## Candidates"]


# --- --out checked before any work ------------------------------------------------------------------------


OUT_COMMANDS = {
    "search": ["search", "a novel spinel oxide containing Mn", "-H", "5", "-W", "1", "-L", "1"],
    "template": ["generate", "template", "MgAl2O4"],
    "diffusion": ["generate", "diffusion", "SrTiO3", "-n", "1"],
    "gfn": ["generate", "gfn", "-n", "1"],
    "unimdm": ["generate", "unimdm", "--formula", "BaTiO3", "-n", "1"],
    "eval": ["eval", "run", "families"],
}


@pytest.mark.parametrize("command", list(OUT_COMMANDS))
def test_out_that_is_a_file_is_refused_before_any_work(home, tmp_path, command):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    result = cli(*OUT_COMMANDS[command], "--out", str(existing))
    assert result.exit_code == 2 and f"error: --out {existing} is a file, not a folder" in " ".join(result.stderr.split())
    assert existing.read_text() == "keep me\n"
    assert not (home / "runs").exists() or not RunStore().ids()  # the search never ran: no run recorded


@pytest.mark.parametrize("command", ["search", "template", "gfn"])
def test_out_below_a_file_is_refused_before_any_work(home, tmp_path, command):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    result = cli(*OUT_COMMANDS[command], "--out", str(existing / "run"))
    assert result.exit_code == 2 and f"cannot create --out {existing / 'run'}: {existing} is a file, not a folder" in " ".join(result.stderr.split())
    assert not (home / "runs").exists() or not RunStore().ids()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_out_in_a_read_only_folder_is_refused(home, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli(*OUT_COMMANDS["search"], "--out", str(locked / "run"))
        assert result.exit_code == 2 and "cannot write to --out" in result.stderr
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_nothing_can_be_written_is_refused_even_for_root(home):
    result = cli(*OUT_COMMANDS["search"], "--out", "/proc/self/genms-run")  # no file can be created in /proc
    assert result.exit_code == 2 and "cannot write to --out /proc/self/genms-run" in " ".join(result.stderr.split())
    assert not (home / "runs").exists() or not RunStore().ids()


def test_out_a_broken_link_is_refused(tmp_path):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    result = cli("generate", "template", "MgAl2O4", "--out", str(link))
    assert result.exit_code == 2 and "is a broken link, not a folder" in " ".join(result.stderr.split())


def test_out_that_is_a_folder_or_new_still_works(tmp_path):
    result = cli("generate", "template", "MgAl2O4", "-n", "1", "--out", str(tmp_path / "new" / "deeper"))
    assert result.exit_code == 0 and len(list((tmp_path / "new" / "deeper").glob("*.cif"))) == 1
    again = cli("generate", "template", "MgAl2O4", "-n", "1", "--out", str(tmp_path / "new" / "deeper"))
    assert again.exit_code == 0
    assert not list((tmp_path / "new" / "deeper").glob(".genms-write-test-*"))  # the probe leaves nothing
