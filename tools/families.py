"""Catalogue of crystal families: stoichiometry templates, site roles, prototypes, space groups.

Written from crystallographic facts. Each family answers ``fits(formula)``, GenMS's
formula-compliance check (atom ratio 1:1:3 for perovskites, 2:2:7 for pyrochlores, 1:2:4 for
spinels ...), made stricter by site roles: anion sites take the family's anions, cation sites
take elements that form cations, Heusler sites take metals and p-block elements. A formula
may fit several families (MgAl2O4 fits spinel and, by ratio, olivine); the space groups
separate them among known structures (see :func:`reference_entries`).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache, reduce
from pathlib import Path

from pymatgen.core import Element

from tools.composition import is_metal, oxidation_states
from tools.formula import FormulaError, ParsedFormula, parse_formula

CHALCOGENS = frozenset({"O", "S", "Se", "Te"})
HALOGENS = frozenset({"F", "Cl", "Br", "I"})
PNICTOGENS = frozenset({"N", "P", "As", "Sb"})
# Elements that never take a cation site in these families (H+ and C4+, N5+ of oxo-anions
# would make water a fluorite and CaCO3 or NaNO3 perovskites by ratio alone).
_NEVER_CATIONS = frozenset({"H", "C", "N", "O", "F", "Cl", "Br", "I", "He", "Ne", "Ar", "Kr", "Xe", "Rn"})


def _is_cation_former(symbol: str) -> bool:
    return symbol not in _NEVER_CATIONS and any(q > 0 for q in oxidation_states(symbol))


def _is_p_block_main_group(symbol: str) -> bool:
    element = Element(symbol)
    return element.group in (13, 14, 15) and element.row >= 3


@dataclass(frozen=True)
class Site:
    """A crystallographic role in a template: label, atoms per formula unit, what may sit there.

    ``role`` is 'cation', 'anion', 'metal' or 'p_block'; ``elements`` optionally restricts the
    site further (delafossite A = Cu, Ag, Pd, Pt).
    """

    label: str
    count: int
    role: str
    elements: frozenset[str] | None = None


@dataclass(frozen=True)
class Template:
    """A stoichiometry template such as A2BB'X6."""

    name: str
    sites: tuple[Site, ...]

    @property
    def ratio(self) -> str:
        """Atom ratio of the sites, e.g. '2:1:1:6'."""
        return ":".join(str(site.count) for site in self.sites)


@dataclass(frozen=True)
class CrystalFamily:
    """One crystal family of the catalogue."""

    name: str
    title: str
    templates: tuple[Template, ...]
    anions: frozenset[str]
    prototypes: tuple[str, ...]
    spacegroups: tuple[int, ...]
    roles: str
    description: str
    aliases: tuple[str, ...] = ()

    def site_accepts(self, site: Site, symbol: str) -> bool:
        """May this element sit on this site of the family's template (role, anions, element list)?"""
        if site.elements is not None and symbol not in site.elements:
            return False
        if site.role == "anion":
            return symbol in self.anions
        if site.role == "cation":
            return symbol not in self.anions and _is_cation_former(symbol)
        if site.role == "metal":
            return is_metal(symbol)
        if site.role == "p_block":
            return _is_p_block_main_group(symbol)
        raise ValueError(f"unknown site role {site.role!r}")

    def assignments(self, formula: str | ParsedFormula) -> list[tuple[Template, dict[str, str]]]:
        """Every (template, site label -> element) the formula fits, in template order."""
        parsed = parse_formula(formula) if isinstance(formula, str) else formula
        amounts = parsed.reduced_amounts
        found = []
        for template in self.templates:
            if len(template.sites) != len(amounts):
                continue
            divisor = reduce(math.gcd, (site.count for site in template.sites))
            for order in itertools.permutations(amounts):
                if all(
                    amounts[symbol] == site.count // divisor and self.site_accepts(site, symbol)
                    for symbol, site in zip(order, template.sites)
                ):
                    found.append((template, {site.label: symbol for site, symbol in zip(template.sites, order)}))
        return found

    def assignment(self, formula: str | ParsedFormula) -> dict[str, str] | None:
        """Site label -> element of the first template the formula fits, else ``None``."""
        found = self.assignments(formula)
        return found[0][1] if found else None

    def fits(self, formula: str | ParsedFormula) -> bool:
        """GenMS compliance: does the formula have this family's atom ratio and site chemistry?"""
        try:
            return self.assignment(formula) is not None
        except FormulaError:
            return False

    def as_dict(self) -> dict[str, object]:
        """JSON-ready description of the family."""
        return {
            "name": self.name,
            "title": self.title,
            "templates": [{"name": t.name, "ratio": t.ratio} for t in self.templates],
            "anions": sorted(self.anions),
            "prototypes": list(self.prototypes),
            "spacegroups": list(self.spacegroups),
            "roles": self.roles,
            "description": self.description,
            "aliases": list(self.aliases),
        }


def _t(name: str, *sites: tuple) -> Template:
    return Template(name, tuple(Site(*site) for site in sites))


_DELAFOSSITE_A = frozenset({"Cu", "Ag", "Pd", "Pt"})

FAMILIES: tuple[CrystalFamily, ...] = (
    CrystalFamily(
        "perovskite", "Perovskite ABX3",
        (_t("ABX3", ("A", 1, "cation"), ("B", 1, "cation"), ("X", 3, "anion")),),
        frozenset({"O", "F", "Cl", "Br", "I", "S", "Se"}),
        ("SrTiO3 (cubic aristotype, Pm-3m)", "CaTiO3 (orthorhombic, Pnma)"),
        (221, 62, 167, 140, 99, 127, 74, 63, 161, 148, 160),
        "A: large 12-coordinate cation (alkali, alkaline earth, rare earth, Pb, Bi); "
        "B: small octahedral cation (transition metal, Sn, Pb in halides); X: O2-, halide or S2-.",
        "Corner-sharing BX6 octahedra with A in the cuboctahedral cavities; Goldschmidt tolerance "
        "factor near 1 for the cubic form, tilted octahedra (Pnma, R-3c, I4/mcm) below it. "
        "Ferroelectrics, photovoltaics (halides), catalysts, ionic conductors.",
        ("perovskites", "abx3", "halide perovskite", "oxide perovskite"),
    ),
    CrystalFamily(
        "double_perovskite", "Double perovskite A2BB'X6",
        (_t("A2BB'X6", ("A", 2, "cation"), ("B", 1, "cation"), ("B'", 1, "cation"), ("X", 6, "anion")),),
        frozenset({"O", "F"}),
        ("Ba2FeMoO6 (Fm-3m)", "Sr2FeMoO6 (I4/m)"),
        (225, 87, 14, 148, 167, 2),
        "A: large cation (Ba, Sr, Ca, La); B and B': two different octahedral cations ordered in "
        "rock-salt fashion; X: O2- (or F-).",
        "A perovskite with two B cations ordered on alternating octahedra, doubling the cell. "
        "Half-metallic ferromagnets (Sr2FeMoO6), multiferroics, oxide photocatalysts.",
        ("double perovskites", "a2bb'x6", "a2bbx6", "ordered perovskite"),
    ),
    CrystalFamily(
        "elpasolite", "Elpasolite (halide double perovskite) A2BB'X6",
        (_t("A2BB'X6", ("A", 2, "cation"), ("B", 1, "cation"), ("B'", 1, "cation"), ("X", 6, "anion")),),
        HALOGENS,
        ("K2NaAlF6 (elpasolite)", "Cs2AgBiBr6 (Fm-3m)"),
        (225, 87, 14, 148),
        "A: large monovalent cation (Cs, Rb, K); B: monovalent (Na, Ag, Li, Cu); B': trivalent "
        "(Bi, In, Sb, Al, rare earth); X: halide.",
        "Halide double perovskites with rock-salt ordered B/B' octahedra; lead-free photovoltaic "
        "absorbers and scintillators.",
        ("elpasolites", "halide double perovskite"),
    ),
    CrystalFamily(
        "spinel", "Spinel AB2X4",
        (
            _t("AB2X4", ("A", 1, "cation"), ("B", 2, "cation"), ("X", 4, "anion")),
            _t("A3X4", ("A", 3, "cation"), ("X", 4, "anion")),
        ),
        CHALCOGENS,
        ("MgAl2O4 (Fd-3m)", "Co3O4"),
        (227,),
        "A: tetrahedral cation (2+ in 2-3 spinels, 4+ in 4-2 spinels); B: octahedral cation; "
        "X: O2-, S2-, Se2-, Te2-. A and B may be one element in two valences (Co3O4).",
        "Cubic close-packed anions with A in 1/8 of the tetrahedral and B in 1/2 of the "
        "octahedral holes. Battery cathodes (LiMn2O4), magnets, catalysts, refractories.",
        ("spinels", "ab2x4", "ab2o4", "normal spinel"),
    ),
    CrystalFamily(
        "inverse_spinel", "Inverse spinel B(AB)X4",
        (
            _t("AB2X4", ("A", 1, "cation"), ("B", 2, "cation"), ("X", 4, "anion")),
            _t("A3X4", ("A", 3, "cation"), ("X", 4, "anion")),
        ),
        CHALCOGENS,
        ("Fe3O4 (magnetite)", "NiFe2O4"),
        (227, 74, 141, 91, 95),
        "Half of the B cations on the tetrahedral sites, A and the other half of B on the "
        "octahedral sites; X: O2- or S2-.",
        "Spinel stoichiometry with inverted cation distribution, favoured when A has a strong "
        "octahedral site preference (Ni2+, Fe2+ in Fe3O4). Ferrimagnets and spinel ferrites.",
        ("inverse spinels",),
    ),
    CrystalFamily(
        "pyrochlore", "Pyrochlore A2B2X7",
        (_t("A2B2X7", ("A", 2, "cation"), ("B", 2, "cation"), ("X", 7, "anion")),),
        frozenset({"O", "F"}),
        ("Y2Ti2O7 (Fd-3m)", "Gd2Ti2O7"),
        (227,),
        "A: large 8-coordinate cation (rare earth, Bi, Pb, Ca, Na); B: octahedral cation (Ti, Zr, "
        "Sn, Hf, Ru, Ir, Nb, Ta); X: O2- (A2B2O6O').",
        "Corner-sharing B2O6 octahedral network interpenetrated by A2O' chains; frustrated "
        "magnets (spin ice), nuclear waste forms, ionic conductors, catalysts.",
        ("pyrochlores", "a2b2o7", "a2b2x7"),
    ),
    CrystalFamily(
        "garnet", "Garnet A3B2C3X12",
        (
            _t("A3B2C3X12", ("A", 3, "cation"), ("B", 2, "cation"), ("C", 3, "cation"), ("X", 12, "anion")),
            _t("A3B5X12", ("A", 3, "cation"), ("B", 5, "cation"), ("X", 12, "anion")),
        ),
        frozenset({"O"}),
        ("Y3Al5O12 (YAG, Ia-3d)", "Ca3Al2Si3O12 (grossular)"),
        (230,),
        "A: dodecahedral cation (Ca, Mg, Fe2+, Y, rare earth); B: octahedral (Al, Fe3+, Cr, Ga); "
        "C: tetrahedral (Si, Al, Ga, Fe3+); X: O2-. B and C may be one element (YAG).",
        "Cubic framework of corner-sharing BO6 octahedra and CO4 tetrahedra with A in "
        "dodecahedra. Laser hosts (Nd:YAG), magneto-optics (YIG), garnet Li-ion electrolytes.",
        ("garnets",),
    ),
    CrystalFamily(
        "rocksalt", "Rocksalt AX",
        (_t("AX", ("A", 1, "cation"), ("X", 1, "anion")),),
        CHALCOGENS | HALOGENS | frozenset({"N", "C", "P", "As"}),
        ("NaCl (Fm-3m)", "MgO"),
        (225,),
        "A: cation (alkali, alkaline earth, transition metal, rare earth); X: halide, "
        "chalcogenide, nitride or carbide; both octahedral.",
        "Two interpenetrating fcc lattices, each ion octahedrally coordinated. Alkali halides, "
        "MgO, transition-metal oxides (NiO), refractory nitrides and carbides (TiN, TiC).",
        ("rock salt", "rock-salt", "halite", "nacl-type"),
    ),
    CrystalFamily(
        "fluorite", "Fluorite AX2 (and antifluorite A2X)",
        (
            _t("AX2", ("A", 1, "cation"), ("X", 2, "anion")),
            _t("A2X (antifluorite)", ("A", 2, "cation"), ("X", 1, "anion")),
        ),
        frozenset({"O", "F", "Cl", "S", "Se", "Te"}),
        ("CaF2 (Fm-3m)", "CeO2", "Li2O (antifluorite)"),
        (225,),
        "A: 8-coordinate cation (Ca, Sr, Ba, Ce, Zr, Hf, U, Th); X: tetrahedral anion "
        "(roles swapped in antifluorites).",
        "Cations in an fcc array with anions filling all tetrahedral holes. Oxide-ion conductors "
        "(doped CeO2, ZrO2), nuclear fuels (UO2), optical fluorides.",
        ("fluorites", "caf2-type", "antifluorite"),
    ),
    CrystalFamily(
        "rutile", "Rutile AX2",
        (_t("AX2", ("A", 1, "cation"), ("X", 2, "anion")),),
        frozenset({"O", "F"}),
        ("TiO2 rutile (P4_2/mnm)", "MgF2"),
        (136,),
        "A: octahedral cation (Ti, Sn, Ru, Ir, V, Cr, Mn, Mg in fluorides); X: 3-coordinate O2- or F-.",
        "Chains of edge-sharing AX6 octahedra along c, linked by corners. Photocatalysts, "
        "pigments, transparent conductors (SnO2), electrocatalysts (RuO2, IrO2).",
        ("rutiles", "tio2-type"),
    ),
    CrystalFamily(
        "wurtzite", "Wurtzite AX",
        (_t("AX", ("A", 1, "cation"), ("X", 1, "anion")),),
        CHALCOGENS | frozenset({"N", "P", "As"}),
        ("ZnO (P6_3mc)", "GaN", "CdS"),
        (186,),
        "A: tetrahedral cation (Zn, Cd, Ga, Al, In, Be); X: tetrahedral anion (O, S, Se, N).",
        "Hexagonal close-packed anions with cations in half of the tetrahedral holes. "
        "Wide-gap semiconductors (GaN, ZnO), piezoelectrics (AlN).",
        ("wurtzites",),
    ),
    CrystalFamily(
        "zincblende", "Zincblende (sphalerite) AX",
        (_t("AX", ("A", 1, "cation"), ("X", 1, "anion")),),
        frozenset({"S", "Se", "Te", "N", "P", "As", "Sb", "Cl", "Br", "I", "O"}),
        ("ZnS sphalerite (F-43m)", "GaAs", "CuCl"),
        (216,),
        "A: tetrahedral cation (Zn, Cd, Ga, In, Al, B, Cu); X: tetrahedral anion (pnictide, "
        "chalcogenide, halide).",
        "Cubic close-packed anions with cations in half of the tetrahedral holes (the diamond "
        "structure with two species). III-V and II-VI semiconductors.",
        ("zinc blende", "zinc-blende", "sphalerite"),
    ),
    CrystalFamily(
        "heusler", "Full Heusler X2YZ",
        (_t("X2YZ", ("X", 2, "metal"), ("Y", 1, "metal"), ("Z", 1, "p_block")),),
        frozenset(),
        ("Cu2MnAl (L2_1, Fm-3m)", "Co2MnSi"),
        (225, 216),
        "X: transition metal (Co, Cu, Ni, Fe, Mn); Y: transition metal (Mn, Ti, V, Cr, Fe); "
        "Z: p-block element (Al, Ga, In, Si, Ge, Sn, Sb).",
        "Four interpenetrating fcc sublattices (L2_1); inverse Heuslers take F-43m. Half-metallic "
        "ferromagnets for spintronics, shape-memory alloys, thermoelectrics.",
        ("heuslers", "full heusler", "full-heusler", "x2yz"),
    ),
    CrystalFamily(
        "half_heusler", "Half-Heusler XYZ",
        (_t("XYZ", ("X", 1, "metal"), ("Y", 1, "metal"), ("Z", 1, "p_block")),),
        frozenset(),
        ("MgAgAs (F-43m)", "TiNiSn", "ZrNiSn"),
        (216,),
        "X: electropositive metal (Ti, Zr, Hf, Sc, rare earth, Mg); Y: late transition metal (Ni, "
        "Co, Pd, Pt); Z: p-block element (Sn, Sb, Bi, Ge).",
        "A full Heusler with one X sublattice empty (C1_b); 8- and 18-electron compounds are "
        "semiconductors. Thermoelectrics, topological materials.",
        ("half heusler", "half-heusler", "half heuslers", "xyz"),
    ),
    CrystalFamily(
        "olivine", "Olivine A2BX4",
        (
            _t("A2BX4", ("A", 2, "cation"), ("B", 1, "cation"), ("X", 4, "anion")),
            _t("ABCX4", ("A", 1, "cation"), ("B", 1, "cation"), ("C", 1, "cation"), ("X", 4, "anion")),
        ),
        frozenset({"O", "S", "Se"}),
        ("Mg2SiO4 forsterite (Pnma)", "LiFePO4 (triphylite)"),
        (62,),
        "A: octahedral cations (Mg, Fe, Mn, Li on M1 / M2); B: tetrahedral cation (Si, Ge, P); "
        "X: O2- in a distorted hexagonal close packing.",
        "Isolated BX4 tetrahedra linked by AX6 octahedra. Mantle minerals, Li-ion cathodes "
        "(LiFePO4, LiMnPO4).",
        ("olivines", "phospho-olivine"),
    ),
    CrystalFamily(
        "delafossite", "Delafossite ABX2",
        (_t("ABX2", ("A", 1, "cation", _DELAFOSSITE_A), ("B", 1, "cation"), ("X", 2, "anion")),),
        frozenset({"O"}),
        ("CuFeO2 (R-3m)", "CuAlO2", "PdCoO2"),
        (166, 194),
        "A: linearly coordinated monovalent cation (Cu, Ag, Pd, Pt); B: octahedral trivalent cation "
        "(Al, Ga, In, Fe, Cr, Co, Rh); X: O2-.",
        "Layers of edge-sharing BO6 octahedra separated by O-A-O dumbbells. p-type transparent "
        "conductors (CuAlO2), ultra-high-conductivity metals (PdCoO2).",
        ("delafossites",),
    ),
    CrystalFamily(
        "ruddlesden_popper", "Ruddlesden-Popper A(n+1)B(n)X(3n+1)",
        (
            _t("A2BX4 (n=1)", ("A", 2, "cation"), ("B", 1, "cation"), ("X", 4, "anion")),
            _t("A3B2X7 (n=2)", ("A", 3, "cation"), ("B", 2, "cation"), ("X", 7, "anion")),
            _t("A4B3X10 (n=3)", ("A", 4, "cation"), ("B", 3, "cation"), ("X", 10, "anion")),
        ),
        frozenset({"O", "F", "Cl"}),
        ("Sr2TiO4 / K2NiF4 (I4/mmm)", "Sr3Ti2O7", "La2CuO4"),
        (139, 64, 138, 36, 42),
        "A: large cation (Sr, Ba, Ca, La, K) in the perovskite and rock-salt layers; B: octahedral "
        "cation; X: O2-, F-, Cl-.",
        "n perovskite layers separated by rock-salt AX layers. Cuprate superconductors (La2CuO4), "
        "layered ferroelectrics, oxide-ion conductors.",
        ("ruddlesden popper", "ruddlesden-popper", "rp phase", "layered perovskite", "k2nif4-type"),
    ),
)

FAMILY_BY_NAME: dict[str, CrystalFamily] = {family.name: family for family in FAMILIES}


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def get_family(name: str) -> CrystalFamily:
    """Look a family up by name or alias ('double perovskite', 'Rock salt', 'spinels')."""
    key = _normalise_name(name)
    for family in FAMILIES:
        if key == family.name or key in {_normalise_name(a) for a in family.aliases}:
            return family
    known = ", ".join(f.name for f in FAMILIES)
    raise KeyError(f"unknown crystal family {name!r}; known families: {known}")


def families_fitting(formula: str | ParsedFormula) -> list[str]:
    """Names of the families whose templates the formula fits."""
    return [family.name for family in FAMILIES if family.fits(formula)]


@dataclass(frozen=True)
class ReferenceEntry:
    """A Materials Project structure of a family (a reference for match rates); reduced formula."""

    material_id: str
    formula: str
    spacegroup_number: int
    dataset: str
    record: object  # generators.datasets.MaterialRecord; its .structure parses lazily

    @property
    def structure(self):
        return self.record.structure


def _records(datasets: Iterable[str]) -> Iterator:
    from generators.datasets import MP20_SPLITS, iter_mp20, iter_mp2018

    for dataset in datasets:
        if dataset == "mp20":
            for split in MP20_SPLITS:
                yield from iter_mp20(split)
        elif dataset == "mp2018":
            yield from iter_mp2018()
        else:
            raise ValueError(f"unknown dataset {dataset!r}; choose mp20 or mp2018")


@lru_cache(maxsize=32)
def reference_entries(family_name: str, datasets: tuple[str, ...] = ("mp20", "mp2018")) -> tuple[ReferenceEntry, ...]:
    """MP structures of a family from the shared data: formula fits and space group is typical.

    Membership comes from the committed index (``tools/data/family_members.json``, rebuilt by
    ``python -m tools.families build-members``); structures are parsed lazily from the data.
    """
    family = get_family(family_name)
    members = {mp_id: (formula, number) for mp_id, formula, number in _members_table()[family.name]}
    entries, seen = [], set()
    for record in _records(datasets):
        if record.material_id in members and record.material_id not in seen:
            seen.add(record.material_id)
            formula, number = members[record.material_id]
            entries.append(ReferenceEntry(record.material_id, formula, number, record.dataset, record))
    return tuple(entries)


MEMBERS_PATH = Path(__file__).with_name("data") / "family_members.json"


def _typical_spacegroup(family: CrystalFamily, record) -> int | None:
    from tools.structure import detect_spacegroup

    number = record.spacegroup_number
    if number is None:
        found = detect_spacegroup(record.structure)
        number = found.number if found else None
    return number if number in family.spacegroups else None


def build_family_members(datasets: tuple[str, ...] = ("mp20", "mp2018")) -> dict[str, list[list]]:
    """Family -> [MP id, reduced formula, space group] of its MP structures (one pass over the data)."""
    members: dict[str, list[list]] = {family.name: [] for family in FAMILIES}
    seen: set[str] = set()
    for record in _records(datasets):
        if record.material_id in seen or not record.formula:
            continue
        seen.add(record.material_id)
        fitting = [family for family in FAMILIES if family.fits(record.formula)]
        for family in fitting:
            number = _typical_spacegroup(family, record)
            if number is not None:
                members[family.name].append([record.material_id, parse_formula(record.formula).reduced_formula, number])
    return {name: sorted(rows) for name, rows in members.items()}


@lru_cache(maxsize=1)
def _members_table() -> dict[str, list[list]]:
    if MEMBERS_PATH.is_file():
        return json.loads(MEMBERS_PATH.read_text())["members"]
    return build_family_members()


def family_members(family_name: str) -> tuple[str, ...]:
    """Reduced formulae of a family's known MP structures (committed index; rebuilt if missing)."""
    return tuple(sorted({formula for _, formula, _ in _members_table()[get_family(family_name).name]}))


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.families build-members``: rebuild ``tools/data/family_members.json``."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the family-members index from the shared data.")
    parser.add_argument("command", choices=["build-members"])
    parser.parse_args(argv)
    members = build_family_members()
    payload = {
        "source": "shared data mp20/*.csv.gz and mp2018/structures.csv.gz: formula fits the family and "
        "the space group (spglib, symprec 0.1 where missing) is one of the family's typical groups",
        "command": "python -m tools.families build-members",
        "members": members,
    }
    MEMBERS_PATH.write_text(json.dumps(payload, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {MEMBERS_PATH}: " + ", ".join(f"{name} {len(rows)}" for name, rows in members.items()))


if __name__ == "__main__":
    main()
