"""genms lookup: known properties of materials from the shared MP data (issue 41, item 5).

Numbers are those of the shared data (MP-20, the 2018 MP snapshot, Matbench); the index is built
once for the test session in its own cache directory (conftest), then read back from that cache.
"""

import json

import pytest
from langchain_core.messages import HumanMessage
from pydantic import ValidationError
from typer.testing import CliRunner

import tools.lookup as lookup_module
from agent.cli import app
from tools.formula import FormulaError, parse_formula
from tools.lookup import formula_index_key, lookup, lookup_index, parse_query

runner = CliRunner()


def by_id(result: dict) -> dict:
    return {p["material_id"]: p for p in result["polymorphs"]}


def test_tio2_polymorphs_with_space_groups_and_numbers():
    result = lookup("TiO2", limit=30)
    assert result["formula"] == "TiO2" and result["n_polymorphs"] >= 20 and not result["truncated"]
    groups = {p["spacegroup_number"] for p in result["polymorphs"]}
    assert {141, 136, 61} <= groups  # anatase, rutile (MP-20), brookite (2018 snapshot, spglib)
    anatase = by_id(result)["mp-390"]
    assert anatase["spacegroup_symbol"] == "I4_1/amd" and anatase["names"] == ["anatase"]
    assert anatase["band_gap"] == pytest.approx(2.0625, abs=1e-4) and anatase["e_above_hull"] == pytest.approx(0.0065, abs=1e-4)
    assert anatase["dataset"] == "mp20" and anatase["split"] == "test" and anatase["spacegroup_source"] == "MP-20"
    brookite = next(p for p in result["polymorphs"] if p["spacegroup_number"] == 61)
    assert brookite["dataset"] == "mp2018" and brookite["spacegroup_source"] == "spglib" and brookite["e_above_hull"] is None
    # sorted: MP-20 rows by energy above hull, then rows without it by formation energy
    hulls = [p["e_above_hull"] for p in result["polymorphs"] if p["e_above_hull"] is not None]
    assert hulls == sorted(hulls) and hulls[0] == 0.0
    first_without = next(i for i, p in enumerate(result["polymorphs"]) if p["e_above_hull"] is None)
    assert all(p["e_above_hull"] is None for p in result["polymorphs"][first_without:])
    assert len({p["material_id"] for p in result["polymorphs"]}) == len(result["polymorphs"])  # no MP id twice
    assert {"MP", "ICSD"} <= set(result["known_in"])
    assert result["matbench"]["band_gap"]["n"] >= 5 and 1.5 < result["matbench"]["band_gap"]["min"] < 2.5
    assert "PBE" in result["note"] and "MP2020" in result["note"] and "CC BY 4.0" in result["note"]
    assert "Materials Project via MP-20" in result["sources"]


@pytest.mark.parametrize(("text", "formula", "first", "group"), [
    ("anatase TiO2", "TiO2", "mp-390", 141),
    ("TiO2 (anatase)", "TiO2", "mp-390", 141),
    ("rutile", "TiO2", "mp-1097860", 136),
    ("brookite", "TiO2", "mp-1840", 61),
    ("wurtzite ZnO", "ZnO", "mp-2133", 186),
    ("Zinc-blende ZnS", "ZnS", "mp-10695", 216),
    ("calcite", "CaCO3", "mp-3953", 167),
    ("aragonite CaCO3", "CaCO3", "mp-553939", 62),
    ("α-quartz", "SiO2", "mp-6930", 154),
    ("hematite Fe2O3", "Fe2O3", "mp-19770", 167),
    ("corundum", "Al2O3", "mp-1143", 167),
    ("perovskite SrTiO3", "SrTiO3", "mp-551830", 221),
])
def test_a_named_polymorph_comes_first(text, formula, first, group):
    result = lookup(text, limit=5)
    top = result["polymorphs"][0]
    assert result["formula"] == formula and top["material_id"] == first and top["spacegroup_number"] == group
    assert top["match"] and result["polymorph_name"] and group in result["polymorph_spacegroups"]
    assert not any(p["match"] for p in result["polymorphs"] if p["spacegroup_number"] not in result["polymorph_spacegroups"])
    assert first in result["message"]


def test_nacl_rock_salt_and_its_band_gap():
    result = lookup("NaCl")
    nacl = result["polymorphs"][0]
    assert nacl["material_id"] == "mp-22862" and nacl["spacegroup_symbol"] == "Fm-3m" and nacl["spacegroup_number"] == 225
    assert nacl["band_gap"] > 4 and nacl["e_above_hull"] == 0 and nacl["formation_energy_per_atom"] < -2
    assert nacl["names"] == ["rock salt"]
    assert result["matbench"]["band_gap"]["min"] > 4 and result["matbench"]["formation_energy_per_atom"]["max"] < -1.9


def test_reduced_formulas_and_limits():
    assert lookup("Na4Cl4", limit=1)["polymorphs"][0]["material_id"] == "mp-22862"
    silica = lookup("SiO2", limit=3)
    assert silica["n_polymorphs"] > 100 and len(silica["polymorphs"]) == 3 and silica["truncated"]
    assert "showing 3" in silica["message"]


def test_space_groups_are_parsed_for_returned_rows_only(monkeypatch):
    calls = []
    real = lookup_module._spacegroup_from_cif

    def counted(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(lookup_module, "_spacegroup_from_cif", counted)
    monkeypatch.setattr(lookup_module, "_sg_memory", {})  # nothing remembered from earlier calls ...
    monkeypatch.setattr(lookup_module, "_read_sg_cache", lambda stamp: {})  # ... or processes
    result = lookup("LiFePO4", limit=3)  # the 2018 snapshot's rows: no space group in the data
    assert len(calls) == 3 and set(calls) == {p["material_id"] for p in result["polymorphs"]}
    assert result["polymorphs"][0]["material_id"] == "mp-19017" and result["polymorphs"][0]["spacegroup_symbol"] == "Pnma"
    assert result["polymorphs"][0]["names"] == ["triphylite"]
    assert lookup("LiFePO4", limit=3) and len(calls) == 3  # remembered: parsed once


def test_unknown_formulas_are_an_answer_not_an_error():
    hypothetical = lookup("Li7Mn3O9")
    assert hypothetical["polymorphs"] == [] and hypothetical["n_polymorphs"] == 0 and hypothetical["known_in"] == []
    assert "hypothetical" in hypothetical["message"] and hypothetical["matbench"] == {"formation_energy_per_atom": None, "band_gap": None}
    oqmd_only = lookup("AcAgO3")
    assert oqmd_only["polymorphs"] == [] and oqmd_only["known_in"] == ["OQMD"] and "known in OQMD" in oqmd_only["message"]


@pytest.mark.parametrize(("text", "says"), [
    ("Xx2O3", "unknown element 'Xx'"),
    ("graphene", "polymorph name"),
    ("H2O)(", "unbalanced parentheses"),
    ("", "empty formula"),
    ("   ", "empty formula"),
    ("Ti" * 150, "too long"),
    ("anatase Qq2", "unknown element 'Qq'"),
])
def test_malformed_text_raises_a_clear_formula_error(text, says):
    with pytest.raises(FormulaError, match=says):
        lookup(text)


def test_limit_is_bounded():
    for limit in (0, 101, True, 2.5):
        with pytest.raises(ValueError, match="limit"):
            lookup("TiO2", limit=limit)


def test_query_reading():
    assert parse_query("the rutile TiO2").name == "rutile"
    assert parse_query("wurtzite GaN").spacegroups == (186,) and parse_query("perovskite").parsed.reduced_formula == "CaTiO3"
    assert parse_query("perovskite CaTiO3").spacegroups == (62,) and parse_query("perovskite BaTiO3").spacegroups == (221,)
    assert parse_query("magnetite").note and 227 in parse_query("magnetite").spacegroups
    assert parse_query("TiO2").name is None


def test_formula_keys_of_the_data_tables_match_the_project_keys():
    for text in ("K4Mn4O8", "Bi4Ir4O14", "C1Pt1", "Al(CoSi)2", "Ba2NdNb(CuO4)2", "O", "Fe2O3"):
        assert formula_index_key(text) == parse_formula(text).key
    assert formula_index_key("Xx2") is None and formula_index_key(None) is None and formula_index_key("Fe0O") is None


def test_the_index_is_cached_and_read_back():
    from memory.paths import user_cache_dir

    built = lookup_index()
    assert (user_cache_dir() / f"lookup_index_{built.stamp}.csv.gz").is_file()
    assert lookup_index() is built  # once per process
    before = lookup("anatase TiO2", limit=5)
    lookup_module._cached_index.cache_clear()  # a new process, as it were: the index comes from the cache file
    again = lookup_index()
    assert again is not built and again.from_cache and len(again.table) == len(built.table)
    assert lookup("anatase TiO2", limit=5)["polymorphs"] == before["polymorphs"]


# --- the command line ----------------------------------------------------------------------------


def test_cli_json_and_table():
    result = runner.invoke(app, ["lookup", "anatase", "TiO2", "--limit", "4", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["polymorphs"][0]["material_id"] == "mp-390" and len(answer["polymorphs"]) == 4 and answer["truncated"]

    table = runner.invoke(app, ["lookup", "NaCl"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "mp-22862" in table.stdout and "Fm-3m (225)" in table.stdout and "5.15" in table.stdout
    assert "known in: MP, ICSD, OQMD" in table.stdout and "PBE" in table.stdout

    none = runner.invoke(app, ["lookup", "Li7Mn3O9", "--json"])
    assert none.exit_code == 0 and json.loads(none.stdout)["polymorphs"] == []


def test_cli_refuses_malformed_formulas_with_exit_2():
    plain = runner.invoke(app, ["lookup", "Xx2O3"])
    assert plain.exit_code == 2 and "unknown element 'Xx'" in plain.output
    as_json = runner.invoke(app, ["lookup", "Xx2O3", "--json"])
    assert as_json.exit_code == 2 and json.loads(as_json.stdout) == {"error": "unknown element 'Xx' in 'Xx2O3'", "query": "Xx2O3"}
    markup = runner.invoke(app, ["lookup", "[red]Ti"], env={"COLUMNS": "300"})
    assert markup.exit_code == 2 and "'[red]Ti'" in markup.output  # printed literally, not as markup
    assert runner.invoke(app, ["lookup", "TiO2", "--limit", "0"]).exit_code == 2


# --- the LangChain tool and the chat -------------------------------------------------------------


def test_langchain_tool():
    from tools.langchain_tools import chemistry_tools, lookup_material_tool

    assert lookup_material_tool in chemistry_tools()
    found = lookup_material_tool.invoke({"formula": "wurtzite ZnO", "limit": 2})
    assert found["polymorphs"][0]["material_id"] == "mp-2133" and len(found["polymorphs"]) == 2
    assert "unknown element" in lookup_material_tool.invoke({"formula": "Xx2O3"})["error"]
    schema = lookup_material_tool.tool_call_schema.model_json_schema()["properties"]
    assert schema["formula"]["maxLength"] == 200 and schema["limit"]["maximum"] == 100
    for bad in ({"formula": "TiO2", "limit": 500}, {"formula": ""}, {"formula": "x" * 201}):
        with pytest.raises(ValidationError):
            lookup_material_tool.invoke(bad)


def test_offline_chat_answers_property_questions_with_numbers_and_source(tmp_path, monkeypatch):
    from agent.chat import build_chat_agent, open_checkpointer
    from agent.chat_model import OfflineChatModel
    from tools.langchain_tools import chemistry_tools

    monkeypatch.setenv("GENMS_HOME", str(tmp_path))
    agent = build_chat_agent(OfflineChatModel(), chemistry_tools(), open_checkpointer(tmp_path / "c.sqlite"))
    config = {"configurable": {"thread_id": "t"}}

    def ask(text: str) -> str:
        reply = agent.invoke({"messages": [HumanMessage(text)]}, config)
        calls = [m for m in reply["messages"] if getattr(m, "tool_calls", None)]
        assert calls[-1].tool_calls[0]["name"] == "lookup_material"
        return reply["messages"][-1].content

    anatase = ask("what is the band gap of anatase TiO2?")
    assert anatase.startswith("TiO2 (anatase, mp-390, I4_1/amd): PBE band gap 2.06 eV, formation energy -3.495 eV/atom")
    assert "source: Materials Project via MP-20" in anatase and "underestimate" in anatase
    rutile = ask("is rutile stable?")
    assert rutile.startswith("TiO2 (rutile, mp-1097860, P4_2/mnm)") and "0.021 eV/atom above the MP hull" in rutile
    assert "lowest-energy entry is mp-554278" in rutile
    nacl = ask("what space group does NaCl have")
    assert nacl.startswith("NaCl (rock salt, mp-22862, Fm-3m): PBE band gap 5.15 eV") and "on the MP hull" in nacl
    gaas = ask("band gap of GaAs")
    assert gaas.startswith("GaAs (") and "PBE band gap 0.19 eV" in gaas
    lifepo4 = ask("what is the formation energy of LiFePO4")
    assert "LiFePO4 (triphylite, mp-19017, Pnma)" in lifepo4 and "-2.557 eV/atom" in lifepo4
    assert "Materials Project (2018 snapshot)" in lifepo4
    assert "hypothetical" in ask("is Li7Mn3O9 stable?")
