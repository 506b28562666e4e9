"""``genms generate unimdm``: Uni-MDM structures for elements/a formula and a property target (registered in ``agent.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent.render import JsonOption, check_out_folder, console, err_console, safe, write_output
from agent.render import emit_json as _emit_json
from agent.render import fail_as


def generate_unimdm_command(
    elements: Annotated[str | None, typer.Option("--elements", help="Comma-separated elements, e.g. Ba,Ti,O: a known formula of exactly these (with --band-gap, the one whose probe structure's proxy gap is nearest the target, unstable formulas penalised).")] = None,
    formula: Annotated[str | None, typer.Option("--formula", help="Formula of the cell, e.g. BaTiO3 (instead of --elements).")] = None,
    band_gap: Annotated[float | None, typer.Option("--band-gap", help="Target band gap (eV).")] = None,
    formation_energy: Annotated[float | None, typer.Option("--formation-energy", help="Target formation energy (eV/atom).")] = None,
    space_group: Annotated[int | None, typer.Option("--space-group", min=1, max=230, help="Impose this space group.")] = None,
    n: Annotated[int, typer.Option("-n", min=1, max=100, help="How many structures (L).")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CIF files.")] = Path("generated"),
    method: Annotated[str, typer.Option("--method", help="fast (100 steps) or ddpm (1000 steps).")] = "fast",
    steps: Annotated[int | None, typer.Option("--steps", help="Reverse diffusion steps, 1-1000 (default: the method's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Uni-MDM: symmetry predicted from the composition and the property, then the Crystal DiT."""
    from tools.generation import GenerationError
    from tools.structure import write_cif
    from tools.unimdm_generation import generate_unimdm

    if not elements and not formula:
        raise typer.BadParameter("give --elements or --formula", param_hint="--elements")
    element_list = [e.strip() for e in elements.split(",") if e.strip()] if elements else None
    check_out_folder(out)
    try:
        with err_console.status(f"Uni-MDM: sampling {n} structure(s)"):
            generated = generate_unimdm(formula=formula, elements=element_list, band_gap=band_gap, formation_energy=formation_energy,
                                        space_group=space_group, n=n, seed=seed, method=method, steps=steps)
    except GenerationError as exc:
        fail_as(as_json, str(exc), formula=formula, elements=element_list)
    rows = []
    gaps = proxy_gaps([item.structure for item in generated]) if band_gap is not None else [None] * len(generated)
    for index, (item, gap) in enumerate(zip(generated, gaps)):
        path = out / f"{item.formula}_{index:02d}_unimdm.cif"
        write_output(path, write_cif(item.structure))
        rows.append({"file": str(path), "formula": item.formula, "n_sites": len(item.structure), "prototype": item.prototype,
                     "band_gap_target": band_gap, "band_gap_proxy": gap, "formation_energy_target": formation_energy,
                     "volume_per_atom": round(item.structure.volume / len(item.structure), 3), "notes": item.notes})
    if as_json:
        _emit_json(rows)
        return
    columns = ("file", "formula", "n_sites", "prototype", "volume_per_atom") + (("band_gap_proxy",) if band_gap is not None else ())
    table = Table(title=f"{len(rows)} Uni-MDM structures in {safe(out)}")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(safe(row[c]) for c in columns))
    console.print(table)
    for note in dict.fromkeys(text for item in generated for text in item.notes if text.startswith("stoichiometry")):
        console.print(safe(note))


def proxy_gaps(structures: list) -> list[float | None]:
    """The band-gap proxy's gap (eV, 2 decimals) of each structure, None where it cannot read one."""
    import math

    from generators.gfn.proxy import structure_band_gaps

    return [round(float(g), 2) if math.isfinite(g) else None for g in structure_band_gaps(structures)]
