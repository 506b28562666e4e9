"""``genms generate gfn``: Crystal-GFN structures under a property reward (registered in ``agent.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agent.render import JsonOption, check_out_folder, console, err_console, safe, write_output
from agent.render import emit_json as _emit_json
from agent.render import fail_as
from agent.render import number as _number

STAGES = {"sample": "sampling crystals", "place": "placing atoms (pyxtal)", "relax": "relaxing (CHGNet)"}


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").replace(" ", ",").split(",") if part.strip()]


def _elements(text: str | None) -> list[str] | None:
    from pymatgen.core import Element

    from tools.gfn_generation import model_elements

    symbols = _split(text)
    if not symbols:
        return None
    bad = [s for s in symbols if not Element.is_valid_symbol(s)]
    if bad:
        raise typer.BadParameter(f"unknown element {', '.join(bad)}", param_hint="--elements")
    outside = sorted(set(symbols) - set(model_elements()))
    if outside:
        raise typer.BadParameter(f"{', '.join(outside)} outside the model's elements ({' '.join(model_elements())})",
                                 param_hint="--elements")
    return sorted(set(symbols))


def _space_groups(text: str | None) -> list[int] | None:
    parts = _split(text)
    if not parts:
        return None
    groups = []
    for part in parts:
        if not part.isdigit() or not 1 <= int(part) <= 230:
            raise typer.BadParameter(f"space groups are numbers 1-230, got {part!r}", param_hint="--space-groups")
        groups.append(int(part))
    return sorted(set(groups))


def generate_gfn_command(
    reward: Annotated[str, typer.Option("--reward", help="formation_energy | band_gap[:TARGET_EV] (1.34 by default) | density.")] = "formation_energy",
    elements: Annotated[str | None, typer.Option("--elements", help="Only these elements, e.g. Fe,O (the model's 22).")] = None,
    space_groups: Annotated[str | None, typer.Option("--space-groups", help="Only these space groups, e.g. 225,227.")] = None,
    n: Annotated[int, typer.Option("-n", min=1, max=100, help="How many structures.")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CIF files.")] = Path("generated"),
    max_atoms: Annotated[int | None, typer.Option("--max-atoms", min=2, max=80, help="Atoms per conventional cell at most.")] = None,
    relax_steps: Annotated[int, typer.Option("--relax-steps", min=0, max=2000, help="CHGNet relaxation steps (0: unrelaxed pyxtal placement).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Crystal-GFN: sample space group, composition and lattice under a reward, place atoms, relax."""
    from rich.progress import Progress

    from tools.gfn_generation import generate_gfn, parse_reward
    from tools.generation import GenerationError
    from tools.structure import detect_spacegroup, write_cif

    try:
        parse_reward(reward)
    except GenerationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--reward") from None
    chosen_elements, groups = _elements(elements), _space_groups(space_groups)
    check_out_folder(out)
    try:
        with Progress(console=err_console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(safe(STAGES.get(stage, stage)), total=total)
                bar.update(tasks[stage], completed=done, total=total)

            generated = generate_gfn(reward, elements=chosen_elements, space_groups=groups, n=n, seed=seed,
                                     max_atoms=max_atoms, relax_steps=relax_steps, progress=report)
    except GenerationError as exc:
        fail_as(as_json, str(exc), reward=reward)
    rows = []
    for index, item in enumerate(generated):
        path = out / f"{index:02d}_{item.formula}_sg{item.sampled['space_group']}.cif"
        write_output(path, write_cif(item.structure))
        group = detect_spacegroup(item.structure)
        rows.append({
            "file": str(path), "formula": item.formula, "reward": reward, "sampled": item.sampled,
            "spacegroup_number": group.number if group else None, "n_sites": len(item.structure),
            **item.properties, "notes": item.notes,
        })
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=f"{len(rows)} Crystal-GFN structures ({safe(reward)}) in {safe(out)}")
    for column in ("file", "sampled group", "group after relax", "sites", "proxy E_f", "proxy gap", "density", "CHGNet E"):
        table.add_column(column)
    for row in rows:
        table.add_row(safe(Path(row["file"]).name), str(row["sampled"]["space_group"]), str(row["spacegroup_number"]),
                      str(row["n_sites"]), _number(row["proxy_formation_energy"]), _number(row["proxy_band_gap"]),
                      _number(row.get("density_final")), _number(row.get("chgnet_energy")))
    console.print(table)
