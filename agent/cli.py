"""The ``genms`` command line: rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent.cli_diffusion import generate_diffusion_command
from agent.cli_eval import eval_app
from agent.cli_gfn import generate_gfn_command
from agent.cli_memory import knowledge_app, memory_app
from agent.cli_unimdm import generate_unimdm_command
from agent.render import JsonOption, check_out_folder, console, err_console, safe, write_output
from agent.render import emit_json as _emit_json
from agent.render import fail as _fail
from agent.render import fail_as
from agent.render import mark as _mark
from agent.render import number as _number

app = typer.Typer(help="genms: ask for crystals in plain language; check, rank and validate them.", no_args_is_help=True)
formula_app = typer.Typer(help="Check chemical formulas.", no_args_is_help=True)
structure_app = typer.Typer(help="Check crystal structures (CIF files).", no_args_is_help=True)
family_app = typer.Typer(help="The crystal families catalogue.", no_args_is_help=True)
app.add_typer(formula_app, name="formula")
app.add_typer(structure_app, name="structure")
generate_app = typer.Typer(help="Generate crystal structures for a formula, or by Crystal-GFN under a property reward.", no_args_is_help=True)
generate_app.command("diffusion")(generate_diffusion_command)
generate_app.command("gfn")(generate_gfn_command)
generate_app.command("unimdm")(generate_unimdm_command)
app.add_typer(family_app, name="family")
app.add_typer(generate_app, name="generate")
app.add_typer(knowledge_app, name="knowledge")
app.add_typer(memory_app, name="memory")
app.add_typer(eval_app, name="eval")


def _exit_if_all_failed(reports: list[dict]) -> None:
    if reports and all(report["error"] for report in reports):
        raise typer.Exit(1)


@app.command()
def search(
    request: Annotated[str, typer.Argument(help="What you want, e.g. 'a novel spinel oxide containing Mn'.")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for CIFs, results.json and report.md (default: a new run folder under $GENMS_HOME/runs).")] = None,
    proposals: Annotated[int, typer.Option("--proposals", "-H", min=1, max=500, help="Formulae proposed per round.")] = 20,
    formulas: Annotated[int, typer.Option("--formulas", "-W", min=1, max=100, help="Formulae sent to the generator at a time.")] = 5,
    structures: Annotated[int, typer.Option("--structures", "-L", min=1, max=100, help="Structures per formula.")] = 4,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Proposal rounds at most.")] = 3,
    relax_steps: Annotated[int, typer.Option(min=0, max=2000, help="CHGNet relaxation steps per formula's best structure.")] = 100,
    time_budget: Annotated[float, typer.Option("--time", min=1, max=86400, help="Wall-clock budget, seconds.")] = 1800,
    results: Annotated[int | None, typer.Option("--results", "-n", min=1, max=100, help="Good candidates wanted.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Run the hierarchical search: understand, propose, screen, generate, score, select, report."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from agent.search import run_search, save_run

    check_out_folder(out)  # before the search, not after it
    overrides = {
        "seed": seed,
        "budget": {"proposals": proposals, "formulas": formulas, "structures_per_formula": structures, "rounds": rounds,
                   "relax_steps": relax_steps, "seconds": time_budget},
    }
    if results is not None:
        overrides["n_results"] = results
    stderr = err_console
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        tasks: dict[str, int] = {}

        def show(event: dict) -> None:
            if "decision" in event:
                d = event["decision"]
                if d["step"] == "understand" and d["decision"] == "stop":
                    return  # the error is printed once, below
                bar.console.print(f"[dim]{safe(d['step'])}:[/dim] {safe(d['decision'])} - {safe(d['reason'])}")
                return
            label = safe(f"{event['stage']} {event.get('detail', '')}".strip())
            if event["stage"] not in tasks:
                tasks[event["stage"]] = bar.add_task(label, total=max(event["total"], 1))
            bar.update(tasks[event["stage"]], description=label, completed=event["done"], total=max(event["total"], 1))

        result = run_search(request, overrides, on_progress=show)
    try:
        written = save_run(result, out)
    except OSError as exc:  # the folder was checked up front; a full disk or a change since
        _fail(f"the search ran but its files could not be written to {out or 'the runs folder'}: {exc.strerror or exc}", code=1)
    if as_json:
        _emit_json({**result.as_dict(), "files": written})
    elif result.error:
        stderr.print(f"[red]not searched:[/red] {safe(result.error)}")
    else:
        _print_candidates(result)
        if written:
            console.print(f"run {safe(written['run_id'])}: results {safe(written['results'])}, report {safe(written['report'])}, "
                          f"CIFs {safe(written['cifs'])}")
    if result.error or not result.good:
        raise typer.Exit(1)


def _print_candidates(result) -> None:
    from agent.render import candidates_table

    console.print(candidates_table(result.as_dict()))
    if result.claude:
        from tools.claude import usage_summary

        console.print(f"[dim]{safe(usage_summary(result.claude))}[/dim]")


@app.command()
def chat(
    thread: Annotated[str, typer.Option("--thread", help="Conversation to resume (created if new).")] = "default",
    proposals: Annotated[int, typer.Option("--proposals", "-H", min=1, max=500)] = 20,
    formulas: Annotated[int, typer.Option("--formulas", "-W", min=1, max=100)] = 5,
    structures: Annotated[int, typer.Option("--structures", "-L", min=1, max=100)] = 4,
    relax_steps: Annotated[int, typer.Option(min=0, max=2000)] = 100,
) -> None:
    """Chat with genms: ask questions, check and score structures, run searches (Ctrl-C stops a step)."""
    from agent.chat import run_chat

    budget = {"proposals": proposals, "formulas": formulas, "structures_per_formula": structures, "relax_steps": relax_steps}
    run_chat(console, thread, budget)


@app.command()
def doctor(as_json: JsonOption = False) -> None:
    """Report Python, torch, CHGNet weights, data, API key, and which features run offline."""
    from agent.doctor import diagnose

    report = diagnose()
    if as_json:
        _emit_json(report)
        return
    table = Table(title="genms doctor", show_header=False)
    table.add_row("Python", safe(report["python"]))
    for name, version in report["packages"].items():
        table.add_row(safe(name), safe(version) or "[red]not installed[/red]")
    table.add_row("CHGNet weights", safe(", ".join(report["chgnet_weights"])) or "[red]none found[/red]")
    data = report["data"]
    missing = [name for name, present in data["files"].items() if not present]
    table.add_row("data dir", safe(data["data_dir"]) or f"[red]{safe(data['error'])}[/red]")
    table.add_row("data files", "all present" if not missing else f"[red]missing: {safe(', '.join(missing))}[/red]")
    table.add_row("formula index", f"{report['formula_index']['formulas']:,} formulas")
    table.add_row("ANTHROPIC_API_KEY", "set" if report["anthropic_api_key"] else "not set")
    table.add_row("planner", "Claude" if report["planner"] == "claude" else "offline planner (no network needed)")
    claude = report["claude"]
    if claude["answered"]:
        table.add_row("Claude", f"{safe(claude['model'])} answered in {claude['seconds']} s ({safe(claude['output'])} output)")
    elif claude["called"] or claude["deprecated"]:
        table.add_row("Claude", f"[red]{safe(claude['model'])}: {safe(claude['error'])}[/red] (the offline path runs instead)")
    else:
        table.add_row("Claude", f"{safe(claude['model'])}: not called (no key)")
    console.print(table)
    features = Table(title="features")
    for column in ("feature", "available", "offline"):
        features.add_column(column)
    for row in report["features"]:
        features.add_row(safe(row["feature"]), _mark(row["available"]), _mark(row["offline"]))
    console.print(features)
    if not report["ok"]:
        raise typer.Exit(1)


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a list file (regular files of at most MAX_STRUCTURE_BYTES only)."""
    from tools.files import InputFileError, read_bounded_text
    from tools.limits import MAX_STRUCTURE_BYTES

    try:
        return [line.strip() for line in read_bounded_text(path, MAX_STRUCTURE_BYTES).splitlines() if line.strip()]
    except InputFileError as exc:
        _fail(f"cannot read {path}: {exc}")
    return []


@formula_app.command("check")
def formula_check(
    formulas: Annotated[list[str] | None, typer.Argument(help="Formulas, e.g. SrTiO3 MgAl2O4 ('-' reads stdin).")] = None,
    from_file: Annotated[Path | None, typer.Option("--from-file", help="Read formulas, one per line.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="A formula to treat as known (repeatable).")] = None,
    exclude_file: Annotated[Path | None, typer.Option("--exclude-file", help="Formulas to treat as known, one per line.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Validity, charge balance (SMACT), electronegativity, uniqueness and family fit of formulas."""
    from tools.checks import check_formulas

    inputs = list(formulas or [])
    if inputs == ["-"]:
        inputs = [line.strip() for line in sys.stdin if line.strip()]
    if from_file:
        inputs += _read_lines(from_file)
    if not inputs:
        _fail("no formulas given (pass them as arguments, '-' for stdin, or --from-file)")
    exclusions = list(exclude or []) + (_read_lines(exclude_file) if exclude_file else [])
    try:
        reports = check_formulas(inputs, exclude=exclusions)
    except ValueError as exc:  # a malformed exclusion list
        _fail(str(exc))
    if as_json:
        _emit_json(reports)
    else:
        _print_formula_table(reports)
    _exit_if_all_failed(reports)


def _species(symbol: str, charge: int) -> str:
    return f"{symbol}{abs(charge) if abs(charge) != 1 else ''}{'+' if charge > 0 else '-' if charge < 0 else ''}"


def _print_formula_table(reports: list[dict]) -> None:
    table = Table(title="formula check")
    for column in ("input", "reduced", "charge balanced", "oxidation states", "EN ok", "known in", "families"):
        table.add_column(column)
    for r in reports:
        if r["error"]:
            table.add_row(safe(r["input"][:40]) or "(empty)", "[red]invalid[/red]", "", "", "", "", "")
            continue
        states = " ".join(_species(el, q) for el, qs in (r["oxidation_states"] or {}).items() for q in sorted(set(qs)))
        known = safe(", ".join(r["known_in"])) or "[green]novel[/green]"
        table.add_row(
            safe(r["input"]), safe(r["reduced_formula"]), _mark(r["charge_balanced"]), safe(states),
            _mark(r["electronegativity_ok"]), known, safe(", ".join(r["families"])) or "-",
        )
    console.print(table)
    _print_errors((r["input"][:40] or "(empty)", r["error"]) for r in reports)


def _print_errors(items) -> None:
    for label, error in items:
        if error:
            console.print(f"[red]{safe(label)}:[/red] {safe(error)}")


@app.command()
def lookup(
    formula: Annotated[list[str], typer.Argument(help="A formula, optionally with a polymorph name: TiO2, 'anatase TiO2', calcite.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="Show at most this many polymorphs.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Known properties of a material from the shared MP data: polymorphs, space groups, energies, band gaps."""
    from generators.datasets import DataNotFoundError
    from tools.formula import FormulaError
    from tools.lookup import lookup as look_up

    text = " ".join(formula)
    try:
        with err_console.status("looking up the shared MP data..."):
            result = look_up(text, limit=limit)
    except FormulaError as exc:
        fail_as(as_json, str(exc), code=2, query=text)
    except DataNotFoundError as exc:
        fail_as(as_json, str(exc), code=1, query=text)
    if as_json:
        _emit_json(result)
        return
    _print_lookup(result)


def _print_lookup(result: dict) -> None:
    asked = f" ({safe(result['polymorph_name'])})" if result["polymorph_name"] else ""
    title = f"{safe(result['formula'])}{asked}: {result['n_polymorphs']} Materials Project entries"
    if result["truncated"]:
        title += f" (showing {len(result['polymorphs'])})"
    if result["polymorphs"]:
        table = Table(title=title)
        for column in ("material_id", "name", "space group", "E_f (eV/atom)", "E_hull (eV/atom)", "band gap (eV)", "sites", "data"):
            table.add_column(column)
        for p in result["polymorphs"]:
            group = f"{p['spacegroup_symbol']} ({p['spacegroup_number']})" if p["spacegroup_number"] else "-"
            name = ", ".join(p["names"]) or "-"
            data = f"{p['dataset']} {p['split']}" if p["split"] else p["dataset"]
            table.add_row(
                f"[bold]{safe(p['material_id'])}[/bold]" if p["match"] else safe(p["material_id"]), safe(name), safe(group),
                _number(p["formation_energy_per_atom"]), _number(p["e_above_hull"]), _number(p["band_gap"], 2),
                safe(p["n_sites"] or "-"), safe(data),
            )
        console.print(table)
    console.print(safe(result["message"]))
    console.print(f"known in: {safe(', '.join(result['known_in'])) or 'none of MP, ICSD, OQMD'}")
    matbench = result["matbench"]
    for key, label, unit in (("formation_energy_per_atom", "formation energy", "eV/atom"), ("band_gap", "band gap", "eV")):
        values = matbench.get(key)
        if values:
            console.print(f"Matbench {label}: {_number(values['min'])} to {_number(values['max'])} {unit} over {values['n']} entries")
    if result["polymorph_note"]:
        console.print(f"[dim]{safe(result['polymorph_name'])}: {safe(result['polymorph_note'])}[/dim]")
    console.print(f"[dim]{safe(result['note'])}[/dim]")


@formula_app.command("propose")
def formula_propose(
    request: Annotated[str, typer.Argument(help="What you want, e.g. 'a novel spinel oxide containing Mn'.")],
    n: Annotated[int, typer.Option("-n", min=1, max=500, help="How many formulae to propose (H).")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed; another seed gives other proposals.")] = 0,
    offline: Annotated[bool, typer.Option("--offline", help="Use the offline proposer even when a Claude key is set.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Propose formulae for a request and screen them (R_hi: validity, charge, novelty, compliance)."""
    from tools.claude import ClaudeSession, claude_configured, usage_summary
    from tools.claude_proposer import propose
    from tools.screen import screen
    from tools.spec import RequestNotUnderstood, SpecConflict, parse_request

    try:
        spec = parse_request(request, seed=seed)
    except (RequestNotUnderstood, SpecConflict) as exc:
        fail_as(as_json, str(exc), kind=type(exc).__name__)
    with err_console.status("proposing formulae..."):
        session = None if offline or not claude_configured() else ClaudeSession()
        proposals, proposer = propose(spec, n, seed=seed, use_claude=session is not None, session=session)
        screened = screen(proposals, spec)
    if as_json:
        _emit_json([item.as_dict() for item in screened])
        return
    console.print(f"[bold]request:[/bold] {safe(spec.summary())}   [dim]proposer: {safe(proposer)}, seed {seed}[/dim]")
    table = Table(title=f"{sum(s.passed for s in screened)} of {len(screened)} proposals pass the screen")
    for column in ("formula", "passed", "score", "rejected by", "rationale"):
        table.add_column(column)
    for item in screened:
        verdict = item.rejected_by and f"{item.rejected_by}: {item.reason}"
        table.add_row(safe(item.formula), _mark(item.passed), f"{item.score:.2f}" if item.score is not None else "-",
                      safe(verdict) or "-", safe(item.rationale))
    console.print(table)
    if session:
        console.print(f"[dim]{safe(usage_summary(session.as_dict()))}[/dim]")


@structure_app.command("check")
def structure_check(
    files: Annotated[list[Path], typer.Argument(help="CIF (or POSCAR) files to check.")],
    as_json: JsonOption = False,
) -> None:
    """CIF validity, structural validity (> 0.5 Å), composition validity, space group, uniqueness."""
    from tools.checks import check_structure_file

    reports = [check_structure_file(path) for path in files]
    if as_json:
        _emit_json(reports)
    else:
        table = Table(title="structure check")
        for column in ("file", "formula", "CIF ok", "structure ok", "min dist (Å)", "composition ok", "space group", "sites", "known in"):
            table.add_column(column)
        for r in reports:
            group = f"{r['spacegroup_symbol']} ({r['spacegroup_number']})" if r["spacegroup_number"] else "-"
            table.add_row(
                safe(Path(r["file"]).name), safe(r["reduced_formula"] or "-"), _mark(r["cif_valid"]),
                _mark(r["structurally_valid"]), f"{r['min_distance']:.3f}" if r["min_distance"] else "-",
                _mark(r["composition_valid"]), safe(group), safe(r["n_sites"] or "-"), safe(", ".join(r["known_in"] or []) or "-"),
            )
        console.print(table)
        _print_errors((Path(r["file"]).name, r["error"]) for r in reports)
    _exit_if_all_failed(reports)


@app.command()
def score(
    files: Annotated[list[Path], typer.Argument(help="CIF (or POSCAR) files to score.")],
    relax: Annotated[bool, typer.Option("--relax", help="Relax with CHGNet (FIRE, positions and cell) first.")] = False,
    fmax: Annotated[float, typer.Option(min=0.001, max=1.0, help="Relaxation force criterion, eV/Å.")] = 0.05,
    max_steps: Annotated[int, typer.Option(min=1, max=5000, help="Relaxation step limit.")] = 500,
    max_sites: Annotated[int, typer.Option(min=1, max=1000, help="Largest cell scored, in sites.")] = 200,
    as_json: JsonOption = False,
) -> None:
    """CHGNet energy, formation energy, energy above the MP hull, and the plausibility guard."""
    from rich.progress import Progress

    from tools.scoring import ScoringLimits, score_files

    with Progress(console=err_console, transient=True) as bar:
        tasks = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task("relaxing" if stage == "relax" else "scoring", total=total)
            bar.update(tasks[stage], completed=done)

        reports = score_files(
            files, relax=relax, fmax=fmax, max_steps=max_steps, limits=ScoringLimits(max_sites=max_sites), progress=report
        )
    reports = [{"file": r["label"], **{k: v for k, v in r.items() if k != "label"}} for r in reports]
    if as_json:
        _emit_json(reports)
    else:
        _print_score_table(reports, relax)
    if reports and not any(r["plausible"] for r in reports):
        raise typer.Exit(1)


def _print_score_table(reports: list[dict], relaxed: bool) -> None:
    table = Table(title="CHGNet scores (eV/atom)")
    columns = ["file", "formula", "E", "E_f", "E_hull", "max F (eV/Å)", "plausible"]
    columns += ["converged", "RMSD (Å)"] if relaxed else []
    for column in columns:
        table.add_column(column)
    for r in reports:
        row = [
            safe(Path(r["file"]).name), safe(r.get("reduced_formula") or "-"), _number(r.get("energy_per_atom")),
            _number(r.get("formation_energy_per_atom")), _number(r.get("e_above_hull")),
            _number(r.get("max_force")), _mark(r["plausible"]),
        ]
        if relaxed:
            row += [_mark(r.get("relax_converged")), _number(r.get("rmsd"))]
        table.add_row(*row)
    console.print(table)
    _print_errors((Path(r["file"]).name, r["reason"]) for r in reports)


@generate_app.command("template")
def generate_template_command(
    formula: Annotated[str, typer.Argument(help="Formula, e.g. MgAl2O4.")],
    family: Annotated[str | None, typer.Option("--family", help="Catalogue family (default: every family it fits).")] = None,
    n: Annotated[int, typer.Option("-n", min=1, max=100, help="How many structures (L).")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CIF files.")] = Path("generated"),
    seed: Annotated[int, typer.Option(help="Seed for the variants beyond the distinct prototypes.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Prototype substitution: put the formula's elements on its family's prototype structures."""
    from tools.formula import FormulaError
    from tools.generation import GenerationError, generate_template
    from tools.structure import detect_spacegroup, structural_validity, write_cif

    check_out_folder(out)
    try:
        generated = generate_template(formula, family=family, n=n, seed=seed)
    except (FormulaError, GenerationError, KeyError) as exc:
        if as_json:
            _emit_json({"error": str(exc).strip("'\""), "formula": formula})
            raise typer.Exit(1)
        _fail(str(exc).strip("'\""), code=1)
    rows = []
    for index, item in enumerate(generated):
        path = out / f"{item.formula}_{index:02d}_{item.prototype}.cif"
        write_output(path, write_cif(item.structure))
        group = detect_spacegroup(item.structure)
        validity = structural_validity(item.structure)
        rows.append({
            "file": str(path), "formula": item.formula, "family": item.family, "prototype": item.prototype,
            "assignment": item.assignment, "variant": item.variant, "n_sites": len(item.structure),
            "spacegroup_number": group.number if group else None, "min_distance": round(validity.min_distance, 4),
            "volume_per_atom": round(validity.volume_per_atom, 3), "notes": item.notes,
        })
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=f"{len(rows)} template structures for {safe(generated[0].formula)} in {safe(out)}")
    for column in ("file", "family", "prototype", "sites on", "space group", "min dist (Å)"):
        table.add_column(column)
    for row in rows:
        sites = " ".join(f"{label}={el}" for label, el in row["assignment"].items())
        table.add_row(safe(Path(row["file"]).name), safe(row["family"]), safe(row["prototype"]), safe(sites),
                      str(row["spacegroup_number"]), f"{row['min_distance']:.2f}")
    console.print(table)


@family_app.command("list")
def family_list(as_json: JsonOption = False) -> None:
    """The crystal families genms knows, with templates, prototypes and space groups."""
    from tools.families import FAMILIES

    if as_json:
        _emit_json([family.as_dict() for family in FAMILIES])
        return
    table = Table(title="crystal families")
    for column in ("name", "templates", "anions", "prototypes", "space groups"):
        table.add_column(column)
    for f in FAMILIES:
        table.add_row(
            safe(f.name), safe(", ".join(f"{t.name} ({t.ratio})" for t in f.templates)), safe(" ".join(sorted(f.anions)) or "-"),
            safe("; ".join(f.prototypes)), " ".join(map(str, f.spacegroups)),
        )
    console.print(table)


@family_app.command("references")
def family_references(
    name: Annotated[str, typer.Argument(help="Family name or alias, e.g. perovskite, 'double perovskite'.")],
    limit: Annotated[int, typer.Option(min=1, max=100000, help="Show at most this many.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """MP structures of a family from the shared data (the reference set for match rates)."""
    from generators.datasets import DataNotFoundError
    from tools.families import get_family, reference_entries

    try:
        family = get_family(name)
        with console.status(f"scanning the shared MP data for {safe(family.name)} structures..."):
            entries = reference_entries(family.name)
    except (KeyError, DataNotFoundError) as exc:
        _fail(str(exc).strip("'\""))
    rows = [
        {"material_id": e.material_id, "formula": e.formula, "spacegroup_number": e.spacegroup_number, "dataset": e.dataset}
        for e in entries[:limit]
    ]
    if as_json:
        _emit_json({"family": family.name, "total": len(entries), "entries": rows})
        return
    table = Table(title=f"{safe(family.title)}: {len(entries)} MP reference structures (showing {len(rows)})")
    for column in ("material_id", "formula", "space group", "dataset"):
        table.add_column(column)
    for row in rows:
        table.add_row(safe(row["material_id"]), safe(row["formula"]), str(row["spacegroup_number"]), safe(row["dataset"]))
    console.print(table)


@app.command()
def mcp(
    ctx: typer.Context,
    transport: Annotated[str, typer.Option(help="stdio (for IDE assistants that start genms) or http (streamable HTTP).")] = "stdio",
    host: Annotated[str, typer.Option(help="Address for --transport http; other than loopback needs --allow-remote and a token; 0.0.0.0 or :: also --allowed-host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for --transport http.")] = 8765,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow binding an address other machines can reach.")] = False,
    token: Annotated[str | None, typer.Option(envvar="GENMS_MCP_TOKEN", show_envvar=True, help="Bearer token required on every HTTP request. On the command line it shows in the process list: prefer GENMS_MCP_TOKEN or --token-file.")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="Read the bearer token from the first line of this file (not readable by other users).")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="A name (NAME or NAME:PORT) clients use to reach the HTTP server, accepted in the Host header besides the bind address; repeatable; needed for 0.0.0.0 or ::.")] = None,
    allowed_origin: Annotated[list[str] | None, typer.Option("--allowed-origin", help="A browser origin (http://HOST:PORT) allowed to call the HTTP server besides its own names; repeatable.")] = None,
) -> None:
    """Serve genms to IDE assistants over MCP (Claude Desktop, Claude Code, VS Code, Cursor)."""
    from agent.mcp_transport import ServeConfigError, check_transport, normalise_token, read_token_file

    try:
        source = ctx.get_parameter_source("token")  # an enum of the click that typer runs on (typer may vendor its own)
        if token is not None and getattr(source, "name", None) == "COMMANDLINE":
            print("warning: --token shows in the process list (ps) to every user of this machine; "
                  "set GENMS_MCP_TOKEN or pass --token-file PATH instead", file=sys.stderr, flush=True)
        if token_file is not None:
            if token is not None:
                raise ServeConfigError("give the bearer token one way: --token-file, or GENMS_MCP_TOKEN (or --token), not both")
            token = read_token_file(token_file)
        # refused at once, before the server (and every tool) is imported
        check_transport(transport, host, allow_remote, normalise_token(token), allowed_host or (), allowed_origin or (), port)
        from agent.mcp_server import serve

        serve(transport, host=host, port=port, allow_remote=allow_remote, token=token,
              allowed_hosts=allowed_host or (), allowed_origins=allowed_origin or ())
    except ServeConfigError as exc:
        _fail(str(exc))


class _OneLine(logging.Formatter):
    """A log record as one bounded line, without its traceback (that goes to the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"genms: {record.levelname.lower()}: {' '.join(record.getMessage().split())[:400]}"


def configure_logging() -> None:
    """Warnings as one line on stderr; INFO and up, with tracebacks, in ``GENMS_HOME``/genms.log.

    Without this, Python prints warnings and logged exceptions with their tracebacks to the terminal."""
    from logging.handlers import RotatingFileHandler

    from memory.paths import user_data_dir

    root = logging.getLogger()
    if root.handlers:  # configured by the embedding program
        return
    console_handler = logging.StreamHandler()
    console_handler.setLevel(logging.WARNING)
    console_handler.setFormatter(_OneLine())
    root.addHandler(console_handler)
    try:
        log_file = RotatingFileHandler(user_data_dir() / "genms.log", maxBytes=2_000_000, backupCount=2, encoding="utf-8")
        log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(log_file)
    except OSError:  # a read-only home: warnings still reach the terminal
        pass
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per HTTP request otherwise


def main() -> None:
    """Console-script entry point. ``genms mcp`` keeps the MCP server's own logging (its stderr is
    the server's log, INFO included); every other command logs as :func:`configure_logging` says."""
    if sys.argv[1:2] != ["mcp"]:
        configure_logging()
    app()


if __name__ == "__main__":
    main()
