"""Rich renderings shared by the command line and the chat.

Every piece of outside text (requests, formulas, file names, CIF-derived text, LLM answers,
Wikipedia titles, run records, exception messages quoting any of these) goes through
:func:`safe` before it reaches a rich markup string, a table cell, a title, a panel or a
progress description: ``[/red]`` or ``[bold]`` in it prints as written, never as markup, and
control characters (terminal escape sequences, carriage returns, bidirectional overrides) print
as visible ``\\xNN`` escapes instead of acting on the terminal. The consoles here do not turn
``:name:`` into emoji either. Markdown written for people (a run's ``report.md``) uses
:func:`md_text` and :func:`md_code` the same way.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides/isolates.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(value: object) -> str:
    """``value`` as text with control characters shown as ``\\xNN`` / ``\\uNNNN`` (no markup escaping)."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def safe(value: object) -> str:
    """Outside text made inert for rich: markup escaped, control characters visible (None -> '')."""
    return escape(plain(value))


def emit_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, allow_nan=False))


def fail(message: str, code: int = 2) -> None:
    """Print the error on stderr and exit with ``code`` (2: bad input, 1: nothing usable).

    ``message`` is plain text (it often quotes user input): it is escaped, never read as markup."""
    err_console.print(f"[red]error:[/red] {safe(message)}")
    raise typer.Exit(code)


def fail_as(as_json: bool, message: str, code: int = 1, **context) -> None:
    """Exit with ``code`` after the error: as a JSON object (``error`` plus ``context``) with ``--json``, else on stderr."""
    if as_json:
        emit_json({"error": message, **context})
        raise typer.Exit(code)
    fail(message, code)


def number(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals; '-' for None, '?' for anything that is not a finite number."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "?"
    return f"{value:.{digits}f}"


def mark(value: object) -> str:
    if value is None:
        return "[dim]-[/dim]"
    return "[green]yes[/green]" if value else "[red]no[/red]"


def _field(mapping: object, *keys: str) -> object:
    """``mapping[k1][k2]...`` or None where a level is missing or not a dict (records read back from disk)."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _is_good(candidate: dict, max_e_above_hull: float | None = None) -> bool:
    from agent.graph import good_candidates

    try:
        return bool(good_candidates([candidate], max_e_above_hull))
    except (KeyError, TypeError):  # a damaged record
        return False


def _hull_cut(result: dict) -> float | None:
    """The request's stability cut (eV/atom) from a result or a record read back from disk."""
    cut = _field(result, "spec", "max_e_above_hull")
    return cut if isinstance(cut, (int, float)) and not isinstance(cut, bool) else None


def candidates_table(result: dict) -> Table:
    """Ranked candidates of a search result (``SearchResult.as_dict()``, or a run read back from disk)."""
    candidates = [c for c in (result.get("candidates") or []) if isinstance(c, dict)]
    cut = _hull_cut(result)
    good = sum(_is_good(c, cut) for c in candidates)
    request = result.get("request") or _field(result, "summary", "request") or "-"
    planner = result.get("planner") or _field(result, "summary", "planner") or "-"
    seconds = number(result.get("seconds"), 0) + " s"
    table = Table(title=f"{good} good candidates for: {safe(request)}  ({seconds}, planner {safe(planner)})")
    for column in ("rank", "formula", "family / prototype", "E_f (eV/atom)", "E_hull (eV/atom)", "space group", "known in", "plausible"):
        table.add_column(column)
    for rank, c in enumerate(candidates, start=1):
        known = c.get("known_in")
        known = ", ".join(map(str, known)) if isinstance(known, list) else known
        table.add_row(
            str(rank), safe(c.get("formula")), f"{safe(c.get('family'))} / {safe(c.get('prototype'))}",
            number(c.get("formation_energy_per_atom")), number(c.get("e_above_hull")),
            safe(_field(c, "checks", "spacegroup_symbol") or "-"), safe(known or "novel"), mark(c.get("plausible")),
        )
    return table


def check_out_folder(out, option: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work (exit 2 with the reason).

    ``out`` must be a folder or not exist yet; it (or, when it does not exist, its nearest
    existing parent, where it will be created) must take a new file. Nothing is left behind.
    """
    import os
    import tempfile
    from pathlib import Path

    if out is None:
        return
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        fail(f"{option} {out} is {'a broken link' if not out.exists() else 'a file'}, not a folder")
    probe_dir = out
    while not probe_dir.exists():
        if os.path.lexists(probe_dir):  # a broken link on the way
            fail(f"cannot create {option} {out}: {probe_dir} is a broken link")
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        fail(f"cannot create {option} {out}: {probe_dir} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=probe_dir, prefix=".genms-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        fail(f"cannot write to {option} {out}: {probe_dir}: {exc.strerror or exc}")


def write_output(path, text: str) -> None:
    """Write one output file (its folder created); a failure exits 1 with the reason, no traceback."""
    from pathlib import Path

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", code=1)


# Characters that can open Markdown structure in the middle of a line (emphasis, code, links,
# images, HTML, table cells, entities, strikethrough); a backslash makes each literal (CommonMark).
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|&~])")
# Those that can add structure beyond emphasis: code, links, images, HTML, table cells.
_MARKDOWN_STRUCTURE = re.compile(r"([\\`\[\]<>|])")


def md_text(value: object, emphasis: bool = True) -> str:
    """Outside text for one line of a Markdown report (a title, a list item, a table cell): on one
    line, control characters visible, every character that could start Markdown structure escaped
    (``emphasis=False`` leaves ``*``, ``_``, ``~`` and ``&`` as they are: identifiers stay readable)."""
    one_line = " ".join(plain(value).splitlines()) if value is not None else ""
    return (_MARKDOWN if emphasis else _MARKDOWN_STRUCTURE).sub(r"\\\1", one_line)


def _neighbour_text(n: dict) -> str:
    hull = n.get("e_above_hull")
    hull = "E_hull -" if hull is None else ("on the hull" if hull <= 0 else f"E_hull {number(hull)}")
    gap = n.get("band_gap")
    parts = [n.get("material_id"), n.get("spacegroup_symbol") or "space group unknown", hull,
             "PBE gap -" if gap is None else f"PBE gap {number(gap, 2)} eV"]
    return f"{md_text(n.get('formula'))} ({md_text(', '.join(str(p) for p in parts))})"


def neighbours_lines(candidates: list[dict]) -> list[str]:
    """A report's "Known neighbours" section: one Markdown line per candidate carrying ``neighbours``
    (``tools.lookup.attach_neighbours``): how it relates to known MP compounds, then the nearest ones.
    One line when they are unavailable for all; nothing when no candidate has them."""
    carrying = [c for c in candidates if isinstance(c, dict) and isinstance(c.get("neighbours"), list)]
    if not carrying:
        return []
    lines = ["", "## Known neighbours", ""]
    notes = {c.get("neighbours_note") for c in carrying}
    if not any(c["neighbours"] for c in carrying) and len(notes) == 1 and str(next(iter(notes))).startswith("known neighbours unavailable"):
        note = str(next(iter(notes)))
        return lines + [md_text(note[:1].upper() + note[1:]) + "."]
    for c in carrying:
        groups: list[tuple[str, list[str]]] = []  # consecutive neighbours of one relation ("same Ba-Ti-O system")
        for n in c["neighbours"]:
            if isinstance(n, dict):
                label = str(n.get("relation") or "").split(": ", 1)[0] or "known"
                if not groups or groups[-1][0] != label:
                    groups.append((label, []))
                groups[-1][1].append(_neighbour_text(n))
        parts = [md_text(c.get("neighbours_note") or "no note")]
        parts += [f"{md_text(label[:1].upper() + label[1:])}: {'; '.join(texts)}" for label, texts in groups]
        lines.append(f"- **{md_text(c.get('formula'))}**: " + ". ".join(parts))
    return lines
