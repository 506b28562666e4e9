"""Property-based fuzzing of the structure readers (hypothesis): no input escapes as a crash.

For any text, ``read_cif`` / ``read_structure_text`` return a structure or raise
``StructureError``; a structure they return has a usable lattice, so the in-process checks
(neighbour list, spglib, SMACT, uniqueness) run on it without crashing the test process: a
segmentation fault here would end the whole test run. Each example has a bounded time
(hypothesis's deadline), generous for a busy 2-core machine.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.checks import check_structure_text
from tools.structure import StructureError, lattice_problem, read_cif, read_structure_text

FUZZ = settings(max_examples=80, deadline=10_000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -1.0, 1e-9, 0.04, 0.5, 3.9, 90.0, 180.0, 1e9, 1e300]),
    st.floats(min_value=0.3, max_value=30.0),
)
ANGLES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-6, 60.0, 90.0, 120.0, 179.999, 180.0]),
                   st.floats(min_value=30.0, max_value=150.0))
ELEMENTS = st.sampled_from(["Na", "Cl", "O", "Sr", "Ti", "Og", "Xx", "H", "U", "D", "Wat", "?", ""])
COORDINATES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-1, max_value=2))
OPERATIONS = st.sampled_from(["x, y, z", "-x, -y, -z", "y, x, z", "x+1/2, y+1/2, z", "x, y", "a, b, c", "1e308*x, y, z",
                              "x/0, y, z", "-y, x-y, z", "x+y+z+x+y+z, y, z"])


@st.composite
def cif_texts(draw) -> str:
    """CIF text of random cells, symmetry operations and atom rows, including absurd values."""
    lines = ["data_fuzz"]
    if draw(st.booleans()):
        lines.append(f"_symmetry_space_group_name_H-M '{draw(st.sampled_from(['P 1', 'F m -3 m', 'P 6_3/m m c', 'Q 9', '']))}'")
    for axis in "abc":
        lines.append(f"_cell_length_{axis} {draw(NUMBERS)!r}")
    for angle in ("alpha", "beta", "gamma"):
        lines.append(f"_cell_angle_{angle} {draw(ANGLES)!r}")
    operations = draw(st.lists(OPERATIONS, max_size=6))
    if operations:
        lines += ["loop_", "_symmetry_equiv_pos_as_xyz", *(f"'{op}'" for op in operations)]
    atoms = draw(st.lists(st.tuples(ELEMENTS, COORDINATES, COORDINATES, COORDINATES), max_size=8))
    if atoms:
        lines += ["loop_", "_atom_site_type_symbol", "_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y",
                  "_atom_site_fract_z", "_atom_site_occupancy"]
        lines += [f"{el or '.'} {el or 'X'}{i} {x!r} {y!r} {z!r} {draw(st.sampled_from(['1', '0.5', '2', 'nan']))}"
                  for i, (el, x, y, z) in enumerate(atoms)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def warm_checks(srtio3_cif_text):
    """Load the formula index and SMACT tables once, so the deadline measures the inputs."""
    check_structure_text(srtio3_cif_text, "warm.cif")


@pytest.fixture(scope="module")
def srtio3_cif_text() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "evals" / "examples" / "SrTiO3_perovskite.cif").read_text()


def assert_read_or_refused(text: str, filename: str = "x.cif") -> None:
    try:
        structure = read_structure_text(text, filename)
    except StructureError as error:
        assert str(error)
        return
    assert lattice_problem(structure) is None
    assert len(structure) >= 1
    report = check_structure_text(text, filename)  # the in-process checks, native code included
    assert report["cif_valid"] is True
    assert report["min_distance"] is None or math.isfinite(report["min_distance"])


@FUZZ
@given(cif_texts())
def test_generated_cifs_are_read_or_refused(text):
    assert_read_or_refused(text)


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_is_read_or_refused(text):
    assert_read_or_refused(text)
    assert_read_or_refused(text, "POSCAR")


@FUZZ
@given(st.data())
def test_mutated_real_cif_is_read_or_refused(srtio3_cif_text, data):
    """A real CIF with a random slice replaced: the damage a careless edit or a truncated upload does."""
    text = srtio3_cif_text
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 40)))
    patch = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(["inf", "nan", "-", "1e9", "0", "'", "loop_\n", "\n"])))
    assert_read_or_refused(text[:start] + patch + text[end:])


def test_read_cif_refuses_non_text():
    with pytest.raises(StructureError):
        read_cif(None)  # type: ignore[arg-type]
    with pytest.raises(StructureError):
        read_cif("   ")
