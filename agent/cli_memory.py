"""``genms knowledge`` (retrieval) and ``genms memory`` (runs and remembered candidates) commands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from agent.render import JsonOption, console, emit_json, err_console, fail, number, safe

knowledge_app = typer.Typer(help="The knowledge store: seeded articles, Wikipedia, your own notes.", no_args_is_help=True)
memory_app = typer.Typer(help="What genms has done: runs and the candidates they produced.", no_args_is_help=True)


@knowledge_app.command("search")
def knowledge_search(
    query: Annotated[str, typer.Argument(help="What to look up, e.g. 'pyrochlore A2B2O7'.")],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="Passages to return.")] = 5,
    wikipedia: Annotated[bool, typer.Option("--wikipedia/--no-wikipedia", help="Fetch Wikipedia articles for the query when online.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Passages closest in meaning to the query, with source and similarity (offline-first)."""
    from tools.knowledge import KnowledgeError, search_knowledge

    try:
        with err_console.status("searching the knowledge store..."):
            found = search_knowledge(query, k, wikipedia=wikipedia)
    except KnowledgeError as exc:
        fail(str(exc))
    if as_json:
        emit_json(found.as_dict())
        return
    table = Table(title=f"{len(found.passages)} passages for: {safe(found.query)}  ({safe(found.wikipedia)}; {found.seconds:.2f} s)")
    for column in ("score", "title", "source", "passage"):
        table.add_column(column, overflow="fold")
    for p in found.passages:
        table.add_row(f"{p.score:.3f}", safe(p.title), safe(p.source), safe(p.text[:300] + ("..." if len(p.text) > 300 else "")))
    console.print(table)


@knowledge_app.command("add")
def knowledge_add(
    file_or_title: Annotated[str, typer.Argument(help="A .txt/.md file, or the title of a Wikipedia article.")],
    as_json: JsonOption = False,
) -> None:
    """Add a text file or a Wikipedia article to the knowledge store (chunked, searchable)."""
    from tools.knowledge import KnowledgeError, add_knowledge

    try:
        with err_console.status(f"adding {safe(file_or_title)}..."):
            added = add_knowledge(file_or_title)
    except KnowledgeError as exc:
        fail(str(exc))
    if as_json:
        emit_json(added)
    else:
        console.print(f"added [bold]{safe(added['title'])}[/bold] ({safe(added['kind'])}, {safe(added['chunks'])} chunks) "
                      f"from {safe(added['source'])}")


@memory_app.command("list")
def memory_list(
    limit: Annotated[int, typer.Option("-n", min=1, max=10000, help="Newest runs to show.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recorded runs, newest first."""
    from memory.runs import RunStore

    store = RunStore()
    runs = store.list(limit)
    if as_json:
        emit_json({"root": str(store.root), "runs": runs})
        return
    table = Table(title=f"{len(runs)} runs in {safe(store.root)}")
    for column in ("run", "request", "planner", "good / all", "best (E_hull eV/atom)", "s"):
        table.add_column(column, overflow="fold")
    for run in runs:
        if run.get("damaged"):  # listed with the reason; `memory show` refuses it
            table.add_row(safe(run["run_id"]), f"[red]damaged:[/red] {safe(run['reason'])}", "-", "-", "-", "-")
            continue
        best = ", ".join(f"{b['formula']} ({number(b.get('e_above_hull'))})" for b in run.get("best", [])[:3]) or "-"
        table.add_row(safe(run["run_id"]), safe(run["request"]), safe(run["planner"]), f"{run['n_good']} / {run['n_candidates']}",
                      safe(best), number(run["seconds"], 0))
    console.print(table)


@memory_app.command("show")
def memory_show(
    run_id: Annotated[str, typer.Argument(help="A run id from `genms memory list`.")],
    as_json: JsonOption = False,
) -> None:
    """One run: its request, decisions and ranked candidates, with the paths of its files."""
    from agent.render import candidates_table
    from memory.runs import InvalidRunId, RunNotFound, RunStore

    store = RunStore()
    try:
        run = store.load(run_id)
    except InvalidRunId as exc:
        fail(str(exc))
    except RunNotFound as exc:
        fail(str(exc), code=1)
    if as_json:
        emit_json({**run, "run_dir": str(store.path(run_id))})
        return
    console.print(candidates_table(run))
    console.print(f"files in {safe(store.path(run_id))}: {safe(', '.join(run['files']))}")


@memory_app.command("candidates")
def memory_candidates(
    query: Annotated[str, typer.Argument(help="What you are looking for, e.g. 'the spinels we found'.")],
    family: Annotated[str | None, typer.Option("--family", help="Only this catalogue family.")] = None,
    good_only: Annotated[bool, typer.Option("--good", help="Only candidates that passed every check.")] = False,
    k: Annotated[int, typer.Option("-k", min=1, max=500, help="How many.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Candidates of earlier runs closest in meaning to the query."""
    from tools.knowledge import recall_candidates

    try:
        found = recall_candidates(query, k=k, family=family, good_only=good_only)
    except (KeyError, ValueError) as exc:
        fail(str(exc).strip("'\""))
    if as_json:
        emit_json([c.as_dict() for c in found])
        return
    table = Table(title=f"{len(found)} remembered candidates for: {safe(query)}")
    for column in ("formula", "family", "E_f", "E_hull", "good", "run", "CIF"):
        table.add_column(column, overflow="fold")
    for c in found:
        table.add_row(safe(c.formula), safe(c.family), number(c.formation_energy_per_atom), number(c.e_above_hull),
                      "yes" if c.good else "no", safe(c.run_id), safe(c.cif_path))
    console.print(table)
