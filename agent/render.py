"""Rich renderings shared by the command line and the chat."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def emit_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, allow_nan=False))


def fail(message: str, code: int = 2) -> None:
    """Print the error on stderr and exit with ``code`` (2: bad input, 1: nothing usable)."""
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def fail_as(as_json: bool, message: str, code: int = 1, **context) -> None:
    """Exit with ``code`` after the error: as a JSON object (``error`` plus ``context``) with ``--json``, else on stderr."""
    if as_json:
        emit_json({"error": message, **context})
        raise typer.Exit(code)
    fail(message, code)


def number(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mark(value: object) -> str:
    if value is None:
        return "[dim]-[/dim]"
    return "[green]yes[/green]" if value else "[red]no[/red]"


def candidates_table(result: dict) -> Table:
    """Ranked candidates of a search result (``SearchResult.as_dict()``)."""
    from agent.graph import good_candidates

    good = len(good_candidates(result["candidates"]))
    table = Table(title=f"{good} good candidates for: {result['request']}  ({result['seconds']:.0f} s, planner {result['planner']})")
    for column in ("rank", "formula", "family / prototype", "E_f (eV/atom)", "E_hull (eV/atom)", "space group", "known in", "plausible"):
        table.add_column(column)
    for rank, c in enumerate(result["candidates"], start=1):
        table.add_row(
            str(rank), c["formula"], f"{c['family']} / {c['prototype']}", number(c["formation_energy_per_atom"]),
            number(c["e_above_hull"]), c["checks"]["spacegroup_symbol"] or "-", ", ".join(c["known_in"] or []) or "novel",
            mark(c["plausible"]),
        )
    return table
