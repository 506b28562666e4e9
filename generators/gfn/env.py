"""Crystal-GFN environment: space group -> composition -> lattice parameters, constraints as masks.

Structured like the gflownet library's crystal environments: one class per sub-space
(:class:`SpaceGroupEnv`, :class:`CompositionEnv`, :class:`LatticeEnv`) and the composite
:class:`CrystalEnv`. States are small Python objects; masks are boolean numpy arrays (True = valid).

Constraints (paper Fig. 1):
- space group: choosing a crystal-lattice system, a point symmetry or a space group (any order)
  masks the options of the other two that are inconsistent with it; stop only once the group is set;
- composition: only counts compatible with the chosen group's Wyckoff multiplicities (pyxtal), the
  joint check done on every partial composition (adding elements never repairs an incompatible
  one), and only actions after which a charge-neutral completion is still reachable with the
  elements' oxidation states (SMACT's ICSD-24 states reported in >= 5% of the element's entries,
  a subset of what ``smact_validity`` accepts)
  *and* Pauling's electronegativity rule (cations less electronegative than anions, SMACT's
  ``pauling_test``); stop only when the composition is neutral under that rule and Wyckoff
  compatible, so every sample is SMACT-valid;
- lattice: the free parameters of the lattice system are sampled (one continuous step, a mixture of
  Beta distributions on [0, 1] per free parameter), the tied ones follow the system's equalities.

Sampling-time restrictions (elements, space groups, atoms per element, lattice ranges) are a
:class:`Restrictions` object that narrows the masks without retraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from generators.gfn import spacegroups as sgs

PAPER_ELEMENTS = ("H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K",
                  "V", "Mn", "Fe", "Co", "Ni", "Cu", "Se")
CHARGE_OFFSET = 2048  # bit index = charge + offset in the Python-int bitsets below


@dataclass(frozen=True)
class CrystalConfig:
    """The sample space: element vocabulary, space-group subset, atom counts, lattice ranges."""

    elements: tuple[str, ...] = PAPER_ELEMENTS
    space_groups: tuple[int, ...] = tuple(range(1, 231))
    max_atoms_per_element: int = 16
    max_atoms: int = 80
    max_elements: int = 5
    min_elements: int = 2
    length_range: tuple[float, float] = (0.9, 100.0)
    angle_range: tuple[float, float] = (50.0, 150.0)
    n_components: int = 5  # Beta mixture components for the lattice
    # volume prior (None: the paper's parametrisation, free lengths in length_range): per-element
    # atomic volumes (A^3, same order as ``elements``, ``generators.gfn.volumes``); the lattice step
    # then samples the volume per atom within ``volume_ratio_range`` times the composition's
    # predicted volume per atom, the free axis ratios b/a, c/a within ``axis_ratio_range`` and the
    # free angles within ``angle_range``; lengths are clipped to ``length_range``
    atomic_volumes: tuple[float, ...] | None = None
    volume_ratio_range: tuple[float, float] = (0.794, 1.566)
    axis_ratio_range: tuple[float, float] = (0.2, 5.0)
    # oxidation states of the charge-neutrality mask: an element's ICSD-24 states reported in at
    # least this percentage of its ICSD entries (SMACT's ``commonality``; 0: every state). Rare
    # states (Fe+4..+6, peroxide O-1) let O-rich counts such as FeO3 pass as "neutral".
    min_state_share_pct: float = 5.0

    def __post_init__(self):
        if len(set(self.elements)) != len(self.elements) or not self.elements:
            raise ValueError("elements must be distinct and non-empty")
        for sg in self.space_groups:
            sgs._check(sg)
        if not 1 <= self.min_elements <= self.max_elements:
            raise ValueError("need 1 <= min_elements <= max_elements")
        if self.atomic_volumes is not None and len(self.atomic_volumes) != len(self.elements):
            raise ValueError("atomic_volumes needs one volume per element")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CrystalConfig":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def paper_config(space_groups: tuple[int, ...] | None = None) -> CrystalConfig:
    """The paper's setting: 22 elements, up to 5 of them and 16 atoms each (80 in all).

    The paper's 113 space groups are those present in both its proxy's train and validation sets;
    :func:`generators.gfn.proxy.data_space_groups` computes the analogue from our data.
    """
    return CrystalConfig(space_groups=space_groups or tuple(range(1, 231)))


def with_volume_prior(config: CrystalConfig) -> CrystalConfig:
    """``config`` with the volume prior: atomic volumes and ratio range fitted on the proxy's
    training rows (``generators/weights/gfn/atomic_volumes.json``)."""
    from generators.gfn import volumes

    table = volumes.load()
    return replace(config, atomic_volumes=tuple(float(table["volumes"][e]) for e in config.elements),
                   volume_ratio_range=tuple(table["ratio_range"]))


@dataclass(frozen=True)
class Restrictions:
    """Sampling-time restrictions, applied through the masks (no retraining)."""

    elements: frozenset[str] | None = None
    space_groups: frozenset[int] | None = None
    max_atoms_per_element: int | None = None
    max_atoms: int | None = None
    length_range: tuple[float, float] | None = None
    angle_range: tuple[float, float] | None = None
    # a fixed formula: ((element, amount in the reduced formula), ...); the cell then holds
    # k formula units for a k the space group's Wyckoff positions and the atom limits allow
    formula: tuple[tuple[str, int], ...] | None = None

    @classmethod
    def make(cls, elements=None, space_groups=None, lattice_ranges=None, max_atoms_per_element=None,
             max_atoms=None, formula=None) -> "Restrictions":
        lr = dict(lattice_ranges or {})
        if formula:
            formula = tuple(sorted((str(e), int(n)) for e, n in dict(formula).items()))
            elements = [e for e, _ in formula]
        return cls(
            formula=formula or None,
            elements=frozenset(elements) if elements else None,
            space_groups=frozenset(int(s) for s in space_groups) if space_groups else None,
            max_atoms_per_element=max_atoms_per_element,
            max_atoms=max_atoms,
            length_range=tuple(lr["lengths"]) if "lengths" in lr else None,
            angle_range=tuple(lr["angles"]) if "angles" in lr else None,
        )


NO_RESTRICTIONS = Restrictions()


# --------------------------------------------------------------------------------------------
# space group
# --------------------------------------------------------------------------------------------
class SpaceGroupEnv:
    """State (cls, ps, sg) as indices, -1 when unset; actions: set cls | set ps | set sg | stop."""

    def __init__(self, space_groups: tuple[int, ...]):
        self.space_groups = tuple(int(s) for s in space_groups)
        self.n_cls, self.n_ps, self.n_sg = len(sgs.CRYSTAL_LATTICE_SYSTEMS), len(sgs.POINT_SYMMETRIES), len(self.space_groups)
        self.sg_cls = np.array([sgs.CRYSTAL_LATTICE_SYSTEMS.index(sgs.crystal_lattice_system(s)) for s in self.space_groups])
        self.sg_ps = np.array([sgs.POINT_SYMMETRIES.index(sgs.point_symmetry(s)) for s in self.space_groups])
        self.eos = self.n_cls + self.n_ps + self.n_sg
        self.n_actions = self.eos + 1

    source = (-1, -1, -1)

    def allowed_groups(self, restrictions: Restrictions) -> np.ndarray:
        if restrictions.space_groups is None:
            return np.ones(self.n_sg, dtype=bool)
        return np.array([s in restrictions.space_groups for s in self.space_groups])

    def mask(self, state, restrictions: Restrictions = NO_RESTRICTIONS, usable: np.ndarray | None = None) -> np.ndarray:
        """``usable``: extra per-group filter (groups for which a valid composition exists)."""
        cls, ps, sg = state
        m = np.zeros(self.n_actions, dtype=bool)
        if sg >= 0:
            m[self.eos] = True
            return m
        ok = self.allowed_groups(restrictions)
        if usable is not None:
            ok &= usable
        if cls >= 0:
            ok &= self.sg_cls == cls
        if ps >= 0:
            ok &= self.sg_ps == ps
        if cls < 0:
            m[np.unique(self.sg_cls[ok])] = True
        if ps < 0:
            m[self.n_cls + np.unique(self.sg_ps[ok])] = True
        m[self.n_cls + self.n_ps: self.eos] = ok
        return m

    def step(self, state, action: int):
        cls, ps, sg = state
        if action < self.n_cls:
            assert cls < 0
            return (action, ps, sg)
        if action < self.n_cls + self.n_ps:
            assert ps < 0
            return (cls, action - self.n_cls, sg)
        assert action < self.eos and sg < 0
        idx = action - self.n_cls - self.n_ps
        return (int(self.sg_cls[idx]), int(self.sg_ps[idx]), idx)

    def n_parents(self, state) -> int:
        """Parents of a non-source state (for the uniform backward policy)."""
        cls, ps, sg = state
        if sg >= 0:
            return 4  # the group was set from (-,-), (c,-), (-,p) or (c,p)
        return (cls >= 0) + (ps >= 0)

    def space_group(self, state) -> int | None:
        return self.space_groups[state[2]] if state[2] >= 0 else None


# --------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def oxidation_states(symbol: str, min_share_pct: float = 0.0) -> tuple[int, ...]:
    """Oxidation states used for the charge-neutrality mask: SMACT's ICSD-24 states of the element
    (a subset of those ``smact.screening.smact_validity`` accepts by default) reported in at least
    ``min_share_pct`` percent of its ICSD entries, falling back to pymatgen's common ones."""
    import warnings

    try:
        import smact

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SMACT warns about noble gases without an electronegativity
            states = smact.Element(symbol).oxidation_states_icsd24 or []
    except Exception:  # noqa: BLE001 - element unknown to SMACT
        states = []
    if states and min_share_pct > 0:
        states = [s for s in states if s in _common_icsd_states(min_share_pct).get(symbol, ())] or states
    if not states:
        from pymatgen.core import Element

        states = list(Element(symbol).common_oxidation_states)
    return tuple(sorted(set(int(s) for s in states if s != 0)))


@lru_cache(maxsize=4)
def _common_icsd_states(min_share_pct: float) -> dict[str, tuple[int, ...]]:
    """Element -> ICSD-24 states in at least ``min_share_pct`` % of its entries (SMACT's filter, consensus 3)."""
    from smact.utils.oxidation import ICSD24OxStatesFilter

    table = ICSD24OxStatesFilter().filter(consensus=3, include_zero=False, commonality=min_share_pct)
    return {row.element: tuple(int(q) for q in str(row.oxidation_state).split()) for row in table.itertuples(index=False)}


def _shift(bits: int, k: int) -> int:
    return bits << k if k >= 0 else bits >> (-k)


def charge_bits(counts: dict[int, int] | list, ox: list[tuple[int, ...]]) -> int:
    """Bitset of the total charges reachable, one oxidation state per element."""
    bits = 1 << CHARGE_OFFSET
    for i, n in (counts.items() if isinstance(counts, dict) else enumerate(counts)):
        if n > 0:
            new = 0
            for o in ox[i]:
                new |= _shift(bits, n * o)
            bits = new
    return bits


def is_charge_neutral(counts, ox) -> bool:
    return bool(charge_bits(counts, ox) >> CHARGE_OFFSET & 1)


@lru_cache(maxsize=None)
def pauling_electronegativity(symbol: str) -> float | None:
    """Pauling electronegativity as SMACT's ``pauling_test`` reads it (None if unknown)."""
    import warnings

    try:
        import smact

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SMACT warns about noble gases without a value
            x = smact.Element(symbol).pauling_eneg
        return None if x is None or math.isnan(x) else float(x)
    except Exception:  # noqa: BLE001 - element unknown to SMACT
        return None


def _bits_to_array(bits: int) -> np.ndarray:
    """Python-int bitset -> bool array over charges -OFFSET..OFFSET (index = charge + OFFSET)."""
    n = 2 * CHARGE_OFFSET + 1
    raw = np.frombuffer(bits.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


class CompositionEnv:
    """State: tuple of atom counts over the element vocabulary. Action (element i, count n) sets
    element i (once) to n atoms; the last action stops.

    Charge neutrality with the Pauling electronegativity rule, as SMACT's ``smact_validity``
    checks it: some choice of one oxidation state per element sums to zero and every cation is
    less electronegative than every anion. Such an assignment exists iff, for some *cut* k of the
    vocabulary's electronegativities sorted in increasing order, the elements up to the cut take
    positive states and those above it negative states (k = 0..number of distinct values). The
    mask therefore runs the charge look-ahead once per cut, with each element's states restricted
    to its side of the cut; stop needs a cut under which the composition is neutral.
    """

    MASK_CACHE = 200_000

    def __init__(self, config: CrystalConfig):
        self.config = config
        self.elements = config.elements
        self.n_el = len(self.elements)
        self.max_n = config.max_atoms_per_element
        self.eos = self.n_el * self.max_n
        self.n_actions = self.eos + 1
        self.ox = [oxidation_states(e, config.min_state_share_pct) for e in self.elements]
        self.source = (0,) * self.n_el
        en = [pauling_electronegativity(e) for e in self.elements]
        levels = sorted({x for x in en if x is not None})
        # ox_cut[k][i]: states of element i allowed when cations have EN <= levels[k-1] < anions
        # (elements without a known electronegativity keep all their states, as SMACT does)
        self.ox_cut = []
        for k in range(len(levels) + 1):
            cut = levels[k - 1] if k > 0 else -math.inf
            self.ox_cut.append([ox if e is None else tuple(o for o in ox if (o > 0) == (e <= cut))
                                for ox, e in zip(self.ox, en)])
        # delta index arrays [cut, element, count, state] -> index into a charge array (pad: a False slot)
        n_states = max(len(o) for o in self.ox)
        pad = 2 * CHARGE_OFFSET + 1
        idx = np.full((len(self.ox_cut), self.n_el, self.max_n, n_states), pad, dtype=np.int64)
        for k, oxk in enumerate(self.ox_cut):
            for i, states in enumerate(oxk):
                for j, o in enumerate(states):
                    idx[k, i, :, j] = CHARGE_OFFSET + o * np.arange(1, self.max_n + 1)
        self._delta_idx = idx
        self._reach_cache: dict = {}
        self._mask_cache: dict = {}

    def action(self, element: int, count: int) -> int:
        return element * self.max_n + count - 1

    def decode(self, action: int) -> tuple[int, int]:
        return action // self.max_n, action % self.max_n + 1

    def _limits(self, r: Restrictions):
        max_n = min(self.max_n, r.max_atoms_per_element or self.max_n)
        max_atoms = min(self.config.max_atoms, r.max_atoms or self.config.max_atoms)
        allowed = np.array([r.elements is None or e in r.elements for e in self.elements])
        return max_n, max_atoms, allowed

    def _completion_charges(self, k: int, pool: tuple[int, ...], counts: tuple[int, ...], r: int) -> int:
        """Bitset of -f for the charges f that up to ``r`` elements of ``pool`` (one state each,
        under cut k) can add (a slight over-approximation: an element may be reused)."""
        key = (k, pool, counts, r)
        hit = self._reach_cache.get(key)
        if hit is not None:
            return hit
        kernel = {n * o for i in pool for o in self.ox_cut[k][i] for n in counts}
        reach = layer = 1 << CHARGE_OFFSET
        for _ in range(r):
            nxt = 0
            for d in kernel:
                nxt |= _shift(layer, d)
            if nxt == layer:
                break
            layer = nxt
            reach |= layer
        # mirror: bit (-f + offset) for each reachable f
        neg = int(format(reach, f"0{2 * CHARGE_OFFSET + 1}b")[::-1], 2)
        if len(self._reach_cache) > 50_000:
            self._reach_cache.clear()
        self._reach_cache[key] = neg
        return neg

    def neutral_cuts(self, state) -> list[int]:
        """Cuts under which the composition is charge neutral (empty: not SMACT-valid)."""
        return [k for k, oxk in enumerate(self.ox_cut) if charge_bits(state, oxk) >> CHARGE_OFFSET & 1]

    def mask(self, state, sg: int, restrictions: Restrictions = NO_RESTRICTIONS) -> np.ndarray:
        key = (state, sg, restrictions)
        hit = self._mask_cache.get(key)
        if hit is None:
            hit = self._mask(state, sg, restrictions)
            if len(self._mask_cache) > self.MASK_CACHE:
                self._mask_cache.clear()
            self._mask_cache[key] = hit
        return hit.copy()

    def formula_multipliers(self, sg: int, restrictions: Restrictions) -> list[int]:
        """Formula units per cell that fit the atom limits and the Wyckoff positions of ``sg``."""
        max_n, max_atoms, _ = self._limits(restrictions)
        amounts = [n for _, n in restrictions.formula]
        return [k for k in range(1, max_n // max(amounts) + 1) if k * sum(amounts) <= max_atoms
                and sgs.counts_compatible(sg, tuple(sorted(k * n for n in amounts)))]

    def _formula_mask(self, state, sg: int, restrictions: Restrictions) -> np.ndarray:
        """Under a fixed formula: each of its elements at k times its amount, one k for all; stop
        once all are set. No charge rule: the formula is given (mixed valence such as LiMn2O4's
        Mn3+/Mn4+ passes no one-state-per-element rule; the search screens formulae before)."""
        m = np.zeros(self.n_actions, dtype=bool)
        ratio = {self.elements.index(e): n for e, n in restrictions.formula}
        done = [i for i in ratio if state[i] > 0]
        if len(done) == len(ratio):
            m[self.eos] = True
            return m
        ks = [state[done[0]] // ratio[done[0]]] if done else self.formula_multipliers(sg, restrictions)
        for i, n in ratio.items():
            if state[i] == 0:
                for k in ks:
                    m[self.action(i, k * n)] = True
        return m

    def _mask(self, state, sg: int, restrictions: Restrictions) -> np.ndarray:
        if restrictions.formula is not None:
            return self._formula_mask(state, sg, restrictions)
        cfg = self.config
        counts = np.asarray(state)
        m = np.zeros(self.n_actions, dtype=bool)
        used = [i for i in range(self.n_el) if counts[i] > 0]
        total = int(counts.sum())
        max_n, max_atoms, allowed = self._limits(restrictions)
        present = sorted(int(counts[i]) for i in used)
        current = [charge_bits(state, oxk) for oxk in self.ox_cut]
        if (len(used) >= cfg.min_elements and any(c >> CHARGE_OFFSET & 1 for c in current)
                and sgs.counts_compatible(sg, tuple(present))):
            m[self.eos] = True
        if len(used) >= cfg.max_elements:
            return m
        single = sgs.single_counts_compatible(sg, self.max_n)
        cand = np.array([n <= max_n and single[n - 1] and total + n <= max_atoms
                         and sgs.counts_compatible(sg, tuple(sorted(present + [n]))) for n in range(1, self.max_n + 1)])
        free = np.array([counts[i] == 0 and allowed[i] for i in range(self.n_el)])
        if not cand.any() or not free.any():
            return m
        r = cfg.max_elements - len(used) - 1
        all_n = tuple(n for n in range(1, max_n + 1) if single[n - 1])
        pool = tuple(int(i) for i in np.flatnonzero(free))
        valid = np.zeros((self.n_el, self.max_n), dtype=bool)
        for k, cur in enumerate(current):
            if not cur:
                continue
            neg = self._completion_charges(k, pool, all_n, r)
            # deltas d (charge of the new element) after which some completion reaches zero
            ok_delta = 0
            c = cur
            while c:
                low = c & -c
                ok_delta |= _shift(neg, -(low.bit_length() - 1 - CHARGE_OFFSET))
                c ^= low
            ok_delta &= (1 << (2 * CHARGE_OFFSET + 1)) - 1
            arr = np.append(_bits_to_array(ok_delta), False)
            valid |= arr[self._delta_idx[k]].any(-1)
        valid &= free[:, None] & cand[None, :]
        m[: self.eos] = valid.reshape(-1)
        return m

    def step(self, state, action: int):
        i, n = self.decode(action)
        assert state[i] == 0
        s = list(state)
        s[i] = n
        return tuple(s)

    def n_parents(self, state) -> int:
        return sum(1 for c in state if c > 0)


# --------------------------------------------------------------------------------------------
# lattice
# --------------------------------------------------------------------------------------------
FREE_PARAMETERS = {  # which of (a, b, c, alpha, beta, gamma) are sampled
    "cubic": (0,), "tetragonal": (0, 2), "orthorhombic": (0, 1, 2), "hexagonal": (0, 2),
    "monoclinic": (0, 1, 2, 4), "triclinic": (0, 1, 2, 3, 4, 5),
}


def lattice_from_free(system: str, free_values: dict[int, float]) -> tuple[float, ...]:
    v = free_values
    if system == "cubic":
        return (v[0], v[0], v[0], 90.0, 90.0, 90.0)
    if system == "tetragonal":
        return (v[0], v[0], v[2], 90.0, 90.0, 90.0)
    if system == "orthorhombic":
        return (v[0], v[1], v[2], 90.0, 90.0, 90.0)
    if system == "hexagonal":
        return (v[0], v[0], v[2], 90.0, 90.0, 120.0)
    if system == "monoclinic":
        return (v[0], v[1], v[2], 90.0, v[4], 90.0)
    return tuple(v[i] for i in range(6))


def feasible_gamma(alpha: float, beta: float, gamma: float, angle_range, margin: float = 1.0) -> float:
    """``gamma`` moved, only if needed, into the interval where (alpha, beta, gamma) span a cell
    with volume: |alpha - beta| < gamma < min(alpha + beta, 360 - alpha - beta), within
    ``angle_range`` (1 degree margin)."""
    lo = max(abs(alpha - beta) + margin, angle_range[0])
    hi = min(alpha + beta - margin, 360.0 - alpha - beta - margin, angle_range[1])
    if lo > hi or lo <= gamma <= hi:
        return gamma
    return min(max(gamma, lo), hi)


def cell_volume(lattice) -> float:
    a, b, c, al, be, ga = lattice
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    arg = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return a * b * c * math.sqrt(arg) if arg > 0 else 0.0


def lattice_valid(sg: int, lattice, config: CrystalConfig | None = None, tol: float = 1e-3) -> bool:
    """Lattice obeys the space group's lattice-system equalities, lies in the ranges and has a volume."""
    a, b, c, al, be, ga = lattice
    system = sgs.lattice_system(sg)
    close = lambda x, y: abs(x - y) <= tol * max(1.0, abs(y))  # noqa: E731
    ok = {
        "cubic": close(a, b) and close(b, c) and all(close(x, 90) for x in (al, be, ga)),
        "tetragonal": close(a, b) and all(close(x, 90) for x in (al, be, ga)),
        "orthorhombic": all(close(x, 90) for x in (al, be, ga)),
        "hexagonal": close(a, b) and close(al, 90) and close(be, 90) and close(ga, 120),
        "monoclinic": close(al, 90) and close(ga, 90),
        "triclinic": True,
    }[system]
    if config is not None:
        lo, hi = config.length_range
        alo, ahi = config.angle_range
        ok = ok and all(lo - tol <= x <= hi + tol for x in (a, b, c))
        free_angles = [lattice[i] for i in FREE_PARAMETERS[system] if i >= 3]
        ok = ok and all(alo - tol <= x <= ahi + tol for x in free_angles)
    return bool(ok and cell_volume(lattice) > 1e-6)


class LatticeEnv:
    """One continuous step: x in [0, 1]^6 (only the lattice system's free entries matter) mapped to
    lattice parameters. Without a volume prior, the free lengths and angles map linearly to the
    configured ranges (the paper). With one (``config.atomic_volumes``), x[0] is the log volume per
    atom within the composition's plausible range, x[1], x[2] the log axis ratios b/a, c/a (when
    free) and the free angles map to the angle range; the cell is scaled to that volume."""

    def __init__(self, config: CrystalConfig):
        self.config = config

    def ranges(self, restrictions: Restrictions = NO_RESTRICTIONS):
        lr = restrictions.length_range or self.config.length_range
        ar = restrictions.angle_range or self.config.angle_range
        return lr, ar

    def volume_per_atom_range(self, comp_state) -> tuple[float, float]:
        """Plausible volume per atom (A^3) of a composition (counts over the vocabulary)."""
        cfg = self.config
        n = sum(comp_state)
        vbar = sum(c * v for c, v in zip(comp_state, cfg.atomic_volumes)) / max(n, 1)
        return vbar * cfg.volume_ratio_range[0], vbar * cfg.volume_ratio_range[1]

    def to_lattice(self, sg: int, x, comp_state=None) -> tuple[float, ...]:
        """Map unit-cube values to lattice parameters in the *training* ranges (the volume prior
        needs the composition)."""
        (llo, lhi), (alo, ahi) = self.config.length_range, self.config.angle_range
        system = sgs.lattice_system(sg)
        vals = {}
        if self.config.atomic_volumes is None:
            for i in FREE_PARAMETERS[system]:
                lo, hi = (llo, lhi) if i < 3 else (alo, ahi)
                vals[i] = lo + float(x[i]) * (hi - lo)
            if system == "triclinic":
                vals[5] = feasible_gamma(vals[3], vals[4], vals[5], (alo, ahi))
            return lattice_from_free(system, vals)
        if comp_state is None:
            raise ValueError("the volume prior needs the composition")
        rlo, rhi = (math.log(v) for v in self.config.axis_ratio_range)
        for i in FREE_PARAMETERS[system]:
            vals[i] = 1.0 if i == 0 else math.exp(rlo + float(x[i]) * (rhi - rlo)) if i < 3 else alo + float(x[i]) * (ahi - alo)
        if system == "triclinic":  # a degenerate angle triple (no volume) moves gamma into the feasible range
            vals[5] = feasible_gamma(vals[3], vals[4], vals[5], (alo, ahi))
        unit = lattice_from_free(system, vals)
        shape = cell_volume(unit)
        vlo, vhi = self.volume_per_atom_range(comp_state)
        v_atom = math.exp(math.log(vlo) + float(x[0]) * (math.log(vhi) - math.log(vlo)))
        a = (v_atom * sum(comp_state) / shape) ** (1 / 3) if shape > 1e-9 else lhi
        return tuple(min(max(a * u, llo), lhi) for u in unit[:3]) + tuple(unit[3:])

    def uniform_in(self, sg: int, restrictions: Restrictions, rng) -> tuple[float, ...]:
        """Free lengths and angles uniform in the (restricted) ranges; ``rng()`` gives floats in [0, 1)."""
        (llo, lhi), (alo, ahi) = self.ranges(restrictions)
        system = sgs.lattice_system(sg)
        vals = {i: (llo + rng() * (lhi - llo)) if i < 3 else (alo + rng() * (ahi - alo)) for i in FREE_PARAMETERS[system]}
        if system == "triclinic":
            vals[5] = feasible_gamma(vals[3], vals[4], vals[5], (alo, ahi))
        return lattice_from_free(system, vals)

    def in_restriction(self, sg: int, lattice, restrictions: Restrictions) -> bool:
        if restrictions.length_range is None and restrictions.angle_range is None:
            return True
        (llo, lhi), (alo, ahi) = self.ranges(restrictions)
        if any(not llo <= x <= lhi for x in lattice[:3]):
            return False
        angles = [lattice[i] for i in FREE_PARAMETERS[sgs.lattice_system(sg)] if i >= 3]
        return all(alo <= x <= ahi for x in angles) and cell_volume(lattice) > 1e-6


# --------------------------------------------------------------------------------------------
# composite
# --------------------------------------------------------------------------------------------
STAGE_SG, STAGE_COMP, STAGE_LATTICE, STAGE_DONE = 0, 1, 2, 3


@dataclass
class CrystalState:
    sg_state: tuple = (-1, -1, -1)
    comp_state: tuple = ()
    lattice: tuple | None = None
    stage: int = STAGE_SG
    dead_end: bool = False

    def copy(self) -> "CrystalState":
        return replace(self)


@dataclass
class Crystal:
    """A terminal state: what Crystal-GFN samples (no atom positions)."""

    space_group: int
    composition: dict[str, int]
    lattice: tuple[float, ...]

    @property
    def n_atoms(self) -> int:
        return sum(self.composition.values())

    def formula(self) -> str:
        return "".join(f"{e}{n}" for e, n in self.composition.items())

    def to_dict(self) -> dict:
        return {"space_group": self.space_group, "composition": dict(self.composition), "lattice": list(self.lattice)}


class CrystalEnv:
    """Space group, then composition, then lattice; discrete actions index a joint vector
    ``[space-group actions | composition actions]``; the lattice step is continuous."""

    def __init__(self, config: CrystalConfig):
        self.config = config
        self.sg_env = SpaceGroupEnv(config.space_groups)
        self.comp_env = CompositionEnv(config)
        self.lat_env = LatticeEnv(config)
        self.comp_offset = self.sg_env.n_actions
        self.n_discrete = self.sg_env.n_actions + self.comp_env.n_actions
        self._usable_cache: dict = {}

    def source(self) -> CrystalState:
        return CrystalState(comp_state=self.comp_env.source)

    def usable_groups(self, restrictions: Restrictions) -> np.ndarray:
        """Groups whose source composition mask has a valid action (no dead end right away)."""
        key = restrictions
        if key not in self._usable_cache:
            ok = np.zeros(self.sg_env.n_sg, dtype=bool)
            allowed = self.sg_env.allowed_groups(restrictions)
            for j, sg in enumerate(self.sg_env.space_groups):
                if allowed[j]:
                    ok[j] = self.comp_env.mask(self.comp_env.source, sg, restrictions)[: self.comp_env.eos].any()
            self._usable_cache[key] = ok
        return self._usable_cache[key]

    def mask(self, state: CrystalState, restrictions: Restrictions = NO_RESTRICTIONS) -> np.ndarray:
        """Joint discrete mask (all False in the lattice stage, which is continuous)."""
        m = np.zeros(self.n_discrete, dtype=bool)
        if state.stage == STAGE_SG:
            m[: self.comp_offset] = self.sg_env.mask(state.sg_state, restrictions, self.usable_groups(restrictions))
        elif state.stage == STAGE_COMP:
            sg = self.sg_env.space_group(state.sg_state)
            m[self.comp_offset:] = self.comp_env.mask(state.comp_state, sg, restrictions)
        return m

    def step(self, state: CrystalState, action) -> tuple[CrystalState, float]:
        """Apply an action; returns (new state, log P_B of the transition under the uniform backward policy)."""
        s = state.copy()
        if s.stage == STAGE_SG:
            if action == self.sg_env.eos:
                s.stage = STAGE_COMP
                return s, 0.0
            s.sg_state = self.sg_env.step(s.sg_state, int(action))
            return s, -math.log(self.sg_env.n_parents(s.sg_state))
        if s.stage == STAGE_COMP:
            a = int(action) - self.comp_offset
            if a == self.comp_env.eos:
                s.stage = STAGE_LATTICE
                return s, 0.0
            s.comp_state = self.comp_env.step(s.comp_state, a)
            return s, -math.log(self.comp_env.n_parents(s.comp_state))
        if s.stage == STAGE_LATTICE:
            sg = self.sg_env.space_group(s.sg_state)
            s.lattice = self.lat_env.to_lattice(sg, action, s.comp_state)
            s.stage = STAGE_DONE
            return s, 0.0
        raise ValueError("step on a finished state")

    def to_crystal(self, state: CrystalState) -> Crystal:
        comp = {e: int(n) for e, n in zip(self.config.elements, state.comp_state) if n > 0}
        return Crystal(self.sg_env.space_group(state.sg_state), comp, tuple(state.lattice))

    def sample_random(self, n: int, rng: np.random.Generator | None = None,
                      restrictions: Restrictions = NO_RESTRICTIONS, max_tries: int = 20) -> list[Crystal]:
        """The untrained baseline: uniform over valid actions, uniform lattice in the allowed ranges."""
        rng = rng or np.random.default_rng()
        out: list[Crystal] = []
        tries = 0
        while len(out) < n and tries < n * max_tries:
            tries += 1
            s = self.source()
            while s.stage in (STAGE_SG, STAGE_COMP):
                m = self.mask(s, restrictions)
                valid = np.flatnonzero(m)
                if valid.size == 0:
                    s.dead_end = True
                    break
                s, _ = self.step(s, int(rng.choice(valid)))
            if s.dead_end:
                continue
            sg = self.sg_env.space_group(s.sg_state)
            for _ in range(64):
                x = rng.random(6)
                s2, _ = self.step(s, x)
                if self.lat_env.in_restriction(sg, s2.lattice, restrictions) and cell_volume(s2.lattice) > 1e-6:
                    break
            else:  # restricted box the mapping rarely reaches: uniform in the box
                for _ in range(64):
                    s2.lattice = self.lat_env.uniform_in(sg, restrictions, rng.random)
                    if self.lat_env.in_restriction(sg, s2.lattice, restrictions) and cell_volume(s2.lattice) > 1e-6:
                        break
            out.append(self.to_crystal(s2))
        return out
