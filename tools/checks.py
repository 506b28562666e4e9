"""Per-item checks of formulas and structures, as the reports the CLI, agent and evals share.

Each check returns a JSON-ready dict and never raises on bad input: the problem goes into
the item's ``error`` field so that one bad item does not lose the rest of a batch. Structure
text from outside (files, MCP clients, the chat) is checked by :func:`check_structure_isolated`,
in a worker process (:mod:`tools.sandbox`), so a crash or a runaway check costs that item only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

from tools.composition import charge_balance
from tools.families import families_fitting
from tools.formula import FormulaError, ParsedFormula, parse_formula
from tools.structure import StructureError, detect_spacegroup, read_structure_text, read_text_file, structural_validity
from tools.uniqueness import check_uniqueness, exclusion_keys

log = logging.getLogger(__name__)


def _formula_verdicts(parsed: ParsedFormula, exclude: tuple[str, ...]) -> dict[str, object]:
    balance = charge_balance(parsed)
    uniqueness = check_uniqueness(parsed, exclude=exclude)
    return {
        "reduced_formula": parsed.reduced_formula,
        "elements": parsed.elements,
        "charge_balanced": balance.charge_balanced,
        "oxidation_states": (
            {el: balance.oxidation_states[el] for el in parsed.elements} if balance.oxidation_states else None
        ),
        "mixed_valence": balance.mixed_valence,
        "electronegativity_ok": balance.electronegativity_ok,
        "composition_valid": balance.composition_valid,
        "known_in": uniqueness.known_in,
        "in_exclusion_list": uniqueness.in_exclusion_list,
        "unique": uniqueness.unique,
        "families": families_fitting(parsed),
    }


_EMPTY_FORMULA_VERDICTS = dict.fromkeys(
    ["reduced_formula", "elements", "charge_balanced", "oxidation_states", "mixed_valence",
     "electronegativity_ok", "composition_valid", "known_in", "in_exclusion_list", "unique", "families"]
)


def check_formula(text: str, exclude: Iterable[str] = ()) -> dict[str, object]:
    """Validity, SMACT verdicts, uniqueness and family fit of one formula.

    Keys: ``input, valid, error, reduced_formula, elements, charge_balanced,
    oxidation_states, mixed_valence, electronegativity_ok, composition_valid, known_in,
    in_exclusion_list, unique, families``. ``unique`` follows GenMS (in neither MP nor ICSD,
    nor in the exclusion list).
    """
    exclude = tuple(exclude)
    try:
        parsed = parse_formula(text)
        verdicts = _formula_verdicts(parsed, exclude)
    except FormulaError as exc:
        return {"input": text, "valid": False, "error": str(exc), **_EMPTY_FORMULA_VERDICTS}
    except Exception as exc:  # a check that failed on this formula: its own error, the batch goes on
        log.exception("formula check failed on %r", text)
        return {"input": text, "valid": False, "error": f"check failed: {type(exc).__name__}: {exc}",
                **_EMPTY_FORMULA_VERDICTS}
    return {"input": text, "valid": True, "error": None, **verdicts}


def check_formulas(texts: Iterable[str], exclude: Iterable[str] = ()) -> list[dict[str, object]]:
    """:func:`check_formula` over a batch.

    A malformed exclusion list concerns the whole call, not one formula: it raises
    :class:`FormulaError` (a ``ValueError``) before any formula is checked.
    """
    exclude = tuple(exclude)
    exclusion_keys(exclude)
    return [check_formula(text, exclude) for text in texts]


_EMPTY_STRUCTURE_VERDICTS = dict.fromkeys(
    ["structurally_valid", "min_distance", "volume_per_atom", "composition_valid", "charge_balanced",
     "reduced_formula", "spacegroup_number", "spacegroup_symbol", "n_sites", "known_in", "families"]
)


def check_structure_text(text: str, label: str | None = None) -> dict[str, object]:
    """CIF validity, structural validity, composition validity, symmetry and uniqueness.

    ``text`` is CIF (or POSCAR when ``label`` names a POSCAR/.vasp file).

    Keys: ``file, cif_valid, structurally_valid, min_distance (Å), volume_per_atom (Å^3),
    composition_valid, charge_balanced, reduced_formula, spacegroup_number,
    spacegroup_symbol, n_sites, known_in, families, error``.
    """
    report = {"file": label, "cif_valid": False, **_EMPTY_STRUCTURE_VERDICTS, "error": None}
    try:
        structure = read_structure_text(text, label or "")
    except StructureError as exc:
        report["error"] = str(exc)
        return report
    try:
        return _structure_verdicts(report, structure)
    except Exception as exc:  # a verdict that failed on this structure (e.g. an element without data)
        log.exception("structure check failed on %s", label)
        return {**report, "cif_valid": True, "error": f"check failed: {type(exc).__name__}: {exc}"}


def _structure_verdicts(report: dict, structure) -> dict:
    composition = structure.composition
    parsed = ParsedFormula(text=composition.formula.replace(" ", ""), amounts=composition.get_el_amt_dict())
    validity = structural_validity(structure)
    balance = charge_balance(parsed)
    spacegroup = detect_spacegroup(structure)
    report.update(
        cif_valid=True,
        structurally_valid=validity.valid,
        min_distance=round(validity.min_distance, 4) if math.isfinite(validity.min_distance) else None,
        volume_per_atom=round(validity.volume_per_atom, 3) if math.isfinite(validity.volume_per_atom) else None,
        composition_valid=balance.composition_valid,
        charge_balanced=balance.charge_balanced,
        reduced_formula=parsed.reduced_formula,
        spacegroup_number=spacegroup.number if spacegroup else None,
        spacegroup_symbol=spacegroup.symbol if spacegroup else None,
        n_sites=len(structure),
        known_in=check_uniqueness(parsed).known_in,
        families=families_fitting(parsed),
        error=validity.reason,
    )
    return report


def check_structure_isolated(text: str, label: str | None = None) -> dict[str, object]:
    """:func:`check_structure_text` on outside text, run in a worker process.

    A check that crashes, runs out of memory or takes longer than the sandbox allows gives a
    report with the reason in ``error``; the caller and the next check are unaffected.
    """
    from tools.sandbox import SandboxError, run_isolated

    try:
        return run_isolated("check_structure", {"text": text, "label": label})
    except SandboxError as exc:
        return {"file": label, "cif_valid": False, **_EMPTY_STRUCTURE_VERDICTS, "error": f"check refused: {exc}"}


def check_structure_file(path: str | Path) -> dict[str, object]:
    """:func:`check_structure_isolated` on a file, unreadable or oversized files reported as errors."""
    try:
        text = read_text_file(path)
    except StructureError as exc:
        return {"file": str(path), "cif_valid": False, **_EMPTY_STRUCTURE_VERDICTS, "error": str(exc)}
    return check_structure_isolated(text, label=str(path))
