import itertools

import pytest

from generators import datasets
from generators.datasets import (
    DATA_DIR_ENV,
    DataNotFoundError,
    data_dir,
    data_file,
    data_status,
    formula_from_cif_header,
    iter_mp20,
    iter_mp2018,
    load_mp20,
)


def test_default_data_dir_is_shared_beside_repo(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert (data_dir() / "mp20" / "test.csv.gz").is_file()


def test_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    with pytest.raises(DataNotFoundError, match=r"mp20/test.csv.gz"):
        data_file("mp20/test.csv.gz")


def test_missing_dir_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=DATA_DIR_ENV):
        data_dir()
    status = data_status()
    assert status["data_dir"] is None and not any(status["files"].values())


def test_mp20_test_split_is_complete():
    table = load_mp20("test")
    assert len(table) == 9046
    assert table["n_sites"].max() <= 20


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown MP-20 split 'dev'"):
        load_mp20("dev")


def test_records_parse_structures_lazily():
    records = list(itertools.islice(iter_mp20("val"), 5))
    assert all("structure" not in vars(r) for r in records)  # nothing parsed yet
    record = records[0]
    structure = record.structure
    assert len(structure) == record.n_sites
    assert structure.composition.reduced_formula == record.formula
    assert record.split == "val" and record.dataset == "mp20"


def test_mp2018_records():
    record = next(iter_mp2018())
    assert record.dataset == "mp2018"
    assert record.formula is not None
    assert record.structure.composition.formula.replace(" ", "") == record.formula


def test_formula_from_cif_header():
    assert formula_from_cif_header("data_x\n_chemical_formula_sum   'Sr1 Ti1 O3'\n") == "Sr1Ti1O3"
    assert formula_from_cif_header("data_x\n") is None


def test_repo_root_points_at_project():
    assert (datasets.REPO_ROOT / "pyproject.toml").is_file()
