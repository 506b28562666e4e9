"""``genms eval``: list and run evaluation suites (``evals/suites/*.yaml`` or your own YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent.render import JsonOption, check_out_folder, console, emit_json, err_console, fail, safe

eval_app = typer.Typer(help="Evaluation suites: measure the system and baselines (GenMS tables, CSP, Crystal-GFN).",
                       no_args_is_help=True)


@eval_app.command("list")
def eval_list(as_json: JsonOption = False) -> None:
    """The bundled suites: task, cases, systems, metrics."""
    from evals.suite import SuiteError, bundled_suites, expand, load_suite

    items = []
    for path in bundled_suites():
        try:
            suite = load_suite(path)
        except SuiteError as exc:
            items.append({"name": path.stem, "file": str(path), "error": str(exc)})
            continue
        items.append({"name": suite.name, "file": str(path), "task": suite.task, "cases": len(suite.cases),
                      "systems": [s.name for s in suite.systems], "units": len(expand(suite)), "metrics": suite.metrics,
                      "description": suite.description.strip().splitlines()[0] if suite.description.strip() else "", "error": None})
    if as_json:
        emit_json(items)
        return
    table = Table(title=f"{len(items)} evaluation suites (run one: genms eval run evals/suites/NAME.yaml)")
    for column in ("suite", "task", "cases", "systems", "units", "description"):
        table.add_column(column, overflow="fold")
    for item in items:
        if item["error"]:
            table.add_row(safe(item["name"]), "-", "-", "-", "-", f"[red]{safe(item['error'])}[/red]")
        else:
            table.add_row(safe(item["name"]), safe(item["task"]), str(item["cases"]), safe(", ".join(item["systems"])), str(item["units"]),
                          safe(item["description"]))
    console.print(table)


@eval_app.command("run")
def eval_run(
    suite_file: Annotated[str, typer.Argument(help="A suite YAML file, or a bundled suite's name (families, csp, ...).")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for cases/, metrics.json, report.md and plots (default runs/eval/SUITE).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="Local worker processes (with --ray local: the local Ray instance's CPUs).")] = 1,
    ray_address: Annotated[str | None, typer.Option("--ray", help="Run on Ray: 'local' (a private local instance), 'auto', or an address.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a suite (resumable: finished cases in --out are not recomputed) and write its report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evals.runner import run_suite
    from evals.suite import SuiteError, load_suite

    try:
        suite = load_suite(suite_file)
    except SuiteError as exc:
        fail(str(exc))
    out = out or Path("runs") / "eval" / suite.name
    check_out_folder(out)
    stderr = err_console
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=False, disable=as_json) as bar:
        task = None

        def show(event: dict) -> None:
            nonlocal task
            if event["event"] == "start":
                task = bar.add_task(safe(f"{suite.name} ({event['backend']})"), total=event["total"], completed=event["finished"])
                if event["finished"]:
                    bar.console.print(f"[dim]resuming: {event['finished']} of {event['total']} units already finished in {safe(out)}[/dim]")
                return
            unit, record = event["unit"], event["record"]
            bar.advance(task)
            note = f"{record['status']}" + (f": {record['reason']}" if record.get("reason") else "")
            bar.console.print(f"[dim]{safe(unit['case']['id'])} / {safe(unit['system']['name'])} / {safe(unit['variant'])} "
                              f"(seed {unit['seed']}): {safe(note[:200])}, {record.get('seconds', 0):.1f} s[/dim]")

        try:
            result = run_suite(suite, out, workers=workers, ray_address=ray_address, on_event=show)
        except RuntimeError as exc:
            fail(str(exc))
    if as_json:
        emit_json({"out": str(out), **result})
        return
    names = suite.table or suite.metrics
    table = Table(title=f"{safe(suite.name)}: overall by system ({safe(out / 'report.md')})")
    table.add_column("system")
    if suite.grid:
        table.add_column("variant")
    for name in names:
        meta = result["metrics"][name]
        table.add_column(safe(f"{meta['label']} ({meta['unit']})"), justify="right")
    for row in result["overall"]:
        cells = [safe(row["system"])] + ([safe(row["variant"])] if suite.grid else [])
        if row["status"] == "skipped":
            cells += ["skipped"] + [""] * (len(names) - 1)
        else:
            cells += ["-" if row["metrics"][n] is None else f"{row['metrics'][n]:.3g}" for n in names]
        table.add_row(*cells)
    console.print(table)
    for row in result["overall"]:
        if row["status"] != "ok":
            variant = " " + str(row["variant"]) if suite.grid else ""
            console.print(f"[yellow]{safe(row['system'])}{safe(variant)}: {safe(row['status'])}: {safe(row['reason'])}[/yellow]")
    console.print(f"report {safe(out / 'report.md')}, metrics {safe(out / 'metrics.json')}, cases {safe(out / 'cases')}")
