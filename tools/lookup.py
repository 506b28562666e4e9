"""Property look-up of known materials in the shared Materials Project data (``genms lookup``).

``lookup("anatase TiO2")`` gives the MP entries of a reduced formula (its polymorphs) with their
space group, formation energy (eV/atom), PBE band gap (eV), energy above the hull (eV/atom) and
size, the Matbench composition-level values, where the formula is known (MP / ICSD / OQMD) and a
note on what the numbers mean. A polymorph name before or after the formula ("rutile TiO2",
"wurtzite ZnO"), or alone ("calcite"), flags that polymorph and lists it first; the names are a
small table, ``tools/data/polymorph_names.json``.

Sources, all through :mod:`generators.datasets` (``GENMS_DATA_DIR``): the MP-20 splits
(space group, energies, band gap and energy above hull as MP-20 gives them), the 2018 MP
snapshot for MP ids that MP-20 does not hold (formation energy, band gap, sites; no energy
above hull), and Matbench's ``mp_e_form`` / ``mp_gap`` tables. The data is indexed once per
process by canonical formula key (:func:`tools.formula.formula_key`) without any CIF text, and
the index is kept in the user cache directory (``lookup_index_*.csv.gz``, keyed to the data
files' sizes and times, so changed data rebuilds it). Space groups the data lacks (MP-20 rows
from other sources, the 2018 snapshot) are computed from the CIF with spglib (pymatgen's
``SpacegroupAnalyzer``, symprec 0.1 Å) for the returned rows only, never more than ``limit``
structures a call, and remembered in the cache directory.

The text is outside input: it is bounded (``tools.limits.MAX_LOOKUP_CHARS``) and read by
:func:`tools.formula.parse_formula`, so a malformed formula raises :class:`FormulaError` with
the reason; a well-formed formula without MP entries is an answer (no polymorphs, where it is
known, a message), not an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache, reduce
from pathlib import Path

import numpy as np
import pandas as pd

from tools.formula import FormulaError, ParsedFormula, parse_formula
from tools.limits import MAX_LOOKUP_CHARS, MAX_LOOKUP_ROWS

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the cached index's columns or meaning change
NAMES_PATH = Path(__file__).with_name("data") / "polymorph_names.json"
SYMPREC = 0.1  # Å, the tolerance the MP-20 data README prescribes
DEFAULT_LIMIT = 20

NOTE = (
    "Band gaps are PBE (GGA/GGA+U) Kohn-Sham gaps, which underestimate measured gaps (often by 30-50%; "
    "0 eV can be a small-gap semiconductor). Energies are GGA/GGA+U formation energies per atom relative to the "
    "elements, with the MP2020 corrections for MP-20 rows; MP-20 gives the energy above the MP convex hull "
    "(0 = on the hull, the most stable phase of that composition in these calculations). Rows of the 2018 MP "
    "snapshot (dataset mp2018) carry that snapshot's formation energy, with the corrections of the time, and no "
    "energy above hull. Space groups: MP-20's, or spglib (symprec 0.1 Å) on the MP structure. Source: Materials "
    "Project (CC BY 4.0; Jain et al. 2013) through MP-20 (Xie et al. 2022) and a 2018 MP snapshot; composition-level "
    "values from Matbench mp_e_form and mp_gap (Dunn et al. 2020)."
)
SOURCES = {
    "mp20": "Materials Project via MP-20",
    "mp2018": "Materials Project (2018 snapshot)",
    "matbench": "Matbench mp_e_form / mp_gap (Materials Project)",
}


# --- polymorph names --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolymorphName:
    """A row of ``polymorph_names.json``: names -> (formula or any, space group numbers)."""

    names: tuple[str, ...]
    formula: str | None
    key: str | None
    spacegroups: tuple[int, ...]
    note: str | None = None


def _squash(name: str) -> str:
    """A name compared without case or separators: 'Zinc-blende', 'zinc blende', 'zincblende' are one."""
    return re.sub(r"[\s\-_]+", "", name.lower())


@lru_cache(maxsize=1)
def polymorph_names() -> tuple[PolymorphName, ...]:
    """The polymorph-name table, loaded once."""
    data = json.loads(NAMES_PATH.read_text(encoding="utf-8"))
    entries = []
    for item in data["entries"]:
        formula = item.get("formula")
        entries.append(PolymorphName(
            names=tuple(item["names"]), formula=formula, key=parse_formula(formula).key if formula else None,
            spacegroups=tuple(int(n) for n in item["spacegroups"]), note=item.get("note"),
        ))
    return tuple(entries)


@lru_cache(maxsize=1)
def _names_pattern() -> re.Pattern:
    names = sorted({name for entry in polymorph_names() for name in entry.names}, key=len, reverse=True)
    # Words of a name may be written together, or joined by spaces, hyphens or underscores.
    alternatives = "|".join(r"[\s\-_]{0,3}".join(re.escape(word) for word in name.split()) for name in names)
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.I)


def _entries_named(name: str) -> list[PolymorphName]:
    squashed = _squash(name)
    return [entry for entry in polymorph_names() if squashed in {_squash(n) for n in entry.names}]


def find_polymorph_names(text: str) -> list[tuple[str, str, str]]:
    """Polymorph names in a free text, each as (canonical spelling, the text before it, the text after it);
    the chat planner reads them from questions ('is α-quartz stable?' -> 'alpha quartz')."""
    spelt = _greek(text)
    return [(_canonical(m.group(0)), spelt[:m.start()], spelt[m.end():]) for m in _names_pattern().finditer(spelt)]


def _canonical(written: str) -> str:
    entries = _entries_named(written)
    squashed = _squash(written)
    return next(n for n in entries[0].names if _squash(n) == squashed)


def _greek(text: str) -> str:
    return text.replace("α", "alpha ").replace("β", "beta ")


def names_for(key: str, spacegroup: int | None) -> list[str]:
    """Polymorph names of a composition (canonical key) in a space group: ('O2Ti1', 141) -> ['anatase']."""
    if spacegroup is None:
        return []
    return list(dict.fromkeys(e.names[0] for e in polymorph_names() if e.key == key and spacegroup in e.spacegroups))


@dataclass(frozen=True)
class LookupQuery:
    """What a look-up text asks for: the formula and, when named, the polymorph and its space groups."""

    text: str
    parsed: ParsedFormula
    name: str | None = None
    spacegroups: tuple[int, ...] = ()
    note: str | None = None


def parse_query(text: str) -> LookupQuery:
    """Read 'TiO2', 'anatase TiO2', 'TiO2 (anatase)' or 'calcite'; :class:`FormulaError` with the reason if not."""
    if not isinstance(text, str):
        raise FormulaError(f"a look-up takes text, got {type(text).__name__}")
    if len(text) > MAX_LOOKUP_CHARS:
        raise FormulaError(f"look-up text too long ({len(text)} characters; at most {MAX_LOOKUP_CHARS})")
    stripped = " ".join(_greek(text).split())
    if not stripped:
        raise FormulaError("empty formula")
    pattern = _names_pattern().pattern
    named = (re.fullmatch(rf"(?:the\s+)?(?P<name>{pattern})(?:[\s,:]+(?P<rest>.*))?", stripped, re.I)  # anatase TiO2
             or re.fullmatch(rf"(?P<rest>.*?)[\s,]+\(?(?:the\s+)?(?P<name>{pattern})\)?", stripped, re.I))  # TiO2 (anatase)
    if not named:
        try:
            parsed = parse_formula(text)
        except FormulaError as exc:
            if re.search(r"[a-z]{3,}", text):
                raise FormulaError(f"{exc}: give a formula such as TiO2, optionally after a polymorph name "
                                   "genms knows (anatase TiO2, wurtzite ZnO, calcite)") from None
            raise
        return LookupQuery(text, parsed)
    name, rest = _canonical(named.group("name")), (named.group("rest") or "").strip()
    entries = _entries_named(name)
    if not rest:
        rest = next(e.formula for e in entries if e.formula)
    parsed = parse_formula(rest)
    entry = (next((e for e in entries if e.key == parsed.key), None) or next((e for e in entries if e.key is None), None)
             or entries[0])
    return LookupQuery(text, parsed, name, entry.spacegroups, entry.note)


# --- the index ------------------------------------------------------------------------------------


_SIMPLE = re.compile(r"(?:[A-Z][a-z]?[0-9]*)+")
_PAIR = re.compile(r"([A-Z][a-z]?)([0-9]*)")


@lru_cache(maxsize=256)
def _valid_symbol(symbol: str) -> bool:
    from pymatgen.core import Element

    return Element.is_valid_symbol(symbol)


def formula_index_key(text: object) -> str | None:
    """Canonical key of a data table's formula ('K4Mn4O8' -> 'K1Mn1O2'), None when it does not parse.

    Whole-number formulas without groups (Matbench's, the CIF headers') take a fast path that gives
    :func:`tools.formula.formula_key`'s key; anything else goes through :func:`parse_formula`."""
    if not isinstance(text, str):
        return None
    if _SIMPLE.fullmatch(text):
        counts: dict[str, int] = {}
        for symbol, count in _PAIR.findall(text):
            counts[symbol] = counts.get(symbol, 0) + (int(count) if count else 1)
        if all(counts.values()) and all(_valid_symbol(symbol) for symbol in counts):
            divisor = reduce(math.gcd, counts.values())
            return "".join(f"{symbol}{counts[symbol] // divisor}" for symbol in sorted(counts))
    try:
        return parse_formula(text).key
    except FormulaError:
        return None


def _data_files() -> list[Path]:
    from generators.datasets import BAND_GAP_FILE, FORMATION_ENERGY_FILE, MP20_FILES, MP2018_FILE, data_file

    return [data_file(name) for name in (*MP20_FILES.values(), MP2018_FILE, FORMATION_ENERGY_FILE, BAND_GAP_FILE)]


def data_stamp() -> str:
    """A short hash of the data files' paths, sizes and times (and the index version)."""
    parts = [f"v{INDEX_VERSION}"] + [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in _data_files()]
    return hashlib.sha1(";".join(parts).encode()).hexdigest()[:12]


_COLUMNS = ["key", "kind", "material_id", "split", "row", "spacegroup_number", "n_sites",
            "formation_energy_per_atom", "band_gap", "e_above_hull"]


def build_index_table() -> pd.DataFrame:
    """One row per MP entry (kind mp20 / mp2018) and per Matbench value (mb_ef / mb_gap), keyed by formula.

    ``row`` is the entry's position in its source table (to read its CIF when a space group is
    needed). 2018-snapshot entries whose MP id is in an MP-20 file are left out."""
    from generators.datasets import (BAND_GAP_FILE, FORMATION_ENERGY_FILE, MP20_SPLITS, MP2018_FILE,
                                     formula_from_cif_header, load_mp20, read_table)

    parts, in_mp20 = [], set()
    for split in MP20_SPLITS:
        table = load_mp20(split)
        parts.append(pd.DataFrame({
            "key": [formula_index_key(f) for f in table["pretty_formula"]], "kind": "mp20",
            "material_id": table["material_id"], "split": split, "row": np.arange(len(table)),
            **{c: table[c] for c in ("spacegroup_number", "n_sites", "formation_energy_per_atom", "band_gap", "e_above_hull")},
        }))
        in_mp20.update(table["material_id"])
    snapshot = read_table(MP2018_FILE)
    rows = np.flatnonzero(~snapshot["material_id"].isin(in_mp20).to_numpy())
    kept = snapshot.iloc[rows]
    parts.append(pd.DataFrame({
        "key": [formula_index_key(formula_from_cif_header(cif)) for cif in kept["cif"]], "kind": "mp2018",
        "material_id": kept["material_id"].to_numpy(), "row": rows,
        **{c: kept[c].to_numpy() for c in ("n_sites", "formation_energy_per_atom", "band_gap")},
    }))
    for name, column, kind in ((FORMATION_ENERGY_FILE, "formation_energy_per_atom", "mb_ef"), (BAND_GAP_FILE, "band_gap", "mb_gap")):
        table = read_table(name)
        parts.append(pd.DataFrame({"key": [formula_index_key(f) for f in table["formula"]], "kind": kind, column: table[column]}))
    index = pd.concat(parts, ignore_index=True).reindex(columns=_COLUMNS)
    return index[index["key"].notna()].reset_index(drop=True)


def _atomic_write(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(handle)
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class LookupIndex:
    """The index in memory: the table and, per formula key, its row positions."""

    table: pd.DataFrame
    groups: dict[str, np.ndarray]
    stamp: str
    seconds: float
    from_cache: bool

    def rows(self, key: str) -> pd.DataFrame:
        positions = self.groups.get(key)
        return self.table.iloc[positions] if positions is not None else self.table.iloc[:0]


def _cached_table(name: str, columns: list[str], dtypes: dict, build) -> tuple[pd.DataFrame, bool]:
    """(table, read from the cache) for a table kept as ``name`` in the user cache directory: read
    when the file is there with the expected ``columns``, else ``build()`` and written atomically.
    No writable cache directory or a damaged file costs a rebuild (logged), never the look-up."""
    from memory.paths import user_cache_dir

    cache = None
    try:
        cache = user_cache_dir() / name
    except OSError as exc:  # no writable cache directory: the table lives in memory only
        log.warning("lookup: no cache directory (%s); %s is rebuilt in each process", exc, name)
    if cache is not None and cache.is_file():
        try:
            table = pd.read_csv(cache, dtype=dtypes)
            if list(table.columns) == columns:
                return table, True
        except (OSError, ValueError, EOFError) as exc:  # a damaged cache file: rebuilt below
            log.warning("lookup: rebuilding the damaged cache %s (%s)", cache.name, exc)
    table = build()
    if cache is not None:
        try:
            _atomic_write(cache, lambda path: table.to_csv(path, index=False, compression={"method": "gzip", "compresslevel": 1}))
        except OSError as exc:
            log.warning("lookup: could not cache %s (%s)", name, exc)
    return table, False


_index_lock = threading.Lock()


@lru_cache(maxsize=1)
def _cached_index() -> LookupIndex:

    started = time.perf_counter()
    stamp = data_stamp()
    table, from_cache = _cached_table(f"lookup_index_{stamp}.csv.gz", _COLUMNS,
                                      {"key": str, "kind": str, "material_id": str, "split": str}, build_index_table)
    groups = table.groupby("key", sort=False).indices
    return LookupIndex(table, groups, stamp, time.perf_counter() - started, from_cache)


def lookup_index() -> LookupIndex:
    """The formula -> rows index, built (or read from the cache) once per process."""
    with _index_lock:  # the chat and the MCP server call tools from worker threads
        return _cached_index()


# --- space groups ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _symbols() -> dict[int, str]:
    """International number -> short Hermann-Mauguin symbol of the standard setting (spglib's table)."""
    import spglib

    symbols: dict[int, str] = {}
    for hall in range(1, 531):
        group = spglib.get_spacegroup_type(hall)
        symbols.setdefault(int(group.number), str(group.international_short))
    return symbols


def spacegroup_symbol(number: int | None) -> str | None:
    return _symbols().get(number) if number else None


_sg_lock = threading.Lock()
_sg_memory: dict[str, int | None] = {}


def _sg_cache_path(stamp: str) -> Path:
    from memory.paths import user_cache_dir

    return user_cache_dir() / f"lookup_spacegroups_{stamp}.json"


def _read_sg_cache(stamp: str) -> dict[str, int]:
    try:
        data = json.loads(_sg_cache_path(stamp).read_text(encoding="utf-8"))
        return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and 1 <= v <= 230}
    except (OSError, ValueError, AttributeError):
        return {}


def _remember_spacegroups(stamp: str, found: dict[str, int]) -> None:
    if not found:
        return
    try:
        merged = {**_read_sg_cache(stamp), **found}
        path = _sg_cache_path(stamp)
        _atomic_write(path, lambda p: Path(p).write_text(json.dumps(merged, sort_keys=True), encoding="utf-8"))
    except OSError as exc:
        log.warning("lookup: could not cache space groups (%s)", exc)


def _spacegroup_from_cif(kind: str, split: str | None, row: int, material_id: str) -> int | None:
    from generators.datasets import MP2018_FILE, MaterialRecord, load_mp20, read_table
    from tools.structure import detect_spacegroup

    table = load_mp20(split) if kind == "mp20" else read_table(MP2018_FILE)
    if not (0 <= row < len(table)) or table["material_id"].iat[row] != material_id:
        matches = np.flatnonzero((table["material_id"] == material_id).to_numpy())
        if not len(matches):
            return None
        row = int(matches[0])
    record = MaterialRecord(material_id=material_id, cif=table["cif"].iat[row], dataset=kind)
    try:
        group = detect_spacegroup(record.structure, symprec=SYMPREC)
    except Exception as exc:  # a CIF of the data that pymatgen cannot read
        log.warning("lookup: no space group for %s: %s", material_id, exc)
        return None
    return group.number if group else None


# --- the look-up ----------------------------------------------------------------------------------


def _number(value, digits: int = 4) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


@dataclass
class Polymorph:
    """One MP entry of the formula. Energies in eV/atom, band gap in eV; None where the data has none."""

    material_id: str
    dataset: str  # 'mp20' or 'mp2018'
    split: str | None  # MP-20 split (train / val / test) of an mp20 row
    spacegroup_number: int | None
    spacegroup_symbol: str | None
    formation_energy_per_atom: float | None
    band_gap: float | None
    e_above_hull: float | None
    n_sites: int | None
    spacegroup_source: str | None = None  # 'MP-20', 'spglib' (computed here), None (not computed)
    names: list[str] = field(default_factory=list)
    match: bool = False  # the polymorph the look-up named
    source: str = ""
    _row: int = field(default=-1, repr=False)

    def as_dict(self) -> dict:
        item = asdict(self)
        item.pop("_row")
        return item


def _polymorphs(rows: pd.DataFrame) -> list[Polymorph]:
    found = []
    for r in rows.itertuples(index=False):
        if r.kind not in ("mp20", "mp2018"):
            continue
        number = None if pd.isna(r.spacegroup_number) else int(r.spacegroup_number)
        found.append(Polymorph(
            material_id=str(r.material_id), dataset=r.kind, split=None if pd.isna(r.split) else str(r.split),
            spacegroup_number=number, spacegroup_symbol=None, formation_energy_per_atom=_number(r.formation_energy_per_atom),
            band_gap=_number(r.band_gap), e_above_hull=_number(r.e_above_hull),
            n_sites=None if pd.isna(r.n_sites) else int(r.n_sites), spacegroup_source="MP-20" if number else None,
            source=SOURCES[r.kind], _row=int(r.row),
        ))
    return found


def _order(p: Polymorph) -> tuple:
    """Energy above hull first (MP-20 rows), then formation energy, entries without numbers last."""
    hull, energy = p.e_above_hull, p.formation_energy_per_atom
    return (hull is None, hull or 0.0, energy is None, energy or 0.0, p.material_id)


def _matbench(rows: pd.DataFrame, limit: int) -> dict:
    summary = {}
    for kind, column in (("mb_ef", "formation_energy_per_atom"), ("mb_gap", "band_gap")):
        values = sorted(round(float(v), 4) for v in rows.loc[rows["kind"] == kind, column] if not pd.isna(v))
        summary[column] = {"n": len(values), "min": values[0], "max": values[-1], "values": values[:limit]} if values else None
    return summary


class _Parser:
    """Computes missing space groups, at most ``budget`` structures parsed; remembered across calls and processes."""

    def __init__(self, stamp: str, budget: int):
        self.stamp, self.budget, self.parsed, self.found = stamp, budget, 0, {}
        with _sg_lock:
            if not _sg_memory:
                _sg_memory.update(_read_sg_cache(stamp))

    def fill(self, p: Polymorph) -> None:
        if p.spacegroup_number is not None:
            return
        with _sg_lock:
            known = p.material_id in _sg_memory
            number = _sg_memory.get(p.material_id)
        if not known:
            if self.parsed >= self.budget:
                return
            self.parsed += 1
            number = _spacegroup_from_cif(p.dataset, p.split, p._row, p.material_id)
            with _sg_lock:
                _sg_memory[p.material_id] = number
            if number:
                self.found[p.material_id] = number
        if number:
            p.spacegroup_number, p.spacegroup_source = number, "spglib"

    def save(self) -> None:
        _remember_spacegroups(self.stamp, self.found)


def lookup(text: str, limit: int = DEFAULT_LIMIT) -> dict:
    """Known properties of a formula (optionally with a polymorph name) from the shared MP data.

    Returns ``formula`` (reduced), ``polymorphs`` (at most ``limit``, see :class:`Polymorph`; the
    named polymorph first, then by energy above hull and formation energy), ``n_polymorphs`` (all
    MP entries found), ``matbench`` (composition-level formation energies and band gaps),
    ``known_in`` (MP / ICSD / OQMD), ``message``, ``note`` and ``sources``. Raises
    :class:`FormulaError` for text that is not a formula, ``ValueError`` for a ``limit`` outside
    1-``MAX_LOOKUP_ROWS``, and ``generators.datasets.DataNotFoundError`` without the data.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOOKUP_ROWS:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LOOKUP_ROWS}, got {limit!r}")
    from tools.uniqueness import known_formula_index

    query = parse_query(text)
    key, formula = query.parsed.key, query.parsed.reduced_formula
    index = lookup_index()
    rows = index.rows(key)
    polymorphs = sorted(_polymorphs(rows), key=_order)
    parser = _Parser(index.stamp, limit)
    wanted = set(query.spacegroups)
    if wanted:
        if not any(p.spacegroup_number in wanted for p in polymorphs):
            for p in polymorphs:  # the data gives no space group for the named one: parse until it turns up
                parser.fill(p)
                if p.spacegroup_number in wanted:
                    break
        matched = [p for p in polymorphs if p.spacegroup_number in wanted]
        polymorphs = matched + [p for p in polymorphs if p.spacegroup_number not in wanted]
    shown = polymorphs[:limit]
    for p in shown:
        parser.fill(p)
        p.spacegroup_symbol = spacegroup_symbol(p.spacegroup_number)
        p.names = names_for(key, p.spacegroup_number)
        p.match = bool(wanted) and p.spacegroup_number in wanted
    parser.save()
    if wanted:  # matches found while filling the shown rows come first too
        shown = [p for p in shown if p.match] + [p for p in shown if not p.match]
    known_in = known_formula_index().sources(query.parsed)
    return {
        "query": text, "formula": formula, "polymorph_name": query.name, "polymorph_spacegroups": sorted(wanted),
        "polymorph_note": query.note, "n_polymorphs": len(polymorphs), "truncated": len(polymorphs) > len(shown),
        "polymorphs": [p.as_dict() for p in shown], "matbench": _matbench(rows, limit), "known_in": known_in,
        "message": _message(query, formula, polymorphs, shown, known_in, parser), "note": NOTE,
        "sources": sorted({p.source for p in shown} | ({SOURCES["matbench"]} if len(rows) > len(polymorphs) else set())),
    }


def _message(query: LookupQuery, formula: str, polymorphs: list[Polymorph], shown: list[Polymorph],
             known_in: list[str], parser: _Parser) -> str:
    if not polymorphs:
        if known_in:
            where = f"it is known in {', '.join(known_in)}"
            if "MP" in known_in:
                where += " (an MP entry outside the shared data's snapshots)"
        else:
            where = "it is in none of MP, ICSD and OQMD: a hypothetical composition as far as genms knows"
        return f"No Materials Project entry of {formula} in the shared data (MP-20, 2018 snapshot); {where}."
    text = f"{len(polymorphs)} Materials Project entr{'y' if len(polymorphs) == 1 else 'ies'} of {formula}"
    text += f", showing {len(shown)}." if len(shown) < len(polymorphs) else "."
    if query.name:
        groups = " or ".join(f"{spacegroup_symbol(n)} ({n})" for n in query.spacegroups)
        matched = [p.material_id for p in shown if p.match]
        if matched:
            text += f" {query.name}, {groups}: {', '.join(matched)}."
        else:
            unresolved = sum(p.spacegroup_number is None for p in polymorphs)
            text += f" No entry of {formula} in {groups} ({query.name}) among them"
            text += (f" ({unresolved} entries' space groups not computed: at most {parser.budget} structures are parsed "
                     "a call; a larger limit parses more)." if unresolved else ".")
    return text


# --- known neighbours of a formula ------------------------------------------------------------------

NEIGHBOURS_LIMIT = 3
NEIGHBOURS_UNAVAILABLE = "known neighbours unavailable"
_NEIGHBOUR_COLUMNS = [*_COLUMNS, "chemsys", "anonymous"]
_KEY_PAIR = re.compile(r"([A-Z][a-z]?)([0-9]+(?:\.[0-9]+)?)")


def _key_amounts(key: str) -> dict[str, float]:
    """A canonical key's amounts: 'Ba1O3Ti1' -> {'Ba': 1, 'O': 3, 'Ti': 1} (alphabetical, as the key is)."""
    return {symbol: float(count) for symbol, count in _KEY_PAIR.findall(key)}


def anonymous_formula(amounts) -> str:
    """pymatgen's anonymized formula of reduced amounts, smallest first: (1, 1, 3) -> 'ABC3'."""
    letters = []
    for letter, amount in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", sorted(amounts)):
        amount = int(amount) if float(amount).is_integer() else amount
        letters.append(letter if amount == 1 else f"{letter}{amount}")
    return "".join(letters)


def build_neighbour_table(index: LookupIndex) -> pd.DataFrame:
    """The MP entries of the look-up index (kinds mp20 / mp2018), each formula's entries in look-up order
    (energy above hull, then formation energy), with the formula's chemical system ('Ba-O-Ti',
    alphabetical) and anonymous formula ('ABC3')."""
    table = index.table
    entries = table[table["kind"].isin(("mp20", "mp2018"))]
    entries = entries.sort_values(["key", "e_above_hull", "formation_energy_per_atom", "material_id"], kind="stable")
    systems, anonymous = {}, {}
    for key in entries["key"].unique():
        amounts = _key_amounts(key)
        systems[key], anonymous[key] = "-".join(amounts), anonymous_formula(amounts.values())
    entries = entries.assign(chemsys=entries["key"].map(systems), anonymous=entries["key"].map(anonymous))
    return entries.reindex(columns=_NEIGHBOUR_COLUMNS).reset_index(drop=True)


@dataclass
class NeighbourIndex:
    """MP entries by formula key, and each formula's first (lowest-energy) entry by chemical system and by
    (anonymous formula, element)."""

    table: pd.DataFrame
    by_key: dict[str, np.ndarray]
    by_system: dict[str, list[int]]
    by_anonymous: dict[tuple[str, str], list[int]]
    keys: np.ndarray  # per row
    hull: np.ndarray  # per row, NaN where unknown
    energy: np.ndarray  # per row, NaN where unknown
    stamp: str
    seconds: float
    from_cache: bool

    def order(self, position: int) -> tuple:
        """A formula's first entry ranks as :func:`_order` ranks polymorphs: on or nearest the hull first."""
        hull, energy = self.hull[position], self.energy[position]
        return (bool(np.isnan(hull)), 0.0 if np.isnan(hull) else float(hull),
                bool(np.isnan(energy)), 0.0 if np.isnan(energy) else float(energy), self.keys[position])


_neighbour_lock = threading.Lock()


@lru_cache(maxsize=1)
def _cached_neighbour_index() -> NeighbourIndex:

    started = time.perf_counter()
    stamp = data_stamp()
    dtypes = {"key": str, "kind": str, "material_id": str, "split": str, "chemsys": str, "anonymous": str}
    table, from_cache = _cached_table(f"lookup_neighbours_{stamp}.csv.gz", _NEIGHBOUR_COLUMNS, dtypes,
                                      lambda: build_neighbour_table(lookup_index()))
    keys = table["key"].to_numpy()
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.array([], dtype=int)
    by_key = {keys[start]: np.arange(start, end) for start, end in zip(first, [*first[1:], len(keys)])}
    by_system: dict[str, list[int]] = {}
    by_anonymous: dict[tuple[str, str], list[int]] = {}
    systems, anonymous = table["chemsys"].to_numpy(), table["anonymous"].to_numpy()
    for position in first.tolist():
        by_system.setdefault(systems[position], []).append(position)
        for symbol in systems[position].split("-"):
            by_anonymous.setdefault((anonymous[position], symbol), []).append(position)
    return NeighbourIndex(table, by_key, by_system, by_anonymous, keys,
                          table["e_above_hull"].to_numpy(dtype=float), table["formation_energy_per_atom"].to_numpy(dtype=float),
                          stamp, time.perf_counter() - started, from_cache)


def neighbour_index() -> NeighbourIndex:
    """The neighbour index, built from the look-up index (or read from its cache file) once per process."""
    with _neighbour_lock:
        return _cached_neighbour_index()


def _fractions(amounts: dict[str, float]) -> dict[str, float]:
    total = sum(amounts.values())
    return {symbol: amount / total for symbol, amount in amounts.items()}


def _distance(a: dict[str, float], b: dict[str, float]) -> float:
    """Half the L1 distance of two compositions' atomic fractions: 0 same, 1 nothing in common."""
    return 0.5 * sum(abs(a.get(symbol, 0.0) - b.get(symbol, 0.0)) for symbol in a.keys() | b.keys())


def _hull_text(hull: float | None) -> str:
    if hull is None:
        return "no hull energy in the data"
    return "on the hull" if hull <= 0 else f"{hull:.3f} eV/atom above the hull"


@lru_cache(maxsize=4096)
def _pretty(key: str) -> str:
    """A key as a formula in pymatgen's element order, without its grouping: 'O6Pt3Cd1' -> 'CdPt3O6'."""
    from pymatgen.core import Composition

    return "".join(part[:-1] if re.fullmatch(r"[A-Z][a-z]?1", part) else part
                   for part in Composition(_key_amounts(key)).formula.split())


def _system_label(amounts: dict[str, float]) -> str:
    """The chemical system in formula order (electronegativity): 'Ba-Ti-O'."""
    from pymatgen.core import Composition

    return "-".join(re.match(r"[A-Z][a-z]?", part).group(0) for part in Composition(amounts).formula.split())


def neighbours(formula: str | ParsedFormula, limit: int = NEIGHBOURS_LIMIT, spacegroup: int | None = None) -> list[dict]:
    """The known compounds of the shared MP data closest to ``formula``, at most ``limit``, nearest first.

    In turn, filling up to ``limit``: (1) the MP entries of the same reduced formula (``match``
    'polymorph': the formula is known, a candidate of it is a new polymorph or the known one; an
    entry in ``spacegroup`` comes first), (2) the other formulas of the same chemical system
    ('system', nearest in composition: half the L1 distance of the atomic fractions, then on or
    nearest the hull), (3) formulas of the same anonymous formula ('stoichiometry', e.g. ABC3)
    sharing the most elements, then nearest in composition. Formulas of (2) and (3) are given by
    their lowest-energy entry. Each is a dict: ``formula``, ``material_id``, ``dataset``,
    ``spacegroup_number`` / ``spacegroup_symbol`` (spglib for entries the data gives none, at most
    ``limit`` structures parsed a call and remembered), ``e_above_hull`` and
    ``formation_energy_per_atom`` (eV/atom), ``band_gap`` (PBE, eV), ``n_polymorphs`` (MP entries of
    that formula), ``match``, ``shared_elements`` and ``relation`` (one line). Raises
    :class:`FormulaError` for a malformed formula, ``ValueError`` for a ``limit`` outside
    1-``MAX_LOOKUP_ROWS``, ``generators.datasets.DataNotFoundError`` without the data.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOOKUP_ROWS:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LOOKUP_ROWS}, got {limit!r}")
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    key = parsed.key
    amounts = _key_amounts(key)
    fractions = _fractions(amounts)
    system, anonymous = "-".join(amounts), anonymous_formula(amounts.values())
    index = neighbour_index()
    chosen: list[tuple[int, str, list[str]]] = []  # (row, match, shared elements)

    own = index.by_key.get(key)
    if own is not None:
        rows = own.tolist()
        if spacegroup:
            numbers = index.table["spacegroup_number"].to_numpy()
            rows = [r for r in rows if numbers[r] == spacegroup] + [r for r in rows if numbers[r] != spacegroup]
        chosen += [(r, "polymorph", list(amounts)) for r in rows[:limit]]
    if len(chosen) < limit:
        same = [r for r in index.by_system.get(system, []) if index.keys[r] != key]
        same.sort(key=lambda r: (round(_distance(fractions, _fractions(_key_amounts(index.keys[r]))), 6), index.order(r)))
        chosen += [(r, "system", list(amounts)) for r in same[:limit - len(chosen)]]
    if len(chosen) < limit:
        shared: dict[int, list[str]] = {}
        for symbol in amounts:
            for r in index.by_anonymous.get((anonymous, symbol), ()):
                shared.setdefault(r, []).append(symbol)
        ranked = sorted(((r, symbols) for r, symbols in shared.items() if index.keys[r] != key and len(symbols) < len(amounts)),
                        key=lambda item: -len(item[1]))
        if ranked:  # composition distances for the best-sharing formulas only
            wanted = limit - len(chosen)
            cut = len(ranked[min(wanted, len(ranked)) - 1][1])
            ranked = [item for item in ranked if len(item[1]) >= cut]
            ranked.sort(key=lambda item: (-len(item[1]), round(_distance(fractions, _fractions(_key_amounts(index.keys[item[0]]))), 6),
                                          index.order(item[0])))
            chosen += [(r, "stoichiometry", symbols) for r, symbols in ranked[:wanted]]

    polymorphs = _polymorphs(index.table.iloc[[r for r, _, _ in chosen]])
    parser = _Parser(index.stamp, limit)
    label = _system_label(amounts)
    found = []
    for p, (row, match, symbols) in zip(polymorphs, chosen):
        parser.fill(p)
        p.spacegroup_symbol = spacegroup_symbol(p.spacegroup_number)
        other = str(index.keys[row])
        pretty = _pretty(other)
        detail = f"{pretty} ({p.spacegroup_symbol or 'space group unknown'}, {_hull_text(p.e_above_hull)})"
        if match == "polymorph":
            same_group = bool(spacegroup) and p.spacegroup_number == spacegroup
            relation = f"known polymorph{' in the same space group' if same_group else ''}: {detail}"
        elif match == "system":
            relation = f"same {label} system: {detail}"
        else:
            relation = f"same {anonymous} stoichiometry, shares {', '.join(symbols)}: {detail}"
        found.append({
            "formula": pretty, "material_id": p.material_id, "dataset": p.dataset,
            "spacegroup_number": p.spacegroup_number, "spacegroup_symbol": p.spacegroup_symbol,
            "e_above_hull": p.e_above_hull, "formation_energy_per_atom": p.formation_energy_per_atom, "band_gap": p.band_gap,
            "n_polymorphs": len(index.by_key[other]), "match": match, "shared_elements": symbols, "relation": relation,
        })
    parser.save()
    return found


def neighbours_note(formula: str | ParsedFormula, found: list[dict], spacegroup: int | None = None) -> str:
    """One line on how ``formula`` relates to its known neighbours (:func:`neighbours`' answer)."""
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    amounts = _key_amounts(parsed.key)
    label, anonymous = _system_label(amounts), anonymous_formula(amounts.values())
    if not found:
        return f"no known {label} compound, nor a known {anonymous} compound sharing its elements"
    first = found[0]
    if first["match"] == "polymorph":
        count = f"{first['n_polymorphs']} MP entr{'y' if first['n_polymorphs'] == 1 else 'ies'}"
        if spacegroup and first["spacegroup_number"] == spacegroup:
            return f"known compound {first['formula']} ({count}), one in the same space group {first['spacegroup_symbol']}"
        return f"a new polymorph of known {first['formula']} ({count})"
    if first["match"] == "system":
        return f"a new composition in the known {label} system"
    return f"no known {label} compound"


def attach_neighbours(candidates: list[dict], limit: int = NEIGHBOURS_LIMIT) -> str | None:
    """Give each search candidate ``neighbours`` (:func:`neighbours`) and ``neighbours_note`` (one line).

    Never raises: without the shared data (``DataNotFoundError``, any ``OSError``) every candidate
    from then on gets an empty list and a note saying neighbours are unavailable, and the reason is
    returned (None when all went well); another failure marks that candidate only."""
    unavailable = None
    for candidate in candidates:
        if unavailable is None:
            try:
                formula = candidate.get("reduced_formula") or candidate["formula"]
                spacegroup = (candidate.get("checks") or {}).get("spacegroup_number")
                found = neighbours(formula, limit, spacegroup)
                candidate["neighbours"], candidate["neighbours_note"] = found, neighbours_note(formula, found, spacegroup)
                continue
            except OSError as exc:  # the shared data (DataNotFoundError) or the cache: none for any candidate
                log.warning("lookup: no known neighbours (%s)", exc)
                unavailable = f"{NEIGHBOURS_UNAVAILABLE}: {_one_line(exc)}"
            except Exception as exc:  # this candidate only; the search's results stand without them
                log.warning("lookup: no known neighbours of %r (%s)", candidate.get("formula"), exc)
                candidate["neighbours"], candidate["neighbours_note"] = [], f"{NEIGHBOURS_UNAVAILABLE}: {_one_line(exc)}"
                continue
        candidate["neighbours"], candidate["neighbours_note"] = [], unavailable
    return unavailable


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
