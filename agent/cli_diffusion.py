"""``genms generate diffusion``: GenMS diffusion samples for a formula, ranked by CHGNet (registered in ``agent.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from agent.render import JsonOption, check_out_folder, console, err_console, safe, write_output
from agent.render import emit_json as _emit_json
from agent.render import fail_as
from agent.render import number as _number


def _sample(formula: str, n: int, seed: int, formula_units: int | None, method: str, steps: int | None) -> list:
    from tools.diffusion_generation import generate_diffusion

    with err_console.status(f"sampling {n} structure(s) of {safe(formula)} ({safe(method)})"):
        return generate_diffusion(formula, n=n, seed=seed, formula_units=formula_units, method=method, steps=steps)


def _scores(structures: list) -> list[dict]:
    """CHGNet scores (GenMS's best-of-N selection), with a progress bar on stderr."""
    from tools.scoring import score_structures

    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("scoring (CHGNet)", total=len(structures))
        return score_structures(structures, progress=lambda stage, done, total: bar.update(task, completed=done, total=total))


def generate_diffusion_command(
    formula: Annotated[str, typer.Argument(help="Formula unit as written, e.g. SrTiO3 or Sr2Ti2O6.")],
    n: Annotated[int, typer.Option("-n", min=1, max=100, help="How many structures (L).")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CIF files.")] = Path("generated"),
    formula_units: Annotated[int | None, typer.Option("--formula-units", "-z", min=1, max=20,
                                                      help="Formula units per cell (default: drawn from MP-20's statistics).")] = None,
    method: Annotated[str, typer.Option("--method", help="fast (100 predictor-corrector steps) or ddpm (1000 steps).")] = "fast",
    steps: Annotated[int | None, typer.Option("--steps", min=1, max=1000, help="Denoising steps (default: the method's).")] = None,
    rank: Annotated[bool, typer.Option("--rank/--no-rank", help="Score with CHGNet and list lowest formation energy first.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """GenMS diffusion model: sample L crystal structures for a formula (at most 20 atoms per cell)."""
    from tools.formula import FormulaError
    from tools.generation import GenerationError
    from tools.structure import detect_spacegroup, write_cif

    if method not in ("fast", "ddpm"):
        raise typer.BadParameter(f"choose fast or ddpm, got {method!r}", param_hint="--method")
    check_out_folder(out)
    try:
        generated = _sample(formula, n, seed, formula_units, method, steps)
    except (FormulaError, GenerationError) as exc:
        fail_as(as_json, str(exc), formula=formula)
    reports = _scores([g.structure for g in generated]) if rank else [{} for _ in generated]
    order = sorted(range(len(generated)), key=lambda i: _energy_key(reports[i])) if rank else list(range(len(generated)))
    rows = []
    for place, index in enumerate(order):
        item, report = generated[index], reports[index]
        path = out / f"{item.formula}_{place:02d}_diffusion.cif"
        write_output(path, write_cif(item.structure))
        group = detect_spacegroup(item.structure)
        rows.append({
            "file": str(path), "formula": item.formula, "n_sites": len(item.structure), "method": method,
            "spacegroup_number": group.number if group else None, "spacegroup_symbol": group.symbol if group else None,
            "volume_per_atom": round(item.structure.volume / len(item.structure), 3),
            **{key: report.get(key) for key in ("energy_per_atom", "formation_energy_per_atom", "e_above_hull", "plausible", "reason")},
            "notes": item.notes,
        })
    if as_json:
        _emit_json(rows)
        return
    _print_table(rows, out, rank)


def _energy_key(report: dict) -> tuple:
    energy = report.get("formation_energy_per_atom")
    return (not report.get("plausible"), energy if energy is not None else float("inf"))


def _print_table(rows: list[dict], out: Path, ranked: bool) -> None:
    order = ", lowest CHGNet formation energy first" if ranked else ""
    table = Table(title=f"{len(rows)} diffusion structures of {safe(rows[0]['formula'])} in {safe(out)}{order}")
    for column in ("file", "sites", "space group", "Å^3/atom", "E_f (eV/atom)", "E_hull (eV/atom)", "plausible"):
        table.add_column(column)
    for row in rows:
        table.add_row(safe(Path(row["file"]).name), str(row["n_sites"]), safe(f"{row['spacegroup_symbol']} ({row['spacegroup_number']})"),
                      f"{row['volume_per_atom']:.1f}", _number(row["formation_energy_per_atom"]), _number(row["e_above_hull"]),
                      "-" if row["plausible"] is None else ("yes" if row["plausible"] else f"no: {safe(row['reason'])}"))
    console.print(table)
