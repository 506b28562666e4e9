"""Shared fixtures: hand-built crystals (from crystallographic facts, not data rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

EXAMPLES = Path(__file__).resolve().parents[1] / "evals" / "examples"


@pytest.fixture
def srtio3() -> Structure:
    """Cubic SrTiO3 perovskite, a = 3.905 Å."""
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])


@pytest.fixture
def rocksalt_nacl() -> Structure:
    """Rocksalt NaCl, a = 5.64 Å."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def examples() -> Path:
    return EXAMPLES
