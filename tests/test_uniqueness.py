import pandas as pd
import pytest

from generators.datasets import KNOWN_FORMULAS_FILE, data_file
from tools.formula import FormulaError
from tools.uniqueness import KnownFormulaIndex, build_entries, check_uniqueness, known_formula_index, write_index


def test_known_formulas():
    result = check_uniqueness("SrTiO3")
    assert {"MP", "ICSD"} <= set(result.known_in)
    assert not result.unique


def test_multiples_count_as_known():
    # GenMS semantics: Sr4Ti4O12 reduces to SrTiO3, which is known.
    result = check_uniqueness("Sr4Ti4O12")
    assert result.reduced_formula == "SrTiO3"
    assert not result.unique


def test_novel_formula_is_unique():
    result = check_uniqueness("Zn2Ti2O7")
    assert result.known_in == []
    assert result.unique


def test_oqmd_only_formula_is_unique_by_genms_rule():
    index = known_formula_index()
    table = pd.read_csv(data_file(KNOWN_FORMULAS_FILE))
    formula = table.loc[table["sources"] == "OQMD", "reduced_formula"].iloc[0]
    assert index.sources(formula) == ["OQMD"]
    assert check_uniqueness(formula).unique
    assert index.is_known(formula, against=["OQMD"])


def test_user_exclusion_list():
    result = check_uniqueness("Zn2Ti2O7", exclude=["Zn4Ti4O14"])
    assert result.in_exclusion_list and not result.unique
    with pytest.raises(FormulaError, match="exclusion list"):
        check_uniqueness("Zn2Ti2O7", exclude=["Qq"])


def test_index_agrees_with_shared_data():
    """A seeded sample of the shared table: the committed index returns the same sources."""
    index = known_formula_index()
    table = pd.read_csv(data_file(KNOWN_FORMULAS_FILE))
    assert abs(len(index) - len(table)) <= 10  # only formulas equal after reduction merge
    rows = table.sample(n=3000, random_state=7)
    for formula, sources in zip(rows["reduced_formula"], rows["sources"]):
        assert set(sources.split(";")) <= set(index.sources(formula)), formula


def test_build_and_read_round_trip(tmp_path):
    csv = tmp_path / "known.csv.gz"
    pd.DataFrame(
        {"reduced_formula": ["SrTiO3", "Sr2Ti2O6", "MgAl2O4", "Xx"], "sources": ["MP", "ICSD;OQMD", "OQMD", "MP"]}
    ).to_csv(csv, index=False)
    entries = build_entries(csv)
    assert len(entries) == 2  # SrTiO3 merged with its multiple, the malformed row skipped
    path = tmp_path / "index.tsv.gz"
    write_index(entries, path)
    index = KnownFormulaIndex.read(path)
    assert index.sources("SrTiO3") == ["MP", "ICSD", "OQMD"]
    assert index.sources("MgAl2O4") == ["OQMD"]
    first = path.read_bytes()
    write_index(entries, path)
    assert path.read_bytes() == first  # reproducible
